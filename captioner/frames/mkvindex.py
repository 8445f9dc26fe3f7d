"""Matroska/WebM: the video track's frame timestamps and keyframe flags from element headers alone.

FFmpeg's index of a Matroska file is its Cues: one entry per keyframe (and read only after a
seek), so the frames between keyframes are not in it. Every block's header is: the element ID and
size, then the track number, a 16-bit timestamp relative to its cluster and a flags byte
(SimpleBlock: 0x80 = keyframe; a BlockGroup's Block is a keyframe unless a ReferenceBlock sits
beside it). This walk reads those 16 bytes per block and skips the frame data, so its cost is
16 bytes a frame, about 0.1% of a 1080p camera take and under 1% of anything above 13 kbit a frame.
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

from captioner.frames.timeline import MAX_ENTRIES, Timeline, from_decode_order

_EBML, _SEGMENT, _INFO, _SCALE = 0x1A45DFA3, 0x18538067, 0x1549A966, 0x2AD7B1
_TRACKS, _TRACK_ENTRY, _TRACK_NUMBER, _TRACK_TYPE = 0x1654AE6B, 0xAE, 0xD7, 0x83
_CLUSTER, _CLUSTER_TIME, _SIMPLE_BLOCK, _BLOCK_GROUP, _BLOCK, _REFERENCE = 0x1F43B675, 0xE7, 0xA3, 0xA0, 0xA1, 0xFB
_UNKNOWN = -1  # an element written live, its size left open: its end is not known without reading it


class _Unusable(Exception):
    """The file is laid out in a way this walk does not follow (the packet scan does)."""


def _vint(data: bytes, at: int, keep_marker: bool) -> tuple[int, int]:
    """(value, length) of the EBML variable-length integer at data[at]; value _UNKNOWN for all ones."""
    if at >= len(data) or data[at] == 0:
        raise _Unusable("bad EBML number")
    length = 9 - data[at].bit_length()
    if at + length > len(data):
        raise _Unusable("short EBML number")
    value = int.from_bytes(data[at:at + length], "big")
    if keep_marker:
        return value, length
    value &= (1 << (7 * length)) - 1
    return (_UNKNOWN if value == (1 << (7 * length)) - 1 else value), length


class _Elements:
    """Element headers read from an open file, 16 bytes at a time (unbuffered: nothing else is read)."""

    def __init__(self, f) -> None:
        self.fd, self.size, self.reads = f.fileno(), os.fstat(f.fileno()).st_size, 0

    def head(self, at: int) -> tuple[int, int, int, bytes]:
        """(id, data start, data end, the 16 bytes read) of the element at `at`."""
        self.reads += 1
        if self.reads > MAX_ENTRIES:
            raise _Unusable("too many elements")
        raw = os.pread(self.fd, 16, at)
        ident, n = _vint(raw, 0, True)
        size, m = _vint(raw, n, False)
        if size == _UNKNOWN and ident != _SEGMENT:
            # A live recorder's open cluster ends where the next top-level element starts: only
            # reading every element inside finds that; the scan does.
            raise _Unusable("an element of unknown size")
        start = at + n + m
        return ident, start, (self.size if size == _UNKNOWN else start + size), raw[n + m:]

    def children(self, start: int, end: int):
        """(id, data start, data end, bytes after the header) of the elements in [start, end)."""
        while start < end:
            ident, data, stop, rest = self.head(start)
            yield ident, data, stop, rest
            start = stop

    def payload(self, start: int, end: int) -> bytes:
        """The whole data of a small element (Info, Tracks)."""
        return os.pread(self.fd, min(end - start, 1 << 20), start)


def _uint(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _in_memory(data: bytes):
    """(id, data) of the child elements of an element read whole."""
    at = 0
    while at < len(data):
        ident, n = _vint(data, at, True)
        size, m = _vint(data, at + n, False)
        if size == _UNKNOWN:
            raise _Unusable("open-sized element in a header")
        yield ident, data[at + n + m:at + n + m + size]
        at += n + m + size


def _video_track(tracks: bytes) -> int:
    """The number of the first video track (FFmpeg's first video stream)."""
    for ident, entry in _in_memory(tracks):
        if ident == _TRACK_ENTRY:
            fields = dict(_in_memory(entry))
            if _uint(fields.get(_TRACK_TYPE, b"")) == 1 and _TRACK_NUMBER in fields:
                return _uint(fields[_TRACK_NUMBER])
    raise _Unusable("no video track")


def matroska_blocks(f, stream) -> Timeline | None:
    """The video track's timeline of the Matroska file open as `f`, or None where this walk cannot tell."""
    elements = _Elements(f)
    try:
        ident, start, end, _ = elements.head(0)
        if ident != _EBML:
            return None
        ident, start, end, _ = elements.head(end)
        if ident != _SEGMENT:
            return None
        rows, cut = _segment(elements, start, min(end, elements.size), stream)
    except _Unusable:
        return None
    if not rows:
        return None
    table = np.asarray(rows, dtype=np.int64)
    timeline = from_decode_order(table[:, 0], table[:, 1].astype(bool), np.zeros(len(table), bool), "matroska blocks")
    if cut is not None:
        timeline.cut = (
            f"file ends early (cut at about {cut:.0%}: a cluster runs past the end of the file; "
            "an interrupted copy or recording?)"
        )
    return timeline


def _segment(elements: _Elements, start: int, end: int, stream) -> tuple[list, float | None]:
    """(rows of (pts, keyframe) of the video track's blocks, the share there if the file is cut)."""
    scale, track, rows = 1_000_000, None, []
    for ident, data, stop, _ in elements.children(start, end):
        if stop > elements.size:
            if stream.time_base != Fraction(scale, 10**9):
                raise _Unusable("a track timestamp scale")
            return rows, data / stop
        if ident == _INFO:
            scale = _uint(dict(_in_memory(elements.payload(data, stop))).get(_SCALE, b"")) or scale
        elif ident == _TRACKS:
            track = _video_track(elements.payload(data, stop))
        elif ident == _CLUSTER:
            if track is None:
                raise _Unusable("clusters before the tracks")
            _cluster(elements, data, stop, track, rows)
    if stream.time_base != Fraction(scale, 10**9):
        raise _Unusable("a track timestamp scale")  # FFmpeg's timestamps are not the blocks' own
    return rows, None


def _cluster(elements: _Elements, start: int, end: int, track: int, rows: list) -> None:
    """Append (pts, keyframe) of the cluster's blocks of `track`."""
    base = None
    for ident, data, stop, rest in elements.children(start, end):
        if ident == _CLUSTER_TIME:
            base = _uint(os.pread(elements.fd, stop - data, data))
        elif ident == _SIMPLE_BLOCK:
            _block(rest, base, track, rows, None)
        elif ident == _BLOCK_GROUP:
            block, referenced = None, False
            for child, _, _, child_rest in elements.children(data, stop):
                if child == _BLOCK:
                    block = child_rest
                referenced = referenced or child == _REFERENCE
            if block is not None:
                _block(block, base, track, rows, not referenced)


def _block(head: bytes, base: int | None, track: int, rows: list, keyframe: bool | None) -> None:
    """Append (pts, keyframe) of a block whose header starts `head`, if it is of `track`."""
    number, n = _vint(head, 0, False)
    if number != track:
        return
    if base is None or len(head) < n + 3:
        raise _Unusable("a block before its cluster's timestamp")
    flags = head[n + 2]
    if flags & 0x06:
        raise _Unusable("laced video frames")
    relative = int.from_bytes(head[n:n + 2], "big", signed=True)
    rows.append((base + relative, bool(flags & 0x80) if keyframe is None else keyframe))
