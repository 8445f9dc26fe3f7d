"""`captioner bench` runs every measurement and writes consistent figures (speed is not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from captioner.synth import write_clips

KEYS = [
    "videos_per_s", "output_tokens_per_s", "decode_only_videos_per_s", "engine_only_videos_per_s",
    "pipeline_efficiency", "prefix_cache_hit_ratio", "prefix_cache_speedup", "naive_videos_per_s",
    "speedup_vs_naive", "decode_resize_speedup", "rss_growth", "settings",
]


def test_bench_writes_every_figure(home, tmp_path):
    clips = tmp_path / "clips"
    write_clips(clips, 3, seconds=1, fps=10, width=320, height=180)  # own clips: taken as they are
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "bench", "--out", str(out), "--adapter", "demo", "--tier", "cpu",
         "--clips", "3", "--naive-clips", "1", "--memory-clips", "4", "--clips-dir", str(clips)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads(out.read_text(encoding="utf-8"))
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
                                            "rss_growth"}
    naive = bench["detail"]["naive"]
    assert bench["engine_speedup_vs_naive_generate"] == pytest.approx(
        bench["engine_only_videos_per_s"] * naive["generate_s"] / naive["videos"], rel=1e-2
    )
    assert "end to end" in result.stdout and "speedup vs naive" in result.stdout  # the printed table
