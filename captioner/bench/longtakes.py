"""Long takes for tests and benchmarks, made by copying one short encoded take over and over.

A 2-hour take encoded frame by frame costs minutes and gigabytes; copying the packets of a 10 s
take 720 times with shifted timestamps (a remux, nothing re-encoded) costs seconds, and at a low
bitrate little disk. Each copy starts with the source's first keyframe and H.264 from x264 closes
its groups of pictures, so every copy decodes on its own: the result is a valid file that PyAV and
decord decode at any point. Only the first video stream is copied (an audio track would need its
own padding to line up at every seam).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

# Containers by suffix, and the muxer options that give each its index. MP4: the sample tables
# (`moov`) moved to the front (faststart), as a player streaming it needs; Matroska writes its
# Cues (keyframe positions) by default; fragmented MP4: a `moof` per keyframe, no sample tables.
_FORMATS = {".mp4": "mp4", ".mov": "mov", ".m4v": "mp4", ".mkv": "matroska", ".webm": "webm", ".ts": "mpegts",
            ".avi": "avi", ".h264": "h264"}


@dataclass(frozen=True)
class _Packet:
    """One video packet of the source, kept in memory (a short take is a few hundred KB)."""

    data: bytes
    pts: int | None
    dts: int | None
    duration: int
    keyframe: bool


def write_long_take(source: Path, out: Path, seconds: float, *, fragmented: bool = False) -> Path:
    """Write a take of about `seconds` to `out` by repeating the video packets of `source`; return `out`.

    The container follows `out`'s suffix (.mp4/.mov with the index at the front, .mkv/.webm with
    Cues, .ts, .avi, .h264 raw); `fragmented=True` writes a fragmented MP4 (a fragment per
    keyframe, an empty `moov`). The take ends at the last keyframe group that starts before
    `seconds`, so its length is `seconds` rounded up to the source's keyframe interval.
    """
    import av
    from av.bitstream import BitStreamFilterContext

    source, out = Path(source), Path(out)
    packets, period, time_base = _read_source(source)
    fmt = _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"{out}: no container known for suffix {out.suffix!r} (one of {sorted(_FORMATS)})")
    options = {}
    if fragmented:
        if fmt not in ("mp4", "mov"):
            raise ValueError(f"{out}: fragmented=True needs an .mp4 or .mov name")
        options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
    elif fmt in ("mp4", "mov"):
        options["movflags"] = "faststart"
    out.parent.mkdir(parents=True, exist_ok=True)
    limit = round(Fraction(seconds) / time_base)  # in the source's time base
    with av.open(str(source)) as src, av.open(str(out), mode="w", format=fmt, options=options) as dst:
        template = src.streams.video[0]
        stream = dst.add_stream_from_template(template)
        # AVI counts frames, not time: a fine time base there would mean a padding entry per tick.
        stream.time_base = 1 / template.average_rate if fmt == "avi" and template.average_rate else time_base
        # MP4's H.264 is length-prefixed; AVI and a raw stream need start codes, which the TS and
        # Matroska muxers convert by themselves and these two do not.
        convert = fmt in ("avi", "h264") and template.codec_context.name == "h264"
        bsf = BitStreamFilterContext("h264_mp4toannexb", template, stream) if convert else None
        _copy(dst, stream, packets, (period, limit, time_base), bsf)
    return out


def _read_source(source: Path) -> tuple[list[_Packet], int, Fraction]:
    """The source's video packets in decode order, its period (pts units) and its time base."""
    import av

    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 90000)
        packets = [
            _Packet(bytes(p), p.pts, p.dts, p.duration or 0, bool(p.is_keyframe))
            for p in container.demux(stream)
            if p.size
        ]
    if not packets or not packets[0].keyframe:
        raise ValueError(f"{source}: needs video packets starting with a keyframe to repeat")
    stamps = sorted(p.pts for p in packets if p.pts is not None)
    if len(stamps) != len(packets):
        raise ValueError(f"{source}: packets without timestamps (a raw stream?) cannot be shifted; remux it first")
    step = stamps[1] - stamps[0] if len(stamps) > 1 else 1
    # One copy lasts from its first shown frame to the end of its last: a whole number of frames.
    period = stamps[-1] - stamps[0] + (packets[-1].duration or step)
    return packets, period, time_base


def _copy(dst, stream, packets: list[_Packet], timing: tuple[int, int, Fraction], bsf) -> None:
    """Mux copies of `packets`, each shifted by a period, until a keyframe would start at or past the limit.

    `timing` is (period, limit, time base), both in the source's time base; `bsf` an optional
    bitstream filter every packet goes through.
    """
    import av

    period, limit, time_base = timing
    for p, shift in _shifted(packets, period, limit):
        packet = av.Packet(p.data)
        packet.stream = stream
        packet.time_base = time_base
        packet.pts = p.pts + shift
        packet.dts = (p.dts if p.dts is not None else p.pts) + shift
        packet.duration = p.duration
        packet.is_keyframe = p.keyframe
        _mux(dst, stream, packet, bsf)
    if bsf is not None:
        _mux(dst, stream, None, bsf)


def _shifted(packets: list[_Packet], period: int, limit: int) -> Iterator[tuple[_Packet, int]]:
    """(packet, shift) of every copy in decode order; stops at the first keyframe at or past `limit`."""
    first = min(p.pts for p in packets)
    for copy in range(max(1, math.ceil(limit / period))):
        shift = copy * period - first
        for p in packets:
            if p.keyframe and (copy or p is not packets[0]) and p.pts + shift >= limit:
                return
            yield p, shift


def _mux(dst, stream, packet, bsf) -> None:
    """Mux `packet` (None: flush `bsf`), through `bsf` if there is one."""
    for out in bsf.filter(packet) if bsf is not None else [packet]:
        out.stream = stream
        dst.mux(out)
