"""Frame stage: sample N frames per clip with decord, in processes that can be killed.

decord can hang for ever (holding the GIL) or crash on a damaged container, and its memory
grows over long runs. So decoding never runs in the caller's process: `FrameDecoder` keeps a
small pool of spawned worker processes, kills the one whose clip exceeds the timeout, and
recycles every worker after a fixed number of clips.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


class FrameError(Exception):
    """A clip whose frames cannot be read. The message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # keep both fields when the error crosses a process boundary
        return (FrameError, (self.path, self.reason))


# A clip with fewer decodable frames than this share of what its header promises was cut short
# (an interrupted copy); captioning its first seconds would silently describe the wrong clip.
_TRUNCATED_SHARE = 0.75


@dataclass(frozen=True)
class ClipFrames:
    """Frames sampled from one clip, shape (N, H, W, 3), uint8 RGB."""

    video: str
    frames: np.ndarray
    source_frames: int  # frames the clip really has, as far as the container tells
    source_size: tuple[int, int]  # (width, height) of the stream
    decode_s: float


def sample_indices(available: int, n: int) -> list[int]:
    """Centres of `n` equal segments of `available` frames, clamped to frames that exist.

    Segment centres never ask for the container's last reported frame, which decord cannot
    always deliver when a file over-reports its length. Short clips repeat frames so every
    clip yields exactly `n` frames and the same token budget.
    """
    if available <= 0 or n <= 0:
        raise ValueError("available and n must be positive")
    return [min(int((i + 0.5) * available / n), available - 1) for i in range(n)]


def decode_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Size (w, h) with the shorter edge scaled to `short_side`, aspect ratio kept, even numbers."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    # Round the long edge to even: some swscale paths reject odd sizes.
    w = short_side if width <= height else int(round(width * scale / 2) * 2)
    h = short_side if height < width else int(round(height * scale / 2) * 2)
    return max(w, 2), max(h, 2)


def _probe(path: Path) -> tuple[int, int, int]:
    """(width, height, frames the header promises) from the container; 0 frames when it does not say.

    Raises `FrameError` with a clear reason when the file is not a video.
    """
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            if not streams:
                kinds = sorted({s.type for s in container.streams}) or ["no streams"]
                raise FrameError(path, f"no video stream (contains: {', '.join(kinds)})")
            stream = streams[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            promised = stream.frames
            if not promised and container.duration and stream.average_rate:
                promised = int(container.duration / av.time_base * stream.average_rate)
    except FrameError:
        raise
    except av.error.FFmpegError as exc:  # not a container FFmpeg knows, or a damaged one
        raise FrameError(path, f"not a readable video file ({exc.strerror or exc})") from None
    if not width or not height:
        raise FrameError(path, "video stream has no frame size (damaged header?)")
    return width, height, promised


def sample_frames(path: Path | str, num_frames: int, short_side: int | None = None) -> np.ndarray:
    """Decode `num_frames` uniformly sampled RGB frames of `path` as a (N, H, W, 3) uint8 array.

    Frames are decoded directly at the size whose shorter edge is `short_side` (the model's
    input size), which is much cheaper than decoding full frames and resizing. Raises
    `FrameError` naming the file and the reason for anything that is not a readable video.
    """
    return decode_clip(Path(path), num_frames, short_side).frames


def decode_clip(path: Path, num_frames: int, short_side: int | None) -> ClipFrames:
    """`sample_frames` with timing and source facts; what decoder processes run."""
    import time

    started = time.perf_counter()
    if not path.exists():
        raise FrameError(path, "file does not exist")
    if not path.is_file():
        raise FrameError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise FrameError(path, "file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise FrameError(path, "file is empty (0 bytes)")
    width, height, promised = _probe(path)

    import decord

    target_w, target_h = decode_size(width, height, short_side)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=target_w, height=target_h, num_threads=1)
        available = len(reader)
        if promised:
            available = min(available, promised)  # trust the smaller count: the other over-reports
        if available <= 0:
            raise FrameError(path, "video stream has no decodable frames")
        if promised and available < _TRUNCATED_SHARE * promised:
            raise FrameError(
                path, f"truncated or damaged: the header promises {promised} frames, only {available} are decodable"
            )
        frames = reader.get_batch(sample_indices(available, num_frames)).asnumpy()
    except FrameError:
        raise
    except Exception as exc:  # decord raises DECORDError / RuntimeError with long C++ traces
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FrameError(path, f"decoding failed ({first_line[:200]})") from None
    if frames.ndim != 4 or frames.shape[0] != num_frames:
        raise FrameError(path, f"decoder returned frames of shape {frames.shape}")
    return ClipFrames(str(path), frames, available, (width, height), time.perf_counter() - started)


class FrameDecoder:
    """A pool of killable decoding processes. `submit` returns a Future of `ClipFrames`.

    The future raises `FrameError` for a bad clip, including one whose decode exceeded
    `timeout` seconds (its process is killed) or crashed its process.
    """

    def __init__(
        self,
        num_frames: int,
        short_side: int | None,
        workers: int = 1,
        timeout: float = 60.0,
        max_tasks_per_worker: int = 100,
        decode: Callable[[Path, int, int | None], ClipFrames] | None = None,
    ) -> None:
        """`decode` replaces the decord decoder (a module-level function, so spawned workers can import it)."""
        from pebble import ProcessPool

        self._decode = decode or decode_clip
        self.num_frames = num_frames
        self.short_side = short_side
        self.timeout = timeout
        # spawn, not fork: the parent holds vLLM/torch threads, and a forked child of a
        # multithreaded process can deadlock. max_tasks recycles workers to bound decord's growth.
        self._pool = ProcessPool(
            max_workers=workers,
            max_tasks=max_tasks_per_worker,
            context=multiprocessing.get_context("spawn"),
        )

    def submit(self, path: Path | str) -> Future[ClipFrames]:
        """Start decoding `path`; the result arrives in the returned future."""
        inner = self._pool.submit(self._decode, self.timeout, Path(path), self.num_frames, self.short_side)
        outer: Future[ClipFrames] = Future()
        inner.add_done_callback(lambda f: _translate(f, outer, str(path), self.timeout))
        return outer

    def close(self) -> None:
        """Stop all worker processes."""
        self._pool.stop()
        self._pool.join()

    def __enter__(self) -> FrameDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _translate(inner: Future, outer: Future, path: str, timeout: float) -> None:
    """Turn pebble's process-level failures into FrameErrors that name the clip."""
    from pebble import ProcessExpired

    try:
        outer.set_result(inner.result())
    except FrameError as exc:
        outer.set_exception(exc)
    except TimeoutError:
        outer.set_exception(FrameError(path, f"decoding took longer than {timeout:g} s; decoder process killed"))
    except ProcessExpired as exc:
        outer.set_exception(FrameError(path, f"decoder process died (exit code {exc.exitcode})"))
    except Exception as exc:  # anything else must still fail only this clip
        outer.set_exception(FrameError(path, f"decoding failed ({type(exc).__name__}: {exc})"))

