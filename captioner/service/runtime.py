"""A worker process's runtime: one `WorkerRuntime` per process, holding what outlives a chunk.

A worker process keeps, for its whole life, one engine (loaded once), one decoder pool per frame
spec, and a heartbeat thread. It holds `chunks_in_flight` chunks at once (Celery's thread pool):
their clips decode while the engine captions (two batches ahead, over all chunks: `slots`), and
the engine merges their batches (`SharedEngine`), so a stream of small chunks runs like one long
`captioner run`. The chunks themselves are `captioner.service.chunk`'s.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from captioner.config import Settings
from captioner.frames import FrameDecoder, FrameSpec
from captioner.service.celery_app import CHUNK_TASK, RECOVERED_PRIORITY, app_for
from captioner.service.jobs import finish_settled
from captioner.service.prometheus import WorkerMetrics
from captioner.service.shared_engine import SharedEngine
from captioner.service.store import JobStore, connect
from captioner.service.unacked import resend_stranded
from captioner.service.submit import JobOptions

if TYPE_CHECKING:
    from captioner.engine import Engine
    from captioner.planning import Plan

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    """One per worker process: settings, engine, decoder pools, heartbeat, and plans per job options.

    `load` (plan -> engine) and `make_decoder` (plan -> a `FrameDecoder`-like pool) replace the
    real engine and frame stage; only tests and the scale benchmark use them, and say so.
    """

    settings: Settings
    load: Callable[[Plan], Engine] | None = None
    make_decoder: Callable[[Plan], FrameDecoder] | None = None
    id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    store: JobStore = field(init=False)
    metrics: WorkerMetrics = field(init=False)
    _engine: SharedEngine | None = field(default=None, init=False)
    _plans: dict[str, Plan] = field(default_factory=dict, init=False)
    _decoders: dict[FrameSpec, FrameDecoder] = field(default_factory=dict, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _beating: threading.Thread | None = field(default=None, init=False)
    _active: set[str] = field(default_factory=set, init=False)  # "JOB:CHUNK" being run by this process now

    def __post_init__(self) -> None:
        self.store = JobStore.connect(self.settings, patient=True)
        # The queue lives on the broker, which need not be the job store's Redis. Scrapes must not
        # wait out the worker's patient retries: one quick try, else the depth is left out.
        broker = (
            connect(self.settings.broker_url, patient=False) if self.settings.broker_url.startswith("redis") else None
        )
        self.metrics = WorkerMetrics(self.settings.queue, broker)
        self.broker = connect(self.settings.broker_url, patient=True) if broker is not None else None

    def plan(self, options: JobOptions) -> Plan:
        """The plan (`planning.make_plan`) for a job's options on this worker (cached)."""
        from captioner.planning import make_plan  # loads torch: not for the CLI that only submits

        key = options.model_dump_json()
        with self._lock:
            if key not in self._plans:
                self._plans[key] = make_plan(options.apply(self.settings))
            return self._plans[key]

    def engine(self, plan: Plan) -> SharedEngine:
        """The loaded engine, built now if there is none (first use, or after it died)."""
        from captioner.planning import check_engine, engine_concurrency, load_engine

        with self._lock:
            if self._engine is None:
                started = time.perf_counter()
                self._engine = SharedEngine((self.load or load_engine)(plan))
                self.metrics.engine_loaded(time.perf_counter() - started)
                # Computed vs vLLM-reported clips in flight, for the plan the engine was built for (warns if apart).
                self.metrics.engine_sized(engine_concurrency(self._engine, plan))
            check_engine(self._engine, plan)
            return self._engine

    def decoder(self, plan: Plan) -> FrameDecoder:
        """The worker's decoder pool for the plan's frames: started once, kept for the worker's life."""
        spec = plan.frame_spec
        with self._lock:
            if spec not in self._decoders:
                self._decoders[spec] = (self.make_decoder or _frame_decoder)(plan)
            return self._decoders[spec]

    def begin(self, chunk: str) -> bool:
        """Mark `chunk` ("JOB:INDEX") as run by this process; False when it is already (a duplicate delivery)."""
        with self._lock:
            if chunk in self._active:
                return False
            self._active.add(chunk)
            return True

    def end(self, chunk: str) -> None:
        """`chunk` is no longer run by this process (finished, deferred, or failed)."""
        with self._lock:
            self._active.discard(chunk)

    def start(self) -> None:
        """Load the engine for the worker's own settings (before any chunk); start beating; serve metrics.

        The demo checkpoint, when the settings name it, is built here first: the worker is an entry
        point, and planning only reads.
        """
        if self.settings.uses_demo:
            from captioner.demo import ensure_demo_model

            ensure_demo_model(self.settings.demo_dir)
        self.engine(self.plan(JobOptions()))
        self.start_heartbeat()
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)

    def start_heartbeat(self) -> None:
        """Beat every `heartbeat_s` in a thread of its own; on each beat, send on dead workers' chunks."""
        if self._beating is not None:
            return
        self.store.beat(self.id, self.settings.dead_after_s)
        self._beating = threading.Thread(target=self._beat, name="captioner-heartbeat", daemon=True)
        self._beating.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                self.store.beat(self.id, self.settings.dead_after_s)
                self.recover()
                if self.broker is not None:
                    app = app_for(self.settings)
                    resend_stranded(self.broker, self.store, 2 * self.settings.dead_after_s, app, RECOVERED_PRIORITY)
                finish_settled(self.store, self.settings.writable_roots, lambda options: self.plan(options).versions())
            except Exception:  # noqa: BLE001 - Redis away for a moment: beat again next time
                log.warning("heartbeat failed", exc_info=True)

    def recover(self) -> int:
        """Send again, ahead of the queue, every chunk nobody runs; return how many.

        Those are the chunks of workers that stopped beating, and this worker's own chunks that
        ended without settling (a task that raised past the chunk's handling, a retry that never
        came): in every case the chunk runs again, so no job waits on a chunk nobody holds.
        """
        sent = 0
        with self._lock:
            active = set(self._active)
        for chunk, entry in self.store.orphans(self.id, active, grace_s=2 * self.settings.heartbeat_s):
            app = app_for(self.settings)
            queue = entry.get("queue") or self.settings.queue
            app.send_task(CHUNK_TASK, args=entry["args"], queue=queue, priority=RECOVERED_PRIORITY)
            silent = time.time() - entry["since"]
            why = "left unsettled here" if entry["worker"] == self.id else f"worker {entry['host']} stopped beating"
            log.warning("chunk %s: %s; chunk sent again (started %.0f s ago)", chunk, why, silent)
            sent += 1
        return sent

    def drop_engine(self) -> None:
        """Forget a dead engine so the next chunk builds a new one; free what it held."""
        with self._lock:
            shared, self._engine = self._engine, None
        if shared is None:
            return
        shared.shutdown()
        del shared
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Stop beating and stop the decoder pools (the worker is shutting down)."""
        self._stop.set()
        with self._lock:
            decoders, self._decoders = list(self._decoders.values()), {}
        for decoder in decoders:
            decoder.close()


def _frame_decoder(plan: Plan) -> FrameDecoder:
    return FrameDecoder(plan.frame_spec, plan.profile.decode_workers, plan.settings.decode_timeout)
