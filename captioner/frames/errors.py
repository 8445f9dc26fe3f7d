"""Why a clip has no frames, in words a person understands."""

from __future__ import annotations

import re
from pathlib import Path

from captioner.errors import CaptionerError


class FrameError(CaptionerError):
    """A clip whose frames cannot be read. The message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # keep both fields when the error crosses a process boundary
        return (FrameError, (self.path, self.reason))


# The reason given for an allocation that failed (FFmpeg's ENOMEM, decord's bad_alloc, Python's
# MemoryError): the decoder pool adds the address-space limit it set, the likely cause.
OUT_OF_MEMORY = "decoder ran out of memory"

# FFmpeg's and decord's own words, and what they mean for a file someone copied off a camera.
_EXPLAINED = [
    (
        r"moov atom not found",
        "file is incomplete: its MP4 index (moov) is missing, as when a copy or recording was cut off",
    ),
    (r"1094995529|Invalid data found", "not a video file, or a damaged one: FFmpeg finds no data it can read"),
    (r"End of file|-541478725", "file ends early"),
    (r"wanted index: -1|cannot find video stream", "no video stream decord can decode"),
    (r"broken metadata|Failed to measure duration", "the container does not state its length"),
    (r"Permission denied", "file is not readable (permission denied)"),
    (r"Cannot allocate memory|bad_alloc|out of memory", OUT_OF_MEMORY),
]


def explain(message: str) -> str:
    """A short, plain reason for a decoder's error text (its first line, decoder noise removed)."""
    text = message.strip().splitlines()[0] if message.strip() else "unknown error"
    text = re.sub(r"\[[^\]]*\]\s*", "", text)  # decord prefixes "[/path/to/clip]": the record names the file
    text = re.sub(r"^\[?\d{2}:\d{2}:\d{2}\]?\s*\S+:\d+:\s*", "", text)  # "[12:00:00] src/video_reader.cc:151: "
    for pattern, meaning in _EXPLAINED:
        if re.search(pattern, message, flags=re.IGNORECASE):
            return meaning
    return text[:200]
