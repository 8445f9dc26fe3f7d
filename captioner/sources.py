"""Where videos come from: the folders a user names, searched recursively."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm"})


class SourceError(Exception):
    """A folder that cannot be captioned; the message names it and the reason."""


@dataclass
class Found:
    """Videos found under some folders, and the subfolders that could not be read."""

    videos: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def check_folder(folder: Path) -> Path:
    """Return `folder` resolved, or raise `SourceError` saying why it cannot be used."""
    if not folder.exists():
        raise SourceError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise SourceError(f"{folder}: folder is not readable (permission denied)")
    return folder.resolve()


def find_videos(folders: list[Path]) -> Found:
    """All video files under `folders` (recursive, by extension), sorted and de-duplicated.

    A folder that is missing or unreadable raises `SourceError` before anything else happens;
    unreadable subfolders are listed in `Found.unreadable` rather than silently skipped.
    """
    roots = [check_folder(Path(folder)) for folder in folders]
    videos: set[Path] = set()
    unreadable: list[str] = []
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(
            root, onerror=lambda err: unreadable.append(f"{err.filename}: {err.strerror}")
        ):
            for name in filenames:
                if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                    videos.add(Path(dirpath, name))  # not resolved: records name the path the user sees
    return Found(sorted(videos), unreadable)
