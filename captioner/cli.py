"""`captioner` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from captioner.config import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Detailed Korean captions for video folders.")
log = logging.getLogger("captioner")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`FIELD=VALUE` pairs; values are parsed as JSON when they can be (numbers, true/false, null)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--set expects FIELD=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def _settings(**flags: Any) -> Settings:
    """Settings from CLI flags over CAPTIONER_* variables over defaults."""
    given = {key: value for key, value in flags.items() if value is not None}
    sets = given.pop("sets", None)
    settings = Settings(**given)
    if sets:
        settings.profile = {**settings.profile, **_parse_sets(sets)}
    return settings


def _setup_logging(verbose: bool) -> None:
    # stdout carries only the command's result (JSON); vLLM logs to stdout unless told otherwise.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("captioner").setLevel(logging.INFO)
    if not verbose:
        # Repeated on every generate() call on CPU, and harmless. A filter, not a level: vLLM
        # reapplies its logging config when the engine loads, which resets its loggers' levels.
        logging.getLogger("vllm.v1.worker.cpu_worker").addFilter(lambda record: record.levelno >= logging.ERROR)


@app.command()
def run(
    video_dirs: list[Path] = typer.Argument(..., help="Folders to caption (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for captions.jsonl and summary.json."),
    model: Optional[str] = typer.Option(None, help="Model folder or hub id; 'demo' = built-in demo checkpoint."),
    adapter: Optional[list[str]] = typer.Option(
        None, help="LoRA adapter folder; 'demo' = the demo adapter; 'none' = the base model. Repeat it to caption "
        "with several adapters side by side (each clip decoded once, one record per adapter)."
    ),
    tier: Optional[str] = typer.Option(None, help="auto|cpu|t4|l4|a100-40|a100-80|h100."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the tier's)."),
    prompt: Optional[str] = typer.Option(None, help="Prompt name under prompts/, or name@version."),
    sampling: Optional[str] = typer.Option(None, help="default | deterministic (greedy, for evaluation)."),
    decode_timeout: Optional[float] = typer.Option(None, help="Seconds before a clip's decoder is killed."),
    keyframe_tolerance: Optional[float] = typer.Option(
        None, help="Serve a target frame by its nearest keyframe within this share of a segment; 0 = exact."
    ),
    wait_settled: bool = typer.Option(
        False, "--wait-settled", help="Wait for files still being written (modified in the last settle_seconds)."
    ),
    settle_seconds: Optional[float] = typer.Option(
        None, help="A file modified more recently than this may still be copying (default 60; 0 = never)."
    ),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a tier profile field: FIELD=VALUE."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log engine and pipeline progress."),
) -> None:
    """Caption every video under VIDEO_DIRS in Korean; re-running skips videos already done.

    stdout carries only the summary JSON; progress and failed clips go to stderr.
    """
    from pydantic import ValidationError
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from captioner.engine import EngineError
    from captioner.planning import ConfigError
    from captioner.pipeline import run as run_pipeline

    _setup_logging(verbose)
    try:
        settings = _settings(
            model=model, adapter=adapter[0] if adapter else None, compare_adapters=adapter[1:] if adapter else None,
            tier=tier, frames=frames, prompt=prompt, sampling=sampling, decode_timeout=decode_timeout,
            keyframe_tolerance=keyframe_tolerance, settle_seconds=settle_seconds, sets=sets,
        )  # fmt: skip
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    progress = Progress(
        TextColumn("[bold]captioning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("ok {task.fields[ok]} failed {task.fields[failed]}"),
        disable=not sys.stderr.isatty(), console=Console(stderr=True), transient=False,
    )  # fmt: skip
    task = progress.add_task("captioning", total=None, ok=0, failed=0)
    counts = {"ok": 0, "failed": 0}

    def on_start(todo: int, skipped: int) -> None:
        several = len(settings.compare_adapters) > 0
        typer.echo(f"{todo} {'captions to write' if several else 'videos to caption'}, {skipped} videos already done", err=True)
        progress.update(task, total=todo)
        progress.start()

    def on_record(record: Any) -> None:
        counts[record.status] += 1
        if record.status == "failed":
            # Names and decoder texts may hold [brackets]: printed as text, never as markup.
            progress.console.print(f"[yellow]failed[/] {escape(record.video)}: {escape(record.error or '')}")
        progress.update(task, advance=1, **counts)

    try:
        summary = run_pipeline(
            video_dirs, out, settings, on_start=on_start, on_record=on_record, wait_settled=wait_settled
        )
    except (ConfigError, EngineError) as exc:
        _fail(str(exc))
    finally:
        progress.stop()
    typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))


@app.command("eval")
def eval_(
    captions: Path = typer.Argument(
        ..., help="captions.jsonl or an output folder (captions.jsonl plus the workers' part files are read as one)."
    ),
    refs: Path = typer.Option(..., "--refs", help="References: JSONL, CSV, or a folder of AI-Hub label JSON files."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (report.html, metrics.json, per_video.csv)."),
    against: Optional[Path] = typer.Option(
        None, help="Another captions.jsonl or output folder to compare with (the baseline)."
    ),
    threshold: float = typer.Option(0.05, help="Relative METEOR drop that counts as a regression."),
    show: int = typer.Option(5, help="Worst and best clips shown with their frames."),
    adapter: Optional[str] = typer.Option(
        None, help="Only the records of this adapter (its name in the records; 'none' = the base model)."
    ),
    against_adapter: Optional[str] = typer.Option(
        None, help="Only this adapter's records of --against; with --against CAPTIONS compares two adapters of one run."
    ),
) -> None:
    """Score captions against Korean references (METEOR over Kiwi morphemes) and write a report.

    Exit status: 0 ok, 1 regression against --against, 2 bad input.
    """
    from captioner.evaluation.run import ANY_ADAPTER, run_eval

    def pick(name: str | None) -> str | None:
        return ANY_ADAPTER if name is None else None if name.lower() == "none" else name

    code = run_eval(
        captions, refs, out, against=against, regression_threshold=threshold, worst_best=show,
        adapter=pick(adapter), against_adapter=pick(against_adapter),
    )  # fmt: skip
    raise typer.Exit(code)


@app.command("export")
def export_(
    target: Path = typer.Argument(
        ..., metavar="OUT", help="Output folder (captions.jsonl plus the workers' part files)."
    ),
    fmt: str = typer.Option("parquet", "--format", "-f", help="parquet | csv | jsonl."),
    all_versions: bool = typer.Option(
        False, "--all-versions", help="One row per video and version (default: the newest version only)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: OUT/export.<format>)."),
) -> None:
    """Write the folder's captions as one table: one row per video, its newest ok caption and its settings.

    The version exported by default (model, adapter, prompt version) is the one of the most recent
    ok record; it is named on stderr. Prints a JSON summary on stdout. Exit status 2: a missing or
    empty folder, no ok caption, or Parquet without pyarrow.
    """
    from captioner.export import ExportError, export

    try:
        result = export(target, fmt.lower(), out=out, all_versions=all_versions)
    except ExportError as exc:
        _fail(str(exc))
    if result.chosen is not None:
        typer.echo(
            f"version: {result.chosen} [{result.versions[0]['version']}], "
            f"that of the newest ok record ({result.chosen_at or 'no time'})",
            err=True,
        )
        if result.left_out:
            typer.echo(
                f"left out: {len(result.left_out)} other version(s) "
                f"({'; '.join(v['label'] for v in result.left_out)}); --all-versions exports them",
                err=True,
            )
    if result.without_ok:
        typer.echo(
            f"{result.without_ok} video(s) have only failed records in the exported version(s): no row", err=True
        )
    typer.echo(json.dumps(result.summary(), ensure_ascii=False))


@app.command("frames")
def frames_(
    videos: list[Path] = typer.Argument(..., help="Video files."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for DIR/<video stem>/00.png ... and frames.json."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the tier's)."),
    model: Optional[str] = typer.Option(None, help="Model whose input size the frames take; 'demo' = built-in."),
    tier: Optional[str] = typer.Option(None, help="auto|cpu|t4|l4|a100-40|a100-80|h100 (sets the default frames)."),
    keyframe_tolerance: Optional[float] = typer.Option(
        None, help="Keyframe tolerance (share of a segment); 0 = exact."
    ),
    decode_timeout: Optional[float] = typer.Option(None, help="Seconds before a clip's decoder is killed."),
) -> None:
    """Write the frames the model would see of each video, with how they were taken (frames.json).

    Prints one JSON line per video on stdout; exit status 1 when a video has no frames.
    """
    from captioner.frames.export import export_frames
    from captioner.planning import ConfigError, make_plan

    _setup_logging(False)
    settings = _service_settings(
        model=model, tier=tier, frames=frames, keyframe_tolerance=keyframe_tolerance, decode_timeout=decode_timeout
    )
    try:
        plan = make_plan(settings)
    except ConfigError as exc:
        _fail(str(exc))
    failed = 0
    for result in export_frames(videos, out, plan.frame_spec, settings.decode_timeout):
        if result.get("error"):
            failed += 1
            typer.echo(f"failed {result['video']}: {result['error']}", err=True)
        typer.echo(json.dumps(result, ensure_ascii=False))
    raise typer.Exit(1 if failed else 0)


def _write_and_show(out: Path, result: dict[str, Any], title: str, rows: list[tuple[str, str]]) -> None:
    """Write a benchmark's JSON to `out` and print its (measure, result) table."""
    from rich.console import Console
    from rich.table import Table

    from captioner.outputs import write_atomic

    write_atomic(out, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    summary = Table("measure", "result", title=title)
    for row in rows:
        summary.add_row(*row)
    Console().print(summary)
    typer.echo(f"written: {out}", err=True)


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
) -> None:
    """Measure end to end, decode only, engine only, prefix cache, the naive way and memory."""
    from rich.console import Console

    from captioner.bench import run_bench, table
    from captioner.planning import ConfigError

    _setup_logging(False)
    console = Console(stderr=True)
    settings = _settings(model=model, adapter=adapter, tier=tier, frames=frames, sets=sets)
    try:
        result = run_bench(settings, clips, naive_clips, memory_clips, clips_dir, log=console.log)
    except ConfigError as exc:
        _fail(str(exc))
    _write_and_show(out, result, f"captioner bench ({result['settings']['profile']['name']})", table(result))


@app.command("bench-service")
def bench_service(
    out: Path = typer.Option(..., "--out", "-o", help="JSON file for every figure and setting."),
    videos: int = typer.Option(1_000_000, help="Videos in the stand-in job (hard links to one small clip)."),
    chunk_size: int = typer.Option(1000, help="Videos per chunk of the stand-in job."),
    real_clips: int = typer.Option(32, help="Clips for the real-engine comparison of the queue and `captioner run`."),
    work: Path = typer.Option(Path("bench-service-work"), help="Where links, outputs and logs go (reused)."),
    skip_scale: bool = typer.Option(False, help="Only the real-engine comparison."),
    skip_real: bool = typer.Option(False, help="Only the stand-in scale measurements."),
) -> None:
    """Measure the service at scale: a million-video job through real Redis and Celery workers
    (stand-in engine and decoder, named in the output), and the queue path against `captioner run`."""
    from rich.console import Console

    from captioner.bench.scale import queue_vs_run, run_scale, scale_table
    from captioner.outputs import write_atomic

    _setup_logging(False)
    console = Console(stderr=True)
    settings = _settings(adapter="demo", tier="cpu")
    result: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if not skip_scale:
        result["scale"] = run_scale(settings, work, videos, chunk_size, log=console.log)
        write_atomic(out, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    if not skip_real:
        result["real"] = queue_vs_run(settings, work, real_clips, [4, 0], log=console.log)
    _write_and_show(out, result, "captioner bench-service", scale_table(result))


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
    from rich.table import Table

    from captioner.planning import ConfigError, model_facts, plan_memory
    from captioner.sizing import ModelShape, SizingError, size, tradeoff
    from captioner.tiers import PROFILES, resolve_profile

    _setup_logging(False)
    settings = _service_settings(model=model, tier=tier, frames=frames, prompt=prompt, sampling=sampling, sets=sets)
    max_tokens = settings.sampling_params().max_tokens
    try:
        if model_config is not None:
            if text_tokens is None:
                _fail("--model-config has no tokenizer to count the prompt with: give --text-tokens")
            source = str(model_config)
            shape = ModelShape.from_config(json.loads(model_config.read_text(encoding="utf-8")))
        else:
            source, _, rendered, shape = model_facts(settings)
            text_tokens = rendered.text_tokens if text_tokens is None else text_tokens
        names = list(PROFILES) if all_tiers else [settings.tier]
        rows = []
        for name in names:
            profile = resolve_profile(name, settings.profile)
            n = settings.frames or profile.frames
            memory, memory_source = plan_memory(profile, settings.profile)
            chosen = size(shape, profile, n, text_tokens, max_tokens, memory, memory_source)
            rows.append((profile, chosen, tradeoff(shape, profile, n, text_tokens, max_tokens, memory, memory_source)))
    except (ConfigError, SizingError, ValueError, OSError) as exc:
        _fail(str(exc))
    if as_json:
        result = {
            "model": source, "frame_tokens": shape.frame_tokens, "text_tokens": text_tokens, "max_tokens": max_tokens,
            "tiers": [
                {"tier": profile.name, "dtype": profile.dtype, "quantization": profile.quantization,
                 "gpu_memory_utilization": profile.gpu_memory_utilization, "max_clips": profile.max_clips,
                 "sizing": chosen.to_dict(), "tradeoff": [t.to_dict() for t in others]}
                for profile, chosen, others in rows
            ],
        }  # fmt: skip
        typer.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    console = Console(width=max(Console().width, 150))  # the tier table is wide; let a pipe have it whole
    console.print(
        f"model {source}: {shape.frame_tokens} tokens per frame, {text_tokens} prompt tokens besides the video, "
        f"{max_tokens} output tokens; KV cache {shape.layers} layers x {shape.kv_heads} KV heads x {shape.head_dim} "
        "head size",
        soft_wrap=True,
    )
    if all_tiers:
        table = Table("tier", "memory GiB", "weights", "weights GiB", "activations + overhead GiB", "KV cache GiB",
                      "frames", "tokens/clip", "clips fit", "max_num_seqs")  # fmt: skip
        for profile, chosen, _ in rows:
            table.add_row(
                profile.name, _memory_cell(profile, chosen), f"{profile.dtype} {profile.quantization or ''}".strip(),
                f"{chosen.weights_gib:.2f}", _reserve_cell(chosen),
                "-" if chosen.kv_cache_gib is None else f"{chosen.kv_cache_gib:.2f}", str(chosen.frames),
                f"{chosen.tokens_per_clip:,}", _fit_cell(chosen), f"{chosen.max_num_seqs} ({chosen.limited_by})",
            )  # fmt: skip
        console.print(table)
    for profile, chosen, others in [] if all_tiers else rows:
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
            console.print(f"[yellow]warning[/]: {warning}", soft_wrap=True)


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


@app.command("train")
def train_(
    video_dirs: list[Path] = typer.Argument(..., help="Folders of the training clips (searched recursively)."),
    refs: Path = typer.Option(..., help="References: JSONL, CSV or a folder of AI-Hub labels (as `captioner eval`)."),
    out: Path = typer.Option(..., "--out", "-o", help="New (or empty) folder for the adapter and training.json."),
    model: Optional[str] = typer.Option(None, help="Base model folder or hub id; 'demo' = built-in demo checkpoint."),
    prompt: Optional[str] = typer.Option(None, help="Prompt name (or name@version) the adapter will serve with."),
    tier: Optional[str] = typer.Option(None, help="Tier whose frames per clip to train with (auto|cpu|t4|...)."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the tier's)."),
    rank: int = typer.Option(16, help="LoRA rank."),
    alpha: float = typer.Option(32.0, help="LoRA alpha (scale = alpha / rank)."),
    dropout: float = typer.Option(0.05, help="LoRA dropout."),
    lr: float = typer.Option(2e-4, help="Peak learning rate (cosine schedule with warm-up)."),
    epochs: int = typer.Option(3, help="Passes over the data (ignored with --steps)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps in all (overrides --epochs)."),
    batch: int = typer.Option(1, help="Clips per optimizer step."),
    all_references: bool = typer.Option(False, help="One example per reference (default: each clip's first)."),
    val_refs: Optional[Path] = typer.Option(None, help="Validation references: METEOR after every epoch."),
    val_videos: Optional[list[Path]] = typer.Option(None, help="Folder of the validation clips (default: VIDEO_DIRS)."),
    save_every: int = typer.Option(50, help="Steps between checkpoints (and at every epoch's end)."),
    validate_every: int = typer.Option(1, help="Epochs between validations (0: only after the last step)."),
    seed: int = typer.Option(0, help="Seed of the LoRA initialisation and the data order."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    gradient_checkpointing: Optional[bool] = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Default: on for CUDA."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the unfinished run in --out from its checkpoint."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress."),
) -> None:
    """Train the LoRA caption adapter on labelled clips with the frames, prompt and tokens `captioner run` uses.

    Exit status: 0 trained, 2 bad input (nothing written). stdout carries a summary JSON.
    """
    from tqdm import tqdm

    from captioner.training import TrainConfig, TrainError, train

    _setup_logging(verbose)
    settings = _settings(model=model, prompt=prompt, tier=tier, frames=frames)
    config = TrainConfig(
        refs=refs, videos=video_dirs, out=out, val_refs=val_refs, val_videos=val_videos or [], rank=rank,
        alpha=alpha, dropout=dropout, lr=lr, epochs=epochs, steps=steps, batch=batch, all_references=all_references,
        save_every=save_every, validate_every=validate_every, seed=seed, device=device,
        gradient_checkpointing=gradient_checkpointing,
    )  # fmt: skip
    # Redirected to a file, a line every 30 s rather than a redraw every step.
    bar = tqdm(desc="training", unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 30)

    def on_step(step: int, total: int, loss: float) -> None:
        bar.total = total
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(step - bar.n)

    try:
        result = train(config, settings, resume=resume, on_step=on_step)
    except TrainError as exc:
        bar.close()
        _fail(str(exc))
    bar.close()
    doc = result.document
    typer.echo(json.dumps({
        "adapter": str(result.out), "steps": result.steps, "loss_first": doc["loss"]["first"],
        "loss_last": doc["loss"]["last"], "best_validation_meteor": result.best_meteor,
        "clips": doc["data"]["clips"], "skipped": len(doc["data"]["skipped"]), "seconds": result.seconds,
    }, ensure_ascii=False, indent=2))  # fmt: skip


@app.command("demo-model")
def demo_model(
    directory: Path = typer.Argument(..., help="Folder to write base/ and adapter/ into."),
    seed: int = typer.Option(0, help="Seed of the random weights and of the adapter's training."),
    train_adapter: bool = typer.Option(
        True, "--train/--no-train", help="Train the adapter on synthetic scenes (default), or write a random one."
    ),
) -> None:
    """Build the demo checkpoint: a small random-weight LLaVA-NeXT-Video and a LoRA adapter trained to caption
    synthetic scenes (about two minutes on 2 CPU cores)."""
    from captioner.demo_model import DEMO_STAMP, build_demo_model

    _setup_logging(False)
    base, adapter = build_demo_model(directory, seed=seed, train_adapter=train_adapter)
    built = json.loads((Path(directory) / DEMO_STAMP).read_text())
    typer.echo(f"base model: {base}\nadapter:    {adapter} ({built['adapter']})")
    if built.get("heldout_meteor") is not None:
        typer.echo(f"held-out METEOR {built['heldout_meteor']:.4f}, trained in {built['train_seconds']:.0f} s")


@app.command("quantize")
def quantize_(
    model: str = typer.Option(..., help="Unquantized LLaVA-NeXT-Video checkpoint folder; 'demo' = the demo one."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the AWQ checkpoint (new, or empty)."),
    adapter: Optional[str] = typer.Option(None, help="LoRA adapter folder merged first; 'demo' = the demo adapter."),
    calibration: Optional[list[Path]] = typer.Option(
        None,
        "--calibration",
        help="More calibration text: captions.jsonl or an output folder, or references (JSONL, CSV, AI-Hub folder).",
    ),
    prompt: str = typer.Option("detailed-ko", help="Prompt the calibration captions follow, as when captioning."),
    dtype: str = typer.Option("auto", help="Working precision: auto (float16 on GPU, float32 on CPU), bfloat16..."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress."),
) -> None:
    """Merge the LoRA adapter and quantize the language model to 4-bit AWQ (the t4/l4 tiers' checkpoint).

    Prints the figures as JSON: layers quantized, sizes before/after, reconstruction error, calibration used.
    """
    from captioner.config import DEMO
    from captioner.quantize import QuantizeError, quantize as quantize_checkpoint

    _setup_logging(verbose)
    if DEMO in (model, adapter):
        from captioner.demo_model import ensure_demo_model

        demo_base, demo_adapter = ensure_demo_model(_settings().demo_dir)
    try:
        result = quantize_checkpoint(
            demo_base if model == DEMO else Path(model),
            out,
            adapter=None if adapter is None else demo_adapter if adapter == DEMO else Path(adapter),
            calibration=calibration or [],
            prompt=prompt,
            dtype=dtype,
        )
    except QuantizeError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))


# --- the service: worker, submit, status, cancel, beat (README "Running as a service") ---------------


def _service_settings(**flags: Any) -> Settings:
    """`_settings`, with bad values reported as one clear message."""
    from pydantic import ValidationError

    try:
        return _settings(**flags)
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else None
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors) if errors else str(exc))
        raise  # unreachable: _fail exits


def _job_store(settings: Settings, patient: bool = False) -> Any:
    from captioner.service import JobStore, SubmitError

    store = JobStore.connect(settings, patient=patient)
    try:
        store.ping()
    except SubmitError as exc:
        _fail(str(exc))
    return store


@app.command()
def worker(
    model: Optional[str] = typer.Option(None, help="Model folder or hub id; 'demo' = built-in demo checkpoint."),
    adapter: Optional[str] = typer.Option(None, help="LoRA adapter folder; 'demo' = the demo adapter."),
    tier: Optional[str] = typer.Option(None, help="auto|cpu|t4|l4|a100-40|a100-80|h100."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a tier profile field: FIELD=VALUE."),
    name: Optional[str] = typer.Option(None, help="Worker name (default captioner-PID@HOST)."),
    metrics_port: Optional[int] = typer.Option(
        None, help="Serve Prometheus metrics on this port at /metrics (default CAPTIONER_METRICS_PORT; off if unset)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log engine details."),
) -> None:
    """Run one caption worker (one per GPU): load the engine once, then caption chunks from the queue."""
    from captioner.engine import EngineError
    from captioner.planning import ConfigError

    _setup_logging(verbose)
    settings = _service_settings(model=model, adapter=adapter, tier=tier, sets=sets, metrics_port=metrics_port)
    from captioner.service import chunks_in_flight, tasks
    from captioner.service.celery_app import app_for

    runtime = tasks.use_settings(settings)
    try:
        runtime.start()  # before consuming: a worker that cannot caption must not take chunks
    except (ConfigError, EngineError) as exc:
        _fail(str(exc))
    app_for(settings).worker_main(
        [
            "worker",
            f"--hostname={name or f'captioner-{os.getpid()}@%h'}",
            f"--queues={settings.queue}",
            "--pool=threads",  # one process, one engine; the next chunk decodes while this one is captioned
            f"--concurrency={chunks_in_flight(settings)}",
            "--loglevel=INFO",
        ]
    )


@app.command()
def submit(
    video_dirs: list[Path] = typer.Argument(
        ...,
        help="Folders to caption (under the allowed roots).",
        readable=False,  # checked by submit, one message
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for captions.jsonl and summary.json."),
    prompt: Optional[str] = typer.Option(None, help="Prompt name under prompts/, or name@version."),
    sampling: Optional[str] = typer.Option(None, help="default | deterministic (greedy, for evaluation)."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the worker's tier's)."),
    tier: Optional[str] = typer.Option(None, help="The workers' tier, which sizes the chunks."),
    chunk_size: Optional[int] = typer.Option(None, help="Videos per chunk (default: 2 x the tier's batch)."),
    settle_seconds: Optional[float] = typer.Option(
        None, help="Leave files modified more recently than this for a later job (default 60)."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait until the job is finished and print its status."),
) -> None:
    """Queue VIDEO_DIRS for the workers and print the job id. Exit status with --wait: 0 done, 1 not."""
    from captioner.service import SubmitError, submit as submit_job, wait as wait_job

    settings = _service_settings(
        prompt=prompt, sampling=sampling, frames=frames, tier=tier, chunk_size=chunk_size, settle_seconds=settle_seconds
    )
    try:
        job_id = submit_job(video_dirs, out, settings)
    except SubmitError as exc:
        _fail(str(exc))
    typer.echo(job_id)
    if wait:

        def progress(current: dict) -> None:
            typer.echo(
                f"{current['state']}: {current['ok']} ok, {current['failed']} failed, "
                f"{current['skipped']} skipped, {current['pending']} pending",
                err=True,
            )

        final = wait_job(_job_store(settings, patient=True), job_id, poll_s=2.0, on_poll=progress)
        typer.echo(json.dumps(final, ensure_ascii=False, indent=2))
        raise typer.Exit(0 if final["state"] == "done" else 1)


@app.command()
def status(job_id: str = typer.Argument(..., help="Job id printed by `captioner submit`.")) -> None:
    """Print a job's state, counts (videos, ok, failed, skipped, pending), timings and workers as JSON."""
    from captioner.service import JobNotFound, status as job_status

    try:
        current = job_status(_job_store(_service_settings()), job_id)
    except JobNotFound as exc:
        _fail(str(exc))
    typer.echo(json.dumps(current, ensure_ascii=False, indent=2))


@app.command()
def cancel(job_id: str = typer.Argument(..., help="Job id printed by `captioner submit`.")) -> None:
    """Cancel a job: chunks not started are skipped, running chunks stop after their current clip."""
    from captioner.service import JobNotFound, cancel as cancel_job

    try:
        current = cancel_job(_job_store(_service_settings()), job_id)
    except JobNotFound as exc:
        _fail(str(exc))
    typer.echo(json.dumps(current, ensure_ascii=False, indent=2))


@app.command()
def health(
    worker_check: bool = typer.Option(
        True, "--worker/--no-worker", help="Also require this host's worker to serve metrics (engine loaded)."
    ),
) -> None:
    """Container health check: exit 0 if Redis answers and (with --worker) the local worker is ready, else 1."""
    import urllib.error
    import urllib.request

    from captioner.service import SubmitError, connect, ping

    settings = _service_settings()
    try:
        ping(connect(settings.broker_url, patient=False))
    except SubmitError as exc:
        _fail(f"broker: {exc}", code=1)
    if worker_check:
        if settings.metrics_port is None:
            _fail("no worker metrics to check: CAPTIONER_METRICS_PORT is not set", code=1)
        url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        try:
            body = urllib.request.urlopen(url, timeout=10).read().decode()
        except (urllib.error.URLError, OSError) as exc:
            _fail(f"worker not ready: {url}: {exc}", code=1)
        if "captioner_engine_loads_total" not in body:
            _fail(f"{url} is not a captioner worker's metrics endpoint", code=1)
    typer.echo("ok")


@app.command()
def beat() -> None:
    """Run Celery beat: queue the nightly job of the watched folders on the configured crontab."""
    settings = _service_settings()
    if not settings.nightly_folders or settings.nightly_out is None:
        _fail("no nightly job configured: set nightly_folders and nightly_out (CAPTIONER_* or CAPTIONER_CONFIG)")
    from captioner.service.celery_app import app_for

    app_for(settings).start(["beat", "--loglevel=INFO"])


def main() -> None:
    """Entry point of the `captioner` command."""
    app()


if __name__ == "__main__":
    main()
