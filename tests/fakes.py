"""Fake score sessions: scoring, batching and scheduling logic tested in milliseconds, no model needed."""

from __future__ import annotations

import numpy as np

from rerank_onnx.backends import EngineLimits, Prefix


class FakeSession:
    """What every score session has besides `run`: default limits, and nothing to give back."""

    limits = EngineLimits()

    def release_memory(self) -> None:
        pass


def full_score(ids: list[int]) -> float:
    """A score that depends on every token and its position, as a causal model's does."""
    return float(sum((i + 1) * t for i, t in enumerate(ids)) % 100_003) + len(ids) / 1000


class PrefixFake(FakeSession):
    """Score depends on every token and its position; a Prefix carries its token ids in `keys`."""

    def __init__(self) -> None:
        self.prefills: list[int] = []
        self.full_rows = 0
        self.after_rows = 0

    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        self.full_rows += len(lengths)
        return np.array([full_score(list(row[:n])) for row, n in zip(input_ids, lengths)], dtype=np.float32)

    def run_whole(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.run(input_ids, lengths)

    def prefill(self, input_ids: np.ndarray, after: Prefix | None = None) -> Prefix:
        assert input_ids.shape[0] == 1
        self.prefills.append(input_ids.shape[1])
        ids = input_ids.astype(np.float32).reshape(1, 1, -1, 1)
        if after is not None:
            ids = np.concatenate([after.keys, ids], axis=2)
        return Prefix(keys=ids, values=ids)

    def run_after(self, prefix: Prefix, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        self.after_rows += len(lengths)
        shared = [int(t) for t in prefix.keys.reshape(-1)]
        return np.array([full_score(shared + list(row[:n])) for row, n in zip(input_ids, lengths)], dtype=np.float32)
