"""Clips decoding ahead of the engine: a bounded number of decoder futures, with slots shared across callers.

A clip is a file or one window of a long take (`windows.Clip`): a long take's windows decode as
separate clips, so the decode-ahead and the engine's batches work per window.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Iterable, Protocol

from captioner.frames import ClipFrames, FrameDecoder, FrameError
from captioner.windows import Clip


class Slots(Protocol):
    """A bounded count of clips decoding ahead, shared by callers (a `threading.Semaphore`, a worker's `ClipSlots`)."""

    def acquire(self, blocking: bool = True) -> bool:
        """Take a slot; wait for one if `blocking`; False when none was free."""
        ...

    def release(self) -> None:
        """Give a slot back."""
        ...


class DecodeAhead:
    """Up to `depth` clips decoding or decoded and not yet captioned, for one caller.

    `slots` bounds the clips decoded ahead across several callers that share one engine (a
    worker's chunks): a clip takes a slot to start decoding and gives it back (`release`) once its
    records are written. A caller waits for a slot only while it holds none, else two callers
    could each wait for the other's.
    """

    def __init__(self, clips: Iterable[Clip], decoder: FrameDecoder, depth: int, slots: Slots | None = None) -> None:
        self.queue = iter(clips)
        self.decoder = decoder
        self.depth = depth
        self.slots = slots
        self.waiting: list[Clip] = []  # taken from the queue, not yet given a slot
        self.in_flight: dict[Future[ClipFrames], Clip] = {}
        self.ready: list[ClipFrames] = []
        self.held = 0  # slots this caller holds

    @property
    def busy(self) -> bool:
        """True while a clip is decoding or decoded and not yet taken."""
        return bool(self.in_flight or self.ready)

    def top_up(self) -> None:
        """Start decoding more clips until `depth` are in flight or ready (or no slot is free)."""
        while len(self.in_flight) + len(self.ready) < self.depth:
            clip = self.waiting.pop() if self.waiting else next(self.queue, None)
            if clip is None:
                return
            if self.slots is not None:
                if not self.slots.acquire(blocking=self.held == 0):
                    self.waiting.append(clip)  # try again once a clip of ours is done
                    return
                self.held += 1
            # A whole file is submitted as before windows, so a decoder that knows no windows serves it.
            future = self.decoder.submit(clip.path) if clip.window is None else self.decoder.submit(*clip)
            self.in_flight[future] = clip

    def collect(self, block: bool) -> list[tuple[Clip, FrameError]]:
        """Move finished decodes to `ready` (waiting for one if `block`); return the clips that failed."""
        if not self.in_flight:
            return []
        done, _ = wait(self.in_flight, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        failures = []
        for future in done:
            clip = self.in_flight.pop(future)
            try:
                self.ready.append(future.result())
            except FrameError as exc:
                failures.append((clip, exc))
        return failures

    def take(self, size: int, at_least: int) -> list[ClipFrames]:
        """Up to `size` decoded clips, or none while fewer than `at_least` are ready and more are coming."""
        if not self.ready or (len(self.ready) < at_least and self.in_flight):
            if not self.busy:
                self.top_up()  # everything so far failed to decode: wait for slots for the rest
            return []
        batch, self.ready = self.ready[:size], self.ready[size:]
        self.top_up()  # decoders work on the next batch while the engine runs this one
        return batch

    def release(self) -> None:
        """Give back the slot of one clip whose records are written."""
        if self.slots is not None:
            self.slots.release()
            self.held -= 1

    def release_all(self) -> None:
        """Give back every slot still held (stopped early: engine death, cancel)."""
        if self.slots is not None:
            for _ in range(self.held):
                self.slots.release()
        self.held = 0
