"""Finishing a job once its chunks are all in: merging its part files, its summary, its final state.

The worker that publishes a job's last chunk finishes it; if that fails (a full disk, a read-only
folder, Redis away), every worker's heartbeat tries again (`finish_settled`) until it works or
`FINISH_ATTEMPTS` have failed, when the job is marked failed with the reason. Finishing twice is
harmless: the state is checked under the output folder's lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captioner.records import merge_parts, write_summary
from captioner.service.done_index import folder_key
from captioner.service.errors import SubmitError
from captioner.service.message import JobRecord, MessageRefused, is_job_id
from captioner.service.status import job_summary, status
from captioner.service.store import FINISHED, JobStore
from captioner.service.submit import JobOptions, allowed_path

log = logging.getLogger(__name__)

FINISH_ATTEMPTS = 10  # heartbeats apart: minutes for a read-only or full output folder to come back


def finish_job(store: JobStore, job_id: str, versions: dict[str, Any], roots: list[Path]) -> None:
    """Merge the job's part files into one, write its summary, mark it done. O(job), once.

    Serialized per output folder by a Redis lock. The job's output folder and summary name are read
    from Redis, so they are checked again (`JobRecord`, the allowed `roots`); a job whose record
    fails the checks is marked failed, and nothing is written. Raises what writing raises.
    """
    fields = store.get(job_id) if is_job_id(job_id) else None
    if fields is None or fields.get("state") in FINISHED:
        return
    try:
        job = JobRecord.read(fields)
        out_dir = allowed_path(Path(job.out), roots, "output")
    except (MessageRefused, SubmitError) as exc:
        log.error("job %s: %s; marked failed", job_id, exc)
        store.finish(job_id, "failed", str(exc))
        return
    with store.lock("out:" + folder_key(out_dir)):
        if store.state(job_id) in FINISHED:
            return
        started = time.perf_counter()
        records = merge_parts(out_dir, job_id)
        summary = job_summary(status(store, job_id), versions)
        summary["finish_s"] = round(time.perf_counter() - started, 3)  # merging the parts: O(job), once
        out_dir.mkdir(parents=True, exist_ok=True)
        write_summary(out_dir, summary)
        if job.summary:  # the job's own name for it too (the nightly job's dated one)
            write_summary(out_dir, summary, name=job.summary)
        store.finish(job_id, "done")
    log.info(
        "job %s done: %d videos, %d ok, %d failed, %d skipped (%d records merged in %.1f s)",
        job_id, summary["videos"], summary["ok"], summary["failed"], summary["skipped"], records,
        time.perf_counter() - started,
    )  # fmt: skip


def finish_settled(store: JobStore, roots: list[Path], versions_of: Callable[[JobOptions], dict[str, Any]]) -> int:
    """Finish every unfinished job whose chunks are all in (a finishing attempt failed before); return how many.

    `versions_of` gives the versions a job's options make (the worker's plan). After
    `FINISH_ATTEMPTS` failed attempts the job is marked failed with the last reason.
    """
    finished = 0
    for job_id in store.unfinished():
        fields = store.get(job_id) if is_job_id(job_id) else None
        if fields is None or fields.get("state") in FINISHED:
            store.forget_unfinished(job_id)
            continue
        if not store.complete(job_id):
            continue
        try:
            options = JobOptions.model_validate(JobRecord.read(fields).options)
            finish_job(store, job_id, versions_of(options), roots)
            finished += 1
        except Exception as exc:  # noqa: BLE001 - whatever stopped it, try again next beat, then give up
            attempts = store.finish_failed(job_id)
            reason = f"finishing failed {attempts} times: {type(exc).__name__}: {exc}"
            log.warning("job %s: %s", job_id, reason)
            if attempts >= FINISH_ATTEMPTS:
                store.finish(job_id, "failed", reason)
    return finished
