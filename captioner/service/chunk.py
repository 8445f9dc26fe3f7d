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
from captioner.service.errors import RetryChunk, SubmitError
from captioner.service.jobs import finish_job
from captioner.service.runtime import WorkerRuntime
from captioner.service.store import FINISHED
from captioner.service.submit import JobOptions, allowed_path
from captioner.sources import video_id

if TYPE_CHECKING:
    from captioner.captioning import CaptionStats
    from captioner.planning import Plan

log = logging.getLogger(__name__)

# A chunk started this many times more than its retries allow was killing its workers: give up.
EXTRA_DELIVERIES = 3


class _Cancelled(Exception):
    """The job was cancelled while this chunk ran."""


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
    store, settings = runtime.store, runtime.settings
    job = store.get(job_id)
    state = job["state"] if job else None
    if job is None or state in FINISHED:
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
    queue = job.get("queue") or settings.queue
    deliveries = store.start_chunk(job_id, index, runtime.id, host, queue, [job_id, index, videos, out, options])
    if deliveries < 0:
        log.info("job %s chunk %d: %s; nothing to do", job_id, index,
                 "finished already" if deliveries == -2 else "job gone")  # fmt: skip
        return {"skipped_chunk": "finished" if deliveries == -2 else "unknown"}
    return ChunkRun(runtime, plan, job_id, index, out_dir, host, len(videos)).run(videos, deliveries, last_attempt)


class ChunkRun:
    """A started chunk: its claims, its part file, and the (video, counter, record) that `publish` counts."""

    def __init__(
        self, runtime: WorkerRuntime, plan: Plan, job_id: str, index: int, out_dir: Path, host: str, videos: int
    ) -> None:
        from captioner.captioning import CaptionStats  # loads torch: not for the CLI that only submits

        self.runtime, self.store, self.plan = runtime, runtime.store, plan
        self.job_id, self.index, self.out_dir, self.host = job_id, index, out_dir, host
        self.name = f"job {job_id} chunk {index}"
        self.writer = PartWriter(out_dir, job_id, index)
        self.stats: CaptionStats = CaptionStats(videos=videos)
        self.counts: list[tuple[Path | str, str, CaptionRecord | None]] = []
        self.mine: list[Path] = []  # the videos this chunk claimed
        self.started = time.perf_counter()

    def run(self, videos: list[str], deliveries: int, last_attempt: bool) -> dict[str, Any]:
        """Claim, caption, publish (or stop cleanly on cancel, or hand the error to Celery to retry)."""
        refused = self.claim([Path(video) for video in videos])
        try:
            self.write_failed(refused)
            settings = self.runtime.settings
            if deliveries > settings.chunk_retries + 1 + EXTRA_DELIVERIES:
                reason = f"gave up: this chunk was started {deliveries - 1} times and its worker vanished each time"
                self.write_failed([(video, reason) for video in self.mine])
            else:
                self.caption()
        except _Cancelled:
            self.abandon()
            log.info("%s: job cancelled; stopped", self.name)
            return {"cancelled": True}
        except Exception as exc:  # noqa: BLE001 - any failure: retry the chunk, finally fail its clips
            self.fail(exc, last_attempt)
        return self.publish()

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

        runtime, plan = self.runtime, self.plan
        caption_videos(
            self.mine, self.writer, plan, lambda: runtime.engine(plan), self.stats, self.on_record,
            on_batch=runtime.metrics.batch, decoder=runtime.decoder(plan), slots=runtime.engine(plan).slots,
        )  # fmt: skip

    def on_record(self, record: CaptionRecord) -> None:
        """Count a written record; stop the chunk if its job was cancelled meanwhile."""
        self.counts.append((record.video, record.status, record))
        self.runtime.metrics.record(record)
        if self.store.state(self.job_id) not in ("queued", "running"):  # cancelled (or expired since)
            raise _Cancelled

    def write_failed(self, items: list[tuple[Path, str]]) -> None:
        """Record each (video, reason) as failed."""
        made = self.plan.made()
        for video, reason in items:
            record = failed_record(made, video, reason)
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
            self.abandon()
            raise RetryChunk(reason) from exc
        log.error("%s: %s; giving up on its remaining clips", self.name, reason)
        written = {video_id(video) for video, _, _ in self.counts}
        try:
            self.write_failed([(v, f"{reason} (after retries)") for v in self.mine if video_id(v) not in written])
        except _Cancelled:
            pass

    def abandon(self) -> None:
        """The chunk stops without results: nothing it wrote becomes visible, its claims go."""
        self.writer.discard()
        self.store.release(self.out_dir, self.plan.key, self.mine)
        self.store.leave(self.job_id, self.index)

    def publish(self) -> dict[str, Any]:
        """Make the part file visible, count the chunk in Redis, and finish the job if this was its last chunk."""
        if self.writer.records:
            self.writer.publish()
        else:
            self.writer.discard()  # nothing new (every video done already): no empty part file
        seconds = time.perf_counter() - self.started
        complete = self.store.publish(
            self.job_id, self.index, self.host, seconds, self.out_dir, self.plan.key, self.counts
        )
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
        if complete:
            finish_job(self.store, self.job_id, self.plan.versions())
        return {"ok": stats.ok, "failed": stats.failed, "skipped": stats.skipped, "seconds": round(seconds, 3)}
