"""What a captioning run counts, and the `summary.json` it becomes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from captioner.planning import Plan
from captioner.records import CaptionRecord
from captioner.sizing import concurrency


@dataclass
class CaptionStats:
    """Counters for one run (or one chunk), turned into `summary.json`."""

    videos: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    ignored: int = 0  # hidden and AppleDouble files left out by discovery
    settling: int = 0  # files still being written, left for the next run
    windowed: int = 0  # files captioned window by window (`plan.windows`), done or not
    windows: set[tuple[str, int]] = field(default_factory=set)  # (video, window index) captioned in this run
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    shareable_prefix_tokens: int = 0
    engine_load_s: float = 0.0
    batches: int = 0  # generate() calls, and the clips they carried
    batch_clips: int = 0
    batch_max: int = 0
    concurrency: dict[str, Any] | None = None  # `engine_concurrency`, once the engine is known
    started: float = field(default_factory=time.perf_counter)

    def add_batch(self, clips: int) -> None:
        """Count one batch handed to the engine."""
        self.batches += 1
        self.batch_clips += clips
        self.batch_max = max(self.batch_max, clips)

    def add(self, record: CaptionRecord, shareable: int) -> None:
        """Count one finished clip."""
        if record.window is not None:
            self.windows.add((record.video, record.window["index"]))  # once, whatever the adapters
        if record.status == "ok":
            self.ok += 1
            self.output_tokens += record.output_tokens
            self.prompt_tokens += record.prompt_tokens
            self.cached_tokens += record.cached_tokens
            self.shareable_prefix_tokens += shareable
        else:
            self.failed += 1

    def summary(self, plan: Plan) -> dict[str, Any]:
        """The figures of `summary.json`."""
        seconds = time.perf_counter() - self.started
        captioned = self.ok + self.failed
        return {
            "videos": self.videos,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "ignored": self.ignored,
            "settling": self.settling,
            "windowed": self.windowed,
            "windows": len(self.windows),
            "seconds": round(seconds, 3),
            "engine_load_s": round(self.engine_load_s, 3),
            "videos_per_s": round(captioned / seconds, 4) if captioned else 0.0,
            "output_tokens_per_s": round(self.output_tokens / seconds, 2) if captioned else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            # Cached tokens over the prompt prefix the cache can serve (whole KV blocks before the video).
            "prefix_cache_hit_ratio": (
                round(self.cached_tokens / self.shareable_prefix_tokens, 4) if self.shareable_prefix_tokens else None
            ),
            # Clips in flight: computed from memory, reported by vLLM, and the batches actually handed over.
            "concurrency": {
                **(self.concurrency or concurrency(plan.sizing, None)),
                "batches": self.batches,
                "batch_max": self.batch_max,
                "batch_mean": round(self.batch_clips / self.batches, 2) if self.batches else None,
            },
            **plan.versions(),
        }
