"""`captioner frames`: the frames the model would see, as PNG files a person can open.

Each video's frames go to a folder under `--out` named after its file-name stem (`folder_name`).
A file name may hold anything but "/" and NUL: a stem of ".." (`...mp4`) or "." would write
outside `--out` or into it, and control characters or backslashes make names no other system or
shell handles well. Such stems are made safe; ordinary names, Korean ones included, are kept.
A long take cut into windows (`--windows`) gets a folder per window under its own: `NAME/w0003/`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterator

from captioner.escaping import CONTROL_CHARS
from captioner.frames.decode import ClipFrames, FrameSpec
from captioner.frames.errors import FrameError
from captioner.frames.pool import FrameDecoder, plan_clips
from captioner.sources import raw_name, video_id
from captioner.windows import Clip, WindowPolicy

FRAMES_JSON = "frames.json"
# Path separators: both, as the folder may be copied to Windows.
SEPARATORS = re.compile(r"[/\\]")
MAX_NAME_BYTES = 200  # under the usual 255-byte name limit, leaving room for "-2", "-3", ...


def save_frames(
    videos: list[Path], out: Path, spec: FrameSpec, timeout: float = 60.0, windows: WindowPolicy | None = None
) -> Iterator[dict[str, Any]]:
    """Decode each video as captioning does and write `out/<stem>/NN.png` plus `frames.json`.

    Yields one result per video (per window, when `windows` cuts it: `out/<stem>/wNNNN/`): where
    its frames went and how they were taken, or the error. Two videos with the same folder name
    (`folder_name`) get `<name>`, `<name>-2`, ...
    """
    used: set[str] = set()
    with FrameDecoder(spec, workers=1, timeout=timeout) as decoder:
        planned = plan_clips([Path(video) for video in videos], windows or WindowPolicy("none"), decoder)
        futures = [(clip, decoder.submit(*clip)) for clips in planned.values() for clip in clips]
        folders: dict[Path, Path] = {}
        for clip, future in futures:
            result: dict[str, Any] = {"video": video_id(clip.path), "video_raw": raw_name(clip.path)}
            if clip.window is not None:
                result["window"] = clip.window.as_json()
            try:
                frames = future.result()
            except FrameError as exc:
                yield {**result, "error": exc.reason}
                continue
            if clip.path not in folders:
                folders[clip.path] = out / _unique(folder_name(clip.path), used)
            yield write_frames(frames, folders[clip.path] / _window_folder(clip), result)


def _window_folder(clip: Clip) -> str:
    """The folder of a window's frames under its video's ("" for the whole file)."""
    return "" if clip.window is None else f"w{clip.window.index:04d}"


def write_frames(clip: ClipFrames, folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write `clip`'s frames as `folder/NN.png` and `folder/frames.json`; return what frames.json says."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(folder / f"{i:02d}.png")
    facts = {**result, **describe(clip), "dir": str(folder)}
    (folder / FRAMES_JSON).write_text(json.dumps(facts, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return facts


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


def folder_name(video: Path) -> str:
    """The name of a video's frames folder: its file-name stem, made safe to join under `--out`.

    Separators ("/" and "\\", also that of an undecodable byte's `\\xNN`) and control characters
    become "_", a stem of dots only (".", "..") becomes "video", a long one is cut; other names are
    kept as they are.
    """
    name = CONTROL_CHARS.sub("_", SEPARATORS.sub("_", video_id(video.stem)))
    if not name.strip("."):
        return "video"
    return name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")


def _unique(name: str, used: set[str]) -> str:
    # Compared as a case-insensitive, NFC file system would (macOS, Windows): "A" and "a" are one folder there.
    chosen, n = name, 1
    while unicodedata.normalize("NFC", chosen).casefold() in used:
        n += 1
        chosen = f"{name}-{n}"
    used.add(unicodedata.normalize("NFC", chosen).casefold())
    return chosen
