"""A worker's chunk threads share one engine: their batches merge, results go back to their own chunk."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

from captioner.adapters import BASE, Adapter
from captioner.config import SAMPLING_PRESETS
from captioner.engine import Engine, Generation
from captioner.service.shared_engine import SharedEngine

SAMPLING = SAMPLING_PRESETS["deterministic"]
DEMO = Adapter(Path("/adapters/demo"), "demo", "abc")


class _Engine:
    """An `Engine` that answers every clip with a caption naming it, a moment later, and remembers each call."""

    def __init__(self, batch_size: int, full: bool, fail: bool = False) -> None:
        self.model = "fake"
        self.profile = SimpleNamespace(batch_size=batch_size, wait_for_full_batch=full)
        self.adapters: list[Path] = []
        self.kv = None
        self.load_s = 0.0
        self.calls: list[int] = []
        self.asked: list[tuple[str, Adapter | None]] = []  # (clip, its adapter) over all calls
        self.warmed: list[tuple[str, bool]] = []
        self.fail = fail

    def warm_prefix(self, prompt, with_adapter=True) -> None:
        time.sleep(0.1)
        self.warmed.append((prompt.prefix_text, with_adapter))

    def shareable_prefix_tokens(self, prompt) -> int:
        return 0

    def caption(self, videos, prompt, sampling, adapters=None) -> list[Generation]:
        self.calls.append(len(videos))
        self.asked += zip(videos, adapters or [None] * len(videos), strict=True)
        time.sleep(0.2)
        if self.fail:
            raise RuntimeError("engine died")
        return [Generation(f"caption of {video}", 10, 0, 5, "stop") for video in videos]


def _texts(generations) -> list[str]:
    return [generation.text for generation in generations]


def _chunks(engine: SharedEngine, count: int, clips: int, adapters=lambda index: None) -> dict[int, object]:
    """`count` chunk threads: each takes its slots (decoding), then hands its clips over at once."""
    prompt, results = object(), {}
    holding = threading.Barrier(count)

    def chunk(index: int) -> None:
        for _ in range(clips):
            engine.slots.acquire()
        holding.wait()  # every chunk is decoding before any hands over a batch
        time.sleep(0.02 * index)
        try:
            videos = [f"{index}-{k}" for k in range(clips)]
            results[index] = _texts(engine.caption(videos, prompt, SAMPLING, adapters=adapters(index)))
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


def test_the_shared_engine_is_an_engine_with_the_wrapped_engines_attributes():
    inner = _Engine(batch_size=4, full=False)
    shared = SharedEngine(inner)
    assert isinstance(shared, Engine)
    assert (shared.model, shared.profile, shared.adapters) == ("fake", inner.profile, [])
    assert (shared.kv, shared.load_s) == (None, 0.0)


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

    def caption(name: str) -> None:
        out[name] = _texts(engine.caption([name], prompt, SAMPLING_PRESETS[name]))

    threads = [threading.Thread(target=caption, args=(name,)) for name in ("default", "deterministic")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(inner.calls) == [1, 1]
    assert out == {"default": ["caption of default"], "deterministic": ["caption of deterministic"]}


def test_batches_for_different_adapters_merge_with_each_clip_keeping_its_adapter():
    """A chunk comparing adapters names one per clip: the demo adapter's and the base model's clips share a call."""
    inner = _Engine(batch_size=8, full=True)
    per_chunk = {0: [DEMO, DEMO], 1: [BASE, BASE], 2: [DEMO, BASE]}
    results = _chunks(SharedEngine(inner), count=3, clips=2, adapters=per_chunk.get)
    assert inner.calls == [6]
    expected = [(f"{i}-{k}", adapter) for i, adapters in per_chunk.items() for k, adapter in enumerate(adapters)]
    assert sorted(inner.asked, key=lambda pair: pair[0]) == expected  # each clip with its own adapter
    assert all(results[i] == [f"caption of {i}-{k}" for k in range(2)] for i in range(3))


def test_each_prefix_is_warmed_once_for_the_adapters_and_once_for_the_base_model():
    inner = _Engine(batch_size=4, full=False)
    engine = SharedEngine(inner)
    prompt = SimpleNamespace(prefix_text="prefix")
    calls = [{}, {}, {"with_adapter": False}, {"with_adapter": False}, {}]
    threads = [threading.Thread(target=engine.warm_prefix, args=(prompt,), kwargs=kw) for kw in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    engine.warm_prefix(SimpleNamespace(prefix_text="another"), with_adapter=False)
    assert sorted(inner.warmed) == [("another", False), ("prefix", False), ("prefix", True)]
