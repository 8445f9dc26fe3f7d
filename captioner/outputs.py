"""Record stage: one JSON line per clip, and the output folder read back as one dataset.

An output folder holds `captions.jsonl` (written by `captioner run`) and, when queue workers wrote
to it, part files: `parts/JOB/CHUNK.jsonl` (one per chunk, written by one worker and made visible
by an atomic rename) and `parts/JOB.jsonl` (a finished job's chunks, concatenated once).
`read_output` reads all of them as one dataset, so nothing ever appends across machines.

In `captions.jsonl` each record is appended with a single `write` under an exclusive lock, so a killed run loses at
most the clips in flight and writers in several processes never interleave inside a line. A torn
last line (power loss) is cut off the next time the file is opened. `compact` replaces the file
while holding the same lock, and a writer re-opens the file when it finds it replaced, so
compaction is safe while other processes (queue workers) append.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import asdict, astuple, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from captioner.sources import safe_text

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.jsonl"
PARTS_DIR = "parts"
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
    # What `textcheck.text_flags` found wrong with the caption's characters ("replacement_char",
    # "mojibake"). Records written before this field have no such key; readers use .get.
    text_flags: list[str] = field(default_factory=list)
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


@dataclass(frozen=True)
class VersionKey:
    """What makes two captions of the same video comparable: model, adapter and prompt version."""

    model: str
    adapter: str | None
    adapter_sha: str | None
    prompt_name: str
    prompt_version: int
    prompt_sha: str

    @classmethod
    def of(cls, record: dict[str, Any]) -> VersionKey:
        """The version key of a record (as read from JSON)."""
        prompt = record.get("prompt") or {}
        return cls(
            record.get("model", ""),
            record.get("adapter"),
            record.get("adapter_sha"),
            prompt.get("name", ""),
            prompt.get("version", 0),
            prompt.get("sha", ""),
        )

    def digest(self) -> str:
        """A short stable id of this key, for Redis keys and file names."""
        text = json.dumps(astuple(self), ensure_ascii=False)
        return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()

    def label(self) -> str:
        """How a person reads it: "model | adapter | prompt name@version"."""
        return f"{self.model or '?'} | {self.adapter or 'no adapter'} | prompt {self.prompt_name or '?'}@{self.prompt_version}"


def version_key(record: dict[str, Any]) -> VersionKey:
    """`VersionKey.of(record)`."""
    return VersionKey.of(record)


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
    # "\n" only: str.splitlines also splits at U+2028 and other separators a caption may contain.
    for _number, where, record, problem in json_objects(complete.split("\n"), path):
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


def latest_by_video(records: Iterable[dict[str, Any]], key: VersionKey | None = None) -> dict[str, dict[str, Any]]:
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


# --------------------------------------------------------------------------- the output folder as a dataset


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


def read_output(target: Path) -> list[dict[str, Any]]:
    """Every record of an output folder (or of one captions file), oldest first.

    `target` is an output folder, its `captions.jsonl` (the folder's part files are read too), or
    any other captions file (read alone). Records of different files are ordered by `created_at`;
    within a second, `captions.jsonl` comes first, then the part files by name.
    """
    folder = output_folder(target)
    files = dataset_files(folder) if folder is not None else [Path(target)]
    records = [record for path in files for record in read_records(path)]
    if len(files) > 1:
        records.sort(key=lambda record: record.get("created_at") or "")  # stable: file order within a second
    return records


def ok_videos(records: Iterable[dict[str, Any]], key: VersionKey) -> set[str]:
    """The videos whose newest record of version `key` is `ok`."""
    return {video for video, record in latest_by_video(records, key).items() if record["status"] == "ok"}


class PartWriter:
    """Writes one chunk's records to a part file of its own, visible only once `publish`ed.

    Records go to `parts/JOB/CHUNK.TOKEN.tmp`; `publish` renames it to `parts/JOB/CHUNK.jsonl` in
    one step, so readers see the whole chunk or nothing, and a chunk run twice (a redelivery)
    replaces its earlier part instead of adding to it. Nothing is appended to a shared file.
    """

    def __init__(self, out_dir: Path, job_id: str, chunk: int) -> None:
        folder = out_dir / PARTS_DIR / job_id
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{chunk:07d}.jsonl"
        self._tmp = folder / f"{chunk:07d}.{uuid.uuid4().hex[:8]}.tmp"
        self._file = self._tmp.open("w", encoding="utf-8")
        self.records: list[CaptionRecord] = []

    def write(self, record: CaptionRecord) -> None:
        """Add one record to the chunk (not visible yet)."""
        self._file.write(record.to_json() + "\n")
        self._file.flush()  # to the OS: `ls parts/JOB` shows a chunk's progress
        self.records.append(record)

    def publish(self) -> Path:
        """Make the chunk's records visible, all at once; return the part's path."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Drop the unpublished records (the chunk will run again)."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def merge_parts(out_dir: Path, job_id: str) -> int:
    """Concatenate a finished job's chunk parts into `parts/JOB.jsonl`, once; return its records.

    O(job): bytes are copied, not parsed. Left-over `.tmp` files (chunks whose worker died) go.
    A kill between the rename and the removal leaves the records twice, which readers resolve
    (the newest record per video and version wins, and both copies are the same record).
    """
    folder = out_dir / PARTS_DIR / job_id
    merged = out_dir / PARTS_DIR / f"{job_id}.jsonl"
    if not folder.is_dir():
        return 0
    if not any(folder.glob("*.jsonl")):  # a job with nothing new to write
        shutil.rmtree(folder, ignore_errors=True)
        return 0
    lines = 0
    with tempfile.NamedTemporaryFile("wb", dir=folder.parent, delete=False, suffix=".tmp") as tmp:
        if merged.exists():  # a job finished twice (its finisher died after merging some)
            with merged.open("rb") as src:
                lines += _copy(src, tmp)
        for part in sorted(folder.glob("*.jsonl")):
            with part.open("rb") as src:
                lines += _copy(src, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, merged)
    shutil.rmtree(folder, ignore_errors=True)
    return lines


def _copy(src: Any, dst: Any) -> int:
    lines = 0
    for block in iter(lambda: src.read(1 << 20), b""):
        dst.write(block)
        lines += block.count(b"\n")
    return lines
