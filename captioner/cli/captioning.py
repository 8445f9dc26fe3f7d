"""`captioner run`, `eval`, `export`, `frames`: captioning folders and reading the results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from captioner.cli.common import app, checked_settings, echo_json, fail, settings_from, setup_logging, show, with_demo


WINDOWS_HELP = (
    "auto (default: files over window_auto_max_s, 60 s, get windows of window_seconds, 30 s) | none (one "
    "caption per file) | fixed:SECONDS[:OVERLAP] | shots. Also CAPTIONER_WINDOWS."
)


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
    windows: Optional[str] = typer.Option(None, help=WINDOWS_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a tier profile field: FIELD=VALUE."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log engine and pipeline progress."),
) -> None:
    """Caption every video under VIDEO_DIRS in Korean (a long take window by window); re-running skips what is done.

    stdout carries only the summary JSON; progress and failed clips go to stderr.
    """
    from pydantic import ValidationError
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from captioner.captioning import caption_folders
    from captioner.engine import EngineError
    from captioner.errors import ConfigError

    setup_logging(verbose)
    try:
        settings = settings_from(
            model=model, adapter=adapter[0] if adapter else None, compare_adapters=adapter[1:] if adapter else None,
            tier=tier, frames=frames, prompt=prompt, sampling=sampling, decode_timeout=decode_timeout,
            keyframe_tolerance=keyframe_tolerance, settle_seconds=settle_seconds, windows=windows, sets=sets,
        )  # fmt: skip
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    progress = Progress(
        TextColumn("[bold]captioning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("ok {task.fields[ok]} failed {task.fields[failed]}"),
        disable=not sys.stderr.isatty(), console=Console(stderr=True), transient=False,
    )  # fmt: skip
    task = progress.add_task("captioning", total=None, ok=0, failed=0)
    counts = {"ok": 0, "failed": 0}
    with_demo(settings)

    def on_start(todo: int, skipped: int) -> None:
        several = len(settings.compare_adapters) > 0
        what = "captions to write" if several else "clips to caption"
        typer.echo(f"{todo} {what}, {skipped} videos already done", err=True)
        progress.update(task, total=todo)
        progress.start()

    def on_record(record: Any) -> None:
        counts[record.status] += 1
        if record.status == "failed":
            # Names and decoder texts may hold [brackets]: printed as text, never as markup; and
            # control characters (a terminal command in a file name): escaped.
            reason = escape(show(record.error or ""))
            where = f" window {record.window['index']}" if record.window else ""
            progress.console.print(f"[yellow]failed[/] {escape(show(record.video))}{where}: {reason}")
        progress.update(task, advance=1, **counts)

    try:
        summary = caption_folders(
            video_dirs, out, settings, on_start=on_start, on_record=on_record, wait_settled=wait_settled
        )
    except (ConfigError, EngineError) as exc:
        fail(str(exc))
    finally:
        progress.stop()
    echo_json(summary, indent=2)


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
    show_clips: int = typer.Option(5, "--show", help="Worst and best clips shown with their frames."),
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
    from captioner.evaluation.command import run_eval
    from captioner.evaluation.references import ReferenceLimits
    from captioner.evaluation.results import ANY_ADAPTER

    def pick(name: str | None) -> str | None:
        return ANY_ADAPTER if name is None else None if name.lower() == "none" else name

    settings = checked_settings()  # CAPTIONER_REFERENCE_MAX_* or the config file
    code = run_eval(
        captions, refs, out, against=against, regression_threshold=threshold, worst_best=show_clips,
        adapter=pick(adapter), against_adapter=pick(against_adapter),
        limits=ReferenceLimits(settings.reference_max_line_bytes, settings.reference_max_file_bytes),
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
    from captioner.records.export import ExportError, export

    try:
        result = export(target, fmt.lower(), out=out, all_versions=all_versions)
    except ExportError as exc:
        fail(str(exc))
    if result.chosen is not None:
        typer.echo(
            f"version: {show(result.chosen)} [{result.versions[0]['version']}], "
            f"that of the newest ok record ({show(result.chosen_at or 'no time')})",
            err=True,
        )
        if result.left_out:
            typer.echo(
                f"left out: {len(result.left_out)} other version(s) "
                f"({show('; '.join(v['label'] for v in result.left_out))}); --all-versions exports them",
                err=True,
            )
    if result.without_ok:
        typer.echo(
            f"{result.without_ok} video(s) have only failed records in the exported version(s): no row", err=True
        )
    echo_json(result.summary())


@app.command("frames")
def frames_(
    videos: list[Path] = typer.Argument(..., help="Video files."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for DIR/<video stem>/00.png ... and frames.json."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the tier's)."),
    model: Optional[str] = typer.Option(None, help="Model whose input size the frames take; 'demo' = built-in."),
    frame_size: Optional[int] = typer.Option(
        None, "--frame-size", min=1, help="Side of the square frames (default: the model's config.json)."
    ),
    tier: Optional[str] = typer.Option(None, help="auto|cpu|t4|l4|a100-40|a100-80|h100 (sets the default frames)."),
    keyframe_tolerance: Optional[float] = typer.Option(
        None, help="Keyframe tolerance (share of a segment); 0 = exact."
    ),
    decode_timeout: Optional[float] = typer.Option(None, help="Seconds before a clip's decoder is killed."),
    windows: Optional[str] = typer.Option(None, help=WINDOWS_HELP + " A windowed video gets a folder per window."),
) -> None:
    """Write the frames the model would see of each video, with how they were taken (frames.json).

    Needs no model weights: the frame size comes from the model's config.json or --frame-size.
    Prints one JSON line per video (per window of a windowed one) on stdout; exit status 1 when a
    video has no frames.
    """
    from captioner.errors import ConfigError
    from captioner.frames.save import save_frames
    from captioner.planning import frame_spec_for
    from captioner.tiers import resolve_profile

    setup_logging(False)
    settings = checked_settings(
        model=model, tier=tier, frames=frames, keyframe_tolerance=keyframe_tolerance, decode_timeout=decode_timeout,
        windows=windows,
    )  # fmt: skip
    try:
        count = settings.frames or resolve_profile(settings.tier, settings.profile).frames
        spec = frame_spec_for(settings, count, frame_size or frame_size_of(settings))
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    failed = 0
    for result in save_frames(videos, out, spec, settings.decode_timeout, settings.window_policy()):
        if result.get("error"):
            failed += 1
            where = f" window {result['window']['index']}" if result.get("window") else ""
            typer.echo(f"failed {show(result['video'])}{where}: {show(result['error'])}", err=True)
        echo_json(result)
    raise typer.Exit(1 if failed else 0)


def frame_size_of(settings: Any) -> int:
    """The model's frame size from its config.json; the demo recipe's when the demo checkpoint is not built yet."""
    from captioner.config import DEMO
    from captioner.planning import model_frame_size

    if settings.model == DEMO and not (settings.demo_dir / "base" / "config.json").is_file():
        from captioner.demo.recipe import DEMO_FRAME_SIZE

        return DEMO_FRAME_SIZE
    return model_frame_size(settings)
