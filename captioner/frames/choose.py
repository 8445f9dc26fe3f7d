"""Which frames to decode, and at what size: pure functions of the probed timeline.

Targets are uniform in *time* (the centres of N equal segments of the presented clip), so a
variable-frame-rate clip is sampled where its time goes, not where its frames bunch up.

A keyframe decodes on its own; any other frame needs every frame since the last keyframe. So
each target is served by the cheapest frame within `tolerance` (a share of a segment) of it: its
nearest keyframe when one lies that close, else the frame in reach that follows its keyframe
most closely (never further than the tolerance from the target). Tolerance 0 decodes exactly the
frame nearest each target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TOLERANCE = 0.25  # of a segment: at 8 frames over 10 s, a frame at most 0.31 s from its target


@dataclass(frozen=True)
class FramePick:
    """The frames chosen for one clip, in presentation order."""

    indices: list[int]  # into the presented frames
    targets: list[float]  # the target times, seconds from the first presented frame
    times: list[float]  # the chosen frames' times
    segment_s: float

    @property
    def shift_max(self) -> float:
        """The largest distance between a chosen frame and its target, as a fraction of a segment."""
        if not self.segment_s:
            return 0.0
        return max(abs(t - target) for t, target in zip(self.times, self.targets)) / self.segment_s


def choose_frames(times: np.ndarray, keyframe: np.ndarray, n: int, tolerance: float, frame_s: float) -> FramePick:
    """Pick `n` frames from presented frames at `times` (seconds, ascending; `keyframe` flags them).

    Never the same frame twice when the clip has at least `n` frames; a shorter clip repeats
    frames so every clip yields exactly `n` (and the same token budget).
    """
    if len(times) == 0 or n <= 0:
        raise ValueError("need at least one frame and n > 0")
    count = len(times)
    segment = (float(times[-1]) + frame_s) / n
    targets = (np.arange(n) + 0.5) * segment
    # The frame nearest each target time.
    after = np.clip(np.searchsorted(times, targets), 0, count - 1)
    before = np.clip(after - 1, 0, count - 1)
    exact = np.where(np.abs(times[before] - targets) <= np.abs(times[after] - targets), before, after)
    chosen = exact.copy()
    if tolerance > 0:
        # What decoding a frame costs: the frames since its keyframe (presentation order is close
        # enough to decode order for this).
        cost = np.arange(count) - last_keyframe(keyframe)
        reach = tolerance * segment
        for i, target in enumerate(targets):
            lo = int(np.searchsorted(times, target - reach - 1e-9))
            hi = int(np.searchsorted(times, target + reach + 1e-9, side="right"))
            if hi > lo:  # cheapest first, then nearest the target
                chosen[i] = min(range(lo, hi), key=lambda k: (cost[k], abs(times[k] - target)))
    if count >= n:
        chosen = _distinct(chosen, exact, count)
    indices = [int(i) for i in chosen]
    return FramePick(indices, [float(t) for t in targets], [float(times[i]) for i in indices], segment)


def last_keyframe(keyframe: np.ndarray) -> np.ndarray:
    """For each frame, the index of the last keyframe at or before it (0 before the first)."""
    return np.maximum.accumulate(np.where(keyframe, np.arange(len(keyframe)), 0))


def _distinct(chosen: np.ndarray, exact: np.ndarray, count: int) -> np.ndarray:
    """Strictly increasing indices: a frame shared by two targets serves the first; later ones go exact."""
    n = len(chosen)
    out = chosen.copy()
    for i in range(1, n):
        if out[i] <= out[i - 1]:
            out[i] = max(exact[i], out[i - 1] + 1)
    for i in range(n - 1, -1, -1):  # never past the last frame: pull the tail back
        out[i] = min(out[i], count - (n - i), out[i + 1] - 1 if i + 1 < n else count - 1)
    return out


def decode_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Size (w, h) with the shorter edge scaled to `short_side`, aspect ratio kept, even numbers."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    # Round the long edge to even: some swscale paths reject odd sizes.
    w = short_side if width <= height else int(round(width * scale / 2) * 2)
    h = short_side if height < width else int(round(height * scale / 2) * 2)
    return max(w, 2), max(h, 2)
