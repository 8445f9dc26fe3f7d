"""The processes and files of the service benchmarks (`scale`, `faults`) and the service tests: a
redis-server of its own, worker processes, a job's worth of hard-linked clips, and waiting on a job or on workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import redis

from captioner.bench.lifetime import die_with_parent
from captioner.config import Settings

CLI = [sys.executable, "-m", "captioner.cli"]
STAND_IN_WORKER = [sys.executable, "-m", "captioner.bench.standins", "worker"]  # then NAME [SECONDS_PER_CLIP]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own on a fixed port (nothing else in it, so its memory is the job's).

    `aof`: persist every write to an append-only file, fsynced before the reply, so a SIGKILL and a
    restart (`kill`, `start`) on the same port lose nothing; otherwise nothing is kept. Built
    stopped: `start()` (which returns the server) starts it. The process dies with its starter
    (`die_with_parent`).
    """

    def __init__(self, folder: Path, aof: bool = False) -> None:
        self.folder = folder
        self.aof = aof
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.client = redis.Redis(port=self.port, decode_responses=True)

    def start(self, timeout: float = 60) -> RedisServer:
        """Start the server (from its append-only file, if any) and wait until it answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persist,
             "--dir", str(self.folder)],
            stdout=(self.folder / "redis.log").open("a"), stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent(),
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.ping()  # BusyLoadingError (still reading its file) is a ConnectionError too
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start: see {self.folder}/redis.log")
                time.sleep(0.1)

    def running(self) -> bool:
        """Whether the server process is up."""
        return self.proc is not None and self.proc.poll() is None

    def used(self) -> int:
        """Bytes the server holds now."""
        return int(self.client.info("memory")["used_memory"])

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (with `aof`, what it acknowledged is on disk)."""
        if self.running():
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        """Stop the server (SIGTERM: with `aof` it flushes its file and exits)."""
        if self.running():
            self.proc.terminate()
            self.proc.wait(30)


class WorkerProcesses:
    """Worker processes, each its own process group, dying with their starter (`die_with_parent`).

    `drop_dac_override`: workers of root obey file modes, as a service user would (see `die_with_parent`).
    """

    def __init__(self, env: dict[str, str], logs: Path, drop_dac_override: bool = False) -> None:
        self.env, self.logs = env, logs
        self.drop_dac_override = drop_dac_override
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        """Worker `name`'s log file."""
        return self.logs / f"{name.split('@')[0]}.log"

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start `command` as worker `name`, with `env` over the common environment; its log goes to `logs`."""
        self.commands[name] = (command, env or {})
        self.procs[name] = subprocess.Popen(
            command, env=dict(self.env, **(env or {})), start_new_session=True,
            preexec_fn=die_with_parent(self.drop_dac_override),
            stdout=self.log(name).open("a"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def exited(self) -> dict[str, int]:
        """Workers that exited by themselves (not `kill`ed), with their exit codes; forgotten here."""
        gone = {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}
        for name in gone:
            del self.procs[name]
        return gone

    def restart(self, name: str) -> None:
        """Start worker `name` again with its last command, as a supervisor would after a crash."""
        command, env = self.commands[name]
        self.start(name, command, env)

    def kill(self, name: str) -> None:
        """SIGKILL worker `name` and its process group, as a crash would."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def stop(self) -> None:
        """Kill every worker still running."""
        for name in list(self.procs):
            self.kill(name)


def queued(client: redis.Redis, queue: str = "captioner") -> int:
    """Messages waiting in `queue`, over kombu's per-priority lists (NAME, NAME\x06\x16N)."""
    return sum(client.llen(key) for key in [queue] + [f"{queue}\x06\x16{n}" for n in range(1, 10)])


def wait_alive(client: redis.Redis, count: int, timeout: float = 300) -> None:
    """Wait until `count` workers have a heartbeat in Redis; `RuntimeError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while len(client.keys("captioner:alive:*")) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers not up after {timeout:g} s")
        time.sleep(0.5)


LINKS_PER_COPY = 50_000  # ext4 allows 65,000 links to one file: a copy of the clip per 50,000


def make_links(source: Path, folder: Path, count: int, per_folder: int = 1000) -> float:
    """`count` hard links to copies of `source` under `folder` (`per_folder` a folder); return the seconds."""
    started = time.perf_counter()
    made = len(list(folder.glob("*/*.mp4"))) if folder.exists() else 0
    for index in range(made, count):
        sub = folder / f"{index // per_folder:05d}"
        if index % per_folder == 0 or index == made:
            sub.mkdir(parents=True, exist_ok=True)
        copy = folder.parent / f"{folder.name}-source-{index // LINKS_PER_COPY:03d}.mp4"  # beside, not inside
        if not copy.exists():
            shutil.copy2(source, copy)  # keeps the settled time
        os.link(copy, sub / f"clip_{index:07d}.mp4")
    return time.perf_counter() - started


def source_clip(work: Path) -> Path:
    """The one small clip every link points to (written once in `work`, dated an hour back)."""
    from captioner.demo.scenes import write_clip

    clip = work / "source.mp4"
    if not clip.exists():
        write_clip(clip, "city", seconds=1, fps=10, width=128, height=72)
    old = time.time() - 3600  # long settled: every link shares this inode's time
    os.utime(clip, (old, old))
    return clip


def wait_done(
    store: Any,
    job_id: str,
    timeout: float,
    latencies: list[float] | None = None,
    on_poll: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Poll `status` every second until the job is finished; each call's seconds go to `latencies`."""
    from captioner.service import status

    deadline = time.monotonic() + timeout
    while True:
        started = time.perf_counter()
        current = status(store, job_id)
        if latencies is not None:
            latencies.append(time.perf_counter() - started)
        on_poll()
        if current["state"] in ("done", "cancelled", "failed"):
            return current
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not done after {timeout:g} s: {current}")
        time.sleep(1.0)


def worker_env(settings: Settings, url: str, work: Path, queue: str) -> dict[str, str]:
    """The environment of a worker process: this one's, with `settings` and the benchmark's Redis and queue."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    env.update(
        CAPTIONER_HOME=str(settings.home), CAPTIONER_BROKER_URL=url, CAPTIONER_ALLOWED_ROOTS=str(work),
        CAPTIONER_TIER=settings.tier, CAPTIONER_QUEUE=queue, CAPTIONER_SETTLE_SECONDS="0",
        CAPTIONER_MODEL=settings.model, CAPTIONER_ADAPTER=settings.adapter or "none",
    )  # fmt: skip
    return env
