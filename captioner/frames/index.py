"""A video stream's timeline from the container's index, without reading media data.

The probe needs every presented frame's timestamp and keyframe flag. A packet scan reads the
whole file for it (11 GB for a 2-hour camera take); the containers people record into already
list it, and this module reads only those lists:

- MP4/MOV with sample tables (`moov`): FFmpeg's index (`stream.index_entries`: decode
  timestamps after the edit list, keyframe and discard flags, byte positions and sizes), plus
  the composition offsets (`ctts`) read here from the `moov`, which FFmpeg keeps to itself: a
  presented timestamp is the decode timestamp plus its offset.
- Fragmented MP4 (`moof` boxes, an empty `moov`): each fragment's header (`tfhd`, `tfdt`,
  `trun`) is read and its media data skipped.
- Matroska/WebM: FFmpeg lists only the Cues (one entry per keyframe, and only after a seek), so
  the cluster's element headers are read here instead: a block's 4-13 header bytes carry its
  track, timestamp and keyframe flag; its frame data is skipped.
- AVI of an intra-only stream (MJPEG, DV): FFmpeg's index (`idx1`, OpenDML `indx`), frame numbers.

Anything else (MPEG-TS/PS, raw streams, AVI with B-frames, an MP4 with several edits or samples
in both its `moov` and fragments, laced or live-written Matroska) returns None, as does a damaged
index, and the probe scans packets within its budget.

What each costs, measured on packet-copied takes (tests/test_probe_index.py): the MP4 `moov` is
read twice (here for `ctts`, and by FFmpeg when it opens the file), 25-30 bytes a frame; a
fragment's header about 20 bytes a frame; a Matroska block header 16 bytes, but one page of the
page cache per frame, so on cold storage the walk reads about 4 KB a frame from the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.frames.mkvindex import matroska_blocks
from captioner.frames.timeline import MAX_ENTRIES, Timeline, from_decode_order

# ISO box flags (ISO/IEC 14496-12): tfhd's optional fields, trun's, and the sample flags FFmpeg
# reads as "not a keyframe" (is-non-sync, or depends on other samples).
_TFHD_FIELDS = ((0x1, 8), (0x2, 4), (0x8, 4), (0x10, 4), (0x20, 4))
_NOT_KEY = 0x00010000 | 0x01000000
_AVINDEX_KEYFRAME, _AVINDEX_DISCARD_FRAME = 0x1, 0x2  # FFmpeg's AVIndexEntry flags


# The boxes an MP4/MOV/3GP file starts with (old QuickTime files have no `ftyp`).
_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")


def iso_layout_of(path: Path) -> IsoLayout | None:
    """The box layout of an MP4/MOV/3GP file, None for anything else."""
    with open(os.fsencode(path), "rb", buffering=0) as f:
        if os.pread(f.fileno(), 8, 0)[4:8] not in _FIRST_BOXES:
            return None
        return iso_layout(f)


def read_index(path: Path, container, stream, layout: IsoLayout | None) -> Timeline | None:
    """The timeline of `stream` from `container`'s index, or None where it has none usable here.

    `layout` is `iso_layout_of(path)`, read before the file was opened.
    """
    names = container.format.name.split(",")
    try:
        if ("mp4" in names or "mov" in names) and layout is not None:
            if layout.fragmented:
                with open(os.fsencode(path), "rb", buffering=0) as f:
                    return _fragments(f, layout, stream)
            return _sample_tables(layout, stream)
        if "matroska" in names:
            with open(os.fsencode(path), "rb", buffering=0) as f:
                return matroska_blocks(f, stream)
        if "avi" in names:
            return _avi_index(path, stream)
    except (ValueError, IndexError):  # a damaged index: the packet scan tells what is there
        return None
    return None


@dataclass
class IsoLayout:
    """Where an MP4's boxes are: its `moov` (read whole: it is the index) and its fragments."""

    size: int
    moov: bytes
    moofs: list[tuple[int, int]]  # (position, length) of every top-level moof
    cut: float | None  # a top-level box runs past the end of the file: the share of it there

    @property
    def fragmented(self) -> bool:
        """Fragments carry the samples (`mvex` in the `moov`)."""
        return _child(self.moov, 0, len(self.moov), b"mvex") is not None


def iso_layout(f) -> IsoLayout | None:
    """The top-level boxes of the MP4 open as `f` (16 bytes read per box, the moov whole)."""
    size = os.fstat(f.fileno()).st_size
    position, moov, moofs, boxes = 0, None, [], 0
    while position + 8 <= size:
        boxes += 1
        if boxes > MAX_ENTRIES:
            return None
        header = os.pread(f.fileno(), 16, position)
        length, kind, head = int.from_bytes(header[:4], "big"), header[4:8], 8
        if length == 1 and len(header) == 16:
            length, head = int.from_bytes(header[8:16], "big"), 16
        elif length == 0:
            length = size - position
        if length < head:
            return None
        if position + length > size:
            return IsoLayout(size, moov, moofs, size / (position + length)) if moov else None
        if kind == b"moov":
            moov = os.pread(f.fileno(), length - head, position + head)
        elif kind == b"moof":
            moofs.append((position, length))
        position += length
    return IsoLayout(size, moov, moofs, None) if moov else None


def _boxes(data: bytes, start: int, end: int):
    """(kind, payload start, box end) of the boxes in data[start:end]."""
    while start + 8 <= end:
        length, kind, head = int.from_bytes(data[start:start + 4], "big"), data[start + 4:start + 8], 8
        if length == 1:
            length, head = int.from_bytes(data[start + 8:start + 16], "big"), 16
        elif length == 0:
            length = end - start
        if length < head or start + length > end:
            return
        yield kind, start + head, start + length
        start += length


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """(payload start, end) of the first box of `kind` in data[start:end]."""
    for name, payload, box_end in _boxes(data, start, end):
        if name == kind:
            return payload, box_end
    return None


def _path(data: bytes, start: int, end: int, *kinds: bytes) -> tuple[int, int] | None:
    """The box at the path `kinds` below data[start:end]."""
    span: tuple[int, int] | None = (start, end)
    for kind in kinds:
        span = _child(data, *span, kind) if span else None
    return span


def _track(moov: bytes, track_id: int) -> tuple[int, int] | None:
    """The `trak` box whose `tkhd` names `track_id` (FFmpeg's stream id for MP4)."""
    for kind, payload, end in _boxes(moov, 0, len(moov)):
        tkhd = _child(moov, payload, end, b"tkhd") if kind == b"trak" else None
        if tkhd:
            at = tkhd[0] + (20 if moov[tkhd[0]] == 1 else 12)
            if int.from_bytes(moov[at:at + 4], "big") == track_id:
                return payload, end
    return None


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "big")


def _s32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "big", signed=True)


def _single_edit(moov: bytes, trak: tuple[int, int]) -> bool:
    """At most one edit shows media (an empty edit before it only delays the start)."""
    elst = _path(moov, *trak, b"edts", b"elst")
    if elst is None:
        return True
    start = elst[0]
    version, count = moov[start], _u32(moov, start + 4)
    width = 20 if version == 1 else 12
    shown = 0
    for i in range(count):
        at = start + 8 + i * width
        if version == 1:  # duration (8 bytes), media time (8), rate (4)
            media_time = int.from_bytes(moov[at + 8:at + 16], "big", signed=True)
        else:  # duration (4), media time (4), rate (4)
            media_time = _s32(moov, at + 4)
        shown += media_time != -1
    return shown <= 1


def _sample_tables(layout: IsoLayout, stream) -> Timeline | None:
    """MP4/MOV with sample tables: FFmpeg's index and the `ctts` offsets (see the module docstring)."""
    trak = _track(layout.moov, stream.id)
    if trak is None or not _single_edit(layout.moov, trak):
        return None  # several edits: FFmpeg rebuilds the index and its offsets; the scan knows
    # One pass: PyAV makes an object per entry, and that, not FFmpeg, is most of the time here.
    table = np.array([(e.timestamp, e.flags, e.pos + e.size) for e in stream.index_entries], dtype=np.int64)
    count = len(table)
    if not count:
        return None
    dts, keys = table[:, 0], (table[:, 1] & _AVINDEX_KEYFRAME) > 0
    discard, ends = (table[:, 1] & _AVINDEX_DISCARD_FRAME) > 0, table[:, 2]
    offsets = _ctts(layout.moov, trak)
    if offsets is None:
        pts = dts
    elif len(offsets) != count:
        return None
    else:
        # FFmpeg moves decode times back by the largest negative offset and adds it to pts again.
        pts = dts + offsets + max(0, -int(offsets.min(initial=0)))
    timeline = from_decode_order(pts, keys, discard, "mp4 index")
    past = np.flatnonzero(ends > layout.size)
    if len(past):  # the sample tables are whole, the media data they point into is not
        seconds = float(stream.time_base or 0)
        there, whole = (dts[past[0]] - dts[0]) * seconds, (dts[-1] - dts[0]) * seconds * count / max(count - 1, 1)
        share = there / whole if whole else past[0] / count
        timeline.cut = _cut_reason(share, f"{there:.1f} of {whole:.1f} s are there")
    return timeline


def _avi_index(path: Path, stream) -> Timeline | None:
    """AVI's index (`idx1`/OpenDML `indx`) of an intra-only stream (MJPEG, DV, ...); None for others.

    AVI stores frames in decode order with a frame number each and no presentation times; FFmpeg
    finds those of a stream with B-frames by parsing the frames themselves, so only a stream of
    keyframes alone, where decode order is presentation order, is told by its index.
    """
    table = np.array([(e.timestamp, e.flags, e.pos + e.size) for e in stream.index_entries], dtype=np.int64)
    if not len(table) or not np.all(table[:, 1] & _AVINDEX_KEYFRAME) or np.any(table[:, 1] & _AVINDEX_DISCARD_FRAME):
        return None
    timeline = from_decode_order(table[:, 0], np.ones(len(table), bool), np.zeros(len(table), bool), "avi index")
    past = np.flatnonzero(table[:, 2] > os.stat(os.fsencode(path)).st_size)
    if len(past):
        timeline.cut = _cut_reason(past[0] / len(table))
    return timeline


def _ctts(moov: bytes, trak: tuple[int, int]) -> np.ndarray | None:
    """Per-sample composition offsets of a track, or None when it has none."""
    ctts = _path(moov, *trak, b"mdia", b"minf", b"stbl", b"ctts")
    if ctts is None:
        return None
    start = ctts[0]
    count = _u32(moov, start + 4)
    table = np.frombuffer(moov, dtype=">i4", count=2 * count, offset=start + 8).reshape(-1, 2)
    return np.repeat(table[:, 1].astype(np.int64), table[:, 0].astype(np.int64))


def _cut_reason(share: float, what: str = "its index lists frames past the end of the file") -> str:
    """The reason a file whose index points past its end fails (the wording of the probe's own check)."""
    return f"file ends early (cut at about {share:.0%}: {what}; an interrupted copy or recording?)"


def _fragments(f, layout: IsoLayout, stream) -> Timeline | None:
    """Fragmented MP4: every `moof`'s run of samples for the stream's track, no media data read."""
    trak = _track(layout.moov, stream.id)
    if trak is None or _path(layout.moov, *trak, b"edts", b"elst") is not None:
        return None  # an edit list on fragments: FFmpeg's handling differs by version; the scan knows
    stsz = _path(layout.moov, *trak, b"mdia", b"minf", b"stbl", b"stsz")
    if stsz is not None and _u32(layout.moov, stsz[0] + 8):
        return None  # samples in the moov as well as in fragments: rare, left to the scan
    defaults = _trex_defaults(layout.moov, stream.id)
    dts_next, rows = 0, []
    for position, length in layout.moofs:
        moof = os.pread(f.fileno(), length, position)
        for kind, payload, end in _boxes(moof, 8, len(moof)):
            if kind == b"traf":
                dts_next = _traf(moof, payload, end, stream.id, defaults, dts_next, rows)
                if dts_next is None:
                    return None
    if not rows:
        return None
    table = np.asarray(rows, dtype=np.int64)
    pts, keys = table[:, 0] + table[:, 1], table[:, 2].astype(bool)
    timeline = from_decode_order(pts, keys, np.zeros(len(pts), bool), "mp4 fragments")
    if layout.cut is not None:
        timeline.cut = _cut_reason(layout.cut)
    return timeline


def _trex_defaults(moov: bytes, track_id: int) -> tuple[int, int, int]:
    """(duration, size, flags) of a sample that states none, from the moov's `trex` of the track."""
    mvex = _child(moov, 0, len(moov), b"mvex")
    for kind, payload, _ in _boxes(moov, *mvex) if mvex else ():
        if kind == b"trex" and _u32(moov, payload + 4) == track_id:
            return _u32(moov, payload + 12), _u32(moov, payload + 16), _u32(moov, payload + 20)
    return 0, 0, 0


def _traf(moof: bytes, start: int, end: int, track_id: int, defaults, dts: int, rows: list) -> int | None:
    """Append (dts, cts offset, keyframe) of one track fragment's samples; the next dts, None if unreadable."""
    tfhd = _child(moof, start, end, b"tfhd")
    if tfhd is None or _u32(moof, tfhd[0] + 4) != track_id:
        return dts
    flags, at = _u32(moof, tfhd[0]) & 0xFFFFFF, tfhd[0] + 8
    fields = {}
    for bit, width in _TFHD_FIELDS:
        if flags & bit:
            fields[bit] = int.from_bytes(moof[at:at + width], "big")
            at += width
    duration, sample_flags = fields.get(0x8, defaults[0]), fields.get(0x20, defaults[2])
    tfdt = _child(moof, start, end, b"tfdt")
    if tfdt is not None:
        dts = int.from_bytes(moof[tfdt[0] + 4:tfdt[0] + (12 if moof[tfdt[0]] == 1 else 8)], "big")
    for kind, payload, _ in _boxes(moof, start, end):
        if kind == b"trun":
            dts = _trun(moof, payload, dts, (duration, sample_flags), rows)
            if dts is None:
                return None
    return dts


def _trun(moof: bytes, start: int, dts: int, defaults: tuple[int, int], rows: list) -> int | None:
    """Append the samples of one `trun` box; the dts after them (None: a negative offset, left to the scan)."""
    version, flags, count = moof[start], _u32(moof, start) & 0xFFFFFF, _u32(moof, start + 4)
    at = start + 8 + (4 if flags & 0x1 else 0)
    first_flags = None
    if flags & 0x4:
        first_flags, at = _u32(moof, at), at + 4
    for i in range(count):
        duration, sample_flags, offset = defaults[0], defaults[1], 0
        if flags & 0x100:
            duration, at = _u32(moof, at), at + 4
        if flags & 0x200:
            at += 4
        if flags & 0x400:
            sample_flags, at = _u32(moof, at), at + 4
        if i == 0 and first_flags is not None:
            sample_flags = first_flags
        if flags & 0x800:
            offset, at = (_s32(moof, at) if version else _u32(moof, at)), at + 4
            if offset < 0:
                return None
        rows.append((dts, offset, not sample_flags & _NOT_KEY))
        dts += duration
    return dts
