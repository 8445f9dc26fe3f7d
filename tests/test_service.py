"""Captioning as a service: real Redis servers, real Celery worker processes, the real vLLM engine.

The tests start their own `redis-server` (append-only file, so a restart keeps the queue) on a free
port, and two `captioner worker` processes on the demo checkpoint, shared by the module. Worker
tests run in file order; the last two kill a worker and restart Redis. The servers and workers are
`tests.service_support`'s, shared with `test_service_adapters`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from captioner.bench.lifetime import die_with_parent
from captioner.config import Settings
from captioner.demo.scenes import write_clip, write_clips
from captioner.records import dataset_files, read_output, read_records
from captioner.service import (
    JobNotFound,
    JobStore,
    SubmitError,
    cancel,
    chunks_in_flight,
    enqueue,
    job_options,
    secure_url,
    status,
    submit,
)
from captioner.service.celery_app import CHUNK_TASK, NIGHTLY_TASK
from captioner.sources import video_id
from tests.compose import captioner_args, healthcheck_args
from tests.service_support import (
    CLI,
    RedisServer,
    Worker,
    clips,
    free_port,
    one_record_each,
    queued,
    settled,
    wait_job,
    worker_environment,
)

CHUNK = 2  # videos per chunk in these tests
VISIBILITY = 900  # s before Celery redelivers a vanished worker's chunk (production: an hour): heartbeats come first
# s of silence before a worker counts as dead (production: 90). On CPU the engine runs inside the
# worker process and can hold the GIL for seconds under a loaded suite; 5 s was seen to lapse.
DEAD_AFTER = 10


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def svc_settings(settings: Settings, server: RedisServer, root: Path) -> Settings:
    """What `submit`, `status` and `cancel` use in this process."""
    return settings.model_copy(
        update=dict(broker_url=server.url, allowed_roots=[root], chunk_size=CHUNK, visibility_timeout=VISIBILITY)
    )


@pytest.fixture(scope="module")
def store(svc_settings: Settings) -> JobStore:
    return JobStore.connect(svc_settings, patient=True)


@pytest.fixture(scope="module")
def worker_env(home: Path, server: RedisServer, root: Path) -> dict[str, str]:
    return worker_environment(
        home, server, root,
        tier="cpu",
        adapter="demo",
        sampling="deterministic",
        chunk_size=str(CHUNK),
        visibility_timeout=str(VISIBILITY),
        dead_after_s=str(DEAD_AFTER),
        heartbeat_s="1",
        job_ttl="600",
        nightly_folders=f"{root}/watched:{root}/watched-missing",
        nightly_out=f"{root}/nightly-out",
        # Two engines beside the test session's: a small KV cache is plenty for the demo model.
        profile__kv_cache_gib="0.25",
        # One clip per generate() call, so records appear one by one and a kill lands mid-chunk.
        profile__batch_size="1",
    )  # fmt: skip


@pytest.fixture(scope="module")
def workers(worker_env, beat, tmp_path_factory):
    logs = tmp_path_factory.mktemp("worker-logs")
    started = [Worker("w1", worker_env, logs, free_port()), Worker("w2", worker_env, logs, free_port())]
    try:
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture(scope="module")
def beat(worker_env, tmp_path_factory):
    """`captioner beat` firing every minute into a queue no worker reads (so the test sees the message)."""
    beat_home = tmp_path_factory.mktemp("beat-home")
    env = dict(worker_env, CAPTIONER_QUEUE="beat-probe", CAPTIONER_NIGHTLY_SCHEDULE="* * * * *",
               CAPTIONER_HOME=str(beat_home))  # fmt: skip
    log = beat_home / "beat.log"
    proc = subprocess.Popen([*CLI, *captioner_args("beat")], env=env, stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent())  # fmt: skip
    yield proc, log
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


# --------------------------------------------------------------------------- configuration


def test_settings_from_environment_and_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONER_ALLOWED_ROOTS", "/data/a:/data/b")
    assert Settings().allowed_roots == [Path("/data/a"), Path("/data/b")]
    monkeypatch.delenv("CAPTIONER_ALLOWED_ROOTS")
    assert Settings().allowed_roots == [Path("/srv/captioner")]  # the documented default
    config = tmp_path / "captioner.toml"
    config.write_text(
        'broker_url = "rediss://:s3cret@redis.example:6380/2"\n'
        'allowed_roots = ["/footage"]\nnightly_folders = ["/footage/in"]\nnightly_out = "/footage/out"\n'
        'nightly_schedule = "30 1 * * 1-5"\njob_ttl = 3600\n'
    )
    monkeypatch.setenv("CAPTIONER_CONFIG", str(config))
    monkeypatch.setenv("CAPTIONER_JOB_TTL", "60")  # the environment wins over the file
    loaded = Settings()
    assert loaded.broker_url.startswith("rediss://") and loaded.allowed_roots == [Path("/footage")]
    assert loaded.job_ttl == 60 and loaded.nightly_schedule == "30 1 * * 1-5"
    monkeypatch.setenv("CAPTIONER_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="no such config file"):
        Settings()


def test_celery_app_is_json_only_late_acking_and_schedules_the_nightly_job():
    from workers.app import celery_config  # the deployment entry point builds the library's app

    settings = Settings(
        broker_url="rediss://:pw@redis.example:6380/0", nightly_folders=[Path("/srv/captioner/in")],
        nightly_out=Path("/srv/captioner/out"), nightly_schedule="30 1 * * 1-5", job_ttl=1234, visibility_timeout=7200,
    )  # fmt: skip
    config = celery_config(settings)
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["result_accept_content"] == ["json"]
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1 and config["worker_pool"] == "threads"
    # Chunks held at once: two of the default size (two batches each); more when chunks are small.
    assert config["worker_concurrency"] == 2
    small = Settings(tier="cpu", chunk_size=4)
    assert celery_config(small)["worker_concurrency"] == 12 == chunks_in_flight(small)  # 3 batches of 16
    assert celery_config(Settings(chunks_in_flight=5))["worker_concurrency"] == 5
    assert config["broker_transport_options"]["visibility_timeout"] == 7200
    assert config["result_expires"] == 1234
    # kombu would otherwise connect to a rediss:// broker without checking the certificate.
    assert config["broker_url"].endswith("?ssl_cert_reqs=required")
    assert secure_url("redis://h:1/0") == "redis://h:1/0"
    entry = config["beat_schedule"]["captioner-nightly"]
    assert entry["task"] == NIGHTLY_TASK
    assert entry["schedule"].hour == {1} and entry["schedule"].minute == {30}
    assert entry["schedule"].day_of_week == {1, 2, 3, 4, 5}
    assert celery_config(Settings())["beat_schedule"] == {}  # nothing watched, nothing scheduled


def _append(path: Path, worker: int, count: int) -> None:
    from captioner.records import CaptionRecord, RecordWriter

    with RecordWriter(path) as writer:
        for i in range(count):
            writer.write(CaptionRecord(f"/v/{worker}-{i}.mp4", "ok", "캡션", None, 8, "m", None, {}))


def _compact_repeatedly(path: Path, times: int) -> None:
    from captioner.records import compact

    for _ in range(times):
        compact(path)


def test_compaction_while_workers_append_loses_no_record(tmp_path):
    """`captioner run` compacts captions.jsonl while other runs may still append to it."""
    import multiprocessing

    from captioner.records import CaptionRecord, RecordWriter

    path = tmp_path / "captions.jsonl"
    with RecordWriter(path) as writer:  # superseded records, so every compaction rewrites the file
        for i in range(50):
            writer.write(CaptionRecord("/v/again.mp4", "failed", "", f"try {i}", 8, "m", None, {}))
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_append, args=(path, w, 300)) for w in range(3)]
    procs.append(context.Process(target=_compact_repeatedly, args=(path, 100)))
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    videos = [r["video"] for r in read_records(path)]
    assert len([v for v in videos if v != "/v/again.mp4"]) == len(set(videos) - {"/v/again.mp4"}) == 900


# --------------------------------------------------------------------------- bad input


def test_rejected_paths_queue_nothing(svc_settings, store, root, tmp_path):
    good = root / "good"
    clips(good, 1)
    outside = tmp_path / "outside"
    clips(outside, 1)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    sneaky = root / "sneaky"
    sneaky.mkdir()
    (sneaky / "clip.mp4").symlink_to(next(outside.glob("*.mp4")))
    (root / "empty").mkdir()
    before = (store.redis.keys("captioner:job:*"), queued(store.redis))
    cases = [
        (outside, root / "out", "outside the allowed roots"),
        (root / "good" / ".." / ".." / outside.name, root / "out", "'..' is not allowed"),
        (root / "escape", root / "out", "outside the allowed roots"),
        (root / "missing", root / "out", "folder does not exist"),
        (root / "empty", root / "out", "no videos"),
        (sneaky, root / "out", "outside the allowed roots"),
        (good, tmp_path / "out", "outside the allowed roots"),
    ]
    for folder, out, message in cases:
        with pytest.raises(SubmitError, match=message):
            submit([folder], out, svc_settings)
    assert (store.redis.keys("captioner:job:*"), queued(store.redis)) == before


def test_cli_rejects_an_unreadable_folder_and_an_unreachable_redis(server, root, worker_env):
    locked = root / "locked"
    clips(locked, 1)
    locked.chmod(0)
    # Root reads anything; without these capabilities it obeys file modes like any user.
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    try:
        result = subprocess.run([*drop, *CLI, "submit", str(locked), "--out", str(root / "out")],
                                env=worker_env, capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert f"{locked}: folder is not readable" in result.stderr
    assert queued(redis.Redis(port=server.port)) == 0

    dead = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = subprocess.run([*CLI, "submit", str(locked), "--out", str(root / "out")],
                            env=dict(worker_env, CAPTIONER_BROKER_URL=dead), capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2 and "cannot reach Redis" in result.stderr, result.stderr
    assert time.monotonic() - started < 15  # fast, not a retry loop
    assert result.stdout == ""  # no job id: nothing was queued


# --------------------------------------------------------------------------- engine errors (in process)


class _FakeEngine:
    """An `Engine` standing in for vLLM where a real engine cannot be made to die: the CPU engine runs in-process."""

    def __init__(self, plan: Any, dies: bool) -> None:
        self.model, self.profile, self.dies = plan.model, plan.profile, dies
        self.adapters = [adapter.path for adapter in plan.adapters if adapter.path is not None]
        self.kv, self.load_s = None, 0.0

    def warm_prefix(self, prompt: Any, with_adapter: bool = True) -> None:
        pass

    def shareable_prefix_tokens(self, prompt: Any) -> int:
        return 0

    def caption(self, videos: list, prompt: Any, sampling: Any, adapters: Any = None) -> list:
        from vllm.v1.engine.exceptions import EngineDeadError

        from captioner.engine import Generation

        if self.dies:
            raise EngineDeadError("engine core process died")
        return [Generation("가짜 설명", 10, 0, 5, "stop") for _ in videos]


@pytest.mark.parametrize("deaths,expect", [(1, "ok"), (99, "failed")])
def test_engine_death_rebuilds_the_engine_and_retries_then_records_failed(
    deaths, expect, svc_settings, store, root, tmp_path_factory
):
    from captioner import compat

    compat.apply()
    import captioner.service.tasks as tasks

    settings = svc_settings.model_copy(update=dict(queue=f"engine-test-{deaths}"))  # no worker reads it
    folder = root / f"engine-{deaths}"
    videos = clips(folder, 2)
    out = root / f"engine-{deaths}-out"
    job_id = enqueue(store, settings, [folder], out, videos, job_options(settings))
    runtime = tasks.use_settings(settings)
    loads = []

    def load(plan: Any) -> _FakeEngine:
        loads.append(plan)
        return _FakeEngine(plan, dies=len(loads) <= deaths)

    runtime.load = load
    runtime.start_heartbeat()  # else the real workers would take this chunk as a dead worker's
    task = tasks.caption_chunk
    assert task.retry_backoff and task.max_retries == 3 and task.acks_late
    # apply() runs the task here, and its retries too (without the backoff's wait).
    try:
        task.apply(
            args=[job_id, 0, [str(v) for v in videos], str(out), job_options(settings).model_dump(exclude_none=True)]
        )
    finally:
        runtime.close()
    final = status(store, job_id)
    records = one_record_each(out, videos)
    assert final["state"] == "done" and final[expect] == 2 and final["pending"] == 0
    if expect == "ok":
        assert len(loads) == 2  # died once: rebuilt once
        assert all(r["status"] == "ok" and r["caption"] == "가짜 설명" for r in records.values())
    else:
        assert len(loads) == 1 + task.max_retries  # a new engine for every retry, then it gives up
        for record in records.values():
            assert record["status"] == "failed"
            assert "vLLM engine died: EngineDeadError" in record["error"] and "after retries" in record["error"]


# --------------------------------------------------------------------------- real workers


def test_submit_wait_done_with_correct_records(workers, worker_env, store, root):
    folder = root / "first"
    good = clips(folder, 4)
    # A Korean name from a Windows zip: CP949 bytes, not UTF-8, through the queue and Redis.
    cp949 = Path(os.fsdecode(bytes(folder) + "/서울 야경.mp4".encode("cp949")))
    good.append(settled(write_clip(cp949, "city", seconds=1, fps=10, width=128, height=72)))
    (folder / "empty.mp4").write_bytes(b"")
    settled(folder / "empty.mp4")
    out = root / "first-out"
    result = subprocess.run([*CLI, "submit", str(folder), "--out", str(out), "--wait"],
                            env=worker_env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id, _, rest = result.stdout.partition("\n")
    final = json.loads(rest)
    assert final["job"] == job_id and final["state"] == "done"
    assert (final["videos"], final["ok"], final["failed"], final["skipped"], final["pending"]) == (6, 5, 1, 0, 0)
    assert final["chunks"] == final["chunks_done"] == 3 and final["timings"]["finished_at"]
    records = one_record_each(out, [*good, folder / "empty.mp4"])
    assert records[video_id(cp949)]["video_raw"]  # the exact bytes of the name, reversible
    for video in good:
        record = records[video_id(video)]
        assert record["status"] == "ok" and record["caption"].strip() and record["output_tokens"] >= 50
        assert record["adapter"] == "demo" and record["frames"] == 8 and record["sampling"] == "deterministic"
        assert record["prompt"]["name"] == "detailed-ko" and record["prompt"]["version"] == 1
    assert records[str(folder / "empty.mp4")]["error"] == "file is empty (0 bytes)"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["job"], summary["ok"], summary["failed"]) == (job_id, 5, 1)
    # Finished jobs expire (CAPTIONER_JOB_TTL=600 for these workers).
    assert 0 < store.redis.ttl(store.key(job_id)) <= 600
    assert all(0 < store.redis.ttl(key) <= 600 for key in store.keys(job_id) if store.redis.exists(key))
    # status from the command line
    shown = subprocess.run([*CLI, "status", job_id], env=worker_env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and json.loads(shown.stdout)["ok"] == 5


def test_two_workers_share_one_job(workers, svc_settings, store, root):
    folder = root / "shared"
    videos = clips(folder, 6)
    out = root / "shared-out"
    job_id = submit([folder], out, svc_settings)
    final = wait_job(store, job_id)
    assert final["state"] == "done" and final["ok"] == 6 and final["chunks"] == 3
    assert set(final["workers"]) == {w.name for w in workers}, final["workers"]  # both took chunks
    assert sum(final["workers"].values()) == 3
    one_record_each(out, videos)
    log = "".join(w.log.read_text() for w in workers)  # one line per chunk, with throughput
    assert log.count(f"job {job_id} chunk") == 3 and "videos/s" in log and "output tokens/s" in log


def test_a_chunk_longer_than_the_dead_time_is_not_sent_again(workers, svc_settings, store, root):
    folder = root / "slow"
    videos = clips(folder, 12)
    out = root / "slow-out"
    job_id = submit([folder], out, svc_settings.model_copy(update=dict(chunk_size=12)))
    final = wait_job(store, job_id)
    assert final["state"] == "done" and final["ok"] == 12
    assert final["timings"]["busy_s"] > DEAD_AFTER  # the point of the test: one chunk outlived the dead time
    assert sum(final["workers"].values()) == 1
    assert "chunk sent again" not in "".join(w.log.read_text() for w in workers)
    one_record_each(out, videos)


def test_two_jobs_on_one_output_folder_caption_each_video_once(workers, svc_settings, store, root):
    folder = root / "twice"
    videos = clips(folder, 6)
    out = root / "twice-out"
    first = submit([folder], out, svc_settings)
    second = submit([folder], out, svc_settings)
    finals = [wait_job(store, first), wait_job(store, second)]
    assert all(f["state"] == "done" and f["videos"] == 6 and f["failed"] == 0 for f in finals), finals
    assert sum(f["ok"] for f in finals) == 6 and sum(f["skipped"] for f in finals) == 6  # claimed, not captioned twice
    one_record_each(out, videos)


def test_workers_serve_prometheus_metrics(workers, worker_env, svc_settings, store, root):
    from captioner.service.celery_app import app_for

    def scrape() -> list[dict[str, float]]:
        return [worker.metrics() for worker in workers]

    def total(samples: list[dict[str, float]], name: str) -> float:
        return sum(s.get(name, 0.0) for s in samples)

    for worker in workers:  # the containers' health check, against these workers
        env = dict(worker_env, CAPTIONER_METRICS_PORT=str(worker.metrics_port))
        healthy = subprocess.run([*CLI, *healthcheck_args("worker-gpu0")], env=env, capture_output=True, text=True,
                                 timeout=60)  # fmt: skip
        assert healthy.returncode == 0, healthy.stderr
    nobody = dict(worker_env, CAPTIONER_METRICS_PORT=str(free_port()))
    sick = subprocess.run([*CLI, *healthcheck_args("worker-gpu0")], env=nobody, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert sick.returncode == 1 and "worker not ready" in sick.stderr
    before = scrape()
    assert all(s["captioner_engine_loads_total"] == 1 and s["captioner_engine_load_seconds"] > 0 for s in before)
    for s in before:  # clips in flight: computed and vLLM's figure agree within a fifth; the CPU tier caps at 16
        computed, reported = s['captioner_clips_fit{source="computed"}'], s['captioner_clips_fit{source="vllm"}']
        assert abs(reported - computed) <= computed / 5 and computed > 16
        assert s['captioner_kv_cache_tokens{source="vllm"}'] > 0
        assert s["captioner_max_num_seqs"] == 16 and s["captioner_batch_size"] == 1  # the workers' batch override
    # Workers stop taking chunks (as an operator would with `celery control cancel_consumer`), so
    # the job's chunks wait in the queue where the metric must see them.
    control = app_for(svc_settings).control
    names = [w.name for w in workers]
    folder = root / "metrics"
    good = clips(folder, 3)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    settled(folder / "broken.mp4")
    out = root / "metrics-out"
    assert len(control.cancel_consumer(svc_settings.queue, destination=names, reply=True, timeout=10)) == 2
    try:
        # kombu polls the queue with 1 s BRPOPs: one already waiting when the consumer was cancelled
        # could still take a chunk. Let those run out first.
        time.sleep(2.5)
        job_id = submit([folder], out, svc_settings)
        waiting = scrape()
        assert [s['captioner_queue_depth{queue="captioner"}'] for s in waiting] == [2, 2]
        assert queued(store.redis, svc_settings.queue) == 2
    finally:  # the later tests need consuming workers, whatever happened here
        assert len(control.add_consumer(svc_settings.queue, destination=names, reply=True, timeout=10)) == 2
    final = wait_job(store, job_id)
    assert final["state"] == "done" and (final["ok"], final["failed"]) == (3, 1)
    after = scrape()
    assert [s['captioner_queue_depth{queue="captioner"}'] for s in after] == [0, 0]

    def delta(name: str) -> float:
        return total(after, name) - total(before, name)

    records = one_record_each(out, [*good, folder / "broken.mp4"])
    ok = [r for r in records.values() if r["status"] == "ok"]
    assert delta('captioner_clips_total{status="ok"}') == 3
    assert delta('captioner_clips_total{status="failed"}') == 1
    assert delta("captioner_chunks_total") == 2
    assert delta("captioner_output_tokens_total") == sum(r["output_tokens"] for r in ok) > 0
    assert delta("captioner_prompt_tokens_total") == sum(r["prompt_tokens"] for r in ok)
    assert delta("captioner_cached_prompt_tokens_total") == sum(r["cached_tokens"] for r in ok)
    decoded = [r for r in records.values() if r["decode_s"] is not None]
    assert delta("captioner_decode_seconds_count") == len(decoded) >= 3
    assert delta("captioner_decode_seconds_sum") == pytest.approx(sum(r["decode_s"] for r in decoded), abs=0.01)
    assert delta("captioner_batch_clips_count") == delta("captioner_batch_clips_sum") == 3  # the good clips, 1 a batch
    for samples in after:
        if samples["captioner_prompt_tokens_total"]:  # a worker that has captioned something
            ratio = samples["captioner_cached_prompt_tokens_total"] / samples["captioner_prompt_tokens_total"]
            assert samples["captioner_prefix_cache_hit_ratio"] == pytest.approx(ratio) and 0 < ratio < 1
            assert samples["captioner_output_tokens_per_second"] > 0 and samples["captioner_videos_per_second"] > 0


def test_resubmitting_a_finished_folder_does_no_work(workers, svc_settings, store, root):
    out = root / "shared-out"
    before = {path: path.read_bytes() for path in dataset_files(out)}
    job_id = submit([root / "shared"], out, svc_settings)
    final = wait_job(store, job_id)
    assert (final["state"], final["videos"], final["skipped"], final["ok"], final["failed"]) == ("done", 6, 6, 0, 0)
    assert final["output_tokens"] == 0
    assert {path: path.read_bytes() for path in dataset_files(out)} == before  # not one record more or rewritten


def test_workers_refuse_pickle_and_paths_outside_their_roots(workers, svc_settings, store, root, tmp_path):
    from captioner.service.celery_app import app_for

    app = app_for(svc_settings)
    app.send_task(CHUNK_TASK, args=["pickled-job", 0, [], str(root / "x"), {}], serializer="pickle")
    deadline = time.monotonic() + 30
    while "Refusing to deserialize untrusted content of type pickle" not in "".join(w.log.read_text() for w in workers):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    # Messages that did not come through `submit` are checked by the worker against its own roots.
    outside = clips(tmp_path / "outside", 1)
    anywhere = svc_settings.model_copy(update=dict(allowed_roots=[Path("/")]))
    job_id = enqueue(store, anywhere, [outside[0].parent], root / "smuggled-out", outside, job_options(anywhere))
    final = wait_job(store, job_id)
    assert (final["state"], final["failed"]) == ("done", 1)
    [record] = read_output(root / "smuggled-out")
    assert "outside the allowed roots" in record["error"]
    job_id = enqueue(store, anywhere, [root / "shared"], tmp_path / "out", [root / "shared" / "x.mp4"],
                     job_options(anywhere))  # fmt: skip
    final = wait_job(store, job_id)
    assert final["state"] == "failed" and "outside the allowed roots" in final["error"]
    assert not (tmp_path / "out").exists()
    # A prompt is a name, never a path a message could point anywhere on the worker.
    quiet = svc_settings.model_copy(update=dict(queue="nobody-reads"))
    video = str(root / "shared" / "clip.mp4")
    job_id = enqueue(store, quiet, [root / "shared"], root / "prompt-out", [Path(video)], job_options(quiet))
    hostile = {"prompt": "../../etc/x@1"}
    # A message whose options are not its job's is refused, and the job is left alone ...
    app.send_task(CHUNK_TASK, args=[job_id, 0, [video], str(root / "prompt-out"), hostile], queue="captioner")
    deadline = time.monotonic() + 30
    while "its options are not the job's" not in "".join(w.log.read_text() for w in workers):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert store.state(job_id) == "queued"
    # ... and a job record planted with them fails as a whole, naming the reason.
    store.redis.hset(store.key(job_id), "options", json.dumps(hostile))
    app.send_task(CHUNK_TASK, args=[job_id, 0, [video], str(root / "prompt-out"), hostile], queue="captioner")
    final = wait_job(store, job_id)
    assert final["state"] == "failed" and "is not a prompt name" in final["error"], final


def test_status_shows_progress_and_cancel_stops_the_job(workers, svc_settings, store, root):
    folder = root / "cancelled"
    videos = clips(folder, 8)
    out = root / "cancelled-out"
    job_id = submit([folder], out, svc_settings.model_copy(update=dict(chunk_size=1)))
    deadline = time.monotonic() + 120
    while (current := status(store, job_id))["ok"] < 1:
        assert time.monotonic() < deadline, current
        time.sleep(0.2)
    assert current["state"] == "running" and current["pending"] > 0 and current["timings"]["started_at"]
    after = cancel(store, job_id)
    assert after["state"] == "cancelled"
    deadline = time.monotonic() + 60
    while status(store, job_id)["active"] or queued(store.redis):  # running chunks stop, queued ones go
        assert time.monotonic() < deadline, status(store, job_id)
        time.sleep(0.3)
    time.sleep(2)
    done = len(read_output(out))
    assert 1 <= done < len(videos)
    time.sleep(3)
    assert len(read_output(out)) == done  # nothing more is captioned
    assert status(store, job_id)["state"] == "cancelled"
    with pytest.raises(JobNotFound):
        status(store, "no-such-job")


def test_nightly_job_captions_only_new_videos_and_writes_a_dated_summary(workers, svc_settings, store, root):
    from captioner.service.celery_app import app_for

    watched = root / "watched"
    first = clips(watched, 3)
    out = root / "nightly-out"

    def night() -> dict:
        before = set(store.redis.keys("captioner:job:{*}"))
        app_for(svc_settings).send_task(NIGHTLY_TASK, queue="captioner")  # what beat sends
        deadline = time.monotonic() + 120
        while not (new := set(store.redis.keys("captioner:job:{*}")) - before):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        return wait_job(store, new.pop().split("{")[1].rstrip("}"))

    tonight = night()
    assert (tonight["videos"], tonight["ok"], tonight["skipped"]) == (3, 3, 0)
    assert tonight["folders"] == [str(watched)]  # the missing watched folder is left out, not fatal
    dated = list(out.glob("nightly-*.json"))
    assert len(dated) == 1 and json.loads(dated[0].read_text())["ok"] == 3
    newcomer = write_clips(watched / "new", 1, seconds=1, fps=10, width=128, height=72)[0]
    (watched / "._new.mp4").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))  # macOS metadata, not a video
    copying = night()  # the newcomer was written moments ago: it may still be copying
    assert (copying["videos"], copying["ok"], copying["skipped"]) == (3, 0, 3)
    assert (copying["settling"], copying["ignored"]) == (1, 1)
    settled(newcomer)
    tomorrow = night()
    assert (tomorrow["videos"], tomorrow["ok"], tomorrow["skipped"], tomorrow["settling"]) == (4, 1, 3, 0)
    assert json.loads(dated[0].read_text())["ok"] == 1  # same day: the dated summary is the latest run's
    one_record_each(out, [*first, newcomer])


def test_beat_sends_the_nightly_task_on_its_crontab(beat, server):
    proc, log = beat
    client = redis.Redis(port=server.port)
    deadline = time.monotonic() + 75  # "* * * * *": within a minute of starting
    while not client.llen("beat-probe"):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    message = json.loads(client.lindex("beat-probe", 0))
    assert message["headers"]["task"] == NIGHTLY_TASK
    assert message["content-type"] == "application/json"


def test_sigkill_mid_chunk_is_sent_on_by_heartbeats(workers, svc_settings, store, root, worker_env):
    """A SIGKILLed worker's chunks go to another worker once its heartbeat has been silent for
    DEAD_AFTER s, long before Celery's visibility timeout; every video ends with exactly one record."""
    folder = root / "killed"
    videos = clips(folder, 12)  # 4 chunks: each worker holds 2, so the victim surely has one
    out = root / "killed-out"
    job_id = submit([folder], out, svc_settings.model_copy(update=dict(chunk_size=3)))
    victim, survivor = workers
    deadline = time.monotonic() + 120
    while True:  # wait until the victim is half-way through a chunk (records written, not yet visible)
        current = status(store, job_id)
        held = [int(index) for index, host in current["active"].items() if host == victim.name]
        partial = [
            tmp for index in held for tmp in (out / "parts" / job_id).glob(f"{index:07d}.*.tmp")
            if 1 <= len(tmp.read_text(encoding="utf-8").splitlines()) < 3
        ]
        if partial:
            break
        assert time.monotonic() < deadline, current
        time.sleep(0.1)
    victim.kill()
    victim.stop()  # its orphaned decoder processes
    killed = time.monotonic()
    assert status(store, job_id)["pending"] > 0  # the job's state outlived its worker
    final = wait_job(store, job_id, timeout=120)
    recovered_s = time.monotonic() - killed
    assert final["state"] == "done" and (final["ok"], final["failed"], final["pending"]) == (12, 0, 0), final
    one_record_each(out, videos)
    assert not list((out / "parts").glob(f"{job_id}/*"))  # merged into parts/JOB.jsonl, leftovers gone
    assert sum(final["workers"].values()) == 4 and final["workers"].get(survivor.name, 0) >= 1
    assert "stopped beating; chunk sent again" in survivor.log.read_text()
    assert recovered_s < VISIBILITY / 4  # heartbeats, not the broker's visibility timeout
    # Restarted, as a supervisor would, for the tests that follow.
    workers[0] = Worker("w1", worker_env, victim.log.parent, victim.metrics_port)
    workers[0].wait_ready()


def test_redis_restart_during_a_job_loses_nothing(workers, svc_settings, store, server, root, worker_env):
    survivor = workers[1]
    assert survivor.proc.poll() is None
    folder = root / "restart"
    videos = clips(folder, 7)  # 7 chunks: more than the two workers hold (2 each), so some wait in the queue
    out = root / "restart-out"
    job_id = submit([folder], out, svc_settings.model_copy(update=dict(chunk_size=1)))
    deadline = time.monotonic() + 120
    while status(store, job_id)["ok"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    waiting = queued(store.redis)
    server.stop()
    assert waiting >= 1  # chunks were waiting in the queue when Redis went down
    result = subprocess.run([*CLI, "submit", str(folder), "--out", str(out)], env=worker_env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "cannot reach Redis" in result.stderr
    time.sleep(3)
    server.start()
    final = wait_job(store, job_id, timeout=180)
    assert final["state"] == "done" and (final["ok"], final["failed"]) == (7, 0), final
    one_record_each(out, videos)
    assert survivor.proc.poll() is None  # it reconnected rather than dying
    assert "Connection to broker lost" in survivor.log.read_text()
