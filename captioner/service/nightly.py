"""The nightly job: the watched folders' new videos, queued once a night by Celery beat."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from captioner.config import Settings
from captioner.service.errors import SubmitError
from captioner.service.jobs import finish_job
from captioner.service.submit import allowed_path, check_submission, enqueue, job_options
from captioner.sources import Found

if TYPE_CHECKING:
    from captioner.service.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def nightly(runtime: WorkerRuntime) -> str | None:
    """Queue the nightly job: videos under the watched folders without an `ok` record for this
    worker's model, adapter and prompt. Its summary is also written as `nightly-YYYY-MM-DD.json`.

    Returns the job id (None when nothing is configured). Folders that cannot be used are logged
    and left out; the others still run.
    """
    settings = runtime.settings
    if not settings.nightly_folders or settings.nightly_out is None:
        log.warning("nightly: no nightly_folders / nightly_out configured; nothing to do")
        return None
    today = datetime.now(ZoneInfo(settings.timezone)).date().isoformat()
    try:
        out_dir = allowed_path(Path(settings.nightly_out), settings.writable_roots, "output")
    except SubmitError as exc:
        log.error("nightly: %s; nothing queued", exc)
        return None
    folders, videos, left_out = watched_videos(settings, out_dir)
    options = job_options(settings)
    plan = runtime.plan(options)
    runtime.store.ensure_index(out_dir, plan.key)
    todo = [video for video, done in zip(videos, runtime.store.done(out_dir, plan.key, videos)) if not done]
    job_id = enqueue(
        runtime.store, settings, folders, out_dir, todo, options,
        skipped=len(videos) - len(todo), summary=f"nightly-{today}.json", left_out=left_out,
    )  # fmt: skip
    if not todo:
        finish_job(runtime.store, job_id, plan.versions(), settings.writable_roots)
    log.info("nightly %s: job %s, %d of %d videos to caption", today, job_id, len(todo), len(videos))
    return job_id


def watched_videos(settings: Settings, out_dir: Path) -> tuple[list[Path], list[Path], Found]:
    """The usable watched folders, their videos, and the files left out (a folder that cannot be used is logged)."""
    folders: list[Path] = []
    videos: list[Path] = []
    left_out = Found()  # hidden and AppleDouble files; files still being copied wait for tomorrow
    for folder in settings.nightly_folders:
        try:
            checked, _, found = check_submission([folder], out_dir, settings)
        except SubmitError as exc:
            log.warning("nightly: %s; folder left out tonight", exc)
            continue
        folders += checked
        videos += found.videos
        left_out.ignored += found.ignored
        left_out.settling += found.settling
    return folders, videos, left_out
