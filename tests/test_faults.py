"""Faults against the service: children die with whoever started them, and a job survives killed
workers, a killed Redis, a read-only or full output folder and hostile messages.

The fault benchmark itself is `captioner.bench.faults` (`captioner bench-service --faults`); here it
runs small, with one fault of each kind at fixed moments, and its end-state invariants are asserted.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any, Callable

import psutil
import pytest
import redis

from captioner.bench.fault_checks import unmount
from captioner.bench.faults import KINDS, Fault, run_faults
from captioner.bench.lifetime import parent_death_supported

pytestmark = pytest.mark.skipif(not parent_death_supported(), reason="Linux only (prctl)")


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie no one reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(condition: Callable[[], Any], timeout: float, what: str, why: Callable[[], str] = str) -> Any:
    """Poll `condition` until it returns something true; fail naming `what` (and `why()`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout:g} s {why()}"
        time.sleep(0.2)
    return value


def fleet_of(driver: psutil.Process) -> tuple[psutil.Process, psutil.Process] | None:
    """The driver's redis-server and stand-in worker, once both are started.

    Both rename themselves: redis-server to "redis-server 127.0.0.1:PORT", Celery to "[celeryd: NAME...]".
    """
    children = driver.children(recursive=True)
    servers = [p for p in children if p.name() == "redis-server"]
    workers = [p for p in children if "fault-w1@" in " ".join(p.cmdline())]
    return (servers[0], workers[0]) if servers and workers else None


def beating(server: psutil.Process) -> bool:
    """Whether a worker's heartbeat is in the redis-server's keys."""
    port = int(" ".join(server.cmdline()).split()[1].rpartition(":")[2])
    try:
        return bool(redis.Redis(port=port).keys("captioner:alive:*"))
    except redis.ConnectionError:
        return False


def test_a_killed_benchmark_leaves_no_worker_or_redis_behind(home, tmp_path):
    work = tmp_path / "work"
    driver = subprocess.Popen(
        [sys.executable, "-m", "captioner.cli", "bench-service", "--faults", "--videos", "40", "--chunk-size", "5",
         "--workers", "1", "--seconds-per-clip", "1", "--work", str(work), "--out", str(tmp_path / "r.json")],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "driver.log").open("w"),
    )  # fmt: skip
    started: list[psutil.Process] = []
    try:
        log = tmp_path / "driver.log"
        server, worker = wait_for(lambda: fleet_of(psutil.Process(driver.pid)), 120, "redis-server and worker",
                                  lambda: f"(driver's log: {log.read_text()[-2000:]})")  # fmt: skip
        started = [server, worker]
        wait_for(lambda: beating(server), 180, "the worker's heartbeat")
        driver.send_signal(signal.SIGKILL)  # no cleanup of its own runs
        driver.wait(30)
        # A bounded wait for the kernel's signal to be delivered, not a timing claim.
        wait_for(lambda: all(gone(p.pid) for p in started), 10, "redis-server and worker gone after the driver")
    finally:
        for process in started:
            if not gone(process.pid):
                process.kill()
        if driver.poll() is None:
            driver.kill()
        unmount(work / "faults" / "root" / "out")


def test_a_job_survives_one_fault_of_each_kind(settings, tmp_path):
    schedule = [
        Fault(3, "hostile", 0), Fault(4, "worker_kill", 2), Fault(9, "read_only", 3), Fault(15, "redis_kill", 2),
        Fault(21, "disk_full", 3),
    ]  # fmt: skip
    result = run_faults(settings, tmp_path / "faults", videos=60, chunk=5, workers=2, seconds_per_clip=0.5,
                        seed=0, schedule=schedule)  # fmt: skip
    assert result["not_injected"] == []
    mounted = not result["disk_full"].startswith("skipped")
    assert result["faults_by_kind"] == {kind: int(kind != "disk_full" or mounted) for kind in KINDS}
    end = result["end_state"]
    failed = {name: end for name, holds in end["invariants"].items() if not holds}
    assert not failed, f"invariants broken: {sorted(failed)}; job {result['job']}; end state {end}"
    assert result["job"]["state"] == "done" and end["records_of_other_videos"] == []
    assert not (tmp_path / "faults" / "victim").exists()


def test_a_redis_restart_while_chunks_wait_to_retry_loses_nothing(settings, tmp_path):
    """Celery/kombu can end a worker that holds chunks waiting out a retry when Redis dies ("Unrecoverable
    error: AttributeError ... hostname", with status 0). Such a worker must exit non-zero, so that a
    supervisor starts it again (the benchmark does, as `restart: unless-stopped` would), and the job
    still ends with every video captioned once."""
    # Each read-only spell makes the chunks in flight fail and wait 2, 4, 8 s to retry; Redis dies in that wait.
    schedule = [Fault(at, kind, hold) for start in (3, 17) for at, kind, hold in
                [(start, "read_only", 5), (start + 5.5, "redis_kill", 3)]]  # fmt: skip
    result = run_faults(settings, tmp_path / "faults", videos=60, chunk=5, workers=2, seconds_per_clip=0.3,
                        seed=0, schedule=schedule)  # fmt: skip
    assert result["end_state"]["invariants"] == dict.fromkeys(result["end_state"]["invariants"], True)
    assert all(exit["exit_code"] != 0 for exit in result["workers_exited_by_themselves"]), result[
        "workers_exited_by_themselves"
    ]
