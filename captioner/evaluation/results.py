"""What an evaluation holds: caption sets read for scoring, their scores, and the whole evaluation.

The bottom of the evaluation room: `captions` fills a `CaptionSet`, `scoring` turns it into
`ScoredCaptions`, `command` gathers them in an `Evaluation`, and `report` renders one. Every one of
them imports these types from here, so none of them needs another to name what it works on.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from captioner.evaluation.references import ReferenceSet
from captioner.windows import Window

ANY_ADAPTER = "*"  # load_captions: records of every adapter


@dataclass
class EvaluatedClip:
    """The evaluated (last) record of one video, or of one window of a long take."""

    stem: str
    video: str
    status: str
    video_raw: str | None
    caption: str
    error: str | None
    version: str
    line: int  # line in `where`'s file
    where: str = ""  # "file:line" of the record
    text_flags: list[str] = field(default_factory=list)  # what is wrong with the caption's characters
    window: Window | None = None  # the window of a long take this record captioned; None: the whole file


@dataclass
class CaptionSet:
    """Caption records of an output folder or captions file, last record per video stem (and window)."""

    path: Path
    clips: dict[str, EvaluatedClip]  # records of whole files, by stem
    records: int
    versions_all: Counter
    warnings: list[str] = field(default_factory=list)
    adapter: str | None = ANY_ADAPTER  # the adapter whose records were kept
    # Records of the windows of long takes: stem -> window index -> record. A stem is in `clips` or
    # here, never both: its newest record says whether it was captioned whole or window by window.
    windows: dict[str, dict[int, EvaluatedClip]] = field(default_factory=dict)

    def stems(self) -> set[str]:
        """The videos (stems) that have an evaluated record."""
        return set(self.clips) | set(self.windows)

    def evaluated(self) -> list[EvaluatedClip]:
        """Every evaluated record: of whole files, then of windows."""
        return list(self.clips.values()) + [clip for wins in self.windows.values() for clip in wins.values()]

    @property
    def name(self) -> str:
        """The path, and the adapter when one was selected: how reports name this set."""
        return str(self.path) + ("" if self.adapter == ANY_ADAPTER else f" (adapter {self.adapter or 'none'})")

    @property
    def versions_evaluated(self) -> Counter:
        """How many evaluated records come from each version."""
        return Counter(r.version for r in self.evaluated())


@dataclass
class ScoredCaptions:
    """Scores of one caption set against the references: a row per clip and the summary."""

    label: str
    captions: CaptionSet
    per_video: pd.DataFrame
    summary: dict[str, Any]


@dataclass
class Evaluation:
    """Everything a report shows: the captions evaluated, optionally a baseline, and the configuration.

    `run` is the scored output of the `captioner run` being evaluated; `baseline` the one it is
    compared with (``--against``).
    """

    run: ScoredCaptions
    references: ReferenceSet
    config: dict[str, Any]
    baseline: ScoredCaptions | None = None
    comparison: dict[str, Any] | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def per_video_table(self) -> pd.DataFrame:
        """Per-clip table for ``per_video.csv``; with a baseline, its columns sit beside (paired by `clip`)."""
        df = self.run.per_video.drop(columns=["line"]).copy()
        if self.baseline is not None:
            b = self.baseline.per_video[["clip", "video", "status", "caption", "meteor", "rouge_l", "cider_d"]]
            b = b.add_suffix("_baseline").rename(columns={"clip_baseline": "clip", "video_baseline": "video"})
            df = df.merge(b, on=["clip", "video"], how="outer")
            df["meteor_delta"] = df["meteor"] - df["meteor_baseline"]
        for column in ("references", "text_flags"):
            df[column] = [json.dumps(v if isinstance(v, list) else [], ensure_ascii=False) for v in df[column]]
        # Stable: a video's rows stay in the order `matching.pair_up` gives them (its windows in order).
        return df.sort_values("video", kind="stable").reset_index(drop=True)
