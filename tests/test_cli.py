"""The `captioner` command as a user runs it: exit codes, messages, and a run killed mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from captioner.demo.scenes import write_clips
from captioner.records import read_records

CLI = [sys.executable, "-m", "captioner.cli"]


def captioner(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.parametrize(
    "args,message",
    [
        (["{tmp}/missing"], "{tmp}/missing: folder does not exist"),
        (["{tmp}/empty"], "{tmp}/empty: no videos"),
        (["{clips}", "--model", "{tmp}/no-model"], "{tmp}/no-model: model folder does not exist"),
        (["{clips}", "--adapter", "{tmp}/no-adapter"], "{tmp}/no-adapter: adapter folder does not exist"),
        (["{clips}", "--frames", "1000"], "use at most"),
        (["{clips}", "--tier", "v100"], "tier"),
        (["{clips}", "--tier", "a100"], "a100-40 or a100-80"),
        # 100 KiB of KV cache holds no clip: refused before any work, with what a clip needs.
        (["{clips}", "--set", "kv_cache_gib=0.0001"], "one clip of 8 frames needs"),
        (["{clips}", "--set", "max_num_seq=4"], "unknown profile field"),
        (["{clips}", "--tier", "t4"], "the t4 profile expects an AWQ-quantized checkpoint, this one is not quantized"),
    ],
)
def test_bad_arguments_stop_with_one_clear_message(home, clip_dir, tmp_path, args, message):
    # In this process, through the same command-line code (a process per case costs 5 s of imports);
    # `test_a_bad_argument_exits_2_from_a_real_process` covers the process's exit status.
    from typer.testing import CliRunner

    from captioner.cli import app

    (tmp_path / "empty").mkdir()
    fill = lambda s: s.format(tmp=tmp_path, clips=clip_dir)  # noqa: E731
    result = CliRunner().invoke(app, ["run", "--tier", "cpu", *map(fill, args), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert fill(message) in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_a_bad_argument_exits_2_from_a_real_process(home, clip_dir, tmp_path):
    result = captioner("run", str(clip_dir), "--tier", "cpu", "--frames", "1000", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "use at most" in result.stderr and not result.stdout
    assert not (tmp_path / "out").exists()


def test_killed_run_resumes_without_losing_or_duplicating(home, tmp_path):
    videos = tmp_path / "videos"
    clips = write_clips(videos, 10, seconds=1, fps=10, width=128, height=72)
    out = tmp_path / "out"
    args = ["run", str(videos), "--out", str(out), "--adapter", "demo", "--tier", "cpu", "--set", "batch_size=2"]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    captions = out / "captions.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if captions.exists() and len(read_records(captions)) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()[1][-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = read_records(captions)
    assert 3 <= len(written) < len(clips)
    assert all(line.strip() and json.loads(line) for line in captions.read_text(encoding="utf-8").splitlines())

    result = captioner(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["skipped"] == len(written) and summary["ok"] == len(clips) - len(written)
    records = read_records(captions)
    assert Counter(r["video"] for r in records) == Counter(str(c.resolve()) for c in clips)
    assert all(r["status"] == "ok" for r in records)


SEVEN_B = Path(__file__).parents[1] / "captioner" / "data" / "llava-next-video-7b-config.json"


def test_plan_prints_frames_against_clips_in_flight(home):
    result = captioner("plan", "--tier", "cpu", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    (cpu,) = json.loads(result.stdout)["tiers"]
    assert cpu["tier"] == "cpu" and cpu["sizing"]["kv_source"] == "kv_cache_gib" and cpu["sizing"]["frames"] == 8
    rows = cpu["tradeoff"]
    assert [r["frames"] for r in rows] == [4, 6, 8, 12, 16]
    assert [r["tokens_per_clip"] for r in rows] == sorted(r["tokens_per_clip"] for r in rows)
    fits = [r["clips_fit"] for r in rows]
    assert fits == sorted(fits, reverse=True) and fits[0] > fits[-1] > 16  # the CPU tier is capped, not full

    table = captioner("plan", "--model-config", str(SEVEN_B), "--text-tokens", "200", "--tier", "l4")
    assert table.returncode == 0, table.stderr[-3000:]
    assert "frames vs clips in flight (l4)" in table.stdout and "16 <" in table.stdout
    assert "22.17 GiB (tier) x 0.9 - weights 4.23" in table.stdout

    every = captioner("plan", "--model-config", str(SEVEN_B), "--text-tokens", "200", "--all-tiers", "--json")
    assert every.returncode == 0, every.stderr[-3000:]
    fit = {t["tier"]: t["sizing"]["clips_fit"] for t in json.loads(every.stdout)["tiers"]}
    assert set(fit) == {"cpu", "t4", "l4", "a100-40", "a100-80", "h100"}
    assert fit["a100-80"] > 2 * fit["a100-40"] > 2

    untokenized = captioner("plan", "--model-config", str(SEVEN_B))
    assert untokenized.returncode == 2 and "give --text-tokens" in untokenized.stderr
