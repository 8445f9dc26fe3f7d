"""`captioner frames`: the frames the model would see, as PNG files a person can open."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from captioner.frames.decode import ClipFrames, FrameSpec
from captioner.frames.errors import FrameError
from captioner.frames.pool import FrameDecoder
from captioner.sources import raw_name, video_id

FRAMES_JSON = "frames.json"


def save_frames(videos: list[Path], out: Path, spec: FrameSpec, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """Decode each video as captioning does and write `out/<stem>/NN.png` plus `frames.json`.

    Yields one result per video: where its frames went and how they were taken, or the error.
    Two videos with the same stem get `<stem>`, `<stem>-2`, ...
    """
    from PIL import Image

    used: set[str] = set()
    with FrameDecoder(spec, workers=1, timeout=timeout) as decoder:
        futures = [(Path(video), decoder.submit(video)) for video in videos]
        for video, future in futures:
            result: dict[str, Any] = {"video": video_id(video), "video_raw": raw_name(video)}
            try:
                clip = future.result()
            except FrameError as exc:
                yield {**result, "error": exc.reason}
                continue
            folder = out / _unique(video_id(video.stem), used)
            folder.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(clip.frames):
                Image.fromarray(frame).save(folder / f"{i:02d}.png")
            facts = {**result, **describe(clip), "dir": str(folder)}
            (folder / FRAMES_JSON).write_text(json.dumps(facts, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            yield facts


def describe(clip: ClipFrames) -> dict[str, Any]:
    """How a clip's frames were taken, for `frames.json`."""
    height, width = clip.frames.shape[1:3]
    return {
        **clip.facts(),
        "frames": len(clip.frames),
        "size": [width, height],
        "display_size": list(clip.display_size),
        "rotation": clip.rotation,
        "codec": clip.codec,
        "source_frames": clip.source_frames,
    }


def _unique(stem: str, used: set[str]) -> str:
    name, n = stem or "video", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name
