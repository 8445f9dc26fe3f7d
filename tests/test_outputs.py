"""Records: append-only JSONL that survives kills and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from captioner.outputs import CaptionRecord, RecordWriter, compact, latest_by_video, read_records, version_key


def make(video: str, status: str = "ok", caption: str = "산 위로 해가 떠오른다.", **kw) -> CaptionRecord:
    fields = dict(error=None, frames=8, model="m", adapter=None, prompt={"name": "p", "version": 1, "sha": "x"})
    fields.update(kw)
    return CaptionRecord(video=video, status=status, caption=caption, **fields)


def test_korean_is_written_as_utf8_not_escaped(tmp_path):
    path = tmp_path / "captions.jsonl"
    with RecordWriter(path) as writer:
        writer.write(make("/v/a.mp4"))
    raw = path.read_bytes()
    assert "산 위로 해가 떠오른다.".encode("utf-8") in raw and b"\\u" not in raw
    assert read_records(path)[0]["caption"] == "산 위로 해가 떠오른다."


def test_torn_last_line_is_cut_and_never_read(tmp_path):
    path = tmp_path / "captions.jsonl"
    with RecordWriter(path) as writer:
        writer.write(make("/v/a.mp4"))
    whole = path.read_bytes()
    path.write_bytes(whole + make("/v/b.mp4").to_json().encode()[:40])  # a kill mid-write
    assert [r["video"] for r in read_records(path)] == ["/v/a.mp4"]
    with RecordWriter(path) as writer:
        writer.write(make("/v/c.mp4"))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["video"] for line in lines] == ["/v/a.mp4", "/v/c.mp4"]


def _write_many(path: str, worker: int) -> None:
    with RecordWriter(Path(path)) as writer:
        for i in range(200):
            writer.write(make(f"/v/{worker}-{i}.mp4", caption="가" * (3000 + worker)))


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "captions.jsonl"
    procs = [multiprocessing.get_context("spawn").Process(target=_write_many, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 800
    assert all(len(json.loads(line)["caption"]) >= 3000 for line in lines)


def test_latest_per_version_and_compaction(tmp_path):
    path = tmp_path / "captions.jsonl"
    other = {"name": "p", "version": 2, "sha": "y"}
    with RecordWriter(path) as writer:
        writer.write(make("/v/a.mp4", status="failed", caption="", error="decoding failed"))
        writer.write(make("/v/a.mp4"))
        writer.write(make("/v/a.mp4", prompt=other, caption="다른 프롬프트"))
        writer.write(make("/v/b.mp4", status="failed", caption="", error="x"))
    records = read_records(path)
    key = version_key(records[0])
    latest = latest_by_video(records, key)
    assert latest["/v/a.mp4"]["status"] == "ok" and latest["/v/b.mp4"]["status"] == "failed"
    assert compact(path) == 1  # only the superseded failure of a.mp4 goes; v2's caption stays beside v1's
    kept = read_records(path)
    assert [(r["video"], r["prompt"]["version"], r["status"]) for r in kept] == [
        ("/v/a.mp4", 1, "ok"),
        ("/v/a.mp4", 2, "ok"),
        ("/v/b.mp4", 1, "failed"),
    ]
