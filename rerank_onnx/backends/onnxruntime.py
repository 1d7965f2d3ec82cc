"""The onnxruntime backend: runs the artifact's graph as stored (fp32, blockwise int8 or int8-fast)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from .memory import Rebuildable, is_large
from .protocols import EngineLimits

# After a call whose rows attended over more than this (a prompt of more than 4k tokens) the session is created
# again in the background: its arena keeps regions that shrinkage cannot free (docs/memory.md#rebuilds).
REBUILD_LENGTH = 4096

LIMITS = EngineLimits(
    batch_tokens=4096,  # speed flat from 1k to 8k tokens per run, memory rising above 4k (docs/memory.md#batches)
    batch_context=None,  # its arena is shrunk after large runs: what a batch attends over is not kept
    slice_tokens=512,  # the lowest peak for an 8k-token prompt at the same speed (docs/memory.md#slices)
    whole_row_tokens=None,  # no whole-row path: long rows run in slices
    pad_multiple=1,  # a row scores the same bits however far its batch pads it (tested: alone vs batch)
)


class OnnxRuntimeEngine:
    """onnxruntime's CPU provider, one sequential session with `threads` intra-op threads."""

    name = "onnxruntime"
    limits = LIMITS

    def __init__(self, graph: Path, *, threads: int) -> None:
        import onnxruntime as ort

        self._graph = graph
        self._options = ort.SessionOptions()
        self._options.intra_op_num_threads = threads
        self._options.inter_op_num_threads = 1
        self._options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model = Rebuildable(self._create_session, rebuild_length=REBUILD_LENGTH)
        self.threads = threads
        # a large run shrinks the arena back when it ends, instead of keeping its high-water mark (memory.py)
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _create_session(self) -> Any:
        import onnxruntime as ort

        try:
            return ort.InferenceSession(
                str(self._graph), sess_options=self._options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt or missing data
            raise ModelLoadError(f"onnxruntime cannot load {self._graph}: {exc}") from exc

    def input_shapes(self) -> dict[str, tuple[int | None, ...]]:
        inputs = self.model.get().get_inputs()
        return {i.name: tuple(d if isinstance(d, int) else None for d in i.shape) for i in inputs}

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        options = self._shrink if is_large(feeds) else None
        results = self.model.get().run(outputs, dict(feeds), options)
        self.model.ran(feeds)
        return [np.asarray(a) for a in results]

    def run_whole(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError("onnxruntime has no whole-row path (LIMITS.whole_row_tokens is None)")

    def release_memory(self) -> None:
        """A large run shrinks the arena as it ends; after a long prompt the session goes, with the arena
        regions shrinkage cannot free, and is created again in the background (REBUILD_LENGTH)."""
        self.model.release()
