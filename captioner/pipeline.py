"""The captioning pipeline: folders -> frames -> prompts -> engine -> records.

`make_plan` checks everything that can be checked before work starts (model, adapter, prompt,
token budget) and raises `ConfigError` with one clear message. `run` captions every video that has
no `ok` record for the same model, adapter and prompt yet. Decoding runs in separate processes
ahead of the engine, so the next batch is decoded while the current one is captioned.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from captioner.config import DEMO, Settings
from captioner.frames import ClipFrames, FrameDecoder, FrameError, FrameSpec
from captioner.outputs import (
    CAPTIONS_FILE,
    CaptionRecord,
    RecordWriter,
    VersionKey,
    compact,
    ok_videos,
    read_output,
    write_summary,
)
from captioner.prompts import PromptError, RenderedPrompt, check_budget, load_prompt, render, tokens_per_frame
from captioner.sizing import ModelShape, Sizing, SizingError, concurrency, disagreement_warning, size
from captioner.sources import Found, SourceError, find_videos, raw_name, video_id
from captioner.tiers import TierProfile, cuda_device, resolve_profile

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class RecordSink(Protocol):
    """Where records go as clips finish: `outputs.RecordWriter` (a run) or `outputs.PartWriter` (a chunk)."""

    def write(self, record: CaptionRecord) -> None: ...


class ConfigError(Exception):
    """The run cannot start; the message says why. Nothing has been done yet."""


@dataclass
class Plan:
    """Everything resolved and checked before the first clip is touched."""

    settings: Settings
    model: str
    adapter: Path | None
    adapter_name: str | None
    adapter_sha: str | None
    profile: TierProfile
    frames: int
    frame_size: int
    frame_tokens: int
    prompt: RenderedPrompt
    prompt_tokens: int
    shape: ModelShape  # what the KV cache arithmetic reads from the model's config
    sizing: Sizing  # the KV cache and clips in flight; `profile` carries its max_num_seqs and batch_size

    def record(self, video: Path | str, **fields: Any) -> CaptionRecord:
        """A record for the file `video` carrying this plan's versions."""
        return CaptionRecord(
            video=video_id(video),
            video_raw=raw_name(video),
            frames=self.frames,
            model=self.model,
            adapter=self.adapter_name,
            adapter_sha=self.adapter_sha,
            prompt=self.prompt.spec.identity(),
            tier=self.profile.name,
            sampling=self.settings.sampling,
            **fields,
        )

    def versions(self) -> dict[str, Any]:
        """What a summary states about how its captions were made."""
        return {
            "model": self.model,
            "adapter": self.adapter_name,
            "prompt": self.prompt.spec.identity(),
            "tier": self.profile.name,
            "frames": self.frames,
            "sampling": self.settings.sampling,
        }

    @property
    def frame_spec(self) -> FrameSpec:
        """What the frame stage takes from every clip for this plan."""
        return FrameSpec(self.frames, self.frame_size, self.settings.keyframe_tolerance)

    @property
    def key(self) -> VersionKey:
        """The version key of this plan's records."""
        spec = self.prompt.spec
        return VersionKey(self.model, self.adapter_name, self.adapter_sha, spec.name, spec.version, spec.digest)


def _resolve_model(settings: Settings) -> str:
    if settings.model == DEMO or settings.adapter == DEMO:
        from captioner.demo_model import ensure_demo_model

        ensure_demo_model(settings.demo_dir)
    if settings.model == DEMO:
        return str((settings.demo_dir / "base").resolve())
    path = Path(settings.model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: model folder has no config.json")
        return str(path.resolve())
    if path.exists():
        raise ConfigError(f"{path}: model must be a folder (a Hugging Face checkpoint), not a file")
    if _HUB_ID.match(settings.model) and not settings.model.startswith("."):
        return settings.model  # a hub id, resolved by transformers/vLLM on a machine that can reach it
    raise ConfigError(f"{path}: model folder does not exist")


def _resolve_adapter(settings: Settings) -> tuple[Path | None, str | None, str | None]:
    if settings.adapter is None:
        return None, None, None
    if settings.adapter == DEMO:
        path, name = settings.demo_dir / "adapter", DEMO
    else:
        path = Path(settings.adapter).expanduser()
        name = path.resolve().name
    if not path.is_dir():
        raise ConfigError(f"{path}: adapter folder does not exist")
    weights = sorted(path.glob("adapter_model.*"))
    if not (path / "adapter_config.json").is_file() or not weights:
        raise ConfigError(f"{path}: not a PEFT LoRA adapter (needs adapter_config.json and adapter_model.*)")
    digest = hashlib.sha256()
    for weight in weights:
        with weight.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return path.resolve(), name, digest.hexdigest()[:12]


def model_facts(settings: Settings) -> tuple[str, Any, RenderedPrompt, ModelShape]:
    """The model (resolved), its transformers config, the prompt rendered for it, and its shape for sizing.

    Reads the checkpoint's config and tokenizer only; `ConfigError` when they cannot be read, are not
    LLaVA-NeXT-Video's, or the prompt does not render.
    """
    model = _resolve_model(settings)
    return (model, *_load_model(model, settings))


def _load_model(model: str, settings: Settings) -> tuple[Any, RenderedPrompt, ModelShape]:
    from captioner import compat

    compat.apply()  # transformers may import the broken CUDA-only audio/video packages
    from transformers import AutoConfig, AutoTokenizer

    try:
        hf_config = AutoConfig.from_pretrained(model)
        tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the user needs the model and why
        raise ConfigError(f"{model}: cannot load the model's config and tokenizer ({exc})") from None
    if not hasattr(hf_config, "spatial_pool_stride"):
        raise ConfigError(f"{model}: not a LLaVA-NeXT-Video checkpoint (model_type {hf_config.model_type!r})")
    try:
        prompt = render(load_prompt(settings.prompt, settings.prompts_dir), tokenizer)
        shape = ModelShape.from_config(hf_config.to_dict())
    except (PromptError, SizingError) as exc:
        raise ConfigError(f"{model}: {exc}" if isinstance(exc, SizingError) else str(exc)) from None
    return hf_config, prompt, shape


def make_plan(settings: Settings) -> Plan:
    """Resolve model, adapter, tier, prompt and frames; check the token budget; size the KV cache."""
    model = _resolve_model(settings)
    adapter, adapter_name, adapter_sha = _resolve_adapter(settings)
    try:
        profile = resolve_profile(settings.tier, settings.profile)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    frames = settings.frames or profile.frames
    hf_config, prompt, shape = _load_model(model, settings)
    quant_config = getattr(hf_config, "quantization_config", None) or {}
    quantized = quant_config.get("quant_method") if isinstance(quant_config, dict) else quant_config.quant_method
    if profile.quantization and quantized != profile.quantization:
        raise ConfigError(
            f"{model}: the {profile.name} profile expects an {profile.quantization.upper()}-quantized checkpoint, "
            f"this one is {quantized or 'not quantized'}; use a quantized checkpoint or --set quantization=null"
        )
    frame_tokens = tokens_per_frame(hf_config)
    sampling = settings.sampling_params()
    try:
        prompt_tokens = check_budget(
            prompt,
            frames,
            frame_tokens,
            sampling.max_tokens,
            profile.max_model_len,
            profile.max_num_batched_tokens,
        )
    except PromptError as exc:
        raise ConfigError(str(exc)) from None
    memory_gib, memory_source = plan_memory(profile, settings.profile)
    try:
        sizing = size(shape, profile, frames, prompt.text_tokens, sampling.max_tokens, memory_gib, memory_source)
    except SizingError as exc:
        raise ConfigError(f"{model}: {exc}") from None
    check_fits(sizing, profile)
    for warning in sizing.warnings:
        log.warning("%s", warning)
    return Plan(
        settings=settings,
        model=model,
        adapter=adapter,
        adapter_name=adapter_name,
        adapter_sha=adapter_sha,
        # The profile in force: the derived (or overridden) concurrency filled in.
        profile=profile.model_copy(update={"max_num_seqs": sizing.max_num_seqs, "batch_size": sizing.batch_size}),
        frames=frames,
        frame_size=hf_config.vision_config.image_size,
        frame_tokens=frame_tokens,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        shape=shape,
        sizing=sizing,
    )


def plan_memory(profile: TierProfile, overrides: dict[str, Any]) -> tuple[float | None, str]:
    """The device memory (GiB) the sizing assumes, and where it comes from.

    An explicit `memory_gib` override first, then the CUDA device present (a GPU profile only), then
    the profile's `memory_gib` (the tier's card; planning on a machine without it).
    """
    if "memory_gib" in overrides:
        return profile.memory_gib, "override"
    device = cuda_device() if profile.device == "cuda" else None
    if device is not None:
        return device[1], "device"
    return profile.memory_gib, "tier"


def check_fits(sizing: Sizing, profile: TierProfile) -> None:
    """Refuse a plan whose KV cache cannot hold a single clip (`ConfigError`, with what would fit)."""
    if sizing.clips_fit is None or sizing.clips_fit >= 1:
        return
    memory = (
        f"kv_cache_gib {profile.kv_cache_gib:g}" if sizing.kv_source == "kv_cache_gib"
        else f"{sizing.memory_gib:.1f} GiB ({sizing.memory_source}) x {profile.gpu_memory_utilization:g} less "
        f"{sizing.weights_gib:.1f} GiB of weights, {sizing.activations_gib:.1f} of activations and "
        f"{sizing.overhead_gib:.1f} of overhead"
    )  # fmt: skip
    raise ConfigError(
        f"one clip of {sizing.frames} frames needs {sizing.tokens_per_clip:,} tokens of KV cache, and the "
        f"{profile.name} profile leaves {sizing.kv_tokens:,} ({memory}); use fewer frames, a quantized "
        "checkpoint, or a larger device"
    )


def load_engine(plan: Plan):  # -> CaptionEngine; imported lazily: vLLM takes seconds to import
    """Build the vLLM engine for `plan` (tens of seconds; do it once per process)."""
    from captioner.engine import CaptionEngine

    return CaptionEngine(plan.model, plan.profile, adapter=plan.adapter, seed=plan.settings.seed)


def engine_concurrency(engine: Any, plan: Plan) -> dict[str, Any]:
    """The plan's computed concurrency beside the one vLLM reports for `engine`; warns when they disagree.

    vLLM's figure is its KV cache (blocks of its block size) expressed in clips of the plan's
    tokens per clip; an engine that does not report one (a stand-in) leaves the vLLM side empty.
    `max_num_seqs` is the engine's own: a worker's engine may have been sized for other frames.
    """
    record = concurrency(plan.sizing, getattr(engine, "kv", None))
    record["max_num_seqs"] = getattr(getattr(engine, "profile", None), "max_num_seqs", None) or record["max_num_seqs"]
    warning = disagreement_warning(record)
    if warning:
        log.warning("%s", warning)
    return record


def check_engine(engine: Any, plan: Plan) -> None:
    """Refuse to reuse a loaded engine whose model, adapter or settings differ from the plan's.

    The concurrency (max_num_seqs, batch) may differ: it follows the frames, which a job may choose.
    A job's batch is its own; the engine runs at most its max_num_seqs of them at once.
    """
    derived = {"max_num_seqs", "batch_size"}
    mismatched = [
        name
        for name, have, want in [
            ("model", engine.model, plan.model),
            ("adapter", engine.adapter, plan.adapter),
            ("tier profile", engine.profile.model_dump(exclude=derived), plan.profile.model_dump(exclude=derived)),
        ]
        if have != want
    ]
    if mismatched:
        raise ConfigError(f"the loaded engine was built for another {', '.join(mismatched)}; restart it")


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


def pending_videos(videos: list[Path], out_dir: Path, plan: Plan) -> list[Path]:
    """The videos without an `ok` record for this plan's model, adapter and prompt in `out_dir` (read once)."""
    done = ok_videos(read_output(out_dir), plan.key)
    return [video for video in videos if video_id(video) not in done]


def caption_clips(
    videos: list[Path],
    plan: Plan,
    writer: RecordSink,
    decoder: FrameDecoder,
    engine_factory: Callable[[], Any],
    on_record: Callable[[CaptionRecord], None] = lambda record: None,
    on_batch: Callable[[int], None] = lambda clips: None,
    slots: threading.Semaphore | None = None,
) -> Iterator[tuple[CaptionRecord, int]]:
    """Decode and caption `videos`, writing one record each as soon as it is known.

    Yields each record with the prompt-prefix tokens the cache could have served for it.

    Up to two batches are decoded ahead of the engine, so decoding overlaps inference. The engine
    takes whatever is decoded when it is free (up to a batch): when the engine is the slower stage,
    clips pile up during each call and batches are full; when decoding is slower, the engine never
    waits for a full batch. Profiles where the engine shares the CPU with decoding wait for full
    batches instead (`wait_for_full_batch`). The engine is created (by `engine_factory`) once the
    first clips are decoding. `slots` bounds the clips decoded ahead across several callers that
    share one engine (a worker's chunks): a clip takes a slot to start decoding and gives it back
    once its record is written.
    """
    batch_size = plan.profile.batch_size
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

    def finish(record: CaptionRecord) -> CaptionRecord:
        nonlocal held
        writer.write(record)
        if slots is not None:
            slots.release()
            held -= 1
        on_record(record)
        return record

    try:
        top_up()
        engine = engine_factory()
        engine.warm_prefix(plan.prompt)
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
                        yield finish(plan.record(video, status="failed", caption="", error=exc.reason)), 0
                top_up()
            if not ready or (len(ready) < wanted and in_flight):
                if not in_flight and not ready:
                    top_up()  # everything so far failed to decode: wait for slots for the rest
                continue
            batch, ready = ready[:batch_size], ready[batch_size:]
            top_up()  # decoders work on the next batch while the engine runs this one
            on_batch(len(batch))
            for clip, gen in zip(batch, engine.caption([clip.frames for clip in batch], plan.prompt, sampling)):
                failed = gen.error is not None or not gen.text
                record = plan.record(
                    Path(clip.video),
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
                yield finish(record), shareable
            if not in_flight and not ready:
                top_up()  # the slots this batch gave back let the rest of the queue start
    finally:
        for _ in range(held):  # stopped early (engine death, cancel): the clips in flight give theirs back
            slots.release()


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
) -> RunStats:
    """Caption `videos` (already known to need it) into `writer`; count them in `stats`.

    The unit of work of both `run` (writing `captions.jsonl`) and a queue worker's chunk (writing
    a part file). Engine death (vLLM's EngineDeadError) propagates, so the caller can rebuild the
    engine and try again. `on_batch` hears the size of every batch handed to the engine (also
    counted in `stats`). `decoder` is a long-lived decoder pool (a worker's); without one, a pool
    is started for this call. `slots`: see `caption_clips`.
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
        for record, shareable in caption_clips(videos, plan, writer, decoder, engine_factory, on_record, batch, slots):
            stats.add(record, shareable)
    return stats


def run(
    folders: list[Path],
    out_dir: Path,
    settings: Settings,
    engine: Any = None,
    on_start: Callable[[int, int], None] = lambda todo, skipped: None,
    on_record: Callable[[CaptionRecord], None] = lambda record: None,
    wait_settled: bool = False,
) -> dict[str, Any]:
    """Caption every new video under `folders` into `out_dir`; return the summary.

    Videos with an `ok` record for the same model, adapter and prompt are skipped; failed ones are
    retried. `engine` lets a long-lived process (a worker) reuse its loaded engine. Files modified
    within `settings.settle_seconds` are captioned with a warning, or first waited for
    (`wait_settled`).
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
    todo = pending_videos(videos, out_dir, plan)
    stats = RunStats(videos=len(videos), skipped=len(videos) - len(todo), ignored=len(found.ignored))
    on_start(len(todo), stats.skipped)

    def engine_factory() -> Any:
        loaded = engine
        if loaded is None:
            loaded = load_engine(plan)  # only now: the first clips are already decoding
            stats.engine_load_s = loaded.load_s
        stats.concurrency = engine_concurrency(loaded, plan)
        return loaded

    if todo:
        with RecordWriter(captions) as writer:
            caption_videos(todo, writer, plan, engine_factory, stats, on_record)
        compact(captions)
    summary = stats.summary(plan)
    write_summary(out_dir, summary)
    return summary
