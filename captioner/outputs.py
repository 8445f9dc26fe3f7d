"""Record stage: one JSON line per clip in `captions.jsonl`, written as soon as the clip is done.

Each record is appended with a single `write` under an exclusive lock, so a killed run loses at
most the clips in flight and writers in several processes never interleave inside a line. A torn
last line (power loss) is cut off the next time the file is opened. `compact` replaces the file
while holding the same lock, and a writer re-opens the file when it finds it replaced, so
compaction is safe while other processes (queue workers) append.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from captioner.sources import safe_text

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass
class CaptionRecord:
    """The outcome for one clip."""

    video: str
    status: Literal["ok", "failed"]
    caption: str
    error: str | None
    frames: int
    model: str
    adapter: str | None
    prompt: dict[str, Any]
    adapter_sha: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    tier: str | None = None
    sampling: str | None = None
    decode_s: float | None = None
    # How the frames were taken (see `frames.ClipFrames.facts`): times in seconds from the first
    # shown frame, the largest distance from a target as a share of a segment, decord or pyav,
    # and what was corrected ("rotation 90 applied") or worked around.
    frame_times: list[float] | None = None
    frame_shift_max: float | None = None
    decoder: str | None = None
    notes: list[str] = field(default_factory=list)
    video_raw: str | None = None  # base64 of the path's bytes when `video` cannot hold them (see sources)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_json(self) -> str:
        """One line of UTF-8 JSON (Korean kept readable; undecodable name bytes shown as \\xNN)."""
        return json.dumps(_clean(asdict(self)), ensure_ascii=False)


def _clean(value: Any) -> Any:
    """`value` with every string made valid UTF-8 (decoder errors may quote undecodable file names)."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    return value


def version_key(record: dict[str, Any]) -> tuple:
    """What makes two captions of the same video comparable: model, adapter and prompt version."""
    prompt = record.get("prompt") or {}
    return (
        record.get("model", ""),
        record.get("adapter"),
        record.get("adapter_sha"),
        prompt.get("name", ""),
        prompt.get("version", 0),
        prompt.get("sha", ""),
    )


class RecordWriter:
    """Appends records to `captions.jsonl`; safe across processes and kills."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        with self._locked():
            _cut_torn_tail(self._fd)

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: CaptionRecord) -> None:
        """Append one record in a single write."""
        data = (record.to_json() + "\n").encode("utf-8")
        with self._locked():
            view = memoryview(data)
            while view:  # a regular-file write is whole in practice; loop to be correct anyway
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # `compact` (in this or another process) may have replaced the file since it was opened;
        # appending to the replaced file would lose the record, so lock the file now at `path`.
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if _is_current(self._fd, self.path):
                break
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = self._open()
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _is_current(fd: int, path: Path) -> bool:
    """True when `fd` is still the file at `path` (not replaced by `compact`, not deleted)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)


@contextmanager
def _lock_current(path: Path) -> Iterator[None]:
    """Hold the writers' lock on the file now at `path` (which must exist)."""
    while True:
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _is_current(fd, path):
            break
        os.close(fd)  # replaced meanwhile by another compaction: lock the new file
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _cut_torn_tail(fd: int) -> None:
    """Truncate a final line that has no newline: it is a write cut short, never a whole record."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return
    end = size
    with open(fd, "rb", closefd=False) as f:
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
    log.warning("cutting %d bytes of an unfinished last line from the captions file", size - end)
    os.ftruncate(fd, end)


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records of a captions file, oldest first. Lines that are not JSON objects are reported and skipped."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    complete = text[: text.rfind("\n") + 1]  # an unfinished last write is not a record; the next writer cuts it
    records = []
    for _number, where, record, problem in json_objects(complete.splitlines(), path):
        if record is not None and "video" in record and "status" in record:
            records.append(record)
        else:
            log.warning("%s; ignored", problem or f"{where}: not a caption record")
    return records


def json_objects(lines: Iterable[str], path: Path | str) -> Iterator[tuple[int, str, dict[str, Any] | None, str | None]]:
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


def latest_by_video(records: Iterable[dict[str, Any]], key: tuple | None = None) -> dict[str, dict[str, Any]]:
    """The newest record per video, optionally only among records of one `version_key`."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        if key is None or version_key(record) == key:
            latest[record["video"]] = record
    return latest


def compact(path: Path) -> int:
    """Rewrite the file keeping only the newest record per (video, version); return records dropped.

    Done atomically (temporary file + rename) so a kill during compaction leaves the old file, and
    under the writers' lock, so records appended by other processes meanwhile are not lost.
    """
    if not path.exists():
        return 0
    with _lock_current(path):
        records = read_records(path)
        newest: dict[tuple, dict[str, Any]] = {}
        for record in records:
            newest.pop((record["video"], version_key(record)), None)  # re-insert: keep file order by recency
            newest[(record["video"], version_key(record))] = record
        if len(newest) == len(records):
            return 0
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in newest.values()))
        return len(records) - len(newest)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """Write `summary.json` atomically."""
    path = out_dir / SUMMARY_FILE
    write_atomic(path, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    return path
