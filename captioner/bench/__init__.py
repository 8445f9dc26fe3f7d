"""`captioner bench`: measure the pipeline stage by stage, against the naive way, in one run.

The clips come in two sets that differ only in their keyframe habit (same scenes, sizes, lengths
and bitrates): camera-style (a keyframe every 0.5-1 s, as phones, drones and action cameras
write) and web-style (x264's default of one keyframe per 250 frames, as re-encoded web video
has). A folder of one's own footage is one set instead, "own".

- frame stage, every set: decoding alone (the CPU side's limit) at the plan's keyframe tolerance
  and at tolerance 0 (exact frames), in wall-clock videos/s and in CPU seconds per clip; on the
  headline set also at full resolution followed by a resize;
- engine only: the engine on frames decoded beforehand (the accelerator side's limit), with the
  prefix cache on and off;
- end to end: the real pipeline (`caption_videos`) with the engine already loaded;
- naive: decord at full resolution with exact uniformly spaced frames, the Hugging Face processor
  and `transformers` `generate`, one clip at a time, in a separate process that may use every core;
- memory: resident memory over a long end-to-end run.

Engine, end to end, naive and memory run on the headline set (camera-style, or own footage): the
web-style set is measured in the frame stage only, its figures reported as they come.

Last, the frame stage per hour of footage (`hours.py`): takes of 10 s, 10 min and 2 h copied from
one clip of each set, at the default windows. `frame_stage_only` skips the engine, end to end,
naive and memory measurements (no engine is loaded).
"""


from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from captioner.bench.clips import SET_LABELS, bench_clips, hour_sources
from captioner.bench.common import in_child_process
from captioner.bench.engine_runs import measure_loaded_engine, time_fresh_engine
from captioner.bench.frame_stage import FrameStage, measure_frame_stage
from captioner.bench.hours import LENGTHS, MAX_WINDOWS, measure_hours
from captioner.bench.naive import measure_naive
from captioner.bench.results import bench_result, frame_result, table
from captioner.bench.targets import TARGET_NOTES, TARGETS, check_targets
from captioner.planning import make_plan

__all__ = ["TARGETS", "TARGET_NOTES", "bench_clips", "run_bench", "table"]


def run_bench(
    settings: Any,
    clips: int = 16,
    naive_clips: int = 4,
    memory_clips: int = 1000,
    clips_dir: Path | None = None,
    log: Callable[[str], Any] = print,
    frame_stage_only: bool = False,
    hour_lengths: dict[str, float] | None = LENGTHS,
    hour_windows: int = MAX_WINDOWS,
) -> dict[str, Any]:
    """Run every measurement and return the results (see the module docstring). `clips` is per set;
    `hour_lengths` the takes per hour of footage (None or empty: none), `hour_windows` the windows
    measured per take at most."""
    # Greedy decoding in every measurement, so both sides produce the same number of tokens.
    settings = settings.model_copy(update={"sampling": "deterministic"})
    plan = make_plan(settings)
    folder = clips_dir or settings.home / "bench-clips"
    log(f"clips: writing/reusing {clips} clips a set (720p/1080p, 5-30 s; camera- and web-style GOPs) in {folder}")
    sets = bench_clips(folder, clips)
    headline = next(iter(sets))  # camera-style, or own footage

    stages: dict[str, FrameStage] = {}
    for name, paths in sets.items():
        log(f"frame stage, {SET_LABELS[name]}: tolerance {plan.frame_spec.tolerance:g} and exact frames"
            + (", then full size + resize" if name == headline else ""))
        stages[name] = measure_frame_stage(plan, paths, with_resize=name == headline)
    per_hour = None
    if hour_lengths:
        per_hour = measure_hours(plan, folder / "takes", hour_sources(sets), hour_windows, hour_lengths, log)
    if frame_stage_only:
        result = frame_result(plan, stages, headline, per_hour)
        result["targets"] = check_targets(result)
        return result

    paths = sets[headline]
    frames = [clip.frames for clip in stages[headline].default.clips]
    log("engine only, prefix cache off (separate process)")
    engine_off = in_child_process(time_fresh_engine, settings, frames, False)
    log(f"naive: exact frames, HF processor + generate, one clip at a time, {naive_clips} clips (separate process)")
    naive = measure_naive(plan, paths[:naive_clips])
    runs = measure_loaded_engine(plan, frames, paths, memory_clips, log)

    result = bench_result(plan, stages, headline, engine_off, naive, runs)
    result["per_hour"] = per_hour
    result["targets"] = check_targets(result)
    return result
