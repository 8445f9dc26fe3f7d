"""One engine shared by a worker's chunk threads, fed like one long `captioner run`.

A worker holds several chunks at once (`chunks_in_flight`). Their clips take `slots` to decode
(two of the engine's batches ahead, over all chunks, so memory stays bounded however many chunks
are held), and each chunk hands its batches to `SharedEngine.caption`. While the engine runs one
`generate`, the batches that arrive wait; the next call takes all of them that share a prompt and
sampling, up to the engine's batch size (clips name their own adapters, so batches for different
adapters merge too). So four chunks of 4 clips make one batch of 16, and no clip waits for a chunk
boundary. `SharedEngine` is itself an `Engine`: captioning cannot tell it from the engine it wraps.

On a profile that waits for full batches (`wait_for_full_batch`: the CPU tier, where decoding and
the engine share the cores), the thread about to run a batch first waits for the clips that other
chunks are still decoding, as `captioner run` does within its one stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from captioner.adapters import Adapter
    from captioner.config import Sampling
    from captioner.engine import Engine, Generation
    from captioner.prompts import RenderedPrompt

log = logging.getLogger(__name__)

# A batch never waits longer than this for other chunks' clips (a stuck decoder is killed at its
# own timeout; this only bounds the wait of the batch that is ready).
MAX_WAIT_S = 10.0


@dataclass(eq=False)  # compared by identity: it holds frames (numpy arrays)
class _Request:
    videos: list[np.ndarray]
    key: tuple[int, str, bool]  # batches merge only with the same key: prompt, sampling, adapters named or not
    adapters: list[Adapter] | None = None  # each clip's adapter; None: the engine's default for every clip
    result: list[Generation] | None = None
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
    """The worker's engine as its chunk threads see it: an `Engine` itself (see the module docstring).

    Its `Engine` attributes are the wrapped engine's, fixed once that engine is built.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.model: str = engine.model
        self.profile = engine.profile
        self.adapters = engine.adapters
        self.kv = engine.kv
        self.load_s: float = engine.load_s
        self.batch_size = max(1, engine.profile.batch_size or 1)
        self.wait_for_full_batch = engine.profile.wait_for_full_batch
        self._cond = threading.Condition()
        self.slots = ClipSlots(2 * self.batch_size, self._cond)
        self._pending: list[_Request] = []
        self._inside: dict[int, int] = {}  # threads in `caption` (their other clips cannot arrive meanwhile)
        self._busy = False
        self._warmed: set[tuple[str, bool]] = set()

    def warm_prefix(self, prompt: RenderedPrompt, with_adapter: bool = True) -> None:
        """Warm the prompt's prefix in the cache, once per prompt text and `with_adapter`, between batches.

        The base model's prefix (`with_adapter=False`) is cached apart from the adapters', so a plan
        that compares adapters with the base model warms both.
        """
        warmed = (prompt.prefix_text, with_adapter)
        with self._cond:
            while warmed not in self._warmed and self._busy:
                self._cond.wait()
            if warmed in self._warmed:  # another chunk warmed it while this one waited
                return
            self._busy = True
        try:
            self.engine.warm_prefix(prompt, with_adapter=with_adapter)
            self._warmed.add(warmed)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def shareable_prefix_tokens(self, prompt: RenderedPrompt) -> int:
        """The wrapped engine's figure (it reads only the engine's block size)."""
        return self.engine.shareable_prefix_tokens(prompt)

    def caption(
        self, videos: list[np.ndarray], prompt: RenderedPrompt, sampling: Sampling,
        adapters: Sequence[Adapter] | None = None,
    ) -> list[Generation]:  # fmt: skip
        """`engine.caption` for this batch, run together with the batches of other chunks.

        `adapters` name each clip's adapter, so batches naming different adapters merge into one
        call; batches without (the engine's default adapter) merge only with each other.
        """
        key = (id(prompt), sampling.model_dump_json(), adapters is None)
        request = _Request(videos, key, None if adapters is None else list(adapters))
        batch = self._join(request)
        if batch is not None:
            self._run(batch, prompt, sampling)
        return _outcome(request)

    def _join(self, request: _Request) -> list[_Request] | None:
        """Queue `request`; return the batch this thread must run, or None once another thread ran it."""
        me = threading.get_ident()
        with self._cond:
            self._pending.append(request)
            self._inside[me] = self._inside.get(me, 0) + 1
            self._cond.notify_all()
            try:
                return self._lead(request)
            finally:
                self._inside[me] -= 1
                if not self._inside[me]:
                    del self._inside[me]

    def _run(self, batch: list[_Request], prompt: RenderedPrompt, sampling: Sampling) -> None:
        """Caption `batch` in one engine call; hand each request its own results (or the error)."""
        try:
            videos = [v for r in batch for v in r.videos]
            adapters = None if batch[0].adapters is None else [a for r in batch for a in r.adapters or []]
            results = self.engine.caption(videos, prompt, sampling, adapters=adapters)
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

    def shutdown(self) -> None:
        """Stop the wrapped engine's core process, if it has one (vLLM's); best effort: it is dead already."""
        llm = getattr(self.engine, "llm", None)  # only vLLM's engine runs a core process to stop
        try:
            if llm is not None:
                llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - freeing a dead engine is best effort
            log.debug("engine shutdown failed", exc_info=True)


def _outcome(request: _Request) -> list[Generation]:
    if request.error is not None:
        raise request.error
    return request.result or []
