"""Footage folders as people have them: one run captions every real clip from the right frames.

The folder (tests/fieldclips.py) holds 50-odd kinds of file from phones, cameras, recorders,
broadcast and legacy formats, with odd names; every frame carries its own index, so a test can
tell which source frame a decoder returned and that it is upright at display aspect.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.frames import DEFAULT_TOLERANCE, decode_size
from captioner.records import read_records
from captioner.sources import record_path, video_id
from tests.fieldclips import FieldClip, check_upright, read_label, write_field_folder

CLI = [sys.executable, "-m", "captioner.cli"]
FRAMES = 8
SHORT_SIDE = 64  # the demo checkpoint's input size
DECODERS = ("decord", "pyav", "pyav-keyframes", "pyav-keyframes+decord")


def captioner(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> tuple[Path, list[FieldClip]]:
    """The field folder, plus what a user's folder also has: a cut copy with brackets in its name
    (decoder texts quote the name in brackets) and a symlink back up the tree."""
    folder = tmp_path_factory.mktemp("field") / "footage"
    clips = write_field_folder(folder)
    source = next(c for c in clips if c.kind == "h264_mp4").path
    cut = folder / "bad" / "[cut] 부산 [60%].mp4"
    cut.write_bytes(source.read_bytes()[: int(source.stat().st_size * 0.6)])
    cut_reason = r"file ends early \(cut at about \d+%"
    clips.append(FieldClip(path=cut, kind="bracketed_cut", expect="failed", reason=cut_reason))
    os.symlink(folder, folder / "timing" / "loop")  # followed once, never in circles
    return folder, clips


def _ok(clips: list[FieldClip]) -> list[FieldClip]:
    return [clip for clip in clips if clip.expect == "ok"]


def _targets(clip: FieldClip) -> tuple[np.ndarray, float]:
    """Where the frame stage must aim: the centres of FRAMES equal segments of the presented clip."""
    times = np.array([t for t, _ in clip.presented])
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.04
    segment = (times[-1] + step) / FRAMES
    return (np.arange(FRAMES) + 0.5) * segment, segment


def _label_at(clip: FieldClip, time: float) -> int:
    """The label of the presented frame shown at `time` (the frame stage reports times to 1 ms)."""
    seconds, label = min(clip.presented, key=lambda p: abs(p[0] - time))
    assert abs(seconds - time) < 2e-3, f"{clip.kind}: no presented frame at {time} s"
    return label


def _check_frames(clip: FieldClip, facts: dict, tolerance: float) -> None:
    """The PNGs of one clip: upright, at display aspect, the right source frames for their times."""
    folder = Path(facts["dir"])
    width, height = decode_size(*clip.display_size, SHORT_SIDE)
    times = facts["frame_times"]
    assert len(times) == FRAMES and facts["display_size"] == list(clip.display_size), (clip.kind, facts)
    targets, segment = _targets(clip)
    presented = np.array([t for t, _ in clip.presented])
    for i, time in enumerate(times):
        frame = np.asarray(Image.open(folder / f"{i:02d}.png").convert("RGB"))
        assert frame.shape == (height, width, 3), (clip.kind, frame.shape)
        assert check_upright(frame) is None, (clip.kind, i, check_upright(frame))
        assert read_label(frame) == _label_at(clip, time), (clip.kind, i, time)
        nearest = presented[np.argmin(np.abs(presented - targets[i]))]
        # A frame within the tolerance of its target, or the frame nearest the target.
        assert abs(time - targets[i]) <= tolerance * segment + 2e-3 or abs(time - nearest) < 2e-3, (clip.kind, i)
    if len(clip.presented) >= FRAMES:
        assert len(set(times)) == FRAMES, (clip.kind, times)  # never the same frame twice
    if tolerance == 0:  # exact: no frame further from its target than one frame interval
        assert facts["frame_shift_max"] <= float(np.max(np.diff(presented), initial=0.04)) / segment + 0.01


@pytest.mark.parametrize("tolerance", [DEFAULT_TOLERANCE, 0.0])
def test_frames_command_returns_the_right_frames_upright_at_display_aspect(home, field, tmp_path, tolerance):
    folder, clips = field
    ok = _ok(clips)
    out = tmp_path / "frames"
    result = captioner(
        "frames", *[clip.path for clip in ok], "--out", out, "--frames", FRAMES, "--tier", "cpu",
        "--keyframe-tolerance", tolerance,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["video"] for line in lines] == [video_id(clip.path) for clip in ok]
    for clip, facts in zip(ok, lines):
        _check_frames(clip, facts, tolerance)
        assert json.loads((Path(facts["dir"]) / "frames.json").read_text(encoding="utf-8")) == facts
    by_kind = {clip.kind: facts for clip, facts in zip(ok, lines)}
    assert by_kind["rot90_mp4"]["rotation"] == 90 and "rotation 90 applied" in by_kind["rot90_mp4"]["notes"]
    assert any("sample aspect 4:3" in note for note in by_kind["hdv_sar43_mp4"]["notes"])
    assert by_kind["av1_mp4"]["decoder"] in ("pyav", "pyav-keyframes")  # decord 0.6 cannot open AV1
    assert by_kind["h264_mp4"]["decoder"] in DECODERS
    # Camera-style GOP (a keyframe every 0.5 s): every target with a keyframe within the tolerance
    # gets that keyframe, and no other target does.
    camera = next(clip for clip in ok if clip.kind == "camera_keyint_mp4")
    targets, segment = _targets(camera)
    keyframes = np.arange(0, 3.0, camera.keyframe_interval / 10)
    times = np.array(by_kind[camera.kind]["frame_times"])
    near = np.abs(keyframes[None, :] - targets[:, None]).min(axis=1) <= tolerance * segment
    on_keyframe = np.abs(keyframes[None, :] - times[:, None]).min(axis=1) < 1e-3
    assert near.sum() >= (4 if tolerance else 0) and list(on_keyframe[near]) == [True] * near.sum()


@pytest.fixture(scope="module")
def field_run(home, field, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """One `captioner run` over the whole field folder, and a second (resuming) one: the output folder and both results."""
    folder, _ = field
    out = tmp_path_factory.mktemp("field-run") / "out"
    args = ["run", folder, "--out", out, "--adapter", "demo", "--tier", "cpu", "--sampling", "deterministic"]
    # The second run also says files are settled (`--settle-seconds 0`): no "still copying" warning then.
    return out, captioner(*args), captioner(*args, "--settle-seconds", "0")


def test_one_run_captions_every_real_clip_and_fails_bad_files_alone(field, field_run):
    folder, clips = field
    out, result, again = field_run
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # stdout carries only the summary, even when clips fail
    ok = _ok(clips)
    failed = [clip for clip in clips if clip.expect == "failed"]
    ignored = [clip for clip in clips if clip.expect == "ignored"]
    assert (summary["ok"], summary["failed"], summary["ignored"]) == (len(ok), len(failed), len(ignored))
    assert (out / "summary.json").is_file()
    # Files written moments ago may still be copying: `run` captions them, and says so.
    assert "may still be copying" in result.stderr

    records = {record_path(record): record for record in read_records(out / "captions.jsonl")}
    assert len(records) == len(ok) + len(failed)  # the symlinked loop added no second copy
    for clip in ok:
        record = records[clip.path]
        assert record["status"] == "ok" and record["caption"], (clip.kind, record["error"])
        assert len(record["frame_times"]) == FRAMES and record["decoder"] in DECODERS
    for clip in failed:
        record = records[clip.path]
        assert record["status"] == "failed" and re.search(clip.reason, record["error"]), (clip.kind, record["error"])
        assert video_id(clip.path) in result.stderr  # named on stderr as it fails
    for clip in ignored:
        assert clip.path not in records
    cp949 = next(clip for clip in clips if clip.kind == "name_cp949")
    assert records[cp949.path]["video_raw"] and "\\x" in records[cp949.path]["video"]
    text = (out / "captions.jsonl").read_bytes().decode("utf-8")  # valid UTF-8 whatever the names
    assert "\\ud" not in text

    # The second run resumes: nothing good captioned twice, bad files tried again.
    assert again.returncode == 0, again.stderr[-3000:]
    assert "may still be copying" not in again.stderr  # --settle-seconds 0: no such warning
    resumed = json.loads(again.stdout)
    assert (resumed["skipped"], resumed["ok"], resumed["failed"]) == (len(ok), 0, len(failed))
    piped = subprocess.run([sys.executable, "-m", "json.tool"], input=again.stdout, capture_output=True, text=True)
    assert piped.returncode == 0


def test_report_matches_odd_names_and_shows_their_frames(field, field_run, tmp_path):
    """NFD and CP949 names flow into the evaluation report: matched to references, frames shown."""
    folder, clips = field
    out, result, _ = field_run
    chosen = {clip.kind: clip for clip in clips if clip.kind in ("name_nfd", "name_cp949", "name_brackets")}
    assert result.returncode == 0, result.stderr[-3000:]
    # References name the NFD file in NFC (as most tools write them); the CP949 clip has none,
    # and stands in the report as a clip without references.
    refs = tmp_path / "refs.jsonl"
    named = [chosen["name_nfd"], chosen["name_brackets"]]
    lines = [
        {"video": unicodedata.normalize("NFC", clip.path.name), "references": ["바다 위로 해가 진다."]} for clip in named
    ]
    refs.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    report = tmp_path / "report"
    result = captioner("eval", out / "captions.jsonl", "--refs", refs, "--out", report)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["counts"]["scored"] == len(named)
    html = (report / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/jpeg;base64,") >= len(named)  # every scored clip's frame strip decoded
    assert video_id(chosen["name_cp949"].path.name) in html
