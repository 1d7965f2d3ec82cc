"""Cross-request batching: requests that arrive together share length-bucketed inference batches.

One inference thread owns the session (onnxruntime already uses every core inside a run), so the
event loop never blocks on the model. Each request's pairs still come back as one result.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import QueueFullError
from .metrics import Metrics
from .model import LoadedModel
from .settings import check_setting


@dataclass
class _Job:
    input_ids: list[list[int]]
    document_starts: list[int] | None
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


class Scheduler:
    """coalesce_ms: how long the worker waits for more requests before running (0: no coalescing).
    max_coalesced_pairs: at most this many pairs, from several requests, per inference run.
    max_queue_pairs: more pairs than this waiting -> new requests get 429."""

    def __init__(
        self,
        model: LoadedModel,
        metrics: Metrics,
        *,
        coalesce_ms: float,
        max_coalesced_pairs: int = 256,
        max_queue_pairs: int,
    ) -> None:
        self._model = model
        self._metrics = metrics
        check_setting("coalesce_ms", coalesce_ms)  # an unbounded wait (inf) would stall the inference thread
        self._coalesce_wait = coalesce_ms / 1000.0
        self._max_pairs = max_coalesced_pairs
        self._max_queue = max_queue_pairs
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="rerank-inference", daemon=True)
        self._thread.start()

    async def score(self, input_ids: list[list[int]], document_starts: list[int] | None = None) -> np.ndarray:
        if not input_ids:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            if self._pending and self._pending + len(input_ids) > self._max_queue:
                raise QueueFullError(
                    f"server busy: {self._pending} pairs already queued (limit {self._max_queue}); retry later"
                )
            self._pending += len(input_ids)
            self._metrics.queue(self._pending)
        loop = asyncio.get_running_loop()
        job = _Job(input_ids, document_starts, loop.create_future(), loop)
        self._queue.put(job)
        scores: np.ndarray = await job.future
        return scores

    def close(self) -> None:
        """Finish every queued job, then stop the worker."""
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            stop = self._collect(jobs)
            self._run(jobs)
            if stop:
                return

    def _collect(self, jobs: list[_Job]) -> bool:
        """Add jobs that arrive within the coalescing wait, up to the pair budget. True if a stop was seen."""
        if self._coalesce_wait <= 0:
            return False
        deadline = time.perf_counter() + self._coalesce_wait
        pairs = len(jobs[0].input_ids)
        while pairs < self._max_pairs:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            jobs.append(job)
            pairs += len(job.input_ids)
        return False

    def _run(self, jobs: list[_Job]) -> None:
        combined = [ids for job in jobs for ids in job.input_ids]
        # a job without prefix lengths shares nothing (0); jobs of one query share their prefix across requests
        prefixes = [n for job in jobs for n in (job.document_starts or [0] * len(job.input_ids))]
        scores = np.zeros(0, dtype=np.float32)
        error: BaseException | None = None
        try:
            scores = self._model.score_encoded(combined, document_starts=prefixes)
        except BaseException as exc:  # delivered to every waiting request rather than killing the thread
            error = exc
        self._metrics.batch(len(combined), sum(len(ids) for ids in combined))
        start = 0
        for job in jobs:
            n = len(job.input_ids)
            with self._lock:
                self._pending -= n
                self._metrics.queue(self._pending)
            if error is not None:
                job.loop.call_soon_threadsafe(_set_exception, job.future, error)
            else:
                job.loop.call_soon_threadsafe(_set_result, job.future, scores[start : start + n].copy())
            start += n


def _set_result(future: asyncio.Future[np.ndarray], value: np.ndarray) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[np.ndarray], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
