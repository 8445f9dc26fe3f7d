"""Drawn clips as H.264 files (PyAV), their reference files, and the bundled `samples/`."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from captioner.demo.scenes.painter import Painter
from captioner.demo.scenes.vocabulary import (
    CATEGORIES,
    FAMILIES,
    NAMED_SPECS,
    SAMPLE_SEED_BASE,
    SCENES,
    Family,
    Scene,
    SceneSpec,
    random_spec,
    references,
)

LABELLED_CRF = 20  # crf 28 smears the 2-3 px rain streaks and snow dots the captions name
# A temporary name (clip.mp4.part) has no container extension: MP4 is written then.
_CONTAINERS = {".mp4", ".mkv", ".mov", ".avi", ".webm"}


def write_clip(
    path: Path | str,
    scene: Scene | Family | SceneSpec = "nature",
    seconds: float = 2.0,
    fps: int = 10,
    width: int = 160,
    height: int = 96,
    seed: int = 0,
    crf: int = 28,
    grain: int = 0,
    bitrate: int | None = None,
    preset: str = "veryfast",
    keyframe_interval: int | None = None,
) -> Path:
    """Write an H.264 MP4 clip of a drawn `scene` to `path` and return the path.

    `scene` is a `SceneSpec`, a family name or an old scene name ("nature", "city", "sea"; see
    `NAMED_SPECS`). `grain` adds film-grain noise of that amplitude (0-255
    scale). Drawn scenes are flat and compress far better than camera footage; grain brings the
    bitrate, and so the decoding cost, closer to real clips; `bitrate` (bits/s) then replaces
    `crf` with a target like a camera's. Large frames are drawn at a quarter of their size and
    scaled up. `keyframe_interval` (frames) sets the GOP: cameras and phones write a keyframe
    every 0.5-1 s, x264's default (250) is what re-encoded web video has.
    """
    spec = scene if isinstance(scene, SceneSpec) else NAMED_SPECS.get(scene)
    if spec is None:
        raise ValueError(f"unknown scene {scene!r}: one of {SCENES + FAMILIES} or a SceneSpec")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = max(1, round(seconds * fps))
    scale = 4 if width >= 1280 and width % 4 == 0 and height % 4 == 0 else 1
    painter = Painter(spec, width // scale, height // scale, seed)
    options = {"preset": preset} if bitrate else {"crf": str(crf), "preset": preset}
    if keyframe_interval:
        # min-keyint = keyint and no scene-cut keyframes: a camera's fixed GOP.
        options["x264-params"] = f"keyint={keyframe_interval}:min-keyint={keyframe_interval}:scenecut=0"
    frames = _frames(painter, total, scale, grain, seed, (height, width))
    _encode(path, frames, fps, (height, width), options, bitrate)
    return path


def _frames(
    painter: Painter, total: int, scale: int, grain: int, seed: int, size: tuple[int, int]
) -> Iterator[np.ndarray]:
    """The clip's `total` RGB frames of `size` (height, width): drawn `scale` times smaller, scaled up, grained."""
    height, width = size
    rng = np.random.default_rng(seed)
    # A few noise frames, cycled with shifts: fresh noise for every 1080p frame costs more than drawing.
    noise = [rng.integers(-grain, grain + 1, (height, width, 1), dtype=np.int16) for _ in range(4)] if grain else []
    for i in range(total):
        image = painter.frame(i / max(total - 1, 1))
        if scale > 1:
            image = image.repeat(scale, axis=0).repeat(scale, axis=1)
        if grain:
            shifted = np.roll(noise[i % len(noise)], shift=(i * 7) % height, axis=0)
            image = np.clip(image.astype(np.int16) + shifted, 0, 255).astype(np.uint8)
        yield image


def _encode(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: int,
    size: tuple[int, int],
    options: dict[str, str],
    bitrate: int | None,
) -> None:
    """Encode `frames` of `size` (height, width) with libx264 (`options`, and `bitrate` bits/s if set) into `path`."""
    import av

    container_format = None if path.suffix in _CONTAINERS else "mp4"
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = options
        if bitrate:
            stream.bit_rate = bitrate
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def write_clips(folder: Path | str, count: int, **kwargs: object) -> list[Path]:
    """Write `count` clips cycling through the scenes, each with its own seed."""
    folder = Path(folder)
    return [
        write_clip(folder / f"{SCENES[i % len(SCENES)]}_{i:04d}.mp4", SCENES[i % len(SCENES)], seed=i, **kwargs)
        for i in range(count)
    ]


def write_scene(path: Path | str, spec: SceneSpec, seed: int = 0, crf: int = LABELLED_CRF, **kwargs: object) -> Path:
    """Write a clip of `spec` to `path`; `seed` varies the details, `kwargs` are `write_clip`'s options."""
    return write_clip(path, spec, seed=seed, crf=crf, **kwargs)  # type: ignore[arg-type]


def write_labelled_clips(
    folder: Path | str, count: int, first_seed: int = 0, **kwargs: object
) -> list[tuple[Path, SceneSpec]]:
    """Write clips of `random_spec(seed)` for `count` seeds from `first_seed`; return (path, spec) pairs."""
    specs = [(seed, random_spec(seed)) for seed in range(first_seed, first_seed + count)]
    return [(write_scene(Path(folder) / f"{spec.name}_{seed:06d}.mp4", spec, seed=seed, **kwargs), spec)
            for seed, spec in specs]


def write_references(path: Path | str, clips: Iterable[tuple[Path | str, SceneSpec]]) -> Path:
    """Write the references of `clips` as the JSONL `captioner eval --refs` reads (one line per clip)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"video": unicodedata.normalize("NFC", Path(clip).name), "category": CATEGORIES[spec.family],
             "references": references(spec)} for clip, spec in clips]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


# One clip per family; together they show every time of day, weather and direction.
SAMPLE_SPECS: tuple[SceneSpec, ...] = (
    SceneSpec("mountain", "morning", "clear", "left_to_right"),
    SceneSpec("city", "night", "rain", "right_to_left"),
    SceneSpec("sea", "evening", "clear", "right_to_left"),
    SceneSpec("forest", "day", "snow", "right_to_left"),
    SceneSpec("bridge", "evening", "fog", "left_to_right"),
    SceneSpec("palace", "day", "rain", "left_to_right"),
)


def regenerate_samples(folder: Path | str = "samples") -> list[Path]:
    """Redraw the bundled sample clips (seeds from `SAMPLE_SEED_BASE`) and their `references.jsonl`."""
    folder = Path(folder)
    clips = [
        (write_scene(folder / f"{spec.family}_{spec.time}_{spec.weather}.mp4", spec, seed=SAMPLE_SEED_BASE + i,
                     seconds=3.0, fps=10, width=160, height=96), spec)
        for i, spec in enumerate(SAMPLE_SPECS)
    ]
    write_references(folder / "references.jsonl", clips)
    return [clip for clip, _ in clips]
