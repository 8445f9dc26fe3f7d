"""The `captioner` command as a user runs it: exit codes, messages, and a run killed mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from captioner.outputs import read_records
from captioner.synth import write_clips

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
        (["{clips}", "--set", "max_num_seq=4"], "unknown profile field"),
        (["{clips}", "--tier", "t4"], "the t4 profile expects an AWQ-quantized checkpoint, this one is not quantized"),
    ],
)
def test_bad_arguments_stop_with_one_clear_message(home, clip_dir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    fill = lambda s: s.format(tmp=tmp_path, clips=clip_dir)  # noqa: E731
    result = captioner("run", "--tier", "cpu", *map(fill, args), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert fill(message) in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


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
