"""Submitting a job: the path policy, the job's options, and its chunks on the queue.

`submit` checks the folders (allowed roots, `..`, escaping symlinks, missing or unreadable) and
Redis before anything is queued, records the job and sends one Celery task per chunk.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from captioner.config import Settings
from captioner.prompts import PromptError, check_prompt_ref, load_prompt
from captioner.service.celery_app import CHUNK_PRIORITY, CHUNK_TASK, app_for
from captioner.service.chunks import chunk_size
from captioner.service.errors import SubmitError
from captioner.service.message import chunk_digest, new_job_id
from captioner.service.store import JobStore
from captioner.sources import Found, SourceError, check_folder, find_videos, video_id

log = logging.getLogger(__name__)


class JobOptions(BaseModel):
    """What a job fixes for every chunk; model, adapter and tier are the worker's own.

    Validated again on the worker, since a message on the broker need not come from `submit`.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    sampling: Literal["default", "deterministic"] | None = None
    frames: int | None = Field(None, gt=0, le=256)

    @field_validator("prompt")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_prompt_ref(value)  # never a path: a message may come from anyone who can reach the broker
            except PromptError as exc:
                raise ValueError(str(exc)) from None
        return value

    def apply(self, settings: Settings) -> Settings:
        """`settings` with this job's options in force.

        The queue captions whole files (`windows = none`) until its chunks, counts and done-index
        are kept per window (issue 21): a chunk counts a video once and the done-index knows
        whole-file records only, so windowed records would be miscounted there.
        """
        return settings.model_copy(update={**self.model_dump(exclude_none=True), "windows": "none"})


def allowed_path(path: Path, roots: list[Path], what: str) -> Path:
    """`path` made absolute, if it (with symlinks resolved) lies under one of `roots`; else SubmitError."""
    if ".." in path.parts:
        raise SubmitError(f"{path}: '..' is not allowed in {what} paths")
    absolute = Path(os.path.abspath(path.expanduser()))
    real = absolute.resolve()
    for root in roots:
        if real.is_relative_to(root.expanduser().resolve()):
            return absolute
    shown = ":".join(str(root) for root in roots) or "(none)"
    if real != absolute:
        raise SubmitError(f"{path}: resolves to {real}, outside the allowed roots ({shown}; CAPTIONER_ALLOWED_ROOTS)")
    raise SubmitError(f"{path}: outside the allowed roots ({shown}; set CAPTIONER_ALLOWED_ROOTS)")


def check_videos(videos: list[Path], roots: list[Path]) -> None:
    """SubmitError for the first video that is, or lies in a folder that is, a symlink out of `roots`.

    Each folder is resolved once and each file checked with one `lstat`, so a million videos in
    a thousand folders cost a million `lstat`s, not a million path resolutions.
    """
    folders: dict[Path, None] = {}
    for video in videos:
        if video.is_symlink():
            allowed_path(video, roots, "video")
        folders.setdefault(video.parent)
    for folder in folders:
        allowed_path(folder, roots, "video")


def check_writable(out_dir: Path) -> None:
    """SubmitError unless `out_dir` is a folder this process can write, or can be made in one.

    Checked before queueing so that a read-only mount (in the compose setup, a folder under the
    videos mount) is refused at once rather than failing every chunk on the workers.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise SubmitError(f"{out_dir}: output is not a folder")
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is read-only or not writable" if existing == out_dir else f"cannot be made: {existing} is not writable"
        raise SubmitError(f"{out_dir}: the output folder {why}")


def check_submission(folders: list[Path], out: Path, settings: Settings) -> tuple[list[Path], Path, Found]:
    """Check the folders and the output folder; return them made absolute and the videos found.

    Files modified within `settings.settle_seconds` are left for a later job (`Found.settling`):
    a queued job must never caption a half-copied file. Raises `SubmitError` naming the first
    problem: a path outside the allowed roots (after resolving symlinks), `..`, a missing,
    unreadable or empty folder, or a video that is a symlink pointing outside the roots.
    """
    if not folders:
        raise SubmitError("no folders given")
    roots = settings.allowed_roots
    checked = []
    for folder in folders:
        absolute = allowed_path(Path(folder), roots, "folder")
        try:
            check_folder(absolute)
        except SourceError as exc:
            raise SubmitError(str(exc)) from None
        checked.append(absolute)
    out_dir = allowed_path(Path(out), settings.writable_roots, "output")
    check_writable(out_dir)
    if video_id(out_dir) != str(out_dir):  # job state and task messages carry it as text
        raise SubmitError(f"{video_id(out_dir)}: the output folder's name must be valid UTF-8")
    found = find_videos(checked, settings.settle_seconds)
    for problem in found.unreadable:
        raise SubmitError(f"unreadable folder {problem}")
    for folder in checked:
        if not any(video.is_relative_to(folder) for video in found.videos + found.settling):
            raise SubmitError(found.describe_empty(folder))
    check_videos(found.videos, roots)
    return checked, out_dir, found


def job_options(settings: Settings) -> JobOptions:
    """The job options from `settings`, with the prompt pinned to its current version."""
    try:
        spec = load_prompt(settings.prompt, settings.prompts_dir)
    except PromptError as exc:
        raise SubmitError(str(exc)) from None
    return JobOptions(prompt=f"{spec.name}@{spec.version}", sampling=settings.sampling, frames=settings.frames)


def submit(folders: list[Path], out: Path, settings: Settings) -> str:
    """Check and queue a job for every video under `folders`; return its id.

    Everything is checked (paths, prompt, Redis) before the first message is sent.
    """
    checked, out_dir, found = check_submission(folders, out, settings)
    if not found.videos:
        raise SubmitError(
            f"all {len(found.settling)} videos were modified in the last {settings.settle_seconds:g} s and may still "
            "be copying; nothing was queued: submit again when the copy is done"
        )
    options = job_options(settings)
    store = JobStore.connect(settings, patient=False)
    try:
        store.ping()
    except SubmitError as exc:
        raise SubmitError(f"{exc}; nothing was queued") from None
    return enqueue(store, settings, checked, out_dir, found.videos, options, left_out=found)


def enqueue(
    store: JobStore,
    settings: Settings,
    folders: list[Path],
    out_dir: Path,
    videos: list[Path],
    options: JobOptions,
    skipped: int = 0,
    summary: str = "",
    left_out: Found | None = None,
) -> str:
    """Record a job and send its chunks; `skipped` videos were found done before queueing.

    `left_out` counts what discovery left out (`ignored`, `settling`) in the job's status.
    A job without videos has no chunk to finish it: the caller finishes it (`jobs.finish_job`).
    """
    job_id = new_job_id()
    size = chunk_size(settings)
    chunks = [[str(v) for v in videos[i : i + size]] for i in range(0, len(videos), size)]
    store.create(
        job_id,
        {
            "id": job_id,
            "state": "queued",
            "out": str(out_dir),
            "folders": [video_id(f) for f in folders],
            "options": options.model_dump(exclude_none=True),
            "queue": settings.queue,
            "summary": summary,
            "videos": len(videos) + skipped,
            "chunks": len(chunks),
            "chunk_size": size,
            "ok": 0,
            "failed": 0,
            "skipped": skipped,
            "ignored": len(left_out.ignored) if left_out else 0,
            "settling": len(left_out.settling) if left_out else 0,
            "output_tokens": 0,
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "busy_s": 0,
            "submitted_at": repr(time.time()),
        },
        [chunk_digest(chunk) for chunk in chunks],
    )
    send_chunks(store, settings, job_id, chunks, out_dir, options)
    log.info("job %s: %d videos in %d chunks of up to %d -> %s", job_id, len(videos), len(chunks), size, out_dir)
    return job_id


def send_chunks(
    store: JobStore, settings: Settings, job_id: str, chunks: list[list[str]], out_dir: Path, options: JobOptions
) -> None:
    """Send one task per chunk of the recorded job; if the broker fails, mark the job failed (`SubmitError`)."""
    app = app_for(settings)
    try:
        with app.producer_or_acquire() as producer:
            for index, chunk in enumerate(chunks):
                app.send_task(
                    CHUNK_TASK,
                    args=[job_id, index, chunk, str(out_dir), options.model_dump(exclude_none=True)],
                    queue=settings.queue,
                    priority=CHUNK_PRIORITY,
                    producer=producer,
                )
    except Exception as exc:  # noqa: BLE001 - whatever kombu raises, the chunks sent must not run
        store.finish(job_id, "failed", f"queueing failed: {exc}")
        raise SubmitError(
            f"queueing failed after the job was recorded ({exc}); job {job_id} is marked failed"
        ) from None
