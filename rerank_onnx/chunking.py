"""Long documents scored by windows: a document longer than its share of the prompt is cut into
overlapping windows that each fit with the query, every window is scored, and the document's score
is its best window's.

Pure planning on token counts and character offsets; template.py turns windows into prompts, so the
windows of one document share their query's prefix like any pairs of one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Windows overlap by this fraction of their length, so a passage cut by one boundary is whole in a neighbour.
OVERLAP_FRACTION = 8
DEFAULT_MAX_CHUNKS_PER_DOC = 10  # Cohere v1's default


def plan_windows(token_count: int, window: int, max_windows: int) -> tuple[list[tuple[int, int]], bool]:
    """Token ranges [start, end) of the windows that cover `token_count` tokens, and whether they cover all.

    Windows hold `window` tokens and overlap by window // OVERLAP_FRACTION; the last ends at the last token.
    At most `max_windows` are planned: the text after the last one is then left out (complete is False).
    """
    window = max(window, 1)
    if token_count <= window:
        return [(0, token_count)], True
    stride = max(window - window // OVERLAP_FRACTION, 1)
    ranges: list[tuple[int, int]] = []
    start = 0
    while len(ranges) < max_windows:
        end = min(start + window, token_count)
        ranges.append((start, end))
        if end == token_count:
            return ranges, True
        start += stride
    return ranges, False


def char_spans(ranges: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token ranges -> character spans [start, end) in the text the offsets came from."""
    return [(offsets[start][0], offsets[end - 1][1]) for start, end in ranges]


def window_spans(
    offsets: Sequence[tuple[int, int]], window: int, max_windows: int, first_end: int
) -> tuple[list[tuple[int, int]], bool]:
    """A cut document's windows as character spans, and whether they cover it.

    Args:
        offsets: the document's tokens' character offsets.
        window: tokens per window.
        max_windows: windows at most.
        first_end: where the document's truncated pair ends: the first window is that pair itself, so a
            chunked score is never below the truncated one.
    """
    ranges, complete = plan_windows(len(offsets), window, max_windows)
    spans = char_spans(ranges, offsets)
    spans[0] = (0, first_end)
    return spans, complete


def further_windows(spans: dict[int, list[tuple[int, int]]]) -> list[tuple[int, tuple[int, int]]]:
    """(pair, span) of every window after each cut document's first, pairs ascending: the rows to encode."""
    return [(pair, span) for pair in sorted(spans) for span in spans[pair][1:]]


@dataclass(frozen=True)
class Row:
    """One encoded row: its token ids, whether any of its query or document text was cut, and its prefix length
    (the tokens before its document)."""

    ids: list[int]
    truncated: bool
    prefix_length: int


def lay_out(
    first_rows: Sequence[Row],
    document_lengths: Sequence[int],
    spans: dict[int, list[tuple[int, int]]],
    further_rows: Sequence[Row],
    complete: list[bool],
) -> tuple[list[Row], Windows]:
    """The rows in pair order, and which pair and span each scores: each pair's first row (its prompt as
    encoded: the whole document, or its first window), then its further windows' rows (encoded in the order
    `further_windows` gives)."""
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
    return rows, Windows(owner=owner, spans=row_spans, counts=counts, complete=complete)


@dataclass(frozen=True)
class Windows:
    """Which pair and which part of its document each row of a windowed encoding scores.

    Rows of a pair that fit whole hold the whole document (span (0, len(document)), one window).
    """

    owner: list[int]  # per row: the pair it belongs to
    spans: list[tuple[int, int]]  # per row: the character span of its document text
    counts: list[int]  # per pair: the windows scored
    complete: list[bool]  # per pair: False when text after the last window was left out (max_chunks_per_doc)

    def fold(self, row_scores: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Per pair: the best score of its rows, and which row it was (the first of equal scores)."""
        pairs = len(self.counts)
        best = np.full(pairs, -np.inf, dtype=np.float32)
        winner = [-1] * pairs
        for row, (pair, score) in enumerate(zip(self.owner, row_scores)):
            if winner[pair] < 0 or score > best[pair]:
                best[pair], winner[pair] = score, row
        return best, winner
