"""Captioning as a service: jobs of video folders, split into chunks and queued for Celery workers.

`submit` checks the folders (allowed roots, `..`, escaping symlinks, missing or unreadable) and
Redis before anything is queued, records the job in Redis and sends one Celery task per chunk.
A worker runs a chunk with `run_chunk`, which calls the same pipeline functions as `captioner run`
(`pending_videos`, `caption_videos`) and writes the same records into the job's `captions.jsonl`.

Job state lives in Redis, under keys sharing the hash tag `{JOB_ID}`:

- `captioner:job:{ID}` hash: `state` (queued | running | done | cancelled | failed: refused by a
  worker, e.g. an output folder outside its allowed roots), `out`, `folders`,
  `options`, `queue`, `summary`, `videos`, `chunks`, the counters `ok`, `failed`, `skipped`,
  `output_tokens`, `prompt_tokens`, `cached_tokens`, `busy_s`, and the epoch times `submitted_at`,
  `started_at`, `finished_at`; `error` when the job failed as a whole.
- `...:videos` set: videos already counted. Counting is "add to the set, and only if new, increment a
  counter" in one Lua script, so a redelivered chunk never counts a video twice, and it tells a
  redelivered chunk which videos are done (failed ones included: they are not retried within a job).
- `...:chunks` set: chunks finished; the worker that finishes the last one finishes the job.
- `...:workers` hash: chunks finished per worker; `...:active`: the chunk each worker is running;
  `...:deliveries`: how often each chunk was started (bounds redelivery of a chunk that kills workers).

Finished (done, cancelled, failed) jobs expire `job_ttl` seconds later.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from captioner.config import Settings
from captioner.metrics import WorkerMetrics
from captioner.outputs import CAPTIONS_FILE, RecordWriter, compact, latest_by_video, read_records, write_atomic
from captioner.prompts import PromptError, load_prompt
from captioner.sources import Found, SourceError, check_folder, find_videos, video_id
from captioner.tiers import resolve_profile

log = logging.getLogger(__name__)

CHUNK_TASK = "captioner.caption_chunk"
NIGHTLY_TASK = "captioner.nightly"
FINISHED = ("done", "cancelled", "failed")
# A chunk started this many times more than its retries allow was killing its workers: give up.
EXTRA_DELIVERIES = 3


class SubmitError(Exception):
    """A job that cannot be accepted; the message says why. Nothing has been queued."""


class JobNotFound(Exception):
    """No such job (never submitted, or expired after `job_ttl`)."""


class RetryChunk(Exception):
    """The chunk failed in a way worth another try (engine died, worker error); Celery retries it."""


class _Cancelled(Exception):
    """The job was cancelled while this chunk ran."""


class JobOptions(BaseModel):
    """What a job fixes for every chunk; model, adapter and tier are the worker's own.

    Validated again on the worker, since a message on the broker need not come from `submit`.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, pattern=r"^[A-Za-z0-9][\w.-]*(@v?\d+)?$")
    sampling: Literal["default", "deterministic"] | None = None
    frames: int | None = Field(None, gt=0, le=256)

    def apply(self, settings: Settings) -> Settings:
        """`settings` with this job's options in force."""
        return settings.model_copy(update=self.model_dump(exclude_none=True))


# --------------------------------------------------------------------------- Redis


def secure_url(url: str) -> str:
    """`url`, with certificate checking made explicit for `rediss://` (kombu would default to none)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    query = dict(parse_qsl(parts.query))
    if "ssl_cert_reqs" in query:
        return url
    query["ssl_cert_reqs"] = "required"
    return urlunsplit(parts._replace(query=urlencode(query)))


def connect(url: str, patient: bool) -> redis.Redis:
    """A Redis client for job state.

    `patient` (workers): commands retry with backoff for about three minutes, so a worker rides
    out a Redis restart. Otherwise (the CLI) a command fails at once and says so.
    """
    retry = Retry(ExponentialBackoff(cap=5, base=0.25), 40) if patient else Retry(NoBackoff(), 0)
    return redis.Redis.from_url(
        secure_url(url),
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=15,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def ping(client: redis.Redis) -> None:
    """Raise `SubmitError` naming host:port (never the password) at once when Redis cannot be reached."""
    try:
        client.ping()
    except redis.RedisError as exc:
        url = client.connection_pool.connection_kwargs
        raise SubmitError(f"cannot reach Redis at {url.get('host', '?')}:{url.get('port', '?')} ({exc})") from None


# Count one video once: add it to the job's set and bump counters only if it was not there yet.
_ACCOUNT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'prompt_tokens', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'cached_tokens', ARGV[5])
return 1
"""

# A chunk starts: first start of the job sets started_at; the chunk's stale owners (dead workers) go.
_START = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
if redis.call('HGET', KEYS[1], 'state') == 'queued' then redis.call('HSET', KEYS[1], 'state', 'running') end
local active = redis.call('HGETALL', KEYS[2])
for i = 1, #active, 2 do
  if active[i + 1] == ARGV[2] then redis.call('HDEL', KEYS[2], active[i]) end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
"""

# A chunk ends: returns 1 when every chunk is done and the job still needs finishing.
_CHUNK_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
  redis.call('HINCRBYFLOAT', KEYS[1], 'busy_s', ARGV[3])
end
if redis.call('HGET', KEYS[4], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[4], ARGV[2]) end
local state = redis.call('HGET', KEYS[1], 'state')
local total = tonumber(redis.call('HGET', KEYS[1], 'chunks') or '0')
if redis.call('SCARD', KEYS[2]) >= total and state ~= 'done' and state ~= 'cancelled' and state ~= 'failed' then
  return 1
end
return 0
"""

# queued/running -> a finished state, once.
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'done' or state == 'cancelled' or state == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 1
"""


class JobStore:
    """Job state in Redis (see the module docstring for the keys)."""

    def __init__(self, client: redis.Redis, job_ttl: int) -> None:
        self.redis = client
        self.job_ttl = job_ttl
        self._account = client.register_script(_ACCOUNT)
        self._start = client.register_script(_START)
        self._chunk_done = client.register_script(_CHUNK_DONE)
        self._finish = client.register_script(_FINISH)

    @classmethod
    def connect(cls, settings: Settings, patient: bool = False) -> JobStore:
        """The store at `settings.store_url`."""
        return cls(connect(settings.store_url, patient), settings.job_ttl)

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        """Redis key of a job's hash, or of one of its parts (`videos`, `chunks`, ...)."""
        return f"captioner:job:{{{job_id}}}" + (f":{part}" if part else "")

    def keys(self, job_id: str) -> list[str]:
        """Every key of a job."""
        return [self.key(job_id)] + [
            self.key(job_id, part) for part in ("videos", "chunks", "workers", "active", "deliveries")
        ]

    def ping(self) -> None:
        """Raise `SubmitError` at once when Redis cannot be reached."""
        ping(self.redis)

    def create(self, job_id: str, fields: dict[str, Any]) -> None:
        """Record a new job."""
        self.redis.hset(self.key(job_id), mapping={k: _text(v) for k, v in fields.items()})

    def get(self, job_id: str) -> dict[str, str] | None:
        """The job's hash, or None when it does not exist (any more)."""
        return self.redis.hgetall(self.key(job_id)) or None

    def state(self, job_id: str) -> str | None:
        """The job's state."""
        return self.redis.hget(self.key(job_id), "state")

    def start_chunk(self, job_id: str, index: int, worker: str) -> int:
        """Mark chunk `index` as running on `worker`; return how often it was started (-1: no such job)."""
        return int(
            self._start(
                keys=[self.key(job_id), self.key(job_id, "active"), self.key(job_id, "deliveries")],
                args=[worker, str(index), repr(time.time())],
            )
        )

    def account(self, job_id: str, video: Path | str, counter: str, record: Any = None) -> bool:
        """Count `video` under `counter` (ok, failed, skipped) unless it was counted; True if counted now."""
        tokens = [getattr(record, name, 0) or 0 for name in ("output_tokens", "prompt_tokens", "cached_tokens")]
        args = [video_id(video), counter, *tokens]  # Redis takes valid text: any file name as its video_id
        return bool(self._account(keys=[self.key(job_id), self.key(job_id, "videos")], args=args))

    def counted(self, job_id: str, videos: list[Path] | list[str]) -> list[bool]:
        """For each video, whether it was counted already."""
        if not videos:
            return []
        members = [video_id(video) for video in videos]
        return [bool(flag) for flag in self.redis.smismember(self.key(job_id, "videos"), members)]

    def chunk_done(self, job_id: str, index: int, worker: str, busy_s: float) -> bool:
        """Mark chunk `index` finished; True when the job is complete and needs finishing."""
        keys = [self.key(job_id)] + [self.key(job_id, part) for part in ("chunks", "workers", "active")]
        return bool(self._chunk_done(keys=keys, args=[str(index), worker, f"{busy_s:.3f}"]))

    def leave(self, job_id: str, index: int, worker: str) -> None:
        """`worker` stopped running chunk `index` without finishing it."""
        self.redis.hdel(self.key(job_id, "active"), worker)

    def finish(self, job_id: str, state: str, error: str = "") -> bool:
        """Move the job to a finished `state` and let its keys expire; False if it was finished already."""
        return self._finish(keys=self.keys(job_id), args=[state, repr(time.time()), error, self.job_ttl]) == 1

    def lock(self, name: str) -> Any:
        """A Redis lock shared by all workers (auto-released after 15 minutes if its holder died)."""
        return self.redis.lock(f"captioner:lock:{name}", timeout=900, blocking_timeout=900)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --------------------------------------------------------------------------- submit


def _allowed(path: Path, roots: list[Path], what: str) -> Path:
    """`path` made absolute, if it (with symlinks resolved) lies under one of `roots`; else SubmitError."""
    if ".." in path.parts:
        raise SubmitError(f"{path}: '..' is not allowed in {what} paths")
    absolute = Path(os.path.abspath(path.expanduser()))
    real = absolute.resolve()
    for root in roots:
        if real.is_relative_to(root.expanduser().resolve()):
            return absolute
    shown = ":".join(str(root) for root in roots) or "(none)"
    if real != absolute:
        raise SubmitError(f"{path}: resolves to {real}, outside the allowed roots ({shown}; CAPTIONER_ALLOWED_ROOTS)")
    raise SubmitError(f"{path}: outside the allowed roots ({shown}; set CAPTIONER_ALLOWED_ROOTS)")


def check_submission(folders: list[Path], out: Path, settings: Settings) -> tuple[list[Path], Path, Found]:
    """Check the folders and the output folder; return them made absolute and the videos found.

    Files modified within `settings.settle_seconds` are left for a later job (`Found.settling`):
    a queued job must never caption a half-copied file. Raises `SubmitError` naming the first
    problem: a path outside the allowed roots (after resolving symlinks), `..`, a missing,
    unreadable or empty folder, or a video that is a symlink pointing outside the roots.
    """
    if not folders:
        raise SubmitError("no folders given")
    roots = settings.allowed_roots
    checked = []
    for folder in folders:
        absolute = _allowed(Path(folder), roots, "folder")
        try:
            check_folder(absolute)
        except SourceError as exc:
            raise SubmitError(str(exc)) from None
        checked.append(absolute)
    out_dir = _allowed(Path(out), roots, "output")
    if out_dir.exists() and not out_dir.is_dir():
        raise SubmitError(f"{out}: output is not a folder")
    if video_id(out_dir) != str(out_dir):  # job state and task messages carry it as text
        raise SubmitError(f"{video_id(out_dir)}: the output folder's name must be valid UTF-8")
    found = find_videos(checked, settings.settle_seconds)
    for problem in found.unreadable:
        raise SubmitError(f"unreadable folder {problem}")
    for folder in checked:
        if not any(video.is_relative_to(folder) for video in found.videos + found.settling):
            raise SubmitError(found.describe_empty(folder))
    for video in found.videos:
        _allowed(video, roots, "video")  # a symlinked video must not reach outside the roots either
    return checked, out_dir, found


def chunk_size(settings: Settings) -> int:
    """Videos per chunk: `chunk_size`, else two of the tier's largest batches (decoding runs a batch ahead).

    The batch itself is sized on the worker, from its model and memory; the submitter knows the
    tier's ceiling (`max_clips`), or the batch when the profile sets one.
    """
    if settings.chunk_size:
        return settings.chunk_size
    profile = resolve_profile(settings.tier, settings.profile)
    return 2 * (profile.batch_size or profile.max_num_seqs or profile.max_clips)


def job_options(settings: Settings) -> JobOptions:
    """The job options from `settings`, with the prompt pinned to its current version."""
    try:
        spec = load_prompt(settings.prompt, settings.prompts_dir)
    except PromptError as exc:
        raise SubmitError(str(exc)) from None
    return JobOptions(prompt=f"{spec.name}@{spec.version}", sampling=settings.sampling, frames=settings.frames)


def submit(folders: list[Path], out: Path, settings: Settings) -> str:
    """Check and queue a job for every video under `folders`; return its id.

    Everything is checked (paths, prompt, Redis) before the first message is sent.
    """
    checked, out_dir, found = check_submission(folders, out, settings)
    if not found.videos:
        raise SubmitError(
            f"all {len(found.settling)} videos were modified in the last {settings.settle_seconds:g} s and may still "
            "be copying; nothing was queued: submit again when the copy is done"
        )
    options = job_options(settings)
    store = JobStore.connect(settings, patient=False)
    try:
        store.ping()
    except SubmitError as exc:
        raise SubmitError(f"{exc}; nothing was queued") from None
    return enqueue(store, settings, checked, out_dir, found.videos, options, left_out=found)


def enqueue(
    store: JobStore,
    settings: Settings,
    folders: list[Path],
    out_dir: Path,
    videos: list[Path],
    options: JobOptions,
    skipped: int = 0,
    summary: str = "",
    left_out: Found | None = None,
) -> str:
    """Record a job and send its chunks; `skipped` videos were found done before queueing.

    `left_out` counts what discovery left out (`ignored`, `settling`) in the job's status.

    A job without videos has no chunk to finish it: the caller finishes it (`finish_job`).
    """
    from workers.app import app_for

    job_id = uuid.uuid4().hex
    size = chunk_size(settings)
    chunks = [[str(v) for v in videos[i : i + size]] for i in range(0, len(videos), size)]
    store.create(
        job_id,
        {
            "id": job_id,
            "state": "queued",
            "out": str(out_dir),
            "folders": [video_id(f) for f in folders],
            "options": options.model_dump(exclude_none=True),
            "queue": settings.queue,
            "summary": summary,
            "videos": len(videos) + skipped,
            "chunks": len(chunks),
            "chunk_size": size,
            "ok": 0,
            "failed": 0,
            "skipped": skipped,
            "ignored": len(left_out.ignored) if left_out else 0,
            "settling": len(left_out.settling) if left_out else 0,
            "output_tokens": 0,
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "busy_s": 0,
            "submitted_at": repr(time.time()),
        },
    )
    app = app_for(settings)
    try:
        with app.producer_or_acquire() as producer:
            for index, chunk in enumerate(chunks):
                app.send_task(
                    CHUNK_TASK,
                    args=[job_id, index, chunk, str(out_dir), options.model_dump(exclude_none=True)],
                    queue=settings.queue,
                    producer=producer,
                )
    except Exception as exc:  # noqa: BLE001 - whatever kombu raises, the chunks sent must not run
        store.finish(job_id, "failed", f"queueing failed: {exc}")
        raise SubmitError(
            f"queueing failed after the job was recorded ({exc}); job {job_id} is marked failed"
        ) from None
    log.info("job %s: %d videos in %d chunks of up to %d -> %s", job_id, len(videos), len(chunks), size, out_dir)
    return job_id


# --------------------------------------------------------------------------- status, cancel


def _iso(epoch: str | None) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(float(epoch), timezone.utc).isoformat(timespec="seconds")


def status(store: JobStore, job_id: str) -> dict[str, Any]:
    """The job's state, counts, timings and workers, as JSON-ready data. Raises `JobNotFound`."""
    job = store.get(job_id)
    if job is None:
        raise JobNotFound(f"job {job_id}: unknown (never submitted, or expired after job_ttl)")
    pipe = store.redis.pipeline(transaction=False)
    pipe.scard(store.key(job_id, "chunks"))
    pipe.hgetall(store.key(job_id, "workers"))
    pipe.hgetall(store.key(job_id, "active"))
    chunks_done, workers, active = pipe.execute()
    number = lambda name: int(job.get(name) or 0)  # noqa: E731
    ok, failed, skipped, videos = number("ok"), number("failed"), number("skipped"), number("videos")
    submitted = float(job["submitted_at"])
    started = float(job["started_at"]) if job.get("started_at") else None
    finished = float(job["finished_at"]) if job.get("finished_at") else None
    end = finished or time.time()
    running_s = end - started if started else 0.0
    captioned = ok + failed
    return {
        "job": job_id,
        "state": job["state"],
        "videos": videos,
        "ok": ok,
        "failed": failed,
        "skipped": skipped,
        "pending": max(0, videos - ok - failed - skipped),
        "ignored": number("ignored"),
        "settling": number("settling"),
        "chunks": number("chunks"),
        "chunks_done": chunks_done,
        "out": job["out"],
        "folders": json.loads(job["folders"]),
        "options": json.loads(job["options"]),
        "error": job.get("error"),
        "timings": {
            "submitted_at": _iso(job["submitted_at"]),
            "started_at": _iso(job.get("started_at")),
            "finished_at": _iso(job.get("finished_at")),
            "queued_s": round((started or end) - submitted, 3),
            "running_s": round(running_s, 3),
            "busy_s": round(float(job.get("busy_s") or 0), 3),
            "videos_per_s": round(captioned / running_s, 4) if captioned and running_s else 0.0,
            "output_tokens_per_s": round(number("output_tokens") / running_s, 2) if running_s else 0.0,
        },
        "output_tokens": number("output_tokens"),
        "workers": {name: int(n) for name, n in workers.items()},
        "active": {name: int(n) for name, n in active.items()},
    }


def cancel(store: JobStore, job_id: str) -> dict[str, Any]:
    """Cancel the job: chunks not started are skipped, running ones stop after their current clip."""
    if store.get(job_id) is None:
        raise JobNotFound(f"job {job_id}: unknown (never submitted, or expired after job_ttl)")
    store.finish(job_id, "cancelled")
    return status(store, job_id)


def wait(store: JobStore, job_id: str, poll_s: float = 1.0, on_poll: Callable[[dict], None] = lambda s: None) -> dict:
    """Poll until the job is finished; return its final status."""
    while True:
        current = status(store, job_id)
        on_poll(current)
        if current["state"] in FINISHED:
            return current
        time.sleep(poll_s)


# --------------------------------------------------------------------------- worker side


@dataclass
class WorkerRuntime:
    """One per worker process: the worker's settings, its engine (loaded once) and plans per job options."""

    settings: Settings
    load: Callable[[Any], Any] | None = None  # plan -> engine; default pipeline.load_engine
    store: JobStore = field(init=False)
    metrics: WorkerMetrics = field(init=False)
    _engine: Any = field(default=None, init=False)
    _plans: dict[str, Any] = field(default_factory=dict, init=False)

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
        from captioner.pipeline import make_plan

        key = options.model_dump_json()
        if key not in self._plans:
            self._plans[key] = make_plan(options.apply(self.settings))
        return self._plans[key]

    def engine(self, plan: Any) -> Any:
        """The loaded engine, built now if there is none (first use, or after it died)."""
        from captioner.pipeline import check_engine, engine_concurrency, load_engine

        if self._engine is None:
            started = time.perf_counter()
            self._engine = (self.load or load_engine)(plan)
            self.metrics.engine_loaded(time.perf_counter() - started)
            # Computed vs vLLM-reported clips in flight, for the plan the engine was built for (warns if apart).
            self.metrics.engine_sized(engine_concurrency(self._engine, plan))
        check_engine(self._engine, plan)
        return self._engine

    def start(self) -> None:
        """Load the engine for the worker's own settings (at worker start, before any chunk); serve metrics."""
        self.engine(self.plan(JobOptions()))
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)

    def drop_engine(self) -> None:
        """Forget a dead engine so the next chunk builds a new one; free what it held."""
        engine, self._engine = self._engine, None
        if engine is None:
            return
        try:
            engine.llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - it is dead already; freeing is best effort
            log.debug("engine shutdown failed", exc_info=True)
        del engine
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_chunk(
    runtime: WorkerRuntime,
    job_id: str,
    index: int,
    videos: list[str],
    out: str,
    options: dict[str, Any],
    worker: str,
    last_attempt: bool,
) -> dict[str, Any]:
    """Caption one chunk of a job; return its counts. Safe to run again for the same chunk.

    Videos already counted for the job are skipped (a redelivered chunk), as are videos with an
    `ok` record for this worker's model, adapter and prompt. Any error raises `RetryChunk` (after
    dropping a dead engine) unless `last_attempt`; then the chunk's remaining clips are recorded
    `failed` with the reason. The worker that completes the job's last chunk finishes the job.
    """
    from captioner.pipeline import ConfigError, RunStats, caption_videos, pending_videos

    store, settings = runtime.store, runtime.settings
    job = store.get(job_id)
    state = job["state"] if job else None
    if state is None or state in FINISHED:
        log.warning("job %s chunk %d: job is %s; skipped", job_id, index, state or "unknown (expired?)")
        return {"skipped_chunk": state or "unknown"}
    try:
        opts = JobOptions.model_validate(options)
        out_dir = _allowed(Path(out), settings.allowed_roots, "output")
        plan = runtime.plan(opts)
    except (ValidationError, SubmitError, ConfigError) as exc:
        # Not this chunk's fault and the same for every chunk: the job cannot run on this worker.
        reason = f"worker {worker} refused the job: {exc}"
        log.error("job %s: %s", job_id, reason)
        store.finish(job_id, "failed", reason)
        return {"refused": reason}

    deliveries = store.start_chunk(job_id, index, worker)
    started = time.perf_counter()
    captions = out_dir / CAPTIONS_FILE
    paths = [Path(v) for v in videos]
    todo = [p for p, done in zip(paths, store.counted(job_id, videos), strict=True) if not done]
    stats = RunStats(videos=len(videos))
    outside = []
    for video in list(todo):
        try:
            _allowed(video, settings.allowed_roots, "video")
        except SubmitError as exc:
            outside.append((video, str(exc)))
            todo.remove(video)
    pending = pending_videos(todo, captions, plan)
    waiting = set(pending)
    _count_done(store, job_id, [v for v in todo if v not in waiting], captions, plan, float(job["submitted_at"]), stats)

    def on_record(record: Any) -> None:
        store.account(job_id, record.video, record.status, record)
        runtime.metrics.record(record)
        if store.state(job_id) not in ("queued", "running"):  # cancelled (or expired since)
            raise _Cancelled

    try:
        if outside:
            _record_failed(runtime, job_id, plan, out_dir, outside, stats)
        if deliveries > settings.chunk_retries + 1 + EXTRA_DELIVERIES:
            reason = f"gave up: this chunk was started {deliveries - 1} times and its worker vanished each time"
            _record_failed(runtime, job_id, plan, out_dir, [(v, reason) for v in pending], stats)
        else:
            caption_videos(
                pending, out_dir, plan, lambda: runtime.engine(plan), stats, on_record, on_batch=runtime.metrics.batch
            )
    except _Cancelled:
        store.leave(job_id, index, worker)
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
            raise RetryChunk(reason) from exc
        log.error("job %s chunk %d: %s; giving up on its remaining clips", job_id, index, reason)
        remaining = [
            p for p, done in zip(pending, store.counted(job_id, pending), strict=True) if not done
        ]
        _record_failed(runtime, job_id, plan, out_dir, [(v, f"{reason} (after retries)") for v in remaining], stats)

    seconds = time.perf_counter() - started
    complete = store.chunk_done(job_id, index, worker, seconds)
    captioned = stats.ok + stats.failed
    runtime.metrics.chunk(captioned, stats.skipped, stats.output_tokens, seconds)
    log.info(
        "job %s chunk %d: %d videos (%d ok, %d failed, %d skipped) in %.1f s: %.3f videos/s, %.1f output tokens/s",
        job_id, index, len(videos), stats.ok, stats.failed, stats.skipped, seconds,
        captioned / seconds if seconds else 0.0, stats.output_tokens / seconds if seconds else 0.0,
    )  # fmt: skip
    if complete:
        finish_job(store, job_id, plan)
    return {"ok": stats.ok, "failed": stats.failed, "skipped": stats.skipped, "seconds": round(seconds, 3)}


def _count_done(
    store: JobStore, job_id: str, videos: list[Path], captions: Path, plan: Any, submitted_at: float, stats: Any
) -> None:
    """Count videos that already have an `ok` record: `skipped` if it predates the job, else `ok`.

    (A record newer than the job was written by an earlier delivery of this chunk that died
    before counting it.)
    """
    if not videos:
        return
    latest = latest_by_video(read_records(captions), plan.key)
    job_second = int(submitted_at)  # records carry whole seconds; one of the job's first second counts as skipped
    for video in videos:
        record = latest.get(video_id(video), {})
        created = record.get("created_at")
        mine = created is not None and datetime.fromisoformat(created).timestamp() > job_second
        if store.account(job_id, video, "ok" if mine else "skipped"):
            if mine:
                stats.ok += 1
            else:
                stats.skipped += 1


def _record_failed(
    runtime: WorkerRuntime, job_id: str, plan: Any, out_dir: Path, failures: list[tuple[Path, str]], stats: Any
) -> None:
    """Write a `failed` record for each (video, reason) and count it."""
    if not failures:
        return
    with RecordWriter(out_dir / CAPTIONS_FILE) as writer:
        for video, reason in failures:
            record = plan.record(video, status="failed", caption="", error=reason)
            writer.write(record)
            if runtime.store.account(job_id, video, "failed", record):
                stats.failed += 1
                runtime.metrics.record(record)


def finish_job(store: JobStore, job_id: str, plan: Any) -> None:
    """Compact the job's captions to one record per video and version, write its summary, mark it done.

    Serialized per output folder by a Redis lock; compaction is safe while other workers append
    (see `outputs.compact`).
    """
    job = store.get(job_id)
    if job is None or job["state"] in FINISHED:
        return
    out_dir = Path(job["out"])
    with store.lock("out:" + hashlib.sha256(str(out_dir).encode()).hexdigest()[:16]):
        if store.state(job_id) in FINISHED:
            return
        dropped = compact(out_dir / CAPTIONS_FILE) if (out_dir / CAPTIONS_FILE).exists() else 0
        current = status(store, job_id)
        summary = job_summary(current, plan)
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
        write_atomic(out_dir / "summary.json", text)
        if job.get("summary"):
            write_atomic(out_dir / job["summary"], text)
        store.finish(job_id, "done")
    log.info(
        "job %s done: %d videos, %d ok, %d failed, %d skipped (%d superseded records compacted)",
        job_id, summary["videos"], summary["ok"], summary["failed"], summary["skipped"], dropped,
    )  # fmt: skip


def job_summary(current: dict[str, Any], plan: Any) -> dict[str, Any]:
    """The job's `summary.json`: the fields of `captioner run`'s summary, for the whole job."""
    timings = current["timings"]
    return {
        "job": current["job"],
        "videos": current["videos"],
        "ok": current["ok"],
        "failed": current["failed"],
        "skipped": current["skipped"],
        "ignored": current["ignored"],
        "settling": current["settling"],
        "seconds": timings["running_s"],
        "busy_s": timings["busy_s"],
        "videos_per_s": timings["videos_per_s"],
        "output_tokens_per_s": timings["output_tokens_per_s"],
        "output_tokens": current["output_tokens"],
        "workers": current["workers"],
        "submitted_at": timings["submitted_at"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folders": current["folders"],
        **plan.versions(),
    }


def nightly(runtime: WorkerRuntime) -> str | None:
    """Queue the nightly job: videos under the watched folders without an `ok` record for this
    worker's model, adapter and prompt. Its summary is also written as `nightly-YYYY-MM-DD.json`.

    Returns the job id (None when nothing is configured). Folders that cannot be used are logged
    and left out; the others still run.
    """
    from captioner.pipeline import pending_videos

    settings = runtime.settings
    if not settings.nightly_folders or settings.nightly_out is None:
        log.warning("nightly: no nightly_folders / nightly_out configured; nothing to do")
        return None
    today = datetime.now(ZoneInfo(settings.timezone)).date().isoformat()
    try:
        out_dir = _allowed(Path(settings.nightly_out), settings.allowed_roots, "output")
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
    todo = pending_videos(videos, out_dir / CAPTIONS_FILE, plan)
    job_id = enqueue(
        runtime.store, settings, folders, out_dir, todo, options,
        skipped=len(videos) - len(todo), summary=f"nightly-{today}.json", left_out=left_out,
    )  # fmt: skip
    if not todo:
        finish_job(runtime.store, job_id, plan)
    log.info("nightly %s: job %s, %d of %d videos to caption", today, job_id, len(todo), len(videos))
    return job_id
