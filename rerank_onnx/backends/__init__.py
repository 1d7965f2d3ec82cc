"""Inference backends behind one small protocol, so batching and ordering can be tested with a fake.

A backend is an `Engine`: it compiles the artifact's score graph and runs it on named numpy feeds.
`GraphSession` turns an engine into the `ScoreSession` the scorer drives (and `PrefixGraphSession`
into a `PrefixScoreSession` when the graph takes past keys and values). Adding a backend is one
module with an `Engine` plus a row in `select.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

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
    ArtifactConfig,
)
from ..batching import padded_width
from ..errors import ModelLoadError
from .memory import is_large, trim_heap
from .select import BackendChoice

log = logging.getLogger("rerank_onnx")


class ScoreSession(Protocol):
    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(batch, sequence) int64 right-padded ids and (batch,) int64 lengths -> (batch,) float32 scores."""
        ...


@dataclass(frozen=True)
class Prefix:
    """Keys and values of a token prefix that several prompts share: float32 [layers, kv_heads, tokens, head_dim]."""

    keys: np.ndarray
    values: np.ndarray

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])


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


class Engine(Protocol):
    """One compiled score graph on one inference engine.

    `pad_multiple`: 1 when a row's result does not depend on how far its batch pads it; otherwise the
    width granularity the scorer pads to and buckets by (batching.py).
    `slice_tokens`: the slice a long prompt runs in by default on this engine (measured per engine).
    `batch_tokens`: the padded tokens one run holds by default on this engine (measured per engine).
    `batch_context`: the keys and values one run attends over by default, rows x (shared prefix + width),
    where the memory the engine keeps grows with them; None where it does not.
    `whole_row_tokens`: a run of rows longer than this with no past (the scorer sends such rows alone, from
    their first token) goes to the engine's own bounded-memory path instead of its compiled model; None, or
    set to None: long rows run in slices.
    """

    threads: int
    pad_multiple: int
    slice_tokens: int
    whole_row_tokens: int | None
    batch_tokens: int
    batch_context: int | None

    def input_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Each graph input's shape; None where a dimension is dynamic."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run the graph; return the named outputs as arrays the caller may keep."""
        ...

    def release_memory(self) -> None:
        """Give back working memory the engine keeps between runs, where the runs since the last call grew
        it past what the engine keeps on purpose (called at the end of every scoring call; a no-op otherwise)."""
        ...


def default_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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
        self.pad_multiple = engine.pad_multiple
        self.slice_tokens = engine.slice_tokens
        self.batch_tokens = engine.batch_tokens
        self.batch_context = engine.batch_context
        # the past a graph with past inputs gets when nothing is shared; None for the plain layout
        self.empty_prefix: Prefix | None = None
        if set(shapes) == with_past:
            layers, kv_heads, _, head_dim = shapes[PAST_KEYS]
            if layers is None or kv_heads is None or head_dim is None:
                raise ModelLoadError(f"{graph}: {PAST_KEYS} needs fixed layer, head and width dimensions")
            empty = np.zeros((layers, kv_heads, 0, head_dim), dtype=np.float32)
            self.empty_prefix = Prefix(keys=empty, values=empty)

    @property
    def whole_row_tokens(self) -> int | None:
        """Rows longer than this run whole on the engine's own path (None: long rows run in slices)."""
        return self._engine.whole_row_tokens

    @whole_row_tokens.setter
    def whole_row_tokens(self, value: int | None) -> None:
        if value is not None and self._engine.whole_row_tokens is None:
            raise ValueError(f"{type(self._engine).__name__} has no whole-row path: long rows run in slices")
        self._engine.whole_row_tokens = value

    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.empty_prefix is None:
            (scores,) = self._call({INPUT_IDS: input_ids, LENGTHS: lengths}, [SCORES])
            return np.asarray(scores, dtype=np.float32).reshape(-1)
        return self._run_past(self.empty_prefix, input_ids, lengths)

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
        # Measured Dec 1 (AVX512-BF16 EPYC, base-v2, OpenVINO int8): a 40-token prefix computed at width 40
        # moved a score by 0.029 (5% of the score spread), at width 64 by 0.
        width = padded_width(tokens, self.pad_multiple)
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


def open_session(
    graph: Path,
    choice: BackendChoice,
    *,
    threads: int | None = None,
    cache_dir: Path | None = None,
    int8_block: int | None = None,
) -> GraphSession:
    """The session for an artifact's graph on the chosen backend: prefix-capable when the graph takes
    past keys and values (artifacts written since the prefix cache), plain otherwise.

    Args:
        graph: the artifact's model.onnx.
        choice: backend and precision, from `select.choose`.
        threads: intra-op threads (default: the CPUs this process may use).
        cache_dir: where OpenVINO keeps compiled models (None: no cache); onnxruntime ignores it.
        int8_block: the int8 artifact's weight block, OpenVINO's int8 activation group under precision "int8".

    Returns:
        A `PrefixGraphSession`, an `EncoderGraphSession` (cross-encoders) or a plain `GraphSession`.
    """
    threads = threads or default_threads()
    engine: Engine
    if choice.backend == "openvino":
        from .openvino import Compilation, OpenVinoEngine

        compilation = Compilation(choice.precision, threads, int8_block=int8_block, bf16=choice.bf16)
        engine = OpenVinoEngine(graph, compilation, cache_dir=cache_dir)
    else:
        from .onnxruntime import OnnxRuntimeEngine

        engine = OnnxRuntimeEngine(graph, threads=threads)
    shapes = engine.input_shapes()
    kind = (
        PrefixGraphSession if PAST_KEYS in shapes else EncoderGraphSession if ATTENTION_MASK in shapes else GraphSession
    )
    return kind(engine, graph)


def open_backend(
    config: ArtifactConfig,
    *,
    backend: str,
    precision: str,
    threads: int | None,
    cache_dir: str | Path | Literal[False] | None,
) -> tuple[GraphSession, BackendChoice]:
    """Choose the backend for an artifact on this CPU (logged once), and open its session.

    Args:
        config: the loaded artifact.
        backend: "auto", "onnxruntime" or "openvino".
        precision: "auto", "fp32", "bf16" or "int8".
        threads: intra-op threads (default: the CPUs this process may use).
        cache_dir: OpenVINO's compiled-model cache root (None: the default place; False: no cache).

    Returns:
        The session and the choice, with the reason for it.
    """
    from .cache import compile_cache_dir
    from .openvino import available
    from .select import choose

    choice = choose(
        backend, precision, scheme=config.quantization, family=config.family, openvino_installed=available()
    )
    # a missing extra on a CPU where it would pay is worth a warning; the ordinary choice is info
    (log.warning if "not installed" in choice.reason else log.info)("backend: %s", choice.describe())
    cache = None
    if cache_dir is not False and choice.backend == "openvino":
        cache = compile_cache_dir(config, cache_dir)
    session = open_session(
        config.graph_path, choice, threads=threads, cache_dir=cache, int8_block=config.quantization_block
    )
    return session, choice


__all__ = [
    "BackendChoice",
    "EncoderGraphSession",
    "Engine",
    "GraphSession",
    "Prefix",
    "PrefixGraphSession",
    "PrefixScoreSession",
    "ScoreSession",
    "SegmentScoreSession",
    "default_threads",
    "open_backend",
    "open_session",
]
