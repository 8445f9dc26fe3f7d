"""Long takes captioned window by window (issue 21): planning, frames inside windows, one record per window, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.errors import ConfigError
from captioner.windows import Clip, Window, WindowPolicy, plan_windows

FIXED_10 = WindowPolicy.parse("fixed:10")


# Planning: pure arithmetic.


def test_fixed_windows_tile_a_two_hour_take():
    windows = plan_windows(7200.0, FIXED_10)
    assert len(windows) == 720
    assert windows[0] == Window(0, 0.0, 10.0) and windows[-1] == Window(719, 7190.0, 7200.0)
    assert all(a.end_s == b.start_s for a, b in zip(windows, windows[1:]))  # no gap, no overlap
    assert [w.index for w in windows] == list(range(720))


def test_overlap_and_the_last_short_window_merged():
    windows = plan_windows(30.0, WindowPolicy.parse("fixed:10:5"))
    assert [(w.start_s, w.end_s) for w in windows] == [(0, 10), (5, 15), (10, 20), (15, 25), (20, 30)]
    # 34 s of 10 s windows: the last 4 s (under half a window) go into the window before.
    assert [(w.start_s, w.end_s) for w in plan_windows(34.0, FIXED_10)] == [(0, 10), (10, 20), (20, 34)]
    # 36 s: the last 6 s are a window of their own.
    assert plan_windows(36.0, FIXED_10)[-1] == Window(3, 30.0, 36.0)
    assert plan_windows(4.0, FIXED_10) == [Window(0, 0.0, 4.0)]  # fixed windows even a short file


def test_auto_windows_only_files_longer_than_its_threshold():
    auto = WindowPolicy.parse("auto", auto_max_s=60, window_seconds=30)
    assert plan_windows(60.0, auto) is None and plan_windows(12.0, auto) is None
    assert [(w.start_s, w.end_s) for w in plan_windows(61.0, auto)] == [(0, 30), (30, 61)]
    assert plan_windows(7200.0, WindowPolicy.parse("none")) is None
    assert WindowPolicy.parse(" Auto ").kind == "auto" and FIXED_10.describe() == "fixed:10"


def test_shots_cut_at_boundaries_and_split_long_shots():
    from captioner.windows import shot_windows

    assert [(w.start_s, w.end_s) for w in shot_windows(100.0, [20.0, 85.0], 30.0)] == [
        (0, 20), (20, 50), (50, 85), (85, 100),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text", ["fixed", "fixed:", "fixed:0", "fixed:-5", "fixed:ten", "fixed:10:10", "fixed:10:-1", "fixed:1:2:3", "some"]
)
def test_bad_policies_are_config_errors_naming_the_value(text):
    with pytest.raises(ConfigError, match="--windows"):
        WindowPolicy.parse(text)


def test_shots_without_pyscenedetect_says_not_available(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="not available yet"):
        WindowPolicy.parse("shots")


def test_the_setting_is_checked_and_read_from_the_environment(monkeypatch):
    from pydantic import ValidationError

    from captioner.config import Settings

    monkeypatch.setenv("CAPTIONER_WINDOWS", "fixed:20:5")
    assert Settings().window_policy() == WindowPolicy("fixed", 20.0, 5.0, 60.0)
    with pytest.raises(ValidationError, match="fixed:SECONDS"):
        Settings(windows="fixed:x")


def test_records_are_one_per_window_in_compaction(tmp_path):
    from captioner.records import RecordWriter, VersionKey, compact, latest_by_video, ok_clips, read_records
    from tests.test_records import make

    path = tmp_path / "captions.jsonl"
    with RecordWriter(path) as writer:
        for index in range(3):
            writer.write(make("/v/long.mp4", window=Window(index, 10.0 * index, 10.0 * index + 10).as_json()))
        writer.write(make("/v/long.mp4", status="failed", caption="", error="x", window=Window(1, 10, 20).as_json()))
        writer.write(make("/v/short.mp4"))
    assert compact(path) == 1  # only window 1's older ok record goes: the other windows are other clips
    kept = read_records(path)
    assert [(r["video"], r["window"] and r["window"]["index"]) for r in kept] == [
        ("/v/long.mp4", 0), ("/v/long.mp4", 2), ("/v/long.mp4", 1), ("/v/short.mp4", None),
    ]  # fmt: skip
    version = VersionKey.of(kept[0])
    assert ok_clips(kept, version) == {(b"/v/long.mp4", 0), (b"/v/long.mp4", 2), (b"/v/short.mp4", None)}
    assert set(latest_by_video(kept, version)) == {b"/v/short.mp4"}  # a window's caption is not the file's


# Frames of a real long take.


@pytest.fixture(scope="module")
def long_take(tmp_path_factory) -> Path:
    """A 100 s low-resolution H.264 take (a keyframe every second), made by copying the packets of a 10 s one."""
    from captioner.bench.longtakes import write_long_take
    from captioner.demo.scenes.encoding import write_clip

    folder = tmp_path_factory.mktemp("long")
    source = write_clip(folder / "source" / "take.mp4", "city", seconds=10, fps=4, width=64, height=36,
                        keyframe_interval=4)  # fmt: skip
    take = write_long_take(source, folder / "takes" / "walk.mp4", 100)
    (source.parent / "take.mp4").unlink()
    return take


def test_every_frame_lies_inside_its_window(long_take):
    from captioner.frames import FrameDecoder, FrameSpec, plan_clips

    spec = FrameSpec(4, 36, tolerance=0.25)
    with FrameDecoder(spec, workers=2) as decoder:
        planned = plan_clips([long_take], WindowPolicy.parse("fixed:30"), decoder)[long_take]
        assert [c.window for c in planned] == [Window(0, 0, 30), Window(1, 30, 60), Window(2, 60, 100)]
        clips = [decoder.submit(*clip).result() for clip in planned]
        whole = decoder.submit(long_take).result()
    for clip, planned_clip in zip(clips, planned):
        window = planned_clip.window
        assert clip.window == window and clip.facts()["window"] == window.as_json()
        assert len(clip.times) == 4 and all(window.start_s <= t < window.end_s for t in clip.times), clip.times
    assert whole.window is None and whole.facts()["window"] is None
    assert max(whole.times) - min(whole.times) > 60  # the whole file's frames span it


def test_a_window_past_the_end_fails_with_a_reason(long_take):
    from captioner.frames import FrameError, FrameSpec, decode_clip

    with pytest.raises(FrameError, match="window 9 .* holds no frame"):
        decode_clip(long_take, FrameSpec(2, 36), Window(9, 500.0, 510.0))


def test_shots_without_a_shot_detector_stop_the_run_with_a_config_error(long_take):
    import importlib.util

    from captioner.frames import FrameDecoder, FrameSpec, plan_clips

    with pytest.MonkeyPatch.context() as patch:  # as if PySceneDetect were installed
        patch.setattr(importlib.util, "find_spec", lambda name: object())
        shots = WindowPolicy.parse("shots")
    with FrameDecoder(FrameSpec(2, 36)) as decoder, pytest.raises(ConfigError, match="shot boundaries"):
        plan_clips([long_take], shots, decoder)  # the setting's error, not a failed file


def test_frames_command_writes_a_folder_per_window(long_take, tmp_path):
    from captioner.frames import FrameSpec
    from captioner.frames.save import FRAMES_JSON, save_frames

    results = list(save_frames([long_take], tmp_path, FrameSpec(2, 36), windows=WindowPolicy.parse("fixed:40")))
    assert [r["window"] for r in results] == [w.as_json() for w in plan_windows(100, WindowPolicy.parse("fixed:40"))]
    for result in results:
        folder = tmp_path / "walk" / f"w{result['window']['index']:04d}"
        assert result["dir"] == str(folder) and sorted(p.name for p in folder.glob("*.png")) == ["00.png", "01.png"]
        assert json.loads((folder / FRAMES_JSON).read_text(encoding="utf-8"))["window"] == result["window"]
    whole = list(save_frames([long_take], tmp_path / "whole", FrameSpec(2, 36)))
    assert len(whole) == 1 and whole[0]["window"] is None and (tmp_path / "whole" / "walk" / "00.png").is_file()


# The run on the real engine.


class StopAfter(Exception):
    """Raised by a writer to stop a run part-way, as a kill would."""


def test_a_run_writes_one_record_per_window_and_resumes_at_the_next(long_take, tmp_path, settings, engine, monkeypatch):
    from captioner.captioning import caption_folders
    from captioner.captioning import folders as run_module
    from captioner.records import RecordWriter, read_output

    windowed = settings.model_copy(update={"windows": "fixed:25", "frames": 4})  # 4 windows of 25 s
    out = tmp_path / "out"

    class Interrupted(RecordWriter):
        def write(self, record) -> None:  # the third record never reaches the file
            if len(read_output(out)) >= 2:
                raise StopAfter
            super().write(record)

    monkeypatch.setattr(run_module, "RecordWriter", Interrupted)
    with pytest.raises(StopAfter):
        caption_folders([long_take.parent], out, windowed, engine=engine)
    first = {r["window"]["index"]: r for r in read_output(out)}  # whichever two windows decoded first
    assert len(first) == 2
    monkeypatch.undo()

    heard = []
    summary = caption_folders([long_take.parent], out, windowed, engine=engine, on_start=lambda n, s: heard.append(n))
    assert heard == [2]  # only the two windows left
    assert (summary["ok"], summary["windowed"], summary["windows"], summary["skipped"]) == (2, 1, 2, 0)
    records = sorted(read_output(out), key=lambda r: r["window"]["index"])  # exactly one record per window
    assert [r["window"] for r in records] == [w.as_json() for w in plan_windows(100, WindowPolicy.parse("fixed:25"))]
    assert all(first[i] == records[i] for i in first)  # the windows done before were not captioned again
    for record in records:
        window = record["window"]
        assert record["status"] == "ok" and record["caption"]
        assert all(window["start_s"] <= t < window["end_s"] for t in record["frame_times"])
    again = caption_folders([long_take.parent], out, windowed, engine=engine)
    assert (again["ok"], again["skipped"], again["windows"]) == (0, 1, 0)


def test_a_whole_file_record_counts_for_a_file_the_policy_does_not_window(long_take, tmp_path, plan):
    from captioner.captioning.windowed import pending_clips

    whole = json.loads(plan.made().stamp(long_take, status="ok", caption="길", error=None).to_json())
    assert pending_clips({long_take: [Clip(long_take)]}, [whole], plan) == {}
    windows = [Clip(long_take, w) for w in plan_windows(100, FIXED_10)]
    assert list(pending_clips({long_take: windows}, [whole], plan)) == windows  # windowed: each window is new
    first = json.loads(
        plan.made().stamp(long_take, status="ok", caption="창", error=None, window=windows[0].window.as_json()).to_json()
    )
    assert list(pending_clips({long_take: windows}, [whole, first], plan)) == windows[1:]
    other_length = [Clip(long_take, w) for w in plan_windows(100, WindowPolicy.parse("fixed:20"))]
    assert list(pending_clips({long_take: other_length}, [first], plan)) == other_length  # window 0 is 0-20 s now


# The command line.


def test_run_refuses_a_bad_windows_value_before_any_work(home, long_take, tmp_path):
    from typer.testing import CliRunner

    from captioner.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(long_take.parent), "--windows", "fixed:0", "--out", str(out)])
    assert result.exit_code == 2 and "--windows 'fixed:0'" in result.stderr, result.stderr
    assert not out.exists()


def test_frames_command_with_windows_prints_a_line_per_window(long_take, tmp_path):
    from typer.testing import CliRunner

    from captioner.cli import app

    args = ["frames", str(long_take), "--windows", "fixed:50", "--frames", "2", "--frame-size", "36", "-o", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["window"] for line in lines] == [Window(0, 0, 50).as_json(), Window(1, 50, 100).as_json()]
    assert sorted(p.name for p in (tmp_path / "walk").iterdir()) == ["w0000", "w0001"]
