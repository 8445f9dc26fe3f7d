"""Chunks stranded among the broker's unacknowledged messages, found and sent again.

kombu's Redis transport keeps every delivered, not yet acknowledged message in a hash (`unacked`,
its delivery time in `unacked_index`) and puts it back in its queue only `visibility_timeout`
after delivery (an hour by default). A worker that loses Redis puts back the messages it had
reserved but not started; when Redis is down at that very moment (a restart), that fails and the
message stays in the hash, so its chunk would wait out the whole timeout while its job shows no
progress. A worker reserves only the chunks it runs at once (prefetch 1 a thread), so a chunk
message in the hash for longer than a few heartbeats whose chunk no worker runs (no
`captioner:running` entry; a chunk waiting for its retry keeps its entry) and that is not
finished is stranded: the heartbeat takes it out of the hash (once, atomically) and sends it again.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis

from captioner.service.celery_app import CHUNK_TASK
from captioner.service.message import ChunkMessage, MessageRefused
from captioner.service.store import FINISHED, RUNNING, JobStore

log = logging.getLogger(__name__)

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's default key names
SCAN = 1000  # oldest deliveries looked at per heartbeat

# Take one delivery out of kombu's indices, exactly once (1), else 0 (acknowledged or taken meanwhile).
TAKE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def chunk_of(raw: str) -> tuple[ChunkMessage, str] | None:
    """The chunk message and routing key of one `unacked` entry; None if it is not a well-formed chunk task."""
    try:
        payload, _exchange, routing_key = json.loads(raw)
        if payload["headers"]["task"] != CHUNK_TASK:
            return None
        body = payload["body"]
        if payload.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _embed = json.loads(body)
        return ChunkMessage.read(tuple(args), kwargs), str(routing_key)
    except (ValueError, KeyError, TypeError, MessageRefused):
        return None


def stranded_chunks(broker: redis.Redis, store: JobStore, min_age_s: float) -> Iterator[tuple[ChunkMessage, str]]:
    """Chunk messages delivered over `min_age_s` ago that no worker runs and that are not finished,
    each taken out of kombu's indices by this caller only; with the queue they came from."""
    take = broker.register_script(TAKE)
    tags = broker.zrangebyscore(UNACKED_INDEX, 0, time.time() - min_age_s, start=0, num=SCAN)
    if not tags:
        return
    running = set(store.redis.hkeys(RUNNING))
    for tag in tags:
        raw = broker.hget(UNACKED, tag)
        found = chunk_of(raw) if raw is not None else None
        if found is None:
            continue
        message, queue = found
        if f"{message.job_id}:{message.index}" in running or not _unfinished(store, message):
            continue  # running, or finished: kombu's own redelivery finds it skipped
        if take(keys=[UNACKED, UNACKED_INDEX], args=[tag]) == 1:
            yield message, queue


def _unfinished(store: JobStore, message: ChunkMessage) -> bool:
    state = store.state(message.job_id)
    chunk_done = store.redis.sismember(store.key(message.job_id, "chunks"), str(message.index))
    return state is not None and state not in FINISHED and not chunk_done


def resend_stranded(broker: redis.Redis, store: JobStore, min_age_s: float, app: Any, priority: int) -> int:
    """Send again every stranded chunk (`stranded_chunks`) through `app`; return how many."""
    sent = 0
    for message, queue in stranded_chunks(broker, store, min_age_s):
        app.send_task(CHUNK_TASK, args=message.args(), queue=queue, priority=priority)
        log.warning("job %s chunk %d: stranded among the broker's unacknowledged messages; sent again",
                    message.job_id, message.index)  # fmt: skip
        sent += 1
    return sent
