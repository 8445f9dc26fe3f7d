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
    if not verbose:  # repeated on every generate() call on CPU, and harmless
        logging.getLogger("vllm.v1.worker.cpu_worker").setLevel(logging.ERROR)


@app.command()
def run(
    video_dirs: list[Path] = typer.Argument(..., help="Folders to caption (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for captions.jsonl and summary.json."),
    model: Optional[str] = typer.Option(None, help="Model folder or hub id; 'demo' = built-in demo checkpoint."),
    adapter: Optional[str] = typer.Option(None, help="LoRA adapter folder; 'demo' = the demo adapter."),
    tier: Optional[str] = typer.Option(None, help="auto|cpu|t4|l4|a100|h100."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the tier's)."),
    prompt: Optional[str] = typer.Option(None, help="Prompt name under prompts/, or name@version."),
    sampling: Optional[str] = typer.Option(None, help="default | deterministic (greedy, for evaluation)."),
    decode_timeout: Optional[float] = typer.Option(None, help="Seconds before a clip's decoder is killed."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a tier profile field: FIELD=VALUE."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log engine and pipeline progress."),
) -> None:
    """Caption every video under VIDEO_DIRS in Korean; re-running skips videos already done."""
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from captioner.pipeline import ConfigError, run as run_pipeline

    _setup_logging(verbose)
    try:
        settings = _settings(
            model=model, adapter=adapter, tier=tier, frames=frames, prompt=prompt,
            sampling=sampling, decode_timeout=decode_timeout, sets=sets,
        )
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    progress = Progress(
        TextColumn("[bold]captioning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("ok {task.fields[ok]} failed {task.fields[failed]}"),
        disable=not sys.stderr.isatty(), console=None, transient=False,
    )
    task = progress.add_task("captioning", total=None, ok=0, failed=0)
    counts = {"ok": 0, "failed": 0}

    def on_start(todo: int, skipped: int) -> None:
        typer.echo(f"{todo} videos to caption, {skipped} already done", err=True)
        progress.update(task, total=todo)
        progress.start()

    def on_record(record: Any) -> None:
        counts[record.status] += 1
        if record.status == "failed":
            progress.console.print(f"[yellow]failed[/] {record.video}: {record.error}")
        progress.update(task, advance=1, **counts)

    try:
        summary = run_pipeline(video_dirs, out, settings, on_start=on_start, on_record=on_record)
    except ConfigError as exc:
        _fail(str(exc))
    finally:
        progress.stop()
    typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))


@app.command("eval")
def eval_(
    captions: Path = typer.Argument(..., help="captions.jsonl written by `captioner run`."),
    refs: Path = typer.Option(..., "--refs", help="References: JSONL, CSV, or a folder of AI-Hub label JSON files."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (report.html, metrics.json, per_video.csv)."),
    against: Optional[Path] = typer.Option(None, help="Another captions.jsonl to compare with (the baseline)."),
    threshold: float = typer.Option(0.05, help="Relative METEOR drop that counts as a regression."),
    show: int = typer.Option(5, help="Worst and best clips shown with their frames."),
) -> None:
    """Score captions against Korean references (METEOR over Kiwi morphemes) and write a report.

    Exit status: 0 ok, 1 regression against --against, 2 bad input.
    """
    from captioner.evaluation.run import run_eval

    raise typer.Exit(run_eval(captions, refs, out, against=against, regression_threshold=threshold, worst_best=show))


@app.command("demo-model")
def demo_model(
    directory: Path = typer.Argument(..., help="Folder to write base/ and adapter/ into."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
) -> None:
    """Write a small random-weight LLaVA-NeXT-Video checkpoint and LoRA adapter (captions are noise)."""
    from captioner.demo_model import build_demo_model

    base, adapter = build_demo_model(directory, seed=seed)
    typer.echo(f"base model: {base}\nadapter:    {adapter}")


def main() -> None:
    """Entry point of the `captioner` command."""
    app()


if __name__ == "__main__":
    main()
