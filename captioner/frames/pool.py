"""Killable decoding processes.

decord can hang for ever (holding the GIL) or crash on a damaged container, and its memory
grows over long runs. So decoding never runs in the caller's process: `FrameDecoder` keeps a
small pool of spawned worker processes, kills the one whose clip exceeds the timeout, and
recycles every worker after a fixed number of clips.

The timeout bounds time; an address-space limit (`FrameSpec.decoder_memory_mb`) bounds memory, so
a clip that makes a decoder allocate without end fails alone instead of taking the machine's
memory from the engine.
"""

from __future__ import annotations

import gc
import multiprocessing
import resource
import signal
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterable

from captioner.errors import ConfigError
from captioner.frames.decode import ClipFrames, FrameSpec, decode_clip, windows_of
from captioner.frames.errors import OUT_OF_MEMORY, FrameError
from captioner.windows import Clip, Window, WindowPolicy


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
        decode: Callable[..., ClipFrames] | None = None,
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
            initializer=limit_address_space,
            initargs=(spec.decoder_memory_mb,),
        )

    def submit(self, path: Path | str, window: Window | None = None) -> Future[ClipFrames]:
        """Start decoding `path` (the frames of its `window`, else of the whole file); the result arrives in the future."""
        inner = self._pool.submit(run_decode, self.timeout, self._decode, Path(path), self.spec, window)
        return self._outer(inner, path)

    def windows(self, path: Path | str, policy: WindowPolicy) -> Future[list[Window] | None]:
        """Plan the windows of `path` under `policy` (None: one caption for the whole file).

        The file is probed in a decoder process like a decode, under the same timeout: it is untrusted.
        """
        return self._outer(self._pool.submit(windows_of, self.timeout, Path(path), policy, self.spec), path)

    def _outer(self, inner: Future, path: Path | str) -> Future[Any]:
        """A future of `inner`'s result, with pebble's process-level failures as FrameErrors naming `path`."""
        outer: Future[Any] = Future()
        inner.add_done_callback(lambda f: _translate(f, outer, str(path), self.timeout, self.spec.decoder_memory_mb))
        return outer

    def close(self) -> None:
        """Stop all worker processes."""
        self._pool.stop()
        self._pool.join()

    def __enter__(self) -> FrameDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def plan_clips(
    videos: Iterable[Path | Clip], policy: WindowPolicy, decoder: FrameDecoder | None
) -> dict[Path, list[Clip]]:
    """Each video's clips, in the order given: a `Clip` as it is; a path's windows under `policy`, else the whole file.

    Planning a file's windows needs its length, so the file is probed, in `decoder`'s processes (it
    is untrusted), all at once. A file whose probe fails is one whole-file clip: decoding it fails
    with the same reason, and its record says why. A decoder without `windows` (a stand-in) plans no
    windows.
    """
    planned: dict[Path, list[Clip]] = {}
    probes: dict[Path, Future[list[Window] | None]] = {}
    for video in videos:
        if isinstance(video, Clip):
            planned.setdefault(video.path, []).append(video)
            continue
        path = Path(video)
        planned[path] = [Clip(path)]
        if policy.kind != "none" and decoder is not None and hasattr(decoder, "windows"):
            probes[path] = decoder.windows(path, policy)
    for path, probe in probes.items():
        try:
            windows = probe.result()
        except FrameError:
            continue  # one whole-file clip, whose decode says why
        if windows:
            planned[path] = [Clip(path, window) for window in windows]
    return planned


def limit_address_space(megabytes: int) -> None:
    """Pool initializer: let this decoder process grow by at most `megabytes` MiB of address space.

    The limit is set on top of the size the process has once the decoders are loaded, because that
    size depends on the machine, not the clip: each core adds an OpenBLAS thread (about 40 MB of
    stack and buffer reserved), and PyAV and decord map about 180 MB of libraries. Measured on 2
    cores: 333 MB loaded (VmSize); 32 frames at the model's size (336) then peak at 420-450 MB for
    1080p H.264 through decord and 570 MB for 8K through PyAV (VmPeak). 0 = no limit.
    """
    if megabytes <= 0:
        return
    _one_malloc_arena()
    try:  # loaded before the limit is measured, so they do not count against a clip
        import av  # noqa: F401
        import decord  # noqa: F401
    except ImportError:
        pass  # the clip's decode reports it

    loaded = _status_kb("VmSize") * 1024
    if not loaded:  # no /proc to measure from: a limit without the loaded size would fail every clip
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = loaded + megabytes * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _one_malloc_arena() -> None:
    """Let every thread of this process allocate from glibc's main heap (no effect with another libc).

    Each thread that allocates otherwise gets its own arena, 64 MB of address space reserved at
    once: decord's decoding thread took 130 MB of the limit for a 160x96 clip (VmPeak; 11 MB with
    one arena). A decoder's threads hand frames to each other in turn, so they do not contend for it.
    """
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(-8, 1)  # M_ARENA_MAX = 1


def _status_kb(field: str) -> int:
    """A figure of this process's /proc/self/status in KiB (VmSize, VmPeak), 0 without /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# A small allocation refused at the limit can come back from FFmpeg as another error ("Invalid
# data", EAGAIN for a thread it could not start): a clip whose decode took the process this
# close to the limit failed for memory, whatever the decoder said.
NEAR_LIMIT_KB = 16 * 1024


def _came_near_limit(peak_before_kb: int) -> bool:
    """Whether this clip's decode raised the process's peak size to within NEAR_LIMIT_KB of its limit."""
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    peak = _status_kb("VmPeak")
    return limit != resource.RLIM_INFINITY and peak > peak_before_kb and peak * 1024 > limit - NEAR_LIMIT_KB * 1024


def run_decode(
    decode: Callable[..., ClipFrames], path: Path, spec: FrameSpec, window: Window | None = None
) -> ClipFrames:
    """What a decoder process runs for one clip: `decode` (of `window`), with an allocation that failed named as such.

    Under the address-space limit an allocation fails (numpy's or Python's MemoryError, FFmpeg's
    ENOMEM) instead of the machine running out; the clip fails with the limit in its reason, and the
    process frees the memory and takes the next clip.
    """
    peak = _status_kb("VmPeak")
    try:
        # A replacement `decode` that knows no windows (tests, benchmarks) is still called as before.
        clip = decode(path, spec) if window is None else decode(path, spec, window)
        if _room_to_send(clip.frames.nbytes):
            return clip
        del clip  # not kept by the error's traceback
        raise MemoryError
    except MemoryError:
        where, reason = str(path), out_of_memory(spec.decoder_memory_mb)
    except FrameError as exc:
        where, reason = exc.path, exc.reason
        if exc.reason == OUT_OF_MEMORY or _came_near_limit(peak):
            reason = out_of_memory(spec.decoder_memory_mb)
    # Raised here, after the except blocks, so the new error holds no traceback of the failed decode:
    # pebble keeps a task's error until the next task ends, and with it every frame that traceback
    # holds (an 8K clip's 260 MB made the next clip fail at the limit). collect() frees the cycles.
    gc.collect()
    raise FrameError(where, reason)


def _room_to_send(nbytes: int) -> bool:
    """Whether the process can pickle `nbytes` of frames to send them back: twice their size, for
    numpy's `tobytes()` copy and the pickle's buffer.

    Without the room, pebble's worker fails while sending and the process dies ("MemoryError",
    exit code 1); checked here, the clip fails alone with the limit named.
    """
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    size = _status_kb("VmSize") * 1024
    return limit == resource.RLIM_INFINITY or not size or size + 2 * nbytes + NEAR_LIMIT_KB * 1024 <= limit


def out_of_memory(megabytes: int) -> str:
    """The reason a clip failed for lack of memory, naming the limit and the setting that raises it."""
    if megabytes <= 0:
        return OUT_OF_MEMORY
    return f"decoder ran out of its {megabytes} MiB address-space limit (CAPTIONER_DECODER_MEMORY_MB raises it)"


def _died(exitcode: int | None, memory_mb: int) -> str:
    """Why a decoder process ended without a result, as far as its exit code tells."""
    if exitcode == -signal.SIGABRT and memory_mb > 0:
        # decord lets C++'s std::bad_alloc escape, and the C++ runtime aborts the process.
        return (
            f"decoder process died (exit code {exitcode}, an abort, as when decord is refused memory at its "
            f"{memory_mb} MiB address-space limit; CAPTIONER_DECODER_MEMORY_MB raises it)"
        )
    return f"decoder process died (exit code {exitcode})"


def _translate(inner: Future, outer: Future, path: str, timeout: float, memory_mb: int) -> None:
    """Turn pebble's process-level failures into FrameErrors that name the clip."""
    from pebble import ProcessExpired

    try:
        outer.set_result(inner.result())
    except (FrameError, ConfigError) as exc:  # ConfigError: the run's setup (a windows policy it cannot apply)
        outer.set_exception(exc)
    except TimeoutError:
        outer.set_exception(FrameError(path, f"decoding took longer than {timeout:g} s; decoder process killed"))
    except ProcessExpired as exc:
        outer.set_exception(FrameError(path, _died(exc.exitcode, memory_mb)))
    except BrokenProcessPool:
        # pebble's other report of the same death, when the clip's worker was the pool's only one.
        outer.set_exception(FrameError(path, "decoder process died (the pool had no worker left)"))
    except Exception as exc:  # anything else must still fail only this clip
        outer.set_exception(FrameError(path, f"decoding failed ({type(exc).__name__}: {exc})"))
