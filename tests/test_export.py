"""`captioner export`: an output folder (captions.jsonl and part files) as Parquet, CSV or JSONL."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from captioner.cli import app
from captioner.records.export import COLUMNS
from captioner.records import CaptionRecord, VersionKey
from captioner.sources import raw_name, record_path, video_id

MODEL = "/models/LLaVA-NeXT-Video-7B-hf"
V1 = {"name": "detailed-ko", "version": 1, "sha": "aaaaaaaaaaaa"}
V2 = {"name": "detailed-ko", "version": 2, "sha": "bbbbbbbbbbbb"}
AUTUMN = "가을 단풍이 든 산길 위로 안개가 천천히 걷힌다."
# A Korean file name from a zip made on Windows: CP949 bytes, not UTF-8.
CP949_PATH = os.fsdecode(b"/footage/" + "가을산.mp4".encode("cp949"))


def make(video: str, status: str, caption: str, prompt: dict, created_at: str, **fields) -> CaptionRecord:
    return CaptionRecord(
        video=video_id(video),
        status=status,
        caption=caption if status == "ok" else "",
        error=None if status == "ok" else "file ends early (cut at about 60%)",
        frames=8,
        model=MODEL,
        adapter="caption-lora",
        prompt=prompt,
        adapter_sha="1234abcd",
        prompt_tokens=226,
        cached_tokens=64,
        output_tokens=41 if status == "ok" else 0,
        finish_reason="stop" if status == "ok" else None,
        tier="l4",
        sampling="default",
        frame_times=[0.6, 1.8, 3.0, 4.2, 5.4, 6.6, 7.8, 9.0] if status == "ok" else None,
        decoder="pyav-keyframes" if status == "ok" else None,
        notes=["rotation 90 applied"] if status == "ok" else [],
        video_raw=raw_name(video),
        created_at=created_at,
        **fields,
    )


def name(row: dict) -> str:
    """The file name a row names, read from its exact bytes (UTF-8, else CP949)."""
    data = os.fsencode(record_path(row).name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp949")


def write(path: Path, records: list[CaptionRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")


@pytest.fixture
def folder(tmp_path) -> Path:
    """Prompt v1 by `captioner run`, then a finished queue job (v1), then a running job's chunk (v2).

    - city: v1 ok (then a newer v1 ok in the job), v2 ok
    - river: v1 failed, then v1 ok in the job (failed then ok); v2 ok
    - 가을산 (CP949 name): v2 ok only, Korean caption
    - broken: failed in every version: never exported
    - forest: v1 ok only
    """
    out = tmp_path / "captions"
    write(
        out / "captions.jsonl",
        [
            make("/footage/city.mp4", "ok", "도시의 밤 풍경 (오래된 캡션)", V1, "2026-11-01T10:00:00+00:00"),
            make("/footage/river.mp4", "failed", "", V1, "2026-11-01T10:00:01+00:00"),
            make("/footage/broken.mp4", "failed", "", V1, "2026-11-01T10:00:02+00:00"),
            make("/footage/forest.mp4", "ok", "숲 속으로 햇빛이 비친다.", V1, "2026-11-01T10:00:03+00:00"),
        ],
    )
    write(
        out / "parts" / "job1.jsonl",
        [
            make("/footage/city.mp4", "ok", "도시의 밤 풍경", V1, "2026-11-02T09:00:00+00:00"),
            make("/footage/river.mp4", "ok", "강물이 흐른다.", V1, "2026-11-02T09:00:01+00:00"),
            make("/footage/broken.mp4", "failed", "", V1, "2026-11-02T09:00:02+00:00"),
        ],
    )
    write(
        out / "parts" / "job2" / "0000000.jsonl",
        [
            make("/footage/city.mp4", "ok", "밤의 도시에 불빛이 켜진다.", V2, "2026-11-03T08:00:00+00:00"),
            make("/footage/river.mp4", "ok", "강 위로 새가 난다.", V2, "2026-11-03T08:00:01+00:00"),
            make(CP949_PATH, "ok", AUTUMN, V2, "2026-11-03T08:00:02+00:00"),
            make("/footage/broken.mp4", "failed", "", V2, "2026-11-03T08:00:03+00:00"),
        ],
    )
    (out / "summary.json").write_text("{}", encoding="utf-8")
    return out


def export(*args: str) -> tuple[int, dict | None, str]:
    result = CliRunner().invoke(app, ["export", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = result.stdout.strip().splitlines()
    return result.exit_code, json.loads(lines[-1]) if lines else None, result.stderr


def read(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        table = pd.read_parquet(path)
        for column in ("frame_times", "notes"):
            table[column] = [None if v is None else list(v) for v in table[column]]
        return table
    if fmt == "csv":
        table = pd.read_csv(path, encoding="utf-8", keep_default_na=False, na_values=[""])
        for column in ("frame_times", "notes"):
            table[column] = [json.loads(v) for v in table[column]]
        return table
    return pd.read_json(path, lines=True, dtype=False, precise_float=True)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_newest_version_round_trips(folder, fmt):
    code, summary, err = export(folder, "--format", fmt)
    assert code == 0, err
    path = folder / f"export.{fmt}"
    v2 = VersionKey.of({"model": MODEL, "adapter": "caption-lora", "adapter_sha": "1234abcd", "prompt": V2})
    assert summary["path"] == str(path) and summary["format"] == fmt
    assert (summary["rows"], summary["videos"], summary["records_read"]) == (3, 3, 11)
    assert summary["versions"] == [{"version": v2.digest(), "label": v2.label(), "rows": 3}]
    assert [v["ok_records"] for v in summary["versions_left_out"]] == [4]
    assert summary["videos_without_ok"] == 1  # broken
    # The choice is explained on stderr.
    assert f"version: {v2.label()}" in err and "2026-11-03T08:00:02+00:00" in err
    assert "--all-versions" in err

    table = read(path, fmt)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 3
    by_name = {name(row): row for row in table.to_dict(orient="records")}
    assert set(by_name) == {"city.mp4", "river.mp4", "가을산.mp4"}  # the CP949 name found again via video_raw
    assert "/footage/broken.mp4" not in set(table["video"])
    autumn = by_name["가을산.mp4"]
    assert autumn["caption"] == AUTUMN
    assert autumn["video"] == video_id(CP949_PATH) and "\\x" in autumn["video"]
    assert autumn["video_raw"] == raw_name(CP949_PATH)
    assert record_path(autumn) == Path(CP949_PATH)
    city = by_name["city.mp4"]
    assert city["caption"] == "밤의 도시에 불빛이 켜진다."
    assert city["video_raw"] is None or pd.isna(city["video_raw"])
    assert (city["prompt_name"], int(city["prompt_version"]), city["prompt_sha"]) == ("detailed-ko", 2, V2["sha"])
    assert (city["model"], city["adapter"], city["adapter_sha"]) == (MODEL, "caption-lora", "1234abcd")
    assert city["version"] == v2.digest()
    assert [int(city[c]) for c in ("frames", "prompt_tokens", "cached_tokens", "output_tokens")] == [8, 226, 64, 41]
    assert list(city["frame_times"]) == [0.6, 1.8, 3.0, 4.2, 5.4, 6.6, 7.8, 9.0]
    assert list(city["notes"]) == ["rotation 90 applied"]
    settings = (city["tier"], city["sampling"], city["decoder"], city["finish_reason"])
    assert settings == ("l4", "default", "pyav-keyframes", "stop")
    assert city["created_at"] == "2026-11-03T08:00:00+00:00"
    assert list(table["video"]) == sorted(table["video"])
    if fmt != "parquet":  # Korean is written as Korean, not \uXXXX escapes
        text = path.read_text(encoding="utf-8")
        assert AUTUMN in text and "\\u" not in text


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_all_versions(folder, tmp_path, fmt):
    out = tmp_path / "elsewhere" / f"all.{fmt}"
    code, summary, err = export(folder, "--format", fmt, "--all-versions", "--out", out)
    assert code == 0, err
    assert summary["path"] == str(out) and summary["versions_left_out"] == []
    assert summary["rows"] == 6 and summary["videos"] == 4
    assert [(v["label"].rsplit("@", 1)[1], v["rows"]) for v in summary["versions"]] == [("1", 3), ("2", 3)]
    table = read(out, fmt)
    assert len(table) == 6
    rows = {(name(r), int(r["prompt_version"])): r["caption"] for r in table.to_dict(orient="records")}
    assert rows == {
        ("city.mp4", 1): "도시의 밤 풍경",  # the newer of two ok records of v1
        ("river.mp4", 1): "강물이 흐른다.",  # failed, then ok in a later job
        ("forest.mp4", 1): "숲 속으로 햇빛이 비친다.",
        ("city.mp4", 2): "밤의 도시에 불빛이 켜진다.",
        ("river.mp4", 2): "강 위로 새가 난다.",
        ("가을산.mp4", 2): AUTUMN,
    }
    assert not (folder / f"export.{fmt}").exists()


def test_captions_file_of_a_folder_brings_its_parts(folder):
    code, summary, _ = export(folder / "captions.jsonl", "--format", "jsonl")
    assert code == 0 and summary["rows"] == 3 and summary["path"] == str(folder / "export.jsonl")


def test_export_is_not_read_back_as_captions(folder):
    assert export(folder, "--format", "jsonl")[0] == 0
    code, summary, _ = export(folder, "--format", "jsonl", "--all-versions")
    assert code == 0 and summary["records_read"] == 11


def test_bad_inputs_exit_2_naming_the_path(tmp_path, folder):
    code, summary, err = export(tmp_path / "missing")
    assert (code, summary) == (2, None) and f"{tmp_path / 'missing'}: output folder does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = export(tmp_path / "empty")
    assert code == 2 and f"{tmp_path / 'empty'}: not an output folder, or an empty one" in err
    failed = tmp_path / "failed"
    write(failed / "captions.jsonl", [make("/footage/broken.mp4", "failed", "", V1, "2026-11-01T10:00:00+00:00")])
    code, _, err = export(failed)
    assert code == 2 and f"{failed}: no ok caption to export (1 records, all failed)" in err
    code, _, err = export(folder, "--format", "xlsx")
    assert code == 2 and "unknown format 'xlsx'" in err
    code, _, err = export(folder, "--format", "jsonl", "--out", folder / "parts" / "x.jsonl")
    assert code == 2 and "inside the dataset it exports" in err
    assert not list(folder.glob("export.*"))


def test_parquet_without_pyarrow_names_the_package(folder, monkeypatch):
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    code, _, err = export(folder)
    assert code == 2 and "needs the package 'pyarrow'" in err
    assert not (folder / "export.parquet").exists()
