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
