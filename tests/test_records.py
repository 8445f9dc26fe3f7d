"""Records: append-only JSONL that survives kills and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

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


def test_replaced_files_keep_the_mode_the_umask_gives(tmp_path):
    """Summaries, merged parts, a compacted captions file and exports stay readable by the folder's other users."""
    from captioner.records import PartWriter, merge_parts, write_atomic, write_summary
    from captioner.records.export import export

    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        with RecordWriter(out / "captions.jsonl") as writer:
            writer.write(make("/v/a.mp4"))
            writer.write(make("/v/a.mp4", caption="다시 쓴 캡션."))
        compact(out / "captions.jsonl")
        part = PartWriter(out, "0123456789abcdef0123456789abcdef", 0)
        part.write(make("/v/b.mp4"))
        part.publish()
        merge_parts(out, "0123456789abcdef0123456789abcdef")
        write_summary(out, {"videos": 2})
        made = [out / "captions.jsonl", out / "summary.json", write_atomic(tmp_path / "x.txt", "가")]
        made += list((out / "parts").glob("*.jsonl"))
        made.append(export(out, "csv", tmp_path / "table.csv").path)
    finally:
        os.umask(old)
    assert len(made) == 5
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in made} == {p.name: "0o644" for p in made}


def test_a_full_disk_leaves_whole_lines_and_no_temp_files(tmp_path):
    """On a file system that fills up, a record is written whole or not at all, and later records are
    never glued onto a torn one; a failed atomic replace leaves the old file and no temporary file."""
    import subprocess

    from captioner.records import write_atomic

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        summary = write_atomic(disk / "summary.json", "{}")
        path = disk / "captions.jsonl"
        written = 0
        with RecordWriter(path) as writer:
            with pytest.raises(OSError):
                while True:
                    writer.write(make(f"/v/{written}.mp4", caption="가" * 900))
                    written += 1
        assert written > 0
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        assert len(lines) == written and all(line.endswith("\n") for line in lines)
        with pytest.raises(OSError):
            write_atomic(summary, "x" * 200_000)
        assert summary.read_text() == "{}" and sorted(p.name for p in disk.iterdir()) == ["captions.jsonl",
                                                                                         "summary.json"]  # fmt: skip
        (disk / "captions.jsonl").unlink()  # space again: writing goes on cleanly
        with RecordWriter(path) as writer:
            writer.write(make("/v/after.mp4"))
        assert [json.loads(line)["video"] for line in path.read_text(encoding="utf-8").splitlines()] == ["/v/after.mp4"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
