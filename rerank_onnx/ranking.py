"""The ranking tail every entry point shares (`Reranker.rank` and `predict`, the HTTP and serverless
responses, Ray batches): the scores of the scored rows -> one score per pair, a document scored by chunks
taking its best chunk's, normalized where asked, and the order results are returned in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .chunking import Chunks


@dataclass(frozen=True)
class PairScores:
    """One score per pair, with where a chunked document's score came from.

    Attributes:
        scores: float32, one per pair (normalized where `pair_scores` was given a normalization).
        spans: the winning chunk's character span [start, end) in its document; None when not chunked.
        chunks: the chunks scored per pair (1 when not chunked).
        complete: False where text after the last chunk was left out (max_chunks_per_doc).
    """

    scores: np.ndarray
    spans: list[tuple[int, int] | None]
    chunks: list[int]
    complete: list[bool]

    def order(self, top: int | None = None) -> list[int]:
        """Pair indices best first, ties by index (the reference's order), the first `top` of them (None: all)."""
        ranked = [int(i) for i in np.lexsort((np.arange(len(self.scores)), -self.scores))]
        return ranked if top is None else ranked[:top]


def pair_scores(
    row_scores: np.ndarray,
    chunks: Chunks | None,
    *,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
) -> PairScores:
    """Fold the scores of the scored rows into one per pair.

    Args:
        row_scores: one score per encoded row (EncodedPairs.input_ids).
        chunks: which pair and document span each row scores (EncodedPairs.chunks); None: one row per pair.
        normalize: applied to the pair scores (the model's normalization), or None for raw scores.

    Returns:
        The pair scores, winning spans, chunks scored and completeness.
    """
    spans: list[tuple[int, int] | None]
    if chunks is None:
        pairs = len(row_scores)
        scores, spans, counts, complete = np.asarray(row_scores), [None] * pairs, [1] * pairs, [True] * pairs
    else:
        scores, winners = chunks.fold(np.asarray(row_scores))
        spans = [chunks.spans[row] for row in winners]
        counts, complete = list(chunks.counts), list(chunks.complete)
    scores = np.asarray(scores, dtype=np.float32)
    return PairScores(normalize(scores) if normalize is not None else scores, spans, counts, complete)
