"""The inference session behind a small protocol, so batching and ordering can be tested with a fake."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import ModelLoadError

INPUT_IDS = "input_ids"
LENGTHS = "lengths"
SCORES = "scores"


class ScoreSession(Protocol):
    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(batch, sequence) int64 right-padded ids and (batch,) int64 lengths -> (batch,) float32 scores."""
        ...


def default_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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
        names = {i.name for i in self._session.get_inputs()}
        if names != {INPUT_IDS, LENGTHS}:
            raise ModelLoadError(f"{graph}: expected graph inputs {{{INPUT_IDS!r}, {LENGTHS!r}}}, got {sorted(names)}")
        self.threads = options.intra_op_num_threads

    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        (scores,) = self._session.run([SCORES], {INPUT_IDS: input_ids, LENGTHS: lengths})
        return np.asarray(scores, dtype=np.float32).reshape(-1)
