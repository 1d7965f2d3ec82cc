"""The onnxruntime backend: runs the artifact's graph as stored (fp32, blockwise int8 or int8-fast)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from .memory import Rebuildable, is_large

# The arena keeps regions that shrinkage cannot free; dropping the session gives them back. So after a call
# whose rows attended over more than this (a prompt of more than 4k tokens) the session is created again in
# the background (memory.py), as OpenVINO's model is compiled again. Measured Dec 1 (AVX2 EPYC, base-v2 int8,
# an 8k pair, one process each): 0.64 GB after the next short call against 0.64 before the pair, 1.43 without
# it; 106.3 s against 105.3 s; session creation 1.4-1.7 s (benchmarks/README.md).
REBUILD_LENGTH = 4096


class OnnxRuntimeEngine:
    """onnxruntime's CPU provider, one sequential session with `threads` intra-op threads."""

    name = "onnxruntime"
    # a row scores the same bits however far its batch pads it (tested: alone vs batch within 1e-4)
    pad_multiple = 1
    # An 8k-token pair (base-v2 int8, AMX, 2 threads): 512-token slices peaked at 1.96-2.14 GB in 62-65 s,
    # 1,024 at 2.82 GB in 65.6 s (benchmarks/README.md, "Long inputs").
    slice_tokens = 512
    whole_row_tokens: int | None = None  # long rows run in slices
    # Dec 1 (AVX2 EPYC, base-v2 int8, 16 x 230-token pairs): 1,024 / 2,048 / 4,096 / 8,192 tokens per run took
    # 38.8-40.6 / 38.2-39.2 / 38.8-39.8 / 40.1 s at 0.78 / 1.01 / 1.01 / 1.12 GB peak: no reason to move it
    batch_tokens = 4096
    # its arena is shrunk after large runs (memory.py): what a batch attends over is not kept
    batch_context: int | None = None

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

    def release_memory(self) -> None:
        """A large run shrinks the arena as it ends; after a long prompt the session goes, with the arena
        regions shrinkage cannot free, and is created again in the background (REBUILD_LENGTH)."""
        self.model.release()
