"""Stand-ins for the service scale benchmark, and only for it: they replace the engine and the
frame stage so a million-video job measures the service's own bookkeeping (Redis, Celery, part
files), not vLLM. Everything they produce says "stand-in"; `captioner bench-service` names them
in its output.

`python -m captioner.bench.standins worker` runs a real Celery worker process (real Redis, real
queue, real `run_chunk`) whose runtime uses these stand-ins.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from captioner.engine import Generation
from captioner.frames import ClipFrames, FrameError, FrameSpec

if TYPE_CHECKING:
    from captioner.adapters import Adapter
    from captioner.config import Sampling
    from captioner.planning import Plan
    from captioner.prompts import RenderedPrompt
    from captioner.sizing import EngineKV

STAND_IN_ENGINE = "stand-in engine: no model, a fixed Korean caption per clip"
STAND_IN_DECODER = "stand-in decoder: stats the file, returns black 2x2 frames, in the worker's process"
CAPTION = "스탠드인 캡션: 측정용 고정 문장입니다."


class StandInEngine:
    """An `Engine` that answers every clip at once with the same caption (optionally `seconds_per_clip` later)."""

    def __init__(self, plan: Plan, seconds_per_clip: float = 0.0) -> None:
        self.model, self.profile = plan.model, plan.profile
        # As `CaptionEngine` lists them, so the worker's check that the engine fits the plan holds.
        self.adapters = [a.path for a in plan.adapters if a.path is not None]
        self.seconds_per_clip = seconds_per_clip
        self.kv: EngineKV | None = None
        self.load_s = 0.0

    def warm_prefix(self, prompt: RenderedPrompt, with_adapter: bool = True) -> None:
        """Nothing to warm."""

    def shareable_prefix_tokens(self, prompt: RenderedPrompt) -> int:
        """No cache."""
        return 0

    def caption(self, videos: list[np.ndarray], prompt: RenderedPrompt, sampling: Sampling,
                adapters: Sequence[Adapter] | None = None) -> list[Generation]:
        """One fixed caption per clip, whatever its adapter."""
        if self.seconds_per_clip:
            time.sleep(self.seconds_per_clip * len(videos))
        return [Generation(CAPTION, 1000, 0, 12, "stop") for _ in videos]


class StandInDecoder:
    """`FrameDecoder`'s surface, done at once in this process: a missing file still fails."""

    def __init__(self, spec: FrameSpec) -> None:
        self.spec = spec
        self._frames = np.zeros((spec.num_frames, 2, 2, 3), np.uint8)

    def submit(self, path: Path | str) -> Future[ClipFrames]:
        """A finished future: the clip's stand-in frames, or its FrameError."""
        future: Future[ClipFrames] = Future()
        try:
            os.stat(path)
        except OSError as exc:
            future.set_exception(FrameError(str(path), f"cannot open ({exc.strerror})"))
            return future
        n = self.spec.num_frames
        future.set_result(
            ClipFrames(
                video=str(path), frames=self._frames, times=[i / n for i in range(n)], shift_max=0.0,
                decoder="stand-in", display_size=(2, 2), rotation=0, source_frames=n,
            )
        )  # fmt: skip
        return future

    def close(self) -> None:
        """Nothing to stop."""


def worker_main(argv: list[str]) -> None:
    """`worker NAME [SECONDS_PER_CLIP]`: a Celery worker of the service with the stand-ins."""
    from captioner.config import Settings
    from captioner.service import chunks_in_flight, tasks
    from captioner.service.celery_app import app_for

    name = argv[1]
    seconds = float(argv[2]) if len(argv) > 2 else 0.0
    settings = Settings()
    runtime = tasks.use_settings(
        settings,
        load=lambda plan: StandInEngine(plan, seconds),
        make_decoder=lambda plan: StandInDecoder(plan.frame_spec),
    )
    runtime.start()
    tasks.run_worker(
        app_for(settings),
        ["worker", f"--hostname={name}", f"--queues={settings.queue}", "--pool=threads",
         f"--concurrency={chunks_in_flight(settings)}", "--loglevel=WARNING"]
    )  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        raise SystemExit("usage: python -m captioner.bench.standins worker NAME [SECONDS_PER_CLIP]")
    worker_main(sys.argv[1:])
