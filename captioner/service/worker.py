"""The worker side: one `WorkerRuntime` per worker process, and the chunks it runs.

A worker process keeps, for its whole life, one engine (loaded once), one decoder pool per frame
spec, and a heartbeat thread. It holds `chunks_in_flight` chunks at once (Celery's thread pool):
their clips decode while the engine captions (two batches ahead, over all chunks: `slots`), and
the engine merges their batches (`SharedEngine`), so a stream of small chunks runs like one long
`captioner run`.

A chunk, from start to end (`run_chunk`):
1. registered as running on this worker (`captioner:running`), so if the worker dies (its
   heartbeat stops for `dead_after_s`) another worker's heartbeat thread sends the chunk again;
2. its videos claimed in the output folder's done-index: done ones are skipped, ones being
   captioned by another live worker (another job on the same folder) are left to it;
3. captioned into a part file of its own, published by one rename when the chunk is done;
4. then, in one Redis script: marked done, claims released, videos counted once, chunk finished.
A chunk that dies before (3) left nothing visible; one that dies between (3) and (4) runs again
and replaces its part file. Either way every video ends with exactly one record.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from captioner.config import Settings
from captioner.frames import FrameDecoder, FrameSpec
from captioner.metrics import WorkerMetrics
from captioner.outputs import PartWriter, merge_parts, write_atomic
from captioner.service.celery_app import CHUNK_TASK, RECOVERED_PRIORITY, app_for
from captioner.service.errors import RetryChunk, SubmitError
from captioner.service.shared_engine import SharedEngine
from captioner.service.status import job_summary, status
from captioner.service.store import FINISHED, JobStore, connect, folder_key
from captioner.service.submit import JobOptions, allowed_path, check_submission, enqueue, job_options
from captioner.sources import Found, video_id

log = logging.getLogger(__name__)

# A chunk started this many times more than its retries allow was killing its workers: give up.
EXTRA_DELIVERIES = 3


class _Cancelled(Exception):
    """The job was cancelled while this chunk ran."""


@dataclass
class WorkerRuntime:
    """One per worker process: settings, engine, decoder pools, heartbeat, and plans per job options.

    `load` (plan -> engine) and `make_decoder` (plan -> a `FrameDecoder`-like pool) replace the
    real engine and frame stage; only tests and the scale benchmark use them, and say so.
    """

    settings: Settings
    load: Callable[[Any], Any] | None = None
    make_decoder: Callable[[Any], Any] | None = None
    id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    store: JobStore = field(init=False)
    metrics: WorkerMetrics = field(init=False)
    _engine: SharedEngine | None = field(default=None, init=False)
    _plans: dict[str, Any] = field(default_factory=dict, init=False)
    _decoders: dict[FrameSpec, FrameDecoder] = field(default_factory=dict, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _beating: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.store = JobStore.connect(self.settings, patient=True)
        # The queue lives on the broker, which need not be the job store's Redis. Scrapes must not
        # wait out the worker's patient retries: one quick try, else the depth is left out.
        broker = (
            connect(self.settings.broker_url, patient=False) if self.settings.broker_url.startswith("redis") else None
        )
        self.metrics = WorkerMetrics(self.settings.queue, broker)

    def plan(self, options: JobOptions) -> Any:
        """The pipeline plan for a job's options on this worker (cached)."""
        from captioner.planning import make_plan

        key = options.model_dump_json()
        with self._lock:
            if key not in self._plans:
                self._plans[key] = make_plan(options.apply(self.settings))
            return self._plans[key]

    def engine(self, plan: Any) -> SharedEngine:
        """The loaded engine, built now if there is none (first use, or after it died)."""
        from captioner.planning import check_engine, engine_concurrency, load_engine

        with self._lock:
            if self._engine is None:
                started = time.perf_counter()
                self._engine = SharedEngine((self.load or load_engine)(plan))
                self.metrics.engine_loaded(time.perf_counter() - started)
                # Computed vs vLLM-reported clips in flight, for the plan the engine was built for (warns if apart).
                self.metrics.engine_sized(engine_concurrency(self._engine.engine, plan))
            check_engine(self._engine.engine, plan)
            return self._engine

    def decoder(self, plan: Any) -> FrameDecoder:
        """The worker's decoder pool for the plan's frames: started once, kept for the worker's life."""
        spec = plan.frame_spec
        with self._lock:
            if spec not in self._decoders:
                self._decoders[spec] = (self.make_decoder or _frame_decoder)(plan)
            return self._decoders[spec]

    def start(self) -> None:
        """Load the engine for the worker's own settings (before any chunk); start beating; serve metrics."""
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
            except Exception:  # noqa: BLE001 - Redis away for a moment: beat again next time
                log.warning("heartbeat failed", exc_info=True)

    def recover(self) -> int:
        """Send again, ahead of the queue, every chunk whose worker stopped beating; return how many."""
        sent = 0
        for chunk, entry in self.store.orphans():
            app = app_for(self.settings)
            queue = entry.get("queue") or self.settings.queue
            app.send_task(CHUNK_TASK, args=entry["args"], queue=queue, priority=RECOVERED_PRIORITY)
            silent = time.time() - entry["since"]
            log.warning("chunk %s: worker %s stopped beating; chunk sent again (started %.0f s ago)",
                        chunk, entry["host"], silent)  # fmt: skip
            sent += 1
        return sent

    def drop_engine(self) -> None:
        """Forget a dead engine so the next chunk builds a new one; free what it held."""
        with self._lock:
            shared, self._engine = self._engine, None
        if shared is None:
            return
        try:
            shared.engine.llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - it is dead already; freeing is best effort
            log.debug("engine shutdown failed", exc_info=True)
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


def _frame_decoder(plan: Any) -> FrameDecoder:
    return FrameDecoder(plan.frame_spec, plan.profile.decode_workers, plan.settings.decode_timeout)


def run_chunk(
    runtime: WorkerRuntime,
    job_id: str,
    index: int,
    videos: list[str],
    out: str,
    options: dict[str, Any],
    host: str,
    last_attempt: bool,
) -> dict[str, Any]:
    """Caption one chunk of a job; return its counts. Safe to run again for the same chunk.

    Any error raises `RetryChunk` (after dropping a dead engine) unless `last_attempt`; then the
    chunk's remaining clips are recorded `failed` with the reason. The worker that finishes the
    job's last chunk finishes the job.
    """
    from captioner.planning import ConfigError
    from captioner.pipeline import RunStats, caption_videos

    store, settings = runtime.store, runtime.settings
    job = store.get(job_id)
    state = job["state"] if job else None
    if state is None or state in FINISHED:
        log.warning("job %s chunk %d: job is %s; skipped", job_id, index, state or "unknown (expired?)")
        return {"skipped_chunk": state or "unknown"}
    try:
        opts = JobOptions.model_validate(options)
        out_dir = allowed_path(Path(out), settings.allowed_roots, "output")
        plan = runtime.plan(opts)
    except (ValidationError, SubmitError, ConfigError) as exc:
        # Not this chunk's fault and the same for every chunk: the job cannot run on this worker.
        reason = f"worker {host} refused the job: {exc}"
        log.error("job %s: %s", job_id, reason)
        store.finish(job_id, "failed", reason)
        return {"refused": reason}

    deliveries = store.start_chunk(
        job_id, index, runtime.id, host, job.get("queue") or settings.queue, [job_id, index, videos, out, options]
    )
    if deliveries < 0:
        log.info("job %s chunk %d: %s; nothing to do", job_id, index,
                 "finished already" if deliveries == -2 else "job gone")  # fmt: skip
        return {"skipped_chunk": "finished" if deliveries == -2 else "unknown"}
    started = time.perf_counter()
    key = plan.key
    stats = RunStats(videos=len(videos))
    counts: list[tuple[Any, str, Any]] = []  # (video, ok | failed | skipped, record) for `publish`
    failures: list[tuple[Path, str]] = []
    todo: list[Path] = []
    for path in map(Path, videos):
        try:
            allowed_path(path, settings.allowed_roots, "video")
            todo.append(path)
        except SubmitError as exc:
            failures.append((path, str(exc)))
    store.ensure_index(out_dir, key)
    mine: list[Path] = []
    for path, claim in zip(todo, store.claim(out_dir, key, runtime.id, f"{job_id}:{index}", todo), strict=True):
        if claim == 0:
            mine.append(path)
        else:  # done already, or another job's worker is captioning it now: its record will be there
            counts.append((path, "skipped", None))
            stats.skipped += 1
    writer = PartWriter(out_dir, job_id, index)

    def write_failed(items: list[tuple[Path, str]]) -> None:
        for video, reason in items:
            record = plan.record(video, status="failed", caption="", error=reason)
            writer.write(record)
            on_record(record)

    def on_record(record: Any) -> None:
        counts.append((record.video, record.status, record))
        runtime.metrics.record(record)
        if store.state(job_id) not in ("queued", "running"):  # cancelled (or expired since)
            raise _Cancelled

    try:
        write_failed(failures)
        if deliveries > settings.chunk_retries + 1 + EXTRA_DELIVERIES:
            reason = f"gave up: this chunk was started {deliveries - 1} times and its worker vanished each time"
            write_failed([(video, reason) for video in mine])
        else:
            caption_videos(
                mine, writer, plan, lambda: runtime.engine(plan), stats, on_record,
                on_batch=runtime.metrics.batch, decoder=runtime.decoder(plan),
                slots=runtime.engine(plan).slots,
            )  # fmt: skip
    except _Cancelled:
        _abandon(runtime, writer, job_id, index, out_dir, key, mine)
        log.info("job %s chunk %d: job cancelled; stopped", job_id, index)
        return {"cancelled": True}
    except Exception as exc:  # noqa: BLE001 - any failure: retry the chunk, finally fail its clips
        from captioner.engine import engine_dead

        died = engine_dead(exc)
        if died:
            runtime.drop_engine()  # rebuilt by the next chunk that needs it
        reason = f"{'vLLM engine died' if died else 'worker error'}: {type(exc).__name__}: {exc}"
        if not last_attempt:
            log.warning("job %s chunk %d: %s; retrying", job_id, index, reason)
            _abandon(runtime, writer, job_id, index, out_dir, key, mine)
            raise RetryChunk(reason) from exc
        log.error("job %s chunk %d: %s; giving up on its remaining clips", job_id, index, reason)
        written = {video_id(video) for video, _, _ in counts}
        try:
            write_failed([(v, f"{reason} (after retries)") for v in mine if video_id(v) not in written])
        except _Cancelled:
            pass

    if writer.records:
        writer.publish()
    else:
        writer.discard()  # nothing new (every video done already): no empty part file
    seconds = time.perf_counter() - started
    complete = store.publish(job_id, index, host, seconds, out_dir, key, counts)
    stats.ok = sum(1 for _, counter, _ in counts if counter == "ok")
    stats.failed = sum(1 for _, counter, _ in counts if counter == "failed")
    captioned = stats.ok + stats.failed
    runtime.metrics.chunk(captioned, stats.skipped, stats.output_tokens, seconds)
    log.info(
        "job %s chunk %d: %d videos (%d ok, %d failed, %d skipped) in %.1f s: %.3f videos/s, %.1f output tokens/s",
        job_id, index, len(videos), stats.ok, stats.failed, stats.skipped, seconds,
        captioned / seconds if seconds else 0.0, stats.output_tokens / seconds if seconds else 0.0,
    )  # fmt: skip
    if complete:
        finish_job(store, job_id, plan.versions())
    return {"ok": stats.ok, "failed": stats.failed, "skipped": stats.skipped, "seconds": round(seconds, 3)}


def _abandon(
    runtime: WorkerRuntime, writer: PartWriter, job_id: str, index: int, out_dir: Path, key: Any, mine: list[Path]
) -> None:
    """The chunk stops without results: nothing it wrote becomes visible, its claims go."""
    writer.discard()
    runtime.store.release(out_dir, key, mine)
    runtime.store.leave(job_id, index)


def finish_job(store: JobStore, job_id: str, versions: dict[str, Any]) -> None:
    """Merge the job's part files into one, write its summary, mark it done. O(job), once.

    Serialized per output folder by a Redis lock.
    """
    job = store.get(job_id)
    if job is None or job["state"] in FINISHED:
        return
    out_dir = Path(job["out"])
    with store.lock("out:" + folder_key(out_dir)):
        if store.state(job_id) in FINISHED:
            return
        started = time.perf_counter()
        records = merge_parts(out_dir, job_id)
        current = status(store, job_id)
        summary = job_summary(current, versions)
        summary["finish_s"] = round(time.perf_counter() - started, 3)  # merging the parts: O(job), once
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
        write_atomic(out_dir / "summary.json", text)
        if job.get("summary"):
            write_atomic(out_dir / job["summary"], text)
        store.finish(job_id, "done")
    log.info(
        "job %s done: %d videos, %d ok, %d failed, %d skipped (%d records merged in %.1f s)",
        job_id, summary["videos"], summary["ok"], summary["failed"], summary["skipped"], records,
        time.perf_counter() - started,
    )  # fmt: skip


def nightly(runtime: WorkerRuntime) -> str | None:
    """Queue the nightly job: videos under the watched folders without an `ok` record for this
    worker's model, adapter and prompt. Its summary is also written as `nightly-YYYY-MM-DD.json`.

    Returns the job id (None when nothing is configured). Folders that cannot be used are logged
    and left out; the others still run.
    """
    settings = runtime.settings
    if not settings.nightly_folders or settings.nightly_out is None:
        log.warning("nightly: no nightly_folders / nightly_out configured; nothing to do")
        return None
    today = datetime.now(ZoneInfo(settings.timezone)).date().isoformat()
    try:
        out_dir = allowed_path(Path(settings.nightly_out), settings.allowed_roots, "output")
    except SubmitError as exc:
        log.error("nightly: %s; nothing queued", exc)
        return None
    folders: list[Path] = []
    videos: list[Path] = []
    left_out = Found()  # hidden and AppleDouble files; files still being copied wait for tomorrow
    for folder in settings.nightly_folders:
        try:
            checked, _, found = check_submission([folder], out_dir, settings)
        except SubmitError as exc:
            log.warning("nightly: %s; folder left out tonight", exc)
            continue
        folders += checked
        videos += found.videos
        left_out.ignored += found.ignored
        left_out.settling += found.settling
    options = job_options(settings)
    plan = runtime.plan(options)
    runtime.store.ensure_index(out_dir, plan.key)
    todo = [video for video, done in zip(videos, runtime.store.done(out_dir, plan.key, videos)) if not done]
    job_id = enqueue(
        runtime.store, settings, folders, out_dir, todo, options,
        skipped=len(videos) - len(todo), summary=f"nightly-{today}.json", left_out=left_out,
    )  # fmt: skip
    if not todo:
        finish_job(runtime.store, job_id, plan.versions())
    log.info("nightly %s: job %s, %d of %d videos to caption", today, job_id, len(todo), len(videos))
    return job_id
