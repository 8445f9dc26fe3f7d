"""`captioner bench` runs every measurement and writes consistent figures (speed is not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from captioner.demo.scenes import write_clips

KEYS = [
    "videos_per_s", "output_tokens_per_s", "decode_only_videos_per_s", "engine_only_videos_per_s",
    "pipeline_efficiency", "prefix_cache_hit_ratio", "prefix_cache_speedup", "naive_videos_per_s",
    "speedup_vs_naive", "decode_resize_speedup", "rss_growth", "settings",
    "decode_cpu_s_per_clip", "keyframe_decode_speedup", "frame_shift_max", "decode_cores_per_engine", "sets",
    "concurrency",
]
TOLERANCE = 0.25  # the default keyframe tolerance, a share of a segment


@pytest.fixture(scope="module")
def run(home, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict[str, Any], Path]:
    """One tiny bench for every test here: the printed output, the JSON and the clips folder."""
    tmp = tmp_path_factory.mktemp("bench")
    clips = tmp / "clips"
    # Own clips (taken as they are): 4 s at 12 fps and 8 frames put every target on an odd frame,
    # between two keyframes (one every 2 frames) and within the tolerance of both: the default
    # decodes keyframes alone, exact frames need PyAV from the keyframe before them.
    write_clips(clips, 3, seconds=4, fps=12, width=320, height=180, keyframe_interval=2)
    out = tmp / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "bench", "--out", str(out), "--adapter", "demo", "--tier", "cpu",
         "--clips", "3", "--naive-clips", "1", "--memory-clips", "4", "--clips-dir", str(clips),
         "--hour-lengths", "none"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(out.read_text(encoding="utf-8")), clips


def test_bench_writes_every_figure(run):
    result, bench, clips = run
    assert all(key in bench for key in KEYS), set(KEYS) - set(bench)
    assert [c["file"] for c in bench["detail"]["clips"]] == sorted(p.name for p in clips.glob("*.mp4"))
    # Internally consistent: the derived figures are what their definitions say.
    slower = min(bench["decode_only_videos_per_s"], bench["engine_only_videos_per_s"])
    assert bench["pipeline_efficiency"] == pytest.approx(bench["videos_per_s"] / slower, rel=1e-3)
    assert bench["speedup_vs_naive"] == pytest.approx(bench["videos_per_s"] / bench["naive_videos_per_s"], rel=1e-2)
    e2e, first = bench["detail"]["end_to_end"], bench["detail"]["first_pass"]
    assert first["ok"] == 3 and e2e["ok"] == 4 and first["failed"] == e2e["failed"] == 0
    assert bench["detail"]["naive"]["videos"] == 1 and bench["detail"]["naive"]["output_tokens"] >= 50
    # Every clip reused the warmed system-prompt blocks, and no clip was served whole from an earlier pass.
    assert first["cached_tokens"] == 3 * first["shareable_prefix_tokens_per_clip"] > 0
    assert bench["settings"]["profile"]["name"] == "cpu" and bench["settings"]["sampling"]["temperature"] == 0
    assert set(bench["targets"]["met"]) == {"pipeline_efficiency", "speedup_vs_naive", "prefix_cache_hit_ratio",
                                            "rss_growth", "keyframe_decode_speedup", "frame_shift_max",
                                            "speedup_vs_naive_camera"}
    naive = bench["detail"]["naive"]
    assert bench["engine_speedup_vs_naive_generate"] == pytest.approx(
        bench["engine_only_videos_per_s"] * naive["generate_s"] / naive["videos"], rel=1e-2
    )
    # Clips in flight: vLLM's KV cache agrees with the computed one; the long run's batches stay within max_num_seqs.
    flight = bench["concurrency"]
    assert flight["agree"] is True and flight["vllm_clips_fit"] >= flight["max_num_seqs"] == 16
    assert 1 <= flight["batch_max"] <= flight["batch_size"] == bench["settings"]["profile"]["batch_size"]
    assert "end to end" in result.stdout and "clips in flight" in result.stdout  # the printed table
    assert "keyframe speedup, own footage" in result.stdout


def test_bench_frame_stage_both_ways(run):
    """Default tolerance and exact frames, per set and at the top level, consistent with each other."""
    _, bench, _ = run
    assert bench["settings"]["keyframe_tolerance"] == TOLERANCE
    # Own footage is one set, the headline one.
    assert bench["headline_set"] == "own" and set(bench["sets"]) == {"own"}
    own = bench["sets"]["own"]
    for key in ("decode_cpu_s_per_clip", "keyframe_decode_speedup", "frame_shift_max", "decode_cores_per_engine",
                "decode_resize_speedup"):
        assert bench[key] == own[key]
    assert bench["decode_only_videos_per_s"] == own["decode_only_videos_per_s"]["default"] > 0
    assert own["decode_only_videos_per_s"]["exact"] > 0
    cpu = bench["decode_cpu_s_per_clip"]
    assert cpu["default"] > 0 and cpu["exact"] > 0
    assert bench["keyframe_decode_speedup"] == pytest.approx(cpu["exact"] / cpu["default"], rel=1e-2)
    # Cores the frame stage needs to keep the engine busy: CPU s a clip x the engine's clips a second.
    assert bench["decode_cores_per_engine"] == pytest.approx(cpu["default"] * bench["engine_only_videos_per_s"],
                                                             rel=1e-2, abs=2e-4)
    # Keyframes within the tolerance served every target; the exact frames lie between keyframes.
    assert own["decoders"] == {"default": {"pyav-keyframes": 3}, "exact": {"pyav": 3}}
    # decord, measured on the same frames: it reads the exact ones; the keyframes are the same reader's.
    readers = own["reader_cpu_s_per_clip"]
    assert readers["exact"]["decoders_decord"] == {"decord": 3} and readers["exact"]["clips_between_keyframes"] == 3
    assert readers["default"]["clips_between_keyframes"] == 0 and readers["exact"]["pyav"] == cpu["exact"]
    assert bench["per_hour"] is None
    per_clip = own["per_clip"]
    assert 0 < bench["frame_shift_max"] == max(c["shift_max"] for c in per_clip) <= TOLERANCE
    assert sum(c["cpu_s"]["default"] for c in per_clip) / 3 == pytest.approx(cpu["default"], abs=1e-3)
    assert all(c["keyframe_interval_s"] == pytest.approx(2 / 12, abs=1e-3) for c in per_clip)
    assert bench["targets"]["met"]["frame_shift_max"]


def test_bench_frame_stage_per_hour(home, tmp_path):
    """`--frame-stage-only`: the frame stage and its cost per hour of footage, no engine; tiny takes."""
    clips = tmp_path / "clips"
    write_clips(clips, 2, seconds=4, fps=12, width=320, height=180, keyframe_interval=6)
    out = tmp_path / "frames.json"
    result = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "bench", "--out", str(out), "--adapter", "demo", "--tier", "cpu",
         "--clips", "2", "--clips-dir", str(clips), "--frame-stage-only", "--hour-lengths", "4s,100s",
         "--hour-windows", "2"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads(out.read_text(encoding="utf-8"))
    assert bench["frame_stage_only"] and "videos_per_s" not in bench and set(bench["sets"]) == {"own"}
    hours = bench["per_hour"]
    assert hours["windows_policy"] == "auto" and hours["window_auto_max_s"] == 60 and hours["window_seconds"] == 30
    takes = hours["styles"]["own"]
    assert set(takes) == {"4s", "100s"}
    # Auto: 4 s is one caption; 100 s gets 30 s windows (a last one under half a window is merged).
    assert takes["4s"]["windows"] is None and takes["4s"]["windows_measured"] == 1
    assert takes["100s"]["windows"] == 3 and takes["100s"]["windows_measured"] == 2
    for take in takes.values():
        hours_of = take["seconds"] / 3600
        assert take["cpu_s"] > 0
        assert take["cpu_s_per_hour"] == pytest.approx(take["cpu_s"] / hours_of, rel=1e-2, abs=0.1)
        assert take["bytes_read"] > 0
        assert take["bytes_read_per_hour"] == pytest.approx(take["bytes_read"] / hours_of, rel=1e-3)
        assert take["bytes_read_share"] == pytest.approx(take["bytes_read"] / take["file_bytes"], rel=1e-3)
        assert 0 <= take["frame_shift_max"] <= TOLERANCE
    assert takes["100s"]["seconds"] == pytest.approx(100, abs=1)
    # Targets of the frame stage only; no 2-hour take, so no bytes target.
    assert set(bench["targets"]["met"]) == {"keyframe_decode_speedup", "frame_shift_max"}
    assert "per hour, own footage 100s" in result.stdout and "3 windows (2 measured)" in result.stdout
