"""What the service tests share: a Redis server of their own, `captioner worker` processes, demo clips.

Used by `test_service` (two workers on the demo adapter) and `test_service_adapters` (a worker
comparing adapters); each module starts its own Redis and workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from captioner.bench import fleet
from captioner.bench.fleet import free_port, queued  # noqa: F401 - the service tests import them from here
from captioner.bench.lifetime import die_with_parent
from captioner.demo.scenes import write_clips
from captioner.records import dataset_files
from captioner.service import JobStore, status
from captioner.sources import video_id
from tests.compose import captioner_args, with_option

CLI = [sys.executable, "-m", "captioner.cli"]
HOST = socket.gethostname()


class RedisServer(fleet.RedisServer):
    """The benchmarks' redis-server (`captioner.bench.fleet`), persisting to an append-only file so it
    survives a restart; built stopped (`start()`), as the fixtures expect."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, aof=True)


class Worker:
    """A `captioner worker` process (its own process group, so its decoder processes die with it; it dies
    with the test process)."""

    def __init__(self, name: str, env: dict[str, str], logs: Path, metrics_port: int) -> None:
        self.name = f"{name}@{HOST}"
        self.log = logs / f"{name}.log"
        self.metrics_port = metrics_port
        # The GPU worker's command in docker/compose.yaml, with this worker's name.
        args = with_option(captioner_args("worker-gpu0"), "--name", f"{name}@%h")
        self.proc = subprocess.Popen(
            [*CLI, *args],
            env=dict(env, CAPTIONER_METRICS_PORT=str(metrics_port)),
            stdout=self.log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent(),  # a test run killed from outside leaves no worker behind
        )  # fmt: skip

    def metrics(self) -> dict[str, float]:
        """Scrape the worker's /metrics: {'name{label="v"}': value}."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def wait_ready(self, timeout: float = 240) -> None:
        """Wait until the worker logs that it is ready; fail with its log when it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while f"{self.name} ready." not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"worker {self.name} not ready:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the worker process alone, as the OOM killer would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGKILL the worker's whole process group (its decoder processes too)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)


def wait_job(store: JobStore, job_id: str, timeout: float = 180, states=("done", "cancelled", "failed")) -> dict:
    """The job's status once it is in one of `states`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        current = status(store, job_id)
        if current["state"] in states:
            return current
        assert time.monotonic() < deadline, f"job still {current}"
        time.sleep(0.3)


def one_record_each(out: Path, videos: list[Path]) -> dict[str, dict]:
    """Assert every line of the output folder's files is a whole JSON record and each video has exactly one."""
    lines = [line for path in dataset_files(out) for line in path.read_text(encoding="utf-8").splitlines()]
    records = [json.loads(line) for line in lines]  # a corrupt (interleaved) line fails here
    counts = Counter(r["video"] for r in records)
    assert counts == Counter(video_id(v) for v in videos), counts
    return {r["video"]: r for r in records}


def worker_environment(home: Path, server: RedisServer, root: Path, **settings: str) -> dict[str, str]:
    """This process's environment without its CAPTIONER_* settings, with the workers' (`CAPTIONER_` + key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    env.update(CAPTIONER_HOME=str(home), CAPTIONER_BROKER_URL=server.url, CAPTIONER_ALLOWED_ROOTS=str(root))
    env.update({f"CAPTIONER_{name.upper()}": value for name, value in settings.items()})
    return env


def clips(folder: Path, n: int) -> list[Path]:
    """`n` small demo clips in `folder`, dated as settled."""
    return [settled(clip) for clip in sorted(write_clips(folder, n, seconds=1, fps=10, width=128, height=72))]


def settled(path: Path) -> Path:
    """`path` as if copied in ten minutes ago: queued jobs leave files younger than settle_seconds."""
    old = time.time() - 600
    os.utime(path, (old, old))
    return path
