"""The frame stage's cost per hour of footage: camera- and web-style takes of 10 s, 10 min and 2 h.

A user with 2,000 hours of takes needs the cost of an hour, not of a clip. Each length is made
from one encoded take of each style by `write_long_take` (a packet copy with shifted timestamps:
seconds to write, no re-encode) and captioned as `captioner run` would at the default windows
(`Settings.window_policy()`: auto, one caption for files up to a minute, fixed 30 s windows
beyond). Every window goes through the tier's decoder processes like a clip; where a take has
more windows than `max_windows`, that many, evenly spread, are measured and the per-window mean
is scaled to all of them (the JSON says how many were measured).

CPU seconds are the decoding processes' own (probe + choice + decode of each window), plus the
probe that plans the file's windows (`windows_of`, run here and timed the same way). Bytes read
are the decoding process's `rchar` from /proc/self/io (`ClipFrames.bytes_read`): bytes asked of
the file system, whether the page cache had them or not (these takes were just written, so
they were warm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.bench.longtakes import write_long_take
from captioner.frames import ClipFrames, FrameDecoder
from captioner.frames.decode import windows_of
from captioner.frames.probe import probe, process_bytes_read
from captioner.planning import Plan
from captioner.windows import Window

LENGTHS = {"10s": 10.0, "10min": 600.0, "2h": 7200.0}
MAX_WINDOWS = 48  # windows measured per take; a 2-hour take has 240 at the default policy
# Takes larger than this are deleted once measured: a 2-hour take at 8 Mbps is 7 GB, and writing
# it again costs about a minute of copying.
KEEP_BYTES = 2**30


@dataclass
class TakeRun:
    """One take through the frame stage at the default windows."""

    path: Path
    duration_s: float
    windows: list[Window] | None  # None: one caption for the whole file
    measured: list[ClipFrames]
    plan_cpu_s: float  # the probe that planned the windows
    plan_bytes: int | None
    seconds: float  # wall clock of the measured decodes
    probe_bytes: int | None  # what one probe of the file reads (every window's decode probes it again)


def write_takes(folder: Path, sources: dict[str, Path],
                lengths: dict[str, float] = LENGTHS) -> dict[str, dict[str, Path]]:
    """Takes of every length per style, `write_long_take` copies of that style's source (reused if written)."""
    takes: dict[str, dict[str, Path]] = {}
    for style, source in sources.items():
        for label, seconds in lengths.items():
            # "bench_": a folder of one's own footage never takes these for footage.
            path = folder / f"bench_take_{style}_{label}_{source.stem}.mp4"
            if not path.exists():
                part = path.with_name(path.stem + ".part.mp4")  # the suffix names the container
                write_long_take(source, part, seconds)
                part.rename(path)  # a killed bench never leaves a half-written take to reuse
            takes.setdefault(style, {})[label] = path
    return takes


def spread(windows: list[Window], count: int) -> list[Window]:
    """`count` windows evenly spread over `windows` (all of them if there are no more)."""
    if len(windows) <= count:
        return list(windows)
    step = len(windows) / count
    return [windows[int(i * step)] for i in range(count)]


def run_take(plan: Plan, path: Path, max_windows: int = MAX_WINDOWS) -> TakeRun:
    """Plan `path`'s windows (timed here), then decode the measured ones in the tier's decoder processes."""
    policy = plan.settings.window_policy()
    read_before, cpu_before = process_bytes_read(), time.process_time()
    windows = windows_of(path, policy)
    plan_cpu = time.process_time() - cpu_before
    plan_bytes = None if read_before is None else process_bytes_read() - read_before
    read_before = process_bytes_read()
    duration = probe(path).duration_s
    probe_bytes = None if read_before is None else process_bytes_read() - read_before
    chosen: list[Window | None] = list(spread(windows, max_windows)) if windows else [None]
    workers = min(plan.profile.decode_workers, len(chosen))
    with FrameDecoder(plan.frame_spec, workers, plan.settings.decode_timeout) as decoder:
        # Start the processes (and their imports) before the clock, as the frame-stage passes do.
        for warm in [decoder.submit(path, chosen[0]) for _ in range(workers)]:
            warm.result()
        started = time.perf_counter()
        futures = [decoder.submit(path, window) for window in chosen]
        measured = [future.result() for future in futures]
    return TakeRun(path, duration, windows, measured, plan_cpu, plan_bytes, time.perf_counter() - started, probe_bytes)


def take_figures(run: TakeRun) -> dict[str, Any]:
    """What the take cost, and the same per hour of footage (see the module docstring)."""
    total = len(run.windows) if run.windows else 1
    scale = total / len(run.measured)
    cpu = sum(clip.cpu_s for clip in run.measured) * scale + run.plan_cpu_s
    reads = [clip.bytes_read for clip in run.measured]
    read = None if None in reads or run.plan_bytes is None else round(sum(reads) * scale) + run.plan_bytes
    size = run.path.stat().st_size
    hours = run.duration_s / 3600
    return {
        "file": run.path.name,
        "seconds": round(run.duration_s, 2),
        "file_bytes": size,
        "windows": len(run.windows) if run.windows else None,
        "windows_measured": len(run.measured),
        "decoders": sorted({clip.decoder for clip in run.measured}),
        "cpu_s": round(cpu, 4),
        "cpu_s_per_window": round(sum(clip.cpu_s for clip in run.measured) / len(run.measured), 4),
        "plan_windows_cpu_s": round(run.plan_cpu_s, 4),
        "cpu_s_per_hour": round(cpu / hours, 2),
        "bytes_read": read,
        "bytes_read_per_hour": None if read is None else round(read / hours),
        "bytes_read_share": None if read is None else round(read / size, 5),
        # Of that, each window's own probe of the file: what probing once per file would save.
        "probe_bytes_each": run.probe_bytes,
        "frame_shift_max": round(max(clip.shift_max for clip in run.measured), 3),
        "wall_s_measured": round(run.seconds, 3),
    }


def measure_hours(plan: Plan, folder: Path, sources: dict[str, Path], max_windows: int = MAX_WINDOWS,
                  lengths: dict[str, float] = LENGTHS, log: Any = print) -> dict[str, Any]:
    """Per style and length, the take's frame-stage cost and the same per hour of footage."""
    takes = write_takes(folder, sources, lengths)
    styles: dict[str, dict[str, Any]] = {}
    for style, by_length in takes.items():
        for label, path in by_length.items():
            log(f"per hour of footage, {style} {label}: {path.name}")
            styles.setdefault(style, {})[label] = take_figures(run_take(plan, path, max_windows))
            if path.stat().st_size > KEEP_BYTES:
                path.unlink()
    policy = plan.settings.window_policy()
    return {
        "windows_policy": policy.describe(),
        "window_auto_max_s": policy.auto_max_s,
        "window_seconds": policy.seconds,
        "max_windows_measured": max_windows,
        "sources": {style: source.name for style, source in sources.items()},
        "styles": styles,
    }
