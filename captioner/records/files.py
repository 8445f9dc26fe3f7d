"""Writing files that other processes read while we write: the one atomic write, and the record writers.

`write_atomic` is how every file that is replaced is written (summaries, merged parts, a compacted
captions file, exports, training checkpoints): a temporary file beside the target, flushed to disk,
renamed over it, and the folder synced, so a reader sees the old file or the new one, never half of
one; the temporary file is removed whatever fails; the new file gets the mode the umask gives, as
a file created in place would.

`RecordWriter` appends to `captions.jsonl` (a run); `PartWriter` writes one chunk's part file (a
queue worker). Both are `RecordSink`s: the pipeline writes records through either.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Protocol

from captioner.records.record import CaptionRecord

log = logging.getLogger(__name__)

PARTS_DIR = "parts"


class RecordSink(Protocol):
    """Where records go as clips finish: a `RecordWriter` (a run) or a `PartWriter` (a chunk)."""

    def write(self, record: CaptionRecord) -> None:
        """Keep one record."""
        ...


@functools.cache
def umask_mode() -> int:
    """The mode a new regular file gets here (0666 less the umask).

    Read once: the only way to read the umask is to set it, and a worker writes from several
    threads, which must never create a file while it is set to something else.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the folder's entry, not only the file's bytes)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # a file system without folder handles: the rename is as durable as it gets
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, content: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Replace `path` with `content` (text as UTF-8, bytes, or a function writing to the open file).

    Readers never see a half-written file; on any failure the temporary file is gone and `path`
    is as it was. Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content.encode("utf-8") if isinstance(content, str) else content)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, umask_mode())  # mkstemp makes 0600: others sharing the folder must still read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)
    return path


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (a short write is continued, never left as a torn line)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class RecordWriter:
    """Appends records to `captions.jsonl`; safe across processes and kills.

    Each record is appended with whole writes under an exclusive lock, so writers in several
    processes never interleave inside a line and a killed run loses at most the clips in flight.
    A torn last line (power loss) is cut off the next time the file is opened. `folder.compact`
    replaces the file under the same lock; a writer re-opens the file when it finds it replaced.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        with self._locked():
            cut_torn_tail(self._fd)

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)

    def write(self, record: CaptionRecord) -> None:
        """Append one record."""
        data = (record.to_json() + "\n").encode("utf-8")
        with self._locked():
            size = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                write_all(self._fd, data)
            except BaseException:
                os.ftruncate(self._fd, size)  # no partial line for the next record to be glued onto
                raise

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # `compact` (in this or another process) may have replaced the file since it was opened;
        # appending to the replaced file would lose the record, so lock the file now at `path`.
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if is_current(self._fd, self.path):
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


def is_current(fd: int, path: Path) -> bool:
    """True when `fd` is still the file at `path` (not replaced by `compact`, not deleted)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)


@contextmanager
def lock_current(path: Path) -> Iterator[None]:
    """Hold the writers' lock on the file now at `path` (which must exist)."""
    while True:
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if is_current(fd, path):
            break
        os.close(fd)  # replaced meanwhile by another compaction: lock the new file
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


def cut_torn_tail(fd: int) -> None:
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
        sync_folder(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Drop the unpublished records (the chunk will run again); never raises for a full disk."""
        try:
            self._file.close()
        except OSError:
            pass  # the buffered tail could not be flushed (disk full): the file goes anyway
        self._tmp.unlink(missing_ok=True)


def merge_parts(out_dir: Path, job_id: str) -> int:
    """Concatenate a finished job's chunk parts into `parts/JOB.jsonl`, once; return its lines.

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
    sources = ([merged] if merged.exists() else []) + sorted(folder.glob("*.jsonl"))  # merged: finished twice
    lines = 0

    def concatenate(out: IO[bytes]) -> None:
        nonlocal lines
        for source in sources:
            with source.open("rb") as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
                    lines += block.count(b"\n")

    write_atomic(merged, concatenate)
    shutil.rmtree(folder, ignore_errors=True)
    return lines
