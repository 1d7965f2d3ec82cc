"""Cross-request coalescing with a fake session: milliseconds, no model."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeSession

from rerank_onnx import Reranker
from rerank_onnx.backends import ScoreBatch
from rerank_onnx.errors import QueueFullError
from rerank_onnx.metrics import Metrics
from rerank_onnx.scheduler import Scheduler


class SlowSumSession(FakeSession):
    """score = sum of a row's real ids; each run takes a little time and is recorded."""

    def __init__(self, delay: float = 0.02, fail: bool = False) -> None:
        self.rows_per_run: list[int] = []
        self.delay = delay
        self.fail = fail
        self.release = threading.Event()
        self.release.set()

    def score(self, batch: ScoreBatch) -> np.ndarray:
        input_ids, lengths = batch.input_ids, batch.lengths
        self.release.wait()
        if self.fail:
            raise RuntimeError("boom")
        self.rows_per_run.append(len(lengths))
        threading.Event().wait(self.delay)
        return np.array([row[:n].sum() for row, n in zip(input_ids, lengths)], dtype=np.float32)


def _requests(n: int) -> list[list[list[int]]]:
    rng = np.random.default_rng(3)
    return [[list(rng.integers(1, 1000, rng.integers(3, 40))) for _ in range(rng.integers(1, 6))] for _ in range(n)]


@pytest.mark.parametrize("coalesce_ms", [0.0, 20.0])
def test_each_request_gets_its_own_scores(fp32_artifact: Path, coalesce_ms: float) -> None:
    session = SlowSumSession(delay=0)
    session.release.clear()  # the worker holds its first run until every request is queued
    scheduler = Scheduler(
        Reranker(fp32_artifact, session=session).model, Metrics(), coalesce_ms=coalesce_ms, max_queue_pairs=4096
    )
    requests = _requests(20)

    async def main():
        tasks = [asyncio.ensure_future(scheduler.score(r)) for r in requests]
        await asyncio.sleep(0)  # one turn of the loop: every task has enqueued its job (score() enqueues at once)
        session.release.set()
        return await asyncio.gather(*tasks)

    try:
        answers = asyncio.run(main())
    finally:
        scheduler.close()
    for ids, scores in zip(requests, answers):
        np.testing.assert_array_equal(scores, [sum(row) for row in ids])
    total = sum(len(r) for r in requests)
    assert sum(session.rows_per_run) == total
    if coalesce_ms:  # the first request ran alone; the 19 queued behind it share runs
        assert len(session.rows_per_run) < len(requests), "concurrent requests should share runs"
    else:
        assert len(session.rows_per_run) >= len(requests), "without coalescing each request runs on its own"


def test_full_queue_answers_429_and_errors_reach_every_waiter(fp32_artifact: Path) -> None:
    session = SlowSumSession()
    session.release.clear()  # hold the worker so the queue fills
    scheduler = Scheduler(Reranker(fp32_artifact, session=session).model, Metrics(), coalesce_ms=0, max_queue_pairs=4)

    async def main():
        first = asyncio.ensure_future(scheduler.score([[1, 2], [3], [4]]))
        await asyncio.sleep(0)  # one turn of the loop: the first request is queued
        with pytest.raises(QueueFullError, match="3 pairs already queued"):
            await scheduler.score([[5], [6]])
        session.release.set()
        return await first

    try:
        np.testing.assert_array_equal(asyncio.run(main()), [3, 3, 4])
    finally:
        scheduler.close()

    failing = Scheduler(
        Reranker(fp32_artifact, session=SlowSumSession(fail=True)).model, Metrics(), coalesce_ms=5, max_queue_pairs=4096
    )

    async def both():
        return await asyncio.gather(failing.score([[1]]), failing.score([[2]]), return_exceptions=True)

    try:
        results = asyncio.run(both())
    finally:
        failing.close()
    assert all(isinstance(r, RuntimeError) for r in results)


def test_close_finishes_queued_work(fp32_artifact: Path) -> None:
    session = SlowSumSession(delay=0.05)
    scheduler = Scheduler(
        Reranker(fp32_artifact, session=session).model, Metrics(), coalesce_ms=0, max_queue_pairs=4096
    )

    async def main():
        futures = [asyncio.ensure_future(scheduler.score([[i, i]])) for i in range(5)]
        await asyncio.sleep(0)  # one turn of the loop: all five are queued
        await asyncio.to_thread(scheduler.close)
        return await asyncio.gather(*futures)

    assert [float(s[0]) for s in asyncio.run(main())] == [0, 2, 4, 6, 8]
