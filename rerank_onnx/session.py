"""The inference session behind a small protocol, so batching and ordering can be tested with a fake."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import ModelLoadError

INPUT_IDS = "input_ids"
LENGTHS = "lengths"
PAST_KEYS = "past_keys"
PAST_VALUES = "past_values"
SCORES = "scores"
PRESENT_KEYS = "present_keys"
PRESENT_VALUES = "present_values"


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

    def prefill(self, input_ids: np.ndarray) -> Prefix:
        """(1, tokens) int64 ids -> their keys and values."""
        ...

    def run_after(self, prefix: Prefix, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Score rows that continue `prefix`: ids and lengths count only the tokens after it."""
        ...


def default_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def open_session(graph: Path, *, threads: int | None = None) -> OnnxScoreSession | OnnxPrefixScoreSession:
    """The session for an artifact's graph: prefix-capable when the graph takes past keys and values
    (artifacts written since the prefix cache), plain otherwise."""
    session = OnnxScoreSession(graph, threads=threads)
    return OnnxPrefixScoreSession(session) if session.empty_prefix is not None else session


class OnnxScoreSession:
    def __init__(self, graph: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt or missing data
            raise ModelLoadError(f"onnxruntime cannot load {graph}: {exc}") from exc
        inputs = {i.name: i for i in self._session.get_inputs()}
        plain, with_past = {INPUT_IDS, LENGTHS}, {INPUT_IDS, LENGTHS, PAST_KEYS, PAST_VALUES}
        if set(inputs) not in (plain, with_past):
            raise ModelLoadError(
                f"{graph}: expected graph inputs {sorted(plain)} or {sorted(with_past)}, got {sorted(inputs)}"
            )
        # the past a graph with past inputs gets when nothing is shared; None for the plain layout
        self.empty_prefix: Prefix | None = None
        if set(inputs) == with_past:
            layers, kv_heads, _, head_dim = inputs[PAST_KEYS].shape
            if not all(isinstance(n, int) for n in (layers, kv_heads, head_dim)):
                raise ModelLoadError(f"{graph}: {PAST_KEYS} needs fixed layer, head and width dimensions")
            empty = np.zeros((layers, kv_heads, 0, head_dim), dtype=np.float32)
            self.empty_prefix = Prefix(keys=empty, values=empty)
        self.threads = options.intra_op_num_threads

    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feeds = {INPUT_IDS: input_ids, LENGTHS: lengths}
        if self.empty_prefix is not None:
            feeds |= {PAST_KEYS: self.empty_prefix.keys, PAST_VALUES: self.empty_prefix.values}
        (scores,) = self._session.run([SCORES], feeds)
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def _run_past(self, prefix: Prefix, input_ids: np.ndarray, lengths: np.ndarray, outputs: list[str]) -> list:
        feeds = {INPUT_IDS: input_ids, LENGTHS: lengths, PAST_KEYS: prefix.keys, PAST_VALUES: prefix.values}
        return self._session.run(outputs, feeds)


class OnnxPrefixScoreSession:
    """An OnnxScoreSession whose graph takes past keys and values."""

    def __init__(self, session: OnnxScoreSession) -> None:
        if session.empty_prefix is None:
            raise ModelLoadError("this graph takes no past keys and values; re-export it for the prefix cache")
        self._inner = session
        self._empty = session.empty_prefix
        self.threads = session.threads

    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self._inner.run(input_ids, lengths)

    def prefill(self, input_ids: np.ndarray) -> Prefix:
        lengths = np.array([input_ids.shape[1]], dtype=np.int64)
        keys, values = self._inner._run_past(self._empty, input_ids, lengths, [PRESENT_KEYS, PRESENT_VALUES])
        return Prefix(keys=keys, values=values)

    def run_after(self, prefix: Prefix, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        (scores,) = self._inner._run_past(prefix, input_ids, lengths, [SCORES])
        return np.asarray(scores, dtype=np.float32).reshape(-1)
