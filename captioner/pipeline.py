"""The captioning pipeline: folders -> frames -> prompts -> engine -> records.

`run` captions every video that has no `ok` record for the same model, adapter and prompt yet
(planned by `planning.make_plan`). Decoding runs in separate processes ahead of the engine, so the
next batch is decoded while the current one is captioned. With several adapters, each clip is
decoded once and captioned with every adapter it still needs, in the same engine batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

from captioner.config import Settings
from captioner.frames import ClipFrames, FrameDecoder, FrameError
from captioner.outputs import CAPTIONS_FILE, CaptionRecord, RecordWriter, compact, ok_videos, read_output, write_summary
from captioner.planning import (
    Adapter,
    ConfigError,
    Plan,
    check_engine,
    engine_concurrency,
    load_engine,
    make_plan,
)
from captioner.sizing import concurrency
from captioner.sources import Found, SourceError, find_videos, video_id

log = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "RecordSink",
    "RunStats",
    "caption_clips",
    "caption_videos",
    "discover",
    "pending_work",
    "run",
    "wait_until_settled",
]


class RecordSink(Protocol):
    """Where records go as clips finish: `outputs.RecordWriter` (a run) or `outputs.PartWriter` (a chunk)."""

    def write(self, record: CaptionRecord) -> None: ...


@dataclass
class RunStats:
    """Counters for one run, turned into `summary.json`."""

    videos: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    ignored: int = 0  # hidden and AppleDouble files left out by discovery
    settling: int = 0  # files still being written, left for the next run
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    shareable_prefix_tokens: int = 0
    engine_load_s: float = 0.0
    batches: int = 0  # generate() calls, and the clips they carried
    batch_clips: int = 0
    batch_max: int = 0
    concurrency: dict[str, Any] | None = None  # `engine_concurrency`, once the engine is known
    started: float = field(default_factory=time.perf_counter)

    def add_batch(self, clips: int) -> None:
        """Count one batch handed to the engine."""
        self.batches += 1
        self.batch_clips += clips
        self.batch_max = max(self.batch_max, clips)

    def add(self, record: CaptionRecord, shareable: int) -> None:
        """Count one finished clip."""
        if record.status == "ok":
            self.ok += 1
            self.output_tokens += record.output_tokens
            self.prompt_tokens += record.prompt_tokens
            self.cached_tokens += record.cached_tokens
            self.shareable_prefix_tokens += shareable
        else:
            self.failed += 1

    def summary(self, plan: Plan) -> dict[str, Any]:
        """The figures of `summary.json`."""
        seconds = time.perf_counter() - self.started
        captioned = self.ok + self.failed
        return {
            "videos": self.videos,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "ignored": self.ignored,
            "settling": self.settling,
            "seconds": round(seconds, 3),
            "engine_load_s": round(self.engine_load_s, 3),
            "videos_per_s": round(captioned / seconds, 4) if captioned else 0.0,
            "output_tokens_per_s": round(self.output_tokens / seconds, 2) if captioned else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            # Cached tokens over the prompt prefix the cache can serve (whole KV blocks before the video).
            "prefix_cache_hit_ratio": (
                round(self.cached_tokens / self.shareable_prefix_tokens, 4) if self.shareable_prefix_tokens else None
            ),
            # Clips in flight: computed from memory, reported by vLLM, and the batches actually handed over.
            "concurrency": {
                **(self.concurrency or concurrency(plan.sizing, None)),
                "batches": self.batches,
                "batch_max": self.batch_max,
                "batch_mean": round(self.batch_clips / self.batches, 2) if self.batches else None,
            },
            **plan.versions(),
        }


def discover(folders: list[Path], settle_seconds: float = 0.0) -> Found:
    """All videos under `folders`; `ConfigError` when a folder is missing, unreadable or has none.

    Files modified within `settle_seconds` are in `Found.settling`, not in `Found.videos`.
    """
    try:
        found = find_videos(folders, settle_seconds)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    for problem in found.unreadable:
        log.warning("skipped unreadable folder %s", problem)
    for folder in folders:
        root = Path(folder).resolve()
        if not any(video.is_relative_to(root) for video in found.videos + found.settling):
            raise ConfigError(found.describe_empty(folder))
    return found


def wait_until_settled(found: Found, settle_seconds: float, poll_s: float = 1.0) -> None:
    """Block until no file in `found.settling` has changed for `settle_seconds`; move them to `videos`."""
    while found.settling:
        now = time.time()
        ages = {path: now - _mtime(path) for path in found.settling}
        settled = [path for path, age in ages.items() if age >= settle_seconds]
        found.videos = sorted(found.videos + settled)
        found.settling = [path for path in found.settling if path not in settled]
        if found.settling:
            log.warning("waiting for %d files still being written", len(found.settling))
            time.sleep(min(poll_s, max(0.05, settle_seconds - min(ages[p] for p in found.settling))))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0  # gone: settled as far as waiting goes; the frame stage reports it


def pending_work(videos: list[Path], out_dir: Path, plan: Plan) -> dict[Path, tuple[Adapter, ...]]:
    """Each video still to caption, with the plan's adapters it has no `ok` record for in `out_dir` (read once)."""
    records = read_output(out_dir)
    done = {adapter: ok_videos(records, plan.key_for(adapter)) for adapter in plan.adapters}
    work: dict[Path, tuple[Adapter, ...]] = {}
    for video in videos:
        needed = tuple(adapter for adapter in plan.adapters if video_id(video) not in done[adapter])
        if needed:
            work[video] = needed
    return work


def caption_clips(
    videos: list[Path],
    plan: Plan,
    writer: RecordSink,
    decoder: FrameDecoder,
    engine_factory: Callable[[], Any],
    on_record: Callable[[CaptionRecord], None] = lambda record: None,
    on_batch: Callable[[int], None] = lambda clips: None,
    slots: threading.Semaphore | None = None,
    needs: Mapping[Path, tuple[Adapter, ...]] | None = None,
) -> Iterator[tuple[CaptionRecord, int]]:
    """Decode and caption `videos`, writing one record per clip and adapter as soon as it is known.

    Yields each record with the prompt-prefix tokens the cache could have served for it.

    Up to two batches are decoded ahead of the engine, so decoding overlaps inference. The engine
    takes whatever is decoded when it is free (up to a batch): when the engine is the slower stage,
    clips pile up during each call and batches are full; when decoding is slower, the engine never
    waits for a full batch. Profiles where the engine shares the CPU with decoding wait for full
    batches instead (`wait_for_full_batch`). The engine is created (by `engine_factory`) once the
    first clips are decoding. `slots` bounds the clips decoded ahead across several callers that
    share one engine (a worker's chunks): a clip takes a slot to start decoding and gives it back
    once its records are written.

    With several adapters, `needs` says which adapters each video still needs (default: all of the
    plan's); a clip is decoded once and its frames go to the engine once per adapter, in one batch.
    """
    several = len(plan.adapters) > 1
    # The profile's batch counts requests (clips in flight in the engine): a clip is one per adapter.
    batch_size = max(1, plan.profile.batch_size // len(plan.adapters))
    wanted_adapters = {str(video): adapters for video, adapters in (needs or {}).items()}

    def adapters_of(video: str) -> tuple[Adapter, ...]:
        return wanted_adapters.get(video, plan.adapters)

    queue = iter(videos)
    waiting: list[Path] = []  # taken from the queue, not yet given a slot
    in_flight: dict[Future[ClipFrames], Path] = {}
    ready: list[ClipFrames] = []
    held = 0  # slots this call holds

    def top_up() -> None:
        nonlocal held
        while len(in_flight) + len(ready) < 2 * batch_size:
            video = waiting.pop() if waiting else next(queue, None)
            if video is None:
                return
            if slots is not None:
                # Wait for a slot only when holding none (else two callers could each wait for the
                # other's); otherwise try again once a clip of ours is done.
                if not slots.acquire(blocking=held == 0):
                    waiting.append(video)
                    return
                held += 1
            in_flight[decoder.submit(video)] = video

    def finish(records: list[CaptionRecord]) -> list[CaptionRecord]:
        """Write one clip's records, then give back its slot."""
        nonlocal held
        for record in records:
            writer.write(record)
        if slots is not None:
            slots.release()
            held -= 1
        for record in records:
            on_record(record)
        return records

    try:
        top_up()
        engine = engine_factory()
        engine.warm_prefix(plan.prompt)
        if several and any(adapter.path is None for adapter in plan.adapters):
            engine.warm_prefix(plan.prompt, with_adapter=False)  # the base model's prefix is cached apart
        shareable = engine.shareable_prefix_tokens(plan.prompt)
        sampling = plan.settings.sampling_params()
        wanted = batch_size if plan.profile.wait_for_full_batch else 1
        while in_flight or ready:
            if in_flight:
                # Block until enough is ready; otherwise just collect what has finished meanwhile.
                done, _ = wait(in_flight, timeout=None if len(ready) < wanted else 0, return_when=FIRST_COMPLETED)
                for future in done:
                    video = in_flight.pop(future)
                    try:
                        ready.append(future.result())
                    except FrameError as exc:
                        failed = [
                            plan.record(video, adapter, status="failed", caption="", error=exc.reason)
                            for adapter in adapters_of(str(video))
                        ]
                        for record in finish(failed):
                            yield record, 0
                top_up()
            if not ready or (len(ready) < wanted and in_flight):
                if not in_flight and not ready:
                    top_up()  # everything so far failed to decode: wait for slots for the rest
                continue
            batch, ready = ready[:batch_size], ready[batch_size:]
            top_up()  # decoders work on the next batch while the engine runs this one
            on_batch(len(batch))
            requests = [(clip, adapter) for clip in batch for adapter in adapters_of(clip.video)]
            frames = [clip.frames for clip, _ in requests]
            if several:
                generations = engine.caption(frames, plan.prompt, sampling, adapters=[a.path for _, a in requests])
            else:
                generations = engine.caption(frames, plan.prompt, sampling)
            by_clip: dict[int, list[CaptionRecord]] = {}
            for (clip, adapter), gen in zip(requests, generations):
                by_clip.setdefault(id(clip), []).append(_record(plan, clip, adapter, gen))
            for clip in batch:
                for record in finish(by_clip.get(id(clip), [])):
                    yield record, shareable
            if not in_flight and not ready:
                top_up()  # the slots this batch gave back let the rest of the queue start
    finally:
        for _ in range(held):  # stopped early (engine death, cancel): the clips in flight give theirs back
            slots.release()


def _record(plan: Plan, clip: ClipFrames, adapter: Adapter, gen: Any) -> CaptionRecord:
    """The record of one clip captioned with one adapter."""
    failed = gen.error is not None or not gen.text
    return plan.record(
        Path(clip.video),
        adapter,
        status="failed" if failed else "ok",
        caption="" if failed else gen.text,
        error=gen.error or ("the model returned an empty caption" if failed else None),
        prompt_tokens=gen.prompt_tokens,
        cached_tokens=gen.cached_tokens,
        output_tokens=gen.output_tokens,
        finish_reason=gen.finish_reason,
        decode_s=round(clip.decode_s, 4),
        **clip.facts(),
    )


def caption_videos(
    videos: list[Path],
    writer: RecordSink,
    plan: Plan,
    engine_factory: Callable[[], Any],
    stats: RunStats,
    on_record: Callable[[CaptionRecord], None] = lambda record: None,
    on_batch: Callable[[int], None] = lambda clips: None,
    decoder: FrameDecoder | None = None,
    slots: threading.Semaphore | None = None,
    needs: Mapping[Path, tuple[Adapter, ...]] | None = None,
) -> RunStats:
    """Caption `videos` (already known to need it) into `writer`; count them in `stats`.

    The unit of work of both `run` (writing `captions.jsonl`) and a queue worker's chunk (writing
    a part file). Engine death (vLLM's EngineDeadError) propagates, so the caller can rebuild the
    engine and try again. `on_batch` hears the size of every batch handed to the engine (also
    counted in `stats`). `decoder` is a long-lived decoder pool (a worker's); without one, a pool
    is started for this call. `slots` and `needs`: see `caption_clips`.
    """
    if not videos:
        return stats

    def batch(clips: int) -> None:
        stats.add_batch(clips)
        on_batch(clips)

    with contextlib.ExitStack() as stack:
        if decoder is None:
            workers = min(plan.profile.decode_workers, len(videos))
            decoder = stack.enter_context(FrameDecoder(plan.frame_spec, workers, plan.settings.decode_timeout))
        clips = caption_clips(videos, plan, writer, decoder, engine_factory, on_record, batch, slots, needs)
        for record, shareable in clips:
            stats.add(record, shareable)
    return stats


def run(
    folders: list[Path],
    out_dir: Path,
    settings: Settings,
    engine: Any = None,
    on_start: Callable[[int, int], None] = lambda captions, skipped: None,
    on_record: Callable[[CaptionRecord], None] = lambda record: None,
    wait_settled: bool = False,
) -> dict[str, Any]:
    """Caption every new video under `folders` into `out_dir`; return the summary.

    Videos with an `ok` record for the same model, adapter and prompt are skipped; failed ones are
    retried. With several adapters (`settings.compare_adapters`), a video gets a record from each
    adapter it has none from. `on_start(captions, skipped)` hears how many records are to be written
    and how many videos need none. `engine` lets a long-lived process (a worker) reuse its loaded
    engine. Files modified within `settings.settle_seconds` are captioned with a warning, or first
    waited for (`wait_settled`).
    """
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
    videos = found.videos
    plan = make_plan(settings)
    if engine is not None:
        check_engine(engine, plan)
    captions = out_dir / CAPTIONS_FILE
    todo = pending_work(videos, out_dir, plan)
    stats = RunStats(videos=len(videos), skipped=len(videos) - len(todo), ignored=len(found.ignored))
    on_start(sum(len(needed) for needed in todo.values()), stats.skipped)

    def engine_factory() -> Any:
        loaded = engine
        if loaded is None:
            loaded = load_engine(plan)  # only now: the first clips are already decoding
            stats.engine_load_s = loaded.load_s
        stats.concurrency = engine_concurrency(loaded, plan)
        return loaded

    if todo:
        with RecordWriter(captions) as writer:
            caption_videos(list(todo), writer, plan, engine_factory, stats, on_record, needs=todo)
        compact(captions)
    summary = stats.summary(plan)
    write_summary(out_dir, summary)
    return summary
