"""Where videos come from: the folders a user names, searched recursively, and how a video is named.

Footage folders come off phones, cameras, recorders and zip files: extensions in any case,
macOS AppleDouble companions (`._clip.mp4`), hidden files, symlinked subfolders (some looping),
files still being copied, and names that are not valid UTF-8 (Korean names from Windows zips
are CP949 bytes). Discovery keeps videos, counts what it leaves out, and never stops on a name.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError, ConfigError

log = logging.getLogger(__name__)

# Containers people record and export to, matched case-insensitively: phones and cameras (MP4,
# MOV, 3GP), camcorders (AVCHD .mts/.m2ts, MPEG-2 .mod/.tod, DV), broadcast (TS, MXF), DVD (VOB),
# screen and browser recorders (WebM, MKV), and legacy desktop formats.
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".mkv", ".webm", ".ogv", ".avi", ".divx",
        ".ts", ".mts", ".m2ts", ".mxf", ".dv", ".mod", ".tod", ".vob", ".mpg", ".mpeg",
        ".flv", ".f4v", ".wmv", ".asf",
    }
)  # fmt: skip


class SourceError(CaptionerError):
    """A folder that cannot be captioned; the message names it and the reason."""


@dataclass
class Found:
    """Videos found under some folders, and what was left out."""

    videos: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # subfolders that could not be listed, with the reason
    ignored: list[Path] = field(default_factory=list)  # hidden files and AppleDouble `._*` companions
    settling: list[Path] = field(default_factory=list)  # modified within `settle_seconds`: maybe still copying

    def describe_empty(self, folder: Path | str) -> str:
        """Why `folder` yields no video, for an error message."""
        extensions = " ".join(sorted(VIDEO_EXTENSIONS))
        left_out = [f"{len(self.ignored)} hidden or AppleDouble files ignored"] if self.ignored else []
        if self.settling:
            left_out.append(f"{len(self.settling)} still being written (modified in the last seconds)")
        extra = f"; {', '.join(left_out)}" if left_out else ""
        return f"{video_id(Path(folder))}: no videos ({extensions}) in this folder{extra}"


def check_folder(folder: Path) -> Path:
    """Return `folder` resolved, or raise `SourceError` saying why it cannot be used."""
    shown = video_id(folder)
    if not folder.exists():
        raise SourceError(f"{shown}: folder does not exist")
    if not folder.is_dir():
        raise SourceError(f"{shown}: not a folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise SourceError(f"{shown}: folder is not readable (permission denied)")
    return folder.resolve()


def is_ignored(name: str) -> bool:
    """Hidden files and macOS AppleDouble companions (`._clip.mp4`: metadata, not video)."""
    return name.startswith(".")


def find_videos(folders: list[Path], settle_seconds: float = 0.0) -> Found:
    """All video files under `folders` (recursive, by extension), sorted and de-duplicated.

    Symlinked subfolders are followed, each real folder once (a link back up the tree is no loop).
    A folder that is missing or unreadable raises `SourceError` before anything else happens;
    unreadable subfolders are listed in `Found.unreadable` rather than silently skipped. With
    `settle_seconds`, files modified more recently than that go to `Found.settling`, not `videos`.
    """
    roots = [check_folder(Path(folder)) for folder in folders]
    found = Found()
    videos: set[Path] = set()
    ignored: set[Path] = set()
    seen_dirs: set[tuple[int, int]] = set()
    now = time.time()

    def unreadable(err: OSError) -> None:
        found.unreadable.append(f"{video_id(err.filename)}: {err.strerror}")

    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=lambda err: unreadable(err)):
            here = os.stat(dirpath)
            if (here.st_dev, here.st_ino) in seen_dirs:
                dirnames[:] = []  # reached again through a symlink: already listed
                continue
            seen_dirs.add((here.st_dev, here.st_ino))
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]  # .Trashes, .Spotlight-V100
            for name in filenames:
                if Path(name).suffix.lower() not in VIDEO_EXTENSIONS:
                    continue
                path = Path(dirpath, name)  # not resolved: records name the path the user sees
                if is_ignored(name):
                    ignored.add(path)
                    continue
                videos.add(path)
    for path in sorted(videos):
        if settle_seconds and _modified_within(path, now, settle_seconds):
            found.settling.append(path)
        else:
            found.videos.append(path)
    found.ignored = sorted(ignored)
    return found


def _modified_within(path: Path, now: float, seconds: float) -> bool:
    try:
        return now - path.stat().st_mtime < seconds
    except OSError:  # vanished or a broken link: the frame stage reports it
        return False


# --- names ------------------------------------------------------------------------------------
# A path's name is bytes on Linux; Python holds undecodable bytes as lone surrogates, which no
# UTF-8 file, Redis command or web page accepts. Records therefore name a video by `video_id`
# (always valid text: undecodable bytes shown as \xNN) and, only when that is not the exact name,
# keep the exact bytes in `video_raw` (base64), so the name is faithful and reversible.
#
# `video_id` is for showing, not for telling videos apart: a name holding the byte 0xff and a name
# holding the four characters `\xff` show the same text. Whatever keys, dedupes or matches videos
# (newest record per video, export rows, resume, the done-index) uses the exact bytes instead:
# `video_bytes` for a path, `record_key` for a record, which agree for a record of that path.


def video_id(path: Path | str) -> str:
    """The text that names `path` in records, job state and reports (valid UTF-8 for any name)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def safe_text(text: str) -> str:
    """`text` with undecodable file-name bytes (lone surrogates) shown as \\xNN, as `video_id` shows them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


def raw_name(path: Path | str) -> str | None:
    """Base64 of the path's bytes when they are not valid UTF-8 (else None: `video_id` is exact)."""
    data = os.fsencode(path)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")
    return None


def record_path(record: dict[str, Any]) -> Path:
    """The file a record is about (inverse of `video_id` + `raw_name`)."""
    raw = _raw_bytes(record)
    return Path(os.fsdecode(raw)) if raw is not None else Path(record["video"])


def video_bytes(path: Path | str | bytes) -> bytes:
    """The identity of a video: the exact bytes of its path (two names that show alike stay apart).

    A video's identity (`bytes`) passes through unchanged, so callers may hold either.
    """
    return os.fsencode(path)


def record_key(record: dict[str, Any]) -> bytes:
    """The identity of the video a record is about: `video_bytes` of the path it was written for.

    Raises ValueError (or TypeError) for a record that names no path: `video` not a string or not
    encodable as a file name, `video_raw` not base64.
    """
    raw = _raw_bytes(record)
    if raw is not None:
        return raw
    if not isinstance(record.get("video"), str):
        raise TypeError(f"a record's video must be a string, not {type(record.get('video')).__name__}")
    return os.fsencode(record["video"])


def _raw_bytes(record: dict[str, Any]) -> bytes | None:
    """The bytes `video_raw` holds (None when the record has none: `video` is the exact name)."""
    raw = record.get("video_raw")
    return base64.b64decode(raw, validate=True) if isinstance(raw, str) and raw else None


def discover(folders: list[Path], settle_seconds: float = 0.0) -> Found:
    """All videos under `folders`; `ConfigError` when a folder is missing, unreadable or has none.

    Files modified within `settle_seconds` are in `Found.settling`, not in `Found.videos`.
    """
    try:
        found = find_videos(folders, settle_seconds)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    for problem in found.unreadable:
        log.warning("skipped unreadable folder %s", problem)
    for folder in folders:
        root = Path(folder).resolve()
        if not any(video.is_relative_to(root) for video in found.videos + found.settling):
            raise ConfigError(found.describe_empty(folder))
    return found


def wait_until_settled(found: Found, settle_seconds: float, poll_s: float = 1.0) -> None:
    """Block until no file in `found.settling` has changed for `settle_seconds`; move them to `videos`."""
    while found.settling:
        now = time.time()
        ages = {path: now - _mtime(path) for path in found.settling}
        settled = [path for path, age in ages.items() if age >= settle_seconds]
        found.videos = sorted(found.videos + settled)
        found.settling = [path for path in found.settling if path not in settled]
        if found.settling:
            log.warning("waiting for %d files still being written", len(found.settling))
            time.sleep(min(poll_s, max(0.05, settle_seconds - min(ages[p] for p in found.settling))))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0  # gone: settled as far as waiting goes; the frame stage reports it
