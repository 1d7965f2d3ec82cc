"""Length-bucketed batches: sort pairs by length, fill batches under a padded-token budget.

Right padding: each row is its prompt followed by pad tokens up to the longest row of its own batch.
The graph is causal, so a row's score does not depend on its neighbours or on how much padding follows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_batches(lengths: Sequence[int], *, max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Group pair indices into batches whose padded size (rows x longest row) stays within the budget.

    Longest first, so that a batch too large for memory fails at once rather than at the end. A
    single pair longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current:
            new_width = max(width, lengths[i])
            if len(current) + 1 > max_batch_size or (len(current) + 1) * new_width > max_batch_tokens:
                batches.append(current)
                current, width = [], 0
        current.append(i)
        width = max(width, lengths[i])
    if current:
        batches.append(current)
    return batches


def pad_batch(rows: Sequence[Sequence[int]], *, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad `rows` into an int64 (batch, longest) matrix; also return each row's length."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    matrix = np.full((len(rows), int(lengths.max())), pad_id, dtype=np.int64)
    for row, ids in zip(matrix, rows):
        row[: len(ids)] = ids
    return matrix, lengths
