"""fp32 score graph -> int8 graph for x86 CPUs.

Three quantizations, measured side by side in benchmarks/ (random weights, full size):
- int8: weights and activations quantized in blocks of BLOCK along the reduction dimension (MatMulNBits,
  8 bits; the artifact config records the block, and OpenVINO's int8 activations take it as their group).
  Ranks like fp32 (Spearman >= 0.99 against the fp32 graph where the per-tensor quantization gave
  ~0.9-0.98); batch-independent scores.
- int8-fast: one activation scale per tensor (DynamicQuantizeMatMul): the fastest integer kernel,
  but one scale for a whole batch coarsens every small activation and couples rows of a batch.
- int8-static: activation scales calibrated once at export (NNCF post-training quantization on
  calibration.py's pairs), so constants of the graph: batch-independent, and the plain integer kernels run
  with no scale computed at run time. Ranks measurably less like fp32 than `int8` (docs/backends.md).
"""

from __future__ import annotations

import contextlib
import gc
import io
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rerank_onnx.artifact import ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS
from rerank_onnx.errors import MissingDependencyError

from .onnx_files import save_with_external_data

BLOCK = 32
# SmoothQuant's migration strength (NNCF's default for transformers) where the export applies it: on a real-weight
# MiniLM encoder it took int8-static's Spearman against fp32 from 0.958 to 0.971 (0.5: 0.971); on the random base-v2
# decoder from 0.987 down to 0.962, at 12.4 GB peak RSS instead of 7.8 (docs/backends.md#int8-static-artifacts)
SMOOTH_QUANT_ALPHA = 0.95
SMOOTH_QUANT_OFF = -1.0  # NNCF's value for "not applied"

# The quantizations the exporter offers (`--quantization`), described in the artifact config.
QUANTIZATIONS = {
    "int8": (
        f"Transformer MatMuls: int8 weights in blocks of {BLOCK} input channels (symmetric, one fp32 scale per "
        "block); activations quantized to int8 per row in the same blocks at run time (onnxruntime "
        "MatMulNBits, bits=8, accuracy_level=4). Token embedding: int8 per row. "
        "Final score projection, norms and attention: fp32."
    ),
    "int8-fast": (
        "Transformer MatMuls: int8 weights per output channel (symmetric), uint8 activations quantized "
        "per tensor at run time (onnxruntime DynamicQuantizeMatMul, the U8S8 kernel that reaches VNNI/AMX). "
        "Token embedding: int8 per row. Final score projection, norms and attention: fp32."
    ),
    "int8-static": (
        "Transformer MatMuls: int8 weights per output channel (symmetric), int8 activations per tensor with "
        "scales calibrated at export (NNCF post-training quantization, QuantizeLinear/DequantizeLinear pairs) on "
        "the exporter's calibration pairs; attention products and the final score projection fp32. Token "
        "embedding: int8 per row (NNCF's)."
    ),
    "none": "fp32 everywhere.",
}


def describe(quantization: str, *, smooth_quant: bool) -> str:
    """The artifact config's description of `quantization`, with SmoothQuant where the export applied it."""
    if not smooth_quant:
        return QUANTIZATIONS[quantization]
    return (
        QUANTIZATIONS[quantization] + f" SmoothQuant (alpha {SMOOTH_QUANT_ALPHA}) moved activation outliers into the "
        "weights before calibration."
    )


def quantize(
    quantization: str,
    fp32_path: Path,
    destination: Path,
    *,
    data_file: str,
    calibration: list[dict[str, np.ndarray]] | None = None,
    smooth_quant: bool = False,
) -> None:
    """Write the `quantization` version of the fp32 graph at `fp32_path` to `destination`.

    Args:
        quantization: a key of QUANTIZATIONS other than "none".
        fp32_path: the fp32 score graph.
        destination: the graph file to write (its weights go to `data_file` beside it).
        data_file: the external data file's name.
        calibration: int8-static only: the graph's inputs for each calibration prompt (`decoder_feeds`,
            `encoder_feeds`).
        smooth_quant: int8-static only: apply SmoothQuant (SMOOTH_QUANT_ALPHA) before calibrating.
    """
    if quantization == "int8":
        quantize_int8_blockwise(fp32_path, destination, data_file=data_file)
    elif quantization == "int8-fast":
        quantize_int8_fast(fp32_path, destination, data_file=data_file)
    elif quantization == "int8-static":
        if not calibration:
            raise ValueError("int8-static needs calibration inputs")
        quantize_int8_static(
            fp32_path, destination, data_file=data_file, calibration=calibration, smooth_quant=smooth_quant
        )
    else:
        raise ValueError(f"no quantizer for quantization {quantization!r}")


def quantize_int8_blockwise(fp32_path: Path, destination: Path, *, data_file: str, block: int = BLOCK) -> None:
    model = onnx.load(str(fp32_path), load_external_data=True)
    model = blockwise_int8_matmuls(model, excluded=[n.name for n in _score_projections(model)], block=block)
    gc.collect()
    _quantize_embedding_per_row(model)
    save_with_external_data(model, destination, data_file=data_file)
    del model
    gc.collect()


def blockwise_int8_matmuls(model: onnx.ModelProto, *, excluded: list[str], block: int = BLOCK) -> onnx.ModelProto:
    """The `int8` scheme's MatMuls: every MatMul but `excluded` as MatMulNBits (8 bits, blocks of `block`,
    symmetric, accuracy_level 4: int8 activations per block). Also used by benchmarks/gemm_ceiling.py and
    benchmarks/int8_groups.py (other blocks)."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)  # it logs a line per node
    try:
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=excluded, algo_config=config)
        quantizer.process()
    finally:
        quantizer_log.setLevel(level)
    quantized: onnx.ModelProto = quantizer.model.model
    return quantized


def quantize_int8_fast(fp32_path: Path, destination: Path, *, data_file: str) -> None:
    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    excluded = [n.name for n in _score_projections(fp32)]
    del fp32
    staged = destination.with_name(destination.stem + ".matmul-int8.onnx")
    staged_data = staged.name + ".data"
    dynamic_int8_matmuls(fp32_path, staged, excluded=excluded, external_data=True)
    gc.collect()
    model = onnx.load(str(staged), load_external_data=True)
    _quantize_embedding_per_row(model)
    save_with_external_data(model, destination, data_file=data_file)
    del model
    gc.collect()
    staged.unlink()
    (staged.parent / staged_data).unlink(missing_ok=True)


def dynamic_int8_matmuls(source: Path, destination: Path, *, excluded: list[str], external_data: bool) -> None:
    """The `int8-fast` scheme's MatMuls: onnxruntime's dynamic int8 on every MatMul but `excluded`
    (int8 weights per output channel, uint8 activations per tensor). Also used by
    benchmarks/gemm_ceiling.py."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        model_input=str(source),
        model_output=str(destination),
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        reduce_range=False,
        # U8S8: QUInt8 weights fall onto a kernel ~3.6x slower on x86 (measured on a Xeon with AMX, Nov 2026).
        weight_type=QuantType.QInt8,
        # A 1-D per-channel weight fails at run time ("b zero point is not valid"); the score
        # projection is one dot product per row anyway.
        nodes_to_exclude=excluded,
        use_external_data_format=external_data,
        extra_options={"MatMulConstBOnly": True},
    )


def quantize_int8_static(
    fp32_path: Path,
    destination: Path,
    *,
    data_file: str,
    calibration: list[dict[str, np.ndarray]],
    smooth_quant: bool,
) -> None:
    """The `int8-static` quantization: NNCF's post-training quantization of every weight MatMul but the score
    projection, activation scales from `calibration` (one feed per prompt), after SmoothQuant if `smooth_quant`.
    NNCF quantizes the token embedding per row itself."""
    import logging

    try:
        import nncf
    except ImportError as exc:
        raise MissingDependencyError("nncf", "pip install 'rerank-onnx[export-int8-static]'") from exc
    from nncf.onnx.quantization.backend_parameters import BackendParameters
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    # the weights stay in their file beside the graph (NNCF reads them from there): a graph over protobuf's 2 GB
    # (Qwen3-0.6B, bge-m3, large-v2) cannot be serialized with them inline
    model = onnx.load(str(fp32_path), load_external_data=False)
    excluded = static_excluded(model)
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars: the export logs its own steps
        quantized = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=excluded),
            advanced_parameters=AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(
                    matmul=SMOOTH_QUANT_ALPHA if smooth_quant else SMOOTH_QUANT_OFF
                ),
                backend_params={BackendParameters.EXTERNAL_DATA_DIR: str(fp32_path.resolve().parent)},
            ),
        )
    del model
    gc.collect()
    save_with_external_data(quantized, destination, data_file=data_file)


def static_excluded(model: onnx.ModelProto) -> list[str]:
    """The MatMuls int8-static leaves in fp32: the score projection and attention's two products (no weight:
    per-tensor static scales cost them the most)."""
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in _score_projections(model)] + [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[0] not in weights and n.input[1] not in weights
    ]


def decoder_feeds(model_path: Path, prompts: list[list[int]]) -> list[dict[str, np.ndarray]]:
    """The causal score graph's inputs for each prompt alone, with no past (int8-static's calibration: one prompt
    at a time, so that static scales do not learn from padding)."""
    model = onnx.load(str(model_path), load_external_data=False)
    past = next(i for i in model.graph.input if i.name == "past_keys")
    layers, heads, _, width = (d.dim_value for d in past.type.tensor_type.shape.dim)
    empty = np.zeros((layers, heads, 0, width), dtype=np.float32)
    return [
        {
            "input_ids": np.array([ids], dtype=np.int64),
            "lengths": np.array([len(ids)], dtype=np.int64),
            "past_keys": empty,
            "past_values": empty,
        }
        for ids in prompts
    ]


def encoder_feeds(pair_ids: list[list[int]], starts: list[int], *, token_types: bool) -> list[dict[str, np.ndarray]]:
    """A cross-encoder graph's inputs for each pair alone (int8-static's calibration, as `decoder_feeds`): its
    ids, a mask of ones and, for a graph that takes them, token types of 1 from the document on."""
    feeds = []
    for ids, start in zip(pair_ids, starts):
        feed = {INPUT_IDS: np.array([ids], dtype=np.int64), ATTENTION_MASK: np.ones((1, len(ids)), dtype=np.int64)}
        if token_types:
            feed[TOKEN_TYPE_IDS] = (np.arange(len(ids)) >= start).astype(np.int64)[None, :]
        feeds.append(feed)
    return feeds


def _score_projections(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The MatMuls that produce the score: a 1-D weight (the causal score graph's yes - no row) or one
    output column (a cross-encoder's one-logit head)."""
    one_d = {t.name for t in model.graph.initializer if len(t.dims) == 1 or (len(t.dims) == 2 and t.dims[1] == 1)}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in one_d]


def _quantize_embedding_per_row(model: onnx.ModelProto) -> None:
    """Replace the fp32 token-embedding Gather (the largest 2-D table a Gather reads: encoders also have
    position and token-type tables) by an int8 table with one fp32 scale per row.

    quantize_dynamic would give the 0.93 GB table (large-v2) a single uint8 scale for all rows;
    per-row scales keep each token's vector at full relative precision for a quarter of the bytes.
    """
    initializers = {t.name: t for t in model.graph.initializer}
    tables = [
        (int(np.prod(initializers[n.input[0]].dims)), index)
        for index, n in enumerate(model.graph.node)
        if n.op_type == "Gather"
        and n.input[0] in initializers
        and len(initializers[n.input[0]].dims) == 2
        and initializers[n.input[0]].data_type == TensorProto.FLOAT
    ]
    for _, index in sorted(tables, reverse=True)[:1]:
        node = model.graph.node[index]
        table_proto = initializers[node.input[0]]
        table = numpy_helper.to_array(table_proto)
        scales = (np.abs(table).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
        scales[scales == 0] = 1.0
        quantized = np.clip(np.rint(table / scales), -127, 127).astype(np.int8)
        del table
        name = node.input[0]
        model.graph.initializer.remove(table_proto)
        model.graph.initializer.extend(
            [numpy_helper.from_array(quantized, name + "_int8"), numpy_helper.from_array(scales, name + "_row_scale")]
        )
        out = node.output[0]
        ids = node.input[1]
        replacement = [
            helper.make_node("Gather", [name + "_int8", ids], [out + "_int8"], name=node.name + "_int8", axis=0),
            helper.make_node(
                "Cast", [out + "_int8"], [out + "_int8_f"], name=node.name + "_cast", to=TensorProto.FLOAT
            ),
            helper.make_node("Gather", [name + "_row_scale", ids], [out + "_scale"], name=node.name + "_scale", axis=0),
            helper.make_node("Mul", [out + "_int8_f", out + "_scale"], [out], name=node.name + "_dequant"),
        ]
        del model.graph.node[index]
        for offset, new in enumerate(replacement):
            model.graph.node.insert(index + offset, new)
        return
    raise ValueError("no 2-D fp32 embedding Gather found in the graph")
