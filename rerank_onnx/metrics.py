"""A few Prometheus metrics in the text exposition format, without a client library."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batch_pairs = _Histogram(BATCH_BUCKETS)
        self.tokens = 0
        self.pairs = 0
        self.queue_pairs = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, pairs: int, tokens: int) -> None:
        with self._lock:
            self.batch_pairs.observe(pairs)
            self.pairs += pairs
            self.tokens += tokens

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP rerank_requests_total HTTP requests by endpoint and status.",
                "# TYPE rerank_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'rerank_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            lines += [
                "# HELP rerank_request_seconds Request latency, parse to response.",
                "# TYPE rerank_request_seconds histogram",
            ]
            for endpoint, h in sorted(self.latency.items()):
                lines += _histogram_lines("rerank_request_seconds", h, f'endpoint="{endpoint}",')
            lines += [
                "# HELP rerank_batch_pairs Pairs per inference run (after coalescing requests).",
                "# TYPE rerank_batch_pairs histogram",
                *_histogram_lines("rerank_batch_pairs", self.batch_pairs, ""),
                "# HELP rerank_tokens_total Prompt tokens scored.",
                "# TYPE rerank_tokens_total counter",
                f"rerank_tokens_total {self.tokens}",
                "# HELP rerank_pairs_total Query-document pairs scored.",
                "# TYPE rerank_pairs_total counter",
                f"rerank_pairs_total {self.pairs}",
                "# HELP rerank_queue_pairs Pairs waiting for inference.",
                "# TYPE rerank_queue_pairs gauge",
                f"rerank_queue_pairs {self.queue_pairs}",
            ]
        return "\n".join(lines) + "\n"


def _histogram_lines(name: str, h: _Histogram, labels: str) -> list[str]:
    out = [f'{name}_bucket{{{labels}le="{bound:g}"}} {count}' for bound, count in zip(h.buckets, h.counts)]
    out.append(f'{name}_bucket{{{labels}le="+Inf"}} {h.count}')
    label_block = f"{{{labels.rstrip(',')}}}" if labels else ""
    out.append(f"{name}_sum{label_block} {h.total:.6f}")
    out.append(f"{name}_count{label_block} {h.count}")
    return out
