"""`captioner export OUT --format parquet|csv|jsonl [--all-versions] [--out FILE]`: an output folder as a table.

The folder is read as one dataset (`records.folder.read_output`: `captions.jsonl` and the
part files queue workers write, oldest record first), and every video gives one row per
version: its newest `ok` record of that version. A long take captioned window by window gives one
row per window and version (its newest `ok` record of that window), with the window's times; a
window whose records all failed has no row. A video whose records of a version all failed
has no row for it. A version is the model, adapter (and its hash) and prompt version
(`records.record.VersionKey`). A video is the exact bytes of its path (`sources.record_key`):
two names that show the same `video` text (the byte 0xff, the four characters `\\xff`) are two
videos, and their rows differ in `video_raw`.

Which versions: by default only the **newest version** of the folder, the version of its most
recent `ok` record (oldest-first order of `read_output`: by `created_at`, then file order, so the
last `ok` record read wins a tie). It is named on stderr, with the versions left out.
`--all-versions` gives every version, one row per video and version.

Columns, in this order (one row per video, window and version):

| column | type | meaning |
| --- | --- | --- |
| `video` | string | the video's path as text (undecodable name bytes shown as `\\xNN`) |
| `video_raw` | string, null | base64 of the path's exact bytes when `video` cannot hold them |
| `window_index` | int, null | the window of a long take (0, 1, ...); null: the caption is of the whole file |
| `window_start_s`, `window_end_s` | float, null | start and (exclusive) end in seconds from the first shown frame |
| `caption` | string | the caption |
| `text_flags` | list of string | `replacement_char` (U+FFFD), `mojibake`; empty for clean text |
| `model`, `adapter`, `adapter_sha` | string (adapter and its hash may be null) | what captioned it |
| `prompt_name`, `prompt_version`, `prompt_sha` | string, int, string | the prompt version |
| `version` | string | a short id of (model, adapter, adapter_sha, prompt name, version, sha) |
| `frames` | int | frames the model saw |
| `frame_times` | list of float | their times in seconds from the first shown frame |
| `frame_shift_max` | float, null | largest distance of a frame from its target, as a share of a segment |
| `decoder` | string, null | `pyav-keyframes`, `decord`, `pyav`, ... |
| `notes` | list of string | what was corrected or worked around |
| `tier`, `sampling` | string, null | the tier profile and sampling preset |
| `prompt_tokens`, `cached_tokens`, `output_tokens` | int | token counts (cached: served by the prefix cache) |
| `finish_reason` | string, null | `stop` or `length` |
| `created_at` | string | when the record was written (ISO 8601, UTC) |

Formats: Parquet (pyarrow; lists stay lists, types as above), CSV (UTF-8, no BOM, CRLF; the list
columns hold JSON text, e.g. `[0.6, 1.8]`; a text cell starting with `=`, `+`, `-`, `@`, tab or CR
gets a leading `'`, so a spreadsheet shows it rather than runs it: `captioner.escaping`), JSONL
(one UTF-8 JSON object a line, Korean unescaped, lists as lists). Rows are sorted by video, then by
window (the whole file first), then by record time. The file is written whole or not at all
(temporary file, then rename); default `OUT/export.<format>`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError
from captioner.escaping import spreadsheet_csv
from captioner.records.files import PARTS_DIR, write_atomic
from captioner.records.folder import CAPTIONS_FILE, dataset_files, newest_per_version, output_folder, read_output
from captioner.records.record import VersionKey
from captioner.sources import record_key
from captioner.textcheck import record_flags
from captioner.windows import record_window, window_problem

log = logging.getLogger(__name__)

FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}  # format -> file extension
LIST_COLUMNS = ("text_flags", "frame_times", "notes")
# column -> pyarrow type name (see `_schema`); the order is the files' column order
COLUMNS: dict[str, str] = {
    "video": "string",
    "video_raw": "string",
    "window_index": "int64",
    "window_start_s": "double",
    "window_end_s": "double",
    "caption": "string",
    "text_flags": "list<string>",
    "model": "string",
    "adapter": "string",
    "adapter_sha": "string",
    "prompt_name": "string",
    "prompt_version": "int64",
    "prompt_sha": "string",
    "version": "string",
    "frames": "int64",
    "frame_times": "list<double>",
    "frame_shift_max": "double",
    "decoder": "string",
    "notes": "list<string>",
    "tier": "string",
    "sampling": "string",
    "prompt_tokens": "int64",
    "cached_tokens": "int64",
    "output_tokens": "int64",
    "finish_reason": "string",
    "created_at": "string",
}


class ExportError(CaptionerError):
    """Input or output that makes the export impossible; the message names the path and the reason."""


@dataclass
class Export:
    """What an export wrote."""

    path: Path
    format: str
    rows: int
    videos: int
    records: int
    versions: list[dict[str, Any]]  # exported versions: id, label, rows
    chosen: str | None  # label of the newest version when not --all-versions
    chosen_at: str | None  # created_at of the newest ok record, which chose it
    left_out: list[dict[str, Any]] = field(default_factory=list)  # versions present, not exported
    without_ok: int = 0  # videos of the exported versions that have no ok record (failed only)
    windows: int = 0  # rows of a window of a long take (the other rows are of whole files)

    def summary(self) -> dict[str, Any]:
        """The JSON line printed on stdout."""
        return {
            "path": str(self.path),
            "format": self.format,
            "rows": self.rows,
            "videos": self.videos,
            "window_rows": self.windows,
            "versions": self.versions,
            "versions_left_out": self.left_out,
            "records_read": self.records,
            "videos_without_ok": self.without_ok,
        }


def export(target: Path, fmt: str, out: Path | None = None, all_versions: bool = False) -> Export:
    """Write the table of `target` (an output folder or a captions file) in `fmt`; see the module doc.

    Raises `ExportError` for a missing or empty folder, a folder without an `ok` caption, an
    unknown format, a missing pyarrow (Parquet), or an output path inside the dataset.
    """
    target = Path(target)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: use parquet, csv or jsonl")
    folder = _check_target(target)
    path = Path(out) if out is not None else folder / f"export.{FORMATS[fmt]}"
    _check_out(path, folder)
    pa = _pyarrow() if fmt == "parquet" else None  # before any work: say what is missing at once

    records = _usable_records(target)
    if not records:
        raise ExportError(f"{target}: no caption records (every line was unreadable; see the warnings above)")
    ok = [record for record in records if record.get("status") == "ok"]
    if not ok:
        raise ExportError(f"{target}: no ok caption to export ({len(records)} records, all failed)")

    counts = Counter(VersionKey.of(record) for record in ok)
    if all_versions:
        keys = list(dict.fromkeys(VersionKey.of(record) for record in ok))  # by first ok record
        chosen = chosen_at = None
    else:
        newest = VersionKey.of(ok[-1])
        keys, chosen, chosen_at = [newest], newest.label(), ok[-1].get("created_at")
    wanted = set(keys)

    # One row per video, window and version: videos told apart by their exact name bytes (`record_key`),
    # so two names that show the same `video` text (a byte 0xff, the characters "\\xff") are two rows.
    latest_ok = {key: record for key, record in newest_per_version(ok).items() if key[2] in wanted}
    rows = sorted((_row(record) for record in latest_ok.values()), key=_row_order)
    tried = {record_key(record) for record in records if VersionKey.of(record) in wanted}
    exported_videos = {video for video, _, _ in latest_ok}

    if fmt == "parquet":
        _write_parquet(pa, rows, path)
    elif fmt == "csv":
        _write_csv(rows, path)
    else:
        _write_jsonl(rows, path)

    per_version = Counter(key for _, _, key in latest_ok)
    return Export(
        path=path,
        format=fmt,
        rows=len(rows),
        videos=len(exported_videos),
        records=len(records),
        versions=[{"version": k.digest(), "label": k.label(), "rows": per_version[k]} for k in keys],
        chosen=chosen,
        chosen_at=chosen_at,
        left_out=[
            {"version": k.digest(), "label": k.label(), "ok_records": n} for k, n in counts.items() if k not in wanted
        ],
        without_ok=len(tried - exported_videos),
        windows=sum(row["window_index"] is not None for row in rows),
    )


def _usable_records(target: Path) -> list[dict[str, Any]]:
    """The records of `target` an export can use, oldest first; the others are named in a warning."""
    records = []
    for record in read_output(target):
        video = record.get("video")
        if not isinstance(video, str) or not isinstance(record.get("prompt") or {}, dict):
            log.warning("%s: a record of %r has no usable video or prompt; ignored", target, video)
        elif problem := window_problem(record.get("window")):
            log.warning("%s: a record of %r has a bad window (%s); ignored", target, video, problem)
        else:
            records.append(record)
    return records


def _check_target(target: Path) -> Path:
    """The output folder of `target` (for the default output path), or ExportError saying what is wrong."""
    if not target.exists():
        raise ExportError(f"{target}: output folder does not exist")
    folder = output_folder(target)
    if folder is None:  # a captions file read alone
        if not target.is_file():
            raise ExportError(f"{target}: not an output folder or a captions file")
        return target.parent
    if not dataset_files(folder):
        raise ExportError(
            f"{folder}: not an output folder, or an empty one: no {CAPTIONS_FILE}, no {PARTS_DIR}/*.jsonl"
        )
    return folder


def _check_out(path: Path, folder: Path) -> None:
    """Refuse an output file that the export itself would read back as captions."""
    resolved, root = path.resolve(), folder.resolve()
    parts = root / PARTS_DIR
    if resolved == root / CAPTIONS_FILE or parts in resolved.parents:
        raise ExportError(
            f"{path}: inside the dataset it exports ({CAPTIONS_FILE} or {PARTS_DIR}/); choose another --out"
        )
    if path.is_dir():
        raise ExportError(f"{path}: is a folder; --out names the file to write")


def _row_order(row: dict[str, Any]) -> tuple[str, str, int, str]:
    """Rows by video text, then window (the whole file first), then record time.

    `video_raw` orders two names that show alike.
    """
    window = row["window_index"]
    return row["video"], row["video_raw"] or "", -1 if window is None else window, row["created_at"] or ""


def _row(record: dict[str, Any]) -> dict[str, Any]:
    """One table row of an ok record (columns as `COLUMNS`)."""
    key = VersionKey.of(record)
    window = record_window(record)
    return {
        "video": record["video"],
        "video_raw": record.get("video_raw"),
        "window_index": window.index if window else None,
        "window_start_s": window.start_s if window else None,
        "window_end_s": window.end_s if window else None,
        "caption": record.get("caption") or "",
        "text_flags": record_flags(record),
        "model": key.model,
        "adapter": key.adapter,
        "adapter_sha": key.adapter_sha,
        "prompt_name": key.prompt_name,
        "prompt_version": key.prompt_version,
        "prompt_sha": key.prompt_sha,
        "version": key.digest(),
        "frames": record.get("frames"),
        "frame_times": record.get("frame_times"),
        "frame_shift_max": record.get("frame_shift_max"),
        "decoder": record.get("decoder"),
        "notes": record.get("notes") or [],
        "tier": record.get("tier"),
        "sampling": record.get("sampling"),
        "prompt_tokens": record.get("prompt_tokens", 0),
        "cached_tokens": record.get("cached_tokens", 0),
        "output_tokens": record.get("output_tokens", 0),
        "finish_reason": record.get("finish_reason"),
        "created_at": record.get("created_at"),
    }


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ExportError(
            "Parquet needs the package 'pyarrow', which is not installed: pip install pyarrow "
            "(or export --format csv / jsonl)"
        ) from None
    return pyarrow


def _schema(pa: Any) -> Any:
    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "double": pa.float64(),
        "list<double>": pa.list_(pa.float64()),
        "list<string>": pa.list_(pa.string()),
    }
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS.items()])


def _write_parquet(pa: Any, rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_schema(pa))
    write_atomic(path, lambda file: pq.write_table(table, file))


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in LIST_COLUMNS:
        frame[column] = [None if value is None else json.dumps(value, ensure_ascii=False) for value in frame[column]]
    for column, kind in COLUMNS.items():
        if kind == "int64":
            frame[column] = frame[column].astype("Int64")  # stays 8, not 8.0, when a value is missing
    # Captions and names are outside text: "=HYPERLINK(...)" must reach a spreadsheet as text.
    write_atomic(path, spreadsheet_csv(frame))


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_atomic(path, text)
