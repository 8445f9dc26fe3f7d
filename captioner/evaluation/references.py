"""Reading reference captions for evaluation.

Three layouts are accepted (see ``eval/README.md``):

* JSONL: one object per line, ``{"video": ..., "references": ["...", ...]}``, optional
  ``"category"``, optional ``"start_s"`` and ``"end_s"`` (a time range of the video, seconds);
* CSV (UTF-8) with ``video`` and ``reference`` columns (one reference per row, a
  video may have several rows), optional ``category``, ``start_s`` and ``end_s`` columns;
* a folder of AI-Hub 대한민국 배경영상 label JSON files: the Korean caption at
  ``caption.korean``, the category at ``category`` (``category.main`` when it is an
  object), the video's file name at ``filename`` (or the label file's own name).

Videos are keyed by their file name stem, NFC-normalised. A reference without a time range is
of the whole file (`ReferenceSet.clips`); one with a range (`ReferenceSet.ranged`) is matched to
a window of a long take (`captioner.evaluation.spans`, `matching`). A range must be two numbers
with 0 <= start_s < end_s; anything else is a problem of its line. Every problem found is
collected with its file and line, and all of them are raised together in one
:class:`InputError`, so a user can fix a file in one pass.

Sizes are checked before memory is spent (:class:`ReferenceLimits`, settings
``reference_max_line_bytes`` and ``reference_max_file_bytes``): a reference caption is 0.1-2 KB,
so a JSONL line, a CSV line or field, or an AI-Hub label file over the line limit (1 MiB) is a
problem of its own line, read past in bounded pieces; a file (or a label folder) over the file
limit (1 GiB) is refused before it is read.

A reference whose text looks damaged (U+FFFD, or mojibake such as a UTF-8 file saved
again by a tool that read it as CP949: see :mod:`captioner.textcheck`) is kept and
scored, with a warning naming its file, line and video: it only lowers the scores of
its clip, while the rest of the set stays usable.
"""

from __future__ import annotations

import csv
import logging
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, TextIO

from captioner.evaluation.aihub import read_aihub
from captioner.evaluation.inputs import MAX_LISTED_PROBLEMS, Entry, InputError, ReferenceLimits, category_text
from captioner.evaluation.morphemes import normalize_text
from captioner.evaluation.spans import Span, csv_span, json_span
from captioner.records import json_objects
from captioner.textcheck import MOJIBAKE, REPLACEMENT_CHAR, mojibake_encoding, text_flags

log = logging.getLogger(__name__)

def video_stem(video: str) -> str:
    """Matching key of a video: the NFC file-name stem of a path or name.

    Both separators are accepted because reference files are often written on Windows.
    """
    return name_stem(video.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1])


def name_stem(name: str) -> str:
    """Matching key of a bare file name (no folder): its NFC stem."""
    stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
    return unicodedata.normalize("NFC", stem)


@dataclass
class Reference:
    """The references of one clip."""

    video: str
    references: list[str]
    category: str | None
    source: str  # "file:line" where the clip was first seen
    span: Span | None = None  # the time range these references describe; None: the whole file


@dataclass
class FlaggedReference:
    """A reference text whose characters look damaged (see `captioner.textcheck.text_flags`)."""

    source: str  # "file:line" (the label file for AI-Hub)
    video: str
    index: int  # 1-based, among the references of its line
    text: str  # NFC, as scored and shown
    flags: list[str]
    encoding: str | None  # for mojibake: the codec the UTF-8 text seems to have been read with
    warning: str


@dataclass
class ReferenceSet:
    """All references of an evaluation set, keyed by video stem."""

    path: Path
    kind: str  # "jsonl" | "csv" | "aihub"
    clips: dict[str, Reference]
    warnings: list[str] = field(default_factory=list)
    flagged: list[FlaggedReference] = field(default_factory=list)
    # The `warnings` about `flagged` texts; they were logged when read, so printers may skip them.
    text_warnings: list[str] = field(default_factory=list)
    # References of a time range, by video stem: one `Reference` per distinct range, in file order.
    ranged: dict[str, list[Reference]] = field(default_factory=dict)

    def stems(self) -> set[str]:
        """The videos (stems) that have a reference, of the whole file or of a range."""
        return set(self.clips) | set(self.ranged)

    def all(self) -> list[Reference]:
        """Every `Reference`: of whole files, then of ranges."""
        return list(self.clips.values()) + [ref for refs in self.ranged.values() for ref in refs]

    def flag_counts(self) -> dict[str, int]:
        """How many reference texts carry each text flag."""
        return {flag: sum(flag in f.flags for f in self.flagged) for flag in (REPLACEMENT_CHAR, MOJIBAKE)}


def load_references(path: Path, limits: ReferenceLimits | None = None) -> ReferenceSet:
    """Read references from a JSONL file, a CSV file or a folder of AI-Hub labels.

    Raises :class:`InputError` naming the file and line of every malformed entry, and of every
    line, field or file over `limits` (default: `ReferenceLimits()`).
    """
    path, limits = Path(path), limits or ReferenceLimits()
    if path.is_dir():
        kind, entries, problems = "aihub", *read_aihub(path, limits)
    elif not path.exists():
        raise InputError([f"{path}: references not found"])
    elif too_large := limits.file_problem(path, path.stat().st_size):
        raise InputError([too_large])
    elif path.suffix.lower() == ".csv":
        kind, entries, problems = "csv", *_read_csv(path, limits)
    else:
        kind, entries, problems = "jsonl", *_read_jsonl(path, limits)
    if problems:
        raise InputError(problems)
    refs = ReferenceSet(path=path, kind=kind, clips={})
    for entry in entries:
        refs.flagged += _check_texts(entry.video, entry.texts, entry.source)  # raw: NFC alters CP949 mojibake
        _add(refs, entry)
    # A whole set saved with the wrong encoding would bury every other warning: the first few are
    # listed, then one line counts them all (metrics.json lists every flagged reference).
    shown = [f.warning for f in refs.flagged[:MAX_LISTED_PROBLEMS]]
    if len(refs.flagged) > len(shown):
        counts = ", ".join(f"{flag} {n}" for flag, n in refs.flag_counts().items() if n)
        shown.append(
            f"{path}: {len(refs.flagged)} reference texts look damaged ({counts}), "
            f"{len(refs.flagged) - len(shown)} more than listed above"
        )
    for warning in shown:
        log.warning("%s", warning)
    refs.warnings += shown
    refs.text_warnings = shown
    if not refs.clips and not refs.ranged:
        raise InputError([f"{path}: no references found"])
    return refs



EXCERPT_CHARS = 40


def _check_texts(video: str, texts: list[str], source: str) -> list[FlaggedReference]:
    """The damaged texts among one entry's references, each with its warning."""
    found = []
    for index, text in enumerate(texts, start=1):
        flags = text_flags(text)
        if not flags:
            continue
        encoding = mojibake_encoding(text) if MOJIBAKE in flags else None
        what = []
        if encoding:
            what.append(f"looks like mojibake (UTF-8 read as {encoding})")
        if REPLACEMENT_CHAR in flags:
            what.append("holds U+FFFD (bytes that were not valid UTF-8)")
        excerpt = text.strip()
        excerpt = excerpt if len(excerpt) <= EXCERPT_CHARS else excerpt[:EXCERPT_CHARS] + "…"
        warning = (
            f"{source}: reference {index} of {video} {' and '.join(what)}: {excerpt!r}; "
            "scored as it is (rewrite the file from the original text, as UTF-8)"
        )
        found.append(FlaggedReference(source, video, index, normalize_text(text), flags, encoding, warning))
    return found


def _add(refs: ReferenceSet, entry: Entry) -> None:
    """Merge one entry; a clip (or a clip's range) may be listed several times (several CSV rows, say)."""
    video, category, source = entry.video, entry.category, entry.source
    stem = video_stem(video)
    texts = [normalize_text(t) for t in entry.texts]
    span = entry.span
    if span is None:
        clip = refs.clips.get(stem)
    else:  # the same range listed again merges; another range of the video is another clip
        clip = next((ref for ref in refs.ranged.get(stem, []) if ref.span == span), None)
    if clip is None:
        new = Reference(video, list(dict.fromkeys(texts)), category, source, span)
        if span is None:
            refs.clips[stem] = new
        else:
            refs.ranged.setdefault(stem, []).append(new)
        return
    for t in texts:
        if t not in clip.references:  # identical references would weigh double in CIDEr-D
            clip.references.append(t)
    if category and clip.category and category != clip.category:
        refs.warnings.append(
            f"{source}: category {category!r} for {stem} differs from {clip.category!r} at {clip.source}; "
            "kept the first"
        )
    clip.category = clip.category or category


def _read_jsonl(path: Path, limits: ReferenceLimits) -> tuple[list[Entry], list[str]]:
    entries: list[Entry] = []
    problems: list[str] = []
    for _lineno, where, obj, problem in json_objects(_jsonl_lines(path, limits, problems), path):
        if obj is None:
            problems.append(problem)
            continue
        video = obj.get("video")
        if not isinstance(video, str) or not video.strip():
            problems.append(f'{where}: missing "video" (a file name or path string)')
            continue
        texts = obj.get("references", obj.get("reference"))
        if isinstance(texts, str):
            texts = [texts]
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(t, str) and t.strip() for t in texts)
        ):
            problems.append(f'{where}: "references" must be a non-empty list of non-empty strings')
            continue
        span, problem = json_span(obj, where)
        if problem:
            problems.append(problem)
            continue
        entries.append(Entry(video, texts, category_text(obj.get("category")), where, span))
    return entries, problems


SKIP_BYTES = 1 << 20  # read at a time past a line over the limit: memory stays bounded


def _jsonl_lines(path: Path, limits: ReferenceLimits, problems: list[str]) -> Iterator[str]:
    """The lines of a JSONL file as text, each read with a bounded readline.

    A line over the limit is read past and given as a blank line, so the numbering holds; its
    problem goes to `problems`, as does a line that is not UTF-8, which ends the reading. Lines
    end at "\\n" only: a JSON string may hold U+2028, where str.splitlines would split.
    """
    with path.open("rb") as fh:
        number = 0
        while data := fh.readline(limits.line_bytes + 1):
            number += 1
            if len(data) > limits.line_bytes and not data.endswith(b"\n"):
                problems.append(limits.line_problem(f"{path}:{number}", "a line", len(data) + _skip_line(fh)))
                yield ""
                continue
            try:
                yield data.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                problems.append(
                    f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line); save it as UTF-8"
                )
                return


def _skip_line(fh: BinaryIO) -> int:
    """Read past the rest of the current line; its bytes, without the line end."""
    skipped = 0
    while data := fh.readline(SKIP_BYTES):
        if data.endswith(b"\n"):
            return skipped + len(data) - 1
        skipped += len(data)
    return skipped


class _TooLarge(Exception):
    """A CSV line over the limit: the reading stops there (the message is the problem)."""


def _read_csv(path: Path, limits: ReferenceLimits) -> tuple[list[Entry], list[str]]:
    # csv.reader (not pandas) because its line_num gives true file line numbers, also
    # when a quoted reference spans several lines or blank lines separate rows.
    entries: list[Entry] = []
    problems: list[str] = []
    line = 1
    # The csv module's field limit is one for the whole process (131,072 characters by default):
    # it is the line limit for this read, and is put back after.
    saved_limit = csv.field_size_limit(limits.line_bytes)
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(_csv_lines(fh, path, limits))
            columns = _csv_columns(next(reader, []))
            missing = [c for c in ("video", "reference") if c not in columns]
            if missing:
                found = ", ".join(columns) or "none"
                return [], [f"{path}:1: missing column(s) {', '.join(missing)} (found: {found})"]
            line = reader.line_num + 1
            for row in reader:
                where, line = f"{path}:{line}", reader.line_num + 1
                if problem := _row_problem(row, columns, limits, where):
                    problems.append(problem)
                elif any(cell.strip() for cell in row):
                    entry, problem = _csv_entry(row, columns, where)
                    if entry is None:
                        problems.append(problem)
                    else:
                        entries.append(entry)
    except UnicodeDecodeError as exc:
        return [], [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"]
    except _TooLarge as exc:
        return [], [*problems, str(exc)]
    except csv.Error as exc:
        if "field limit" in str(exc):  # "field larger than field limit (N)": the row where it began
            return [], [*problems, limits.line_problem(f"{path}:{line}", "a field", None)]
        return [], [*problems, f"{path}:{line}: malformed CSV ({exc})"]
    finally:
        csv.field_size_limit(saved_limit)
    return entries, problems


def _csv_entry(row: list[str], columns: dict[str, int], where: str) -> tuple[Entry | None, str]:
    """The entry of a checked, non-blank CSV row, or None and the problem of its time range."""
    span, problem = csv_span(_cell(row, columns, "start_s"), _cell(row, columns, "end_s"), where)
    if problem:
        return None, problem
    video, text = _cell(row, columns, "video"), _cell(row, columns, "reference")
    return Entry(video, [text], category_text(_cell(row, columns, "category")), where, span), ""


def _csv_lines(fh: TextIO, path: Path, limits: ReferenceLimits) -> Iterator[str]:
    """The physical lines of a CSV file opened with newline="", each read with a bounded readline.

    Raises `_TooLarge` at a line over the limit (a quoted field's line ends may be inside it, so
    the reading cannot go on past it).
    """
    number = 0
    while line := fh.readline(limits.line_bytes + 1):
        number += 1
        content = line.rstrip("\r\n")
        if len(content) > limits.line_bytes:  # cut by the readline: its size is not known
            raise _TooLarge(limits.line_problem(f"{path}:{number}", "a line", None))
        if _over(content, limits.line_bytes):
            raise _TooLarge(limits.line_problem(f"{path}:{number}", "a line", len(content.encode("utf-8"))))
        yield line


def _over(text: str, limit: int) -> bool:
    """Whether `text` is over `limit` bytes as UTF-8 (encoded only when its length leaves a doubt)."""
    return len(text) * 4 > limit and len(text.encode("utf-8")) > limit


def _csv_columns(header: list[str]) -> dict[str, int]:
    """Column name (stripped, lower case) -> index."""
    return {name.strip().lower(): i for i, name in enumerate(header)}


def _row_problem(row: list[str], columns: dict[str, int], limits: ReferenceLimits, where: str) -> str | None:
    """What is wrong with a CSV row (a blank row is not wrong), or None."""
    if any(_over(cell, limits.line_bytes) for cell in row):  # a quoted field over several lines
        return limits.line_problem(where, "a field", max(len(cell.encode("utf-8")) for cell in row))
    if not any(cell.strip() for cell in row):
        return None
    video, text = _cell(row, columns, "video"), _cell(row, columns, "reference")
    return None if video and text else f"{where}: empty {'video' if not video else 'reference'}"


def _cell(row: list[str], columns: dict[str, int], name: str) -> str:
    """A stripped cell by column name; "" when the column is absent or the row short."""
    i = columns.get(name)
    return row[i].strip() if i is not None and i < len(row) else ""
