"""Records: append-only JSONL that survives kills and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from captioner.records import CaptionRecord, RecordWriter, VersionKey, compact, latest_by_video, read_records


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
    key = VersionKey.of(records[0])
    latest = latest_by_video(records, key)
    assert latest[b"/v/a.mp4"]["status"] == "ok" and latest[b"/v/b.mp4"]["status"] == "failed"  # keyed by path bytes
    assert compact(path) == 1  # only the superseded failure of a.mp4 goes; v2's caption stays beside v1's
    kept = read_records(path)
    assert [(r["video"], r["prompt"]["version"], r["status"]) for r in kept] == [
        ("/v/a.mp4", 1, "ok"),
        ("/v/a.mp4", 2, "ok"),
        ("/v/b.mp4", 1, "failed"),
    ]


def test_part_files_are_invisible_until_published_and_replace_an_earlier_run(tmp_path):
    from captioner.records import PartWriter, merge_parts, read_output

    out = tmp_path / "out"
    with RecordWriter(out / "captions.jsonl") as writer:
        writer.write(make("/v/run.mp4", created_at="2026-01-01T00:00:00+00:00"))
    first = PartWriter(out, "job", 0)
    first.write(make("/v/a.mp4", caption="first try"))
    assert [r["video"] for r in read_output(out)] == ["/v/run.mp4"]  # not published: invisible
    first.discard()  # the chunk failed and will run again
    again = PartWriter(out, "job", 0)
    again.write(make("/v/a.mp4"))
    again.publish()
    twice = PartWriter(out, "job", 0)  # a redelivery that ran to the end as well: replaces, never adds
    twice.write(make("/v/a.mp4", caption="다시"))
    twice.publish()
    other = PartWriter(out, "job", 1)
    other.write(make("/v/b.mp4"))
    other.publish()
    assert [r["video"] for r in read_output(out)] == ["/v/run.mp4", "/v/a.mp4", "/v/b.mp4"]
    assert merge_parts(out, "job") == 2
    assert not (out / "parts" / "job").exists() and (out / "parts" / "job.jsonl").is_file()
    records = read_output(out)
    assert [(r["video"], r["caption"]) for r in records][1:] == [("/v/a.mp4", "다시"), ("/v/b.mp4", "산 위로 해가 떠오른다.")]
    assert read_output(out / "captions.jsonl") == records  # a folder's captions.jsonl names the folder


def test_a_caption_with_a_line_separator_is_one_record(tmp_path):
    path = tmp_path / "captions.jsonl"
    with RecordWriter(path) as writer:
        writer.write(make("/v/a.mp4", caption="첫 줄\u2028둘째 줄\u0085셋째"))
        writer.write(make("/v/b.mp4"))
    assert [r["caption"] for r in read_records(path)] == ["첫 줄\u2028둘째 줄\u0085셋째", "산 위로 해가 떠오른다."]


def test_version_key_is_one_type_with_a_stable_digest():
    record = json.loads(make("/v/a.mp4").to_json())
    key = VersionKey.of(record)
    assert key == VersionKey.of(json.loads(make("/v/b.mp4").to_json()))
    assert key.digest() == VersionKey.of(record).digest() and len(key.digest()) == 16
    assert key != VersionKey.of({**record, "prompt": {"name": "p", "version": 2, "sha": "x"}})
    assert key.label() == "m | no adapter | prompt p@1"
