"""One clip in, the frames the model sees out: probe, choose, decode (decord, else PyAV)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from captioner.frames.choose import DEFAULT_TOLERANCE, FramePick, choose_frames, decode_size
from captioner.frames.errors import OUT_OF_MEMORY, FrameError, explain
from captioner.frames.probe import PROBE_MAX_BYTES, PROBE_MAX_SECONDS, VideoInfo, probe, process_bytes_read
from captioner.frames.readers import Decoded, read_decord, read_keyframes, read_pyav
from captioner.windows import Window, WindowPolicy, plan_windows


# What one clip may cost, decided from its probe before anything is decoded. `Settings` carries the
# same defaults as CAPTIONER_* settings (tests/test_frame_bounds.py checks that they agree).
MAX_DISPLAY_PIXELS = 7680 * 4320  # 8K UHD
MAX_ASPECT = 10.0  # long side / short side: 32:9 panoramas (3.6) pass, a 255:1 sample aspect does not
MAX_FRAMES = 64  # twice the largest tier's 32
# Address space (MiB) a decoder process may take beyond what it holds once its libraries are loaded
# (frames/pool.py): 32 frames at the model's size of a 1080p or an 8K clip took at most 240 MB of it.
DECODER_MEMORY_MB = 4096


@dataclass(frozen=True)
class FrameSpec:
    """What to take from every clip (how many frames, the short side, the keyframe tolerance), and its caps."""

    num_frames: int
    short_side: int | None = None
    tolerance: float = DEFAULT_TOLERANCE  # of a segment; 0 = exact frames
    max_display_pixels: int = MAX_DISPLAY_PIXELS  # per frame as shown, or as coded if that is larger
    max_aspect: float = MAX_ASPECT
    max_frames: int = MAX_FRAMES
    decoder_memory_mb: int = DECODER_MEMORY_MB  # 0 = no limit
    # Frames between keyframes: "pyav" (the cheapest exact reader measured), or "decord" (earlier
    # versions' reader, kept so `captioner bench` measures the two against each other).
    reader: str = "pyav"
    probe_max_bytes: int = PROBE_MAX_BYTES  # the packet scan of a file without an index
    probe_max_seconds: float = PROBE_MAX_SECONDS


@dataclass(frozen=True)
class ClipFrames:
    """Frames sampled from one clip, shape (N, H, W, 3) uint8 RGB, upright at display aspect."""

    video: str
    frames: np.ndarray
    times: list[float]  # seconds from the first presented frame, one per frame
    shift_max: float  # the largest distance of a frame from its target, as a fraction of a segment
    decoder: str  # "pyav-keyframes", "decord", "pyav-keyframes+decord" or "pyav"
    display_size: tuple[int, int]  # the source's (width, height) as shown
    rotation: int
    source_frames: int  # frames the source presents
    notes: tuple[str, ...] = ()
    decode_s: float = 0.0
    cpu_s: float = 0.0  # CPU seconds of the decoding process for this clip
    codec: str = ""
    bytes_read: int | None = None  # bytes the decoding process read for this clip (probe + decode)
    window: Window | None = None  # the time range the frames were taken from; None: the whole file

    def facts(self) -> dict[str, Any]:
        """What a record and `frames.json` say about how the frames were taken."""
        return {
            "window": None if self.window is None else self.window.as_json(),
            "frame_times": [round(t, 3) for t in self.times],
            "frame_shift_max": round(self.shift_max, 3),
            "decoder": self.decoder,
            "notes": list(self.notes),
            "bytes_read": self.bytes_read,
        }


def decode_clip(path: Path, spec: FrameSpec, window: Window | None = None) -> ClipFrames:
    """Decode `spec.num_frames` frames of `path`, or of its `window` (what decoder processes run).

    Raises `FrameError` naming the file and a plain reason for anything that is not a readable video.
    """
    started, cpu_started, read_before = time.perf_counter(), time.process_time(), process_bytes_read()
    path = Path(path)
    if spec.num_frames > spec.max_frames:
        raise FrameError(
            path,
            f"{spec.num_frames} frames per clip asked for, above the limit {spec.max_frames} (CAPTIONER_MAX_FRAMES)",
        )
    try:
        info = probed(path, spec)
        check_caps(path, info, spec)
        pick = choose_in(path, info, spec, window)
        notes = list(info.notes)
        decoded = _decode(path, info, pick.indices, spec.short_side, notes, spec.reader)
    except MemoryError:  # Python's, or PyAV's ENOMEM (a MemoryError too): the pool names its limit
        raise FrameError(path, OUT_OF_MEMORY) from None
    display = info.display_size(decoded.rotation)
    size = decode_size(*display, spec.short_side)
    if decoded.frames.shape != (spec.num_frames, size[1], size[0], 3):
        raise FrameError(path, f"decoder returned frames of shape {decoded.frames.shape}, expected {size[0]}x{size[1]}")
    return ClipFrames(
        video=str(path),
        frames=decoded.frames,
        times=pick.times,
        shift_max=pick.shift_max,
        decoder=decoded.decoder,
        display_size=display,
        rotation=decoded.rotation,
        source_frames=info.frames,
        notes=tuple(info.geometry_notes(decoded.rotation) + notes),
        decode_s=time.perf_counter() - started,
        cpu_s=time.process_time() - cpu_started,
        codec=info.codec,
        bytes_read=None if read_before is None else process_bytes_read() - read_before,
        window=window,
    )


def choose_in(path: Path, info: VideoInfo, spec: FrameSpec, window: Window | None) -> FramePick:
    """The tier's frames of the whole file, or of the frames presented in [start_s, end_s) of `window`.

    The window's frames are chosen as a clip of their own (`choose_frames` on that part of the
    timeline), then their indices and times are put back on the file's timeline.
    """
    if window is None:
        return choose_frames(info.times, info.keyframe, spec.num_frames, spec.tolerance, info.frame_s)
    lo = int(np.searchsorted(info.times, window.start_s - 1e-6))  # times are exact to the timebase; a window's to 1 ms
    hi = int(np.searchsorted(info.times, window.end_s - 1e-6))
    if hi <= lo:
        raise FrameError(
            path, f"window {window.index} ({window.start_s:g}-{window.end_s:g} s) holds no frame of the "
            f"{info.duration_s:.3f} s the file presents",
        )  # fmt: skip
    offset = float(info.times[lo])
    times, keyframe = info.times[lo:hi] - offset, info.keyframe[lo:hi]
    pick = choose_frames(times, keyframe, spec.num_frames, spec.tolerance, info.frame_s)
    return replace(
        pick,
        indices=[i + lo for i in pick.indices],
        targets=[t + offset for t in pick.targets],
        times=[t + offset for t in pick.times],
    )


def windows_of(path: Path, policy: WindowPolicy, spec: FrameSpec | None = None) -> list[Window] | None:
    """The windows `policy` gives `path` (probed for its length), None for one caption of the whole file.

    What a decoder process runs to plan a file's windows: the file is untrusted, so it is probed
    where a hang or a crash can be killed, within `spec`'s probe budget.
    """
    try:
        return plan_windows(probed(Path(path), spec or FrameSpec(1)).duration_s, policy)
    except MemoryError:
        raise FrameError(path, OUT_OF_MEMORY) from None


# The last file this process probed, by identity and version: a long take's windows are decoded one
# after another, and the probe of each would read the file's whole timeline again.
_LAST_PROBE: dict[tuple[bytes, int, int, int, int, int, float], VideoInfo] = {}


def probed(path: Path, spec: FrameSpec) -> VideoInfo:
    """`probe(path)` within `spec`'s budget, reused while the same file (device, inode, size, mtime) is asked for."""
    try:
        st = os.stat(path)
    except OSError:
        return probe(path, spec.probe_max_bytes, spec.probe_max_seconds)  # which names the problem
    key = (os.fsencode(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, spec.probe_max_bytes,
           spec.probe_max_seconds)  # fmt: skip
    info = _LAST_PROBE.get(key)
    if info is None:
        info = probe(path, spec.probe_max_bytes, spec.probe_max_seconds)
        _LAST_PROBE.clear()  # one file's timeline at most: a 2-hour take's is a few MB
        _LAST_PROBE[key] = info
    return info


def check_caps(path: Path, info: VideoInfo, spec: FrameSpec) -> None:
    """Raise `FrameError` for a clip whose frames would be too large or too oddly shaped to decode.

    Rotation turns the picture but keeps its pixel count and aspect, so the unrotated display size
    serves. Decoders allocate the coded picture, so that counts too when it is the larger.
    """
    width, height = info.display_size(0)
    aspect = max(width, height) / min(width, height)
    if aspect > spec.max_aspect:
        coded = f"{info.coded_size[0]}x{info.coded_size[1]}"
        shape = f" (coded {coded}, sample aspect {info.sar.numerator}:{info.sar.denominator})" if info.sar != 1 else ""
        raise FrameError(
            path,
            f"display size {width}x{height}{shape} has aspect {aspect:.1f}:1, above the limit "
            f"{spec.max_aspect:g}:1 (CAPTIONER_MAX_ASPECT)",
        )
    for name, (w, h) in (("display size", (width, height)), ("coded size", info.coded_size)):
        if w * h > spec.max_display_pixels:
            raise FrameError(
                path,
                f"{name} {w}x{h} is {w * h:,} pixels a frame, above the limit {spec.max_display_pixels:,} "
                "(CAPTIONER_MAX_DISPLAY_PIXELS)",
            )


def _decode(
    path: Path, info: VideoInfo, indices: list[int], short_side: int | None, notes: list[str], reader: str = "pyav"
) -> Decoded:
    """The cheapest exact readers for the chosen frames; PyAV for all of them where one fails (the note says why).

    Keyframes alone: each from its own packet (`read_keyframes`). Frames between keyframes:
    `read_pyav`, which decodes from the keyframe before them and leaves undecoded the frames no
    other frame refers to: on camera- and web-style H.264 it took 1.35-1.6x less CPU than decord on
    the same frames (`captioner bench`, `reader_cpu_s_per_clip`; decord won on no clip). With `reader="decord"`, decord
    reads them where it returns the right frames (`_decord_unsafe`), as earlier versions did.
    """
    wanted = sorted(set(indices))
    keys = [i for i in wanted if info.keyframe[i]]
    rest = [i for i in wanted if not info.keyframe[i]]
    unsafe = _decord_unsafe(info) if rest and reader == "decord" else None
    if unsafe:
        notes.append(f"decoded with PyAV: {unsafe}")
    elif not rest or reader == "decord":
        try:
            return _keyframes_then_decord(path, info, indices, keys, rest, short_side)
        except _DecordFailed as exc:
            notes.append(f"codec {info.codec}: decoded with PyAV (decord: {exc})")
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - a keyframe seek that misses (no index): PyAV reads it through
            pass
    try:
        return read_pyav(path, info, indices, short_side)
    except (FrameError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever FFmpeg says, the record needs the reason
        raise FrameError(path, explain(str(exc))) from None


class _DecordFailed(Exception):
    """decord could not open, index or decode the clip; the message says why in plain words."""


def _keyframes_then_decord(
    path: Path, info: VideoInfo, indices: list[int], keys: list[int], rest: list[int], short_side: int | None
) -> Decoded:
    """Keyframes from their own packets, the other frames through decord, in the order of `indices`."""
    pictures: dict[int, np.ndarray] = {}
    rotation, decoders = None, []
    if keys:
        decoded = read_keyframes(path, info, keys, short_side)
        pictures.update(zip(keys, decoded.frames))
        rotation = decoded.rotation
        decoders.append(decoded.decoder)
    if rest:
        try:
            decoded = read_decord(path, info, rest, short_side, rotation)  # the rotation found saves a decode
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - decord raises DECORDError/RuntimeError with C++ traces
            raise _DecordFailed(exc.reason if isinstance(exc, FrameError) else explain(str(exc))) from None
        pictures.update(zip(rest, decoded.frames))
        rotation = decoded.rotation
        decoders.append(decoded.decoder)
    return Decoded(np.stack([pictures[i] for i in indices]), rotation or 0, "+".join(decoders))


# Containers whose frames decord 0.6 finds by timestamp correctly (MP4/MOV, Matroska/WebM). In
# MPEG-TS/PS and AVI with B-frames it returns frames shifted or repeated after a seek
# (tests/test_field.py shows it on the clips made by tests/fieldclips.py).
_DECORD_CONTAINERS = ("mov", "mp4", "matroska", "webm")


def _decord_unsafe(info: VideoInfo) -> str | None:
    """Why decord 0.6 would return wrong frames of this stream, or None."""
    if not any(name in _DECORD_CONTAINERS for name in info.container.split(",")):
        return f"decord seeks {info.container} streams inexactly"
    if info.hidden:
        return "decord counts frames an edit list hides"
    if info.open_gop:
        return "decord miscounts frames after a seek in open GOPs"
    return None


def sample_frames(
    path: Path | str, num_frames: int, short_side: int | None = None, tolerance: float = 0.0
) -> np.ndarray:
    """`num_frames` upright RGB frames of `path` as a (N, H, W, 3) uint8 array (exact frames by default)."""
    return decode_clip(Path(path), FrameSpec(num_frames, short_side, tolerance)).frames
