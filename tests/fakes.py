"""Fake score sessions: scoring, batching and scheduling logic tested in milliseconds, no model needed."""

from __future__ import annotations

import numpy as np

from rerank_onnx.backends import EngineLimits, Prefix, ScoreBatch


class FakeSession:
    """What every score session has besides `score`: default limits, no prefix, no document starts, and nothing
    to give back."""

    limits = EngineLimits()
    shares_prefix = False
    needs_document_starts = False

    def prefill(self, input_ids: np.ndarray, after: Prefix | None = None) -> Prefix:
        raise AssertionError("the scorer asked a session without a past for a prefix")

    def release_memory(self) -> None:
        pass


def full_score(ids: list[int]) -> float:
    """A score that depends on every token and its position, as a causal model's does."""
    return float(sum((i + 1) * t for i, t in enumerate(ids)) % 100_003) + len(ids) / 1000


class PrefixFake(FakeSession):
    """Score depends on every token and its position; a Prefix carries its token ids in `keys`."""

    shares_prefix = True

    def __init__(self) -> None:
        self.prefills: list[int] = []
        self.full_rows = 0
        self.after_rows = 0
        self.whole_rows = 0

    def score(self, batch: ScoreBatch) -> np.ndarray:
        assert batch.document_starts is None
        shared: list[int] = []
        if batch.prefix is None:
            self.full_rows += len(batch.lengths)
            self.whole_rows += len(batch.lengths) if batch.whole_rows else 0
        else:
            assert not batch.whole_rows
            self.after_rows += len(batch.lengths)
            shared = [int(t) for t in batch.prefix.keys.reshape(-1)]
        rows = zip(batch.input_ids, batch.lengths)
        return np.array([full_score(shared + list(row[:n])) for row, n in rows], dtype=np.float32)

    def prefill(self, input_ids: np.ndarray, after: Prefix | None = None) -> Prefix:
        assert input_ids.shape[0] == 1
        self.prefills.append(input_ids.shape[1])
        ids = input_ids.astype(np.float32).reshape(1, 1, -1, 1)
        if after is not None:
            ids = np.concatenate([after.keys, ids], axis=2)
        return Prefix(keys=ids, values=ids)
