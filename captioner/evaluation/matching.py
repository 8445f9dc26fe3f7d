"""Which references each evaluated record is scored against: one `Pairing` per row of scores.

Per video (stem), the evaluated records are its whole-file record, or the records of its windows
(see `captions`). The rules (the shared design of issue 21):

- a reference of a time range scores the record whose window overlaps the range most (ties: the
  lowest index); a whole-file record covers every range; a range no window overlaps, or of a
  video without a record, is a row of its own with no caption;
- a reference without a range is of the whole file: it scores the whole-file record, or, for a
  file captioned window by window, each window that no ranged reference was matched to;
- a whole-file record is scored against the whole-file references when there are any, else
  against the ranged references matched to it; a window against its ranged references, else the
  whole-file references.

Each row has a key (`Pairing.clip`) that pairs it with the same row of another run (`--against`):
the stem for a whole file, "stem #3" for window 3, "stem @10-20 s" for a range without a record.
"""

from __future__ import annotations

from dataclasses import dataclass

from captioner.evaluation.references import Reference, ReferenceSet
from captioner.evaluation.results import CaptionSet, EvaluatedClip
from captioner.evaluation.spans import Span, best_window
from captioner.windows import Window


@dataclass
class Pairing:
    """One row of scores: a record (or None: no caption), the reference texts it is scored against."""

    clip: str  # the row's key, unique within a run
    stem: str
    record: EvaluatedClip | None
    references: list[str]  # empty: the record has no reference
    category: str | None
    span: Span | None  # the time range of the references (None: of the whole file, or no reference)
    reference_video: str  # the video as the references name it ("" when there is none)

    @property
    def window(self) -> Window | None:
        """The window of the record (None: a whole file, or no record)."""
        return self.record.window if self.record is not None else None


def pair_up(captions: CaptionSet, refs: ReferenceSet) -> list[Pairing]:
    """Every row of scores of `captions` against `refs`, by video stem, then window, then range."""
    rows: list[Pairing] = []
    for stem in sorted(captions.stems() | refs.stems()):
        whole = captions.clips.get(stem)
        records = [whole] if whole is not None else list(captions.windows.get(stem, {}).values())
        rows += _pairs_of(stem, records, refs.clips.get(stem), refs.ranged.get(stem, []))
    return rows


def _pairs_of(
    stem: str, records: list[EvaluatedClip], unranged: Reference | None, ranged: list[Reference]
) -> list[Pairing]:
    """The rows of one video: its records (whole file or windows) and the references of it."""
    matched: dict[int, list[Reference]] = {}  # position in `records` -> ranged references
    unmatched: list[Reference] = []
    windows = [record.window for record in records if record.window is not None]
    for ref in ranged:
        if records and records[0].window is None:  # a whole-file record covers every range
            matched.setdefault(0, []).append(ref)
            continue
        best = best_window(ref.span, windows) if ref.span is not None else None
        if best is None:
            unmatched.append(ref)
        else:
            position = next(i for i, record in enumerate(records) if record.window == best)
            matched.setdefault(position, []).append(ref)
    rows = []
    for position, record in enumerate(records):
        mine = matched.get(position, [])
        whole = [unranged] if unranged is not None else []
        chosen = (whole or mine) if record.window is None else (mine or whole)
        rows.append(_pairing(stem, record, chosen))
    if not records and unranged is not None:
        rows.append(_pairing(stem, None, [unranged]))
    rows += [_pairing(stem, None, [ref]) for ref in unmatched]
    return rows


def _pairing(stem: str, record: EvaluatedClip | None, refs: list[Reference]) -> Pairing:
    """The row of `record` scored against `refs` (texts merged, first category and name kept)."""
    texts = list(dict.fromkeys(text for ref in refs for text in ref.references))
    spans = [ref.span for ref in refs if ref.span is not None]
    span = None
    if spans and len(spans) == len(refs):  # only ranged references: the range they cover together
        span = Span(min(s.start_s for s in spans), max(s.end_s for s in spans))
    if record is not None and record.window is not None:
        clip = f"{stem} #{record.window.index}"
    elif record is None and span is not None:
        clip = f"{stem} @{span.label()}"
    else:
        clip = stem
    category = next((ref.category for ref in refs if ref.category), None)
    return Pairing(clip, stem, record, texts, category, span, refs[0].video if refs else "")
