"""The unit of captioning work: clips decoded ahead and captioned in batches, one record per clip and adapter.

A clip is a file or one window of a long take (`windows.Clip`). Both `captioner run` (writing
`captions.jsonl`) and a queue worker's chunk (writing a part file) caption through `caption_videos`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Mapping

from captioner.adapters import Adapter
from captioner.captioning.decode_ahead import DecodeAhead, Slots
from captioner.captioning.stats import CaptionStats
from captioner.config import Sampling
from captioner.engine import Engine
from captioner.frames import ClipFrames, FrameDecoder, plan_clips
from captioner.planning import Plan
from captioner.records import CaptionRecord, Provenance, RecordSink, caption_record, failed_record
from captioner.sources import video_bytes
from captioner.windows import Clip

OnRecord = Callable[[CaptionRecord], None]
OnBatch = Callable[[int], None]
# Which adapters a clip still needs: keyed by the clip, or by its path for every clip of the file.
Needs = Mapping[Clip | Path, tuple[Adapter, ...]]


def warm(engine: Engine, plan: Plan) -> int:
    """Cache the prompt prefix for every adapter of `plan` (the base model's apart); return its shareable tokens."""
    engine.warm_prefix(plan.prompt)
    if len(plan.adapters) > 1 and any(adapter.is_base for adapter in plan.adapters):
        engine.warm_prefix(plan.prompt, with_adapter=False)  # the base model's prefix is cached apart
    return engine.shareable_prefix_tokens(plan.prompt)


def caption_batch(
    engine: Engine,
    plan: Plan,
    batch: list[ClipFrames],
    adapters_of: Callable[[ClipFrames], tuple[Adapter, ...]],
    made: Mapping[Adapter, Provenance],
    sampling: Sampling,
) -> dict[int, list[CaptionRecord]]:
    """One engine call for a batch of decoded clips, each with every adapter it needs; their records by clip id."""
    requests = [(clip, adapter) for clip in batch for adapter in adapters_of(clip)]
    generations = engine.caption(
        [clip.frames for clip, _ in requests], plan.prompt, sampling,
        adapters=[adapter for _, adapter in requests],
    )  # fmt: skip
    by_clip: dict[int, list[CaptionRecord]] = {}
    for (clip, adapter), gen in zip(requests, generations):
        by_clip.setdefault(id(clip), []).append(caption_record(made[adapter], clip, gen))
    return by_clip


def caption_clips(
    clips: list[Clip],
    plan: Plan,
    writer: RecordSink,
    decoder: FrameDecoder,
    engine_factory: Callable[[], Engine],
    on_record: OnRecord = lambda record: None,
    on_batch: OnBatch = lambda clips: None,
    slots: Slots | None = None,
    needs: Needs | None = None,
) -> Iterator[tuple[CaptionRecord, int]]:
    """Decode and caption `clips`, writing one record per clip and adapter as soon as it is known.

    Yields each record with the prompt-prefix tokens the cache could have served for it.

    Up to two batches are decoded ahead of the engine (`DecodeAhead`), so decoding overlaps
    inference. The engine takes whatever is decoded when it is free (up to a batch): when the engine
    is the slower stage, clips pile up during each call and batches are full; when decoding is
    slower, the engine never waits for a full batch. Profiles where the engine shares the CPU with
    decoding wait for full batches instead (`wait_for_full_batch`). The engine is created (by
    `engine_factory`) once the first clips are decoding. `slots`: see `DecodeAhead`.

    With several adapters, `needs` says which adapters each clip (or each clip of a path) still
    needs (default: all of the plan's); a clip is decoded once and its frames go to the engine once
    per adapter, in one batch.
    """
    # The profile's batch counts requests (clips in flight in the engine): a clip is one per adapter.
    batch_size = max(1, plan.profile.batch_size // len(plan.adapters))
    adapters_for = needed_adapters(plan, needs)
    made = {adapter: plan.made(adapter) for adapter in plan.adapters}

    def adapters_of(clip: ClipFrames) -> tuple[Adapter, ...]:
        return adapters_for(clip.video, clip.window.index if clip.window else None)

    ahead = DecodeAhead(clips, decoder, 2 * batch_size, slots)

    def finish(records: list[CaptionRecord]) -> list[CaptionRecord]:
        """Write one clip's records, then give back its slot."""
        for record in records:
            writer.write(record)
        ahead.release()
        for record in records:
            on_record(record)
        return records

    try:
        ahead.top_up()
        engine = engine_factory()
        shareable = warm(engine, plan)
        sampling = plan.settings.sampling_params()
        at_least = batch_size if plan.profile.wait_for_full_batch else 1
        while ahead.busy:
            if ahead.in_flight:
                for clip, error in ahead.collect(block=len(ahead.ready) < at_least):
                    failed = [failed_record(made[a], clip.path, error.reason, clip.window)
                              for a in adapters_for(clip.path, clip.index)]  # fmt: skip
                    for record in finish(failed):
                        yield record, 0
                ahead.top_up()
            batch = ahead.take(batch_size, at_least)
            if not batch:
                continue
            on_batch(len(batch))
            by_clip = caption_batch(engine, plan, batch, adapters_of, made, sampling)
            for clip in batch:
                for record in finish(by_clip.get(id(clip), [])):
                    yield record, shareable
            if not ahead.busy:
                ahead.top_up()  # the slots this batch gave back let the rest of the queue start
    finally:
        ahead.release_all()


def needed_adapters(plan: Plan, needs: Needs | None) -> Callable[[Path | str, int | None], tuple[Adapter, ...]]:
    """(path, window index) -> the adapters that clip needs: from `needs` (by the clip, else its path), else all."""
    wanted: dict[tuple[bytes, int | None] | bytes, tuple[Adapter, ...]] = {}
    for item, adapters in (needs or {}).items():  # by exact path bytes: two names that show alike stay apart
        wanted[(video_bytes(item.path), item.index) if isinstance(item, Clip) else video_bytes(item)] = adapters

    def adapters_for(path: Path | str, index: int | None) -> tuple[Adapter, ...]:
        identity = video_bytes(path)
        return wanted.get((identity, index), wanted.get(identity, plan.adapters))

    return adapters_for


def decode_workers(plan: Plan, videos: list[Path] | list[Clip]) -> int:
    """Decoder processes for `videos`: the profile's, fewer for fewer clips (a plain path may become many windows)."""
    if plan.windows.kind != "none" and any(not isinstance(video, Clip) for video in videos):
        return plan.profile.decode_workers
    return max(1, min(plan.profile.decode_workers, len(videos)))


def caption_videos(
    videos: list[Path] | list[Clip],
    writer: RecordSink,
    plan: Plan,
    engine_factory: Callable[[], Engine],
    stats: CaptionStats,
    on_record: OnRecord = lambda record: None,
    on_batch: OnBatch = lambda clips: None,
    decoder: FrameDecoder | None = None,
    slots: Slots | None = None,
    needs: Needs | None = None,
) -> CaptionStats:
    """Caption `videos` (already known to need it) into `writer`; count them in `stats`.

    Each item is a `windows.Clip` (a file or one window of it), or a plain path: its windows are
    planned here by the plan's policy (`plan.windows`, probed in the decoder processes) and each is
    captioned (a file the policy does not window is one clip).

    The unit of work of both `caption_folders` (writing `captions.jsonl`) and a queue worker's chunk
    (writing a part file). Engine death (vLLM's EngineDeadError) propagates, so the caller can
    rebuild the engine and try again. `on_batch` hears the size of every batch handed to the engine
    (also counted in `stats`). `decoder` is a long-lived decoder pool (a worker's); without one, a
    pool is started for this call. `slots` and `needs`: see `caption_clips`.
    """
    if not videos:
        return stats

    def batch(clips: int) -> None:
        stats.add_batch(clips)
        on_batch(clips)

    with contextlib.ExitStack() as stack:
        if decoder is None:
            workers = decode_workers(plan, videos)
            decoder = stack.enter_context(FrameDecoder(plan.frame_spec, workers, plan.settings.decode_timeout))
        planned = plan_clips(videos, plan.windows, decoder)
        plain = {Path(video) for video in videos if not isinstance(video, Clip)}  # a Clip was counted by its planner
        stats.windowed += sum(1 for path, clips in planned.items() if path in plain and any(c.window for c in clips))
        todo = [clip for clips in planned.values() for clip in clips]
        made = caption_clips(todo, plan, writer, decoder, engine_factory, on_record, batch, slots, needs)
        for record, shareable in made:
            stats.add(record, shareable)
    return stats
