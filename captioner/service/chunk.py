"""One chunk of a job on a worker, from start to end (`run_chunk`).

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

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from captioner.errors import ConfigError
from captioner.records import CaptionRecord, PartWriter, failed_record
from captioner.service.errors import ChunkBusy, RetryChunk, SubmitError
from captioner.service.jobs import finish_job
from captioner.service.message import ChunkMessage, JobRecord, MessageRefused, chunk_digest
from captioner.service.runtime import WorkerRuntime
from captioner.service.store import FINISHED
from captioner.service.submit import JobOptions, allowed_path
from captioner.sources import video_bytes

if TYPE_CHECKING:
    from captioner.captioning import CaptionStats
    from captioner.planning import Plan

log = logging.getLogger(__name__)

# A chunk started this many times more than its retries allow was killing its workers: give up.
EXTRA_DELIVERIES = 3
# Celery's longest wait between tries (`retry_backoff_max` of the task): a retry not taken by then
# (its worker died holding it) is sent again by the heartbeat.
RETRY_WAIT_S = 60.0


class _Cancelled(Exception):
    """The job was cancelled while this chunk ran."""


def run_chunk(runtime: WorkerRuntime, *args: Any, host: str, last_attempt: bool, **kwargs: Any) -> dict[str, Any]:
    """Caption one chunk of a job; return its counts. Safe to run again for the same chunk.

    `args`/`kwargs` are the message's (JOB_ID, INDEX, VIDEOS, OUT, OPTIONS), checked here before
    use: a malformed message, or one that does not match its job, is refused (logged, nothing
    changed). Once the chunk has started, any error raises `RetryChunk` (after dropping a dead
    engine) unless `last_attempt`; then the chunk's remaining clips are recorded `failed` with the
    reason. `ChunkBusy`: another delivery of the chunk runs now. The worker that finishes the job's
    last chunk finishes the job.
    """
    try:
        message = ChunkMessage.read(args, kwargs)
    except MessageRefused as exc:
        log.error("%s", exc)
        return {"refused": str(exc)}
    store, settings = runtime.store, runtime.settings
    job_id, index = message.job_id, message.index
    fields = store.get(job_id)
    state = fields.get("state") if fields else None
    if fields is None or state in FINISHED:
        log.warning("job %s chunk %d: job is %s; skipped", job_id, index, state or "unknown (expired?)")
        return {"skipped_chunk": state or "unknown"}
    try:
        job = JobRecord.read(fields)
        opts = JobOptions.model_validate(job.options)
        out_dir = allowed_path(Path(job.out), settings.writable_roots, "output")
        plan = runtime.plan(opts)
    except (ValidationError, MessageRefused, SubmitError, ConfigError) as exc:
        # Not this chunk's fault and the same for every chunk: the job cannot run on this worker.
        reason = f"worker {host} refused the job: {exc}"
        log.error("job %s: %s", job_id, reason)
        store.finish(job_id, "failed", reason)
        return {"refused": reason}
    mismatch = _mismatch(message, job, store.chunk_digest(job_id, index))
    if mismatch:
        log.error("job %s chunk %d: message refused: %s", job_id, index, mismatch)
        return {"refused": mismatch}
    name = f"{job_id}:{index}"
    if not runtime.begin(name):
        raise ChunkBusy(f"job {job_id} chunk {index} is running on this worker already")
    try:
        deliveries = store.start_chunk(job_id, index, runtime.id, host, job.queue or settings.queue, message.args())
        if deliveries == -3:
            raise ChunkBusy(f"job {job_id} chunk {index} is running on another live worker")
        if deliveries < 0:
            log.info("job %s chunk %d: %s; nothing to do", job_id, index,
                     "finished already" if deliveries == -2 else "job gone")  # fmt: skip
            return {"skipped_chunk": "finished" if deliveries == -2 else "unknown"}
        run = ChunkRun(runtime, plan, job_id, index, out_dir, host, len(message.videos))
        return run.run(message.videos, deliveries, last_attempt)
    finally:
        runtime.end(name)


def _mismatch(message: ChunkMessage, job: JobRecord, digest: str | None) -> str:
    """Why `message` cannot be a chunk of `job` ("" when it can): it names another folder, chunk,
    options, or videos than the chunk's as submitted (`digest`; None: a job recorded before digests)."""
    if message.out != job.out:
        return "its output folder is not the job's"
    if message.index >= job.chunks:
        return f"chunk {message.index} of a job of {job.chunks} chunks"
    if message.options != job.options:
        return "its options are not the job's"
    if digest is not None and chunk_digest(list(message.videos)) != digest:
        return f"its videos are not those of the job's chunk {message.index}"
    return ""


class ChunkRun:
    """A started chunk: its claims, its part file, and the (video, counter, record) that `publish` counts."""

    def __init__(
        self, runtime: WorkerRuntime, plan: Plan, job_id: str, index: int, out_dir: Path, host: str, videos: int
    ) -> None:
        from captioner.captioning import CaptionStats  # loads torch: not for the CLI that only submits

        self.runtime, self.store, self.plan = runtime, runtime.store, plan
        self.job_id, self.index, self.out_dir, self.host = job_id, index, out_dir, host
        self.name = f"job {job_id} chunk {index}"
        self.writer: PartWriter | None = None  # opened in `run`: a folder that cannot be written is a failure like any
        self.stats: CaptionStats = CaptionStats(videos=videos)
        self.counts: list[tuple[Path | str, str, CaptionRecord | None]] = []
        self.videos: list[Path] = []  # all of the chunk's videos
        self.mine: list[Path] = []  # the videos this chunk claimed
        self.started = time.perf_counter()

    def run(self, videos: list[str], deliveries: int, last_attempt: bool) -> dict[str, Any]:
        """Claim, caption, publish (or stop cleanly on cancel, or hand the error to Celery to retry)."""
        self.videos = [Path(video) for video in videos]
        try:
            self.writer = PartWriter(self.out_dir, self.job_id, self.index)
            refused = self.claim(self.videos)
            self.write_failed(refused)
            settings = self.runtime.settings
            if deliveries > settings.chunk_retries + 1 + EXTRA_DELIVERIES:
                reason = f"gave up: this chunk was started {deliveries - 1} times and its worker vanished each time"
                self.write_failed([(video, reason) for video in self.mine])
            else:
                self.caption()
        except _Cancelled:
            self.abandon(retry=False)
            log.info("%s: job cancelled; stopped", self.name)
            return {"cancelled": True}
        except Exception as exc:  # noqa: BLE001 - any failure: retry the chunk, finally fail its clips
            self.fail(exc, last_attempt)
        return self.publish(last_attempt)

    def claim(self, videos: list[Path]) -> list[tuple[Path, str]]:
        """Claim the chunk's videos in the done-index (`mine`); count the skipped; return the refused ones."""
        settings = self.runtime.settings
        refused: list[tuple[Path, str]] = []
        allowed: list[Path] = []
        for path in videos:
            try:
                allowed_path(path, settings.allowed_roots, "video")
                allowed.append(path)
            except SubmitError as exc:
                refused.append((path, str(exc)))
        key = self.plan.key
        self.store.ensure_index(self.out_dir, key)
        claims = self.store.claim(self.out_dir, key, self.runtime.id, f"{self.job_id}:{self.index}", allowed)
        for path, claim in zip(allowed, claims, strict=True):
            if claim == 0:
                self.mine.append(path)
            else:  # done already, or another job's worker is captioning it now: its record will be there
                self.counts.append((path, "skipped", None))
                self.stats.skipped += 1
        return refused

    def caption(self) -> None:
        """Caption the claimed videos into the part file, through the worker's shared engine and decoders."""
        from captioner.captioning import caption_videos

        runtime, plan, writer = self.runtime, self.plan, self.writer
        assert writer is not None  # opened by `run` before anything else
        caption_videos(
            self.mine, writer, plan, lambda: runtime.engine(plan), self.stats, self.on_record,
            on_batch=runtime.metrics.batch, decoder=runtime.decoder(plan), slots=runtime.engine(plan).slots,
        )  # fmt: skip

    def on_record(self, record: CaptionRecord) -> None:
        """Count a written record; stop the chunk if its job was cancelled meanwhile."""
        self.counts.append((record.path, record.status, record))
        self.runtime.metrics.record(record)
        if self.store.state(self.job_id) not in ("queued", "running"):  # cancelled (or expired since)
            raise _Cancelled

    def write_failed(self, items: list[tuple[Path, str]]) -> None:
        """Record each (video, reason) as failed."""
        made = self.plan.made()
        for video, reason in items:
            record = failed_record(made, video, reason)
            if self.writer is None:
                raise OSError(f"{self.out_dir}: the chunk's part file could not be opened")
            self.writer.write(record)
            self.on_record(record)

    def fail(self, exc: Exception, last_attempt: bool) -> None:
        """The chunk failed: drop a dead engine; raise `RetryChunk`, or on the last attempt fail what is left."""
        from captioner.engine import engine_dead

        died = engine_dead(exc)
        if died:
            self.runtime.drop_engine()  # rebuilt by the next chunk that needs it
        reason = f"{'vLLM engine died' if died else 'worker error'}: {type(exc).__name__}: {exc}"
        if not last_attempt:
            log.warning("%s: %s; retrying", self.name, reason)
            self.abandon(retry=True)
            raise RetryChunk(reason) from exc
        log.error("%s: %s; giving up on its remaining clips", self.name, reason)
        self.fail_rest(f"{reason} (after retries)")

    def fail_rest(self, reason: str) -> None:
        """Record every video not counted yet as failed; if even that cannot be written (the output
        folder is unwritable), count them failed in Redis alone, so the job still ends."""
        written = {video_bytes(video) for video, _, _ in self.counts}
        rest = [video for video in self.videos if video_bytes(video) not in written]
        try:
            self.write_failed([(video, reason) for video in rest])
        except _Cancelled:
            pass
        except Exception as exc:  # noqa: BLE001 - no record can be written: the counts still settle the chunk
            log.error("%s: %s; its %d clips are counted failed without records", self.name, exc, len(rest))
            self.count_unwritten()

    def count_unwritten(self) -> None:
        """No record of this attempt can be made visible: count every video not skipped as failed."""
        self.discard()
        skipped = [count for count in self.counts if count[1] == "skipped"]
        passed = {video_bytes(video) for video, _, _ in skipped}
        self.counts = skipped + [(video, "failed", None) for video in self.videos if video_bytes(video) not in passed]

    def discard(self) -> None:
        """Remove the part file being written (nothing it holds becomes visible)."""
        if self.writer is not None:
            try:
                self.writer.discard()
            except OSError as exc:
                log.warning("%s: could not remove its temporary part file: %s", self.name, exc)
            self.writer = None

    def abandon(self, retry: bool) -> None:
        """The chunk stops without results: nothing it wrote becomes visible, its claims go; it waits
        for its retry (`retry`) or leaves (cancelled). Each step runs whatever the others raise."""
        self.discard()
        try:
            self.store.release(self.out_dir, self.plan.key, self.mine)
        except Exception as exc:  # noqa: BLE001 - the claims die with the chunk's running entry anyway
            log.warning("%s: could not release its claims: %s", self.name, exc)
        if retry:
            self.store.defer(self.job_id, self.index, self.runtime.id, time.time() + RETRY_WAIT_S)
        else:
            self.store.leave(self.job_id, self.index)

    def publish(self, last_attempt: bool) -> dict[str, Any]:
        """Make the part file visible, count the chunk in Redis, and finish the job if this was its last chunk."""
        try:
            if self.writer is not None and self.writer.records:
                self.writer.publish()
                self.writer = None
            else:
                self.discard()  # nothing new (every video done already): no empty part file
        except OSError as exc:
            if not last_attempt:
                log.warning("%s: publishing its part file failed: %s; retrying", self.name, exc)
                self.abandon(retry=True)
                raise RetryChunk(f"publishing failed: {exc}") from exc
            log.error("%s: publishing its part file failed: %s; its clips are counted failed", self.name, exc)
            self.count_unwritten()
        seconds = time.perf_counter() - self.started
        complete = self.store.publish(
            self.job_id, self.index, self.host, seconds, self.out_dir, self.plan.key, self.counts
        )
        self.report(seconds)
        if complete:
            try:
                finish_job(self.store, self.job_id, self.plan.versions(), self.runtime.settings.writable_roots)
            except Exception:  # noqa: BLE001 - the heartbeats finish it (`jobs.finish_settled`)
                log.warning("%s: finishing job %s failed; the heartbeat tries again", self.name, self.job_id,
                            exc_info=True)  # fmt: skip
        stats = self.stats
        return {"ok": stats.ok, "failed": stats.failed, "skipped": stats.skipped, "seconds": round(seconds, 3)}

    def report(self, seconds: float) -> None:
        """Count the chunk in the worker's metrics and log one line about it."""
        stats = self.stats
        stats.ok = sum(1 for _, counter, _ in self.counts if counter == "ok")
        stats.failed = sum(1 for _, counter, _ in self.counts if counter == "failed")
        captioned = stats.ok + stats.failed
        self.runtime.metrics.chunk(captioned, stats.skipped, stats.output_tokens, seconds)
        log.info(
            "%s: %d videos (%d ok, %d failed, %d skipped) in %.1f s: %.3f videos/s, %.1f output tokens/s",
            self.name, stats.videos, stats.ok, stats.failed, stats.skipped, seconds,
            captioned / seconds if seconds else 0.0, stats.output_tokens / seconds if seconds else 0.0,
        )  # fmt: skip
