"""What every reader of references shares: the input error, the size limits, one entry as read.

The bottom of the reference readers (`references` reads JSONL and CSV, `aihub` the AI-Hub label
folders); both give `Entry` values, and every problem found becomes one line of an `InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from captioner.config import REFERENCE_MAX_FILE_BYTES, REFERENCE_MAX_LINE_BYTES
from captioner.errors import CaptionerError
from captioner.escaping import printable
from captioner.evaluation.morphemes import normalize_text
from captioner.evaluation.spans import Span

MAX_LISTED_PROBLEMS = 20


class InputError(CaptionerError):
    """Evaluation input that cannot be used; ``problems`` name the file and line of each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        # One line per problem: a file name's control characters are escaped, never a line break or
        # a terminal command (see `captioner.escaping`).
        shown = [printable(problem) for problem in problems[:MAX_LISTED_PROBLEMS]]
        more = len(problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more problems" if more > 0 else "")
        super().__init__(text)


@dataclass(frozen=True)
class ReferenceLimits:
    """How large references may be; the defaults are the settings' (`captioner.config`)."""

    line_bytes: int = REFERENCE_MAX_LINE_BYTES  # a JSONL line, a CSV line or field, an AI-Hub label file
    file_bytes: int = REFERENCE_MAX_FILE_BYTES  # a JSONL or CSV file, all label files of a folder together

    def line_problem(self, where: str, what: str, size: int | None) -> str:
        """The problem of one line, field or label file over `line_bytes` (`size` None: not measured)."""
        measured = f" of {size:,} bytes," if size is not None else ""
        return (
            f"{where}: {what}{measured} over the limit of {self.line_bytes:,} bytes (setting "
            "reference_max_line_bytes, CAPTIONER_REFERENCE_MAX_LINE_BYTES); a reference caption is a few KB"
        )

    def file_problem(self, path: Path, size: int, what: str = "references file") -> str | None:
        """The problem of a file (or label folder) of `size` bytes over `file_bytes`, or None."""
        if size <= self.file_bytes:
            return None
        return (
            f"{path}: {what} of {size:,} bytes, over the limit of {self.file_bytes:,} bytes "
            "(setting reference_max_file_bytes, CAPTIONER_REFERENCE_MAX_FILE_BYTES)"
        )


class Entry(NamedTuple):
    """One reference entry as read: a video, its texts, category, "file:line", and its time range."""

    video: str
    texts: list[str]
    category: str | None
    source: str
    span: Span | None = None  # the time range the texts describe; None: the whole file


def category_text(value: Any) -> str | None:
    """A category as text: NFC, the `main` of an AI-Hub style object; None when empty."""
    if isinstance(value, dict):  # AI-Hub style {"main": "자연", "sub": "바다"}
        value = value.get("main")
    if value is None or value == "":
        return None
    return normalize_text(str(value))
