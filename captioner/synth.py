"""Synthetic H.264 clips (PyAV) for the demo samples, the tests and the benchmark.

No footage can be downloaded, so clips are drawn: a sky with a moving sun over hills, a city
skyline with lit windows and a passing car, or waves. They are real H.264 MP4 files that
decord decodes like camera footage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

Scene = Literal["nature", "city", "sea"]
SCENES: tuple[Scene, ...] = ("nature", "city", "sea")


def _frame(scene: Scene, t: float, width: int, height: int, rng_seed: int) -> np.ndarray:
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), dtype=np.float32)
    if scene == "nature":
        img[..., 0] = 90 + 120 * y
        img[..., 1] = 150 + 60 * y
        img[..., 2] = 235 - 40 * y
        sun_x, sun_y = 0.15 + 0.7 * t, 0.35 - 0.15 * np.sin(np.pi * t)
        sun = ((x - sun_x) ** 2 * (width / height) ** 2 + (y - sun_y) ** 2) < 0.006
        img[sun] = (255, 220, 120)
        hills = y > 0.65 + 0.08 * np.sin(6 * x + 1.5 * t + rng_seed)
        img[hills] = np.stack([40 + 30 * y, 120 + 40 * y, 50 + 0 * y], axis=-1).repeat(width, 1)[hills]
    elif scene == "city":
        img[...] = np.stack([20 + 60 * y, 30 + 60 * y, 80 + 90 * y], axis=-1)
        rng = np.random.default_rng(rng_seed)
        edges = np.sort(rng.uniform(0, 1, 14))
        for left, right, top in zip(edges[:-1:2], edges[1::2], rng.uniform(0.25, 0.6, 7)):
            block = (x >= left) & (x < right) & (y > top)
            img[block] = (70, 70, 85)
            lit = block & (np.sin(90 * x) > 0.6) & (np.sin(70 * y + 8 * t) > 0.7)
            img[lit] = (250, 210, 90)
        car = (np.abs(x - (0.1 + 0.8 * t)) < 0.05) & (y > 0.9) & (y < 0.96)
        img[car] = (200, 30, 30)
    else:
        img[..., 0] = 120 + 80 * (1 - y)
        img[..., 1] = 170 + 50 * (1 - y)
        img[..., 2] = 230
        water = y > 0.45
        wave = 0.5 + 0.5 * np.sin((40 + 7 * (rng_seed % 5)) * x - 6 * t * np.pi + 25 * y + rng_seed)
        img[..., 0] = np.where(water, 10 + 40 * wave * y, img[..., 0])
        img[..., 1] = np.where(water, 80 + 60 * wave * y, img[..., 1])
        img[..., 2] = np.where(water, 140 + 80 * wave, img[..., 2])
    return np.clip(img, 0, 255).astype(np.uint8)


def write_clip(
    path: Path | str,
    scene: Scene = "nature",
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

    `grain` adds film-grain noise of that amplitude (0-255 scale). Drawn scenes are flat and
    compress far better than camera footage; grain brings the bitrate, and so the decoding
    cost, closer to real clips; `bitrate` (bits/s) then replaces `crf` with a target like a
    camera's. Large frames are drawn at a quarter of their size and scaled up. `keyframe_interval`
    (frames) sets the GOP: cameras and phones write a keyframe every 0.5-1 s, x264's default
    (250) is what re-encoded web video has.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = max(1, int(round(seconds * fps)))
    scale = 4 if width >= 1280 and width % 4 == 0 and height % 4 == 0 else 1
    rng = np.random.default_rng(seed)
    # A few noise frames, cycled with shifts: fresh noise for every 1080p frame costs more than drawing.
    noise = [rng.integers(-grain, grain + 1, (height, width, 1), dtype=np.int16) for _ in range(4)] if grain else []
    # A temporary name (clip.mp4.part) has no container extension: default to MP4 then.
    container_format = None if path.suffix in {".mp4", ".mkv", ".mov", ".avi", ".webm"} else "mp4"
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": preset} if bitrate else {"crf": str(crf), "preset": preset}
        if keyframe_interval:
            # min-keyint = keyint and no scene-cut keyframes: a camera's fixed GOP.
            stream.options |= {"x264-params": f"keyint={keyframe_interval}:min-keyint={keyframe_interval}:scenecut=0"}
        if bitrate:
            stream.bit_rate = bitrate
        for i in range(total):
            image = _frame(scene, i / max(total - 1, 1), width // scale, height // scale, seed)
            if scale > 1:
                image = image.repeat(scale, axis=0).repeat(scale, axis=1)
            if grain:
                shifted = np.roll(noise[i % len(noise)], shift=(i * 7) % height, axis=0)
                image = np.clip(image.astype(np.int16) + shifted, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_clips(folder: Path | str, count: int, **kwargs: object) -> list[Path]:
    """Write `count` clips cycling through the scenes, each with its own seed."""
    folder = Path(folder)
    return [
        write_clip(folder / f"{SCENES[i % len(SCENES)]}_{i:04d}.mp4", SCENES[i % len(SCENES)], seed=i, **kwargs)
        for i in range(count)
    ]
