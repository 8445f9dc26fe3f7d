"""What a video file really holds, read from its packets without decoding any.

The container's header is not trusted for what matters to sampling: the frame count and time
range come from the video stream's own packets as a player presents them (frames an edit list
hides are left out, a start offset is subtracted, variable frame rates keep their real times),
and a file is called cut short only when *every* stream ends well before the stated length (an
audio track longer than the video is normal, a copy cut at 60% is not).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from captioner.frames.errors import FrameError, explain
from captioner.frames.index import iso_layout_of, read_index
from captioner.frames.timeline import Timeline

# A clip whose streams all end before this share of the length its container states was cut
# short (an interrupted copy); captioning its first seconds would silently describe the wrong clip.
TRUNCATED_SHARE = 0.75

# What the packet scan of a file without an index may read and take (CAPTIONER_PROBE_MAX_BYTES,
# CAPTIONER_PROBE_MAX_SECONDS): past them the clip fails rather than a slow share eating the timeout.
PROBE_MAX_BYTES = 512 * 1024 * 1024
PROBE_MAX_SECONDS = 20.0


def process_bytes_read() -> int | None:
    """Bytes this process has read so far through read() calls (Linux `rchar`), None where unknown.

    Both PyAV and decord read files through FFmpeg's file protocol, i.e. read() calls of the
    decoding process, so the difference around a clip's probe and decode is what the frame stage
    read for it, page cache or not. It also counts Python modules first imported in between.
    """
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class VideoInfo:
    """The presented video stream of one file."""

    codec: str
    coded_size: tuple[int, int]  # (width, height) as stored
    sar: Fraction
    may_rotate: bool  # the container can carry a display matrix (MP4/MOV): the first decoded frame tells
    pts: np.ndarray  # stream timestamps of the presented frames, ascending
    times: np.ndarray  # the same in seconds from the first presented frame
    keyframe: np.ndarray  # bool per presented frame: decodable without earlier frames
    hidden: int  # frames stored but not presented (an edit list's lead-in)
    open_gop: bool  # leading pictures: frames after a keyframe that show before it
    container: str  # FFmpeg's name of the container format
    notes: tuple[str, ...] = field(default_factory=tuple)
    timeline_from: str = "scan"  # "scan" (every packet read) or the index read (frames/index.py)

    def display_size(self, rotation: int) -> tuple[int, int]:
        """(width, height) as shown: the sample aspect ratio applied, then the rotation."""
        width, height = self.coded_size
        if self.sar != 1:
            width = max(2, round(width * self.sar))
        return (height, width) if rotation in (90, 270) else (width, height)

    def geometry_notes(self, rotation: int) -> list[str]:
        """What was corrected to show the picture as a player does."""
        notes = [f"rotation {rotation} applied"] if rotation else []
        if self.sar != 1:
            width, height = self.coded_size
            shown = self.display_size(0)
            notes.append(
                f"sample aspect {self.sar.numerator}:{self.sar.denominator} applied "
                f"({width}x{height} shown as {shown[0]}x{shown[1]})"
            )
        return notes

    @property
    def frames(self) -> int:
        """Frames a player presents."""
        return len(self.pts)

    @property
    def duration_s(self) -> float:
        """Seconds from the first presented frame to the end of the last one."""
        return float(self.times[-1]) + self.frame_s

    @property
    def frame_s(self) -> float:
        """Typical frame duration (the median gap between presented frames)."""
        if len(self.times) < 2:
            return 0.04
        return float(np.median(np.diff(self.times))) or 0.04


def checked_file(path: Path) -> None:
    """Raise `FrameError` for a path that is not a readable, non-empty regular file."""
    if not os.path.lexists(path) or not path.exists():
        raise FrameError(path, "file does not exist" + (" (broken symlink)" if path.is_symlink() else ""))
    if not path.is_file():
        raise FrameError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise FrameError(path, "file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise FrameError(path, "file is empty (0 bytes)")


@contextmanager
def openable(path: Path) -> Iterator[str]:
    """A name FFmpeg and decord can open for `path`, also when the name is not valid UTF-8.

    Both libraries take the name as UTF-8 text; a CP949 name from a Windows zip is not. The file is
    then opened here and handed over as /proc/self/fd/N, which names the same file in ASCII.
    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        fd = os.open(os.fsencode(path), os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield str(path)


def probe(
    path: Path, max_bytes: int = PROBE_MAX_BYTES, max_seconds: float = PROBE_MAX_SECONDS, use_index: bool = True
) -> VideoInfo:
    """Read the presented timeline and geometry of `path`'s first video stream.

    The timeline comes from the container's index where it has one (`frames/index.py`: MP4 sample
    tables or fragments, Matroska block headers), else from a scan of every packet that may read
    `max_bytes` and take `max_seconds`; `use_index=False` always scans (to compare the two).
    Raises `FrameError` with a plain reason for files that are not videos, have no video stream,
    have no frames, were cut short, or need a scan past the budget.
    """
    import av

    checked_file(path)
    try:
        layout = iso_layout_of(path) if use_index else None
        # FFmpeg reads every fragment of a fragmented MP4 when it opens one (the whole file, where
        # fragments are small); told to ignore the index it stops at the first. Ours reads them.
        options = {"fflags": "+ignidx"} if layout is not None and layout.fragmented else {}
        with openable(path) as name, av.open(name, metadata_errors="replace", options=options) as container:
            return _probe(path, container, (layout, use_index), (max_bytes, max_seconds))
    except (FrameError, MemoryError):  # PyAV's ENOMEM is an FFmpegError too: not a damaged file
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise FrameError(path, _iso_media_cut(path) or explain(str(exc))) from None


# Image formats FFmpeg opens as a one-frame "video": a picture renamed .mov is not footage.
_STILL_FORMATS = ("image2", "_pipe", "gif", "apng")


def _probe(path: Path, container, index: tuple, budget: tuple[int, float]) -> VideoInfo:
    """`probe` of the open `container`; `index` is (the MP4 layout or None, whether to read an index)."""
    import av

    layout, use_index = index
    if any(part in container.format.name for part in _STILL_FORMATS):
        raise FrameError(path, f"a still image ({container.format.name.replace('_pipe', '')}), not a video")
    streams = container.streams.video
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise FrameError(path, f"no video stream (contains: {', '.join(kinds)})")
    stream = streams[0]
    ctx = stream.codec_context
    width, height = ctx.width, ctx.height
    if not width or not height:
        raise FrameError(path, "video stream has no frame size (damaged header?)")
    time_base = stream.time_base or Fraction(1, 90000)

    scan = (use_index and read_index(path, container, stream, layout)) or _scan(path, container, stream, budget)
    if scan.cut:
        raise FrameError(path, scan.cut)
    if not scan.pts:
        stated = (container.duration or 0) / av.time_base
        if stated > 0:
            # A container that states a length but holds no frame was cut before its first one.
            raise FrameError(
                path,
                f"file ends early (cut at about 0%: no frame of the stated {stated:.1f} s is there; "
                "an interrupted copy or recording?)",
            )
        raise FrameError(path, "video stream has no frames" + (f" ({scan.error})" if scan.error else ""))
    order = np.argsort(np.asarray(scan.pts, dtype=np.int64), kind="stable")
    pts_sorted = np.asarray(scan.pts, dtype=np.int64)[order]
    keep = np.concatenate([[True], np.diff(pts_sorted) > 0])  # a repeated timestamp is one picture
    pts_sorted, keyframe = pts_sorted[keep], np.asarray(scan.keys, dtype=bool)[order][keep]
    seconds = pts_sorted.astype(np.float64) * float(time_base)
    times = seconds - seconds[0]

    if scan.source == "scan":
        _check_complete(path, container, scan.stream_end, scan.error)

    sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio or Fraction(1, 1)
    sar = Fraction(sar) if sar and sar > 0 else Fraction(1, 1)
    notes = []
    if scan.hidden:
        notes.append(f"edit list: {scan.hidden} lead-in frames not shown")
    if seconds[0] >= 10.0:  # a camera's timecode; MPEG-TS always starts a little after 0
        notes.append(f"stream starts at {seconds[0]:.3f} s")
    return VideoInfo(
        codec=getattr(ctx.codec, "canonical_name", None) or ctx.name,  # "av1", not the decoder "libdav1d"
        coded_size=(width, height),
        sar=sar,
        # Only the QuickTime family stores a display matrix that FFmpeg applies; PyAV shows it
        # on decoded frames, so it is read from the first frame decoded.
        may_rotate=any(name in container.format.name.split(",") for name in ("mov", "mp4")),
        pts=pts_sorted,
        times=times,
        keyframe=keyframe,
        hidden=scan.hidden,
        open_gop=scan.open_gop,
        container=container.format.name,
        notes=tuple(notes),
        timeline_from=scan.source,
    )


def _scan(path: Path, container, stream, budget: tuple[int, float]) -> Timeline:
    """Every packet of every stream, none decoded: the video timeline and how far each stream goes.

    Raises `FrameError` once the scan has read more than `budget` (bytes, seconds) allows.
    """
    import av

    scan, started, read_before = Timeline(), time.monotonic(), process_bytes_read()
    after_key: int | None = None
    demuxed = 0
    try:
        for count, packet in enumerate(container.demux()):
            demuxed += packet.size
            if count % 256 == 255:
                _check_budget(path, container, (read_before, demuxed, started), budget)
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or packet.size == 0:
                continue
            if packet.time_base is not None:
                end = float((stamp + (packet.duration or 0)) * packet.time_base)
                index = packet.stream.index
                scan.stream_end[index] = max(scan.stream_end.get(index, end), end)
            if packet.stream.index != stream.index:
                continue
            if packet.is_discard:  # decoded for what follows, never shown
                scan.hidden += 1
                continue
            if after_key is not None and stamp < after_key:
                scan.open_gop = True
            after_key = stamp if packet.is_keyframe and scan.pts else None
            scan.pts.append(stamp)
            scan.keys.append(bool(packet.is_keyframe))
    except MemoryError:
        raise
    except (av.error.FFmpegError, EOFError) as exc:
        scan.error = explain(str(exc))
    return scan


def _check_budget(path: Path, container, progress: tuple[int | None, int, float], budget: tuple[int, float]) -> None:
    """Raise `FrameError` when the packet scan has read or taken more than its budget."""
    read_before, demuxed, started = progress
    max_bytes, max_seconds = budget
    now = process_bytes_read()
    # The process's reads where Linux counts them (container overhead included), else the packets'.
    read = demuxed if now is None or read_before is None else now - read_before
    took = time.monotonic() - started
    if read <= max_bytes and took <= max_seconds:
        return
    setting = (
        f"probe_max_bytes = {max_bytes:,} (CAPTIONER_PROBE_MAX_BYTES)" if read > max_bytes
        else f"probe_max_seconds = {max_seconds:g} (CAPTIONER_PROBE_MAX_SECONDS)"
    )
    raise FrameError(
        path,
        f"no index this probe reads ({container.format.name.split(',')[0]}), and the packet scan "
        f"read {read:,} bytes in {took:.1f} s without reaching the end: past {setting}",
    )


def _check_complete(path: Path, container, stream_end: dict[int, float], demux_error: str | None) -> None:
    """Raise `FrameError` when every stream stops well before the length the container states."""
    import av

    if not container.duration or not stream_end:
        if demux_error and not stream_end:
            raise FrameError(path, demux_error)
        return
    start = (container.start_time or 0) / av.time_base
    stated = container.duration / av.time_base
    if 0 < start < stated:
        # Matroska states where the content ends, not how long it lasts: a clip whose timestamps
        # start at 3600 s says 3602 s. Judge by the shorter reading.
        stated -= start
    covered = max(stream_end.values()) - start
    if stated > 0 and covered < TRUNCATED_SHARE * stated:
        share = max(0.0, covered / stated)
        raise FrameError(
            path,
            f"file ends early (cut at about {share:.0%}: {covered:.1f} of {stated:.1f} s are there; "
            "an interrupted copy or recording?)",
        )


# Top-level boxes `_iso_media_cut` reads at most. A camera's file has a handful (ftyp, mdat, moov,
# free, uuid); a fragmented one two or three per fragment, with its moov first. Each costs one
# 16-byte read, so the scan of a hostile file of tiny boxes stops after 160 KB.
MAX_TOP_BOXES = 10_000


def _iso_media_cut(path: Path) -> str | None:
    """Why an MP4/MOV/3GP that FFmpeg cannot open is broken, from its top-level boxes; None if not one.

    A camera or a copy writes the media data first and the index (`moov`) last; cut short, the
    data box claims more bytes than the file has and the index is gone. At most `MAX_TOP_BOXES`
    boxes are read, none kept.
    """
    size = path.stat().st_size
    with open(os.fsencode(path), "rb", buffering=0) as f:  # unbuffered: a header is 16 bytes, not 8 KB
        if f.read(12)[4:8] != b"ftyp":
            return None
        position, has_index, boxes = 0, False, 0
        while position + 8 <= size:
            if boxes == MAX_TOP_BOXES:  # more boxes than any writer makes: stop reading
                return None if has_index else (
                    f"not a video file, or a damaged one: no MP4 index (moov) in its first {MAX_TOP_BOXES:,} "
                    "top-level boxes"
                )
            boxes += 1
            f.seek(position)
            header = f.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")
            elif length == 0:
                length = size - position
            if length < 8:
                break
            has_index = has_index or kind == b"moov"
            if position + length > size:
                return (
                    f"file ends early (cut at about {size / (position + length):.0%}: its "
                    f"{kind.decode('latin-1')} box needs {position + length} bytes, the file has {size}; "
                    "an interrupted copy or recording?)"
                )
            position += length
    if not has_index:
        return "file is incomplete: its MP4 index (moov) is missing, as when a copy or recording was cut off"
    return None
