"""Issue 20: a video is the exact bytes of its path, not the text that shows it.

A file named with the byte 0xff and a file named with the four characters `\\xff` both show as
`\\xff.mp4` (`sources.video_id`); they are two videos everywhere a video is a key: the newest record
per video, compaction, export rows, resume, and the done-index's Redis keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import redis

from captioner.adapters import BASE
from captioner.captioning.folders import pending_work
from captioner.evaluation.captions import load_captions
from captioner.records import (
    CAPTIONS_FILE,
    Provenance,
    RecordWriter,
    compact,
    latest_by_video,
    ok_videos,
    read_output,
    read_records,
)
from captioner.records.export import export
from captioner.service.done_index import INDEX_FORMAT, IndexKeys, folder_key, folder_signature, video_key
from captioner.service.store import JobStore
from captioner.sources import find_videos, raw_name, record_key, record_path, video_bytes, video_id

URL = os.environ.get("CAPTIONER_TEST_REDIS", "redis://127.0.0.1:6379/13")  # as tests/test_store.py
MADE = Provenance("m", None, None, {"name": "p", "version": 1, "sha": "s"}, "cpu", 8, "deterministic")
KEY = MADE.key


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """Two real files that show the same name: the byte 0xff, and the four characters `\\xff`."""
    raw = Path(os.fsdecode(os.fsencode(tmp_path) + b"/clips/\xff.mp4"))
    literal = tmp_path / "clips" / "\\xff.mp4"
    literal.parent.mkdir()
    for path in (raw, literal):
        with open(os.fsencode(path), "wb") as fh:
            fh.write(b"0")
    os.utime(os.fsencode(raw.parent), None)
    return raw, literal


def ok(path: Path, caption: str, created_at: str = "2024-01-01T00:00:01+00:00"):
    return MADE.stamp(path, status="ok", caption=caption, error=None, created_at=created_at)


def failed(path: Path, created_at: str = "2024-01-01T00:00:00+00:00"):
    return MADE.stamp(path, status="failed", caption="", error="decoding failed", created_at=created_at)


def write(out: Path, records: list) -> Path:
    with RecordWriter(out / CAPTIONS_FILE) as writer:
        for record in records:
            writer.write(record)
    return out / CAPTIONS_FILE


def test_the_pair_shows_alike_but_are_two_videos(pair):
    raw, literal = pair
    assert sorted(find_videos([raw.parent]).videos) == sorted([raw, literal])
    assert video_id(raw) == video_id(literal) == str(literal)  # the text alone cannot tell them apart
    assert video_bytes(raw) != video_bytes(literal)
    assert video_bytes(raw).endswith(b"/\xff.mp4") and video_bytes(literal).endswith(b"/\\xff.mp4")
    assert (raw_name(raw) is not None, raw_name(literal)) == (True, None)
    for path in pair:  # a record's identity is its path's, and it leads back to the file
        record = json.loads(ok(path, "x").to_json())
        assert record_key(record) == video_bytes(path) and record_path(record) == path
        assert ok(path, "x").path == path
    assert video_bytes(video_bytes(raw)) == video_bytes(raw)  # an identity passes through


def test_compaction_and_latest_keep_both(tmp_path, pair):
    raw, literal = pair
    path = write(tmp_path / "out", [failed(raw), failed(literal), ok(raw, "바이트"), ok(literal, "글자")])
    assert compact(path) == 2  # only the two superseded failures go
    kept = read_records(path)
    assert sorted((r["caption"], r["video_raw"] is None) for r in kept) == [("글자", True), ("바이트", False)]
    latest = latest_by_video(kept, KEY)
    assert set(latest) == {video_bytes(raw), video_bytes(literal)}
    assert latest[video_bytes(raw)]["caption"] == "바이트" and latest[video_bytes(literal)]["caption"] == "글자"
    assert ok_videos(kept, KEY) == {video_bytes(raw), video_bytes(literal)}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_gives_a_row_to_each(tmp_path, pair, fmt):
    raw, literal = pair
    out = tmp_path / "out"
    write(out, [ok(literal, "글자"), ok(raw, "바이트", "2024-01-01T00:00:02+00:00")])
    done = export(out, fmt)
    assert (done.rows, done.videos) == (2, 2)
    if fmt == "csv":
        rows = pd.read_csv(done.path, keep_default_na=False).to_dict(orient="records")
    else:
        rows = [json.loads(line) for line in done.path.read_text(encoding="utf-8").splitlines()]
    assert [row["video"] for row in rows] == [video_id(raw)] * 2
    files = {record_path({**row, "video_raw": row["video_raw"] or None}): row["caption"] for row in rows}
    assert files == {raw: "바이트", literal: "글자"}


def test_resume_treats_them_apart(tmp_path, pair):
    raw, literal = pair
    out = tmp_path / "out"
    plan = SimpleNamespace(adapters=(BASE,), key_for=lambda adapter: KEY)  # what pending_work reads of a plan
    write(out, [ok(raw, "바이트")])
    assert list(pending_work([raw, literal], out, plan)) == [literal]
    write(out, [ok(literal, "글자"), failed(raw, "2024-01-01T00:00:09+00:00")])  # raw's newest record failed
    assert list(pending_work([raw, literal], out, plan)) == [raw]


def test_a_record_naming_no_path_is_skipped_not_fatal(tmp_path, pair):
    raw, _ = pair
    path = write(tmp_path / "out", [ok(raw, "바이트")])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"video": "/v/a.mp4", "video_raw": "not base64!", "status": "ok"}) + "\n")
        fh.write(json.dumps({"video": 7, "status": "ok"}) + "\n")
    assert [r["caption"] for r in read_records(path)] == ["바이트"]
    assert compact(path) == 0


def test_eval_sees_two_videos_sharing_a_name(tmp_path, pair):
    raw, literal = pair
    write(tmp_path / "out", [ok(raw, "바이트"), ok(literal, "글자")])
    caps = load_captions(tmp_path / "out")
    assert list(caps.clips) == ["\\xff"]  # matched to references by stem, as before
    warning = next(w for w in caps.warnings if "share the name" in w)
    assert warning.count(video_id(raw)) == 2 and "2 different videos" in warning and "not UTF-8" in warning


# --- the done-index --------------------------------------------------------------------------


@pytest.fixture()
def store(tmp_path) -> JobStore:
    """The Redis of tests/test_store.py; only this test's keys (its own output folder) are removed after."""
    client = redis.Redis.from_url(URL, decode_responses=True)
    yield JobStore(client, job_ttl=60)
    for key in client.scan_iter(f"captioner:*{folder_key(tmp_path / 'out')}*"):
        client.delete(key)


def old_video_key(path: Path) -> str:
    """`video_key` before issue 20: a hash of the `video_id` text."""
    digest = hashlib.blake2b(video_id(path).encode("utf-8"), digest_size=10).digest()
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def test_done_index_keys_differ_and_a_rebuild_agrees_with_the_paths(store, tmp_path, pair):
    raw, literal = pair
    out = tmp_path / "out"
    assert video_key(raw) != video_key(literal)
    assert video_key(literal) == old_video_key(literal)  # a valid UTF-8 name keeps its key: indexes survive
    assert video_key(raw) != old_video_key(raw)  # a non-UTF-8 name now hashes its bytes, not the \xff text
    assert video_key(ok(raw, "x").path) == video_key(raw) != video_key(ok(raw, "x").video)  # publish: pass .path
    assert store.claim(out, KEY, "w1", "job:0", [raw, literal]) == [0, 0]
    assert store.redis.hlen(IndexKeys.of(out, KEY).claims) == 2  # two claims, not one
    store.release(out, KEY, [raw, literal])
    assert store.redis.hlen(IndexKeys.of(out, KEY).claims) == 0

    write(out, [ok(raw, "바이트"), ok(literal, "글자", "2024-01-01T00:00:00+00:00")])
    store.ensure_index(out, KEY)  # rebuilt from the records file
    assert store.done(out, KEY, [raw, literal]) == [True, True]
    assert store.redis.smembers(IndexKeys.of(out, KEY).done) == {video_key(raw), video_key(literal)}
    # The literal name's newest record fails: rebuilt, only the raw name is done.
    write(out, [failed(literal, "2024-01-01T00:00:05+00:00")])
    store.ensure_index(out, KEY)
    assert store.done(out, KEY, [raw, literal]) == [True, False]
    assert store.redis.smembers(IndexKeys.of(out, KEY).done) == {video_key(raw)}
    assert {video_key(identity) for identity in ok_videos(read_output(out), KEY)} == {video_key(raw)}


def test_an_index_made_before_issue_20_is_rebuilt_once(store, tmp_path, pair):
    raw, literal = pair
    out = tmp_path / "out"
    write(out, [ok(raw, "바이트")])
    keys = IndexKeys.of(out, KEY)
    # What a worker before issue 20 left: the raw name under its old key (the literal name's key
    # now), and a signature of the same files without the index format.
    store.redis.sadd(keys.done, old_video_key(raw))
    store.redis.set(keys.sig, folder_signature(out).removeprefix(INDEX_FORMAT + "|"))
    store.ensure_index(out, KEY)
    assert store.done(out, KEY, [raw, literal]) == [True, False]  # the literal name is not taken as done
