"""Prometheus metrics of one caption worker (README "Monitoring"); evaluation's metrics are elsewhere (METEOR).

Every worker process keeps its own registry and, when `metrics_port` is set, serves it over HTTP
at `/metrics`. Counters only go up for the life of the process; use `rate()` / `increase()` in
PromQL. The gauges (`*_per_second` of the last chunk, the prefix cache hit ratio since start) are
there for a glance without a query language. The queue depth is read from the broker at each scrape,
so it is current even while the worker is busy with a long chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from captioner.records import CaptionRecord

log = logging.getLogger(__name__)

# Seconds to decode the sampled frames of one clip: fractions of a second for small clips, seconds
# for 1080p at camera bitrates, up to the decoder's timeout for clips that hang.
DECODE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
CHUNK_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600)
# Clips per generate() call: from a lone clip to the GPU tiers' ceiling (max_clips 64) and beyond.
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class QueueDepth(Collector):
    """`captioner_queue_depth`: messages waiting in the worker's Redis queue, read at scrape time."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client, self.queue = client, queue

    def _keys(self) -> list[str]:
        # kombu's Redis transport keeps each priority level of a queue in its own list:
        # the queue's own name for priority 0, NAME + "\x06\x16" + N for the others.
        return [self.queue] + [f"{self.queue}\x06\x16{n}" for n in range(1, 10)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per scrape; none if the broker cannot be reached (the scrape itself still works)."""
        family = GaugeMetricFamily(
            "captioner_queue_depth", "Chunks waiting in this worker's queue (not yet taken by any worker).",
            labels=["queue"],
        )  # fmt: skip
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in self._keys():
                pipe.llen(key)
            family.add_metric([self.queue], float(sum(pipe.execute())))
        except Exception as exc:  # noqa: BLE001 - a broker outage must not break /metrics
            log.debug("queue depth unavailable: %s", exc)
            return
        yield family


class WorkerMetrics:
    """The metrics of one worker process; fed by its chunks (`captioner.service.chunk`)."""

    def __init__(
        self, queue: str, broker: redis.Redis | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.clips = Counter(
            "captioner_clips", "Clips handled by this worker: ok, failed, or skipped (captioned before).",
            ["status"], registry=r,
        )  # fmt: skip
        for status in ("ok", "failed", "skipped"):
            self.clips.labels(status)  # present (at 0) from the first scrape, so rate() works at once
        self.output_tokens = Counter("captioner_output_tokens", "Caption tokens generated.", registry=r)
        self.prompt_tokens = Counter("captioner_prompt_tokens", "Prompt tokens of captioned clips.", registry=r)
        self.cached_tokens = Counter(
            "captioner_cached_prompt_tokens", "Prompt tokens served from vLLM's prefix cache.", registry=r
        )
        self.hit_ratio = Gauge(
            "captioner_prefix_cache_hit_ratio",
            "Cached prompt tokens / prompt tokens, over the clips this worker captioned since it started.",
            registry=r,
        )
        self.tokens_per_s = Gauge(
            "captioner_output_tokens_per_second", "Output tokens per second over the last chunk.", registry=r
        )
        self.videos_per_s = Gauge("captioner_videos_per_second", "Clips per second over the last chunk.", registry=r)
        self.decode = Histogram(
            "captioner_decode_seconds", "Seconds to decode one clip's sampled frames.", buckets=DECODE_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.chunks = Counter("captioner_chunks", "Chunks finished by this worker.", registry=r)
        self.chunk_seconds = Histogram(
            "captioner_chunk_seconds", "Seconds to caption one chunk.", buckets=CHUNK_BUCKETS, registry=r
        )
        self.engine_loads = Counter(
            "captioner_engine_loads", "vLLM engines built (1 + restarts after an engine died).", registry=r
        )
        self.engine_load_seconds = Gauge(
            "captioner_engine_load_seconds", "Seconds the last engine took to load.", registry=r
        )
        self.kv_cache_tokens = Gauge(
            "captioner_kv_cache_tokens", "KV cache of the loaded engine in tokens: computed from memory, or "
            "reported by vLLM.", ["source"], registry=r,
        )  # fmt: skip
        self.clips_fit = Gauge(
            "captioner_clips_fit", "Clips of the worker's frames the KV cache holds at once: computed, or from "
            "vLLM's figure.", ["source"], registry=r,
        )  # fmt: skip
        self.max_num_seqs = Gauge("captioner_max_num_seqs", "Sequences the loaded engine runs at once.", registry=r)
        self.batch_size = Gauge(
            "captioner_batch_size", "Clips the worker's own plan hands to one generate() call.", registry=r
        )
        self.batch_clips = Histogram(
            "captioner_batch_clips", "Clips actually handed to one generate() call.", buckets=BATCH_BUCKETS,
            registry=r,
        )  # fmt: skip
        if broker is not None:
            r.register(QueueDepth(broker, queue))
        self._server: Any = None
        self._prompt = self._cached = 0  # the counters' totals (prometheus_client has no public read)

    def record(self, record: CaptionRecord) -> None:
        """Count one finished clip."""
        self.clips.labels(record.status).inc()
        if record.decode_s is not None:
            self.decode.observe(record.decode_s)
        if record.status != "ok":
            return
        self.output_tokens.inc(record.output_tokens)
        self.prompt_tokens.inc(record.prompt_tokens)
        self.cached_tokens.inc(record.cached_tokens)
        self._prompt += record.prompt_tokens
        self._cached += record.cached_tokens
        if self._prompt:
            self.hit_ratio.set(self._cached / self._prompt)

    def chunk(self, captioned: int, skipped: int, output_tokens: int, seconds: float) -> None:
        """Count one finished chunk: `captioned` clips (ok + failed) and `output_tokens` in `seconds`."""
        self.chunks.inc()
        self.chunk_seconds.observe(seconds)
        self.clips.labels("skipped").inc(skipped)
        if captioned and seconds > 0:
            self.tokens_per_s.set(output_tokens / seconds)
            self.videos_per_s.set(captioned / seconds)

    def engine_loaded(self, seconds: float) -> None:
        """Count one engine build."""
        self.engine_loads.inc()
        self.engine_load_seconds.set(seconds)

    def engine_sized(self, concurrency: dict[str, Any]) -> None:
        """Set the concurrency gauges from a `sizing.concurrency` record of the loaded engine."""
        for source in ("computed", "vllm"):
            for gauge, key in ((self.kv_cache_tokens, f"{source}_kv_tokens"), (self.clips_fit, f"{source}_clips_fit")):
                if concurrency.get(key) is not None:
                    gauge.labels(source).set(concurrency[key])
        self.max_num_seqs.set(concurrency["max_num_seqs"])
        self.batch_size.set(concurrency["batch_size"])

    def batch(self, clips: int) -> None:
        """Count one batch handed to the engine."""
        self.batch_clips.observe(clips)

    def serve(self, port: int, host: str) -> None:
        """Serve `/metrics` on host:port from a background thread (once per process)."""
        if self._server is None:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
            log.info("metrics on http://%s:%d/metrics", host, port)
