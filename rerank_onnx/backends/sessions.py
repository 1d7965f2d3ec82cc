"""Sessions over an `Engine`: the graph's inputs built from the scorer's rows (protocols.py).

`GraphSession` runs every prompt in full; `PrefixGraphSession` computes a shared prefix once (graphs with past
keys and values); `EncoderGraphSession` builds a cross-encoder's attention mask and token types.
"""

from __future__ import annotations

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
from ..batching import padded_width
from ..errors import ModelLoadError
from .memory import is_large, trim_heap
from .protocols import Engine, Prefix


class GraphSession:
    """A score graph on an engine: the plain `ScoreSession` (every prompt in full)."""

    # the graph input sets this class runs
    layouts: tuple[frozenset[str], ...] = (
        frozenset(PLAIN_GRAPH_INPUTS),
        frozenset({*PLAIN_GRAPH_INPUTS, PAST_KEYS, PAST_VALUES}),
    )

    def __init__(self, engine: Engine, graph: Path) -> None:
        shapes = engine.input_shapes()
        if frozenset(shapes) not in self.layouts:
            expected = " or ".join(str(sorted(layout)) for layout in self.layouts)
            raise ModelLoadError(f"{graph}: expected graph inputs {expected}, got {sorted(shapes)}")
        with_past = {*PLAIN_GRAPH_INPUTS, PAST_KEYS, PAST_VALUES}
        self._engine = engine
        self.threads = engine.threads
        self.limits = engine.limits
        # the past a graph with past inputs gets when nothing is shared; None for the plain layout
        self.empty_prefix: Prefix | None = None
        if set(shapes) == with_past:
            layers, kv_heads, _, head_dim = shapes[PAST_KEYS]
            if layers is None or kv_heads is None or head_dim is None:
                raise ModelLoadError(f"{graph}: {PAST_KEYS} needs fixed layer, head and width dimensions")
            empty = np.zeros((layers, kv_heads, 0, head_dim), dtype=np.float32)
            self.empty_prefix = Prefix(keys=empty, values=empty)

    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.empty_prefix is None:
            (scores,) = self._call({INPUT_IDS: input_ids, LENGTHS: lengths}, [SCORES])
            return np.asarray(scores, dtype=np.float32).reshape(-1)
        return self._run_past(self.empty_prefix, input_ids, lengths)

    def run_whole(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Rows run alone and whole, from their first token, on the engine's bounded-memory path
        (`limits.whole_row_tokens`)."""
        if self.limits.whole_row_tokens is None or self.empty_prefix is None:
            raise ValueError(f"{type(self._engine).__name__} has no whole-row path: long rows run in slices")
        past = self.empty_prefix
        feeds = {INPUT_IDS: input_ids, LENGTHS: lengths, PAST_KEYS: past.keys, PAST_VALUES: past.values}
        return np.asarray(self._engine.run_whole(feeds), dtype=np.float32).reshape(-1)

    def _run_past(self, prefix: Prefix, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feeds = {INPUT_IDS: input_ids, LENGTHS: lengths, PAST_KEYS: prefix.keys, PAST_VALUES: prefix.values}
        (scores,) = self._call(feeds, [SCORES])
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def _call(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        results = self._engine.run(feeds, outputs)
        if is_large(feeds):  # its freed blocks go back to the OS before the next run (memory.py)
            trim_heap()
        return results

    def release_memory(self) -> None:
        """The engine gives back what this call's runs grew, where it keeps any (it decides: memory.py). The
        scorer calls it at the end of every call; ordinary calls cost nothing."""
        self._engine.release_memory()


class PrefixGraphSession(GraphSession):
    """A score graph that takes past keys and values: computes a shared prefix once (`PrefixScoreSession`)."""

    def prefill(self, input_ids: np.ndarray, after: Prefix | None = None) -> Prefix:
        assert self.empty_prefix is not None  # open_session builds this class only for graphs with a past
        past = after or self.empty_prefix
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

    def run_after(self, prefix: Prefix, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self._run_past(prefix, input_ids, lengths)


class EncoderGraphSession(GraphSession):
    """A cross-encoder's graph (optimum's export of a *ForSequenceClassification model): builds its
    attention mask and token types from lengths and document starts (`SegmentScoreSession`)."""

    layouts = (frozenset({INPUT_IDS, ATTENTION_MASK}), frozenset({INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS}))

    def __init__(self, engine: Engine, graph: Path) -> None:
        super().__init__(engine, graph)
        self.token_types = TOKEN_TYPE_IDS in engine.input_shapes()

    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.token_types:
            raise ValueError("this graph takes token types: call run_segments with each row's document start")
        return self.run_segments(input_ids, lengths, lengths)

    def run_segments(self, input_ids: np.ndarray, lengths: np.ndarray, segment_starts: np.ndarray) -> np.ndarray:
        positions = np.arange(input_ids.shape[1], dtype=np.int64)[None, :]
        mask = positions < lengths[:, None]
        feeds = {INPUT_IDS: input_ids, ATTENTION_MASK: mask.astype(np.int64)}
        if self.token_types:
            feeds[TOKEN_TYPE_IDS] = (mask & (positions >= segment_starts[:, None])).astype(np.int64)
        (logits,) = self._call(feeds, [LOGITS])
        return np.asarray(logits, dtype=np.float32)[:, 0]
