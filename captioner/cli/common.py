"""What every `captioner` command shares: the Typer app, settings from flags, logging, errors.

Console output shows outside text (file names, captions, error messages naming them) through
`captioner.escaping`: `fail` and `show` escape control characters, `echo_json` prints JSON that
is safe on a terminal, and every log record's values are escaped from the start of any command.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import typer

from captioner.config import Settings
from captioner.escaping import install_log_escaping, printable, printable_json

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Detailed Korean captions for video folders.")


@app.callback()
def before_any_command() -> None:
    """Escape log records from the start of every command, also those that never call `setup_logging`."""
    install_log_escaping()


def fail(message: str, code: int = 2) -> None:
    """Print `message` as an error on stderr and exit with `code` (2: bad input or setup).

    The message is one line: a line break or terminal command in a file name it quotes is escaped.
    """
    typer.secho(f"error: {printable(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def show(value: Any) -> str:
    """Outside text (a path, a name, a decoder's message) for a console line: control characters escaped."""
    return printable(str(value))


def echo_json(value: Any, indent: int | None = None) -> None:
    """Print `value` as JSON on stdout (Korean readable; every control character escaped, as JSON allows)."""
    typer.echo(printable_json(value, indent=indent))


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`FIELD=VALUE` pairs; values are parsed as JSON when they can be (numbers, true/false, null)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--set expects FIELD=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def settings_from(**flags: Any) -> Settings:
    """Settings from CLI flags over CAPTIONER_* variables over defaults."""
    given = {key: value for key, value in flags.items() if value is not None}
    sets = given.pop("sets", None)
    settings = Settings(**given)
    if sets:
        settings.profile = {**settings.profile, **parse_sets(sets)}
    return settings


def setup_logging(verbose: bool) -> None:
    """Log to stderr (INFO with `verbose`), keeping stdout for the command's result."""
    # stdout carries only the command's result (JSON); vLLM logs to stdout unless told otherwise.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("captioner").setLevel(logging.INFO)
    install_log_escaping()  # also for a worker: Celery replaces the handlers set here, not the record factory
    if not verbose:
        # Repeated on every generate() call on CPU, and harmless. A filter, not a level: vLLM
        # reapplies its logging config when the engine loads, which resets its loggers' levels.
        logging.getLogger("vllm.v1.worker.cpu_worker").addFilter(lambda record: record.levelno >= logging.ERROR)


def write_and_show(out: Path, result: dict[str, Any], title: str, rows: list[tuple[str, str]]) -> None:
    """Write a benchmark's JSON to `out` and print its (measure, result) table."""
    from rich.console import Console
    from rich.table import Table

    from captioner.records import write_atomic

    write_atomic(out, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    summary = Table("measure", "result", title=title)
    for row in rows:
        summary.add_row(*row)
    Console().print(summary)
    typer.echo(f"written: {show(out)}", err=True)


def with_demo(settings: Settings) -> Settings:
    """`settings`, with the demo checkpoint built first when they name it (the first time: about two minutes)."""
    if settings.uses_demo:
        from captioner.demo import ensure_demo_model

        ensure_demo_model(settings.demo_dir)
    return settings


def checked_settings(**flags: Any) -> Settings:
    """`settings_from`, with bad values reported as one clear message (exit status 2)."""
    from pydantic import ValidationError

    try:
        return settings_from(**flags)
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else None
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors) if errors else str(exc))
        raise  # unreachable: fail exits


def job_store(settings: Settings, patient: bool = False) -> Any:
    """The service's job store for `settings`, or exit 2 saying why Redis cannot be used."""
    from captioner.service import JobStore, SubmitError

    store = JobStore.connect(settings, patient=patient)
    try:
        store.ping()
    except SubmitError as exc:
        fail(str(exc))
    return store
