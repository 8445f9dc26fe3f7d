"""A video stream's frames in decode order, as the packet scan or a container's index gives them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Boxes and elements an index walk reads at most (16 bytes each, so 128 MB at worst): a day at
# 60 fps is 5.2 million Matroska blocks. Past it the walk gives up and the packet scan's budget rules.
MAX_ENTRIES = 8_000_000


@dataclass
class Timeline:
    """The video stream's frames in decode order, from the index or a packet scan."""

    pts: list[int] = field(default_factory=list)  # presented video frames, decode order
    keys: list[bool] = field(default_factory=list)
    hidden: int = 0  # video frames flagged discard: an edit list's lead-in
    open_gop: bool = False  # a keyframe followed (in decode order) by frames shown before it
    stream_end: dict[int, float] = field(default_factory=dict)  # per stream: where its packets end, s
    error: str | None = None  # why the reading stopped early, if it did
    cut: str | None = None  # the index points past the end of the file: why it is incomplete
    source: str = "scan"  # "scan", or the index read: "mp4 index", "mp4 fragments", "matroska blocks"


def from_decode_order(pts: np.ndarray, keys: np.ndarray, discard: np.ndarray, source: str) -> Timeline:
    """A `Timeline` from per-packet arrays in decode order (the same rules as the packet scan)."""
    shown = ~discard
    pts, keys = pts[shown], keys[shown]
    # Open GOP: the frame decoded right after a keyframe (not the first) is shown before it.
    after = np.flatnonzero(keys[1:-1]) + 1
    open_gop = bool(np.any(pts[after + 1] < pts[after])) if len(after) else False
    return Timeline(pts.tolist(), keys.tolist(), int(discard.sum()), open_gop, source=source)
