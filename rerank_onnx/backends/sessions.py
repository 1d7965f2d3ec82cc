"""Sessions over an `Engine`: the graph's inputs built from the scorer's batches (protocols.py).

`GraphSession` runs a decoder's score graph: every prompt in full, and, when the graph takes past keys and values
(artifacts written since the prefix cache), continuations of a shared prefix computed once. `EncoderGraphSession`
runs a cross-encoder's graph, building its attention mask and token types.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..artifact import (
    ATTENTION_MASK,
    INPUT_IDS,
    LENGTHS,
    LOGITS,
    PAST_KEYS,
    PAST_VALUES,
    PLAIN_GRAPH_INPUTS,
    PRESENT_KEYS,
    PRESENT_VALUES,
    SCORES,
    TOKEN_TYPE_IDS,
)
from ..errors import ModelLoadError
from .memory import is_large, trim_heap
from .protocols import Engine, Prefix, ScoreBatch, padded_width


class GraphSession:
    """A decoder's score graph on an engine (`ScoreSession`); it shares prefixes when the graph takes a past."""

    # the graph input sets this class runs
    layouts: tuple[frozenset[str], ...] = (
        frozenset(PLAIN_GRAPH_INPUTS),
        frozenset({*PLAIN_GRAPH_INPUTS, PAST_KEYS, PAST_VALUES}),
    )
    needs_document_starts = False

    def __init__(self, engine: Engine, graph: Path) -> None:
        shapes = engine.input_shapes()
        if frozenset(shapes) not in self.layouts:
            expected = " or ".join(str(sorted(layout)) for layout in self.layouts)
            raise ModelLoadError(f"{graph}: expected graph inputs {expected}, got {sorted(shapes)}")
        self._engine = engine
        self.threads = engine.threads
        self.limits = engine.limits
        # the past a graph with past inputs gets when nothing is shared; None for the plain layout
        self._empty_prefix: Prefix | None = None
        if PAST_KEYS in shapes:
            layers, kv_heads, _, head_dim = shapes[PAST_KEYS]
            if layers is None or kv_heads is None or head_dim is None:
                raise ModelLoadError(f"{graph}: {PAST_KEYS} needs fixed layer, head and width dimensions")
            empty = np.zeros((layers, kv_heads, 0, head_dim), dtype=np.float32)
            self._empty_prefix = Prefix(keys=empty, values=empty)
        self.shares_prefix = self._empty_prefix is not None

    def score(self, batch: ScoreBatch) -> np.ndarray:
        if batch.document_starts is not None:
            raise ValueError("a decoder's graph has no token types: document_starts must be None")
        feeds = {INPUT_IDS: batch.input_ids, LENGTHS: batch.lengths}
        if self._empty_prefix is None:
            if batch.prefix is not None or batch.whole_rows:
                raise ValueError("this graph takes no past keys and values: it has no prefix or whole-row path")
            (scores,) = self._call(feeds, [SCORES])
            return np.asarray(scores, dtype=np.float32).reshape(-1)
        past = batch.prefix or self._empty_prefix
        feeds |= {PAST_KEYS: past.keys, PAST_VALUES: past.values}
        if batch.whole_rows:
            if batch.prefix is not None or self.limits.whole_row_tokens is None:
                raise ValueError(f"{type(self._engine).__name__} runs whole rows only from their first token")
            return np.asarray(self._engine.run_whole(feeds), dtype=np.float32).reshape(-1)
        (scores,) = self._call(feeds, [SCORES])
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def prefill(self, input_ids: np.ndarray, after: Prefix | None = None) -> Prefix:
        if self._empty_prefix is None:
            raise ValueError("this graph takes no past keys and values: it cannot share a prefix")
        past = after or self._empty_prefix
        tokens = input_ids.shape[1]
        # An engine whose numerics depend on a run's width (pad_multiple > 1) computes the prefix at the padded
        # width its rows run at, so that its keys and values have the bits a full prompt gives them; the tail
        # repeats the last token, which no prefix token attends to (causal), and its keys and values are dropped.
        # (docs/backends.md, "Why bf16 needed a change to batching")
        width = padded_width(tokens, self.limits.pad_multiple)
        if width > tokens:
            input_ids = np.concatenate([input_ids, np.repeat(input_ids[:, -1:], width - tokens, axis=1)], axis=1)
        feeds = {
            INPUT_IDS: input_ids,
            LENGTHS: np.array([width], dtype=np.int64),
            PAST_KEYS: past.keys,
            PAST_VALUES: past.values,
        }
        keys, values = self._call(feeds, [PRESENT_KEYS, PRESENT_VALUES])
        end = past.keys.shape[2] + tokens
        return Prefix(
            keys=np.ascontiguousarray(np.asarray(keys, dtype=np.float32)[:, :, :end]),
            values=np.ascontiguousarray(np.asarray(values, dtype=np.float32)[:, :, :end]),
        )

    def _call(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        results = self._engine.run(feeds, outputs)
        if is_large(feeds):  # its freed blocks go back to the OS before the next run (memory.py)
            trim_heap()
        return results

    def release_memory(self) -> None:
        """The engine gives back what this call's runs grew, where it keeps any (it decides: memory.py). The
        scorer calls it at the end of every call; ordinary calls cost nothing."""
        self._engine.release_memory()


class EncoderGraphSession(GraphSession):
    """A cross-encoder's graph (optimum's export of a *ForSequenceClassification model): builds its attention
    mask and token types from lengths and document starts. No prefix, no whole-row path: rows run in full."""

    layouts = (frozenset({INPUT_IDS, ATTENTION_MASK}), frozenset({INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS}))

    def __init__(self, engine: Engine, graph: Path) -> None:
        super().__init__(engine, graph)
        self.needs_document_starts = TOKEN_TYPE_IDS in engine.input_shapes()
        self.limits = replace(engine.limits, whole_row_tokens=None)

    def score(self, batch: ScoreBatch) -> np.ndarray:
        if batch.prefix is not None or batch.whole_rows:
            raise ValueError("a cross-encoder's graph has no prefix or whole-row path")
        positions = np.arange(batch.input_ids.shape[1], dtype=np.int64)[None, :]
        mask = positions < batch.lengths[:, None]
        feeds = {INPUT_IDS: batch.input_ids, ATTENTION_MASK: mask.astype(np.int64)}
        if self.needs_document_starts:
            if batch.document_starts is None:
                raise ValueError("this graph takes token types: the batch needs each row's document start")
            feeds[TOKEN_TYPE_IDS] = (mask & (positions >= batch.document_starts[:, None])).astype(np.int64)
        (logits,) = self._call(feeds, [LOGITS])
        return np.asarray(logits, dtype=np.float32)[:, 0]
