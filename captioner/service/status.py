"""A job's status, cancelling it, waiting for it, and its `summary.json`.

Each call reads a fixed number of Redis keys, so `status` is as fast for a million videos as for ten.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Callable

from captioner.service.errors import JobNotFound
from captioner.service.store import FINISHED, JobStore


def _iso(epoch: str | None) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(float(epoch), timezone.utc).isoformat(timespec="seconds")


def status(store: JobStore, job_id: str) -> dict[str, Any]:
    """The job's state, counts, timings and workers, as JSON-ready data. Raises `JobNotFound`."""
    job = store.get(job_id)
    if job is None:
        raise JobNotFound(f"job {job_id}: unknown (never submitted, or expired after job_ttl)")
    pipe = store.redis.pipeline(transaction=False)
    pipe.scard(store.key(job_id, "chunks"))
    pipe.hgetall(store.key(job_id, "workers"))
    chunks_done, workers = pipe.execute()
    active = {field.split(":", 1)[1]: entry["host"] for field, entry in store.running(job_id).items()}
    number = lambda name: int(job.get(name) or 0)  # noqa: E731
    ok, failed, skipped, videos = number("ok"), number("failed"), number("skipped"), number("videos")
    submitted = float(job["submitted_at"])
    started = float(job["started_at"]) if job.get("started_at") else None
    finished = float(job["finished_at"]) if job.get("finished_at") else None
    end = finished or time.time()
    running_s = end - started if started else 0.0
    captioned = ok + failed
    return {
        "job": job_id,
        "state": job["state"],
        "videos": videos,
        "ok": ok,
        "failed": failed,
        "skipped": skipped,
        "pending": max(0, videos - ok - failed - skipped),
        "ignored": number("ignored"),
        "settling": number("settling"),
        "chunks": number("chunks"),
        "chunks_done": chunks_done,
        "out": job["out"],
        "folders": json.loads(job["folders"]),
        "options": json.loads(job["options"]),
        "error": job.get("error"),
        "timings": {
            "submitted_at": _iso(job["submitted_at"]),
            "started_at": _iso(job.get("started_at")),
            "finished_at": _iso(job.get("finished_at")),
            "queued_s": round((started or end) - submitted, 3),
            "running_s": round(running_s, 3),
            "busy_s": round(float(job.get("busy_s") or 0), 3),
            "videos_per_s": round(captioned / running_s, 4) if captioned and running_s else 0.0,
            "output_tokens_per_s": round(number("output_tokens") / running_s, 2) if running_s else 0.0,
        },
        "output_tokens": number("output_tokens"),
        "workers": {name: int(n) for name, n in workers.items()},
        "active": active,  # chunk -> worker host, for chunks being worked on now
    }


def cancel(store: JobStore, job_id: str) -> dict[str, Any]:
    """Cancel the job: chunks not started are skipped, running ones stop after their current clip."""
    if store.get(job_id) is None:
        raise JobNotFound(f"job {job_id}: unknown (never submitted, or expired after job_ttl)")
    store.finish(job_id, "cancelled")
    return status(store, job_id)


def wait(store: JobStore, job_id: str, poll_s: float = 1.0, on_poll: Callable[[dict], None] = lambda s: None) -> dict:
    """Poll until the job is finished; return its final status."""
    while True:
        current = status(store, job_id)
        on_poll(current)
        if current["state"] in FINISHED:
            return current
        time.sleep(poll_s)


def job_summary(current: dict[str, Any], versions: dict[str, Any]) -> dict[str, Any]:
    """The job's `summary.json`: the fields of `captioner run`'s summary, for the whole job."""
    timings = current["timings"]
    return {
        "job": current["job"],
        "videos": current["videos"],
        "ok": current["ok"],
        "failed": current["failed"],
        "skipped": current["skipped"],
        "ignored": current["ignored"],
        "settling": current["settling"],
        "seconds": timings["running_s"],
        "busy_s": timings["busy_s"],
        "videos_per_s": timings["videos_per_s"],
        "output_tokens_per_s": timings["output_tokens_per_s"],
        "output_tokens": current["output_tokens"],
        "workers": current["workers"],
        "submitted_at": timings["submitted_at"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folders": current["folders"],
        **versions,
    }
