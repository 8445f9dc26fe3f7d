"""Small helpers the measurements share."""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable


def in_child_process(function: Callable[..., Any], *args: Any) -> Any:
    """Run `function(*args)` in a fresh spawned process that exits afterwards.

    Each side of a comparison gets the machine (and, on a GPU, the device memory) to itself:
    a second engine or an HF model beside the loaded engine would not fit.
    """
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(function, args)


def per_second(videos: int, seconds: float) -> float:
    """`videos` / `seconds`, rounded for the result document (0 for no time at all)."""
    return round(videos / seconds, 4) if seconds > 0 else 0.0
