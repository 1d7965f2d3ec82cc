"""Long documents scored by chunks: a document longer than its share of the prompt is cut into
overlapping chunks that each fit with the query, every chunk is scored, and the document's score
is its best chunk's.

Pure planning on token counts and character offsets; template.py turns chunks into prompts, so the
chunks of one document share their query's prefix like any pairs of one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Chunks overlap by this fraction of their length, so a passage cut by one boundary is whole in a neighbour.
OVERLAP_FRACTION = 8
DEFAULT_MAX_CHUNKS_PER_DOC = 10  # Cohere v1's default


def plan_chunks(token_count: int, chunk: int, max_chunks: int) -> tuple[list[tuple[int, int]], bool]:
    """Token ranges [start, end) of the chunks that cover `token_count` tokens, and whether they cover all.

    Chunks hold `chunk` tokens and overlap by chunk // OVERLAP_FRACTION; the last ends at the last token.
    At most `max_chunks` are planned: the text after the last one is then left out (complete is False).
    """
    chunk = max(chunk, 1)
    if token_count <= chunk:
        return [(0, token_count)], True
    stride = max(chunk - chunk // OVERLAP_FRACTION, 1)
    ranges: list[tuple[int, int]] = []
    start = 0
    while len(ranges) < max_chunks:
        end = min(start + chunk, token_count)
        ranges.append((start, end))
        if end == token_count:
            return ranges, True
        start += stride
    return ranges, False


def char_spans(ranges: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token ranges -> character spans [start, end) in the text the offsets came from."""
    return [(offsets[start][0], offsets[end - 1][1]) for start, end in ranges]


def chunk_spans(
    offsets: Sequence[tuple[int, int]], chunk: int, max_chunks: int, first_end: int
) -> tuple[list[tuple[int, int]], bool]:
    """A cut document's chunks as character spans, and whether they cover it.

    Args:
        offsets: the document's tokens' character offsets.
        chunk: tokens per chunk.
        max_chunks: chunks at most.
        first_end: where the document's truncated pair ends: the first chunk is that pair itself, so a
            chunked score is never below the truncated one.
    """
    ranges, complete = plan_chunks(len(offsets), chunk, max_chunks)
    spans = char_spans(ranges, offsets)
    spans[0] = (0, first_end)
    return spans, complete


def further_chunks(spans: dict[int, list[tuple[int, int]]]) -> list[tuple[int, tuple[int, int]]]:
    """(pair, span) of every chunk after each cut document's first, pairs ascending: the rows to encode."""
    return [(pair, span) for pair in sorted(spans) for span in spans[pair][1:]]


@dataclass(frozen=True)
class Row:
    """One encoded row: its token ids, whether any of its query or document text was cut, and its prefix length
    (the tokens before its document)."""

    ids: list[int]
    truncated: bool
    document_start: int


def lay_out(
    first_rows: Sequence[Row],
    document_lengths: Sequence[int],
    spans: dict[int, list[tuple[int, int]]],
    further_rows: Sequence[Row],
    complete: list[bool],
) -> tuple[list[Row], Chunks]:
    """The rows in pair order, and which pair and span each scores: each pair's first row (its prompt as
    encoded: the whole document, or its first chunk), then its further chunks' rows (encoded in the order
    `further_chunks` gives)."""
    rows: list[Row] = []
    owner: list[int] = []
    row_spans: list[tuple[int, int]] = []
    further = iter(further_rows)
    for pair, first in enumerate(first_rows):
        rows.append(first)
        owner.append(pair)
        row_spans.append(spans[pair][0] if pair in spans else (0, document_lengths[pair]))
        for span in spans.get(pair, [])[1:]:
            rows.append(next(further))
            owner.append(pair)
            row_spans.append(span)
    counts = [len(spans[pair]) if pair in spans else 1 for pair in range(len(first_rows))]
    return rows, Chunks(owner=owner, spans=row_spans, counts=counts, complete=complete)


@dataclass(frozen=True)
class Chunks:
    """Which pair and which part of its document each row of a chunked encoding scores.

    Rows of a pair that fit whole hold the whole document (span (0, len(document)), one chunk).
    """

    owner: list[int]  # per row: the pair it belongs to
    spans: list[tuple[int, int]]  # per row: the character span of its document text
    counts: list[int]  # per pair: the chunks scored
    complete: list[bool]  # per pair: False when text after the last chunk was left out (max_chunks_per_doc)

    def fold(self, row_scores: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Per pair: the best score of its rows, and which row it was (the first of equal scores)."""
        pairs = len(self.counts)
        best = np.full(pairs, -np.inf, dtype=np.float32)
        winner = [-1] * pairs
        for row, (pair, score) in enumerate(zip(self.owner, row_scores)):
            if winner[pair] < 0 or score > best[pair]:
                best[pair], winner[pair] = score, row
        return best, winner
