"""The service left unattended (issue 20): hostile messages, read-only and full output folders,
duplicate deliveries. Real Redis, real Celery worker processes running the service's real chunk
code; the engine and decoder are the benchmarks' stand-ins (`captioner.bench.standins`, named as
such), since what is tested here is the service's bookkeeping, not captioning.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from captioner.bench.fleet import STAND_IN_WORKER
from captioner.config import Settings
from captioner.service import JobStore, finish_settled, submit
from captioner.service.celery_app import CHUNK_TASK, app_for
from captioner.service.done_index import IndexKeys
from captioner.service.message import new_job_id
from tests.service_support import CLI, clips, one_record_each, wait_job, worker_environment

QUEUE = "hardening"
SECONDS_PER_CLIP = 0.25  # long enough for a fault to land while chunks run


@pytest.fixture(scope="module")
def env(home: Path, server, root: Path) -> dict[str, str]:
    return worker_environment(
        home, server, root, queue=QUEUE, tier="cpu", adapter="demo", chunk_size="3", heartbeat_s="1",
        dead_after_s="5", job_ttl="600", settle_seconds="0",
    )  # fmt: skip


@pytest.fixture(scope="module")
def svc(settings: Settings, server, root: Path) -> Settings:
    return settings.model_copy(
        update=dict(broker_url=server.url, allowed_roots=[root], queue=QUEUE, chunk_size=3, settle_seconds=0)
    )


@pytest.fixture(scope="module")
def store(svc: Settings) -> JobStore:
    return JobStore.connect(svc, patient=True)


@pytest.fixture(scope="module")
def workers(env: dict[str, str], store: JobStore, tmp_path_factory) -> Iterator[list[Path]]:
    """Two stand-in worker processes; yields their log files."""
    from captioner.bench.lifetime import die_with_parent

    logs = tmp_path_factory.mktemp("hardening-logs")
    procs, files = [], []
    for name in ("h1", "h2"):
        log = logs / f"{name}.log"
        procs.append(subprocess.Popen(
            [*STAND_IN_WORKER, f"{name}@%h", str(SECONDS_PER_CLIP)], env=env, stdout=log.open("a"),
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent(),
        ))  # fmt: skip
        files.append(log)
    deadline = time.monotonic() + 120
    while len(store.redis.keys("captioner:alive:*")) < 2:
        assert time.monotonic() < deadline, [f.read_text()[-2000:] for f in files]
        time.sleep(0.3)
    yield files
    for proc in procs:
        proc.kill()
        proc.wait(30)


def settled_state(store: JobStore, out: Path, svc: Settings) -> dict[str, int]:
    """What must be zero once every job is over: running entries, claims, unfinished jobs, temp files."""
    from captioner.planning import make_plan

    claims = store.redis.hlen(IndexKeys.of(out, make_plan(svc).key).claims)
    temps = [p for p in out.rglob("*") if p.suffix == ".tmp" or ".tmp" in p.name]
    return {"running": store.redis.hlen("captioner:running"), "claims": claims,
            "unfinished": len(store.unfinished()), "temp_files": len(temps)}  # fmt: skip


@contextlib.contextmanager
def mounted(*command: str) -> Iterator[None]:
    """Run a mount command; unmount on exit. Skips when this machine cannot mount (not root)."""
    target = command[-1]
    result = subprocess.run(["mount", *command], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", target], check=False)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` made read-only by a read-only bind mount over itself (root can write to 0555 folders)."""
    with mounted("--bind", str(folder), str(folder)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield


def test_hostile_messages_are_refused_and_stall_nothing(workers, store, svc, root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    victim = outside / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("kept")
    escape = "../../../" + str(victim).lstrip("/")
    # A job planted in Redis with a path for an id, and one whose output folder is outside the roots.
    store.redis.hset(store.key(escape), mapping={"state": "running", "out": str(victim), "chunks": "1"})
    store.redis.sadd("captioner:jobs", escape)
    planted = new_job_id()
    store.create(planted, {"id": planted, "state": "queued", "out": str(outside / "planted-out"), "options": "{}",
                           "chunks": 1, "videos": 1, "submitted_at": repr(time.time()), "folders": "[]"})  # fmt: skip
    folder = root / "hostile"
    videos = clips(folder, 6)
    out = root / "hostile-out"
    job_id = submit([folder], out, svc)
    app = app_for(svc)
    options = json.loads(store.get(job_id)["options"])
    for args in (
        [escape, 0, [str(videos[0])], str(victim), {}],  # a path for a job id
        [job_id, 0, [123], str(out), {}],  # wrong types
        [job_id, "0", [str(videos[0])], str(out), {}],
        [job_id, 0, [str(videos[0])], str(outside), {}],  # another output folder than the job's
        [job_id, 99, [str(videos[0])], str(out), {}],  # a chunk the job does not have
        [job_id, 0, [str(videos[0])]],  # too few arguments
        [planted, 0, [str(videos[0])], str(outside / "planted-out"), {}],  # a job outside the roots
        [job_id, 0, [str(videos[4])], str(out), options],  # a forged chunk: a real index, other videos
    ):
        app.send_task(CHUNK_TASK, args=args, queue=QUEUE)
    final = wait_job(store, job_id, timeout=120)
    assert (final["state"], final["ok"], final["failed"], final["skipped"]) == ("done", 6, 0, 0), final
    one_record_each(out, videos)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]  # nothing deleted or written beside it
    assert not (outside / "planted-out").exists() and not (victim.parent / "parts").exists()
    planted_state = wait_job(store, planted, timeout=30)
    assert planted_state["state"] == "failed" and "outside the allowed roots" in planted_state["error"]
    logs = "".join(log.read_text(errors="replace") for log in workers)
    for reason in ("job_id: String should match pattern", "videos.0: Input should be a valid string",
                   "index: Input should be a valid integer", "its output folder is not the job's",
                   "chunk 99 of a job of 2 chunks", "out: Field required",
                   "its videos are not those of the job's chunk 0"):  # fmt: skip
        assert reason in logs, reason
    # The heartbeats' finisher ignores (and forgets) a planted id that is not a job id.
    finish_settled(store, [root], lambda options: {})
    assert escape not in store.unfinished()
    assert settled_state(store, out, svc) == {"running": 0, "claims": 0, "unfinished": 0, "temp_files": 0}


def test_a_duplicate_delivery_neither_counts_nor_skips_the_chunk(workers, store, svc, root):
    """The same chunk delivered twice while it runs (a Redis restart, a heartbeat resend): counted once, all ok."""
    folder = root / "duplicate"
    videos = clips(folder, 3)  # one chunk
    out = root / "duplicate-out"
    job_id = submit([folder], out, svc)
    message = [job_id, 0, [str(v) for v in videos], str(out), json.loads(store.get(job_id)["options"])]
    deadline = time.monotonic() + 60
    while not store.running(job_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    app_for(svc).send_task(CHUNK_TASK, args=message, queue=QUEUE)
    final = wait_job(store, job_id, timeout=120)
    assert (final["state"], final["ok"], final["skipped"]) == ("done", 3, 0), final
    one_record_each(out, videos)


def test_submit_refuses_an_output_folder_it_cannot_write(svc, root, env):
    folder = root / "ro-submit"
    clips(folder, 1)
    locked = root / "ro-target"
    locked.mkdir()
    with read_only(locked):
        result = subprocess.run([*CLI, "submit", str(folder), "--out", str(locked / "new")], env=env,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "cannot be made" in result.stderr and str(locked) in result.stderr


def test_compose_refuses_an_output_under_the_read_only_videos_mount(env, root, store):
    """docker/compose.yaml's own roots and mounts, moved under the test's root."""
    from tests.compose import services

    cli = services()["cli"]
    srv = "/srv/captioner"
    moved = lambda value: value.replace(srv, str(root / "srv"))  # noqa: E731
    read_only_mounts = [v.split(":")[-2] for v in cli["volumes"] if v.endswith(":ro")]
    videos = Path(moved(next(m for m in read_only_mounts if m.startswith(srv))))
    clips(videos / "batch", 1)
    compose_env = dict(env, CAPTIONER_ALLOWED_ROOTS=moved(cli["environment"]["CAPTIONER_ALLOWED_ROOTS"]),
                       CAPTIONER_OUTPUT_ROOTS=moved(cli["environment"]["CAPTIONER_OUTPUT_ROOTS"]))  # fmt: skip
    command = [*CLI, "submit", str(videos / "batch"), "--out"]
    refused = subprocess.run([*command, str(videos / "captions")], env=compose_env, capture_output=True, text=True)
    assert refused.returncode == 2 and "outside the allowed roots" in refused.stderr, refused.stderr
    outputs = Path(compose_env["CAPTIONER_OUTPUT_ROOTS"])
    queued = subprocess.run([*command, str(outputs / "batch")], env=dict(compose_env, CAPTIONER_QUEUE="nobody-reads"),
                            capture_output=True, text=True)  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    store.finish(queued.stdout.strip(), "cancelled")


def queue_past_submit(store: JobStore, svc: Settings, folder: Path, out: Path) -> str:
    """Queue a job as `submit` does but without its checks (as if the folder became read-only after)."""
    from captioner.service import check_submission, enqueue, job_options

    checked, out_dir, found = check_submission([folder], out.parent, svc)
    return enqueue(store, svc, checked, out, found.videos, job_options(svc))


def test_an_output_folder_read_only_for_a_while_delays_the_job_and_loses_nothing(workers, store, svc, root):
    folder = root / "ro-later"
    videos = clips(folder, 9)
    out = root / "ro-later-out"
    out.mkdir()
    with read_only(out):  # made read-only before any worker opens a file there (else remounting is refused)
        job_id = queue_past_submit(store, svc, folder, out)
        time.sleep(4)  # chunks fail to open their part files, and retry
    final = wait_job(store, job_id, timeout=180)
    assert (final["state"], final["ok"], final["failed"]) == ("done", 9, 0), final
    one_record_each(out, videos)
    assert settled_state(store, out, svc) == {"running": 0, "claims": 0, "unfinished": 0, "temp_files": 0}


def test_a_full_output_disk_delays_the_job_and_leaves_no_temp_files(workers, store, svc, root):
    folder = root / "full"
    videos = clips(folder, 9)
    out = root / "full-out"
    out.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(out)):
        filler = out / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        job_id = submit([folder], out, svc)
        time.sleep(4)  # part files cannot be written: the chunks retry
        assert store.state(job_id) in ("queued", "running")
        filler.unlink()
        final = wait_job(store, job_id, timeout=180)
        assert (final["state"], final["ok"], final["failed"]) == ("done", 9, 0), final
        one_record_each(out, videos)
        assert settled_state(store, out, svc) == {"running": 0, "claims": 0, "unfinished": 0, "temp_files": 0}


def test_an_output_folder_that_stays_read_only_ends_the_job_with_the_reason(workers, store, svc, root):
    folder = root / "ro-always"
    clips(folder, 3)
    out = root / "ro-always-out"
    out.mkdir()
    with read_only(out):
        job_id = queue_past_submit(store, svc, folder, out)
        final = wait_job(store, job_id, timeout=240)
    assert final["state"] in ("done", "failed") and final["ok"] == 0, final
    assert final["failed"] == 3 or "Read-only file system" in (final["error"] or ""), final
    assert store.redis.hlen("captioner:running") == 0 and job_id not in store.unfinished()
