"""Qwen2 / Qwen3 checkpoint (safetensors) -> the score graph, written with onnx and numpy only, one layer at a time.

The graph computes what export/graph.py's ScoreGraph computes (same inputs, outputs and operations, so every
backend and the runtime's OpenVINO rewrites see the same shape), but it is written node by node instead of
traced from PyTorch: no torch, no transformers. Each layer's tensors are read from the checkpoint's memory
maps, quantized when asked (`int8`: onnxruntime's own MatMulNBits block quantizer, blocks of 32; `int8-fast`:
the weights as onnxruntime's quantize_dynamic quantizes them), appended to
the external data file and dropped, so the export holds about one layer in memory, not the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from rerank_onnx.artifact import INPUT_IDS, LENGTHS, PAST_KEYS, PAST_VALUES, PRESENT_KEYS, PRESENT_VALUES, SCORES
from rerank_onnx.errors import ExportError

from .safetensors_reader import SafetensorsWeights

OPSET = 17
SCORED_COPIES = 2  # as graph.SCORED_COPIES: the last layer runs each row's scored token twice
BLOCK = 32  # the int8 scheme's block (quantize.BLOCK)
INLINE_BYTES = 1024  # smaller tensors stay inside model.onnx
ALIGN = 4096  # offsets of tensors in the data file (page-aligned: onnxruntime memory-maps it)
QUANTIZATIONS = ("none", "int8", "int8-fast")
EMBEDDING_ROWS = 8192  # the int8 embedding is quantized this many rows at a time


@dataclass(frozen=True)
class DecoderShape:
    """What the graph needs from config.json."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    rope_theta: float
    qk_norm: bool  # Qwen3: RMSNorm over each head's queries and keys
    tied: bool  # the output head is the token embedding

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DecoderShape:
        """Raises ExportError for what the graph does not implement (sliding windows, scaled rotary)."""
        if config.get("use_sliding_window"):
            raise ExportError("this checkpoint uses sliding-window attention, which the score graph does not implement")
        # transformers 4 writes rope_theta and rope_scaling; transformers 5 one rope_parameters object
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ExportError(f"rotary scaling {rope!r}: the score graph implements the default rotary embedding only")
        heads = int(config["num_attention_heads"])
        architectures = [str(a) for a in config.get("architectures") or []]
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=int(config["hidden_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
            eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            qk_norm=any(a.startswith("Qwen3") for a in architectures),
            tied=bool(config.get("tie_word_embeddings", False)),
        )


class GraphWriter:
    """Nodes and initializers of one graph; large initializers go straight to the external data file."""

    def __init__(self, data_path: Path) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._data_path = data_path
        self._data = data_path.open("wb")
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def tensor(self, name: str, array: np.ndarray) -> str:
        """An initializer: inline when small, else appended to the data file (page-aligned)."""
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would also make a scalar 1-D)
            array = np.ascontiguousarray(array)
        if array.nbytes <= INLINE_BYTES:
            self.initializers.append(onnx.numpy_helper.from_array(array, name))
            return name
        start = self._align()
        self._data.write(array.tobytes())
        self.initializers.append(self._external(name, array.shape, array.dtype, start, array.nbytes))
        return name

    def stream(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: Iterator[np.ndarray]) -> str:
        """A large initializer written to the data file chunk by chunk (rows in order), never whole in memory."""
        start = self._align()
        for chunk in chunks:
            self._data.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
        length = self._data.tell() - start
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if length != expected:
            raise ExportError(f"{name}: wrote {length} bytes, expected {expected} for shape {shape}")
        self.initializers.append(self._external(name, shape, np.dtype(dtype), start, length))
        return name

    def _align(self) -> int:
        self._data.write(b"\0" * (-self._data.tell() % ALIGN))
        return self._data.tell()

    def _external(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype, start: int, length: int
    ) -> onnx.TensorProto:
        proto = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(dtype))
        proto.dims.extend(shape)
        proto.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self._data_path.name), ("offset", str(start)), ("length", str(length))):
            proto.external_data.add(key=key, value=value)
        return proto

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        return self.tensor(self.name("const"), np.asarray(value, dtype=dtype))

    def op(self, op_type: str, *inputs: str, domain: str = "", **attributes: Any) -> str:
        """Add a node with one output; returns the output's name."""
        return self.ops(op_type, *inputs, outputs=1, domain=domain, **attributes)[0]

    def ops(self, op_type: str, *inputs: str, outputs: int, domain: str = "", **attributes: Any) -> list[str]:
        """Add a node with `outputs` outputs; returns their names."""
        names = [self.name(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], domain=domain, **attributes))
        return names

    def close(self) -> None:
        self._data.close()


class GraphWeights:
    """The checkpoint's weights as graph tensors in the artifact's quantization: linear layers (fp32 MatMul, MatMulNBits
    for int8, MatMulInteger for int8-fast) and the token embedding (fp32, or int8 with a scale per row)."""

    def __init__(self, weights: SafetensorsWeights, writer: GraphWriter, quantization: str) -> None:
        self.weights, self.w, self.quantization = weights, writer, quantization
        self._quantized_inputs: dict[str, list[str]] = {}  # int8-fast: each input's DynamicQuantizeLinear outputs

    def linear(self, x: str, prefix: str, *, bias: bool) -> str:
        """x @ W.T (+ b) for the checkpoint's `prefix`.weight [out, in]: fp32 MatMul, or MatMulNBits (int8)."""
        weight = self.weights.get(prefix + ".weight").T  # [in, out]
        if self.quantization == "int8":
            out = self._matmul_nbits(x, prefix, np.ascontiguousarray(weight))
        elif self.quantization == "int8-fast":
            out = self._matmul_integer(x, prefix, weight)
        else:
            out = self.w.op("MatMul", x, self.w.tensor(prefix + ".weight", weight))
        del weight
        if bias and prefix + ".bias" in self.weights:
            out = self.w.op("Add", out, self.w.tensor(prefix + ".bias", self.weights.get(prefix + ".bias")))
        return out

    def _matmul_nbits(self, x: str, prefix: str, weight: np.ndarray) -> str:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            DefaultWeightOnlyQuantizer,
        )

        config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=4, bits=8)
        packed, scales, _ = DefaultWeightOnlyQuantizer(config).qbits_block_quant(weight)
        rows, cols = weight.shape
        return self.w.op(
            "MatMulNBits",
            x,
            self.w.tensor(prefix + ".weight_Q8", packed),
            self.w.tensor(prefix + ".weight_scales", scales),
            domain="com.microsoft",
            K=rows,
            N=cols,
            bits=8,
            block_size=BLOCK,
            accuracy_level=4,
        )

    def _matmul_integer(self, x: str, prefix: str, weight: np.ndarray) -> str:
        """The int8-fast quantization, as onnxruntime's quantize_dynamic writes it (per_channel, QInt8 weights): uint8
        activations with one scale per tensor (DynamicQuantizeLinear, one per input, shared by the MatMuls that
        read it), int8 weights with one symmetric scale per output column, MatMulInteger, Cast, Mul by the two
        scales. The weights are quantized as quantize_data does (scale = 2 * absmax / 254, in float64)."""
        w = self.w
        if x not in self._quantized_inputs:
            self._quantized_inputs[x] = w.ops("DynamicQuantizeLinear", x, outputs=3)
        x_q, x_scale, x_zero = self._quantized_inputs[x]
        absmax = np.abs(weight).max(axis=0)  # [out]
        scale = (absmax.astype(np.float64) * 2 / 254).astype(np.float32)
        scale[scale < np.finfo(np.float32).tiny] = 1.0
        quantized = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
        product = w.op(
            "MatMulInteger",
            x_q,
            w.tensor(prefix + ".weight_quantized", quantized),
            x_zero,
            w.tensor(prefix + ".weight_zero_point", np.zeros(len(scale), dtype=np.int8)),
        )
        scales = w.op("Mul", x_scale, w.tensor(prefix + ".weight_scale", scale))
        return w.op("Mul", w.op("Cast", product, to=TensorProto.FLOAT), scales)

    def embedding(self) -> str:
        """Token embedding: fp32 Gather, or (int8) an int8 table with one fp32 scale per row (quantize.py's). The
        table is read and written EMBEDDING_ROWS rows at a time: at 8B it is 2.5 GB in fp32."""
        w, name = self.w, "model.embed_tokens.weight"
        vocab, hidden = self.weights.shape(name)
        slices = [(start, min(start + EMBEDDING_ROWS, vocab)) for start in range(0, vocab, EMBEDDING_ROWS)]
        if self.quantization == "none":
            chunks = (self.weights.rows(name, start, stop) for start, stop in slices)
            table = w.stream("embed_tokens.weight", (vocab, hidden), np.float32, chunks)
            return w.op("Gather", table, INPUT_IDS, axis=0)
        scales = np.empty((vocab, 1), dtype=np.float32)
        quantized = np.empty((vocab, hidden), dtype=np.int8)
        for start, stop in slices:
            rows = self.weights.rows(name, start, stop)
            part = (np.abs(rows).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
            part[part == 0] = 1.0
            scales[start:stop] = part
            quantized[start:stop] = np.clip(np.rint(rows / part), -127, 127)
        table = w.tensor("embed_tokens.weight_int8", quantized)
        del quantized
        gathered = w.op("Cast", w.op("Gather", table, INPUT_IDS, axis=0), to=TensorProto.FLOAT)
        return w.op(
            "Mul", gathered, w.op("Gather", w.tensor("embed_tokens.weight_row_scale", scales), INPUT_IDS, axis=0)
        )


class DecoderGraphBuilder:
    """Writes the score graph of one checkpoint (see the module docstring)."""

    def __init__(self, layers: GraphWeights, shape: DecoderShape) -> None:
        self.layers, self.weights, self.w, self.shape = layers, layers.weights, layers.w, shape

    def rms_norm(self, x: str, weight_name: str) -> str:
        """weight * x / sqrt(mean(x^2) + eps) over the last axis (transformers' Qwen2RMSNorm)."""
        w = self.w
        variance = w.op("ReduceMean", w.op("Pow", x, w.const(2.0, np.float32)), axes=[-1], keepdims=1)
        root = w.op("Sqrt", w.op("Add", variance, w.const(self.shape.eps, np.float32)))
        normed = w.op("Div", x, root)
        return w.op("Mul", w.tensor(weight_name, self.weights.get(weight_name)), normed)

    def rotary(self, x: str, cos: str, sin: str) -> str:
        """x * cos + rotate_half(x) * sin for [batch, heads, seq, head_dim] and cos/sin [batch, 1, seq, head_dim]."""
        w, half = self.w, self.shape.head_dim // 2
        first = w.op("Slice", x, w.const([0]), w.const([half]), w.const([-1]))
        second = w.op("Slice", x, w.const([half]), w.const([self.shape.head_dim]), w.const([-1]))
        rotated = w.op("Concat", w.op("Neg", second), first, axis=-1)
        return w.op("Add", w.op("Mul", x, cos), w.op("Mul", rotated, sin))

    def heads_first(self, x: str, heads: int) -> str:
        """[batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]."""
        w = self.w
        split = w.op("Reshape", x, w.const([0, 0, heads, self.shape.head_dim]))
        return w.op("Transpose", split, perm=[0, 2, 1, 3])

    # --- the graph -----------------------------------------------------------------------------------------

    def build(self, yes_token_id: int, no_token_id: int, log: Callable[[str], None]) -> onnx.ModelProto:
        s, w = self.shape, self.w
        batch_seq = w.op("Shape", INPUT_IDS)
        batch = w.op("Gather", batch_seq, w.const(0), axis=0)
        seq = w.op("Gather", batch_seq, w.const(1), axis=0)
        past = w.op("Gather", w.op("Shape", PAST_KEYS), w.const(2), axis=0)
        positions = w.op("Add", w.op("Range", w.const(0), seq, w.const(1)), past)  # [seq]
        # query i sees every past position and the new positions up to its own
        causal = w.op(
            "LessOrEqual", w.op("Unsqueeze", positions, w.const([0])), w.op("Unsqueeze", positions, w.const([1]))
        )
        seq_1, past_1 = w.op("Unsqueeze", seq, w.const([0])), w.op("Unsqueeze", past, w.const([0]))
        seen = w.op(
            "ConstantOfShape",
            w.op("Concat", seq_1, past_1, axis=0),
            value=helper.make_tensor("", TensorProto.BOOL, [1], [True]),
        )
        allowed = w.op("Concat", seen, causal, axis=1)  # [seq, past + seq]
        blocked = float(np.finfo(np.float32).min)
        mask = w.op("Where", allowed, w.const(0.0, np.float32), w.const(blocked, np.float32))
        mask = w.op("Unsqueeze", mask, w.const([0, 1]))  # [1, 1, seq, past + seq]

        x = self.layers.embedding()
        cos, sin = self._cos_sin(positions)  # [1, 1, seq, head_dim]
        present_keys, present_values = [], []
        for i in range(s.layers):
            log(f"layer {i + 1} of {s.layers}")
            prefix = f"model.layers.{i}"
            h = self.rms_norm(x, prefix + ".input_layernorm.weight")
            k, v = self._keys_values(prefix, h, cos, sin, i, batch)
            present_keys.append(w.op("Unsqueeze", w.op("Gather", k, w.const(0), axis=0), w.const([0])))
            present_values.append(w.op("Unsqueeze", w.op("Gather", v, w.const(0), axis=0), w.const([0])))
            if i == s.layers - 1:
                x, h, cos, sin, mask = self._scored_rows(x, h, cos, sin, mask)
            x = w.op("Add", x, self._attention(prefix, h, k, v, cos, sin, mask))
            x = w.op("Add", x, self._mlp(prefix, self.rms_norm(x, prefix + ".post_attention_layernorm.weight")))
        last = w.op("Gather", self.rms_norm(x, "model.norm.weight"), w.const(0), axis=1)  # [batch, hidden]
        head = "model.embed_tokens.weight" if s.tied or "lm_head.weight" not in self.weights else "lm_head.weight"
        yes, no = (self.weights.rows(head, i, i + 1)[0] for i in (yes_token_id, no_token_id))
        direction = (yes - no).astype(np.float32)
        scores = w.op("MatMul", last, w.tensor("direction", direction))
        scores = w.op("Add", scores, w.const(self._head_offset(yes_token_id, no_token_id), np.float32))
        self.w.nodes.append(helper.make_node("Identity", [scores], [SCORES]))
        self.w.nodes.append(helper.make_node("Concat", present_keys, [PRESENT_KEYS], axis=0))
        self.w.nodes.append(helper.make_node("Concat", present_values, [PRESENT_VALUES], axis=0))
        return self._model()

    def _head_offset(self, yes_token_id: int, no_token_id: int) -> float:
        if "lm_head.bias" not in self.weights:
            return 0.0
        bias = self.weights.get("lm_head.bias")
        return float(bias[yes_token_id] - bias[no_token_id])

    def _cos_sin(self, positions: str) -> tuple[str, str]:
        """cos and sin of the rotary angles at `positions`, [1, 1, seq, head_dim] (transformers' default rotary)."""
        w, dim = self.w, self.shape.head_dim
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
        # theta ** e rounded to float32 once, then a float32 reciprocal: torch's values to the bit (numpy's float32
        # power is off by an ulp in some entries, which a deep net carries into the scores)
        powers = np.power(np.float64(np.float32(self.shape.rope_theta)), exponents.astype(np.float64)).astype(
            np.float32
        )
        inv_freq = (np.float32(1.0) / powers).astype(np.float32)
        angles = w.op(
            "Mul",
            w.op("Unsqueeze", w.op("Cast", positions, to=TensorProto.FLOAT), w.const([1])),
            w.const(inv_freq, np.float32),
        )
        both = w.op("Unsqueeze", w.op("Concat", angles, angles, axis=-1), w.const([0, 1]))
        return w.op("Cos", both), w.op("Sin", both)

    def _keys_values(self, prefix: str, h: str, cos: str, sin: str, layer: int, batch: str) -> tuple[str, str]:
        """The layer's keys (rotary applied) and values [batch, kv_heads, past + seq, head_dim] after the past."""
        w, s = self.w, self.shape
        k = self._rotated_heads(h, prefix, "k", s.kv_heads, cos, sin)
        v = self.heads_first(self.layers.linear(h, prefix + ".self_attn.v_proj", bias=True), s.kv_heads)
        expand_to = w.op("Concat", w.op("Unsqueeze", batch, w.const([0])), w.const([1, 1, 1]), axis=0)  # broadcast

        def after_past(past: str, new: str) -> str:
            layer_past = w.op("Gather", past, w.const(layer), axis=0)  # [kv_heads, past, head_dim]
            shared = w.op("Expand", w.op("Unsqueeze", layer_past, w.const([0])), expand_to)
            return w.op("Concat", shared, new, axis=2)

        return after_past(PAST_KEYS, k), after_past(PAST_VALUES, v)

    def _scored_rows(self, x: str, h: str, cos: str, sin: str, mask: str) -> tuple[str, str, str, str, str]:
        """Each row's last real token, SCORED_COPIES times, of x, h [batch, seq, hidden], cos/sin and the mask."""
        w = self.w
        last = w.op("Sub", LENGTHS, w.const(1))
        index = w.op("Expand", w.op("Unsqueeze", last, w.const([1])), w.const([1, SCORED_COPIES]))  # [batch, n]

        def rows_at(tensor: str, width: int) -> str:
            gather_index = w.op("Expand", w.op("Unsqueeze", index, w.const([2])), w.const([1, 1, width]))
            return w.op("GatherElements", tensor, gather_index, axis=1)

        s = self.shape

        # cos/sin [1, 1, seq, head_dim] -> per row [batch, 1, n, head_dim]
        def angle_rows(angle: str) -> str:
            flat = w.op("Squeeze", angle, w.const([0, 1]))  # [seq, head_dim]
            return w.op("Unsqueeze", w.op("Gather", flat, index, axis=0), w.const([1]))

        row_mask = w.op(
            "Unsqueeze", w.op("Gather", w.op("Squeeze", mask, w.const([0, 1])), index, axis=0), w.const([1])
        )
        return rows_at(x, s.hidden), rows_at(h, s.hidden), angle_rows(cos), angle_rows(sin), row_mask

    def _attention(self, prefix: str, h: str, k: str, v: str, cos: str, sin: str, mask: str) -> str:
        """o_proj of the attention of `h`'s queries over keys `k` and values `v`, with the additive `mask`."""
        w, s = self.w, self.shape
        q = self._rotated_heads(h, prefix, "q", s.heads, cos, sin)
        k, v = self._per_query_head(k), self._per_query_head(v)
        scores = w.op("MatMul", q, w.op("Transpose", k, perm=[0, 1, 3, 2]))
        scores = w.op("Add", w.op("Mul", scores, w.const(s.head_dim**-0.5, np.float32)), mask)
        attended = w.op("MatMul", w.op("Softmax", scores, axis=-1), v)  # [batch, heads, seq, head_dim]
        joined = w.op("Reshape", w.op("Transpose", attended, perm=[0, 2, 1, 3]), w.const([0, 0, s.heads * s.head_dim]))
        return self.layers.linear(joined, prefix + ".self_attn.o_proj", bias=False)

    def _rotated_heads(self, h: str, prefix: str, kind: str, heads: int, cos: str, sin: str) -> str:
        """Queries ("q") or keys ("k") [batch, heads, seq, head_dim]: projected, per-head RMSNorm (Qwen3), rotary."""
        w, s = self.w, self.shape
        x = w.op(
            "Reshape",
            self.layers.linear(h, f"{prefix}.self_attn.{kind}_proj", bias=True),
            w.const([0, 0, heads, s.head_dim]),
        )
        if s.qk_norm:
            x = self.rms_norm(x, f"{prefix}.self_attn.{kind}_norm.weight")
        return self.rotary(w.op("Transpose", x, perm=[0, 2, 1, 3]), cos, sin)

    def _per_query_head(self, t: str) -> str:
        """[batch, kv_heads, total, head_dim] -> [batch, heads, total, head_dim], each key/value head repeated for
        its group of query heads, in the form OpenVINO's CPU plugin fuses into its attention kernel."""
        w, s = self.w, self.shape
        groups = s.heads // s.kv_heads
        if groups == 1:
            return t
        # a constant broadcast target: with a computed one the plugin leaves the expansion and its own Softmax
        five = w.op("Expand", w.op("Unsqueeze", t, w.const([2])), w.const([1, 1, groups, 1, 1]))
        return w.op("Reshape", five, w.const([0, s.heads, -1, s.head_dim]))

    def _mlp(self, prefix: str, x: str) -> str:
        w = self.w
        gate = self.layers.linear(x, prefix + ".mlp.gate_proj", bias=False)
        up = self.layers.linear(x, prefix + ".mlp.up_proj", bias=False)
        return self.layers.linear(
            w.op("Mul", w.op("Mul", gate, w.op("Sigmoid", gate)), up), prefix + ".mlp.down_proj", bias=False
        )

    def _model(self) -> onnx.ModelProto:
        s = self.shape
        kv: list[str | int | None] = [s.layers, s.kv_heads, "past", s.head_dim]
        inputs = [
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(LENGTHS, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(PAST_KEYS, TensorProto.FLOAT, kv),
            helper.make_tensor_value_info(PAST_VALUES, TensorProto.FLOAT, kv),
        ]
        total: list[str | int | None] = [s.layers, s.kv_heads, "total", s.head_dim]
        outputs = [
            helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info(PRESENT_KEYS, TensorProto.FLOAT, total),
            helper.make_tensor_value_info(PRESENT_VALUES, TensorProto.FLOAT, total),
        ]
        graph = helper.make_graph(self.w.nodes, "score", inputs, outputs, self.w.initializers)
        opsets = [helper.make_opsetid("", OPSET)] + (
            [helper.make_opsetid("com.microsoft", 1)] if self.layers.quantization == "int8" else []
        )
        return helper.make_model(graph, opset_imports=opsets, producer_name="rerank-onnx", ir_version=8)


def build_decoder_graph(
    checkpoint: Path,
    config: dict[str, Any],
    destination: Path,
    *,
    data_file: str,
    yes_token_id: int,
    no_token_id: int,
    quantization: str,
    log: Callable[[str], None] = print,
) -> None:
    """Write the score graph of a Qwen2 / Qwen3 checkpoint to `destination`, its weights to `data_file` beside it.

    Args:
        checkpoint: the checkpoint folder (config.json, *.safetensors).
        config: its config.json.
        destination: the graph file to write (model.onnx).
        data_file: the external data file's name, in destination's folder.
        yes_token_id, no_token_id: the tokens whose logit difference is the score.
        quantization: "none" (fp32), "int8" (MatMulNBits, 8 bits, blocks of 32) or "int8-fast" (per-tensor uint8
            activations, per-column int8 weights); both int8 quantizations: an int8 embedding with a scale per row.
        log: where progress lines go.

    Raises:
        ExportError: an unsupported configuration, or a checkpoint without a tensor the graph needs.
    """
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization: expected one of {QUANTIZATIONS}, got {quantization!r}")
    shape = DecoderShape.from_config(config)
    if shape.heads % shape.kv_heads or not math.isfinite(shape.rope_theta):
        raise ExportError(f"{checkpoint}/config.json: {shape.heads} heads over {shape.kv_heads} key/value heads")
    writer = GraphWriter(destination.parent / data_file)
    try:
        model = DecoderGraphBuilder(GraphWeights(SafetensorsWeights(checkpoint), writer, quantization), shape).build(
            yes_token_id, no_token_id, log
        )
    finally:
        writer.close()
    onnx.save_model(model, str(destination))
