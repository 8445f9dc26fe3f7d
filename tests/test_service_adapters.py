"""A worker comparing adapters (`CAPTIONER_COMPARE_ADAPTERS`): real Redis, a real Celery worker, the real vLLM engine.

A plan that mixes the base model with adapters warms the base model's prompt prefix apart
(`warm_prefix(prompt, with_adapter=False)`) and names each clip's adapter, through the worker's
`SharedEngine`; every video gets one record per adapter, in one job.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from captioner.records import dataset_files
from captioner.service import JobStore, submit
from captioner.sources import video_id
from tests.service_support import Worker, clips, free_port, wait_job, worker_environment


@pytest.fixture(scope="module")
def comparing_worker(home, server, root, tmp_path_factory):
    """One `captioner worker` on the demo adapter, comparing it with the base model (`none`)."""
    env = worker_environment(
        home, server, root,
        tier="cpu", adapter="demo", compare_adapters='["none"]', sampling="deterministic", chunk_size="2",
        heartbeat_s="1", dead_after_s="10", job_ttl="600",
        # One engine beside the test session's: a small KV cache is plenty for the demo model.
        profile__kv_cache_gib="0.25",
    )  # fmt: skip
    worker = Worker("compare", env, tmp_path_factory.mktemp("worker-logs"), free_port())
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def test_a_worker_comparing_adapters_writes_one_ok_record_per_adapter(comparing_worker, settings, server, root):
    submitter = settings.model_copy(update={"broker_url": server.url, "allowed_roots": [root], "chunk_size": 2})
    store = JobStore.connect(submitter, patient=True)
    folder = root / "compare"
    videos = clips(folder, 3)  # two chunks
    out = root / "compare-out"
    job_id = submit([folder], out, submitter)
    final = wait_job(store, job_id, timeout=420)
    log = comparing_worker.log.read_text(errors="replace")
    assert final["state"] == "done", (final, log[-3000:])
    assert "TypeError" not in log and "retrying" not in log, log[-3000:]  # the first chunk did not fail
    records = defaultdict(list)
    for path in dataset_files(out):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            records[record["video"]].append(record)
    assert set(records) == {video_id(video) for video in videos}
    for video in videos:
        by_adapter = {record["adapter"]: record for record in records[video_id(video)]}
        assert len(records[video_id(video)]) == len(by_adapter) == 2  # one record per adapter, each once
        assert set(by_adapter) == {"demo", None}  # the demo adapter's and the base model's
        assert all(record["status"] == "ok" and record["caption"].strip() for record in by_adapter.values())
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["job"] == job_id and summary["adapters"] == ["demo", None]
