"""What the loaded engine measures: alone (prefix cache on and off), end to end, and memory over a long run."""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from captioner.captioning import CaptionStats, caption_videos
from captioner.windows import Clip
from captioner.planning import Plan, engine_concurrency, load_engine, make_plan
from captioner.records import CAPTIONS_FILE, RecordWriter


def _engine_pass(engine: Any, plan: Plan, frames: list[np.ndarray]) -> dict[str, float]:
    """Caption pre-decoded frames in tier-sized batches; return time and token counts."""
    sampling = plan.settings.sampling_params()
    batch = plan.profile.batch_size
    started = time.perf_counter()
    generations = []
    for i in range(0, len(frames), batch):
        generations += engine.caption(frames[i : i + batch], plan.prompt, sampling)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "videos": len(frames),
        "output_tokens": sum(g.output_tokens for g in generations),
        "cached_tokens": sum(g.cached_tokens for g in generations),
        "failed": sum(g.error is not None for g in generations),
    }


class _RssSampler:
    """Samples this process's resident memory (and its decoder children's) in the background."""

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = self.peak_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def rss(self) -> int:
        """This process's resident memory now, in bytes."""
        return self._proc.memory_info().rss

    def _children_rss(self) -> int:
        total = 0
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # noqa: BLE001 - a recycled decoder may exit between list and read
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())
            self.peak_children = max(self.peak_children, self._children_rss())

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _end_to_end(plan: Plan, engine: Any, clips: list[Path], out_dir: Path) -> CaptionStats:
    """The real pipeline (`caption_videos`) on `clips` with the engine already loaded."""
    stats = CaptionStats(videos=len(clips))
    with RecordWriter(out_dir / CAPTIONS_FILE) as writer:
        # Whole-file clips, repeats included: paths would be planned once each (the long run cycles).
        caption_videos([Clip(path) for path in clips], writer, plan, lambda: engine, stats)
    return stats


def _engine_only(engine: Any, plan: Plan, frames: list[np.ndarray], prefix_caching: bool) -> dict[str, float]:
    """Warm the engine up (first-call kernels), then time it on pre-decoded frames from a cold cache."""
    _engine_pass(engine, plan, frames[: plan.profile.batch_size])
    if prefix_caching:
        engine.reset_prefix_cache()  # the same clips must not be served whole from the warm-up
        engine.warm_prefix(plan.prompt)
    return _engine_pass(engine, plan, frames)


def time_fresh_engine(settings: Any, frames: list[np.ndarray], prefix_caching: bool) -> dict[str, float]:
    """Runs in its own process: build an engine and time it on pre-decoded frames."""
    from captioner.engine.vllm_engine import CaptionEngine

    plan = make_plan(settings)
    engine = CaptionEngine(plan.model, plan.profile, plan.adapters, seed=settings.seed,
                           enable_prefix_caching=prefix_caching)
    return _engine_only(engine, plan, frames, prefix_caching)


@dataclass
class EngineRuns:
    """What the loaded engine measured: alone, a first end-to-end pass, and the long run with memory."""

    engine_only: dict[str, float]
    first: CaptionStats
    first_s: float
    shareable_per_clip: int
    long: CaptionStats
    long_s: float
    long_clips: int
    rss_start: int
    rss_warm: int
    rss_final: int
    rss_peak: int
    rss_children_peak: int
    concurrency: dict[str, Any]  # computed vs vLLM-reported clips in flight (`planning.engine_concurrency`)


def measure_loaded_engine(plan: Plan, frames: list[np.ndarray], paths: list[Path], memory_clips: int,
                 log: Callable[[str], Any]) -> EngineRuns:
    """Load the engine in this process; time it alone, then the real pipeline on a first and a long pass."""
    import psutil

    log("loading engine")
    rss_start = psutil.Process().memory_info().rss
    engine = load_engine(plan)
    concurrency = engine_concurrency(engine, plan)
    log("engine only")
    engine_on = _engine_only(engine, plan, frames, prefix_caching=True)

    log("end to end, first pass over the clips (cold cache: the prefix-cache figure)")
    engine.reset_prefix_cache()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        first = _end_to_end(plan, engine, paths, Path(tmp))
        first_s = time.perf_counter() - started
    shareable = engine.shareable_prefix_tokens(plan.prompt)

    # The throughput figure: many batches, so filling and draining the pipeline does not dominate.
    # Clips repeat after len(paths); a repeat's prompt is then served whole from the prefix cache,
    # which only shortens prefill (decoding the caption costs the same).
    log(f"end to end and memory: {memory_clips} clips (cycling through the {len(paths)} clips)")
    rss_warm = psutil.Process().memory_info().rss
    long_paths = [paths[i % len(paths)] for i in range(memory_clips)]
    with tempfile.TemporaryDirectory() as tmp, _RssSampler() as sampler:
        started = time.perf_counter()
        long = _end_to_end(plan, engine, long_paths, Path(tmp))
        long_s = time.perf_counter() - started
    return EngineRuns(engine_on, first, first_s, shareable, long, long_s, memory_clips, rss_start, rss_warm,
                      sampler.rss(), sampler.peak, sampler.peak_children, concurrency)
