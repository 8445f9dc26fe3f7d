"""How large references may be: a huge line is refused cheaply, naming its line and the limit (issue 20)."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from captioner.cli import app
from captioner.evaluation.references import InputError, ReferenceLimits, load_references

SEA = "푸른 바다 위로 하얀 파도가 부서지고 갈매기가 날아간다. "  # 78 bytes of UTF-8


def jsonl_line(video: str, *references: str) -> str:
    return json.dumps({"video": video, "references": list(references)}, ensure_ascii=False) + "\n"


def test_a_60_mb_jsonl_line_is_refused_naming_its_line_and_the_limit(tmp_path):
    path = tmp_path / "refs.jsonl"
    huge = jsonl_line("huge.mp4", SEA * 780_000)  # one reference of about 61 MB
    with path.open("w", encoding="utf-8") as fh:
        fh.write(jsonl_line("ok.mp4", "좋은 날씨"))
        fh.write(huge)
        fh.write(jsonl_line("after.mp4", "맑은 하늘"))
        fh.write('{"video": "broken.mp4", "references": ["끝나지 않은\n')
    assert path.stat().st_size > 60_000_000

    with pytest.raises(InputError) as info:
        load_references(path)
    size = len(huge.encode("utf-8")) - 1  # without its line end
    assert info.value.problems[0] == (
        f"{path}:2: a line of {size:,} bytes, over the limit of 1,048,576 bytes (setting reference_max_line_bytes, "
        "CAPTIONER_REFERENCE_MAX_LINE_BYTES); a reference caption is a few KB"
    )
    # Read past, not stopped at: the lines after it keep their numbers and their own problems.
    assert len(info.value.problems) == 2 and info.value.problems[1].startswith(f"{path}:4: invalid JSON")


def test_a_line_just_under_the_limit_is_read(tmp_path):
    limits = ReferenceLimits(line_bytes=4096)
    empty = len(jsonl_line("clip.mp4", "").encode("utf-8")) - 1  # bytes without the line end
    text = "가" * ((4096 - empty) // 3)  # 3 bytes each: the line ends 0-2 bytes under the limit
    line = jsonl_line("clip.mp4", text)
    assert 4094 <= len(line.encode("utf-8")) - 1 <= 4096
    path = tmp_path / "refs.jsonl"
    path.write_text(line, encoding="utf-8")
    assert load_references(path, limits).clips["clip"].references == [text]
    path.write_text(jsonl_line("clip.mp4", text + "가나"), encoding="utf-8")
    with pytest.raises(InputError, match=r"refs.jsonl:1: a line of 4,\d{3} bytes, over the limit of 4,096 bytes"):
        load_references(path, limits)


def test_a_csv_field_over_131072_characters_under_the_limit_is_read(tmp_path):
    before = csv.field_size_limit()
    long_reference = SEA * 6000  # 198,000 characters, 486,000 bytes: over the csv module's default limit
    assert len(long_reference) > 131_072
    path = tmp_path / "refs.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video", "reference"])
        writer.writerow(["long.mp4", long_reference])
        writer.writerow(["multi.mp4", "첫 줄\n" + long_reference])  # quoted, over two lines
        writer.writerow(["short.mp4", "바다"])
    refs = load_references(path)
    assert refs.clips["long"].references == [long_reference.strip()]
    assert refs.clips["multi"].references == ["첫 줄\n" + long_reference.strip()]
    assert refs.clips["short"].references == ["바다"]
    assert csv.field_size_limit() == before  # the process-wide limit is put back


def test_a_csv_line_or_field_over_the_limit_is_that_rows_problem(tmp_path):
    limits = ReferenceLimits(line_bytes=10_000)
    path = tmp_path / "refs.csv"
    rows = [["video", "reference"], ["ok.mp4", "바다"], ["wide.mp4", "x" * 12_000], ["later.mp4", "하늘"]]
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(InputError) as info:
        load_references(path, limits)
    assert info.value.problems == [
        f"{path}:3: a line over the limit of 10,000 bytes (setting reference_max_line_bytes, "
        "CAPTIONER_REFERENCE_MAX_LINE_BYTES); a reference caption is a few KB"
    ]

    # A quoted field over many short lines: the csv module's field limit, reported at the row's first line.
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write('video,reference\nok.mp4,바다\ntall.mp4,"' + ("z" * 900 + "\n") * 12 + '"\nlast.mp4,끝\n')
    with pytest.raises(InputError, match=r"refs.csv:3: a field over the limit of 10,000 bytes"):
        load_references(path, limits)

    # Under the limit in characters, over it in bytes (Korean is 3 bytes a character): still over.
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write('video,reference\nok.mp4,바다\nkorean.mp4,"' + ("가" * 2000 + "\n") * 2 + '"\nlast.mp4,끝\n')
    with pytest.raises(InputError) as info:
        load_references(path, limits)
    assert info.value.problems == [
        f"{path}:3: a field of 12,002 bytes, over the limit of 10,000 bytes (setting reference_max_line_bytes, "
        "CAPTIONER_REFERENCE_MAX_LINE_BYTES); a reference caption is a few KB"
    ]


def test_a_file_or_label_folder_over_the_file_limit_is_refused_before_reading(tmp_path):
    limits = ReferenceLimits(line_bytes=1000, file_bytes=2000)
    path = tmp_path / "refs.jsonl"
    path.write_text("".join(jsonl_line(f"clip{i}.mp4", "바다가 보인다") for i in range(60)), encoding="utf-8")
    size = path.stat().st_size
    with pytest.raises(InputError) as info:
        load_references(path, limits)
    assert info.value.problems == [
        f"{path}: references file of {size:,} bytes, over the limit of 2,000 bytes "
        "(setting reference_max_file_bytes, CAPTIONER_REFERENCE_MAX_FILE_BYTES)"
    ]

    labels = tmp_path / "labels"
    labels.mkdir()
    label = {"filename": "a.mp4", "caption": {"korean": "바다"}}
    (labels / "a.json").write_text(json.dumps(label, ensure_ascii=False), encoding="utf-8")
    (labels / "big.json").write_text(json.dumps({**label, "padding": "x" * 1500}), encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_references(labels, limits)
    assert info.value.problems == [
        f"{labels / 'big.json'}: a label file of {(labels / 'big.json').stat().st_size:,} bytes, over the limit "
        "of 1,000 bytes (setting reference_max_line_bytes, CAPTIONER_REFERENCE_MAX_LINE_BYTES); a reference "
        "caption is a few KB"
    ]
    (labels / "big.json").write_text(json.dumps(label), encoding="utf-8")
    for i in range(60):  # 60 small label files: together over the limit
        (labels / f"more{i}.json").write_text(json.dumps({**label, "filename": f"m{i}.mp4"}), encoding="utf-8")
    with pytest.raises(InputError, match=r"labels: label files of [\d,]+ bytes, over the limit of 2,000 bytes"):
        load_references(labels, limits)


def test_the_limit_is_a_setting_of_captioner_eval(tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(jsonl_line("a.mp4", "바다") + jsonl_line("b.mp4", "하늘" * 3000), encoding="utf-8")
    captions = tmp_path / "captions.jsonl"
    record = {"video": "/v/a.mp4", "status": "ok", "caption": "바다", "model": "m", "prompt": {"name": "p"}}
    captions.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    args = ["eval", str(captions), "--refs", str(refs), "--out", str(tmp_path / "report")]

    result = CliRunner().invoke(app, args, env={"CAPTIONER_REFERENCE_MAX_LINE_BYTES": "4096"})
    assert result.exit_code == 2
    assert f"{refs}:2: a line of 18," in result.stderr and "over the limit of 4,096 bytes" in result.stderr
