"""`captioner` command line: one module per group of commands, all on one Typer app.

- `captioning`: run, eval, export, frames;
- `measuring`: bench, bench-service, plan;
- `models`: train, demo-model, quantize;
- `service`: worker, submit, status, cancel, health, beat.
"""

from captioner.cli.common import app
from captioner.cli import captioning, measuring, models, service  # noqa: F401,E402 - they register the commands

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the `captioner` command."""
    app()
