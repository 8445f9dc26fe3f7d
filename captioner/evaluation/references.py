"""Reading reference captions for evaluation.

Three layouts are accepted (see ``eval/README.md``):

* JSONL: one object per line, ``{"video": ..., "references": ["...", ...]}``, optional
  ``"category"``;
* CSV (UTF-8) with ``video`` and ``reference`` columns (one reference per row, a
  video may have several rows), optional ``category`` column;
* a folder of AI-Hub 대한민국 배경영상 label JSON files: the Korean caption at
  ``caption.korean``, the category at ``category`` (``category.main`` when it is an
  object), the video's file name at ``filename`` (or the label file's own name).

Videos are keyed by their file name stem, NFC-normalised. Every problem found is
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
import json
import logging
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, TextIO

from captioner.config import REFERENCE_MAX_FILE_BYTES, REFERENCE_MAX_LINE_BYTES
from captioner.errors import CaptionerError
from captioner.escaping import printable
from captioner.evaluation.morphemes import normalize_text
from captioner.records import json_objects
from captioner.textcheck import MOJIBAKE, REPLACEMENT_CHAR, mojibake_encoding, text_flags

log = logging.getLogger(__name__)

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
        kind, entries, problems = "aihub", *_read_aihub(path, limits)
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
    for video, texts, category, source in entries:
        refs.flagged += _check_texts(video, texts, source)  # raw texts: NFC would alter CP949 mojibake
        _add(refs, video, texts, category, source)
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
    if not refs.clips:
        raise InputError([f"{path}: no references found"])
    return refs


Entry = tuple[str, list[str], "str | None", str]

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


def _add(refs: ReferenceSet, video: str, texts: list[str], category: str | None, source: str) -> None:
    """Merge one entry; a clip may be listed several times (several CSV rows, say)."""
    stem = video_stem(video)
    texts = [normalize_text(t) for t in texts]
    clip = refs.clips.get(stem)
    if clip is None:
        refs.clips[stem] = Reference(video, list(dict.fromkeys(texts)), category, source)
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


def _category(value: Any) -> str | None:
    if isinstance(value, dict):  # AI-Hub style {"main": "자연", "sub": "바다"}
        value = value.get("main")
    if value is None or value == "":
        return None
    return normalize_text(str(value))


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
        entries.append((video, texts, _category(obj.get("category")), where))
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
                    video, text = _cell(row, columns, "video"), _cell(row, columns, "reference")
                    entries.append((video, [text], _category(_cell(row, columns, "category")), where))
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


def _read_aihub(folder: Path, limits: ReferenceLimits) -> tuple[list[Entry], list[str]]:
    entries: list[Entry] = []
    problems: list[str] = []
    files = sorted(folder.rglob("*.json"))
    if not files:
        return [], [f"{folder}: no *.json label files in this folder"]
    sizes = {file: file.stat().st_size for file in files}
    if too_large := limits.file_problem(folder, sum(sizes.values()), "label files"):
        return [], [too_large]
    for file in files:
        if sizes[file] > limits.line_bytes:  # one label is one caption: never read a huge one
            problems.append(limits.line_problem(str(file), "a label file", sizes[file]))
            continue
        try:
            label = json.loads(file.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as exc:
            problems.append(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})")
            continue
        except json.JSONDecodeError as exc:
            problems.append(f"{file}:{exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})")
            continue
        if not isinstance(label, dict):
            problems.append(f"{file}: expected a JSON object")
            continue
        caption = label.get("caption")
        text = caption.get("korean") if isinstance(caption, dict) else None
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{file}: no Korean caption at caption.korean")
            continue
        video = _aihub_video_name(label) or file.name
        entries.append((video, [text], _aihub_category(label), str(file)))
    return entries, problems


# Nested objects where a label may keep the clip's file name or category.
_AIHUB_BLOCKS = ("video", "video_info", "clip", "clip_info", "metadata")


def _aihub_video_name(label: dict) -> str | None:
    """The clip's file name, top-level or in a nested video/clip/metadata block."""
    blocks = [label] + [label[k] for k in _AIHUB_BLOCKS if isinstance(label.get(k), dict)]
    for block in blocks:
        for key in ("filename", "file_name", "video_name", "video_id"):
            value = block.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _aihub_category(label: dict) -> str | None:
    if "category" in label:
        return _category(label["category"])
    for key in _AIHUB_BLOCKS:
        block = label.get(key)
        if isinstance(block, dict) and "category" in block:
            return _category(block["category"])
    return None
