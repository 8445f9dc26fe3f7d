"""Time ranges in evaluation: a reference's `start_s`/`end_s`, a record's window, and which window a range scores.

A reference may name a time range of its video (seconds from the first shown frame, end
exclusive): it then scores the record whose window overlaps it most (ties: the lowest index). A
record's window (`captioner.windows.Window`) is the one the run captioned (`window` in the record;
none: the whole file).
The rules for a row of scores (which references a record is scored against) are in `matching`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from captioner.windows import Window, range_problem


@dataclass(frozen=True)
class Span:
    """A time range in seconds, `start_s` <= t < `end_s`."""

    start_s: float
    end_s: float

    def overlap(self, other: Span | Window) -> float:
        """Seconds this range shares with `other` (0 when they do not meet)."""
        return max(0.0, min(self.end_s, other.end_s) - max(self.start_s, other.start_s))

    def label(self) -> str:
        """How a person reads it: "10.0-20.0 s"."""
        return f"{self.start_s:g}-{self.end_s:g} s"


def json_span(obj: dict[str, Any], where: str) -> tuple[Span | None, str | None]:
    """The range a JSONL reference names (`start_s`, `end_s`), or None for the whole file; or the problem.

    Both keys or neither: a range open at one end would silently mean "to the end of the file".
    """
    start, end = obj.get("start_s"), obj.get("end_s")
    if start is None and end is None:
        return None, None
    if start is None or end is None:
        missing = "start_s" if start is None else "end_s"
        return None, f'{where}: "{missing}" missing: a time range needs both "start_s" and "end_s" (seconds)'
    if problem := range_problem(start, end):
        return None, f"{where}: bad time range: {problem}"
    return Span(float(start), float(end)), None


def csv_span(start: str, end: str, where: str) -> tuple[Span | None, str | None]:
    """The range of a CSV row's `start_s`, `end_s` cells (both empty: the whole file), or the problem."""
    if not start and not end:
        return None, None
    values = []
    for name, cell in (("start_s", start), ("end_s", end)):
        try:
            value = float(cell)
        except ValueError:
            return None, f"{where}: bad time range: {name} must be a number of seconds, not {cell!r}"
        values.append(value if math.isfinite(value) else cell)
    if problem := range_problem(*values):
        return None, f"{where}: bad time range: {problem}"
    return Span(*values), None


def best_window(span: Span, windows: list[Window]) -> Window | None:
    """The window that overlaps `span` most (ties: the lowest index), or None when none overlaps it."""
    best: Window | None = None
    best_overlap = 0.0
    for window in sorted(windows, key=lambda w: w.index):
        overlap = span.overlap(window)
        if overlap > best_overlap:
            best, best_overlap = window, overlap
    return best
