"""The benchmark's clip sets: camera-style and web-style keyframe habits, or a folder of one's own footage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from captioner.demo.scenes import SCENES, write_clip

# Realistic footage: 720p and 1080p, 5-30 s, 30 fps (as the AI-Hub background clips), at bitrates
# of camera footage; film grain gives the encoder something to spend them on.
_SIZES = [(1280, 720, 4_000_000), (1920, 1080, 8_000_000)]
_SECONDS = [5, 8, 12, 20, 30]
_GRAIN = 10
# Frames between keyframes at 30 fps: cameras write one every 0.5 or 1 s; x264's default is 250.
_CAMERA_GOPS = (15, 30)
_WEB_GOP = 250
SET_LABELS = {"camera": "camera-style", "web": "web-style", "own": "own footage"}


def bench_clips(folder: Path, count: int, fps: int = 30) -> dict[str, list[Path]]:
    """The clip sets of the benchmark, `count` clips each, by name ("camera", "web"; or "own").

    A folder that already holds videos of its own (real footage) is taken as it is, as one set;
    otherwise H.264 clips of 720p/1080p and 5-30 s are written there once and reused. The first
    set is the headline one.
    """
    from captioner.sources import find_videos

    folder.mkdir(parents=True, exist_ok=True)
    own = [p for p in find_videos([folder]).videos if not p.name.startswith("bench_")]
    if own:
        return {"own": own[:count]}
    # Clip i of both sets has the same scene, size, length and bitrate: only the GOP differs.
    camera = [_bench_clip(folder, "camera", i, _CAMERA_GOPS[(i // len(_SIZES)) % 2], fps) for i in range(count)]
    web = [_bench_clip(folder, "web", i, _WEB_GOP, fps) for i in range(count)]
    return {"camera": camera, "web": web}


def _bench_clip(folder: Path, style: str, i: int, gop: int, fps: int) -> Path:
    """Clip `i` of a set (written once; the name says its style and GOP)."""
    width, height, bitrate = _SIZES[i % len(_SIZES)]
    seconds = _SECONDS[i % len(_SECONDS)]
    scene = SCENES[i % len(SCENES)]
    path = folder / f"bench_{style}_{scene}_{height}p_{seconds}s_gop{gop}_{i:03d}.mp4"
    if not path.exists():
        tmp = path.with_name(path.name + ".part")
        write_clip(tmp, scene, seconds=seconds, fps=fps, width=width, height=height, seed=i,
                   grain=_GRAIN, bitrate=bitrate, preset="superfast", keyframe_interval=gop)
        tmp.rename(path)  # a killed bench never leaves a half-written clip to reuse
    return path


def describe_clip(clip: Path) -> dict[str, Any]:
    """Size, length, bitrate and keyframe spacing of a clip, from its packets."""
    from captioner.frames.probe import probe

    info = probe(clip)
    seconds = info.duration_s
    key_times = info.times[info.keyframe]
    return {
        "file": clip.name,
        "size": f"{info.coded_size[0]}x{info.coded_size[1]}",
        "seconds": round(seconds, 2),
        "mbps": round(clip.stat().st_size * 8 / seconds / 1e6, 2) if seconds else None,
        "keyframes": int(info.keyframe.sum()),
        # None: a single keyframe (the whole clip is one group of pictures).
        "keyframe_interval_s": round(float(np.median(np.diff(key_times))), 3) if len(key_times) > 1 else None,
    }


def hour_sources(sets: dict[str, list[Path]]) -> dict[str, Path]:
    """Per set, the take the per-hour figures are made from: its longest clip, the larger frame on a tie.

    With the default 16 clips a set that is a 1080p 30 s clip at 8 Mbps: one copied take of it is
    a camera's (a keyframe every 0.5 s) or re-encoded web video's (one per 250 frames).
    """
    def weight(path: Path) -> tuple[float, int]:
        """(seconds, pixels a frame) of a clip, from its probe."""
        from captioner.frames.probe import probe

        info = probe(path)
        return info.duration_s, info.coded_size[0] * info.coded_size[1]

    return {name: max(paths, key=weight) for name, paths in sets.items() if paths}


def parse_lengths(text: str) -> dict[str, float]:
    """`--hour-lengths` text ("10s,10min,2h") as {label: seconds}; ValueError naming a bad part."""
    units = {"s": 1.0, "min": 60.0, "h": 3600.0}
    lengths: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        unit = next((u for u in ("min", "s", "h") if part.endswith(u)), None)
        try:
            seconds = float(part[: -len(unit)]) * units[unit] if unit else float("nan")
        except ValueError:
            seconds = float("nan")
        if not seconds > 0:
            raise ValueError(f"{part!r}: expected a length such as 10s, 10min or 2h")
        lengths[part] = seconds
    return lengths
