"""`captioner run`: every new video under some folders captioned into an output folder.

folders -> `sources.discover` -> `planning.make_plan` -> each file's windows (`frames.plan_clips`)
-> what is still to do, per window (`windowed.pending_clips`, read from the output folder) ->
`clips.caption_videos` (frames -> prompt -> engine -> records) -> `captions.jsonl`, compacted, and
`summary.json`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from captioner.adapters import Adapter
from captioner.captioning.clips import OnRecord, caption_videos, decode_workers
from captioner.captioning.stats import CaptionStats
from captioner.captioning.windowed import pending_clips
from captioner.config import Settings
from captioner.engine import Engine
from captioner.frames import FrameDecoder, plan_clips
from captioner.planning import Plan, check_engine, engine_concurrency, load_engine, make_plan
from captioner.records import CAPTIONS_FILE, RecordWriter, compact, ok_videos, read_output, write_summary
from captioner.sources import Found, discover, video_bytes, video_id, wait_until_settled

log = logging.getLogger(__name__)


def pending_work(videos: list[Path], out_dir: Path, plan: Plan) -> dict[Path, tuple[Adapter, ...]]:
    """Each video still to caption whole, with the plan's adapters it has no whole-file `ok` record for in `out_dir`.

    Windows are not planned here: `caption_videos` plans them for the paths it is given (and
    `caption_folders` resumes window by window through `windowed.pending_clips`).

    A video is matched to its records by the exact bytes of its path (`sources.video_bytes`), so a
    name that only shows like another's (`video_id`) is not taken as done by the other's record.
    """
    records = read_output(out_dir)
    done = {adapter: ok_videos(records, plan.key_for(adapter)) for adapter in plan.adapters}
    work: dict[Path, tuple[Adapter, ...]] = {}
    for video in videos:
        identity = video_bytes(video)
        needed = tuple(adapter for adapter in plan.adapters if identity not in done[adapter])
        if needed:
            work[video] = needed
    return work


def settled_videos(folders: list[Path], settings: Settings, wait_settled: bool) -> Found:
    """The videos under `folders`; files still being written are waited for (`wait_settled`) or taken with a warning."""
    found = discover(folders, settings.settle_seconds)  # first: the cheapest check, and the commonest mistake
    if found.settling and wait_settled:
        wait_until_settled(found, settings.settle_seconds)
    elif found.settling:
        log.warning(
            "%d files were modified in the last %g s and may still be copying (captioned anyway; "
            "--wait-settled waits for them): %s",
            len(found.settling), settings.settle_seconds, ", ".join(video_id(p) for p in found.settling[:5]),
        )  # fmt: skip
        found.videos = sorted(found.videos + found.settling)
    return found


def caption_folders(
    folders: list[Path],
    out_dir: Path,
    settings: Settings,
    engine: Engine | None = None,
    on_start: Callable[[int, int], None] = lambda captions, skipped: None,
    on_record: OnRecord = lambda record: None,
    wait_settled: bool = False,
) -> dict[str, Any]:
    """Caption every new video under `folders` into `out_dir`; return the summary.

    Clips (a file, or each window of a long take: `plan.windows`) with an `ok` record for the same
    model, adapter and prompt are skipped; failed ones are retried. With several adapters
    (`settings.compare_adapters`), a clip gets a record from each adapter it has none from.
    `on_start(captions, skipped)` hears how many records are to be written and how many videos need
    none. `engine` lets a long-lived process (a worker) reuse its loaded
    engine. Files modified within `settings.settle_seconds` are captioned with a warning, or first
    waited for (`wait_settled`).
    """
    found = settled_videos(folders, settings, wait_settled)
    plan = make_plan(settings)
    if engine is not None:
        check_engine(engine, plan)
    captions = out_dir / CAPTIONS_FILE
    stats = CaptionStats(videos=len(found.videos), ignored=len(found.ignored))

    def engine_factory() -> Engine:
        loaded = engine
        if loaded is None:
            loaded = load_engine(plan)  # only now: the first clips are already decoding
            stats.engine_load_s = loaded.load_s
        stats.concurrency = engine_concurrency(loaded, plan)
        return loaded

    # Pebble starts the processes with the first task: none when nothing is probed or decoded.
    with FrameDecoder(plan.frame_spec, decode_workers(plan, found.videos), settings.decode_timeout) as decoder:
        planned = plan_clips(found.videos, plan.windows, decoder)
        todo = pending_clips(planned, read_output(out_dir), plan)
        stats.windowed = sum(1 for clips in planned.values() if any(clip.window for clip in clips))
        stats.skipped = len(planned) - len({clip.path for clip in todo})
        on_start(sum(len(needed) for needed in todo.values()), stats.skipped)
        if todo:
            with RecordWriter(captions) as writer:
                caption_videos(list(todo), writer, plan, engine_factory, stats, on_record, decoder=decoder, needs=todo)
            compact(captions)
    summary = stats.summary(plan)
    write_summary(out_dir, summary)
    return summary
