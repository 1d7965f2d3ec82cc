"""The score graph as OpenVINO compiles it: three rewrites of the artifact's graph.

`split_presents`: each layer's new keys and values as outputs, instead of the stacked `present_keys` /
`present_values` of past and new tokens, which in OpenVINO live until the run ends in blocks that the keys and
values expanded to every query head have grown; the engine joins the new ones with the past it was given. It
keeps a slice of a long prompt at the memory of a run without presents, and runs faster
(docs/memory.md#more-measurements).

`stateful_attention`: the model a long prompt runs on whole. Each layer's attention becomes one
ScaledDotProductAttention over keys and values kept as model state, the pattern the CPU plugin fuses into its
own attention kernel: it works through the queries in blocks (no [queries, keys] matrix per head) and reads the
key/value heads for every query head without expanding them. With no past, the exported mask is the causal
triangle, so the kernel's own causal masking replaces it (its bf16 kernel misreads a [1, 1, L, S] mask for rows
after the first). With a past in its state the plugin takes a one-query-at-a-time kernel, several times slower
per slice, so it serves only rows run whole from their first token, in a child process (openvino_whole.py;
docs/memory.md#whole-rows).

`expand_weights`: for encoder graphs under bf16 compute, the int8 weights become bf16 constants before
compiling, so the plugin multiplies by stored bf16 weights instead of decompressing int8 blocks in its kernels.
The bf16 values are the ones the plugin's decompression computes (int8 x its block's scale, rounded to bf16 to
nearest even), so the scores do not change; it runs faster for more memory (docs/backends.md, "An encoder's
int8 weights"). Decoders keep their int8 weights: their default on bf16 CPUs without AMX, `int8`, needs them.

The rewritten models are saved as OpenVINO IR in the compile cache folder, each in a folder of its own with
OpenVINO's compiled blobs of it, so a warm start compiles from them (and their blobs) without reading the
ONNX file, and a changed rewrite or OpenVINO version replaces what the old one left (cache.source_folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..artifact import INPUT_IDS, PAST_KEYS, PAST_VALUES, PRESENT_KEYS, PRESENT_VALUES
from .cache import source_folder

NEW_KEYS, NEW_VALUES = "new_keys", "new_values"  # output i: layer i's keys or values of the new tokens
BEAM_INDEX = "beam_idx"  # the stateful model's input: which state row each row continues (its own: 0..rows-1)
IR_FILE = "scores.xml"  # a rewritten graph, in its source folder (cache.source_folder)
AS_IS_MARKER = "as-is"  # in a source folder: nothing to rewrite, compile the ONNX file itself
# the rewrites: split_presents; split_presents, or expand_weights for an encoder graph; stateful_attention
NEW_KV, NEW_KV_BF16, STATEFUL = "new-kv", "new-kv-bf16", "stateful"
# each rewrite's revision, part of its IR's name: a changed rewrite does not compile a cached IR of the old one
REVISIONS = {NEW_KV: 1, NEW_KV_BF16: 1, STATEFUL: 3}
# the steps from a MatMul's weight input up to the Constant its int8 weights are stored in (the ONNX frontend's
# MatMulNBits: Reshape <- Multiply by the scales <- Subtract the zero point <- Convert <- Constant)
DECOMPRESSION_STEPS = 6
HASHED_GRAPH_BYTES = 64 << 20  # exported graphs keep their weights beside them: model.onnx is 0.1-2.5 MB


def _graph_key(graph: Path, variant: str) -> str:
    """Names a rewritten graph after the graph file's bytes (the cache folder is named after the weights, which
    a re-export with a changed graph may leave as they were), the rewrite's revision and OpenVINO's version
    (whose blobs an upgrade no longer reads). The bytes, not the path: two copies of one artifact share their
    folder instead of replacing each other's (cache.source_folder). A graph that holds its weights itself,
    over HASHED_GRAPH_BYTES, is named after its path, size and modification time instead."""
    import openvino as ov

    stat = graph.stat()
    if stat.st_size <= HASHED_GRAPH_BYTES:
        identity = hashlib.sha256(graph.read_bytes()).hexdigest()
    else:
        identity = f"{graph.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    source = f"{identity}:{variant}:{REVISIONS[variant]}:{ov.get_version()}"
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def new_token_outputs(name: str, layer: int) -> str:
    """The rewritten model's output for `layer` of PRESENT_KEYS or PRESENT_VALUES."""
    return f"{NEW_KEYS if name == PRESENT_KEYS else NEW_VALUES}.{layer}"


def split_presents(model: Any) -> int | None:
    """Rewrite `model` (an ov.Model of the score graph) so that its present outputs become each layer's keys
    and values of the new tokens; returns the layer count, or None (model unchanged) where the graph is
    not the exported shape (no presents, or no per-layer join of past and new)."""
    found: dict[str, tuple[Any, list[Any]]] = {}
    for name in (PRESENT_KEYS, PRESENT_VALUES):
        results = [r for r in model.get_results() if name in r.input_value(0).get_names()]
        if len(results) != 1:
            return None
        stacked = results[0].input_value(0).get_node()
        new_parts = []
        for i in range(stacked.get_input_size()):
            join = _joined(stacked.input_value(i), steps=6)  # under Unsqueeze / Gather of row 0
            if join is None:
                return None
            new_parts.append(join.input_value(1))
        found[name] = (results[0], new_parts)
    for name, (result, new_parts) in found.items():
        model.remove_result(result)
        for layer, part in enumerate(new_parts):
            model.add_outputs([part])[0].get_tensor().set_names({new_token_outputs(name, layer)})
    return len(found[PRESENT_KEYS][1])


def _attention_parts(softmax: Any) -> tuple[Any, Any, Any, Any, Any] | None:
    """The exported attention around `softmax(q @ k^T * scale + mask) @ v`: (q, expanded k, expanded v, scale,
    the output MatMul), or None where the graph is not that shape (the mask is not kept: see
    stateful_attention)."""
    add = softmax.input_value(0).get_node()
    if add.get_type_name() != "Add":
        return None
    mul = add.input_value(0).get_node()
    if mul.get_type_name() != "Multiply":
        return None
    scores, scale = mul.input_value(0).get_node(), mul.input_value(1)
    transpose = scores.input_value(1).get_node()
    if scores.get_type_name() != "MatMul" or transpose.get_type_name() != "Transpose":
        return None
    consumers = [t.get_node() for t in softmax.output(0).get_target_inputs()]
    if len(consumers) == 1 and consumers[0].get_type_name() == "Convert":  # the export's cast back to float32
        consumers = [t.get_node() for t in consumers[0].output(0).get_target_inputs()]
    if len(consumers) != 1 or consumers[0].get_type_name() != "MatMul":
        return None
    out = consumers[0]
    return scores.input_value(0), transpose.input_value(0), out.input_value(1), scale, out


def _joined(output: Any, steps: int = 4) -> Any | None:
    """The Concat of past and new keys (or values) at most `steps` nodes up the first inputs from `output`
    (under the expansion to every query head: Reshape of Broadcast of Unsqueeze), or None."""
    node = output.get_node()
    for _ in range(steps):
        if node.get_type_name() == "Concat" and node.get_input_size() == 2:
            return node
        node = node.input_value(0).get_node()
    return None


def _is_default_scale(scale: Any, head_dim: int) -> bool:
    """Whether `scale` is a constant 1 / sqrt(head_dim), the attention kernel's default."""
    node = scale.get_node()
    if node.get_type_name() != "Constant":
        return False
    values = node.get_data().reshape(-1)
    return bool(values.size == 1 and abs(float(values[0]) * head_dim**0.5 - 1.0) < 1e-6)


def stateful_attention(model: Any) -> bool:
    """Rewrite `model` (an ov.Model of the score graph, read from the artifact) for rows that run whole from
    their first token: each layer's keys and values of the past become model state (read, joined with the
    new ones, assigned) and its attention one ScaledDotProductAttention, which the CPU plugin fuses into its
    key/value-cache attention kernel; a layer whose queries are not its new tokens (the last layer of graphs
    exported with the last layer trimmed to each row's scored token) keeps its own attention over the state. The past inputs go; a `beam_idx` input (each row's own index) comes.
    Returns False (model unchanged) where the graph is not the exported shape."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    if not {PAST_KEYS, PAST_VALUES, INPUT_IDS} <= set(params):
        return False
    past_shape = params[PAST_KEYS].get_partial_shape()  # [layers, kv_heads, tokens, head_dim]
    kv_heads, head_dim = past_shape[1].get_length(), past_shape[3].get_length()
    layers = _attention_layers(model, head_dim)
    if not layers:
        return False
    for result in list(model.get_results()):
        if {PRESENT_KEYS, PRESENT_VALUES} & result.input_value(0).get_names():
            model.remove_result(result)
    beam = ops.parameter([-1], np.int32, name=BEAM_INDEX)
    beam.output(0).get_tensor().set_names({BEAM_INDEX})
    axis = ops.constant(np.int64(0))
    rows = ops.gather(ops.shape_of(params[INPUT_IDS]), ops.constant(np.array([0], dtype=np.int64)), axis)
    per_row = ops.constant(np.array([kv_heads, 0, head_dim], dtype=np.int64))
    empty = ops.broadcast(ops.constant(np.float32(0)), ops.concat([rows, per_row], 0))
    sinks: list[Any] = []
    variables: list[Any] = []
    states: list[Any] = []
    for layer, ((q, keys, values, _, out), joins, causal) in enumerate(layers):
        for part, join in zip(("keys", "values"), joins):
            info = VariableInfo()
            info.data_shape = ov.PartialShape([-1, kv_heads, -1, head_dim])
            info.data_type = ov.Type.f32
            info.variable_id = f"past_{part}.{layer}"
            variable = Variable(info)
            state = ops.read_value(empty, variable)
            states.append(state)
            join.input(0).replace_source_output(ops.gather(state, beam, axis).output(0))
            sinks.append(ops.assign(join, variable))
            variables.append(variable)
        if not causal:
            continue
        # rows run from their first token with no past, so the exported mask is the causal triangle: the
        # kernel's own causal masking replaces it (no [queries, keys] mask is built), and the scale is its default
        attention = ops.scaled_dot_product_attention(q, keys, values, causal=True)
        out.output(0).replace(attention.output(0))
    for name in (PAST_KEYS, PAST_VALUES):  # what read the past's length reads the first layer's state
        for target in list(params[name].output(0).get_target_inputs()):
            if target.get_node().get_type_name() == "ShapeOf":
                target.replace_source_output(states[0].output(0))
        model.remove_parameter(params[name])
    model.add_parameters([beam])
    model.add_sinks(sinks)
    model.add_variables(variables)
    model.validate_nodes_and_infer_types()
    return True


def _attention_layers(model: Any, head_dim: int) -> list[tuple[tuple[Any, ...], tuple[Any, Any], bool]] | None:
    """Each layer's attention parts (queries, keys, values, scale, output), the Concats that join its past
    keys and values to the new ones, and whether its mask is the causal triangle; None where a layer is not the
    exported shape."""
    layers: list[tuple[tuple[Any, ...], tuple[Any, Any], bool]] = []
    causal_mask = None
    for softmax in [n for n in model.get_ordered_ops() if n.get_type_name() == "Softmax"]:
        parts = _attention_parts(softmax)
        if parts is None or not _is_default_scale(parts[3], head_dim):
            return None
        keys_join, values_join = _joined(parts[1]), _joined(parts[2])
        if keys_join is None or values_join is None:
            return None
        # The first layer's mask is the causal triangle over every token. A layer with another mask (the last,
        # whose queries are each row's scored token only: graph.py) keeps its own attention, over the state.
        mask = softmax.input_value(0).get_node().input_value(1)
        causal_mask = mask if causal_mask is None else causal_mask
        layers.append((parts, (keys_join, values_join), mask == causal_mask))
    return layers


def _integer_weights(matmul: Any) -> bool:
    """Whether a MatMul's weights are integer constants decompressed on the way (a Constant of an integer type
    at most DECOMPRESSION_STEPS first inputs up from its second input, through shape and arithmetic nodes)."""
    import openvino as ov

    node = matmul.input_value(1).get_node()
    for _ in range(DECOMPRESSION_STEPS):
        op_type = node.get_type_name()
        if op_type == "Constant":
            return node.get_output_element_type(0) in (ov.Type.u8, ov.Type.i8, ov.Type.u4, ov.Type.i4)
        if op_type not in ("Reshape", "Multiply", "Subtract", "Convert", "Transpose"):
            return False
        node = node.input_value(0).get_node()
    return False


def _as_bf16(values: Any) -> Any:
    """float32 values rounded to bfloat16, to nearest even as the CPU plugin converts weights, as uint16 bits."""
    import numpy as np

    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def expand_weights(model: Any) -> bool:
    """Rewrite `model` (an ov.Model of an encoder score graph) so that its MatMuls' int8 weights become bf16
    constants (converted to float32 in the graph, which the CPU plugin keeps as bf16 weights). Returns False
    (model unchanged) where no MatMul has integer weights (an fp32 artifact), or where activations are quantized
    with constant scales (an int8-static artifact: FakeQuantize nodes, whose int8 kernels want the int8 weights)."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.passes import ConstantFolding, Manager

    ops_in_order = model.get_ordered_ops()
    if any(n.get_type_name() == "FakeQuantize" for n in ops_in_order):
        return False
    matmuls = [n for n in ops_in_order if n.get_type_name() == "MatMul" and _integer_weights(n)]
    if not matmuls:
        return False
    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)  # each decompression chain becomes one float32 Constant
    for matmul in matmuls:
        folded = matmul.input_value(1).get_node()
        if folded.get_type_name() != "Constant":
            continue  # not foldable: left as the plugin decompresses it
        values = folded.get_data()
        tensor = ov.Tensor(ov.Type.bf16, ov.Shape(list(values.shape)))
        tensor.data.view("uint16")[...] = _as_bf16(values)
        matmul.input(1).replace_source_output(ops.convert(ov.op.Constant(tensor), ov.Type.f32).output(0))
    model.validate_nodes_and_infer_types()
    return True


def _for_bf16(model: Any) -> bool:
    """NEW_KV_BF16's rewrite: a decoder's presents split (split_presents), an encoder's weights expanded."""
    params = {p.get_friendly_name() for p in model.get_parameters()}
    return split_presents(model) is not None if PAST_KEYS in params else expand_weights(model)


def split_layers(compiled: Any) -> int:
    """How many layers' new keys a compiled model outputs (0: its presents, if any, are as exported)."""
    return sum(1 for output in compiled.outputs if output.get_any_name().startswith(NEW_KEYS + "."))


def compile_source(
    core: Any, graph: Path, cache_dir: Path | None, variant: str, properties: Mapping[str, str]
) -> tuple[Any, Path | None]:
    """What to compile for `graph` rewritten as `variant` (NEW_KV: split_presents; NEW_KV_BF16: the same, or
    expand_weights for an encoder graph; STATEFUL: stateful_attention), and the folder for OpenVINO's compiled
    blobs of it under the compile `properties` (its CACHE_DIR: `blob_folder`).

    With a cache folder, the source has a folder of its own there (cache.source_folder): the rewritten IR's
    path in it (written once), or the ONNX path where there is nothing to rewrite. Without one (or where
    nothing can be written), the read and, where it applies, rewritten ov.Model, and no blob folder."""
    source, folder = _source(core, graph, cache_dir, variant)
    return source, None if folder is None else blob_folder(folder, properties)


def blob_folder(folder: Path, properties: Mapping[str, str]) -> Path | None:
    """A folder of its own in the source's folder for each set of compile properties: OpenVINO's cache key does
    not tell every property apart (a blob compiled for f32 was imported for bf16 and scored NaN; docs/memory.md,
    "One blob folder per compilation"). None where it cannot be made (then nothing is cached)."""
    key = hashlib.sha256(json.dumps(sorted(properties.items())).encode()).hexdigest()[:16]
    blobs = folder / f"blobs-{key}"
    try:
        blobs.mkdir(exist_ok=True)
        for stale in folder.glob("*.blob"):  # the layout before: blobs of every compilation side by side
            stale.unlink(missing_ok=True)
    except OSError:
        return None
    return blobs


def _source(core: Any, graph: Path, cache_dir: Path | None, variant: str) -> tuple[Any, Path | None]:
    """compile_source's source, and the source's folder in the cache (None: nothing is cached)."""
    folder = None
    if cache_dir is not None:
        folder = source_folder(cache_dir, f"{variant}-{_graph_key(graph, variant)}")
    if folder is not None:
        if (folder / AS_IS_MARKER).exists():
            return str(graph), folder
        if (folder / IR_FILE).exists():
            return str(folder / IR_FILE), folder
    # Without a cache the read model is compiled from memory: its weights read into memory rather than mapped
    # from the file, whose mapped pages would stay resident beside the converted constants the model keeps.
    model = core.read_model(str(graph), config={} if folder is not None else {"ENABLE_MMAP": False})
    rewrite = {NEW_KV: lambda m: split_presents(m) is not None, NEW_KV_BF16: _for_bf16, STATEFUL: stateful_attention}
    rewritten = rewrite[variant](model)
    if folder is None:
        return model, None
    if not rewritten:
        (folder / AS_IS_MARKER).touch()
        return str(graph), folder
    import openvino as ov

    ir = folder / IR_FILE
    partial = folder / f".{os.getpid()}-{IR_FILE}"
    try:
        ov.save_model(model, str(partial), compress_to_fp16=False)
        os.replace(partial.with_suffix(".bin"), ir.with_suffix(".bin"))  # the weights first: ir marks it complete
        os.replace(partial, ir)
    except (OSError, RuntimeError):  # a full disk or a folder gone read-only: compile from memory, leave nothing
        for path in (partial, partial.with_suffix(".bin")):
            path.unlink(missing_ok=True)
        return model, None
    return str(ir), folder
