"""Windows of a long take: which time ranges of a file get a caption of their own.

A 2-hour take summed up from 8 frames 15 minutes apart describes eight unrelated moments, so a
long file is captioned window by window, each window from the tier's frames inside it. The policy
(`--windows`, `CAPTIONER_WINDOWS`):

- `none`: one caption for the whole file (`plan_windows` returns None);
- `fixed:SECONDS[:OVERLAP]`: windows of that length, each starting SECONDS - OVERLAP after the last;
- `auto` (default): files up to `window_auto_max_s` get one caption, longer ones `fixed:window_seconds`;
- `shots`: windows cut at shot boundaries (`cuts`), long shots split as `fixed:window_seconds`.

Times are seconds on the presented timeline (from the first presented frame), end exclusive,
rounded to milliseconds. A last window shorter than half a window is merged into the one before,
so no caption is made from a sliver of a few frames.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Sequence

from captioner.errors import ConfigError

Kind = Literal["none", "auto", "fixed", "shots"]


@dataclass(frozen=True)
class Window:
    """One time range of a file captioned on its own: [start_s, end_s), and its place in the file."""

    index: int
    start_s: float
    end_s: float

    @property
    def length_s(self) -> float:
        """Seconds the window spans."""
        return self.end_s - self.start_s

    def as_json(self) -> dict[str, Any]:
        """The window as records and `frames.json` carry it."""
        return {"index": self.index, "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3)}

    @classmethod
    def of(cls, value: dict[str, Any]) -> Window:
        """A window read back from a record's `window` (as `as_json` wrote it)."""
        return cls(int(value["index"]), float(value["start_s"]), float(value["end_s"]))


def window_problem(window: Any) -> str | None:
    """What is wrong with a record's `window` value, or None (null or absent: the whole file).

    A window is `{"index": int >= 0, "start_s": number, "end_s": number}` with 0 <= start < end.
    """
    if window is None:
        return None
    if not isinstance(window, dict):
        return f"window must be null or an object, not {type(window).__name__}"
    index, start, end = window.get("index"), window.get("start_s"), window.get("end_s")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return f"window index must be an integer >= 0, not {index!r}"
    return range_problem(start, end)


def range_problem(start: Any, end: Any) -> str | None:
    """What is wrong with a time range in seconds, or None: both numbers, finite, 0 <= start < end."""
    for name, value in (("start_s", start), ("end_s", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name} must be a number of seconds, not {value!r}"
    if not 0 <= start < end:
        return f"the range must have 0 <= start_s < end_s (got {start!r} to {end!r})"
    return None


def record_window(record: dict[str, Any]) -> Window | None:
    """The window a record is of, None for the whole file (records of runs before windows have no `window` key).

    Assumes a checked window (`window_problem`).
    """
    window = record.get("window")
    return None if window is None else Window.of(window)


class Clip(NamedTuple):
    """The unit of captioning work: a file, or one window of it (None: the whole file)."""

    path: Path
    window: Window | None = None

    @property
    def index(self) -> int | None:
        """The window's index, None for the whole file (with the path's bytes, the record's identity)."""
        return None if self.window is None else self.window.index


@dataclass(frozen=True)
class WindowPolicy:
    """How files are cut into windows; `parse` reads it from `--windows` text."""

    kind: Kind = "auto"
    seconds: float = 30.0  # fixed windows' length (auto and shots: `window_seconds`)
    overlap: float = 0.0
    auto_max_s: float = 60.0  # auto: files up to this length get one caption

    @classmethod
    def parse(cls, text: str, auto_max_s: float = 60.0, window_seconds: float = 30.0) -> WindowPolicy:
        """`auto`, `none`, `fixed:SECONDS[:OVERLAP]` or `shots`; ConfigError naming the setting otherwise."""
        if window_seconds <= 0 or auto_max_s < 0:
            raise ConfigError(
                f"window_seconds must be > 0 and window_auto_max_s >= 0 (got {window_seconds}, {auto_max_s})"
            )
        value = text.strip().lower()
        if value in ("auto", "none"):
            return cls(value, window_seconds, 0.0, auto_max_s)  # type: ignore[arg-type]
        if value == "shots":
            if importlib.util.find_spec("scenedetect") is None:
                raise ConfigError("--windows shots: not available yet (needs PySceneDetect, which is not installed)")
            return cls("shots", window_seconds, 0.0, auto_max_s)
        if value.startswith("fixed:"):
            return cls("fixed", *_fixed_numbers(text, value[len("fixed:") :]), auto_max_s)
        raise ConfigError(f"--windows {text!r}: expected auto, none, fixed:SECONDS[:OVERLAP] or shots")

    def describe(self) -> str:
        """The policy as `--windows` text."""
        if self.kind == "fixed":
            return f"fixed:{self.seconds:g}" + (f":{self.overlap:g}" if self.overlap else "")
        return self.kind


def _fixed_numbers(text: str, rest: str) -> tuple[float, float]:
    """(seconds, overlap) of `fixed:SECONDS[:OVERLAP]`, checked."""
    parts = rest.split(":")
    try:
        if len(parts) > 2:
            raise ValueError
        seconds = float(parts[0])
        overlap = float(parts[1]) if len(parts) == 2 else 0.0
    except ValueError:
        raise ConfigError(f"--windows {text!r}: expected fixed:SECONDS or fixed:SECONDS:OVERLAP, numbers") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"--windows {text!r}: a window must last more than 0 seconds")
    if not 0 <= overlap < seconds:
        raise ConfigError(f"--windows {text!r}: the overlap must be at least 0 and shorter than the window")
    return seconds, overlap


def plan_windows(duration_s: float, policy: WindowPolicy, cuts: Sequence[float] | None = None) -> list[Window] | None:
    """The windows of a file lasting `duration_s`, or None for one caption of the whole file.

    `cuts`: shot boundaries (seconds), needed by the `shots` policy only.
    """
    if policy.kind == "none" or duration_s <= 0:
        return None
    if policy.kind == "auto":
        return None if duration_s <= policy.auto_max_s else fixed_windows(0.0, duration_s, policy.seconds)
    if policy.kind == "fixed":
        return fixed_windows(0.0, duration_s, policy.seconds, policy.overlap)
    if cuts is None:
        raise ConfigError("--windows shots: shot boundaries are not found yet (no shot detector in this version)")
    return shot_windows(duration_s, cuts, policy.seconds)


def fixed_windows(start_s: float, end_s: float, seconds: float, overlap: float = 0.0, first: int = 0) -> list[Window]:
    """Windows of `seconds` over [start_s, end_s), each `seconds - overlap` after the last, numbered from `first`.

    Starts are computed as multiples of the step (not summed), so 720 windows of 10 s end at 7200 s
    exactly. A last window shorter than half a window goes into the one before.
    """
    step = seconds - overlap
    spans: list[tuple[float, float]] = []
    while True:
        start = start_s + len(spans) * step
        end = min(start + seconds, end_s)
        spans.append((start, end))
        if end >= end_s - 1e-9:
            break
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < seconds / 2:
        spans[-2:] = [(spans[-2][0], end_s)]
    return [Window(first + i, round(a, 3), round(b, 3)) for i, (a, b) in enumerate(spans)]


def shot_windows(duration_s: float, cuts: Sequence[float], seconds: float) -> list[Window]:
    """One window per shot between `cuts`; a shot longer than `seconds` split as fixed windows."""
    bounds = [0.0, *sorted(c for c in cuts if 0 < c < duration_s), duration_s]
    windows: list[Window] = []
    for start, end in zip(bounds, bounds[1:]):
        if end - start <= 0:
            continue
        windows += fixed_windows(start, end, seconds, first=len(windows))
    return windows
