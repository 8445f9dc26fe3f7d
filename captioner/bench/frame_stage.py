"""The frame stage alone, per clip set: default tolerance, exact frames, full size + resize."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from captioner.bench.clips import describe_clip
from captioner.bench.common import per_second
from captioner.frames import ClipFrames, FrameDecoder, FrameSpec, decode_clip
from captioner.planning import Plan


def _import_decoders() -> None:
    """Import the decoding libraries before a clip's clock starts.

    A worker's first clip would otherwise count the imports (about 0.3 CPU s) in its time: the
    pipeline's workers pay them once per 100 clips, a benchmark of 16 clips on every first one.
    """
    import av  # noqa: F401
    import decord  # noqa: F401
    from PIL import Image  # noqa: F401


def _decode(path: Path, spec: FrameSpec) -> ClipFrames:
    """`decode_clip`, as the pipeline's workers run it once they are warm."""
    _import_decoders()
    return decode_clip(path, spec)


def _decode_full_then_resize(path: Path, spec: FrameSpec) -> ClipFrames:
    """The obvious way: decode full-resolution frames, then resize each to the model's size."""
    from PIL import Image

    from captioner.frames import decode_size

    _import_decoders()
    started, cpu_started = time.perf_counter(), time.process_time()
    full = decode_clip(path, dataclasses.replace(spec, short_side=None))
    height, width = full.frames.shape[1:3]
    size = decode_size(width, height, spec.short_side)
    frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in full.frames])
    return dataclasses.replace(full, frames=frames, decode_s=time.perf_counter() - started,
                               cpu_s=time.process_time() - cpu_started)


@dataclass
class DecodePass:
    """Every clip of a set through the tier's decoder processes, with one spec."""

    clips: list[ClipFrames]
    seconds: float  # wall clock, the decoder processes already started


@dataclass
class FrameStage:
    """The frame stage on one set: default tolerance, exact frames, the same through decord (the reader
    of earlier versions for frames between keyframes), and (headline set) full size + resize."""

    paths: list[Path]
    default: DecodePass
    exact: DecodePass
    full_then_resize: DecodePass | None = None
    decord: dict[str, DecodePass] | None = None  # "default", "exact": the same specs with reader="decord"


def _decode_all(plan: Plan, clips: list[Path], spec: FrameSpec,
                decode: Callable[[Path, FrameSpec], ClipFrames] = _decode) -> DecodePass:
    """Decode every clip with the tier's decoder processes; return the frames and the wall seconds."""
    workers = min(plan.profile.decode_workers, len(clips))
    with FrameDecoder(spec, workers, plan.settings.decode_timeout, decode=decode) as decoder:
        # Start the worker processes before the clock: one clip each (the workers start together,
        # so each takes one), or the late ones would spawn and import inside the measurement.
        for warm in [decoder.submit(clips[0]) for _ in range(workers)]:
            warm.result()
        started = time.perf_counter()
        futures = [decoder.submit(clip) for clip in clips]
        frames = [future.result() for future in futures]
        return DecodePass(frames, time.perf_counter() - started)


def measure_frame_stage(plan: Plan, paths: list[Path], with_resize: bool) -> FrameStage:
    """Decode a set at the plan's tolerance and exactly (tolerance 0), the same frames count and size."""
    spec = plan.frame_spec
    exact = dataclasses.replace(spec, tolerance=0.0)
    stage = FrameStage(paths, _decode_all(plan, paths, spec), _decode_all(plan, paths, exact))
    # The readers measured against each other on the same frames: decord keeps its place only where it wins.
    stage.decord = {name: _decode_all(plan, paths, dataclasses.replace(way, reader="decord"))
                    for name, way in (("default", spec), ("exact", exact))}
    if with_resize:
        stage.full_then_resize = _decode_all(plan, paths, spec, decode=_decode_full_then_resize)
    return stage


def _cpu_per_clip(decoded: DecodePass) -> float:
    return sum(clip.cpu_s for clip in decoded.clips) / len(decoded.clips)


def frame_figures(stage: FrameStage, engine_rate: float | None) -> dict[str, Any]:
    """What the frame stage of one set costs, and what it takes to keep the engine busy with it
    (`engine_rate` None: the engine was not measured, nor is that figure)."""
    default_cpu, exact_cpu = _cpu_per_clip(stage.default), _cpu_per_clip(stage.exact)
    figures: dict[str, Any] = {
        "clips": len(stage.paths),
        "decode_only_videos_per_s": {"default": per_second(len(stage.paths), stage.default.seconds),
                                     "exact": per_second(len(stage.paths), stage.exact.seconds)},
        "decode_cpu_s_per_clip": {"default": round(default_cpu, 4), "exact": round(exact_cpu, 4)},
        "keyframe_decode_speedup": round(exact_cpu / default_cpu, 3),
        "frame_shift_max": round(max(clip.shift_max for clip in stage.default.clips), 3),
        # CPU seconds a clip costs to decode x clips the engine captions a second = the cores the
        # frame stage must have to its own for the engine never to wait for frames.
        "decode_cores_per_engine": None if engine_rate is None else round(default_cpu * engine_rate, 4),
        "decoders": {"default": dict(Counter(c.decoder for c in stage.default.clips)),
                     "exact": dict(Counter(c.decoder for c in stage.exact.clips))},
    }
    if stage.decord is not None:
        figures["reader_cpu_s_per_clip"] = _reader_figures(stage.default, stage.exact, stage.decord)
    if stage.full_then_resize is not None:
        figures["decode_resize_speedup"] = round(stage.full_then_resize.seconds / stage.default.seconds, 3)
    figures["per_clip"] = [
        {**describe_clip(path), "decoder": {"default": d.decoder, "exact": e.decoder},
         "cpu_s": {"default": round(d.cpu_s, 4), "exact": round(e.cpu_s, 4)}, "shift_max": round(d.shift_max, 3)}
        for path, d, e in zip(stage.paths, stage.default.clips, stage.exact.clips)
    ]
    return figures


def _reader_figures(default: DecodePass, exact: DecodePass, decord: dict[str, DecodePass]) -> dict[str, Any]:
    """CPU per clip with PyAV (the default) and with decord reading the frames between keyframes, both ways.

    Only the clips that need frames between keyframes differ; `clips_between_keyframes` counts them.
    """
    out: dict[str, Any] = {}
    for name, pyav_pass in (("default", default), ("exact", exact)):
        decord_pass = decord[name]
        between = [i for i, clip in enumerate(pyav_pass.clips) if clip.decoder != "pyav-keyframes"]
        pick = lambda p: sum(p.clips[i].cpu_s for i in between) / len(between) if between else None  # noqa: E731
        out[name] = {
            "pyav": round(_cpu_per_clip(pyav_pass), 4),
            "decord": round(_cpu_per_clip(decord_pass), 4),
            "clips_between_keyframes": len(between),
            "between_keyframes": {"pyav": _round(pick(pyav_pass)), "decord": _round(pick(decord_pass))},
            "decoders_decord": dict(Counter(c.decoder for c in decord_pass.clips)),
        }
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
