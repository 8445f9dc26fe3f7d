"""`captioner bench-service --faults`: one job through the service while faults are injected.

A job of `videos` hard links goes through a redis-server of the benchmark's own (append-only file,
fsynced on every write, so a SIGKILL and restart loses nothing acknowledged) and stand-in worker
processes (`captioner.bench.standins`: the service's real code, a stand-in engine that takes
`seconds_per_clip` a clip, named in the output). At seeded random moments (or a given schedule)
the fault loop, in the main thread (children die with the thread that started them), injects:

- `worker_kill`: SIGKILL a worker, start it again `hold` seconds later (as a supervisor would);
- `redis_kill`: SIGKILL redis-server, start it again on the same port from its file;
- `read_only`: every folder of the output folder `chmod 0555` for `hold` seconds (root's workers
  run without CAP_DAC_OVERRIDE, so they obey it as a service user would);
- `disk_full`: the output folder is a small tmpfs: filled by a filler file for `hold` seconds
  ("skipped: cannot mount" when the benchmark may not mount);
- `hostile`: chunk messages no `submit` would send (`fault_checks.hostile_messages`).

At the end: the invariants of `fault_checks.end_state`, and the seconds from the last fault to
the job's end.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import redis

from captioner.bench.fault_checks import Layout, end_state, hostile_messages, mount_tmpfs, unmount
from captioner.bench.fleet import (
    STAND_IN_WORKER,
    RedisServer,
    WorkerProcesses,
    make_links,
    queued,
    source_clip,
    worker_env,
)
from captioner.bench.lifetime import terminate_as_exit
from captioner.config import Settings

KINDS = ("worker_kill", "redis_kill", "read_only", "disk_full", "hostile")
QUEUE = "faults"
# Worker settings of the run: a killed worker's chunks move on within seconds, and a chunk a killed
# worker had received but not started comes back within a minute (see the README's service section).
WORKER_SETTINGS = {"heartbeat_s": 1, "dead_after_s": 5, "visibility_timeout": 60, "chunks_in_flight": 2}
HOLD_S = (2.0, 6.0)  # how long a fault lasts: shorter than a chunk's retries (2 + 4 + 8 s)


@dataclass(order=True)
class Fault:
    """A fault `at` seconds after the job was submitted, undone `hold` seconds later."""

    at: float
    kind: str
    hold: float = 3.0
    detail: str = ""
    injected_at: float | None = None  # epoch seconds
    cleared_at: float | None = None


def random_schedule(rng: random.Random, kinds: list[str], per_kind: int, window: tuple[float, float]) -> list[Fault]:
    """`per_kind` faults of each kind at uniformly random moments in `window`, each held `HOLD_S` (hostile: 0)."""
    faults = [Fault(round(rng.uniform(*window), 1), kind, round(rng.uniform(*HOLD_S), 1) if kind != "hostile" else 0)
              for kind in kinds for _ in range(per_kind)]  # fmt: skip
    return sorted(faults)


@dataclass
class Rig:
    """What the faults act on: the server, the workers, the output folder, the job."""

    server: RedisServer
    workers: WorkerProcesses
    layout: Layout
    settings: Settings
    rng: random.Random
    mounted: bool
    job_id: str = ""
    chunks: int = 0
    video: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    hostile: list[dict[str, Any]] = field(default_factory=list)
    exits: list[dict[str, Any]] = field(default_factory=list)  # workers that exited by themselves


def blocked(rig: Rig, kind: str, active: list[Fault]) -> bool:
    """Whether a fault of `kind` must wait: one like it (or one it cannot run beside) is still on."""
    on = {fault.kind for fault in active}
    if kind == "worker_kill":
        return not rig.workers.procs  # every worker is down already
    if kind in ("read_only", "disk_full"):
        return bool(on & {"read_only", "disk_full"})  # the filler cannot be written into a read-only folder
    if kind == "hostile":
        return not rig.server.running()
    return kind in on


def inject(rig: Rig, fault: Fault) -> Callable[[], None] | None:
    """Inject `fault`; return what undoes it (None: nothing to undo)."""
    if fault.kind == "worker_kill":
        name = rig.rng.choice(sorted(rig.workers.procs))
        fault.detail = name
        rig.workers.kill(name)
        return lambda: rig.workers.restart(name)
    if fault.kind == "redis_kill":
        rig.server.kill()
        return lambda: rig.server.start()
    if fault.kind == "read_only":
        return read_only(rig.layout.out, fault)
    if fault.kind == "disk_full":
        if not rig.mounted:
            fault.detail = "skipped: cannot mount"
            return None
        return fill(rig.layout.out, fault)
    send_hostile(rig, fault)
    return None


def read_only(out: Path, fault: Fault) -> Callable[[], None]:
    """`chmod 0555` every folder of `out`; return what gives them their modes back."""
    modes = {Path(folder): os.stat(folder).st_mode & 0o7777 for folder, _, _ in os.walk(out)}
    for folder in modes:
        folder.chmod(0o555)
    fault.detail = f"{len(modes)} folders"

    def undo() -> None:
        for folder, mode in modes.items():
            if folder.exists():
                folder.chmod(mode)

    return undo


def fill(out: Path, fault: Fault) -> Callable[[], None]:
    """Fill the file system of `out` with a filler file; return what deletes it."""
    filler = out / ".filler"
    written = 0
    with filler.open("wb", buffering=0) as f:
        for block in (1 << 20, 4096, 1):  # down to the last byte, so nothing at all fits
            data = b"\0" * block
            try:
                while True:
                    written += f.write(data)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    fault.detail = f"filler of {written / 2**20:.1f} MiB"
    return lambda: filler.unlink(missing_ok=True)


def send_hostile(rig: Rig, fault: Fault) -> None:
    """Push one round of hostile chunk messages into the job's queue."""
    from captioner.service.celery_app import CHUNK_TASK, RECOVERED_PRIORITY, app_for

    app = app_for(rig.settings)
    round_ = sum(1 for sent in rig.hostile if sent["case"].startswith("job id"))
    messages = hostile_messages(rig.job_id, rig.chunks, round_, rig.layout, rig.video, rig.options)
    for case, args in messages:
        # Ahead of the job's own chunks, as a resent chunk goes: whoever forges a message picks its priority too.
        app.send_task(CHUNK_TASK, args=args, queue=QUEUE, priority=RECOVERED_PRIORITY)
        rig.hostile.append({"case": case, "args": args})
    fault.detail = f"{len(messages)} messages"


def job_progress(client: redis.Redis, job_id: str) -> tuple[str, int] | None:
    """(state, videos counted) of the job, or None while Redis is away."""
    from captioner.service import JobStore

    try:
        job = client.hgetall(JobStore.key(job_id))
    except redis.RedisError:
        return None
    return job.get("state", "gone"), sum(int(job.get(name, 0)) for name in ("ok", "failed", "skipped"))


class FaultLoop:
    """Faults of a schedule, injected when due and undone `hold` seconds later, from the main thread."""

    def __init__(self, rig: Rig, schedule: list[Fault], log: Callable[..., None]) -> None:
        self.rig, self.log = rig, log
        self.started = time.monotonic()
        self.pending = sorted(schedule)
        self.active: list[tuple[Fault, float, Callable[[], None]]] = []  # (fault, undo when, undo)
        self.done: list[Fault] = []

    def now(self) -> float:
        """Seconds since the loop started."""
        return time.monotonic() - self.started

    def clear(self, everything: bool = False) -> None:
        """Undo the faults whose time is up (`everything`: all that are on)."""
        for entry in [e for e in self.active if everything or e[1] <= self.now()]:
            self.active.remove(entry)
            entry[2]()
            entry[0].cleared_at = time.time()
            self.log(f"{self.now():6.1f} s  {entry[0].kind} cleared")

    def supervise(self) -> None:
        """Start again, at once, a worker that exited by itself (as `restart: unless-stopped` would); note why."""
        for name, code in self.rig.workers.exited().items():
            lines = self.rig.workers.log(name).read_text(errors="replace").splitlines()
            reason = next((line for line in reversed(lines) if "CRITICAL" in line), lines[-1] if lines else "")
            self.rig.exits.append({"worker": name, "at_s": round(self.now(), 1), "exit_code": code, "log": reason})
            self.log(f"{self.now():6.1f} s  worker {name} exited by itself ({code}): {reason}; started again")
            self.rig.workers.restart(name)

    def inject_due(self) -> None:
        """Inject the faults that are due and not blocked by one still on."""
        for fault in [f for f in self.pending if f.at <= self.now()]:
            if blocked(self.rig, fault.kind, [entry[0] for entry in self.active]):
                continue  # tried again on the next turn
            self.pending.remove(fault)
            fault.injected_at = time.time()
            self.active.append((fault, self.now() + fault.hold, inject(self.rig, fault) or (lambda: None)))
            self.done.append(fault)
            self.log(f"{self.now():6.1f} s  {fault.kind} {fault.detail}".rstrip())


def fault_loop(rig: Rig, schedule: list[Fault], stall_s: float, log: Callable[..., None]) -> list[Fault]:
    """Inject `schedule` (seconds from now) until the job is finished, or makes no progress for
    `stall_s` seconds with no fault on; undo whatever is on at the end. Return the faults injected."""
    loop = FaultLoop(rig, schedule, log)
    state, counted, moved = None, -1, time.monotonic()  # the job's state, videos counted, when that last moved
    try:
        while True:
            loop.clear()
            loop.supervise()
            progress = job_progress(rig.server.client, rig.job_id) if rig.server.running() else None
            if progress is not None:
                if progress[1] != counted:
                    moved = time.monotonic()
                state, counted = progress
                if state in ("done", "cancelled", "failed"):
                    break
            if not loop.active and time.monotonic() - moved > stall_s:
                log(f"no progress for {stall_s:g} s: the job is {state} with {counted} videos counted; giving up")
                break
            loop.inject_due()
            time.sleep(0.2)
    finally:
        loop.clear(everything=True)  # a restarted Redis and writable folders, even when the loop fails
    return loop.done


def settle(client: redis.Redis, seconds: float) -> float:
    """Wait up to `seconds` for the service to let go of everything (nothing running or queued)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if not client.hlen("captioner:running") and not queued(client, QUEUE):
                break
        except redis.RedisError:
            pass
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def prepare(layout: Layout, videos: int) -> list[Path]:
    """Fresh folders for a run (a reused `work` keeps only its links); the job's videos."""
    unmount(layout.out)
    for folder in [layout.out, layout.outside_out, layout.base / "victim", *layout.kept]:
        shutil.rmtree(folder, ignore_errors=True)
    make_links(source_clip(layout.base), layout.videos, videos)
    layout.outside.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source_clip(layout.base), layout.outside / "clip.mp4")
    layout.out.mkdir(parents=True)
    return sorted(layout.videos.glob("*/*.mp4"))[:videos]


def run_faults(
    settings: Settings,
    work: Path,
    videos: int = 2000,
    chunk: int = 20,
    workers: int = 3,
    seconds_per_clip: float = 0.3,
    seed: int | None = None,
    kinds: list[str] | None = None,
    per_kind: int = 2,
    schedule: list[Fault] | None = None,
    log: Callable[..., None] = print,
) -> dict[str, Any]:
    """The fault benchmark (see the module docstring); `schedule` replaces the random one."""
    seed = random.SystemRandom().randrange(10**6) if seed is None else seed
    rng = random.Random(seed)
    layout = Layout(work.resolve())
    jobs = prepare(layout, videos)
    estimate = videos * seconds_per_clip / workers
    if schedule is None:
        schedule = random_schedule(rng, list(kinds or KINDS), per_kind, (0.1 * estimate, 0.7 * estimate))
    server = RedisServer(layout.base / "redis", aof=True)
    env = worker_env(settings, server.url, layout.root, queue=QUEUE)
    env.update({f"CAPTIONER_{k.upper()}": str(v) for k, v in WORKER_SETTINGS.items()}, CAPTIONER_CHUNK_SIZE=str(chunk))
    fleet = WorkerProcesses(env, layout.base / "logs", drop_dac_override=True)
    base = settings.model_copy(update=dict(broker_url=server.url, allowed_roots=[layout.root], queue=QUEUE,
                                           chunk_size=chunk, settle_seconds=0, **WORKER_SETTINGS))  # fmt: skip
    rig = Rig(server, fleet, layout, base, rng, mounted=False)
    with terminate_as_exit():  # a killed benchmark still unmounts and stops its children
        result = run_rig(rig, jobs, schedule, workers, seconds_per_clip, stall_s=max(180.0, 3 * estimate), log=log)
    result.update(describe(rig, videos, chunk, workers, seconds_per_clip, seed, result.pop("why_not")))
    return result


def run_rig(rig: Rig, jobs: list[Path], schedule: list[Fault], workers: int, seconds_per_clip: float,
            stall_s: float, log: Callable[..., None]) -> dict[str, Any]:
    """Mount the output folder, start Redis and the workers, run the job under faults, read the end
    state; stop everything and unmount, whatever happens."""
    server, fleet, layout = rig.server, rig.workers, rig.layout
    outside_before = layout.files_outside()
    try:
        why_not = mount_tmpfs(layout.out, megabytes=max(8, len(jobs) * 4 // 1024))  # 4 KB a video: records, merge
        rig.mounted = why_not is None
        server.start()
        for i in range(1, workers + 1):
            fleet.start(f"fault-w{i}@%h", [*STAND_IN_WORKER, f"fault-w{i}@%h", str(seconds_per_clip)])
        wait_workers(rig, workers)
        result = run_job(rig, jobs, schedule, stall_s, log=log)
        result["end_state"] = end_state(server.client, QUEUE, layout, jobs, outside_before)
        result["why_not"] = why_not
        shutil.copytree(layout.out, layout.base / "out-after", symlinks=True)  # for a look after the tmpfs goes
    finally:
        fleet.stop()
        server.stop()
        unmount(layout.out)
    return result


def wait_workers(rig: Rig, count: int, timeout: float = 300) -> None:
    """Wait for `count` heartbeats; a worker that exits meanwhile, or the timeout, raises with the logs' tails."""
    deadline = time.monotonic() + timeout
    while len(rig.server.client.keys("captioner:alive:*")) < count:
        exited = rig.workers.exited()
        if exited or time.monotonic() > deadline:
            names = list(exited) or list(rig.workers.procs)
            tails = "\n".join(f"--- {name}:\n{rig.workers.log(name).read_text(errors='replace')[-3000:]}"
                              for name in names)  # fmt: skip
            why = f"exited ({exited})" if exited else f"not up after {timeout:g} s"
            raise RuntimeError(f"stand-in workers {why}:\n{tails}")
        time.sleep(0.5)


def run_job(rig: Rig, videos: list[Path], schedule: list[Fault], stall_s: float,
            log: Callable[..., None]) -> dict[str, Any]:
    """Submit the job, run the fault loop until it ends, let the service settle; the job's figures."""
    from captioner.service import job_options, submit

    started = time.time()
    rig.job_id = submit([rig.layout.videos], rig.layout.out, rig.settings)
    job = rig.server.client.hgetall(f"captioner:job:{{{rig.job_id}}}")
    rig.chunks, rig.video = int(job["chunks"]), str(videos[0])
    rig.options = job_options(rig.settings).model_dump(exclude_none=True)
    log(f"job {rig.job_id}: {len(videos):,} videos in {rig.chunks} chunks; {len(schedule)} faults scheduled")
    faults = fault_loop(rig, schedule, stall_s, log)
    settle_s = settle(rig.server.client, 30)
    job = rig.server.client.hgetall(f"captioner:job:{{{rig.job_id}}}")
    ended = float(job["finished_at"]) if job.get("finished_at") else None
    last_in = max((f.injected_at for f in faults), default=None)
    last_out = max((f.cleared_at or 0 for f in faults), default=None)
    return {
        "job": {"id": rig.job_id, "state": job.get("state"), "error": job.get("error", ""),
                "seconds": round((ended or time.time()) - started, 1), "ok": int(job.get("ok", 0)),
                "failed": int(job.get("failed", 0)), "skipped": int(job.get("skipped", 0))},
        "faults": [asdict(f) for f in faults],
        "faults_by_kind": {kind: sum(1 for f in faults if f.kind == kind and not f.detail.startswith("skipped"))
                           for kind in KINDS},
        "not_injected": [asdict(f) for f in schedule if f.injected_at is None],
        "seconds_from_last_fault_to_end": round(ended - last_in, 1) if ended and last_in else None,
        "seconds_from_last_fault_cleared_to_end": round(ended - last_out, 1) if ended and last_out else None,
        "settle_s": settle_s,
        "hostile_messages": rig.hostile,
        "workers_exited_by_themselves": rig.exits,
    }  # fmt: skip


def describe(rig: Rig, videos: int, chunk: int, workers: int, seconds_per_clip: float, seed: int,
             why_not: str | None) -> dict[str, Any]:
    """The run's settings as the JSON states them."""
    from captioner.bench.standins import STAND_IN_DECODER, STAND_IN_ENGINE

    return {
        "videos": videos, "chunk_size": chunk, "chunks": rig.chunks, "workers": workers,
        "seconds_per_clip": seconds_per_clip, "seed": seed, "host": socket.gethostname(),
        "fault_free_estimate_s": round(videos * seconds_per_clip / workers, 1),  # the stand-in engine's time alone
        "stand_ins": {"engine": STAND_IN_ENGINE, "decoder": STAND_IN_DECODER},
        "worker_settings": WORKER_SETTINGS,
        "redis": "a redis-server of the benchmark's own: --appendonly yes --appendfsync always",
        "workers_obey_file_modes": "root without CAP_DAC_OVERRIDE" if os.geteuid() == 0 else "not root",
        "disk_full": why_not or "the output folder is a tmpfs, filled by a filler file",
    }  # fmt: skip
