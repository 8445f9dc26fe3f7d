"""`captioner bench`, `bench-service`, `plan`: figures about speed, scale and memory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from captioner.cli.common import (
    app, checked_settings, echo_json, fail, settings_from, setup_logging, show, write_and_show,
)  # fmt: skip

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


@app.command()
def bench(
    out: Path = typer.Option(..., "--out", "-o", help="JSON file for every figure and setting."),
    model: Optional[str] = typer.Option(None, help="Model folder or hub id; 'demo' = built-in demo checkpoint."),
    adapter: Optional[str] = typer.Option(None, help="LoRA adapter folder; 'demo' = the demo adapter."),
    tier: Optional[str] = typer.Option(None, help="auto|cpu|t4|l4|a100-40|a100-80|h100."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the tier's)."),
    clips: int = typer.Option(16, help="Clips (720p/1080p, 5-30 s) for the stage measurements."),
    naive_clips: int = typer.Option(4, help="Clips for the naive one-at-a-time baseline (it is slow)."),
    memory_clips: int = typer.Option(
        1000, help="Clips in the long end-to-end run (throughput and memory), cycling through --clips."
    ),
    clips_dir: Optional[Path] = typer.Option(None, help="Where benchmark clips are written and reused."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a tier profile field: FIELD=VALUE."),
    frame_stage_only: bool = typer.Option(
        False, "--frame-stage-only", help="Only the frame stage (every set) and its cost per hour; no engine."
    ),
    hour_lengths: str = typer.Option(
        "10s,10min,2h", help="Takes measured per hour of footage, copied from one clip per set; 'none' skips them."
    ),
    hour_windows: int = typer.Option(48, min=1, help="Windows measured per take at most (evenly spread; scaled)."),
) -> None:
    """Measure end to end, decode only, engine only, prefix cache, the naive way, memory, and the
    frame stage's cost per hour of footage."""
    from rich.console import Console

    from captioner.bench import run_bench, table
    from captioner.bench.clips import parse_lengths
    from captioner.errors import ConfigError

    setup_logging(False)
    console = Console(stderr=True)
    settings = settings_from(model=model, adapter=adapter, tier=tier, frames=frames, sets=sets)
    try:
        lengths = {} if hour_lengths.strip().lower() == "none" else parse_lengths(hour_lengths)
    except ValueError as exc:
        fail(f"--hour-lengths: {exc}")
    try:
        result = run_bench(settings, clips, naive_clips, memory_clips, clips_dir, log=console.log,
                           frame_stage_only=frame_stage_only, hour_lengths=lengths, hour_windows=hour_windows)
    except ConfigError as exc:
        fail(str(exc))
    write_and_show(out, result, f"captioner bench ({result['settings']['profile']['name']})", table(result))


@app.command("bench-service")
def bench_service(
    out: Path = typer.Option(..., "--out", "-o", help="JSON file for every figure and setting."),
    videos: Optional[int] = typer.Option(
        None, help="Videos in the stand-in job (hard links to one small clip); default 1,000,000, with --faults 2,000."
    ),
    chunk_size: Optional[int] = typer.Option(None, help="Videos per chunk of the stand-in job; default 1000, "
                                             "with --faults 20."),
    real_clips: int = typer.Option(32, help="Clips for the real-engine comparison of the queue and `captioner run`."),
    work: Path = typer.Option(Path("bench-service-work"), help="Where links, outputs and logs go (reused)."),
    skip_scale: bool = typer.Option(False, help="Only the real-engine comparison."),
    skip_real: bool = typer.Option(False, help="Only the stand-in scale measurements."),
    faults: bool = typer.Option(False, "--faults", help="Only the fault benchmark: one job while workers and Redis "
                                "are killed, the output folder turns read-only or full, hostile messages arrive."),
    workers: int = typer.Option(3, min=1, help="Stand-in workers of the fault benchmark."),
    seconds_per_clip: float = typer.Option(0.3, min=0, help="Stand-in engine's seconds a clip (fault benchmark)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the fault moments (default: a random one, in the JSON)."),
    fault_kinds: Optional[str] = typer.Option(
        None, help="Comma-separated kinds to inject: worker_kill,redis_kill,read_only,disk_full,hostile (default all)."
    ),
    faults_per_kind: int = typer.Option(2, min=1, help="Faults of each kind (fault benchmark)."),
) -> None:
    """Measure the service at scale: a million-video job through real Redis and Celery workers
    (stand-in engine and decoder, named in the output), and the queue path against `captioner run`;
    or, with --faults, one job's end state after faults."""
    from rich.console import Console

    from captioner.bench.scale import queue_vs_run, run_scale, scale_table
    from captioner.records import write_atomic

    setup_logging(False)
    console = Console(stderr=True)
    settings = settings_from(adapter="demo", tier="cpu")
    result: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if faults:
        _bench_faults(out, settings, work, videos or 2000, chunk_size or 20, workers, seconds_per_clip, seed,
                      fault_kinds, faults_per_kind, console)  # fmt: skip
        return
    if not skip_scale:
        result["scale"] = run_scale(settings, work, videos or 1_000_000, chunk_size or 1000, log=console.log)
        write_atomic(out, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    if not skip_real:
        result["real"] = queue_vs_run(settings, work, real_clips, [4, 0], log=console.log)
    write_and_show(out, result, "captioner bench-service", scale_table(result))


def _bench_faults(out: Path, settings: Any, work: Path, videos: int, chunk: int, workers: int, seconds_per_clip: float,
                  seed: int | None, kinds: str | None, per_kind: int, console: Any) -> None:
    """`bench-service --faults`: the fault benchmark's JSON and table."""
    from captioner.bench.fault_checks import fault_table
    from captioner.bench.faults import KINDS, run_faults

    chosen = [kind.strip() for kind in kinds.split(",") if kind.strip()] if kinds else list(KINDS)
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown:
        fail(f"--fault-kinds: unknown kind(s) {', '.join(unknown)}; choose from {','.join(KINDS)}")
    result: dict[str, Any] = {"cpu_count": os.cpu_count()}
    result.update(run_faults(settings, work / "faults", videos, chunk, workers, seconds_per_clip, seed, chosen,
                             per_kind, log=console.log))  # fmt: skip
    write_and_show(out, result, "captioner bench-service --faults", fault_table(result))


@app.command("plan")
def plan_(
    model: Optional[str] = typer.Option(None, help="Model folder or hub id; 'demo' = built-in demo checkpoint."),
    model_config: Optional[Path] = typer.Option(
        None, help="A config.json to size instead of --model's (no tokenizer: give --text-tokens), e.g. "
        "captioner/data/llava-next-video-7b-config.json."
    ),
    text_tokens: Optional[int] = typer.Option(
        None, min=0, help="Prompt tokens besides the video (default: the prompt rendered with the model's tokenizer)."
    ),
    tier: Optional[str] = typer.Option(None, help="auto|cpu|t4|l4|a100-40|a100-80|h100."),
    all_tiers: bool = typer.Option(False, "--all-tiers", help="One row per tier, each at its own frames."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the tier's)."),
    prompt: Optional[str] = typer.Option(None, help="Prompt name under prompts/, or name@version."),
    sampling: Optional[str] = typer.Option(None, help="default | deterministic; sets the output budget."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a tier profile field: FIELD=VALUE."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Show the KV cache arithmetic: tokens per clip and clips in flight, at the tier's frames and its neighbours.

    Nothing is loaded but the model's config (and tokenizer): the engine is not started.
    """
    from rich.console import Console

    from captioner.errors import ConfigError
    from captioner.sizing import SizingError

    setup_logging(False)
    settings = checked_settings(model=model, tier=tier, frames=frames, prompt=prompt, sampling=sampling, sets=sets)
    max_tokens = settings.sampling_params().max_tokens
    try:
        source, shape, text_tokens = _model_shape(settings, model_config, text_tokens)
        rows = _sized_tiers(settings, shape, text_tokens, max_tokens, all_tiers)
    except (ConfigError, SizingError, ValueError, OSError) as exc:
        fail(str(exc))
    if as_json:
        echo_json(_plan_json(source, shape, text_tokens, max_tokens, rows), indent=2)
        return
    console = Console(width=max(Console().width, 150))  # the tier table is wide; let a pipe have it whole
    console.print(
        f"model {show(source)}: {shape.frame_tokens} tokens per frame, {text_tokens} prompt tokens besides the video, "
        f"{max_tokens} output tokens; KV cache {shape.layers} layers x {shape.kv_heads} KV heads x {shape.head_dim} "
        "head size",
        soft_wrap=True,
    )
    if all_tiers:
        console.print(_tiers_table(rows))
    else:
        for sized in rows:
            _print_tier(console, sized)


# A tier's profile, its sizing at the plan's frames, and the sizings at neighbouring frame counts.
SizedTier = tuple[Any, Any, list[Any]]


def _model_shape(settings: Any, model_config: Path | None, text_tokens: int | None) -> tuple[str, Any, int]:
    """What is sized, its shape and the prompt's text tokens: from `--model-config`, else the model's own files."""
    from captioner.planning import model_facts
    from captioner.sizing import ModelShape

    if model_config is not None:
        if text_tokens is None:
            fail("--model-config has no tokenizer to count the prompt with: give --text-tokens")
        shape = ModelShape.from_config(json.loads(model_config.read_text(encoding="utf-8")))
        return str(model_config), shape, text_tokens
    source, _, rendered, shape = model_facts(settings)
    return source, shape, rendered.text_tokens if text_tokens is None else text_tokens


def _sized_tiers(settings: Any, shape: Any, text_tokens: int, max_tokens: int, all_tiers: bool) -> list[SizedTier]:
    """Each tier asked for (every one with `all_tiers`) sized at its frames, with its frames-vs-clips trade-off."""
    from captioner.planning import plan_memory
    from captioner.sizing import size, tradeoff
    from captioner.tiers import PROFILES, resolve_profile

    rows = []
    for name in list(PROFILES) if all_tiers else [settings.tier]:
        profile = resolve_profile(name, settings.profile)
        n = settings.frames or profile.frames
        memory, memory_source = plan_memory(profile, settings.profile)
        chosen = size(shape, profile, n, text_tokens, max_tokens, memory, memory_source)
        rows.append((profile, chosen, tradeoff(shape, profile, n, text_tokens, max_tokens, memory, memory_source)))
    return rows


def _plan_json(source: str, shape: Any, text_tokens: int, max_tokens: int, rows: list[SizedTier]) -> dict[str, Any]:
    """The figures of `captioner plan --json`."""
    return {
        "model": source, "frame_tokens": shape.frame_tokens, "text_tokens": text_tokens, "max_tokens": max_tokens,
        "tiers": [
            {"tier": profile.name, "dtype": profile.dtype, "quantization": profile.quantization,
             "gpu_memory_utilization": profile.gpu_memory_utilization, "max_clips": profile.max_clips,
             "sizing": chosen.to_dict(), "tradeoff": [t.to_dict() for t in others]}
            for profile, chosen, others in rows
        ],
    }  # fmt: skip


def _tiers_table(rows: list[SizedTier]) -> Table:
    """One row per tier: its memory, weights, KV cache and clips in flight."""
    from rich.table import Table

    table = Table("tier", "memory GiB", "weights", "weights GiB", "activations + overhead GiB", "KV cache GiB",
                  "frames", "tokens/clip", "clips fit", "max_num_seqs")  # fmt: skip
    for profile, chosen, _ in rows:
        table.add_row(
            profile.name, _memory_cell(profile, chosen), f"{profile.dtype} {profile.quantization or ''}".strip(),
            f"{chosen.weights_gib:.2f}", _reserve_cell(chosen),
            "-" if chosen.kv_cache_gib is None else f"{chosen.kv_cache_gib:.2f}", str(chosen.frames),
            f"{chosen.tokens_per_clip:,}", _fit_cell(chosen), f"{chosen.max_num_seqs} ({chosen.limited_by})",
        )  # fmt: skip
    return table


def _print_tier(console: Console, sized: SizedTier) -> None:
    """One tier's KV cache arithmetic, its frames-vs-clips table and its warnings."""
    from rich.table import Table

    profile, chosen, others = sized
    console.print(
        f"tier {profile.name}: KV cache {_kv_line(profile, chosen)}; "
        f"{chosen.kv_bytes_per_token:,} bytes per token, {chosen.block_size}-token blocks",
        soft_wrap=True,
    )
    table = Table("frames", "tokens/clip", "clips fit", "max_num_seqs", "batch",
                  title=f"frames vs clips in flight ({profile.name})")  # fmt: skip
    for row in others:
        mark = " <" if row.frames == chosen.frames else ""
        table.add_row(f"{row.frames}{mark}", f"{row.tokens_per_clip:,}", _fit_cell(row),
                      f"{row.max_num_seqs} ({row.limited_by})", str(row.batch_size))  # fmt: skip
    console.print(table)
    for warning in chosen.warnings:
        console.print(f"[yellow]warning[/]: {show(warning)}", soft_wrap=True)


def _memory_cell(profile: Any, sizing: Any) -> str:
    if sizing.kv_source == "kv_cache_gib":
        return f"kv_cache_gib {profile.kv_cache_gib:g}"
    if sizing.memory_gib is None:
        return "unknown"
    return f"{sizing.memory_gib:.2f} x {profile.gpu_memory_utilization:g} ({sizing.memory_source})"


def _reserve_cell(sizing: Any) -> str:
    if sizing.kv_source != "memory":
        return "-"
    return f"{sizing.activations_gib:.2f} + {sizing.overhead_gib:.2f}"


def _fit_cell(sizing: Any) -> str:
    return "?" if sizing.clips_fit is None else f"{sizing.clips_fit:,}"


def _kv_line(profile: Any, sizing: Any) -> str:
    if sizing.kv_source == "kv_cache_gib":
        return f"kv_cache_gib {profile.kv_cache_gib:g} = {sizing.kv_tokens:,} tokens"
    if sizing.kv_source == "unknown":
        return "unknown (no kv_cache_gib, no memory_gib)"
    return (
        f"{sizing.memory_gib:.2f} GiB ({sizing.memory_source}) x {profile.gpu_memory_utilization:g} - weights "
        f"{sizing.weights_gib:.2f} - activations {sizing.activations_gib:.2f} - overhead {sizing.overhead_gib:.2f} "
        f"= {sizing.kv_cache_gib:.2f} GiB = {sizing.kv_tokens:,} tokens"
    )
