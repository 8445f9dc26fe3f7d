"""A worker's chunk threads share one engine: their batches merge, results go back to their own chunk."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from captioner.service.shared_engine import SharedEngine


class _Engine:
    def __init__(self, batch_size: int, full: bool, fail: bool = False) -> None:
        self.profile = SimpleNamespace(batch_size=batch_size, wait_for_full_batch=full)
        self.calls: list[int] = []
        self.fail = fail

    def caption(self, videos, prompt, sampling, with_adapter=True):
        self.calls.append(len(videos))
        time.sleep(0.2)
        if self.fail:
            raise RuntimeError("engine died")
        return [f"caption of {video}" for video in videos]


def _chunks(engine: SharedEngine, count: int, clips: int, sampling: str = "s") -> dict[int, object]:
    """`count` chunk threads: each takes its slots (decoding), then hands its clips over at once."""
    prompt, results = object(), {}
    holding = threading.Barrier(count)

    def chunk(index: int) -> None:
        for _ in range(clips):
            engine.slots.acquire()
        holding.wait()  # every chunk is decoding before any hands over a batch
        time.sleep(0.02 * index)
        try:
            results[index] = engine.caption([f"{index}-{k}" for k in range(clips)], prompt, sampling)
        except RuntimeError as exc:
            results[index] = exc
        for _ in range(clips):
            engine.slots.release()

    threads = [threading.Thread(target=chunk, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_small_chunks_make_full_batches_and_each_gets_its_own_captions():
    inner = _Engine(batch_size=16, full=True)
    results = _chunks(SharedEngine(inner), count=8, clips=4)  # 32 clips: the slots of two batches
    assert inner.calls == [16, 16]  # the first batch waited for the chunks still decoding
    assert all(results[i] == [f"caption of {i}-{k}" for k in range(4)] for i in range(8))


def test_without_waiting_for_full_batches_the_engine_never_idles():
    inner = _Engine(batch_size=16, full=False)
    results = _chunks(SharedEngine(inner), count=4, clips=4)
    assert inner.calls[0] == 4 and sum(inner.calls) == 16 and len(inner.calls) >= 2  # first ready, first served
    assert all(results[i] == [f"caption of {i}-{k}" for k in range(4)] for i in range(4))


def test_an_engine_error_reaches_every_chunk_of_the_batch():
    results = _chunks(SharedEngine(_Engine(batch_size=16, full=True, fail=True)), count=4, clips=4)
    assert all(isinstance(r, RuntimeError) for r in results.values())


def test_different_sampling_never_shares_a_batch():
    inner = _Engine(batch_size=16, full=False)
    engine = SharedEngine(inner)
    prompt = object()
    out = {}
    threads = [
        threading.Thread(target=lambda s=s: out.setdefault(s, engine.caption([s], prompt, s))) for s in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(inner.calls) == [1, 1] and out == {"a": ["caption of a"], "b": ["caption of b"]}
