"""Captioning as a service: jobs of video folders, split into chunks and queued for Celery workers.

- `submit`: the path policy, job options, and queueing a job's chunks (`submit`, `enqueue`);
  `chunks`: how many videos a chunk holds, and how many chunks a worker holds at once.
- `store`: job state, claims and heartbeats in Redis (`JobStore`), with its Lua scripts
  (`redis_scripts`) and the output folders' done-index (`done_index`).
- `status`: a job's status, `cancel`, `wait`, and its `summary.json`.
- `runtime`: the worker process (`WorkerRuntime`: engine, decoders, heartbeat), its engine shared
  by its chunk threads (`shared_engine`) and its Prometheus metrics (`prometheus`).
- `message`: what a worker reads from the broker and Redis, checked (`ChunkMessage`, `JobRecord`);
  `unacked`: chunks a Redis restart left among the broker's unacknowledged messages, sent again.
- `chunk`: one chunk of a job (`run_chunk`); `jobs`: finishing a job (`finish_job`, `finish_settled`);
  `nightly`: the nightly job.
- `celery_app` and `tasks`: the Celery app and its thin tasks; `workers/` is only the entry point.

A worker runs a chunk with the same captioning functions as `captioner run` (`captioner.captioning`)
and publishes its records as a part file of the output folder (see `captioner.records`).
"""

from captioner.service.chunk import run_chunk
from captioner.service.chunks import chunk_size, chunks_in_flight
from captioner.service.done_index import video_key
from captioner.service.errors import JobNotFound, RetryChunk, SubmitError
from captioner.service.jobs import finish_job, finish_settled
from captioner.service.nightly import nightly
from captioner.service.runtime import WorkerRuntime
from captioner.service.status import cancel, job_summary, status, wait
from captioner.service.store import FINISHED, JobStore, connect, ping, secure_url
from captioner.service.submit import JobOptions, allowed_path, check_submission, enqueue, job_options, submit

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
    "finish_settled",
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
