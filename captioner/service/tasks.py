"""The service's Celery tasks: thin wrappers running `captioner.service.chunk` and `.jobs` in a worker process.

The worker's runtime (engine loaded once, decoder pools, heartbeat) lives in `_runtime`; it is
made by `captioner worker` before the worker starts (`use_settings`), or from the environment at
`worker_init` (`celery -A workers.app worker`). Tasks only pass their arguments on.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import shared_task, signals

from captioner.config import Settings
from captioner.service.celery_app import CHUNK_TASK, NIGHTLY_TASK
from captioner.service.chunk import run_chunk
from captioner.service.errors import ChunkBusy, RetryChunk
from captioner.service.nightly import nightly
from captioner.service.runtime import WorkerRuntime

BUSY_WAIT_S = 20  # a duplicate delivery of a running chunk looks again this much later

_runtime: WorkerRuntime | None = None
_made = threading.Lock()


def use_settings(worker_settings: Settings, **extra: Any) -> WorkerRuntime:
    """Make `worker_settings` (model, adapter, tier of this worker) the ones tasks run with."""
    global _runtime
    _runtime = WorkerRuntime(worker_settings, **extra)
    return _runtime


def runtime() -> WorkerRuntime:
    """This process's runtime; from the environment unless `use_settings` was called."""
    with _made:  # the pool's threads may ask at the same moment
        return _runtime or use_settings(Settings())


@signals.worker_init.connect
def _load_engine(**_: Any) -> None:
    # Before the first chunk is taken, so no chunk waits for (or times out on) the engine load.
    runtime().start()


_asked_to_stop = threading.Event()


@signals.worker_shutting_down.connect
def _shutting_down(**_: Any) -> None:
    _asked_to_stop.set()  # a signal (SIGTERM, SIGINT, SIGQUIT) asked the worker to stop


def run_worker(app: Any, argv: list[str]) -> None:
    """Run the Celery worker (`app.worker_main(argv)`) until it stops; exit with status 1 when it stopped
    without being asked (an unrecoverable error inside Celery or kombu, seen when Redis dies while the
    worker holds retries, can end the worker with status 0), so a supervisor restarts it."""
    code: object = 0
    try:
        app.worker_main(argv)
    except SystemExit as exc:
        code = exc.code
    if not _asked_to_stop.is_set():
        logging.getLogger(__name__).error("the worker stopped without being asked to (status %s); exiting 1", code)
        raise SystemExit(1)
    raise SystemExit(code)


@signals.worker_shutdown.connect
def _close(**_: Any) -> None:
    if _runtime is not None:
        _runtime.close()


@shared_task(
    name=CHUNK_TASK,
    bind=True,
    autoretry_for=(RetryChunk,),
    retry_backoff=2,  # 2, 4, 8 ... s between tries
    retry_backoff_max=60,
    retry_jitter=False,
    max_retries=Settings().chunk_retries,
    # Also in the app's configuration; said here too, so the task keeps them in any app it is bound to.
    acks_late=True,
    reject_on_worker_lost=True,
)
def caption_chunk(self: Any, *args: Any, **kwargs: Any) -> dict:
    """Caption a chunk: (JOB_ID, INDEX, VIDEOS, OUT, OPTIONS), checked by `captioner.service.chunk.run_chunk`."""
    try:
        return run_chunk(
            runtime(), *args, host=self.request.hostname or "worker",
            last_attempt=self.request.retries >= self.max_retries, **kwargs,
        )  # fmt: skip
    except ChunkBusy as exc:
        # A duplicate delivery waits its turn without using up the chunk's retries.
        self.signature_from_request(countdown=BUSY_WAIT_S, retries=self.request.retries).apply_async()
        return {"busy": str(exc)}


@shared_task(name=NIGHTLY_TASK)
def nightly_job() -> str | None:
    """Queue tonight's job for the watched folders (sent by Celery beat)."""
    return nightly(runtime())
