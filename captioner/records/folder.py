"""An output folder read back as one dataset: the one reader, and "the newest record per clip and version".

A clip is a video, or one window of a long take: its identity (`clip_key`) is the exact bytes of
the video's path (`sources.record_key`) and the window's index (None: the whole file; records
written before windows have no `window` key).

An output folder holds `captions.jsonl` (written by `captioner run`) and, when queue workers wrote
to it, part files: `parts/JOB/CHUNK.jsonl` (one per chunk, made visible by an atomic rename) and
`parts/JOB.jsonl` (a finished job's chunks, concatenated once). `read_output` reads all of them as
one dataset, oldest first, so nothing ever appends across machines. `located_lines` is the same
reading with each line's place and problem, for readers that must name a bad line (`captioner eval`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from captioner.records.files import PARTS_DIR, lock_current, write_atomic
from captioner.records.record import VersionKey
from captioner.sources import record_key
from captioner.windows import window_problem

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.jsonl"
SUMMARY_FILE = "summary.json"


def json_objects(
    lines: Iterable[str], path: Path | str
) -> Iterator[tuple[int, str, dict[str, Any] | None, str | None]]:
    """(line number, "file:line", object, problem) for each non-blank JSON line.

    The object is None when the line is not a JSON object; the problem then says why, naming the
    file and line, so every reader of JSON lines reports bad input the same way.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, where, None, f"{where}: invalid JSON ({exc.msg}, column {exc.colno})"
            continue
        if not isinstance(obj, dict):
            yield number, where, None, f"{where}: expected a JSON object, got {type(obj).__name__}"
            continue
        yield number, where, obj, None


def complete_lines(path: Path) -> list[str]:
    """The lines of a JSONL file up to its last newline (an unfinished last write is not a record)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    # "\n" only: str.splitlines also splits at U+2028 and other separators a caption may contain.
    return text[: text.rfind("\n") + 1].split("\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records of a captions file, oldest first. Lines that are not records are reported and skipped."""
    if not path.exists():
        return []
    records = []
    for _number, where, record, problem in json_objects(complete_lines(path), path):
        if record is not None and "video" in record and "status" in record and _names_a_video(record):
            records.append(record)
        else:
            log.warning("%s; ignored", problem or f"{where}: not a caption record (no video path it can name)")
    return records


def _names_a_video(record: dict[str, Any]) -> bool:
    """Whether the record names a clip `clip_key` can identify (checked once, as it is read)."""
    try:
        clip_key(record)
    except (TypeError, ValueError):  # binascii.Error and UnicodeEncodeError are ValueErrors
        return False
    return True


ClipKey = tuple[bytes, int | None]  # (the path's exact bytes, the window's index or None)


def window_index(record: dict[str, Any]) -> int | None:
    """The index of the window a record is of; None for the whole file (or no `window` key: an older record).

    Raises ValueError for a `window` that `windows.window_problem` finds wrong.
    """
    window = record.get("window")
    if problem := window_problem(window):
        raise ValueError(f"a record's {problem}")
    return None if window is None else window["index"]


def clip_key(record: dict[str, Any]) -> ClipKey:
    """The identity of the clip a record is about: (`sources.record_key`, `window_index`)."""
    return record_key(record), window_index(record)


def dataset_files(out_dir: Path) -> list[Path]:
    """The files holding an output folder's records: `captions.jsonl`, finished jobs, visible chunk parts."""
    files = [out_dir / CAPTIONS_FILE] if (out_dir / CAPTIONS_FILE).is_file() else []
    parts = out_dir / PARTS_DIR
    if parts.is_dir():
        files += sorted(parts.glob("*.jsonl")) + sorted(parts.glob("*/*.jsonl"))
    return files


def output_folder(target: Path) -> Path | None:
    """The output folder `target` names: the folder itself, or the folder of its `captions.jsonl`."""
    target = Path(target)
    if target.is_dir():
        return target
    if target.name == CAPTIONS_FILE and (target.parent / PARTS_DIR).is_dir():
        return target.parent
    return None


def target_files(target: Path) -> list[Path]:
    """The files `target` stands for: an output folder's (or its `captions.jsonl`'s) dataset, else `target` alone."""
    folder = output_folder(target)
    return dataset_files(folder) if folder is not None else [Path(target)]


@dataclass
class Line:
    """One JSON line of a dataset file: the object (None when it is not one), where it is, and what is wrong."""

    record: dict[str, Any] | None
    number: int
    where: str  # "file:line"
    problem: str | None


def located_lines(files: list[Path]) -> list[Line]:
    """Every JSON line of `files`, strictly; oldest first: by `created_at` across files, file order within a second.

    Strictly, for readers that must name every problem: a file that cannot be read or is not UTF-8
    is one `Line` naming it (number 0, first in the list), and a last line without a newline is read
    like the others (the file may come from another tool; a byte-order mark is dropped).
    """
    lines = []
    for path in files:
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except OSError as exc:
            lines.append(Line(None, 0, str(path), f"{path}: cannot read ({exc.strerror or exc})"))
        except UnicodeDecodeError as exc:
            lines.append(Line(None, 0, str(path), f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"))
        else:
            found = json_objects(text.split("\n"), path)
            lines += [Line(record, number, where, problem) for number, where, record, problem in found]
    if len(files) > 1:  # stable: file order within a second
        lines.sort(key=lambda line: (line.number > 0, created_at(line.record)))
    return lines


def created_at(record: dict[str, Any] | None) -> str:
    """A record's `created_at` for ordering ("" when absent or not a string)."""
    value = (record or {}).get("created_at")
    return value if isinstance(value, str) else ""


def read_output(target: Path) -> list[dict[str, Any]]:
    """Every record of an output folder (or of one captions file), oldest first.

    `target` is an output folder, its `captions.jsonl` (the folder's part files are read too), or
    any other captions file (read alone). Records of different files are ordered by `created_at`;
    within a second, `captions.jsonl` comes first, then the part files by name.
    """
    files = target_files(target)
    records = [record for path in files for record in read_records(path)]
    if len(files) > 1:
        records.sort(key=created_at)  # stable: file order within a second
    return records


def newest_per_version(
    records: Iterable[dict[str, Any]],
) -> dict[tuple[bytes, int | None, VersionKey], dict[str, Any]]:
    """The newest record per (video, window index, version), in order of recency (records come oldest first).

    Videos are told apart by `sources.record_key` (the exact bytes of the path), not by the `video`
    text: two names that show alike are two videos. Each window of a long take is a clip of its
    own (`window_index`; None: the whole file).
    """
    newest: dict[tuple[bytes, int | None, VersionKey], dict[str, Any]] = {}
    for record in records:
        key = (*clip_key(record), VersionKey.of(record))
        newest.pop(key, None)  # re-insert: keep the order by recency
        newest[key] = record
    return newest


def latest_by_clip(records: Iterable[dict[str, Any]], key: VersionKey | None = None) -> dict[ClipKey, dict[str, Any]]:
    """The newest record per clip (`clip_key`: path bytes, window index), optionally only of one version."""
    return {(video, w): r for (video, w, version), r in newest_per_version(records).items() if key in (None, version)}


def ok_clips(records: Iterable[dict[str, Any]], key: VersionKey) -> set[ClipKey]:
    """The clips (path bytes, window index or None) whose newest record of version `key` is `ok`."""
    return {clip for clip, record in latest_by_clip(records, key).items() if record["status"] == "ok"}


def latest_by_video(records: Iterable[dict[str, Any]], key: VersionKey | None = None) -> dict[bytes, dict[str, Any]]:
    """The newest whole-file record per video (by `sources.record_key`), optionally only of one version.

    Records of windows are left out: a window's caption is not the video's (see `latest_by_clip`).
    """
    return {video: r for (video, window), r in latest_by_clip(records, key).items() if window is None}


def ok_videos(records: Iterable[dict[str, Any]], key: VersionKey) -> set[bytes]:
    """The videos whose newest whole-file record of version `key` is `ok`, by `sources.record_key`.

    Ask about a path with `sources.video_bytes(path) in ok_videos(...)`: the same bytes. A long take
    captioned in windows is done window by window: see `ok_clips`.
    """
    return {video for video, record in latest_by_video(records, key).items() if record["status"] == "ok"}


def compact(path: Path) -> int:
    """Rewrite the file keeping only the newest record per (video, window, version); return records dropped.

    Done atomically (temporary file + rename) so a kill during compaction leaves the old file, and
    under the writers' lock, so records appended by other processes meanwhile are not lost.
    """
    if not path.exists():
        return 0
    with lock_current(path):
        records = read_records(path)
        newest = newest_per_version(records)
        if len(newest) == len(records):
            return 0
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in newest.values()))
        return len(records) - len(newest)


def write_summary(out_dir: Path, summary: dict[str, Any], name: str = SUMMARY_FILE) -> Path:
    """Write `summary.json` (or another summary `name` in `out_dir`) atomically."""
    return write_atomic(out_dir / name, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
