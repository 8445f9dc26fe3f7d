"""The service's Redis bookkeeping against a real Redis: the done-index, claims, heartbeats, publishing."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import redis

from captioner.records import CAPTIONS_FILE, CaptionRecord, PartWriter, RecordWriter, VersionKey
from captioner.service.done_index import IndexKeys, video_key
from captioner.service.store import JobStore

URL = os.environ.get("CAPTIONER_TEST_REDIS", "redis://127.0.0.1:6379/13")
PROMPT = {"name": "p", "version": 1, "sha": "s"}
KEY = VersionKey("m", "a", "x", "p", 1, "s")


def record(video: str, status: str = "ok", prompt: dict = PROMPT, **fields) -> CaptionRecord:
    return CaptionRecord(video, status, "캡션" if status == "ok" else "", None if status == "ok" else "bad", 8, "m",
                         "a", prompt, adapter_sha="x", **fields)  # fmt: skip


@pytest.fixture()
def store() -> JobStore:
    client = redis.Redis.from_url(URL, decode_responses=True)
    client.flushdb()
    yield JobStore(client, job_ttl=60)
    client.flushdb()


def test_done_index_is_rebuilt_from_the_files_once_and_again_when_they_change(store, tmp_path):
    out = tmp_path / "out"
    with RecordWriter(out / CAPTIONS_FILE) as writer:  # what `captioner run` wrote
        writer.write(record("/v/a.mp4"))
        writer.write(record("/v/b.mp4", "failed"))
        writer.write(record("/v/e.mp4", prompt={"name": "p", "version": 2, "sha": "t"}))  # another version
    part = PartWriter(out, "job1", 0)
    part.write(record("/v/c.mp4"))
    part.publish()
    videos = [Path(f"/v/{name}.mp4") for name in "abcde"]
    store.ensure_index(out, KEY)
    assert store.done(out, KEY, videos) == [True, False, True, False, False]
    # Unchanged files: no rebuild (a member removed by hand stays removed).
    done_set = IndexKeys.of(out, KEY).done
    store.redis.srem(done_set, video_key("/v/c.mp4"))
    store.ensure_index(out, KEY)
    assert store.done(out, KEY, videos)[2] is False
    # `captioner run` appended to captions.jsonl: rebuilt, from every file.
    time.sleep(0.01)
    with RecordWriter(out / CAPTIONS_FILE) as writer:
        writer.write(record("/v/d.mp4"))
    store.ensure_index(out, KEY)
    assert store.done(out, KEY, videos) == [True, False, True, True, False]
    # Redis lost the index: rebuilt.
    store.redis.flushdb()
    store.ensure_index(out, KEY)
    assert store.done(out, KEY, videos) == [True, False, True, True, False]


def run(store: JobStore, worker: str, chunk: str) -> None:
    """Register `chunk` ("JOB:INDEX") as run by `worker` (a claim counts only while its chunk runs)."""
    job, index = chunk.split(":")
    store.create(job, {"state": "queued", "chunks": 9}) if store.get(job) is None else None
    assert store.start_chunk(job, int(index), worker, "host", "q", [job, int(index)]) >= 1


def test_claims_keep_two_chunks_off_the_same_video_until_the_owner_dies(store, tmp_path):
    out = tmp_path / "out"
    a, b, c = (Path(f"/v/{name}.mp4") for name in "abc")
    store.beat("w1", 60)
    run(store, "w1", "job1:0")
    assert store.claim(out, KEY, "w1", "job1:0", [a, b]) == [0, 0]
    assert store.claim(out, KEY, "w1", "job1:0", [a]) == [0]  # the same chunk again (a retry)
    # Another chunk, even on the same worker (its other thread) or of another job, keeps off.
    assert store.claim(out, KEY, "w1", "job2:0", [b, c]) == [2, 0]
    store.beat("w2", 60)
    assert store.claim(out, KEY, "w2", "job2:1", [a]) == [2]
    store.redis.delete("captioner:alive:w1")  # w1 stopped beating
    assert store.claim(out, KEY, "w2", "job2:1", [a, b]) == [0, 0]


def test_a_claim_whose_chunk_no_longer_runs_is_taken_over(store, tmp_path):
    """A live worker's claims count only while it runs their chunk: claims left behind by a chunk that
    ended without releasing them (Redis away at that moment) never keep other jobs off for good."""
    out = tmp_path / "out"
    a = Path("/v/a.mp4")
    store.beat("w1", 60)
    store.beat("w2", 60)
    run(store, "w1", "job1:0")
    assert store.claim(out, KEY, "w1", "job1:0", [a]) == [0]
    assert store.claim(out, KEY, "w2", "job2:0", [a]) == [2]
    store.leave("job1", 0)  # the chunk stopped; its claim stayed
    assert store.claim(out, KEY, "w2", "job2:0", [a]) == [0]


def test_a_duplicate_delivery_waits_for_the_live_one_and_a_deferred_chunk_is_anyones(store):
    store.beat("w1", 60)
    store.beat("w2", 60)
    store.create("job", {"state": "queued", "chunks": 1})
    assert store.start_chunk("job", 0, "w1", "h1", "q", ["job", 0]) == 1
    assert store.start_chunk("job", 0, "w2", "h2", "q", ["job", 0]) == -3  # w1 runs it: w2 must not count it
    assert store.redis.hget("captioner:job:{job}:deliveries", "0") == "1"
    assert store.start_chunk("job", 0, "w1", "h1", "q", ["job", 0]) == 2  # its own worker (a retry)
    store.defer("job", 0, "w1", time.time() + 60)  # waiting for its retry: whoever gets it runs it
    assert store.start_chunk("job", 0, "w2", "h2", "q", ["job", 0]) == 3
    store.redis.delete("captioner:alive:w2")
    assert store.start_chunk("job", 0, "w1", "h1", "q", ["job", 0]) == 4  # w2 died: taken back


def test_a_workers_own_unsettled_chunk_is_sent_again_after_the_grace(store):
    store.beat("me", 60)
    store.create("job", {"state": "queued", "chunks": 3})
    for index in range(3):
        store.start_chunk("job", index, "me", "h", "q", ["job", index])
    store.defer("job", 2, "me", time.time() + 60)
    # Chunk 0 runs here; chunk 1 ended without settling; chunk 2 waits for a retry not due yet.
    assert [f for f, _ in store.orphans("me", {"job:0"}, grace_s=0)] == ["job:1"]
    assert list(store.orphans("me", {"job:0"}, grace_s=0)) == []
    store.redis.hset("captioner:running", "x:1", "not json")  # planted: dropped, not fatal
    assert list(store.orphans("me", {"job:0"}, grace_s=0)) == [] and store.redis.hget("captioner:running", "x:1") is None


def test_unfinished_jobs_are_known_until_finished(store):
    job = uuid.uuid4().hex
    store.create(job, {"state": "queued", "chunks": 1})
    assert store.unfinished() == [job] and not store.complete(job)
    store.start_chunk(job, 0, "w", "h", "q", [job, 0])
    store.publish(job, 0, "h", 0.1, Path("/o"), KEY, [])
    assert store.complete(job)
    store.finish(job, "done")
    assert store.unfinished() == []


def test_publish_marks_done_counts_once_and_finishes_the_job(store, tmp_path):
    out = tmp_path / "out"
    job = uuid.uuid4().hex
    store.create(job, {"state": "queued", "chunks": 2, "ok": 0, "failed": 0, "skipped": 0, "out": str(out)})
    a, b, c = (Path(f"/v/{name}.mp4") for name in "abc")
    assert store.start_chunk(job, 0, "w1", "host1", "q", [job, 0]) == 1
    assert store.state(job) == "running" and set(store.running(job)) == {f"{job}:0"}
    store.claim(out, KEY, "w1", f"{job}:0", [a, b])
    counts = [(a, "ok", record(str(a), output_tokens=7)), (b, "failed", record(str(b), "failed"))]
    assert store.publish(job, 0, "host1", 1.5, out, KEY, counts) is False  # one chunk to go
    assert store.done(out, KEY, [a, b]) == [True, False] and store.running(job) == {}
    assert store.claim(out, KEY, "w2", f"{job}:1", [b]) == [0]  # released: a failed video may be tried again
    assert store.publish(job, 0, "host1", 1.5, out, KEY, counts) is False  # a redelivery counts nothing twice
    assert store.start_chunk(job, 0, "w1", "host1", "q", [job, 0]) == -2  # and is known to be finished
    job_hash = store.get(job)
    assert (job_hash["ok"], job_hash["failed"], job_hash["output_tokens"]) == ("1", "1", "7")
    assert store.start_chunk(job, 1, "w2", "host2", "q", [job, 1]) == 1
    assert store.publish(job, 1, "host2", 0.5, out, KEY, [(c, "skipped", None)]) is True  # last chunk
    assert store.get(job)["skipped"] == "1"
    assert store.finish(job, "done") and not store.finish(job, "done")
    assert 0 < store.redis.ttl(store.key(job)) <= 60


def test_a_dead_workers_chunk_is_taken_over_exactly_once(store):
    store.beat("alive", 60)
    store.create("job", {"state": "queued", "chunks": 2})
    assert store.start_chunk("job", 0, "alive", "h1", "q", ["job", 0]) == 1
    assert store.start_chunk("job", 1, "dead", "h2", "q", ["job", 1, ["/v/x.mp4"]]) == 1
    taken = list(store.orphans())
    assert [(f, entry["args"], entry["queue"]) for f, entry in taken] == [("job:1", ["job", 1, ["/v/x.mp4"]], "q")]
    assert list(store.orphans()) == [] and set(store.running("job")) == {"job:0"}
    store.redis.delete("captioner:alive:alive")
    assert [field for field, _ in store.orphans()] == ["job:0"]


def test_a_chunk_stranded_among_unacknowledged_messages_is_taken_once(store):
    """A delivered chunk message whose worker lost Redis before putting it back (kombu's `unacked`
    hash): found when no worker runs it, taken out once, and left alone while its chunk runs."""
    import base64
    import json as json_

    from captioner.service.celery_app import CHUNK_TASK
    from captioner.service.unacked import UNACKED, UNACKED_INDEX, stranded_chunks

    job = uuid.uuid4().hex
    store.create(job, {"state": "running", "chunks": 3})

    def deliver(tag: str, index: int, age_s: float) -> None:
        body = base64.b64encode(json_.dumps([[job, index, ["/v/a.mp4"], "/o", {}], {}, {}]).encode()).decode()
        payload = {"body": body, "headers": {"task": CHUNK_TASK}, "properties": {"body_encoding": "base64"}}
        store.redis.hset(UNACKED, tag, json_.dumps([payload, "", "captioner"]))
        store.redis.zadd(UNACKED_INDEX, {tag: time.time() - age_s})

    deliver("t0", 0, 600)  # stranded
    deliver("t1", 1, 600)  # its chunk runs on a worker
    deliver("t2", 2, 5)  # delivered just now: about to start
    store.start_chunk(job, 1, "w", "h", "q", [job, 1])
    store.redis.hset(UNACKED, "t3", "not a message")
    store.redis.zadd(UNACKED_INDEX, {"t3": 0})
    found = [(m.index, queue) for m, queue in stranded_chunks(store.redis, store, min_age_s=60)]
    assert found == [(0, "captioner")]
    assert list(stranded_chunks(store.redis, store, min_age_s=60)) == []  # taken out: once
    assert set(store.redis.hkeys(UNACKED)) == {"t1", "t2", "t3"}
