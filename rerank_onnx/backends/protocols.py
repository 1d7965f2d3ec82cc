"""The contract between the scorer and the engines: one score session, the batch it scores, its limits, and
the Engine behind it.

The scorer (scorer.py) hands a `ScoreSession` one `ScoreBatch` at a time: right-padded ids and lengths, and
optionally the shared prefix the rows continue and where each row's document starts. What a session can do
beyond plain rows it says in two flags (`shares_prefix`, `needs_document_starts`) and in its `EngineLimits`, so
the scorer asks, never checks types. Nothing here imports from the layers above.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EngineLimits:
    """How a session wants its work cut: what `max_batch_tokens="auto"` and `slice_tokens="auto"` resolve to.

    Each engine sets its own (onnxruntime.LIMITS, openvino.LIMITS); the reasons are in docs/memory.md.

    Args:
        batch_tokens: padded tokens per run.
        batch_context: keys and values one run attends over, rows x (shared prefix + width), where the memory the
            engine keeps grows with them; None where it does not.
        slice_tokens: the slice a long prompt runs in, each attending to the slices before.
        whole_row_tokens: rows longer than this run alone and whole on the session's bounded-memory path
            (`ScoreBatch.whole_rows`); None: long rows run in slices.
        pad_multiple: 1 when a row's result does not depend on how far its batch pads it; otherwise the width
            granularity rows are padded to and bucketed by (batching.py).
    """

    batch_tokens: int = 4096
    batch_context: int | None = None
    slice_tokens: int = 1024
    whole_row_tokens: int | None = None
    pad_multiple: int = 1


def padded_width(length: int, pad_multiple: int = 1, context: int = 0) -> int:
    """The width a row of `length` tokens is padded to after `context` tokens (a shared prefix): context + width
    is the next multiple of `pad_multiple` (`EngineLimits.pad_multiple`; batching.py plans batches by it)."""
    return -(-(context + length) // pad_multiple) * pad_multiple - context


@dataclass(frozen=True)
class Prefix:
    """Keys and values of a token prefix that several prompts share: float32 [layers, kv_heads, tokens, head_dim]."""

    keys: np.ndarray
    values: np.ndarray

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])


@dataclass(frozen=True)
class ScoreBatch:
    """Rows for one run of a session.

    Args:
        input_ids: (rows, width) int64 right-padded token ids.
        lengths: (rows,) int64: each row's tokens (those after `prefix` when there is one).
        prefix: keys and values of the tokens every row continues (only for a session that `shares_prefix`);
            None: rows start at their first token.
        document_starts: (rows,) int64: each row's first document token (its token type 1), for a session that
            `needs_document_starts`; None elsewhere.
        whole_rows: the rows are longer than `limits.whole_row_tokens` and run alone and whole, from their
            first token, on the session's bounded-memory path (never with a prefix).
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    prefix: Prefix | None = None
    document_starts: np.ndarray | None = None
    whole_rows: bool = False


@runtime_checkable
class ScoreSession(Protocol):
    """What the scorer drives: one score per row of a batch, the session's limits and abilities, and a hook to
    give back memory.

    Attributes:
        limits: how the session wants its work cut (batch budgets, slices, whole rows, padding).
        shares_prefix: `prefill` works and batches may carry a `prefix` (graphs with past keys and values).
        needs_document_starts: batches must carry `document_starts` (a pair encoder with token types).
    """

    limits: EngineLimits
    shares_prefix: bool
    needs_document_starts: bool

    def score(self, batch: ScoreBatch) -> np.ndarray:
        """The batch's rows -> (rows,) float32 scores."""
        ...

    def prefill(self, input_ids: np.ndarray, after: Prefix | None = None) -> Prefix:
        """(1, tokens) int64 ids -> the keys and values of `after`'s tokens followed by these (only where
        `shares_prefix`)."""
        ...

    def release_memory(self) -> None:
        """Give back working memory that this call's runs grew past what the session keeps on purpose (called
        at the end of every scoring call; a no-op where nothing grew)."""
        ...


class Engine(Protocol):
    """One compiled score graph on one inference engine: named numpy feeds in, named outputs out."""

    threads: int
    limits: EngineLimits

    def input_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Each graph input's shape; None where a dimension is dynamic."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run the graph; return the named outputs as arrays the caller may keep."""
        ...

    def run_whole(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores of rows run whole, with no past, on the engine's bounded-memory path; only called where
        `limits.whole_row_tokens` is set."""
        ...

    def release_memory(self) -> None:
        """Give back working memory the engine keeps between runs, where the runs since the last call grew
        it past what the engine keeps on purpose (called at the end of every scoring call; a no-op otherwise)."""
        ...
