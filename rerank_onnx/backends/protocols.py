"""The contract between the scorer and the engines: score sessions, their limits, and the Engine behind them.

The scorer (scorer.py) drives a `ScoreSession`; what else a session can do is a protocol of its own that the
scorer checks for (`PrefixScoreSession`: shared prefixes and slices; `SegmentScoreSession`: pair encodings with
token types; `WholeRowScoreSession`: long rows run whole on a bounded-memory path). A session says how it wants
its work cut in its `EngineLimits`. Nothing here imports from the layers above.
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
            (`WholeRowScoreSession.run_whole`); None: long rows run in slices.
        pad_multiple: 1 when a row's result does not depend on how far its batch pads it; otherwise the width
            granularity rows are padded to and bucketed by (batching.py).
    """

    batch_tokens: int = 4096
    batch_context: int | None = None
    slice_tokens: int = 1024
    whole_row_tokens: int | None = None
    pad_multiple: int = 1


@dataclass(frozen=True)
class Prefix:
    """Keys and values of a token prefix that several prompts share: float32 [layers, kv_heads, tokens, head_dim]."""

    keys: np.ndarray
    values: np.ndarray

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])


@runtime_checkable
class ScoreSession(Protocol):
    """What the scorer drives: scores of right-padded rows, the session's limits, and a hook to give back memory."""

    limits: EngineLimits

    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(batch, sequence) int64 right-padded ids and (batch,) int64 lengths -> (batch,) float32 scores."""
        ...

    def release_memory(self) -> None:
        """Give back working memory that this call's runs grew past what the session keeps on purpose (called
        at the end of every scoring call; a no-op where nothing grew)."""
        ...


@runtime_checkable
class PrefixScoreSession(ScoreSession, Protocol):
    """A session that can compute a shared prefix once and score continuations of it."""

    def prefill(self, input_ids: np.ndarray, after: Prefix | None = None) -> Prefix:
        """(1, tokens) int64 ids -> the keys and values of `after`'s tokens followed by these."""
        ...

    def run_after(self, prefix: Prefix, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Score rows that continue `prefix`: ids and lengths count only the tokens after it."""
        ...


@runtime_checkable
class SegmentScoreSession(ScoreSession, Protocol):
    """A session for pair encodings (cross-encoders): it needs where each row's document starts."""

    def run_segments(self, input_ids: np.ndarray, lengths: np.ndarray, segment_starts: np.ndarray) -> np.ndarray:
        """Like `run`; segment_starts: (batch,) int64, each row's first document token (its token type 1)."""
        ...


@runtime_checkable
class WholeRowScoreSession(ScoreSession, Protocol):
    """A session with a bounded-memory path for rows longer than `limits.whole_row_tokens`."""

    def run_whole(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Like `run`, for rows run alone and whole from their first token."""
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
