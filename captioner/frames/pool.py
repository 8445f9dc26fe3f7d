"""Killable decoding processes.

decord can hang for ever (holding the GIL) or crash on a damaged container, and its memory
grows over long runs. So decoding never runs in the caller's process: `FrameDecoder` keeps a
small pool of spawned worker processes, kills the one whose clip exceeds the timeout, and
recycles every worker after a fixed number of clips.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

from captioner.frames.decode import ClipFrames, FrameSpec, decode_clip
from captioner.frames.errors import FrameError


class FrameDecoder:
    """A pool of killable decoding processes. `submit` returns a Future of `ClipFrames`.

    The future raises `FrameError` for a bad clip, including one whose decode exceeded
    `timeout` seconds (its process is killed) or crashed its process.
    """

    def __init__(
        self,
        spec: FrameSpec,
        workers: int = 1,
        timeout: float = 60.0,
        max_tasks_per_worker: int = 100,
        decode: Callable[[Path, FrameSpec], ClipFrames] | None = None,
    ) -> None:
        """`decode` replaces `decode_clip` (a module-level function, so spawned workers can import it)."""
        from pebble import ProcessPool

        self._decode = decode or decode_clip
        self.spec = spec
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
        inner = self._pool.submit(self._decode, self.timeout, Path(path), self.spec)
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
    except BrokenProcessPool:
        # pebble's other report of the same death, when the clip's worker was the pool's only one.
        outer.set_exception(FrameError(path, "decoder process died (the pool had no worker left)"))
    except Exception as exc:  # anything else must still fail only this clip
        outer.set_exception(FrameError(path, f"decoding failed ({type(exc).__name__}: {exc})"))
