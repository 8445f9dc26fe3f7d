"""`captioner eval` and `quantize --calibration` read an output folder as `captioner.records.read_output` does.

A folder's records live in `captions.jsonl` and in the part files queue workers write
(`parts/JOB.jsonl`, `parts/JOB/CHUNK.jsonl`); eval reads them all, strictly (every malformed line
named by file and line), in read_output's order, so its last record per video is the dataset's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from captioner.evaluation.captions import load_captions
from captioner.evaluation.command import EXIT_BAD_INPUT, EXIT_OK, run_eval
from captioner.evaluation.references import InputError
from captioner.records import CaptionRecord, latest_by_video, read_output

P1 = {"name": "detailed", "version": 1, "sha": "aaaaaaaaaaaa"}
P2 = {"name": "detailed", "version": 2, "sha": "bbbbbbbbbbbb"}


def rec(video: str, caption: str | None, at: str, prompt: dict = P1) -> CaptionRecord:
    return CaptionRecord(
        video=f"/nonexistent/{video}.mp4",
        status="failed" if caption is None else "ok",
        caption=caption or "",
        error="decoding failed" if caption is None else None,
        frames=8,
        model="m",
        adapter=None,
        prompt=prompt,
        created_at=f"2026-11-0{at}+00:00",
    )


def write(path: Path, records: list[CaptionRecord | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else r.to_json() for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    out = tmp_path / "out"
    # captions.jsonl is read first, but its cat record is the newest: order is by created_at.
    write(out / "captions.jsonl", [rec("train", None, "1T10:00:00"), rec("cat", "고양이가 매트 위에 앉았다", "3T10:00:00")])
    write(out / "parts" / "job1.jsonl", [rec("train", "기차가 강을 건넌다", "2T10:00:00"), rec("cat", "오래된 캡션", "2T10:00:01")])
    write(out / "parts" / "job2" / "0000000.jsonl", [rec("sky", "하늘에 구름이 떠 있다.", "2T11:00:00")])
    return out


def test_folder_and_its_captions_file_read_the_parts(folder):
    for target in (folder, folder / "captions.jsonl"):
        caps = load_captions(target)
        assert caps.records == 5
        assert {stem: c.caption for stem, c in caps.clips.items()} == {
            "train": "기차가 강을 건넌다",  # failed in captions.jsonl, ok in a later job
            "cat": "고양이가 매트 위에 앉았다",  # the newest record, though its file is read first
            "sky": "하늘에 구름이 떠 있다.",
        }
        assert caps.clips["cat"].where == f"{folder / 'captions.jsonl'}:2"
        assert caps.clips["sky"].where == f"{folder / 'parts' / 'job2' / '0000000.jsonl'}:1"
        assert caps.versions_all == {"m | no adapter | prompt detailed@1": 5}


def test_the_last_record_is_the_datasets_latest(folder):
    write(folder / "parts" / "job3.jsonl", [rec("sky", None, "4T00:00:00")])
    caps = load_captions(folder)
    latest = latest_by_video(read_output(folder))
    assert {Path(os.fsdecode(v)).stem: (r["status"], r["caption"]) for v, r in latest.items()} == {
        s: (c.status, c.caption) for s, c in caps.clips.items()
    }
    assert caps.clips["sky"].status == "failed"


def test_a_caption_holding_a_line_separator_is_one_record(tmp_path):
    # Only "\n" ends a record: U+2028 (or U+0085) inside a caption is JSON-valid, unescaped text.
    records = [rec("train", "기차가 강을\u2028건넌다", "1T00:00:00"), rec("cat", "고양이", "1T00:00:01")]
    path = write(tmp_path / "captions.jsonl", records)
    caps = load_captions(path)
    assert caps.records == 2 and caps.clips["train"].caption == "기차가 강을\u2028건넌다"


def test_malformed_line_in_a_part_file_names_it(folder):
    part = write(folder / "parts" / "job1.jsonl", [rec("train", "기차", "2T10:00:00"), "{broken", '{"video": "/v/x.mp4"}'])
    with pytest.raises(InputError) as info:
        load_captions(folder)
    assert [p.split(": ", 1)[0] for p in info.value.problems] == [f"{part}:2", f"{part}:3"]


def test_a_file_that_is_not_utf8_is_named_and_an_unterminated_last_line_is_read(folder):
    # read_output replaces bytes that are not UTF-8: eval must not score a silently altered dataset.
    # A last line without a newline (a file another tool wrote) is a record like the others.
    line = rec("sky", "하늘", "2T11:00:00").to_json().encode("utf-8")
    (folder / "parts" / "job3.jsonl").write_bytes(line + b"\n" + line[:-2] + b"\xff\"}\n")
    with pytest.raises(InputError) as info:
        load_captions(folder)
    assert [p.split(": ", 1)[0] for p in info.value.problems] == [f"{folder / 'parts' / 'job3.jsonl'}"]
    assert "not UTF-8 text" in info.value.problems[0]
    (folder / "parts" / "job3.jsonl").unlink()
    unterminated = rec("unterminated", "강", "2T11:00:01").to_json().encode("utf-8")
    (folder / "parts" / "job4.jsonl").write_bytes(b"\xef\xbb\xbf" + line + b"\n" + unterminated)
    assert "unterminated" in {clip.stem for clip in load_captions(folder).clips.values()}


def test_empty_folder_is_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no caption records"):
        load_captions(tmp_path / "empty")
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"video": "cat.mp4", "references": ["고양이"]}) + "\n", encoding="utf-8")
    assert run_eval(tmp_path / "empty", refs, tmp_path / "report") == EXIT_BAD_INPUT
    assert f"{tmp_path / 'empty'}: no caption records" in capsys.readouterr().err


def test_versions_sharing_a_label_are_told_apart(tmp_path):
    other_sha = {**P1, "sha": "cccccccccccc"}
    records = [rec("cat", "고양이", "1T00:00:00"), rec("sky", "하늘", "1T00:00:01", other_sha)]
    path = write(tmp_path / "captions.jsonl", records)
    caps = load_captions(path)
    assert len(caps.versions_all) == 2
    assert all(name.startswith("m | no adapter | prompt detailed@1 [") for name in caps.versions_all)


def test_prompt_and_video_raw_are_checked(tmp_path):
    good = json.loads(rec("cat", "고양이", "1T00:00:00").to_json())
    lines = [good | {"prompt": "detailed@1"}, good | {"video_raw": "not base64!"}]
    path = write(tmp_path / "captions.jsonl", [json.dumps(line, ensure_ascii=False) for line in lines])
    with pytest.raises(InputError) as info:
        load_captions(path)
    assert info.value.problems == [
        f'{path}:1: "prompt" must be an object ({{"name", "version", "sha"}})',
        f"{path}:2: \"video_raw\" must be the base64 of the path's bytes",
    ]


def test_eval_of_a_folder(folder, tmp_path, capsys):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(
        "".join(
            json.dumps({"video": f"{v}.mp4", "references": [r]}, ensure_ascii=False) + "\n"
            for v, r in [("cat", "고양이가 매트 위에 앉았다"), ("sky", "하늘에 구름이 떠 있다.")]
        ),
        encoding="utf-8",
    )
    out = tmp_path / "report"
    assert run_eval(folder, refs, out, against=folder / "captions.jsonl") == EXIT_OK
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["counts"]["scored"] == 2 and metrics["counts"]["caption_records"] == 5
    assert metrics["captions"] == str(folder)


def test_quantize_calibration_reads_an_output_folder(folder, tmp_path):
    from captioner.quantize import QuantizeError, calibration_texts

    texts = calibration_texts([folder])
    assert sorted(texts) == sorted(["기차가 강을 건넌다", "고양이가 매트 위에 앉았다", "하늘에 구름이 떠 있다."])
    assert sorted(calibration_texts([folder / "captions.jsonl"])) == sorted(texts)
    # Only part files, and an empty captions.jsonl: still captions, not references.
    parts_only = tmp_path / "parts-only"
    write(parts_only / "parts" / "job1.jsonl", [rec("sky", "하늘", "1T00:00:00")])
    (parts_only / "captions.jsonl").write_text("", encoding="utf-8")
    assert calibration_texts([parts_only / "captions.jsonl"]) == ["하늘"]
    write(folder / "parts" / "job9.jsonl", ["{broken"])
    with pytest.raises(QuantizeError, match="job9.jsonl:1: invalid JSON"):
        calibration_texts([folder])
