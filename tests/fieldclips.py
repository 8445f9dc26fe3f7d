"""A folder of real-world video variants, written with PyAV, whose every frame says which it is.

Decoders disagree on the files people really have: phone clips with a rotation matrix, HEVC,
AV1 and 10-bit streams, recorder WebMs without a duration, anamorphic DVD and HDV footage,
trimmed MP4s with edit lists, odd extensions and file names, and broken or non-video files.
`write_field_folder(folder)` writes one small clip of each kind (56 files, most 160x90, 1-3 s
at 10-15 fps; about 3 s to write in all on 2 cores) and returns a manifest of `FieldClip`s that
says what a correct decoder must return for each: its display size, rotation, sample aspect
ratio, and the exact timeline of frames a player presents. The manifest is computed from how each clip was
made, never by reading it back; tests/test_fieldclips.py checks it against PyAV's decoding.

Frame label (robust to lossy codecs, chroma subsampling, range/matrix mix-ups and scaling the
shorter side down to 64 px), drawn in DISPLAY orientation by `draw_frame(index, w, h)`:

    +----+----+----+----+----+----+----+----+   top half: 8 equal-width columns, column k is
    | b7 | b6 | b5 | b4 | b3 | b2 | b1 | b0 |   white (235) if bit 7-k of the frame index is set,
    |    |    |    |    |    |    |    |    |   else black (16): the index, MSB on the left
    +-----------+------------+-----------+---+
    |   red     |  gray 180  |    blue       |   bottom half: left third red (220,30,30), middle
    | 220,30,30 | (flat)     |  30,30,220    |   third flat gray 180, right third blue (30,30,220)
    +-----------+------------+---------------+

* `read_label(frame)` reads the 8 bits back from the mean of a box in the middle of each column
  (its central half in width, rows 10-40 % of the height), threshold 128. At 64 px on the short
  side a portrait frame has 8 px columns, so the box is 4 px wide and still clear of the edges
  where codecs ring and scalers blur.
* `check_upright(frame)` is None when the bottom-left is red, the bottom-right blue and the
  middle gray within +-12 of 180 (a mirrored, upside-down or sideways frame fails it); else a
  reason. A full/limited range mix-up moves the gray by only about 9-11 levels (180 -> 191 when
  full-range data is read as limited, 180 -> 171 the other way), inside that tolerance, so
  `check_range(frame)` checks the gray to +-5 for tests that want to catch range errors
  (PyAV's own decode passes it on every clip here, full-range and 10-bit ones included).
* The layout is proportional, so drawing at the coded size of a non-square-pixel clip is the
  same as drawing at the display size and squeezing it: aspect is checked by the output shape
  (`FieldClip.display_size`), orientation by `check_upright`, and frame identity by the label.
* Labels are the frame's index in encoding (presentation) order, 0..255 per clip: a clip with
  hidden lead-in frames presents labels 10, 11, ... and a decoder that returns label 0 first
  has shown a frame the edit list hides.

Manifest conventions (`FieldClip`):
* `rotation` is the clockwise angle a player turns the coded picture by (what ffmpeg's
  autorotate applies and what older ffprobe printed as the `rotate` tag). An iPhone clip shot
  upright is coded landscape with rotation 90. FFmpeg's `av_display_rotation_get` and PyAV's
  `VideoFrame.rotation` report the counter-clockwise angle: `rotation == (-frame.rotation) % 360`,
  and the upright picture is `np.rot90(coded, k=frame.rotation // 90)`.
* `display_size` is (W, H) as displayed: coded width times the SAR, then swapped for 90/270.
* `presented` lists (seconds after the first presented frame, label) for every frame a player
  presents, in order. Times are exact rationals of the clip's clock, rounded to float; the
  container may round them (Matroska/WebM/FLV/ASF store milliseconds), so compare to ~1 ms.
* `start_s` is the first presented timestamp only where the clip sets it on purpose (3600 s
  offsets, 0 for MP4 edit lists); None where the muxer chooses (MPEG-TS/PS add their own delay).
* `keyframes` is the number of packets flagged as keyframes a packet scan finds, where the
  encoder was told exactly where to put them (scenecut off, or intra-only codecs).
* `expect`: "ok" for clips a captioner must caption; "failed" for files it must report, with
  `reason` a regex a person-readable message matches; "ignored" for files it must skip
  (AppleDouble `._*` files and hidden `.*` files, even though the hidden one is a real video).

Layout of the folder: codecs/, pixfmt/, geometry/, timing/, extensions/, names/ (Korean NFC,
NFD and CP949 names, brackets, quotes, and the AppleDouble `._서울 야경.mp4` beside its
`서울 야경.mp4`) and bad/ (hidden, truncated, empty, audio-only). `SPECS` lists every video
variant with a note on what it is; `KINDS` every kind, for parametrising tests.

How the special cases are made (all verified by tests/test_fieldclips.py with PyAV):
* Rotation: libx264 writes the coded landscape picture (the upright portrait drawing turned
  the other way), then `patch_mp4_rotation` rewrites the video track's `tkhd` matrix in place
  with the matrix an iPhone writes (including its translation); FFmpeg reads it back as a
  display matrix (PyAV `VideoFrame.rotation`). This works with any PyAV version; newer PyAV's
  `VideoStream.set_display_rotation` writes the same rotation part (without the translation).
* Edit list: the encoded packets are shifted 10 frames into negative time before muxing, as
  `ffmpeg -ss 1 -c copy` leaves a cut that starts between keyframes; FFmpeg's MP4 muxer then
  writes an `elst` whose media time skips them. The `stsz` frame count (stream.frames) still
  counts all 30; the MP4 demuxer flags the first 10 packets discard and the decoder drops them.
* Recorder WebM: VP8 + Opus with jittered millisecond timestamps (a live capture clock),
  written to a non-seekable file object with the Matroska `live=1` option, as a browser's
  MediaRecorder streams it: no Duration, no Cues, unknown-size Segment (FFmpeg still writes a
  SeekHead pointing at Info and Tracks). PyAV then reports container.duration None and
  stream.frames 0.
* Full range: rgb is converted to yuv420p with a JPEG (full) range matrix and the encoder's
  color_range is set, so x264 writes video_full_range_flag=1 in the SPS VUI.
* AV1 uses libsvtav1 (the only AV1 encoder this PyAV build has; libaom-av1 and librav1e are
  absent). PyAV decodes it with libdav1d.

Not made: nothing in the brief is left out with PyAV 18.1 (FFmpeg 8); variants need only the
encoders libx264, libx265, libvpx (VP8), libvpx-vp9, libsvtav1, mpeg4, mjpeg, prores_ks,
mpeg2video, h263, flv, wmv2 and the audio encoders aac, libopus, ac3, mp2, libopencore_amrnb.
`missing_encoders()` lists any that another PyAV build lacks; `write_field_folder` then leaves
those kinds out of the folder and the manifest, so the self-test asserts the list is empty.
"""

from __future__ import annotations

import io
import os
import struct
import unicodedata
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

Expect = Literal["ok", "failed", "ignored"]

WHITE = 235
BLACK = 16
RED = (220, 30, 30)
GRAY = 180
BLUE = (30, 30, 220)
LABEL_BITS = 8
MAX_LABEL = (1 << LABEL_BITS) - 1
GRAY_TOLERANCE = 12  # check_upright
RANGE_TOLERANCE = 5  # check_range: a full/limited range mix-up moves the gray by 9-11


# --------------------------------------------------------------------------- the frame label


def draw_frame(index: int, width: int, height: int) -> np.ndarray:
    """The labelled picture of frame `index` (0..255) at (width, height), as displayed: (H, W, 3) uint8 RGB."""
    if not 0 <= index <= MAX_LABEL:
        raise ValueError(f"label {index} is outside 0..{MAX_LABEL}")
    img = np.empty((height, width, 3), dtype=np.uint8)
    half = height // 2
    for k in range(LABEL_BITS):
        x0, x1 = k * width // LABEL_BITS, (k + 1) * width // LABEL_BITS
        img[:half, x0:x1] = WHITE if index >> (LABEL_BITS - 1 - k) & 1 else BLACK
    a, b = width // 3, 2 * width // 3
    img[half:, :a] = RED
    img[half:, a:b] = GRAY
    img[half:, b:] = BLUE
    return img


def _box(frame: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Mean RGB of the box given in fractions of the frame's width and height."""
    h, w = frame.shape[:2]
    xa, xb = int(x0 * w), max(int(x0 * w) + 1, int(round(x1 * w)))
    ya, yb = int(y0 * h), max(int(y0 * h) + 1, int(round(y1 * h)))
    return frame[ya:yb, xa:xb, :3].reshape(-1, 3).astype(np.float64).mean(axis=0)


def read_label(frame: np.ndarray) -> int:
    """The index `draw_frame` drew on `frame` ((H, W, 3) RGB, upright, any size with short side >= ~32)."""
    value = 0
    for k in range(LABEL_BITS):
        col = k / LABEL_BITS
        mean = _box(frame, col + 0.25 / LABEL_BITS, col + 0.75 / LABEL_BITS, 0.10, 0.40).mean()
        value = value << 1 | int(mean >= 128)
    return value


def _bottom(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    left = _box(frame, 0.05, 0.28, 0.60, 0.92)
    middle = _box(frame, 0.40, 0.60, 0.60, 0.92)
    right = _box(frame, 0.72, 0.95, 0.60, 0.92)
    return left, middle, right


def gray_level(frame: np.ndarray) -> tuple[float, float, float]:
    """Mean RGB of the gray patch (180 when decoded right)."""
    return tuple(float(v) for v in _bottom(frame)[1])  # type: ignore[return-value]


def check_upright(frame: np.ndarray) -> str | None:
    """None if `frame` shows the label upright and unmirrored; else why not."""
    if frame.ndim != 3 or frame.shape[2] < 3 or min(frame.shape[:2]) < 8:
        return f"not an RGB picture: shape {frame.shape}"
    left, middle, right = _bottom(frame)

    def rgb(v: np.ndarray) -> str:
        return "(" + ",".join(f"{x:.0f}" for x in v) + ")"

    problems = []
    if not (left[0] > 150 and left[1] < 100 and left[2] < 100):
        problems.append(f"bottom-left is {rgb(left)}, not red")
    if not (right[2] > 150 and right[0] < 100 and right[1] < 100):
        problems.append(f"bottom-right is {rgb(right)}, not blue")
    if np.abs(middle - GRAY).max() > GRAY_TOLERANCE:
        problems.append(f"gray patch is {rgb(middle)}, not {GRAY}+-{GRAY_TOLERANCE}")
    return "; ".join(problems) or None


def check_range(frame: np.ndarray, tolerance: float = RANGE_TOLERANCE) -> str | None:
    """None if the gray patch is within `tolerance` of 180 (catches full/limited range mix-ups)."""
    g = np.array(gray_level(frame))
    if np.abs(g - GRAY).max() > tolerance:
        return f"gray patch is ({g[0]:.1f},{g[1]:.1f},{g[2]:.1f}), not {GRAY}+-{tolerance:g}: range mix-up?"
    return None


def upright(coded: np.ndarray, rotation: int) -> np.ndarray:
    """The displayed picture of a coded picture whose manifest `rotation` (clockwise) is given."""
    return np.ascontiguousarray(np.rot90(coded, k=-(rotation // 90)))


# --------------------------------------------------------------------------- the manifest


@dataclass
class FieldClip:
    """One file of the field folder and what a correct decoder makes of it."""

    path: Path  # may hold surrogate escapes (the CP949 name): PyAV opens str(path); or use .fspath
    kind: str
    expect: Expect
    reason: str | None = None  # regex of the person-readable reason, for expect == "failed"
    display_size: tuple[int, int] | None = None  # (W, H) as displayed: SAR and rotation applied
    rotation: int = 0  # clockwise degrees the player turns the coded picture (0/90/180/270)
    sar: tuple[int, int] = (1, 1)
    presented: list[tuple[float, int]] = field(default_factory=list)  # (s after first presented, label)
    keyframe_interval: int | None = None  # frames, where the encoder was told
    codec: str = ""  # FFmpeg decoder name PyAV reports (codec_context.name)
    notes: str = ""
    container: str = ""  # FFmpeg muxer that wrote it
    encoder: str = ""
    coded_size: tuple[int, int] | None = None  # (W, H) of the coded picture
    pix_fmt: str | None = None
    fps: Fraction | None = None  # nominal rate (VFR: the clock the gaps are counted in)
    encoded_frames: int = 0  # frames in the stream, hidden lead-in included
    hidden_leadin: int = 0  # frames decoded but not presented (edit list)
    keyframes: int | None = None  # packets a demux scan flags as keyframes, where determined
    start_s: float | None = None  # timestamp of the first presented frame, where set on purpose
    color_range: Literal["tv", "pc"] | None = None  # signalled range, where set on purpose
    audio: str | None = None  # audio track, if any

    @property
    def fspath(self) -> bytes:
        """The path as the file system's bytes (the only exact form for a CP949 name)."""
        return os.fsencode(self.path)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Audio:
    codec: str
    seconds: float
    rate: int = 48000
    layout: str = "mono"


@dataclass(frozen=True)
class _Spec:
    """How one video clip is made; the manifest entry follows from it."""

    kind: str
    name: str | bytes  # relative path; bytes for a name that is not UTF-8
    codec: str = "libx264"
    size: tuple[int, int] = (160, 90)  # coded (W, H)
    fps: int = 10
    frames: int = 20
    pix_fmt: str = "yuv420p"
    options: tuple[tuple[str, str], ...] = (("preset", "veryfast"), ("crf", "23"))
    fmt: str | None = None  # muxer; None: from the extension
    fmt_options: tuple[tuple[str, str], ...] = ()
    sar: tuple[int, int] = (1, 1)
    rotation: int = 0  # clockwise, written into the tkhd matrix
    pts: tuple[int, ...] | None = None  # per frame, in `time_base`; default i
    time_base: Fraction | None = None  # default 1/fps
    codec_tag: str | None = None
    full_range: bool = False
    leadin: int = 0  # frames shifted before the edit list start
    pts_offset: int = 0  # added to every pts (start offsets)
    audio: _Audio | None = None
    nonseekable: bool = False
    keyframe_interval: int | None = None
    keyframes: int | None = None
    start_s: float | None = None
    expect: Expect = "ok"
    reason: str | None = None
    decoder: str = "h264"
    notes: str = ""


def _opts(**kw: object) -> tuple[tuple[str, str], ...]:
    return tuple((k.replace("__", "-"), str(v)) for k, v in kw.items())


X264 = _opts(preset="veryfast", crf=23)
X265 = _opts(preset="ultrafast", crf=28, x265__params="log-level=error")


def _x264(params: str, preset: str = "veryfast") -> tuple[tuple[str, str], ...]:
    return _opts(preset=preset, crf=23, x264__params=params)


class _Unseekable(io.RawIOBase):
    """A write-only file object that cannot seek, like a pipe or a socket."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        self._raw = raw

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:  # type: ignore[override]
        return self._raw.write(data)


def _draw_size(spec: _Spec) -> tuple[int, int]:
    w, h = spec.size
    return (h, w) if spec.rotation in (90, 270) else (w, h)


def _coded_picture(spec: _Spec, index: int) -> np.ndarray:
    dw, dh = _draw_size(spec)
    picture = draw_frame(index, dw, dh)
    # The player turns the coded picture clockwise by `rotation`: store it turned the other way.
    return np.ascontiguousarray(np.rot90(picture, k=spec.rotation // 90)) if spec.rotation else picture


def _frame_pts(spec: _Spec) -> list[int]:
    pts = list(spec.pts) if spec.pts is not None else list(range(spec.frames))
    return [p + spec.pts_offset for p in pts]


def _time_base(spec: _Spec) -> Fraction:
    return spec.time_base or Fraction(1, spec.fps)


def _encode(target: object, spec: _Spec) -> None:
    """Write the clip of `spec` to `target` (a path string or a binary file object)."""
    import av
    from av.video.reformatter import ColorRange

    with av.open(target, mode="w", format=spec.fmt, options=dict(spec.fmt_options)) as container:
        stream = container.add_stream(spec.codec, rate=spec.fps)
        stream.width, stream.height = spec.size
        stream.pix_fmt = spec.pix_fmt
        stream.codec_context.time_base = _time_base(spec)
        if spec.sar != (1, 1):
            stream.codec_context.sample_aspect_ratio = Fraction(*spec.sar)
        if spec.codec_tag:
            stream.codec_context.codec_tag = spec.codec_tag
        if spec.full_range:
            stream.codec_context.color_range = ColorRange.JPEG
        stream.options = dict(spec.options)
        audio_stream = None
        if spec.audio:
            audio_stream = container.add_stream(spec.audio.codec, rate=spec.audio.rate)
            audio_stream.layout = spec.audio.layout
        packets = []
        for index, pts in enumerate(_frame_pts(spec)):
            frame = av.VideoFrame.from_ndarray(_coded_picture(spec, index), format="rgb24")
            if spec.full_range:
                frame = frame.reformat(format=spec.pix_fmt, dst_color_range=ColorRange.JPEG)
                frame.color_range = ColorRange.JPEG
            frame.pts, frame.time_base = pts, _time_base(spec)
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            if spec.leadin:  # shift the first `leadin` frames before 0: the muxer writes an edit list
                shift = spec.leadin * (spec.pts[1] - spec.pts[0] if spec.pts else 1)
                packet.pts -= shift
                packet.dts -= shift
            container.mux(packet)
        if audio_stream is not None:
            _encode_audio(container, audio_stream, spec.audio)


def _encode_audio(container, stream, audio: _Audio) -> None:
    import av

    rate, chunk = audio.rate, 1024
    total = int(round(audio.seconds * rate))
    channels = 2 if audio.layout == "stereo" else 1
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.tile(tone, (channels, 1)), format="fltp", layout=audio.layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


# --------------------------------------------------------------------------- MP4 box surgery


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, offset, header size, box size) of the ISO-BMFF boxes in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind.decode("latin-1"), pos, header, size
        pos += size


def mp4_top_boxes(path: Path | str | bytes) -> list[str]:
    """Top-level box types of an MP4/MOV, in file order (e.g. ['ftyp', 'moov', 'mdat'])."""
    with open(os.fsencode(path), "rb") as fh:
        data = fh.read()
    return [kind for kind, *_ in _boxes(data)]


def _child(data: bytes, parent: tuple[str, int, int, int], kind: str) -> tuple[str, int, int, int] | None:
    _, pos, header, size = parent
    return next((box for box in _boxes(data, pos + header, pos + size) if box[0] == kind), None)


def _video_tkhd(data: bytes) -> int:
    """Offset of the payload (after the box header) of the video track's tkhd box."""
    moov = next((box for box in _boxes(data) if box[0] == "moov"), None)
    if moov is None:
        raise ValueError("no moov box")
    for trak in _boxes(data, moov[1] + moov[2], moov[1] + moov[3]):
        if trak[0] != "trak":
            continue
        tkhd, mdia = _child(data, trak, "tkhd"), _child(data, trak, "mdia")
        hdlr = _child(data, mdia, "hdlr") if mdia else None
        if tkhd and hdlr and data[hdlr[1] + hdlr[2] + 8 : hdlr[1] + hdlr[2] + 12] == b"vide":
            return tkhd[1] + tkhd[2]
    raise ValueError("no video track header (tkhd) found")


def _matrix_offset(data: bytes, tkhd: int) -> int:
    version = data[tkhd]
    # version/flags, times, track id, reserved, duration, reserved[2], layer, group, volume, reserved
    return tkhd + 4 + (32 if version == 1 else 20) + 8 + 8


def tkhd_matrix(path: Path | str | bytes) -> list[float]:
    """The video track's tkhd matrix [a, b, u, c, d, v, x, y, w] as numbers (16.16 / 2.30 fixed point)."""
    with open(os.fsencode(path), "rb") as fh:
        data = fh.read()
    off = _matrix_offset(data, _video_tkhd(data))
    raw = struct.unpack(">9i", data[off : off + 36])
    return [v / (1 << 30) if i in (2, 5, 8) else v / 65536 for i, v in enumerate(raw)]


def patch_mp4_rotation(path: Path, rotation: int) -> None:
    """Rewrite the video tkhd matrix so players turn the picture `rotation` degrees clockwise.

    The matrices are the ones phones write (iPhone: a clip shot upright is 90, with the
    translation that keeps the turned picture in the positive quadrant).
    """
    data = bytearray(path.read_bytes())
    tkhd = _video_tkhd(bytes(data))
    off = _matrix_offset(bytes(data), tkhd)
    w_off = off + 36
    width, height = (v >> 16 for v in struct.unpack(">II", data[w_off : w_off + 8]))
    one = 1 << 16
    a, b, c, d, x, y = {
        0: (one, 0, 0, one, 0, 0),
        90: (0, one, -one, 0, height * one, 0),
        180: (-one, 0, 0, -one, width * one, height * one),
        270: (0, -one, one, 0, 0, width * one),
    }[rotation]
    data[off : off + 36] = struct.pack(">9i", a, b, 0, c, d, 0, x, y, 1 << 30)
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- Matroska check


def _ebml_vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        raise ValueError(f"bad EBML vint at {pos}")
    value = first if keep_marker else first & ((0x80 >> (length - 1)) - 1)
    for i in range(1, length):
        value = value << 8 | data[pos + i]
    return value, length


MKV_SEGMENT, MKV_SEEKHEAD, MKV_INFO, MKV_CUES, MKV_CLUSTER, MKV_DURATION = (
    0x18538067,
    0x114D9B74,
    0x1549A966,
    0x1C53BB6B,
    0x1F43B675,
    0x4489,
)


def matroska_index(path: Path | str | bytes) -> dict[str, bool]:
    """Which index elements a Matroska/WebM file has: duration, cues, seekhead, and whether the
    Segment's size is unknown (a live stream). Walks the Segment's children up to the first
    Cluster, then looks for a Cues element id anywhere after it."""
    with open(os.fsencode(path), "rb") as fh:
        data = fh.read()
    pos = 0
    ident, n = _ebml_vint(data, pos, True)
    size, m = _ebml_vint(data, pos + n, False)
    pos += n + m + size  # skip the EBML header
    ident, n = _ebml_vint(data, pos, True)
    if ident != MKV_SEGMENT:
        raise ValueError("no Matroska Segment")
    size, m = _ebml_vint(data, pos + n, False)
    unknown = size == (1 << (7 * m)) - 1
    pos += n + m
    found = {"duration": False, "cues": False, "seekhead": False, "unknown_size_segment": unknown}
    while pos < len(data):
        ident, n = _ebml_vint(data, pos, True)
        size, m = _ebml_vint(data, pos + n, False)
        body = pos + n + m
        if ident == MKV_CLUSTER:
            found["cues"] = found["cues"] or struct.pack(">I", MKV_CUES) in data[pos:]
            break
        if ident == MKV_SEEKHEAD:
            found["seekhead"] = True
        elif ident == MKV_CUES:
            found["cues"] = True
        elif ident == MKV_INFO:
            child = body
            while child < body + size:
                cid, cn = _ebml_vint(data, child, True)
                csize, cm = _ebml_vint(data, child + cn, False)
                found["duration"] = found["duration"] or cid == MKV_DURATION
                child += cn + cm + csize
        pos = body + size
    return found


# --------------------------------------------------------------------------- the variants

NFC_NAME = unicodedata.normalize("NFC", "서울 야경.mp4")
NFD_NAME = unicodedata.normalize("NFD", "제주 해변.mp4")
CP949_NAME = unicodedata.normalize("NFC", "부산 바다.mp4").encode("cp949")


def _gaps_vfr() -> tuple[int, ...]:
    """Frame times in 1/30 s with gaps of 1/30 and 1/10 s mixed, like a phone in low light."""
    gaps = [1, 1, 3, 1, 3, 3, 1, 1, 1, 3, 3, 1, 3, 1, 1, 3, 1, 3, 1]
    pts = [0]
    for gap in gaps:
        pts.append(pts[-1] + gap)
    return tuple(pts)


def _recorder_pts(frames: int = 30) -> tuple[int, ...]:
    """Millisecond capture times of a 15 fps recorder with a few ms of jitter."""
    jitter = [0, 3, -2, 1, 4, -3, 0, 2, -1, 5, -4, 1, 0, 3, -2]
    return tuple(round(i * 1000 / 15) + jitter[i % len(jitter)] for i in range(frames))


def _specs() -> list[_Spec]:
    aac = _Audio("aac", 2.0)
    s: list[_Spec] = [
        # ---- codecs
        _Spec(
            "h264_mp4",
            "codecs/h264_baseline.mp4",
            options=_opts(preset="veryfast", crf=23, profile="baseline"),
            notes="reference: H.264 Constrained Baseline, no B-frames, 160x90 10 fps 2 s",
        ),
        _Spec(
            "hevc_mp4",
            "codecs/hevc.mp4",
            codec="libx265",
            options=X265,
            codec_tag="hvc1",
            decoder="hevc",
            notes="x265 Main, tagged hvc1 as iPhones write it",
        ),
        _Spec("hevc_mkv", "codecs/hevc.mkv", codec="libx265", options=X265, decoder="hevc", notes="x265 Main"),
        _Spec(
            "vp9_webm",
            "codecs/vp9.webm",
            codec="libvpx-vp9",
            options=_opts(deadline="realtime", **{"cpu-used": 8}, crf=35, b=0),
            decoder="vp9",
            notes="libvpx-vp9, seekable WebM with Duration and Cues",
        ),
        _Spec(
            "recorder_webm",
            "codecs/recorder (MediaRecorder).webm",
            codec="libvpx",
            fps=15,
            frames=30,
            pts=_recorder_pts(30),
            time_base=Fraction(1, 1000),
            options=_opts(deadline="realtime", **{"cpu-used": 8}, crf=10, b="500k"),
            fmt="webm",
            fmt_options=_opts(live=1),
            audio=_Audio("libopus", 2.0),
            nonseekable=True,
            decoder="vp8",
            notes="VP8 + Opus, jittered ms timestamps, streamed to a non-seekable file with live=1: "
            "no Duration, no Cues, unknown-size Segment (Chrome MediaRecorder / OBS style)",
        ),
        _Spec(
            "av1_mp4",
            "codecs/av1.mp4",
            codec="libsvtav1",
            options=_opts(preset=10, crf=40),
            decoder="libdav1d",
            notes="AV1 from libsvtav1 (libaom-av1/librav1e absent in this PyAV)",
        ),
        _Spec(
            "av1_mkv",
            "codecs/av1.mkv",
            codec="libsvtav1",
            options=_opts(preset=10, crf=40),
            decoder="libdav1d",
            notes="AV1 from libsvtav1",
        ),
        _Spec(
            "mpeg4_avi",
            "codecs/xvid.avi",
            codec="mpeg4",
            codec_tag="XVID",
            options=_opts(qscale=4, bf=1),
            decoder="mpeg4",
            notes="MPEG-4 Part 2 ASP with B-frames, FourCC XVID, in AVI (no timestamps, frame-counted)",
        ),
        _Spec(
            "mpeg4_m4v",
            "codecs/mpeg4_es.m4v",
            codec="mpeg4",
            options=_opts(qscale=4),
            fmt="m4v",
            decoder="mpeg4",
            notes="raw MPEG-4 Part 2 elementary stream (FFmpeg's .m4v muxer): no container, no timestamps",
        ),
        _Spec(
            "mjpeg_avi",
            "codecs/mjpeg.avi",
            codec="mjpeg",
            pix_fmt="yuvj422p",
            options=_opts(qscale=3),
            keyframes=20,
            decoder="mjpeg",
            notes="Motion JPEG 4:2:2 full range in AVI, as old cameras write; every frame a keyframe",
        ),
        _Spec(
            "prores_mov",
            "codecs/prores.mov",
            codec="prores_ks",
            pix_fmt="yuv422p10le",
            options=_opts(profile=2),
            keyframes=20,
            decoder="prores",
            notes="ProRes 422 (prores_ks, apcn) 10-bit 4:2:2 in QuickTime; intra-only",
        ),
        _Spec(
            "mpeg2_mpg",
            "codecs/mpeg2.mpg",
            codec="mpeg2video",
            fps=25,
            frames=25,
            fmt="vob",
            options=_opts(qscale=4, bf=2, g=12),
            decoder="mpeg2video",
            notes="MPEG-2 video in an MPEG-2 program stream (FFmpeg 'vob' muxer), 25 fps (MPEG-2 rates only)",
        ),
        _Spec(
            "mpeg2_mpeg",
            "codecs/mpeg2.mpeg",
            codec="mpeg2video",
            fps=25,
            frames=25,
            fmt="vob",
            options=_opts(qscale=4, bf=2, g=12),
            audio=_Audio("mp2", 1.0),
            decoder="mpeg2video",
            notes="MPEG-2 video + MP2 audio in an MPEG-2 program stream, .mpeg extension",
        ),
        _Spec(
            "dvd_vob",
            "geometry/VTS_01_1.VOB",
            codec="mpeg2video",
            size=(720, 576),
            fps=25,
            frames=25,
            sar=(64, 45),
            fmt="dvd",
            options=_opts(qscale=4, bf=2, g=12),
            audio=_Audio("ac3", 1.0, layout="stereo"),
            decoder="mpeg2video",
            notes="DVD-style PAL 720x576 anamorphic 16:9 (SAR 64:45 from the sequence header's DAR code), "
            "open GOPs of 12 with 2 B-frames, AC-3 audio, FFmpeg 'dvd' muxer, 1 s; displays 1024x576",
        ),
        # ---- pixel formats
        _Spec(
            "h264_high10_mp4",
            "pixfmt/h264_high10.mp4",
            pix_fmt="yuv420p10le",
            notes="x264 High 10 (yuv420p10le)",
        ),
        _Spec(
            "hevc_main10_mp4",
            "pixfmt/hevc_main10.mp4",
            codec="libx265",
            pix_fmt="yuv420p10le",
            options=X265,
            codec_tag="hvc1",
            decoder="hevc",
            notes="x265 Main 10 (yuv420p10le), as phones record HDR/10-bit",
        ),
        _Spec("h264_444_mp4", "pixfmt/h264_444.mp4", pix_fmt="yuv444p", notes="x264 High 4:4:4 Predictive (yuv444p)"),
        _Spec(
            "h264_fullrange_mp4",
            "pixfmt/h264_fullrange.mp4",
            full_range=True,
            notes="yuv420p with full (pc/JPEG) range samples and video_full_range_flag=1 in the SPS",
        ),
        # ---- geometry
        *(
            _Spec(
                f"rot{r}_mp4",
                f"geometry/phone_rot{r}.mp4",
                rotation=r,
                fps=15,
                frames=30,
                audio=aac,
                notes=f"coded 160x90 landscape, tkhd matrix turns it {r} deg clockwise"
                + (" (phone held upright): displays 90x160 portrait" if r != 180 else " (phone upside down)"),
            )
            for r in (90, 180, 270)
        ),
        _Spec("portrait_mp4", "geometry/portrait_coded.mp4", size=(90, 160), notes="coded 90x160, no matrix"),
        _Spec(
            "hdv_sar43_mp4",
            "geometry/hdv_anamorphic.mp4",
            size=(240, 180),
            sar=(4, 3),
            notes="HDV-style 1440x1080 SAR 4:3 scaled down: coded 240x180 SAR 4:3, displays 320x180 "
            "(SAR in the H.264 VUI and the MP4 pasp box)",
        ),
        _Spec(
            "uhd_4k_mp4",
            "geometry/uhd_4k.mp4",
            size=(3840, 2160),
            frames=3,
            options=_opts(preset="ultrafast", crf=30),
            notes="3840x2160, 3 frames, x264 ultrafast",
        ),
        # ---- timing
        _Spec(
            "vfr_mp4",
            "timing/vfr.mp4",
            fps=30,
            frames=20,
            pts=_gaps_vfr(),
            time_base=Fraction(1, 30),
            notes="variable frame rate: gaps of 1/30 and 1/10 s mixed (stts with varying deltas)",
        ),
        _Spec("one_frame_mp4", "timing/one_frame.mp4", frames=1, keyframes=1, notes="a single frame"),
        _Spec("three_frames_mp4", "timing/three_frames.mp4", frames=3, notes="three frames"),
        _Spec(
            "editlist_mp4",
            "timing/trimmed_editlist.mp4",
            frames=30,
            leadin=10,
            options=_x264("keyint=100:scenecut=0"),
            keyframes=1,
            start_s=0.0,
            notes="30 frames, one keyframe; the first 10 are before the edit list start (elst media_time), "
            "decoded but not presented, as `ffmpeg -ss 1 -c copy` leaves a cut: header says 30 frames, "
            "players present 20 (labels 10..29)",
        ),
        _Spec(
            "bframes_opengop_mp4",
            "timing/bframes_opengop.mp4",
            frames=30,
            options=_x264("bframes=3:b-adapt=0:open-gop=1:keyint=12:min-keyint=12:scenecut=0"),
            keyframe_interval=12,
            keyframes=3,
            notes="x264 B-frames (3) with open GOP, keyint 12: non-IDR recovery I-frames at 12 and 24 "
            "(flagged as sync samples), whose leading B-frames reference the previous GOP",
        ),
        _Spec(
            "faststart_mp4",
            "timing/faststart.mp4",
            frames=20,
            fmt_options=_opts(movflags="+faststart"),
            notes="moov before mdat (web-optimised)",
        ),
        _Spec(
            "fragmented_mp4",
            "timing/fragmented.mp4",
            frames=20,
            options=_x264("keyint=10:min-keyint=10:scenecut=0"),
            fmt_options=_opts(movflags="frag_keyframe+empty_moov+default_base_moof"),
            keyframe_interval=10,
            keyframes=2,
            notes="fragmented MP4: empty moov (no sample tables, no frame count), one moof per keyframe",
        ),
        _Spec(
            "long_audio_mkv",
            "timing/long_audio.mkv",
            frames=20,
            audio=_Audio("aac", 6.0),
            notes="video 2 s, AAC audio 6 s: the container duration is the audio's",
        ),
        _Spec(
            "offset_mkv",
            "timing/start_3600s.mkv",
            frames=20,
            pts_offset=36000,
            start_s=3600.0,
            notes="first video timestamp 3600 s (a cut from a long recording)",
        ),
        _Spec(
            "offset_ts",
            "timing/start_3600s.ts",
            frames=20,
            pts_offset=36000,
            fmt="mpegts",
            options=_x264("bframes=0"),
            start_s=3600.0,
            notes="MPEG-TS whose first video PTS is 3600 s (no B-frames so the muxer keeps it exact)",
        ),
        _Spec(
            "camera_keyint_mp4",
            "timing/camera_keyint.mp4",
            frames=30,
            options=_x264("keyint=5:min-keyint=5:scenecut=0"),
            keyframe_interval=5,
            keyframes=6,
            notes="camera-style GOP: a keyframe every 0.5 s",
        ),
        _Spec(
            "web_keyint_mp4",
            "timing/web_keyint.mp4",
            frames=60,
            size=(160, 90),
            options=_x264("keyint=250:scenecut=0"),
            keyframe_interval=250,
            keyframes=1,
            notes="web-style GOP: keyint 250 in a 6 s clip, so one keyframe for the whole clip",
        ),
        # ---- extensions
        _Spec(
            "h264_m4v",
            "extensions/itunes.m4v",
            fmt="ipod",
            audio=aac,
            notes="Apple-style .m4v: H.264 + AAC in MP4 (FFmpeg 'ipod' muxer, M4V brand)",
        ),
        _Spec("h264_ts", "extensions/broadcast.ts", fmt="mpegts", notes="H.264 in MPEG-TS (188-byte packets)"),
        _Spec(
            "avchd_mts",
            "extensions/00000.MTS",
            fmt="mpegts",
            fmt_options=_opts(mpegts_m2ts_mode=1),
            audio=_Audio("ac3", 2.0, layout="stereo"),
            notes="AVCHD-style: H.264 + AC-3 in BDAV M2TS (192-byte packets), .MTS",
        ),
        _Spec(
            "avchd_m2ts",
            "extensions/00001.m2ts",
            fmt="mpegts",
            fmt_options=_opts(mpegts_m2ts_mode=1),
            notes="H.264 in BDAV M2TS (192-byte packets), .m2ts",
        ),
        _Spec(
            "h263_3gp",
            "extensions/old_phone.3gp",
            codec="h263",
            size=(176, 144),
            sar=(12, 11),
            fps=15,
            frames=30,
            fmt="3gp",
            audio=_Audio("libopencore_amrnb", 2.0, rate=8000),
            decoder="h263",
            notes="feature-phone style: H.263 QCIF 176x144 + AMR-NB in 3GP. H.263's standard picture formats "
            "imply 12:11 pixels, so FFmpeg displays it 192x144",
        ),
        _Spec(
            "flv1_flv",
            "extensions/flash.flv",
            codec="flv",
            decoder="flv",
            notes="Sorenson Spark (FLV1) in FLV",
        ),
        _Spec(
            "wmv2_wmv",
            "extensions/windows.wmv",
            codec="wmv2",
            fmt="asf",
            decoder="wmv2",
            notes="Windows Media Video 8 (wmv2) in ASF",
        ),
        _Spec("upper_MP4", "extensions/C0001.MP4", audio=aac, notes="camera-style upper-case .MP4"),
        _Spec(
            "upper_MOV",
            "extensions/IMG_0001.MOV",
            fmt="mov",
            audio=aac,
            notes="upper-case .MOV, QuickTime brand, H.264 + AAC",
        ),
        # ---- names
        _Spec("name_nfc", f"names/{NFC_NAME}", notes="Korean name in NFC (precomposed syllables)"),
        _Spec("name_nfd", f"names/{NFD_NAME}", notes="Korean name in NFD (decomposed jamo, as macOS writes)"),
        _Spec(
            "name_cp949",
            b"names/" + CP949_NAME,
            notes="name encoded in CP949 (not valid UTF-8): path holds surrogate escapes",
        ),
        _Spec("name_brackets", "names/[2024] 부산 [final].mp4", notes="brackets (glob metacharacters)"),
        _Spec("name_quotes", "names/it's a \"quoted\" clip (1).mp4", notes="spaces, quotes, parentheses"),
        _Spec(
            "hidden",
            "bad/.hidden.mp4",
            expect="ignored",
            notes="a real, valid video whose name starts with a dot: skip it",
        ),
    ]
    return s


SPECS: tuple[_Spec, ...] = tuple(_specs())
BAD_KINDS = ("appledouble", "truncated_moov_end", "truncated_faststart", "empty", "audio_only")
KINDS: tuple[str, ...] = tuple(spec.kind for spec in SPECS) + BAD_KINDS


def _display_size(spec: _Spec) -> tuple[int, int]:
    w, h = spec.size
    w = int(round(w * spec.sar[0] / spec.sar[1]))
    return (h, w) if spec.rotation in (90, 270) else (w, h)


def _presented(spec: _Spec) -> list[tuple[float, int]]:
    pts = _frame_pts(spec)
    tb = _time_base(spec)
    first = pts[spec.leadin]
    return [(float((pts[i] - first) * tb), i) for i in range(spec.leadin, len(pts))]


def _rel(folder: Path, name: str | bytes) -> Path:
    if isinstance(name, bytes):
        return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
    return folder / name


def _write_bytes(path: Path, data: bytes) -> None:
    """Write through a bytes path, the only way to create a name that is not UTF-8."""
    fd = os.open(os.fsencode(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def missing_encoders() -> list[str]:
    """Encoders the variants need that this PyAV build lacks (their kinds are left out)."""
    import av

    needed = {spec.codec for spec in SPECS} | {spec.audio.codec for spec in SPECS if spec.audio} | {"aac"}
    missing = []
    for name in sorted(needed):
        try:
            av.codec.Codec(name, "w")
        except Exception:
            missing.append(name)
    return missing


_MUXER_OF_EXT = {"mkv": "matroska"}  # the other extensions used without an explicit muxer name it


def write_clip(folder: Path, spec: _Spec) -> FieldClip:
    """Write the clip of `spec` under `folder` and return its manifest entry."""
    path = _rel(folder, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.nonseekable:
        with open(os.fsencode(path), "wb") as raw:
            _encode(_Unseekable(raw), spec)
    elif isinstance(spec.name, bytes):
        buffer = io.BytesIO()
        fmt = spec.fmt or "mp4"
        _encode(buffer, replace(spec, fmt=fmt))
        _write_bytes(path, buffer.getvalue())
    else:
        _encode(str(path), spec)
    if spec.rotation:
        patch_mp4_rotation(path, spec.rotation)
    ext = (spec.name.decode("latin-1") if isinstance(spec.name, bytes) else spec.name).rsplit(".", 1)[-1]
    return FieldClip(
        path=path,
        kind=spec.kind,
        expect=spec.expect,
        reason=spec.reason,
        display_size=_display_size(spec),
        rotation=spec.rotation,
        sar=spec.sar,
        presented=_presented(spec),
        keyframe_interval=spec.keyframe_interval,
        codec=spec.decoder,
        notes=spec.notes,
        container=spec.fmt or _MUXER_OF_EXT.get(ext.lower(), ext.lower()),
        encoder=spec.codec,
        coded_size=spec.size,
        pix_fmt=spec.pix_fmt,
        fps=Fraction(spec.fps),
        encoded_frames=spec.frames,
        hidden_leadin=spec.leadin,
        keyframes=spec.keyframes,
        start_s=spec.start_s,
        color_range="pc" if spec.full_range or spec.pix_fmt.startswith("yuvj") else None,
        audio=f"{spec.audio.codec} {spec.audio.seconds:g} s" if spec.audio else None,
    )


# --------------------------------------------------------------------------- bad and other files


def _appledouble() -> bytes:
    """4096 bytes as macOS writes `._name` beside a file on a non-HFS volume (copied via SMB/exFAT):
    AppleDouble v2 header, a Finder Info entry carrying an (empty) extended-attributes block, and
    an empty resource fork."""
    header = struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 2)
    entries = struct.pack(">III", 9, 50, 3760) + struct.pack(">III", 2, 3810, 286)
    finder = bytearray(3760)  # 32 bytes of FinderInfo, 2 of padding, then the xattr header
    finder[34:38] = b"ATTR"
    finder[38:42] = struct.pack(">I", 0x0012_5AAA)  # debug tag, as macOS fills it
    finder[42:46] = struct.pack(">I", 3760)  # total size of the attributes block
    resource = bytearray(286)  # empty resource fork: 256-byte header and a 30-byte map
    resource[0:16] = struct.pack(">IIII", 256, 256, 0, 30)
    resource[16:59] = b"This resource fork intentionally left blank"
    resource[256:272] = struct.pack(">IIII", 256, 256, 0, 30)
    data = header + entries + bytes(finder) + bytes(resource)
    assert len(data) == 4096, len(data)
    return data


def _audio_only(path: Path) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "stereo"
        _encode_audio(container, stream, _Audio("aac", 2.0, rate=44100, layout="stereo"))


def _write_bad(folder: Path) -> list[FieldClip]:
    bad = folder / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    clips = []

    apple = folder / "names" / f"._{NFC_NAME}"
    apple.parent.mkdir(parents=True, exist_ok=True)
    apple.write_bytes(_appledouble())
    clips.append(
        FieldClip(
            apple,
            "appledouble",
            "ignored",
            notes="AppleDouble metadata (magic 0x00051607) macOS leaves beside '서울 야경.mp4': not a video, skip it",
            container="appledouble",
        )
    )

    source = _Spec("truncated_src", "bad/_src.mp4", frames=30, options=_x264("keyint=10:scenecut=0"))
    full = bad / "_full.mp4"
    _encode(str(full), source)
    data = full.read_bytes()
    full.unlink()
    cut = bad / "truncated_moov_end.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    clips.append(
        FieldClip(
            cut,
            "truncated_moov_end",
            "failed",
            reason=r"file ends early \(cut at about \d+%",
            codec="h264",
            notes="a 3 s H.264 MP4 with moov at the end, cut at 60 % of its bytes (an interrupted copy): "
            "no moov, so no demuxer can open it",
            container="mp4",
            encoded_frames=30,
        )
    )

    full = bad / "_full_fs.mp4"
    _encode(str(full), replace(source, fmt_options=_opts(movflags="+faststart")))
    data = full.read_bytes()
    full.unlink()
    cut = bad / "truncated_faststart.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    clips.append(
        FieldClip(
            cut,
            "truncated_faststart",
            "failed",
            reason=r"file ends early \(cut at about \d+%",
            codec="h264",
            notes="a 3 s faststart H.264 MP4 cut at 60 % of its bytes: opens, the header promises 30 frames, "
            "the data ends early",
            container="mp4",
            encoded_frames=30,
        )
    )

    empty = bad / "empty.mp4"
    empty.write_bytes(b"")
    clips.append(
        FieldClip(empty, "empty", "failed", reason=r"file is empty \(0 bytes\)", notes="0 bytes", container="")
    )

    audio = bad / "audio_only.mp4"
    _audio_only(audio)
    clips.append(
        FieldClip(
            audio,
            "audio_only",
            "failed",
            reason=r"no video stream \(contains: audio\)",
            notes="an .m4a-like MP4 (AAC stereo 2 s) named .mp4: no video stream",
            container="mp4",
            audio="aac 2 s",
        )
    )
    return clips


def write_field_folder(folder: Path, kinds: set[str] | None = None) -> list[FieldClip]:
    """Write every variant (or those in `kinds`) into `folder` and return the manifest.

    Kinds whose encoder this PyAV lacks are left out (see `missing_encoders`).
    """
    os.environ.setdefault("SVT_LOG", "1")  # libsvtav1 prints its banner to stderr unless told
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    missing = set(missing_encoders())
    clips = [
        write_clip(folder, spec)
        for spec in SPECS
        if (kinds is None or spec.kind in kinds)
        and spec.codec not in missing
        and not (spec.audio and spec.audio.codec in missing)
    ]
    if kinds is None or kinds & set(BAD_KINDS):
        clips += [clip for clip in _write_bad(folder) if kinds is None or clip.kind in kinds]
    return clips


def by_kind(clips: list[FieldClip]) -> dict[str, FieldClip]:
    return {clip.kind: clip for clip in clips}


__all__ = [
    "FieldClip",
    "KINDS",
    "SPECS",
    "by_kind",
    "check_range",
    "check_upright",
    "draw_frame",
    "gray_level",
    "matroska_index",
    "missing_encoders",
    "mp4_top_boxes",
    "patch_mp4_rotation",
    "read_label",
    "tkhd_matrix",
    "upright",
    "write_clip",
    "write_field_folder",
]
