"""Job state in Redis: the connection, jobs, chunks, claims and worker heartbeats.

Every per-chunk operation costs O(chunk), whatever the size of the job or of the output folder.
Videos are named in Redis by `video_key` (14 characters of a hash of the path), which keeps a
million-video job's state small. The steps that must not be seen half done are Lua scripts
(`redis_scripts`); the output folders' done-index is `done_index.DoneIndex`, reached through the store.

Keys (one Redis, not a cluster: a chunk's scripts touch its job and its output folder together):

- `captioner:job:{ID}` hash: `state` (queued | running | done | cancelled | failed), `out`,
  `folders`, `options`, `queue`, `summary`, `videos`, `chunks`, `chunk_size`, the counters `ok`,
  `failed`, `skipped`, `output_tokens`, `prompt_tokens`, `cached_tokens`, `busy_s`, the epoch times
  `submitted_at`, `started_at`, `finished_at`; `error` when the job failed as a whole.
  `...:chunks` set: chunks finished (a chunk's videos are counted when it first finishes, once,
  however often it runs); `...:workers` hash: chunks finished per worker;
  `...:deliveries` hash: how often each chunk was started.
- `captioner:running` hash: `JOB:CHUNK` -> the chunk's worker id, host and task arguments, for
  every chunk being worked on; a chunk whose worker stopped beating is sent again from here.
- `captioner:alive:WORKER` string with a TTL: the worker's heartbeat.
- `captioner:jobs` set: the jobs not finished yet, which workers' heartbeats finish once their
  chunks are all in (a job whose finishing failed once is finished by the next beat).
- `captioner:done:OUT:VERSION`, `captioner:claims:OUT:VERSION`: the done-index of output folder
  OUT and the videos being captioned into it now (see `done_index`).

Finished jobs expire `job_ttl` seconds after they finish; the done-index stays (it is the folder's).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from captioner.config import Settings
from captioner.records import CaptionRecord, VersionKey
from captioner.service import redis_scripts
from captioner.service.done_index import DoneIndex, IndexKeys, batches, video_key
from captioner.service.errors import SubmitError

FINISHED = ("done", "cancelled", "failed")
RUNNING = "captioner:running"
UNFINISHED = "captioner:jobs"
log = logging.getLogger(__name__)
TOKENS = ("output_tokens", "prompt_tokens", "cached_tokens")  # the token counters a chunk adds to its job


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


class JobStore:
    """Job state, claims and heartbeats in Redis, and the done-index (see the module docstring for the keys)."""

    def __init__(self, client: redis.Redis, job_ttl: int) -> None:
        self.redis = client
        self.job_ttl = job_ttl
        self.index = DoneIndex(client, self.lock)
        self._start = client.register_script(redis_scripts.START)
        self._claim = client.register_script(redis_scripts.CLAIM)
        self._publish = client.register_script(redis_scripts.PUBLISH)
        self._finish = client.register_script(redis_scripts.FINISH)
        self._takeover = client.register_script(redis_scripts.TAKEOVER)
        self._defer = client.register_script(redis_scripts.DEFER)

    @classmethod
    def connect(cls, settings: Settings, patient: bool = False) -> JobStore:
        """The store at `settings.store_url`."""
        return cls(connect(settings.store_url, patient), settings.job_ttl)

    # ----------------------------------------------------------------- jobs

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        """Redis key of a job's hash, or of one of its parts (`videos`, `chunks`, ...)."""
        return f"captioner:job:{{{job_id}}}" + (f":{part}" if part else "")

    def keys(self, job_id: str) -> list[str]:
        """Every key of a job."""
        return [self.key(job_id)] + [self.key(job_id, part) for part in ("chunks", "workers", "deliveries", "digests")]

    def ping(self) -> None:
        """Raise `SubmitError` at once when Redis cannot be reached."""
        ping(self.redis)

    def create(self, job_id: str, fields: dict[str, Any], digests: list[str] | None = None) -> None:
        """Record a new job, with its chunks' `digests` (`message.chunk_digest`), among the unfinished ones."""
        pipe = self.redis.pipeline()
        pipe.hset(self.key(job_id), mapping={k: _text(v) for k, v in fields.items()})
        for start in range(0, len(digests or []), 10_000):
            batch = (digests or [])[start : start + 10_000]
            pipe.hset(self.key(job_id, "digests"), mapping={str(start + i): d for i, d in enumerate(batch)})
        pipe.sadd(UNFINISHED, job_id)
        pipe.execute()

    def get(self, job_id: str) -> dict[str, str] | None:
        """The job's hash, or None when it does not exist (any more)."""
        return self.redis.hgetall(self.key(job_id)) or None

    def state(self, job_id: str) -> str | None:
        """The job's state."""
        return self.redis.hget(self.key(job_id), "state")

    def finish(self, job_id: str, state: str, error: str = "") -> bool:
        """Move the job to a finished `state` and let its keys expire; False if it was finished already."""
        args = [state, repr(time.time()), error, self.job_ttl, UNFINISHED, job_id]
        return self._finish(keys=self.keys(job_id), args=args) == 1

    def chunk_digest(self, job_id: str, index: int) -> str | None:
        """The digest of chunk `index`'s video list as submitted (None for a job recorded without digests)."""
        return self.redis.hget(self.key(job_id, "digests"), str(index))

    def unfinished(self) -> list[str]:
        """The jobs not finished yet (at most the few a fleet runs at once)."""
        return sorted(self.redis.smembers(UNFINISHED))

    def forget_unfinished(self, job_id: str) -> None:
        """Drop a job from the unfinished set (it finished, expired, or is not a job)."""
        self.redis.srem(UNFINISHED, job_id)

    def finish_failed(self, job_id: str) -> int:
        """Count one failed attempt to finish the job; return how many there were."""
        return int(self.redis.hincrby(self.key(job_id), "finish_failures", 1))

    def complete(self, job_id: str) -> bool:
        """Whether every chunk of the job is finished."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(self.key(job_id, "chunks"))
        pipe.hget(self.key(job_id), "chunks")
        done, total = pipe.execute()
        return total is not None and total.isdigit() and done >= int(total)

    def running(self, job_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Chunks being worked on (`JOB:CHUNK` -> worker, host, args), of one job or of all."""
        entries = {field: parse_entry(value) for field, value in self.redis.hgetall(RUNNING).items()}
        return {f: e for f, e in entries.items() if e is not None and (job_id is None or f.startswith(job_id + ":"))}

    # ----------------------------------------------------------------- chunks

    def start_chunk(self, job_id: str, index: int, worker_id: str, host: str, queue: str, args: list[Any]) -> int:
        """Register chunk `index` as running on `worker_id` (with the `queue` and task `args` to send it
        again if the worker dies). -1: no such job; -2: finished already; -3: another live worker
        runs it now; else how often it was started."""
        # "worker" first: the scripts read it from the start of the text. ASCII: file names may
        # hold undecodable bytes (lone surrogates).
        entry = {"worker": worker_id, "host": host, "queue": queue, "since": time.time(), "args": args}
        text = json.dumps(entry)
        keys = [self.key(job_id), self.key(job_id, "chunks"), self.key(job_id, "deliveries"), RUNNING]
        args_ = [str(index), repr(time.time()), f"{job_id}:{index}", text, worker_id]
        return int(self._start(keys=keys, args=args_))

    def claim(self, out_dir: Path, key: VersionKey, worker_id: str, chunk: str, videos: list[Path]) -> list[int]:
        """Claim `videos` for `chunk` ("JOB:INDEX") to caption into `out_dir` as `key`: per video 0
        (mine now), 1 (done already), 2 (being captioned by another chunk on a live worker)."""
        keys = IndexKeys.of(out_dir, key)
        result: list[int] = []
        for batch in batches([video_key(v) for v in videos]):
            claimant = f"{worker_id}|{chunk}"
            result += [int(x) for x in self._claim(keys=[keys.done, keys.claims, RUNNING], args=[claimant, *batch])]
        return result

    def release(self, out_dir: Path, key: VersionKey, videos: list[Path]) -> None:
        """Drop claims without captioning (the chunk stops early; its videos go to whoever comes next)."""
        claims = IndexKeys.of(out_dir, key).claims
        for batch in batches([video_key(v) for v in videos]):
            self.redis.hdel(claims, *batch)

    def publish(
        self,
        job_id: str,
        index: int,
        host: str,
        busy_s: float,
        out_dir: Path,
        key: VersionKey,
        counts: list[tuple[Path | str, str, CaptionRecord | None]],
    ) -> bool:
        """The chunk's records are visible: mark its ok videos done, release its claims, and (once per
        chunk) count its (video, ok | failed | skipped, record) and finish it. True when the job needs
        finishing. O(chunk)."""
        index_keys = IndexKeys.of(out_dir, key)
        keys = [self.key(job_id), self.key(job_id, "chunks"), self.key(job_id, "workers"), RUNNING]
        keys += [index_keys.done, index_keys.claims, index_keys.rebuilding, index_keys.fresh]
        tally = {"ok": 0, "failed": 0, "skipped": 0}
        tokens = dict.fromkeys(TOKENS, 0)
        ok: list[str] = []
        other: list[str] = []
        for video, counter, record in counts:
            tally[counter] += 1
            for name in TOKENS:
                tokens[name] += getattr(record, name, 0) or 0
            (ok if counter == "ok" else other).append(video_key(video))
        head = [str(index), host, f"{busy_s:.3f}", f"{job_id}:{index}", *map(str, tally.values())]
        return bool(self._publish(keys=keys, args=[*head, *map(str, tokens.values()), str(len(ok)), *ok, *other]))

    def leave(self, job_id: str, index: int) -> None:
        """The chunk stopped without finishing and will not run again here (its job was cancelled)."""
        self.redis.hdel(RUNNING, f"{job_id}:{index}")

    def defer(self, job_id: str, index: int, worker_id: str, retry_at: float) -> None:
        """The chunk waits for its retry: it stays registered (so it is sent again if nobody takes it
        by `retry_at`, e.g. because this worker died holding the retry), but anyone may take it."""
        field = f"{job_id}:{index}"
        value = self.redis.hget(RUNNING, field)
        if value is None:
            return
        entry = parse_entry(value)
        if entry is None or entry["worker"] != worker_id:
            return
        entry["retry_at"] = retry_at
        self._defer(keys=[RUNNING], args=[field, value, json.dumps(entry)])

    # ----------------------------------------------------------------- workers

    def beat(self, worker_id: str, dead_after_s: float) -> None:
        """The worker is alive; it counts as dead `dead_after_s` after its last beat."""
        self.redis.set(f"captioner:alive:{worker_id}", repr(time.time()), px=int(dead_after_s * 1000))

    def alive(self, worker_id: str) -> bool:
        """Whether the worker beat within its `dead_after_s`."""
        return bool(self.redis.exists(f"captioner:alive:{worker_id}"))

    def orphans(self, me: str = "", active: Collection[str] = (), grace_s: float = 0.0) -> Iterator[
        tuple[str, dict[str, Any]]
    ]:
        """Running chunks nobody runs, each taken over (removed) by this caller only: those whose worker
        stopped beating, and those registered to `me` that are not in `active` (a task that ended
        without settling its chunk, or a retry that did not come) `grace_s` after their start or
        their `retry_at`. Entries that are not the service's (malformed) are dropped, logged."""
        now = time.time()
        for field, value in self.redis.hgetall(RUNNING).items():
            entry = parse_entry(value)
            if entry is None:
                log.error("dropped a malformed running entry %r", field[:80])
                self.redis.hdel(RUNNING, field)
                continue
            mine = entry["worker"] == me
            if mine and (field in active or now < max(entry["since"], entry.get("retry_at", 0.0)) + grace_s):
                continue  # running here (even if this worker's own beat lapsed while Redis was away), or not due
            if not mine and self.alive(entry["worker"]):
                continue
            if self._takeover(keys=[RUNNING], args=[field, value, entry["worker"], "1" if mine else "0"]) == 1:
                yield field, entry

    def lock(self, name: str, timeout: int = 900) -> Any:
        """A Redis lock shared by all workers (auto-released after `timeout` s if its holder died)."""
        return self.redis.lock(f"captioner:lock:{name}", timeout=timeout, blocking_timeout=timeout)

    # ----------------------------------------------------------------- done-index (see `done_index`)

    def ensure_index(self, out_dir: Path, key: VersionKey) -> None:
        """Make sure the done-index of (`out_dir`, `key`) reflects the folder's files (`DoneIndex.ensure`)."""
        self.index.ensure(out_dir, key)

    def drop_index(self, out_dir: Path, key: VersionKey) -> None:
        """Forget the done-index of (`out_dir`, `key`); the next `ensure_index` rebuilds it from the files."""
        self.index.drop(out_dir, key)

    def done(self, out_dir: Path, key: VersionKey, videos: list[Path]) -> list[bool]:
        """For each video, whether it has an `ok` record of `key` in `out_dir` (call `ensure_index` first)."""
        return self.index.done(out_dir, key, videos)


def parse_entry(value: str) -> dict[str, Any] | None:
    """A `captioner:running` entry, or None when it is not one the service wrote."""
    try:
        entry = json.loads(value)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("worker"), str):
        return None
    if not isinstance(entry.get("since"), (int, float)) or not isinstance(entry.get("args"), list):
        return None
    if not isinstance(entry.get("retry_at", 0.0), (int, float)):
        return None
    if not isinstance(entry.get("queue", ""), str) or not isinstance(entry.get("host", ""), str):
        return None
    entry.setdefault("host", "?")
    return entry


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
