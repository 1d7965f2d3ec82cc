"""Pure batch planning: length-bucketed batches under a padded-token budget, and which rows share a prefix.

Right padding: each row is its prompt followed by pad tokens up to the width of its batch. The graph is
causal, so in exact arithmetic a row's score does not depend on its neighbours or on how much padding
follows. Some numerics are not exact in that sense: with bf16 compute, OpenVINO's attention kernels
block the work by the padded width, and a different blocking flips bf16 roundings that a deep network
then amplifies (docs/backends.md, "Why bf16 needed a change to batching"). A session with such numerics
declares a `pad_multiple` in its limits: every
row is padded to the next multiple of it, and a batch holds rows of one width only, so a row computes
the same bits alone or in any batch.

After a shared prefix of P tokens, the attention runs over the prefix's keys and the row's: a row is padded
so that the two together reach the width its full prompt is padded to (P + width = the next multiple of
`pad_multiple` over P + its length), and so attends over as many keys, in the same blocks, as the full prompt.
Padding the row alone to a multiple left the key count P + width off the full prompt's, and one rounding in
one layer's attention flipped on some rows (docs/backends.md, "Why bf16 needed a change to batching").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .backends.protocols import padded_width


def split_long(lengths: Sequence[int], rows: list[int], *, limit: int) -> tuple[list[int], list[int]]:
    """`rows` (with their `lengths`) split into those that fit in one piece of `limit` tokens and the longer ones."""
    short = [row for row, length in zip(rows, lengths) if length <= limit]
    return short, [row for row, length in zip(rows, lengths) if length > limit]


def plan_batches(
    lengths: Sequence[int],
    *,
    max_batch_tokens: int,
    max_batch_size: int,
    pad_multiple: int = 1,
    context: int = 0,
    max_batch_context: int | None = None,
) -> list[list[int]]:
    """Group pair indices into batches whose padded size (rows x width) stays within the budget.

    Longest first, so that a batch too large for memory fails at once rather than at the end. A
    single pair longer than the budget gets a batch of its own. With `pad_multiple` > 1 a batch holds
    rows of one padded width only (see the module's docstring).

    Args:
        lengths: each pair's tokens (after the shared prefix, if any).
        max_batch_tokens: padded tokens (rows x width) per batch at most.
        max_batch_size: rows per batch at most.
        pad_multiple: the width granularity (of context + width); above 1, one padded width per batch.
        context: the tokens every row attends to before its own (a shared prefix's length).
        max_batch_context: the keys and values a batch attends over, rows x (context + width), at most
            (None: no such bound). An engine whose kept memory grows with them sets it.

    Returns:
        Batches of pair indices, longest first.
    """
    widths = [padded_width(n, pad_multiple, context) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (-widths[i], -lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current:
            new_width = max(width, widths[i])
            other_bucket = pad_multiple > 1 and widths[i] != width
            rows = len(current) + 1
            full = rows > max_batch_size or rows * new_width > max_batch_tokens
            if max_batch_context is not None:
                full = full or rows * (context + new_width) > max_batch_context
            if other_bucket or full:
                batches.append(current)
                current, width = [], 0
        current.append(i)
        width = max(width, widths[i])
    if current:
        batches.append(current)
    return batches


def pad_batch(
    rows: Sequence[Sequence[int]], *, pad_id: int, pad_multiple: int = 1, context: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad `rows` into an int64 (batch, width) matrix, width the longest row's padded_width after
    `context` tokens; also return each row's length."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = padded_width(int(lengths.max()), pad_multiple, context)
    matrix = np.full((len(rows), width), pad_id, dtype=np.int64)
    for row, ids in zip(matrix, rows):
        row[: len(ids)] = ids
    return matrix, lengths


def plan_shared_prefixes(
    input_ids: Sequence[Sequence[int]], document_starts: Sequence[int], chat_prefix: Sequence[int]
) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Which rows compute a shared prefix once: (prefix length, row indices) for each prefix that two or more
    rows share, and the rows that share none (they run in full).

    document_starts[i]: the tokens of row i before its document (EncodedPairs.document_starts): rows whose
    prefixes are equal share them, and as many tokens after as they all agree on. `chat_prefix`: the template's
    chat prefix, which rows of different queries still share.
    """
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, (ids, n) in enumerate(zip(input_ids, document_starts)):
        n = min(int(n), len(ids) - 1)  # at least one token after the prefix carries the score
        by_prefix.setdefault(tuple(ids[:n]) if n > 0 else (), []).append(i)
    groups = [
        (common_length([input_ids[i] for i in rows], len(prefix)), rows)
        for prefix, rows in by_prefix.items()
        if prefix and len(rows) > 1
    ]
    alone = sorted(i for prefix, rows in by_prefix.items() if not (prefix and len(rows) > 1) for i in rows)
    chat_rows = [
        i
        for i in alone
        if 0 < len(chat_prefix) <= document_starts[i] < len(input_ids[i])
        and list(input_ids[i][: len(chat_prefix)]) == list(chat_prefix)
    ]
    if len(chat_rows) > 1:
        groups.append((common_length([input_ids[i] for i in chat_rows], len(chat_prefix)), chat_rows))
        alone = sorted(set(alone) - set(chat_rows))
    return groups, alone


def common_length(rows: Sequence[Sequence[int]], start: int) -> int:
    """How far rows that agree on their first `start` tokens go on agreeing (the separator and "document:"
    that follow every query, or a boilerplate chat_prefix), keeping one token of each row to score."""
    limit = min(len(r) for r in rows) - 1
    n = start
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n
