"""One engine shared by a worker's chunk threads, fed like one long `captioner run`.

A worker holds several chunks at once (`chunks_in_flight`). Their clips take `slots` to decode
(two of the engine's batches ahead, over all chunks, so memory stays bounded however many chunks
are held), and each chunk hands its batches to `SharedEngine.caption`. While the engine runs one
`generate`, the batches that arrive wait; the next call takes all of them that share a prompt and
sampling, up to the engine's batch size. So four chunks of 4 clips make one batch of 16, and no
clip waits for a chunk boundary.

On a profile that waits for full batches (`wait_for_full_batch`: the CPU tier, where decoding and
the engine share the cores), the thread about to run a batch first waits for the clips that other
chunks are still decoding, as `captioner run` does within its one stream.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

# A batch never waits longer than this for other chunks' clips (a stuck decoder is killed at its
# own timeout; this only bounds the wait of the batch that is ready).
MAX_WAIT_S = 10.0


@dataclass(eq=False)  # compared by identity: it holds frames (numpy arrays)
class _Request:
    videos: list[Any]
    key: tuple
    adapters: list[Any] | None = None  # each clip's adapter (a multi-adapter plan), else the engine's default
    result: list[Any] | None = None
    error: BaseException | None = None
    done: bool = False


class ClipSlots:
    """Clips decoding or decoded but not yet captioned, over all chunk threads (a bounded count).

    `acquire`/`release` as a semaphore's; it also knows which threads hold how many, so the engine
    can tell whether more clips are on their way.
    """

    def __init__(self, total: int, cond: threading.Condition) -> None:
        self.total = total
        self._cond = cond
        self._held: dict[int, int] = {}

    def acquire(self, blocking: bool = True) -> bool:
        """Take a slot for the calling thread; wait for one if `blocking`."""
        me = threading.get_ident()
        with self._cond:
            while sum(self._held.values()) >= self.total:
                if not blocking:
                    return False
                self._cond.wait()
            self._held[me] = self._held.get(me, 0) + 1
            self._cond.notify_all()
            return True

    def release(self) -> None:
        """Give back a slot of the calling thread (its clip's record is written)."""
        me = threading.get_ident()
        with self._cond:
            self._held[me] -= 1
            if not self._held[me]:
                del self._held[me]
            self._cond.notify_all()

    def held_outside(self, threads: set[int]) -> int:
        """Slots held by threads not in `threads` (call with the condition held)."""
        return sum(n for thread, n in self._held.items() if thread not in threads)


class SharedEngine:
    """The worker's engine as its chunk threads see it (see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        profile = getattr(engine, "profile", None)
        self.batch_size = max(1, getattr(profile, "batch_size", None) or 1)
        self.wait_for_full_batch = bool(getattr(profile, "wait_for_full_batch", False))
        self._cond = threading.Condition()
        self.slots = ClipSlots(2 * self.batch_size, self._cond)
        self._pending: list[_Request] = []
        self._inside: dict[int, int] = {}  # threads in `caption` (their other clips cannot arrive meanwhile)
        self._busy = False
        self._warmed: set[str] = set()

    def warm_prefix(self, prompt: Any) -> None:
        """Warm the prompt's prefix in the cache, once per prompt text, between batches."""
        with self._cond:
            if prompt.prefix_text in self._warmed:
                return
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            self.engine.warm_prefix(prompt)
            self._warmed.add(prompt.prefix_text)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def caption(
        self, videos: list[Any], prompt: Any, sampling: Any, with_adapter: bool = True, adapters: list[Any] | None = None
    ) -> list[Any]:
        """`engine.caption` for this batch, run together with the batches of other chunks."""
        sampled = sampling.model_dump_json() if hasattr(sampling, "model_dump_json") else repr(sampling)
        key = (id(prompt), sampled, with_adapter, adapters is not None)
        request = _Request(videos, key, None if adapters is None else list(adapters))
        me = threading.get_ident()
        with self._cond:
            self._pending.append(request)
            self._inside[me] = self._inside.get(me, 0) + 1
            self._cond.notify_all()
            try:
                batch = self._lead(request)
            finally:
                self._inside[me] -= 1
                if not self._inside[me]:
                    del self._inside[me]
            if batch is None:
                return _outcome(request)
        try:
            extra: dict[str, Any] = {} if with_adapter else {"with_adapter": False}
            if adapters is not None:
                extra["adapters"] = [a for r in batch for a in r.adapters or []]
            results = self.engine.caption([v for r in batch for v in r.videos], prompt, sampling, **extra)
            start = 0
            for waiting in batch:
                waiting.result = results[start : start + len(waiting.videos)]
                start += len(waiting.videos)
        except BaseException as exc:  # noqa: BLE001 - every chunk in the batch hears it (engine death: retry)
            for waiting in batch:
                waiting.error = exc
        finally:
            with self._cond:
                for waiting in batch:
                    waiting.done = True
                self._busy = False
                self._cond.notify_all()
        return _outcome(request)

    def _lead(self, request: _Request) -> list[_Request] | None:
        """Wait (condition held) until `request` is done (None) or this thread runs the next batch (its requests)."""
        deadline = None
        while True:
            if request.done:
                return None
            if not self._busy:
                like = [r for r in self._pending if r.key == request.key]
                clips = sum(len(r.videos) for r in like)
                arriving = self.slots.held_outside(set(self._inside)) if self.wait_for_full_batch else 0
                deadline = deadline or time.monotonic() + MAX_WAIT_S
                if clips >= self.batch_size or not arriving or time.monotonic() >= deadline:
                    break
            self._cond.wait(0.5)
        self._busy = True
        self._pending.remove(request)
        batch, clips = [request], len(request.videos)
        for waiting in list(self._pending):
            if waiting.key == request.key and clips + len(waiting.videos) <= self.batch_size:
                batch.append(waiting)
                clips += len(waiting.videos)
                self._pending.remove(waiting)
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def _outcome(request: _Request) -> list[Any]:
    if request.error is not None:
        raise request.error
    return request.result or []
