"""The decoders. Each takes the probed `VideoInfo`, the presented-frame indices to return and the
model's short side, and returns upright RGB frames at display aspect, shape (N, H, W, 3) uint8.

- `read_keyframes` (PyAV): when every chosen frame is a keyframe, each is decoded from its own
  packet and nothing else. A decoder fed packets in order holds a keyframe back until it has
  decoded the frames after it (B-frame reordering); flushing after the one packet returns it at
  once. Measured on 1080p camera-style H.264: about 30 ms a frame, against about 80 ms for
  decord's seek-and-decode of the same keyframe.
- `read_pyav`: frames between keyframes, and everything decord cannot open, index or decode: one
  seek per keyframe group, decoding forward only as far as the last wanted frame's packet, and
  not decoding the frames no other frame refers to (non-reference B-frames) unless they are
  wanted (H.264, HEVC). Exact: a wanted frame is always decoded, and every frame it refers to is
  a reference frame, never skipped (tests/test_readers.py compares its pixels with a full decode).
- `read_decord`: decord, the reader of earlier versions for frames between keyframes; kept
  measured (`captioner bench`, `reader_cpu_s_per_clip`) against `read_pyav`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from captioner.frames.choose import decode_size, last_keyframe
from captioner.frames.errors import OUT_OF_MEMORY, FrameError, explain
from captioner.frames.probe import VideoInfo, openable


@dataclass(frozen=True)
class Decoded:
    """Frames from one reader, and the display rotation it found."""

    frames: np.ndarray
    rotation: int
    decoder: str


class _SeekMissed(Exception):
    """A seek did not land on the keyframe asked for (a container without an index)."""


class _Scaled:
    """Decoded pictures, each scaled to the model's size as it arrives: no full-size frame is kept
    (32 8K frames held until the end took 1.6 GB).

    The rotation is the stream's display matrix, the same on every frame: the first one tells.
    """

    def __init__(self, info: VideoInfo, short_side: int | None) -> None:
        self.info, self.short_side = info, short_side
        self.rotation: int | None = None
        self.stored = (0, 0)  # (width, height) of a picture before it is turned upright
        self.rgb: dict[int, np.ndarray] = {}

    def add(self, index: int, picture) -> None:
        """Keep frame `index` (a PyAV frame) as RGB at the model's size."""
        if self.rotation is None:
            self.rotation = _rotation(picture) if self.info.may_rotate else 0
            width, height = decode_size(*self.info.display_size(self.rotation), self.short_side)
            self.stored = (height, width) if self.rotation in (90, 270) else (width, height)
        self.rgb[index] = _rgb(picture, *self.stored)

    def __contains__(self, index: int) -> bool:
        return index in self.rgb

    def finish(self, indices: list[int], decoder: str) -> Decoded:
        """The frames `indices` (repeats allowed) upright, stacked."""
        rotation = self.rotation or 0
        return Decoded(_upright(np.stack([self.rgb[i] for i in indices]), rotation), rotation, decoder)


def read_keyframes(path: Path, info: VideoInfo, indices: list[int], short_side: int | None) -> Decoded:
    """Keyframes `indices`, each decoded from its own packet alone (see the module docstring)."""
    pictures = _Scaled(info, short_side)
    with _open_video(path) as (container, stream):
        for i in sorted(set(indices)):
            pictures.add(i, _decode_keyframe(container, stream, int(info.pts[i])))
    return pictures.finish(indices, "pyav-keyframes")


def read_decord(
    path: Path, info: VideoInfo, indices: list[int], short_side: int | None, rotation: int | None = None
) -> Decoded:
    """Frames `indices` through decord, scaled in its decoder (no full-size copy).

    decord's FFmpeg turns a rotated picture upright itself and then scales to exactly the size it
    is given, so it gets the display size: that also corrects non-square pixels. Which way the
    picture is turned is `rotation`, if known, else read with PyAV from the first keyframe.
    """
    import decord

    if rotation is None:
        rotation = 0
        with _open_video(path) as (container, stream):
            first_key = int(np.flatnonzero(info.keyframe)[0]) if info.keyframe.any() else 0
            rotation = _rotation(_decode_keyframe(container, stream, int(info.pts[first_key])))
    width, height = decode_size(*info.display_size(rotation), short_side)
    with openable(path) as name:
        reader = decord.VideoReader(name, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
        # decord numbers the frames it indexed by timestamp; find each wanted frame by its time
        # from the first frame (decord moves a start offset to 0, FFmpeg keeps it).
        starts = _decord_times(reader)
        starts = starts - starts[0] if len(starts) else starts
        wanted = info.times[indices]
        positions = np.clip(np.searchsorted(starts, wanted - 1e-4), 0, max(len(starts) - 1, 0))
        if len(starts) == 0 or np.abs(starts[positions] - wanted).max() > 2e-3:
            raise FrameError(path, "decord indexes this stream differently from FFmpeg")
        frames = reader.get_batch([int(p) for p in positions]).asnumpy()
    return Decoded(frames, rotation, "decord")


def _decord_times(reader) -> np.ndarray:
    """Start times (s) of every frame decord indexed, in its own order."""
    from decord.video_reader import _CAPI_VideoReaderGetFramePTS

    return _CAPI_VideoReaderGetFramePTS(reader._handle).asnumpy()[:, 0]


def read_pyav(path: Path, info: VideoInfo, indices: list[int], short_side: int | None) -> Decoded:
    """Frames `indices` through PyAV: one seek per keyframe group, keyframe-only where that suffices,
    non-reference frames nobody asked for left undecoded (see the module docstring)."""
    wanted = sorted(set(indices))
    key_of = last_keyframe(info.keyframe)
    groups: dict[int, list[int]] = {}
    for index in wanted:
        groups.setdefault(int(key_of[index]), []).append(index)
    pictures = _Scaled(info, short_side)
    try:
        with _open_video(path) as (container, stream):
            for key, members in groups.items():
                if members == [key] and info.keyframe[key]:
                    pictures.add(key, _decode_keyframe(container, stream, int(info.pts[key])))
                else:
                    container.seek(int(info.pts[key]), stream=stream, backward=True, any_frame=False)
                    _decode_forward(container, stream, info, members, pictures, start=int(info.pts[key]))
    except (_SeekMissed, FrameError) as exc:
        if isinstance(exc, FrameError) and exc.reason == OUT_OF_MEMORY:
            raise
        # A container without a usable index (MPEG-TS/PS seek by byte guesses): read it through.
    if any(i not in pictures for i in wanted):
        with _open_video(path) as (container, stream):
            _decode_forward(container, stream, info, [i for i in wanted if i not in pictures], pictures)
    missing = [i for i in wanted if i not in pictures]
    if missing:
        raise FrameError(path, f"file ends early: decoding stopped before frame {missing[0] + 1} of {info.frames}")
    return pictures.finish(indices, "pyav")


@contextmanager
def _open_video(path: Path) -> Iterator[tuple[object, object]]:
    import av

    with openable(path) as name, av.open(name) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one process per decoder already; threads would oversubscribe
        try:
            yield container, stream
        except (av.error.FFmpegError, EOFError) as exc:
            raise FrameError(path, explain(str(exc))) from None


def _decode_keyframe(container, stream, pts: int):
    """The keyframe presented at `pts`, decoded from its packet alone."""
    ctx = stream.codec_context
    container.seek(pts, stream=stream, backward=True, any_frame=False)
    for packet in container.demux(stream):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None or stamp < pts:
            continue  # the seek landed a little early
        if stamp > pts or not packet.is_keyframe:
            raise _SeekMissed
        frames = ctx.decode(packet) + ctx.decode(None)  # the flush hands the frame over at once
        ctx.flush_buffers()
        if not frames:
            raise _SeekMissed
        return frames[0]
    raise _SeekMissed


# FFmpeg decoders that apply `skip_frame` to the packet being sent, so that setting it per packet
# skips exactly the frames of those packets: H.264's and HEVC's (tests/test_readers.py). libdav1d
# applies it to the pictures it hands out, which come a few packets later: a wanted frame would be
# dropped (AV1 clips failed so).
SKIPPING_DECODERS = ("h264", "hevc")


def _decode_forward(container, stream, info: VideoInfo, members: list[int], pictures: _Scaled,
                    start: int | None = None) -> None:
    """Decode on from the current position until every frame in `members` is in `pictures` or passed.

    With a decoder in `SKIPPING_DECODERS`, a packet whose timestamp no member has is decoded only
    if other frames refer to it (`skip_frame` NONREF, set per packet, before the decoder sees
    it): a wanted frame is never skipped, and what it refers to is a reference frame. Once the
    last member's packet is in, the
    decoder is drained instead of fed on: reordering holds back only frames it has decoded already.
    Packets without a timestamp of their own (`pts`) are always decoded: which frame they are is
    not known. After a seek to the keyframe at `start`, decoding starts at the first keyframe; one
    later than `start` means the seek overshot (`_SeekMissed`): the frames shown just before it
    may refer to frames before it (open GOPs), and a decode from there would not be exact.
    """
    ctx = stream.codec_context
    skips = ctx.codec.name in SKIPPING_DECODERS
    by_stamp = {int(info.pts[i]): i for i in members}
    unsent, last = set(by_stamp), max(by_stamp)
    waiting = start is not None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                frames = ctx.decode(None)  # the end of the file: what the decoder holds
            else:
                if waiting:  # a seek by byte guesses (MPEG-TS) may land inside a group of pictures
                    if not packet.is_keyframe or packet.pts is None:
                        continue
                    if packet.pts > start:
                        raise _SeekMissed
                    waiting = False
                known = packet.pts is not None
                if skips:
                    ctx.skip_frame = "NONREF" if known and packet.pts not in by_stamp else "DEFAULT"
                frames = ctx.decode(packet)
                unsent.discard(packet.pts if known else packet.dts)
                if not unsent:
                    frames += ctx.decode(None)
            passed = False
            for frame in frames:
                stamp = frame.pts if frame.pts is not None else frame.dts
                if stamp in by_stamp and by_stamp[stamp] not in pictures:
                    pictures.add(by_stamp[stamp], frame)
                # Frames come out in presentation order: one past the last member means the
                # members not found are not in this stretch (the seek landed too late).
                passed = passed or (stamp is not None and stamp > last)
            if not unsent or passed or packet.size == 0:
                break
    finally:
        ctx.skip_frame = "DEFAULT"
        ctx.flush_buffers()


def _rotation(frame) -> int:
    """Clockwise degrees a player turns this picture (ffprobe's `rotate`; an upright iPhone clip: 90).

    FFmpeg (and PyAV's `VideoFrame.rotation`) state the display matrix counter-clockwise.
    """
    return int(round(-(frame.rotation or 0) / 90.0)) % 4 * 90


def _rgb(frame, width: int, height: int) -> np.ndarray:
    """The frame as RGB at (width, height); full-range ("JPEG") sources keep their levels."""
    return frame.reformat(
        width=width, height=height, format="rgb24", src_color_range=frame.color_range, interpolation="AREA"
    ).to_ndarray()


def _upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Turn stored pictures upright: `rotation` degrees clockwise, as a player does."""
    if rotation % 360 == 0:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90), axes=(1, 2)))
