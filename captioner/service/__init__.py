"""Captioning as a service: jobs of video folders, split into chunks and queued for Celery workers.

- `submit`: the path policy, job options, and queueing a job's chunks (`submit`, `enqueue`).
- `store`: job state, the output folders' done-index, claims and heartbeats in Redis (`JobStore`).
- `status`: a job's status, `cancel`, `wait`, and its `summary.json`.
- `worker`: the worker process (`WorkerRuntime`), a chunk (`run_chunk`), finishing a job, `nightly`.
- `celery_app` and `tasks`: the Celery app and its thin tasks; `workers/` is only the entry point.

A worker runs a chunk with the same pipeline functions as `captioner run` and publishes its
records as a part file of the output folder (see `captioner.outputs`).
"""

from captioner.service.errors import JobNotFound, RetryChunk, SubmitError
from captioner.service.status import cancel, job_summary, status, wait
from captioner.service.store import FINISHED, JobStore, connect, ping, secure_url, video_key
from captioner.service.chunks import chunk_size, chunks_in_flight
from captioner.service.submit import JobOptions, allowed_path, check_submission, enqueue, job_options, submit
from captioner.service.worker import WorkerRuntime, finish_job, nightly, run_chunk

__all__ = [
    "FINISHED",
    "JobNotFound",
    "JobOptions",
    "JobStore",
    "RetryChunk",
    "SubmitError",
    "WorkerRuntime",
    "allowed_path",
    "cancel",
    "check_submission",
    "chunk_size",
    "chunks_in_flight",
    "connect",
    "enqueue",
    "finish_job",
    "job_options",
    "job_summary",
    "nightly",
    "ping",
    "run_chunk",
    "secure_url",
    "status",
    "submit",
    "video_key",
    "wait",
]
