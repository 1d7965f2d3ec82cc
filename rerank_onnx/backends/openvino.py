"""The OpenVINO backend: reads the artifact's ONNX graph directly and compiles it for this CPU.

OpenVINO's ONNX frontend turns the blockwise int8 `MatMulNBits` nodes into compressed weights, fuses
RMSNorm and rotary embeddings itself, and computes in the precision asked for:
- "bf16": bf16 compute (AMX or AVX512-BF16), fp32 or int8 weights decompressed to bf16 (an encoder graph's
  int8 weights expanded to bf16 before compiling: openvino_graph.expand_weights);
- "fp32": fp32 compute, int8 weights decompressed (weight-only int8);
- "int8": the int8 weights' MatMuls fed int8 activations quantized at run time per token in the weights'
  blocks (OpenVINO's dynamic quantization; VNNI dot products), as onnxruntime's blockwise kernel does, and
  bf16 compute elsewhere on a CPU with bf16 instructions, fp32 compute elsewhere otherwise
  (`Compilation.bf16`). The group is the artifact's block (`quantization_block`): a group that is not a
  divisor of the block leaves it off (64 on blocks of 32 gave the bf16 scores exactly, Dec 1), and a smaller divisor
  runs slower (32 on blocks of 128: 633 tok/s against 818 for 128, Dec 2, benchmarks/README.md).
Dynamic quantization is off in "fp32" and "bf16". Under the fp32 hint it had moved shared-prefix scores by 4%
of their spread (AVX512 EPYC, Dec 1) until rows were padded to multiples of 32 under it as under bf16 (0 since,
Dec 2), and on AMX it ran slower than bf16 (benchmarks/README.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import INPUT_IDS, LENGTHS, PAST_KEYS, PAST_VALUES, PRESENT_KEYS, PRESENT_VALUES, SCORES
from ..errors import MissingDependencyError, ModelLoadError
from .memory import Rebuildable, attended_length
from .openvino_graph import NEW_KV, NEW_KV_BF16, compile_source, new_token_outputs, split_layers
from .openvino_whole import WholeRowProcess
from .select import PADDED_PRECISIONS

PRECISIONS = ("fp32", "bf16", "int8")
# bf16 attention blocks by the padded width, and a different blocking flips bf16 roundings: rows are
# padded to a multiple of this and batched by width, so a row computes the same bits alone or in any
# batch (measured: alone vs batch 0.043 at score std 1.56 with longest-row padding, 0.0 bucketed). int8
# activations under fp32 compute need it as much: a different blocking flips an fp32 rounding, which can
# flip an activation's int8 rounding (Dec 2, AVX512-BF16 EPYC, base-v2, 3 queries x 8 documents: alone vs
# batch 0.025 and shared vs full 0.027 at score std 0.60 unpadded; 0.0 and 0.0 padded).
PAD_MULTIPLE = 32


# Executors prepared per input shape are cached (5,000 by default), each with its own buffers: every slice
# of a long prompt and every (rows, width, past) of a server is a new shape, so memory grew with the shapes
# seen (an 8k pair in 512-token slices kept 7.5 GB). No cache at all was slower and, in 1,024-token slices,
# worse for memory: measured Dec 1 (AMX, 2 threads), base-v2 int8 bf16, no cache -> 16 shapes: an 8k pair
# 47-51 s -> 42 s, peak 10.1 -> 4.5 GB, 8.5 -> 2.9 GB kept; 16 server-like calls of random sizes 88 -> 78 s,
# the same 2.0 GB; MiniLM-L-6 cross-encoder, 32 x 512 tokens: 8,050 -> 9,650 tokens/s. 4 and 64 measured alike.
SHAPE_CACHE = 16

# OpenVINO's CPU plugin grows its intermediate buffers to the largest run and keeps them until the compiled
# model is dropped; its own CompiledModel.release_memory() breaks the next inference (2026.4: a segfault or
# "Memory has not been allocated" in a RoPE node after a prefill, reproduced on AVX2 and AMX). What a run
# keeps grows with the keys and values it attends over, rows x (past + width): with the exported presents,
# each layer's joined keys and values lived until the run ends, in a block that earlier layers' keys and
# values, expanded to every query head, had grown (openvino_graph.py now outputs the new tokens' only, which
# keeps less but still grows with the context). Two bounds follow from it:
# - after a call whose rows attended over more than REBUILD_LENGTH tokens (a prompt of more than 4k tokens),
#   the model is dropped and compiled again in the background, from the compile cache when there is one.
#   Measured Dec 1 (AVX2 EPYC, base-v2 int8, fp32, an 8k pair): 2.65-3.49 GB kept against 1.14 before it;
#   with the rebuild 1.10-1.18 GB after the next short call, at the same latency (one rebuild: 0.66 s from
#   the cache, 4.4 s without one, in the background);
# - a batch after a shared prefix attends over at most BATCH_CONTEXT keys and values in all (rows x (prefix +
#   width)): 32 short documents after a 6k-token query would otherwise keep tens of GB. 64 short documents
#   after a 500-token query (15 rows a batch) kept 1.28 GB over rest; a bound of 4,096 (7 rows) kept 0.70
#   but ran 1.3x slower, so the bound sits above what ordinary queries need (benchmarks/README.md).
REBUILD_LENGTH = 4096
BATCH_CONTEXT = 8192
# A row longer than this runs whole, from its first token, on the stateful model (openvino_graph.py) in a
# child process (openvino_whole.py), with the compiled model dropped meanwhile and built again after the call
# (as after any prompt of this length). Measured Dec 2 (AVX512-BF16 EPYC, base-v2 int8, `int8`, an 8,192-token
# pair through Reranker, cache warm): 52.5 s and 2.02 GB for this process and the child together, against
# 47.8 s and 2.70 GB in 1,024-token slices (benchmarks/README.md); Qwen3-Reranker-0.6B's architecture, a
# 4,400-token document: 49.8 s against 87.1 s. Shorter rows keep slices: a child's start and compile
# (~1.5 s from the cache) and the parent's rebuild would cost them more than they save.
WHOLE_ROW_TOKENS = REBUILD_LENGTH
# Padded tokens per run for an encoder graph (cross-encoders: no past inputs, no present outputs, so little
# working memory per token). Measured Dec 2 (AVX512-BF16 EPYC, `int8`, 1 query x 32 documents of ~530 tokens,
# one process per budget, 3 rounds of 3 calls): MiniLM-L-6 median 1.80 s at 1,024 (two rows a run), 1.65 at
# 2,048, 1.53 at 4,096, 1.47 at 8,192, peak 0.16 / 0.18 / 0.21 / 0.29 GB; bge-reranker-v2-m3's architecture
# (~210-token documents) the same speed at 1,024 and 4,096 (noise), peak 0.91 against 1.05 GB. On AVX2 (Dec 1)
# MiniLM ran alike at both. 4,096, as on onnxruntime (benchmarks/README.md, "Encoder batches on OpenVINO").
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

    Raises:
        ModelLoadError: an unknown precision, or "int8" without the block.
    """

    precision: str
    threads: int
    int8_block: int | None = None
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ModelLoadError(f"openvino precision: expected one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "int8" and not self.int8_block:
            raise ModelLoadError("openvino precision 'int8' needs the int8 artifact's weight block (int8_block)")

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
    # Smaller slices kept more memory: OpenVINO compiles per input shape (benchmarks/README.md, "Long inputs").
    slice_tokens = 1024
    # Working memory grows with the tokens of a run, ~0.55 MB per token at base-v2 (0.14 without the graph's
    # present outputs): the present keys and values live until the run ends, and OpenVINO's dynamic-shape
    # memory reuse grows the blocks they share to MLP-tensor size. Smaller runs cost no speed: measured Dec 1
    # (AVX2 EPYC, base-v2 int8, fp32, 16 x 230-token pairs, 3 runs each): 1,024 tokens 22.3-22.5 s and
    # 1.61 GB peak, 4,096 tokens 22.2-23.2 s and 3.3 GB, 512 tokens 23.1-23.8 s and 1.2 GB; MiniLM
    # cross-encoder, 64 x ~512 tokens: 7.0-8.2 s at 1,024 against 7.0-9.0 s at 4,096 (benchmarks/README.md,
    # "OpenVINO: working memory grows with the tokens of a run"). This is the bound for score graphs with a past
    # (decoders); encoder graphs take ENCODER_BATCH_TOKENS (set per graph in __init__).
    batch_tokens = 1024
    batch_context: int | None = BATCH_CONTEXT  # see BATCH_CONTEXT

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
        if PAST_KEYS not in self._shapes:
            self.batch_tokens = ENCODER_BATCH_TOKENS
        self.threads = compilation.threads
        self.precision = compilation.precision
        self.pad_multiple = PAD_MULTIPLE if compilation.precision in PADDED_PRECISIONS else 1
        # rows over WHOLE_ROW_TOKENS run whole on the stateful model, in a child process for the call
        self.whole_row_tokens = WHOLE_ROW_TOKENS if PAST_KEYS in self._shapes else None
        self._whole = WholeRowProcess(graph, compilation, cache_dir=cache_dir)

    def _compile_with_request(self) -> tuple[Any, Any]:
        compiled = self._compile()
        return compiled, compiled.create_infer_request()

    def _compile(self) -> Any:
        try:
            # from a path where there is a cache, so that a cached blob skips reading the graph altogether
            source, blobs = compile_source(self._core, self._graph, self._cache_dir, self._variant)
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
        if self._runs_whole(feeds, outputs):
            return [self._run_whole(feeds)]
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

    def _runs_whole(self, feeds: Mapping[str, np.ndarray], outputs: list[str]) -> bool:
        """Scores of rows longer than WHOLE_ROW_TOKENS with no past: the stateful model's work."""
        return (
            self.whole_row_tokens is not None
            and outputs == [SCORES]
            and feeds[PAST_KEYS].shape[2] == 0
            and attended_length(feeds) > self.whole_row_tokens
        )

    def _run_whole(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        self.model.drop()  # its weights and buffers go while the child process runs (built again after the call)
        scores = self._whole.run(feeds[INPUT_IDS], feeds[LENGTHS])
        self.model.ran(feeds)
        return scores

    def release_memory(self) -> None:
        """After a long prompt, the compiled model and the buffers it grew go (and the stateful model, if a row
        ran whole, the child process that ran it); it compiles again in the background (REBUILD_LENGTH)."""
        self._whole.close()
        self.model.release()
