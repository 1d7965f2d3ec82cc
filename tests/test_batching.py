"""Batch planning, padding, order restoration and batch invariance."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeSession

from rerank_onnx import Reranker
from rerank_onnx.backends import ScoreBatch
from rerank_onnx.batching import pad_batch, plan_batches


class RecordingSession(FakeSession):
    """Fake graph: a row's score is a function of its real tokens only; records the batches it saw."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def score(self, batch: ScoreBatch) -> np.ndarray:
        input_ids, lengths = batch.input_ids, batch.lengths
        assert input_ids.dtype == np.int64 and lengths.dtype == np.int64
        assert input_ids.shape[1] == lengths.max(), "a batch is padded only to its own longest row"
        self.batches.append(input_ids.shape)
        return np.array(
            [float(row[:n].sum() % 9973) + n / 1000 for row, n in zip(input_ids, lengths)], dtype=np.float32
        )


def test_plan_covers_each_pair_once_and_respects_budgets() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 900) for _ in range(500)]
    batches = plan_batches(lengths, max_batch_tokens=2048, max_batch_size=16)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(500))
    for batch in batches:
        assert len(batch) <= 16
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 2048


def test_plan_groups_similar_lengths_and_isolates_oversized_pairs() -> None:
    lengths = [10, 5000, 12, 11, 10, 3000]
    batches = plan_batches(lengths, max_batch_tokens=1000, max_batch_size=8)
    assert batches[0] == [1] and batches[1] == [5]  # longer than the budget: alone, longest first
    assert sorted(batches[2]) == [0, 2, 3, 4]


def test_plan_bounds_what_a_batch_attends_over_after_a_shared_prefix() -> None:
    lengths = [60] * 64  # 64 short documents after a 500-token query
    unbounded = plan_batches(lengths, max_batch_tokens=1024, max_batch_size=64, context=500)
    assert max(len(b) for b in unbounded) == 17  # the token budget alone: 17 x 60 = 1,020
    bounded = plan_batches(lengths, max_batch_tokens=1024, max_batch_size=64, context=500, max_batch_context=4096)
    assert sorted(i for b in bounded for i in b) == list(range(64))
    assert all(len(b) * (500 + 60) <= 4096 for b in bounded) and max(len(b) for b in bounded) == 7
    # a row that alone attends over more than the bound still gets a batch of its own
    assert plan_batches([60, 60], max_batch_tokens=1024, max_batch_size=8, context=5000, max_batch_context=4096) == [
        [0],
        [1],
    ]


def test_pad_batch_right_pads() -> None:
    matrix, lengths = pad_batch([[1, 2, 3], [4]], pad_id=0)
    assert matrix.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert lengths.tolist() == [3, 1]


def test_scores_come_back_in_input_order(fp32_artifact: Path) -> None:
    session = RecordingSession()
    reranker = Reranker(fp32_artifact, session=session, max_batch_tokens=400, max_batch_size=3)
    documents = ["x " * n for n in (50, 1, 30, 2, 80, 5, 0, 40)]
    queries = ["q"] * len(documents)
    scores = reranker.predict(queries, documents)
    encoded = reranker.model.encode(queries, documents).input_ids
    expected = [float(sum(ids) % 9973) + len(ids) / 1000 for ids in encoded]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert len(session.batches) >= 3  # the budget forced several batches
    assert all(rows <= 3 for rows, _ in session.batches)


def test_rank_orders_by_score_then_index_and_applies_top_k(fp32_artifact: Path) -> None:
    class Fixed(FakeSession):
        def score(self, batch: ScoreBatch) -> np.ndarray:
            lengths = batch.lengths
            # score by document length bucket: ties on purpose
            return (lengths % 3).astype(np.float32)

    reranker = Reranker(fp32_artifact, session=Fixed())
    documents = ["a", "a b", "a b c", "a", "a b", "a b c"]
    results = reranker.rank("q", documents)
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    for a, b in itertools.pairwise(results):
        if a.score == b.score:
            assert a.index < b.index
    top = reranker.rank("q", documents, top_k=2, return_documents=False)
    assert [r.index for r in top] == [r.index for r in results[:2]]
    assert all(r.document is None for r in top)
    unsorted = reranker.rank("q", documents, top_k=3, sort=False)
    assert [r.index for r in unsorted] == sorted(r.index for r in results[:3])
    assert len(reranker.rank("q", documents, top_k=100)) == len(documents)


@pytest.mark.parametrize("budget,size", [(64, 1), (512, 4), (100_000, 64)])
def test_fp32_score_does_not_depend_on_the_batch(fp32_artifact: Path, fp32_reranker: Reranker, budget, size) -> None:
    rng = random.Random(1)
    words = ["cat", "dog", "river", "bank", "money", "fish", "tree", "sun", "¿qué?", "猫", "🐟"]
    documents = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 60))) for _ in range(24)]
    queries = ["where do fish live?"] * len(documents)
    alone = np.array([fp32_reranker.predict([q], [d])[0] for q, d in zip(queries, documents)])
    batched = Reranker(fp32_artifact, max_batch_tokens=budget, max_batch_size=size).predict(queries, documents)
    np.testing.assert_allclose(batched, alone, atol=1e-4, rtol=0)
