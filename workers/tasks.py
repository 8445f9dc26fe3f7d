"""Celery tasks: thin wrappers running `captioner.service` in a worker process.

The worker's engine is loaded once per process (by `captioner worker` before it starts, or at
`worker_init`) and kept in `_runtime`; tasks only pass their arguments on.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from captioner.config import Settings
from captioner.service import CHUNK_TASK, NIGHTLY_TASK, RetryChunk, WorkerRuntime, nightly, run_chunk
from workers.app import app, settings

_runtime: WorkerRuntime | None = None


def use_settings(worker_settings: Settings) -> WorkerRuntime:
    """Make `worker_settings` (model, adapter, tier of this worker) the ones tasks run with."""
    global _runtime
    _runtime = WorkerRuntime(worker_settings)
    return _runtime


def runtime() -> WorkerRuntime:
    """This process's runtime; from the environment unless `use_settings` was called."""
    return _runtime or use_settings(Settings())


@signals.worker_init.connect
def _load_engine(**_: Any) -> None:
    # Before the first chunk is taken, so no chunk waits for (or times out on) the engine load.
    runtime().start()


@app.task(
    name=CHUNK_TASK,
    bind=True,
    autoretry_for=(RetryChunk,),
    retry_backoff=2,  # 2, 4, 8 ... s between tries
    retry_backoff_max=60,
    retry_jitter=False,
    max_retries=settings.chunk_retries,
)
def caption_chunk(self: Any, job_id: str, index: int, videos: list[str], out: str, options: dict) -> dict:
    """Caption chunk `index` of job `job_id` (see `captioner.service.run_chunk`)."""
    return run_chunk(
        runtime(),
        job_id,
        index,
        videos,
        out,
        options,
        worker=self.request.hostname or "worker",
        last_attempt=self.request.retries >= self.max_retries,
    )


@app.task(name=NIGHTLY_TASK)
def nightly_job() -> str | None:
    """Queue tonight's job for the watched folders (sent by Celery beat)."""
    return nightly(runtime())
