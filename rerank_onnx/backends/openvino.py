"""The OpenVINO backend: reads the artifact's ONNX graph directly and compiles it for this CPU.

OpenVINO's ONNX frontend turns the blockwise int8 `MatMulNBits` nodes into compressed weights, fuses
RMSNorm and rotary embeddings itself, and computes in the precision asked for:
- "bf16": bf16 compute (AMX or AVX512-BF16), fp32 or int8 weights decompressed to bf16 (an encoder graph's
  int8 weights expanded to bf16 before compiling: openvino_graph.expand_weights);
- "fp32": fp32 compute, int8 weights decompressed (weight-only int8);
- "int8": the int8 weights' MatMuls fed int8 activations quantized at run time per token in the weights'
  blocks (OpenVINO's dynamic quantization; VNNI dot products), as onnxruntime's blockwise kernel does, and
  bf16 compute elsewhere on a CPU with bf16 instructions, fp32 compute elsewhere otherwise
  (`Compilation.bf16`). The group is the artifact's block (`quantization_block`): a group that does not divide
  the block leaves it off, and a smaller divisor runs slower (docs/backends.md, "The int8 block").
Dynamic quantization is off in "fp32" and "bf16". Why each limit below is what it is: docs/memory.md.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import INPUT_IDS, LENGTHS, PAST_KEYS, PAST_VALUES, PRESENT_KEYS, PRESENT_VALUES
from ..errors import MissingDependencyError, ModelLoadError
from .memory import Rebuildable
from .openvino_graph import NEW_KV, NEW_KV_BF16, compile_source, new_token_outputs, split_layers
from .openvino_whole import WholeRowProcess
from .protocols import EngineLimits
from .select import PADDED_PRECISIONS

PRECISIONS = ("fp32", "bf16", "int8")
# bf16 attention and int8 activations round by the padded width: rows are padded to a multiple of this and
# batched by width, so a row computes the same bits alone or in any batch (docs/backends.md, "Why bf16 ...")
PAD_MULTIPLE = 32
# executors prepared per input shape that the plugin keeps, each with its own buffers (docs/memory.md#shape-cache)
SHAPE_CACHE = 16
# the compiled model is dropped and compiled again after a call whose rows attended over more than this: the
# plugin keeps the buffers a run grew until then (docs/memory.md#rebuilds)
REBUILD_LENGTH = 4096

LIMITS = EngineLimits(
    batch_tokens=1024,  # working memory grows with a run's tokens; smaller runs cost no speed (docs/memory.md#batches)
    batch_context=8192,  # what a batch after a shared prefix attends over, which the plugin keeps (#batch-context)
    slice_tokens=1024,  # smaller slices kept more memory: each slice shape is compiled (docs/memory.md#slices)
    whole_row_tokens=REBUILD_LENGTH,  # longer rows run whole in a child process (docs/memory.md#whole-rows)
    pad_multiple=1,  # PAD_MULTIPLE under bf16 compute or int8 activations (set per compilation)
)
# an encoder graph keeps no keys and values per token: its runs can be as large as onnxruntime's (#batches)
ENCODER_BATCH_TOKENS = 4096


def available() -> bool:
    """True when the openvino package is installed (found without importing it: the import costs time
    that an onnxruntime choice should not pay)."""
    return importlib.util.find_spec("openvino") is not None


@dataclass(frozen=True)
class Compilation:
    """What the CPU plugin compiles a graph for: `precision` on `threads` threads, one stream (latency).

    Args:
        precision: "fp32", "bf16" or "int8".
        threads: inference threads.
        int8_block: under "int8", the input channels per activation scale: the artifact's int8 weight block
            (`ArtifactConfig.quantization_block`). Required for "int8", ignored otherwise.
        bf16: under "int8", compute in bf16 what is not int8 (a CPU with bf16 instructions); False: in fp32.
        static_int8: the graph quantizes its activations with constant scales (an int8-static artifact): its
            int8 kernels round by the padded width as dynamic int8 activations do, so its rows are padded at any
            precision (docs/backends.md#int8-static-artifacts).

    Raises:
        ModelLoadError: an unknown precision, or "int8" without the block.
    """

    precision: str
    threads: int
    int8_block: int | None = None
    bf16: bool = True
    static_int8: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ModelLoadError(f"openvino precision: expected one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "int8" and not self.int8_block:
            raise ModelLoadError("openvino precision 'int8' needs the int8 artifact's weight block (int8_block)")

    @property
    def padded(self) -> bool:
        """Whether results depend on a run's padded width (bf16 compute, or int8 activations of either kind), so
        that rows are padded to PAD_MULTIPLE."""
        return self.precision in PADDED_PRECISIONS or self.static_int8

    @property
    def computes_bf16(self) -> bool:
        """Whether OpenVINO computes in bf16 what it does not compute in int8."""
        return self.precision == "bf16" or (self.precision == "int8" and self.bf16)

    def properties(self) -> dict[str, Any]:
        """The properties for `Core.compile_model`."""
        return {
            "INFERENCE_PRECISION_HINT": "bf16" if self.computes_bf16 else "f32",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(self.int8_block if self.precision == "int8" else 0),
            "INFERENCE_NUM_THREADS": str(self.threads),
            "NUM_STREAMS": "1",
            "PERFORMANCE_HINT": "LATENCY",
            "CPU_RUNTIME_CACHE_CAPACITY": str(SHAPE_CACHE),
        }


class OpenVinoEngine:
    """The score graph compiled by OpenVINO's CPU plugin, with one infer request."""

    name = "openvino"

    def __init__(self, graph: Path, compilation: Compilation, *, cache_dir: Path | None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise MissingDependencyError(
                "openvino (the openvino extra)", "pip install 'rerank-onnx[openvino]'"
            ) from exc
        self._core = ov.Core()
        self._graph = graph
        self._cache_dir = cache_dir
        self._config = compilation.properties()
        # under bf16 an encoder graph's int8 weights become bf16 constants (openvino_graph.expand_weights); "int8"
        # keeps them (its dynamic int8 activations multiply them), and fp32 compute has no bf16 to store
        self._variant = NEW_KV_BF16 if compilation.precision == "bf16" else NEW_KV
        # the compiled model with its infer request, compiled again after long prompts (REBUILD_LENGTH)
        self.model = Rebuildable(self._compile_with_request, rebuild_length=REBUILD_LENGTH)
        compiled, _ = self.model.get()
        self._layers = split_layers(compiled)  # presents as each layer's new tokens (openvino_graph.py)
        self._shapes = {
            port.get_any_name(): tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            for port in compiled.inputs
        }
        decoder = PAST_KEYS in self._shapes
        self.threads = compilation.threads
        self.precision = compilation.precision
        self.limits = replace(
            LIMITS,
            batch_tokens=LIMITS.batch_tokens if decoder else ENCODER_BATCH_TOKENS,
            whole_row_tokens=LIMITS.whole_row_tokens if decoder else None,  # the stateful model is a decoder's
            pad_multiple=PAD_MULTIPLE if compilation.padded else 1,
        )
        self._whole = WholeRowProcess(graph, compilation, cache_dir=cache_dir)

    def _compile_with_request(self) -> tuple[Any, Any]:
        compiled = self._compile()
        return compiled, compiled.create_infer_request()

    def _compile(self) -> Any:
        try:
            # from a path where there is a cache, so that a cached blob skips reading the graph altogether
            source, blobs = compile_source(self._core, self._graph, self._cache_dir, self._variant, self._config)
            config = self._config if blobs is None else {**self._config, "CACHE_DIR": str(blobs)}
            return self._core.compile_model(source, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable or unsupported graphs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"openvino cannot compile {self._graph}: {first}. Use backend='onnxruntime' for this artifact"
            ) from exc

    def input_shapes(self) -> dict[str, tuple[int | None, ...]]:
        return dict(self._shapes)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        _, request = self.model.get()
        request.infer(dict(feeds))
        self.model.ran(feeds)
        # the request reuses its output buffers on the next run: copy what the caller keeps
        return [self._output(request, name, feeds) for name in outputs]

    def _output(self, request: Any, name: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        if not self._layers or name not in (PRESENT_KEYS, PRESENT_VALUES):
            return np.array(request.get_tensor(name).data, copy=True)
        # row 0's new keys (or values) of every layer, after the past they were given
        new = np.stack([request.get_tensor(new_token_outputs(name, i)).data[0] for i in range(self._layers)])
        past = feeds[PAST_KEYS if name == PRESENT_KEYS else PAST_VALUES]
        return np.concatenate([past, new], axis=2)

    def run_whole(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Rows with no past, run whole on the stateful model in a child process; the compiled model's weights and
        buffers go meanwhile and it is built again after the call (as after any prompt of this length)."""
        self.model.drop()
        scores = self._whole.run(feeds[INPUT_IDS], feeds[LENGTHS])
        self.model.ran(feeds)
        return scores

    def release_memory(self) -> None:
        """After a long prompt, the compiled model and the buffers it grew go (and the stateful model, if a row
        ran whole, the child process that ran it); it compiles again in the background (REBUILD_LENGTH)."""
        self._whole.close()
        self.model.release()
