"""The server's Prometheus metrics, on prometheus_client (thread safe, label escaping, and the process
RSS/CPU collectors a CPU server wants), in a registry of each app's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Request, batch and queue metrics of one server; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self._requests = Counter(
            "rerank_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=self.registry
        )
        self._latency = Histogram(
            "rerank_request_seconds",
            "Request latency, parse to response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batch_pairs = Histogram(
            "rerank_batch_pairs",
            "Pairs per inference run (after coalescing requests).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._tokens = Counter("rerank_tokens", "Prompt tokens scored.", registry=self.registry)
        self._pairs = Counter("rerank_pairs", "Query-document pairs scored.", registry=self.registry)
        self._queue = Gauge("rerank_queue_pairs", "Pairs waiting for inference.", registry=self.registry)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request (every status, 5xx included) and its latency."""
        self._requests.labels(endpoint=endpoint, status=str(status)).inc()
        self._latency.labels(endpoint=endpoint).observe(seconds)

    def batch(self, pairs: int, tokens: int) -> None:
        """Count one inference run of `pairs` pairs and `tokens` prompt tokens."""
        self._batch_pairs.observe(pairs)
        self._pairs.inc(pairs)
        self._tokens.inc(tokens)

    def queue(self, pairs: int) -> None:
        """Set the number of pairs waiting for inference."""
        self._queue.set(pairs)

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry).decode("utf-8")
