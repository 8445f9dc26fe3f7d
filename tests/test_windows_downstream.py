"""Windows of long takes downstream of the run: export rows, eval matching, report strips (issue 21).

Records are written as JSON lines by hand, with and without `window` (records of runs before
windows have no such key), as the shared design of issue 21 lays them out.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from captioner.evaluation.captions import load_captions
from captioner.evaluation.command import EXIT_OK, run_eval
from captioner.evaluation.references import InputError, load_references
from captioner.records.export import export

CAT = "고양이가 매트 위에 앉았다"  # identical caption: METEOR 1 - 0.5 * (1/8)^3 (see test_eval_command)
CAT_SAME = 1 - 0.5 / 8**3
TRAIN = "기차가 강을 건넌다"
TRAIN_SAME = 1 - 0.5 / 6**3
UNRELATED = "푸른 하늘"  # no morpheme in common with CAT or TRAIN
PROMPT = {"name": "detailed-ko", "version": 1, "sha": "aaaaaaaaaaaa"}


def record(video: str, caption: str | None, window: tuple[int, float, float] | None = None, **fields) -> dict:
    """A record as the run writes it; `window` None leaves the key out, as records before windows did."""
    failed = caption is None
    rec = {
        "video": video,
        "status": "failed" if failed else "ok",
        "caption": "" if failed else caption,
        "error": "decoding failed" if failed else None,
        "frames": 8,
        "model": "m",
        "adapter": None,
        "prompt": PROMPT,
        "created_at": "2026-12-03T08:00:00+00:00",
        "frame_times": [1.0, 2.0],
        **fields,
    }
    if window is not None:
        index, start, end = window
        rec["window"] = {"index": index, "start_s": start, "end_s": end}
        rec["bytes_read"] = 4096
    return rec


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# --- export ---------------------------------------------------------------------------------


@pytest.fixture
def windowed_folder(tmp_path) -> Path:
    """An old whole-file record, and a long take's windows written out of order, one failed then ok."""
    out = tmp_path / "out"
    write_jsonl(
        out / "captions.jsonl",
        [
            record("/footage/short.mp4", "짧은 영상"),  # before windows: no `window` key
            record("/footage/long.mp4", "둘째 창", (1, 30.0, 60.0)),
            record("/footage/long.mp4", None, (2, 60.0, 90.0), created_at="2026-12-03T08:00:01+00:00"),
            record("/footage/long.mp4", "첫째 창", (0, 0.0, 30.0), created_at="2026-12-03T08:00:02+00:00"),
            record("/footage/long.mp4", "셋째 창", (2, 60.0, 90.0), created_at="2026-12-03T08:00:03+00:00"),
        ],
    )
    return out


def read_table(path: Path, fmt: str) -> list[dict]:
    if fmt == "parquet":
        return pd.read_parquet(path).replace({np.nan: None}).to_dict(orient="records")
    if fmt == "csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def number(value) -> float | None:
    """A cell as a number: CSV holds text ("" for null), the other formats numbers or None."""
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return None
    return float(value)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_gives_a_row_per_window_with_its_times(windowed_folder, fmt):
    result = export(windowed_folder, fmt)
    assert (result.rows, result.videos, result.windows) == (4, 2, 3)
    assert result.summary()["window_rows"] == 3
    rows = read_table(result.path, fmt)
    found = [
        (Path(r["video"]).name, number(r["window_index"]), number(r["window_start_s"]), number(r["window_end_s"]))
        for r in rows
    ]
    # Sorted by video, then window; the old record of a whole file has no window.
    assert found == [
        ("long.mp4", 0, 0.0, 30.0),
        ("long.mp4", 1, 30.0, 60.0),
        ("long.mp4", 2, 60.0, 90.0),
        ("short.mp4", None, None, None),
    ]
    assert [r["caption"] for r in rows] == ["첫째 창", "둘째 창", "셋째 창", "짧은 영상"]  # window 2: its later ok
    header = list(rows[0])
    assert header[:5] == ["video", "video_raw", "window_index", "window_start_s", "window_end_s"]


def test_export_types_of_the_window_columns(windowed_folder):
    import pyarrow.parquet as pq

    schema = pq.read_schema(export(windowed_folder, "parquet").path)
    assert str(schema.field("window_index").type) == "int64"
    assert str(schema.field("window_start_s").type) == "double"
    text = export(windowed_folder, "csv").path.read_text(encoding="utf-8")
    assert ",0,0.0,30.0," in text and ",2,60.0,90.0," in text  # an index stays 2, not 2.0


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_of_records_without_windows_is_as_before(tmp_path, fmt):
    out = write_jsonl(tmp_path / "old" / "captions.jsonl", [record("/footage/a.mp4", "가"), record("/b.mp4", "나")])
    result = export(out.parent, fmt)
    assert (result.rows, result.videos, result.windows) == (2, 2, 0)
    rows = read_table(result.path, fmt)
    assert [Path(r["video"]).name for r in rows] == ["b.mp4", "a.mp4"]  # by video text, as before
    for row in rows:
        assert all(number(row[c]) is None for c in ("window_index", "window_start_s", "window_end_s"))
        assert row["caption"] in ("가", "나") and row["prompt_name"] == "detailed-ko"


# --- eval: which window a reference scores -------------------------------------------------


@pytest.fixture
def take_run(tmp_path) -> Path:
    """take.mp4 in three 30 s windows (CAT, TRAIN, UNRELATED); clip.mp4 whole (CAT)."""
    return write_jsonl(
        tmp_path / "run.jsonl",
        [
            record("/nonexistent/take.mp4", CAT, (0, 0.0, 30.0)),
            record("/nonexistent/take.mp4", TRAIN, (1, 30.0, 60.0)),
            record("/nonexistent/take.mp4", UNRELATED, (2, 60.0, 90.0)),
            record("/nonexistent/clip.mp4", CAT),
        ],
    )


def rows_by_clip(out: Path) -> dict[str, dict]:
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {row["clip"]: row for row in metrics["per_video"]}


def test_a_ranged_reference_scores_the_window_overlapping_it_most(tmp_path, take_run, capsys):
    refs = write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"video": "take.mp4", "start_s": 35, "end_s": 50, "references": [TRAIN]},  # inside window 1
            {"video": "take.mp4", "start_s": 25, "end_s": 35, "references": [CAT]},  # 5 s in 0 and 1: lowest
            {"video": "take.mp4", "start_s": 100, "end_s": 120, "references": ["끝난 뒤"]},  # no window there
            {"video": "clip.mp4", "references": [CAT]},
        ],
    )
    out = tmp_path / "report"
    assert run_eval(take_run, refs, out) == EXIT_OK
    rows = rows_by_clip(out)
    assert set(rows) == {"clip", "take #0", "take #1", "take #2", "take @100-120 s"}
    w0, w1, w2 = rows["take #0"], rows["take #1"], rows["take #2"]
    assert (w1["status"], w1["window_index"], w1["window_start_s"], w1["window_end_s"]) == ("scored", 1, 30.0, 60.0)
    assert w1["meteor"] == pytest.approx(TRAIN_SAME, abs=1e-12) and w1["references"] == [TRAIN]
    assert (w1["reference_start_s"], w1["reference_end_s"]) == (35.0, 50.0)
    assert w0["status"] == "scored" and w0["meteor"] == pytest.approx(CAT_SAME, abs=1e-12)  # the tie
    assert w2["status"] == "no_reference"
    assert rows["take @100-120 s"]["status"] == "no_caption" and rows["take @100-120 s"]["window_index"] is None
    whole = rows["clip"]
    assert whole["window_index"] is None and whole["meteor"] == pytest.approx(CAT_SAME, abs=1e-12)

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    c = metrics["counts"]
    assert (c["scored"], c["windows_scored"], c["windowed_videos"], c["no_caption"]) == (3, 2, 1, 1)
    assert metrics["references"]["ranged"] == 3
    assert "3 of 4 referenced clips (2 of them windows of 1 long take)" in capsys.readouterr().out
    table = pd.read_csv(out / "per_video.csv")
    assert list(table["clip"]) == ["clip", "take #0", "take #1", "take #2", "take @100-120 s"]
    assert list(table["window_index"].fillna(-1).astype(int)) == [-1, 0, 1, 2, -1]


def test_an_unranged_reference_scores_each_window(tmp_path, take_run):
    refs = write_jsonl(
        tmp_path / "refs.jsonl", [{"video": "take.mp4", "references": [CAT]}, {"video": "clip.mp4", "references": [CAT]}]
    )
    out = tmp_path / "report"
    assert run_eval(take_run, refs, out) == EXIT_OK
    rows = rows_by_clip(out)
    assert [rows[f"take #{i}"]["status"] for i in range(3)] == ["scored"] * 3
    assert all(rows[f"take #{i}"]["references"] == [CAT] for i in range(3))
    assert rows["take #0"]["meteor"] == pytest.approx(CAT_SAME, abs=1e-12)
    assert rows["take #2"]["meteor"] == 0.0
    counts = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["counts"]
    assert (counts["scored"], counts["windows_scored"], counts["referenced_clips"]) == (4, 3, 4)

    # Against another run: paired window by window.
    assert run_eval(take_run, refs, tmp_path / "cmp", against=take_run) == EXIT_OK
    comparison = json.loads((tmp_path / "cmp" / "metrics.json").read_text(encoding="utf-8"))["comparison"]
    assert comparison["paired_clips"] == 4 and comparison["meteor_delta"] == 0.0
    table = pd.read_csv(tmp_path / "cmp" / "per_video.csv")
    assert list(table["clip"]) == ["clip", "take #0", "take #1", "take #2"]
    assert list(table["caption_baseline"]) == [CAT, CAT, TRAIN, UNRELATED]


def test_csv_references_may_name_a_range(tmp_path, take_run):
    refs = tmp_path / "refs.csv"
    refs.write_text(f"video,reference,start_s,end_s\ntake.mp4,{TRAIN},31.5,59\nclip.mp4,{CAT},,\n", encoding="utf-8")
    loaded = load_references(refs)
    assert set(loaded.clips) == {"clip"} and [r.span.start_s for r in loaded.ranged["take"]] == [31.5]
    out = tmp_path / "report"
    assert run_eval(take_run, refs, out) == EXIT_OK
    rows = rows_by_clip(out)
    assert rows["take #1"]["meteor"] == pytest.approx(TRAIN_SAME, abs=1e-12)


def test_the_newest_run_of_a_file_decides_whole_or_windows(tmp_path):
    run = write_jsonl(
        tmp_path / "run.jsonl",
        [
            record("/v/take.mp4", UNRELATED),  # captioned whole first
            record("/v/take.mp4", CAT, (0, 0.0, 30.0)),  # then window by window
            record("/v/take.mp4", TRAIN, (1, 30.0, 60.0)),
        ],
    )
    captions = load_captions(run)
    assert captions.clips == {} and sorted(captions.windows["take"]) == [0, 1]
    assert captions.windows["take"][1].window.start_s == 30.0


# --- malformed ranges ------------------------------------------------------------------------


def test_malformed_ranges_are_refused_naming_file_and_line(tmp_path):
    lines = [
        {"video": "a.mp4", "references": ["좋다"], "start_s": 1, "end_s": 2},  # fine
        {"video": "a.mp4", "references": ["좋다"], "start_s": 5},
        {"video": "a.mp4", "references": ["좋다"], "start_s": "열", "end_s": 20},
        {"video": "a.mp4", "references": ["좋다"], "start_s": -1, "end_s": 20},
        {"video": "a.mp4", "references": ["좋다"], "start_s": 20, "end_s": 20},
        {"video": "a.mp4", "references": ["좋다"], "start_s": True, "end_s": 20},
    ]
    path = write_jsonl(tmp_path / "refs.jsonl", lines)
    with pytest.raises(InputError) as caught:
        load_references(path)
    problems = caught.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert '"end_s" missing' in problems[0]
    assert "start_s must be a number" in problems[1] and "start_s must be a number" in problems[4]
    assert "0 <= start_s < end_s" in problems[2] and "0 <= start_s < end_s" in problems[3]

    table = tmp_path / "refs.csv"
    table.write_text("video,reference,start_s,end_s\na.mp4,좋다,1,2\nb.mp4,좋다,abc,3\nc.mp4,좋다,4,\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_references(table)
    assert [p.split(": ", 1)[0] for p in caught.value.problems] == [f"{table}:3", f"{table}:4"]
    assert "start_s must be a number of seconds, not 'abc'" in caught.value.problems[0]


def test_a_record_with_a_bad_window_is_refused_naming_file_and_line(tmp_path):
    bad = record("/v/take.mp4", CAT, (0, 0.0, 30.0))
    bad["window"]["end_s"] = -3
    run = write_jsonl(tmp_path / "run.jsonl", [record("/v/clip.mp4", CAT), bad])
    with pytest.raises(InputError) as caught:
        load_captions(run)
    assert caught.value.problems[0].startswith(f'{run}:2: bad "window"')


# --- report ----------------------------------------------------------------------------------


def write_take(path: Path, seconds: int = 6, fps: int = 6) -> None:
    """A small real H.264 MP4: red for its first half, blue for its second."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(seconds * fps):
            img = np.zeros((64, 96, 3), np.uint8)
            img[:] = (220, 20, 20) if i < seconds * fps // 2 else (20, 20, 220)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def strip_color(uri: str) -> np.ndarray:
    """The mean RGB of a strip given as a JPEG data: URI."""
    data = base64.b64decode(uri.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3).mean(axis=0)


def test_the_report_shows_a_strip_per_window(tmp_path):
    # Chromium is not installed on this machine: the HTML is checked, and the strips decoded here.
    take = tmp_path / "take.mp4"
    write_take(take)
    run = write_jsonl(
        tmp_path / "run.jsonl",
        [record(str(take), CAT, (0, 0.0, 3.0)), record(str(take), TRAIN, (1, 3.0, 6.0))],
    )
    refs = write_jsonl(tmp_path / "refs.jsonl", [{"video": "take.mp4", "references": [CAT]}])
    out = tmp_path / "report"
    assert run_eval(run, refs, out, worst_best=2) == EXIT_OK
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="windows-scored">2 windows of 1 long take<' in page
    strips = dict(re.findall(r'<img alt="frames of (take, window \d · [^"]+)" src="([^"]+)"', page))
    assert set(strips) == {"take, window 0 · 0–3 s", "take, window 1 · 3–6 s"}
    for uri in strips.values():
        assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size[0] == 6 * 96  # six frames
    red, blue = strip_color(strips["take, window 0 · 0–3 s"]), strip_color(strips["take, window 1 · 3–6 s"])
    assert red[0] > 150 > red[2] and blue[2] > 150 > blue[0]  # each strip is its window's frames
    assert '<span class="window">window 1 · 3–6 s</span>' in page

