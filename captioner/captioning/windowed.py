"""Which clips of a run are still to do: each window of a long take resumes on its own.

The windows themselves are planned by `frames.pool.plan_clips` (probed in the decoder processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from captioner.adapters import Adapter
from captioner.planning import Plan
from captioner.records import VersionKey, latest_by_clip
from captioner.sources import video_bytes
from captioner.windows import Clip


def pending_clips(
    planned: Mapping[Path, list[Clip]], records: list[dict[str, Any]], plan: Plan
) -> dict[Clip, tuple[Adapter, ...]]:
    """Each clip still to caption, with the plan's adapters it has no `ok` record of (of that adapter's version).

    A clip is matched to its records by the exact bytes of its path and its window's index; a
    window's record counts only for the same time range (a run with another window length numbers
    other ranges alike). A whole-file record of an older run counts for a file the policy does not window.
    """
    adapters = plan.adapters
    done = {adapter: _ok_by_clip(records, plan.key_for(adapter)) for adapter in adapters}
    work: dict[Clip, tuple[Adapter, ...]] = {}
    for path, clips in planned.items():
        identity = video_bytes(path)
        for clip in clips:
            needed = tuple(a for a in adapters if not _same_clip(done[a].get((identity, clip.index)), clip))
            if needed:
                work[clip] = needed
    return work


def _ok_by_clip(records: list[dict[str, Any]], key: VersionKey) -> dict[tuple[bytes, int | None], dict[str, Any]]:
    """The newest record of each clip of version `key`, where it is `ok`."""
    return {clip: record for clip, record in latest_by_clip(records, key).items() if record.get("status") == "ok"}


def _same_clip(record: dict[str, Any] | None, clip: Clip) -> bool:
    """Whether `record` (the clip's newest ok record, if any) is of `clip`'s time range."""
    if record is None:
        return False
    return clip.window is None or record.get("window") == clip.window.as_json()
