"""Job state in Redis: jobs, the done-index of output folders, claims, worker heartbeats.

Every per-chunk operation costs O(chunk), whatever the size of the job or of the output folder.
Videos are named in Redis by `video_key` (14 characters of a hash of the path), which keeps a
million-video job's state small.

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
- `captioner:done:OUT:VERSION` set: videos of output folder OUT with an `ok` record of VERSION
  (the done-index; `...:sig` says which state of the folder's files it was rebuilt from).
- `captioner:claims:OUT:VERSION` hash: video -> worker id, for videos being captioned now.

Finished jobs expire `job_ttl` seconds after they finish; the done-index stays (it is the folder's).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from captioner.config import Settings
from captioner.outputs import CAPTIONS_FILE, PARTS_DIR, VersionKey, ok_videos, read_output
from captioner.service.errors import SubmitError
from captioner.sources import video_id

log = logging.getLogger(__name__)

FINISHED = ("done", "cancelled", "failed")
RUNNING = "captioner:running"
_BATCH = 10_000  # members per Redis command when a set is filled or queried in bulk


def video_key(video: Path | str) -> str:
    """How Redis names a video: 80 bits of a hash of its path, as 14 characters (any file name, small)."""
    digest = hashlib.blake2b(video_id(video).encode("utf-8"), digest_size=10).digest()
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def folder_key(out_dir: Path | str) -> str:
    """How Redis names an output folder."""
    return hashlib.blake2b(str(out_dir).encode("utf-8"), digest_size=8).hexdigest()


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


# A chunk starts. -1: no such job; -2: the chunk is finished already (a redelivery); else how
# often it was started. The first start of the job sets started_at.
_START = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return -2 end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
if redis.call('HGET', KEYS[1], 'state') == 'queued' then redis.call('HSET', KEYS[1], 'state', 'running') end
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
return redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
"""

# Claim videos for captioning. Per video: 0 claimed by me, 1 done already, 2 claimed by another
# chunk (of this or another job) on a live worker. A claim of a worker whose heartbeat stopped is
# taken over. ARGV[1]: "WORKER|JOB:CHUNK", the claimant; the worker part is what beats.
_CLAIM = """
local out = {}
for i = 2, #ARGV do
  local v = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], v) == 1 then
    out[#out + 1] = 1
  else
    local owner = redis.call('HGET', KEYS[2], v)
    local worker = owner and string.match(owner, '^[^|]+')
    if owner and owner ~= ARGV[1] and redis.call('EXISTS', 'captioner:alive:' .. worker) == 1 then
      out[#out + 1] = 2
    else
      redis.call('HSET', KEYS[2], v, ARGV[1])
      out[#out + 1] = 0
    end
  end
end
return out
"""

# A chunk's records are visible (its part file is published): mark its ok videos done and release
# its claims; then, the first time the chunk finishes only, count its videos and finish the chunk.
# Returns 1 when every chunk of the job is finished and the job still needs finishing.
# KEYS: job, chunks, workers, running, done, claims, rebuilding flag, rebuilding set.
# ARGV: chunk, worker host, busy_s, running field, ok, failed, skipped, output/prompt/cached tokens,
#       number of ok videos N, the N ok videos, then the chunk's other videos.
_PUBLISH = """
local rebuilding = redis.call('EXISTS', KEYS[7]) == 1
local n = tonumber(ARGV[11])
for i = 12, #ARGV do
  local v = ARGV[i]
  if i < 12 + n then
    redis.call('SADD', KEYS[5], v)
    if rebuilding then redis.call('SADD', KEYS[8], v) end
  end
  redis.call('HDEL', KEYS[6], v)
end
redis.call('HDEL', KEYS[4], ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local names = {'ok', 'failed', 'skipped', 'output_tokens', 'prompt_tokens', 'cached_tokens'}
for i = 1, 6 do redis.call('HINCRBY', KEYS[1], names[i], ARGV[4 + i]) end
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'busy_s', ARGV[3])
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

# A rebuilt done-index replaces the old one, with what publishers added meanwhile.
# KEYS: done, new, sig, rebuilding flag; ARGV: signature.
_SWAP = """
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) else redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
return 1
"""

# Take over a running chunk whose worker stopped beating, exactly once (1), else 0.
_TAKEOVER = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if redis.call('EXISTS', 'captioner:alive:' .. ARGV[3]) == 1 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


class JobStore:
    """Job state, done-index, claims and heartbeats in Redis (see the module docstring for the keys)."""

    def __init__(self, client: redis.Redis, job_ttl: int) -> None:
        self.redis = client
        self.job_ttl = job_ttl
        self._start = client.register_script(_START)
        self._claim = client.register_script(_CLAIM)
        self._publish = client.register_script(_PUBLISH)
        self._finish = client.register_script(_FINISH)
        self._takeover = client.register_script(_TAKEOVER)
        self._swap = client.register_script(_SWAP)

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
        return [self.key(job_id)] + [self.key(job_id, part) for part in ("chunks", "workers", "deliveries")]

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

    def finish(self, job_id: str, state: str, error: str = "") -> bool:
        """Move the job to a finished `state` and let its keys expire; False if it was finished already."""
        return self._finish(keys=self.keys(job_id), args=[state, repr(time.time()), error, self.job_ttl]) == 1

    def running(self, job_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Chunks being worked on (`JOB:CHUNK` -> worker, host, args), of one job or of all."""
        entries = {field: json.loads(value) for field, value in self.redis.hgetall(RUNNING).items()}
        return {f: e for f, e in entries.items() if job_id is None or f.startswith(job_id + ":")}

    # ----------------------------------------------------------------- chunks

    def start_chunk(self, job_id: str, index: int, worker_id: str, host: str, queue: str, args: list[Any]) -> int:
        """Register chunk `index` as running on `worker_id` (with the `queue` and task `args` to send it
        again if the worker dies). -1: no such job; -2: finished already; else how often it was started."""
        entry = {"worker": worker_id, "host": host, "queue": queue, "since": time.time(), "args": args}
        entry = json.dumps(entry)  # ASCII: file names may hold undecodable bytes (lone surrogates)
        keys = [self.key(job_id), self.key(job_id, "chunks"), self.key(job_id, "deliveries"), RUNNING]
        return int(self._start(keys=keys, args=[str(index), repr(time.time()), f"{job_id}:{index}", entry]))

    def claim(self, out_dir: Path, key: VersionKey, worker_id: str, chunk: str, videos: list[Path]) -> list[int]:
        """Claim `videos` for `chunk` ("JOB:INDEX") to caption into `out_dir` as `key`: per video 0
        (mine now), 1 (done already), 2 (being captioned by another chunk on a live worker)."""
        done, claims = self._index_keys(out_dir, key)[:2]
        result: list[int] = []
        for batch in _batches([video_key(v) for v in videos]):
            result += [int(x) for x in self._claim(keys=[done, claims], args=[f"{worker_id}|{chunk}", *batch])]
        return result

    def release(self, out_dir: Path, key: VersionKey, videos: list[Path]) -> None:
        """Drop claims without captioning (the chunk stops early; its videos go to whoever comes next)."""
        claims = self._index_keys(out_dir, key)[1]
        for batch in _batches([video_key(v) for v in videos]):
            self.redis.hdel(claims, *batch)

    def publish(
        self,
        job_id: str,
        index: int,
        host: str,
        busy_s: float,
        out_dir: Path,
        key: VersionKey,
        counts: list[tuple[Path | str, str, Any]],
    ) -> bool:
        """The chunk's records are visible: mark its ok videos done, release its claims, and (once per
        chunk) count its (video, ok | failed | skipped, record) and finish it. True when the job needs
        finishing. O(chunk)."""
        done, claims, flag, fresh = self._index_keys(out_dir, key)[:4]
        keys = [self.key(job_id), self.key(job_id, "chunks"), self.key(job_id, "workers"), RUNNING]
        keys += [done, claims, flag, fresh]
        tally = {"ok": 0, "failed": 0, "skipped": 0}
        tokens = [0, 0, 0]
        ok, other = [], []
        for video, counter, record in counts:
            tally[counter] += 1
            for i, name in enumerate(("output_tokens", "prompt_tokens", "cached_tokens")):
                tokens[i] += getattr(record, name, 0) or 0
            (ok if counter == "ok" else other).append(video_key(video))
        head = [str(index), host, f"{busy_s:.3f}", f"{job_id}:{index}", *map(str, tally.values()), *map(str, tokens)]
        return bool(self._publish(keys=keys, args=[*head, str(len(ok)), *ok, *other]))

    def leave(self, job_id: str, index: int) -> None:
        """The chunk stopped without finishing (it will run again, or its job was cancelled)."""
        self.redis.hdel(RUNNING, f"{job_id}:{index}")

    # ----------------------------------------------------------------- workers

    def beat(self, worker_id: str, dead_after_s: float) -> None:
        """The worker is alive; it counts as dead `dead_after_s` after its last beat."""
        self.redis.set(f"captioner:alive:{worker_id}", repr(time.time()), px=int(dead_after_s * 1000))

    def alive(self, worker_id: str) -> bool:
        """Whether the worker beat within its `dead_after_s`."""
        return bool(self.redis.exists(f"captioner:alive:{worker_id}"))

    def orphans(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Running chunks whose worker stopped beating, each taken over (removed) by this caller only."""
        for field, value in self.redis.hgetall(RUNNING).items():
            entry = json.loads(value)
            if self.alive(entry["worker"]):
                continue
            if self._takeover(keys=[RUNNING], args=[field, value, entry["worker"]]) == 1:
                yield field, entry

    def lock(self, name: str, timeout: int = 900) -> Any:
        """A Redis lock shared by all workers (auto-released after `timeout` s if its holder died)."""
        return self.redis.lock(f"captioner:lock:{name}", timeout=timeout, blocking_timeout=timeout)

    # ----------------------------------------------------------------- done-index

    def _index_keys(self, out_dir: Path, key: VersionKey) -> list[str]:
        base = f"captioner:done:{folder_key(out_dir)}:{key.digest()}"
        claims = f"captioner:claims:{folder_key(out_dir)}:{key.digest()}"
        return [base, claims, base + ":rebuilding", base + ":new", base + ":sig"]

    def ensure_index(self, out_dir: Path, key: VersionKey) -> None:
        """Make sure the done-index of (`out_dir`, `key`) reflects the folder's files; O(1) when it does.

        Part files are indexed by the workers that publish them. The index is rebuilt from the
        files (O(records), logged) when it is missing (Redis lost it, first use) or when
        `captions.jsonl` or the `parts/` folder changed behind the service (`captioner run`,
        files deleted or restored by hand).
        """
        done, _, flag, fresh, sig_key = self._index_keys(out_dir, key)
        sig = folder_signature(out_dir)
        if self.redis.get(sig_key) == sig:
            return
        with self.lock(f"index:{folder_key(out_dir)}:{key.digest()}", timeout=3600):
            sig = folder_signature(out_dir)
            if self.redis.get(sig_key) == sig:
                return
            started = time.perf_counter()
            # While rebuilding, publishers add to the new set too, so nothing published meanwhile is lost.
            self.redis.set(flag, "1", ex=3600)
            self.redis.delete(fresh)
            records = read_output(out_dir)
            members = [video_key(video) for video in ok_videos(records, key)]
            for batch in _batches(members):
                self.redis.sadd(fresh, *batch)
            self._swap(keys=[done, fresh, sig_key, flag], args=[sig])
            log.info(
                "done-index of %s (%s): rebuilt from %d records, %d done, in %.2f s",
                out_dir, key.label(), len(records), len(members), time.perf_counter() - started,
            )  # fmt: skip

    def drop_index(self, out_dir: Path, key: VersionKey) -> None:
        """Forget the done-index of (`out_dir`, `key`); the next `ensure_index` rebuilds it from the files."""
        done, _, _, _, sig_key = self._index_keys(out_dir, key)
        self.redis.delete(done, sig_key)

    def done(self, out_dir: Path, key: VersionKey, videos: list[Path]) -> list[bool]:
        """For each video, whether it has an `ok` record of `key` in `out_dir` (call `ensure_index` first)."""
        return self._members(self._index_keys(out_dir, key)[0], videos)

    def _members(self, set_key: str, videos: Iterable[Path | str]) -> list[bool]:
        flags: list[bool] = []
        for batch in _batches([video_key(v) for v in videos]):
            flags += [bool(flag) for flag in self.redis.smismember(set_key, batch)]
        return flags


def folder_signature(out_dir: Path) -> str:
    """What changes when an output folder's files change behind the service: `captions.jsonl`
    (size, time, inode) and the `parts/` folder's identity (deleted or replaced)."""
    facts = []
    for path in (out_dir / CAPTIONS_FILE, out_dir / PARTS_DIR):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            facts.append("-")
            continue
        facts.append(f"{st.st_ino}" if path.name == PARTS_DIR else f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return "|".join(facts)


def _batches(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
