"""The score graph as OpenVINO compiles it: present outputs of the new tokens only.

The artifact's graph returns `present_keys`/`present_values`: every layer's keys and values of the past
and the new tokens, stacked. In OpenVINO each layer's joined keys and values then live until the run
ends, in blocks that the keys and values expanded to every query head have grown, so a slice of a long
prompt kept 1.1 GB more than the same run without presents. Returning each layer's new keys and values
instead (the engine joins them with the past it was given) keeps it at the no-present level and runs
faster. Measured Dec 1 (AVX2 EPYC, base-v2 int8, fp32, one 1,024-token slice after 7,168 tokens on a
fresh model): peak 3.16 GB and 19.0 s with the stacked presents, 2.10 GB and 15.8 s with the new tokens'
per layer, 2.05 GB and 15.6 s with no presents (benchmarks/README.md).

The rewritten model is saved as OpenVINO IR in the compile cache folder, so a warm start compiles from
it (and its cached blob) without reading the ONNX file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..artifact import PRESENT_KEYS, PRESENT_VALUES

NEW_KEYS, NEW_VALUES = "new_keys", "new_values"  # output i: layer i's keys or values of the new tokens
IR_FILE = "scores-new-kv-{key}.xml"
AS_IS_MARKER = "scores-as-is-{key}"  # the graph has no presents to rewrite: compile the ONNX file itself


def _graph_key(graph: Path) -> str:
    """Names the rewritten graph after the graph file's size and modification time: the cache folder is
    named after the weights, which a re-export with a changed graph may leave as they were."""
    stat = graph.stat()
    return hashlib.sha256(f"{graph.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


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
            node = stacked.input_value(i).get_node()
            for _ in range(6):  # Unsqueeze / Gather of row 0, back to the join of past and new
                if node.get_type_name() == "Concat" and node.get_input_size() == 2:
                    break
                node = node.input_value(0).get_node()
            if node.get_type_name() != "Concat" or node.get_input_size() != 2:
                return None
            new_parts.append(node.input_value(1))
        found[name] = (results[0], new_parts)
    for name, (result, new_parts) in found.items():
        model.remove_result(result)
        for layer, part in enumerate(new_parts):
            model.add_outputs([part])[0].get_tensor().set_names({new_token_outputs(name, layer)})
    return len(found[PRESENT_KEYS][1])


def split_layers(compiled: Any) -> int:
    """How many layers' new keys a compiled model outputs (0: its presents, if any, are as exported)."""
    return sum(1 for output in compiled.outputs if output.get_any_name().startswith(NEW_KEYS + "."))


def compile_source(core: Any, graph: Path, cache_dir: Path | None) -> Any:
    """What to compile for `graph`: with a cache folder, the rewritten IR's path there (written once) or
    the ONNX path where there is nothing to rewrite; without one (or where the IR cannot be written), the
    read and, where it applies, rewritten ov.Model."""
    if cache_dir is not None:
        key = _graph_key(graph)
        ir, as_is = cache_dir / IR_FILE.format(key=key), cache_dir / AS_IS_MARKER.format(key=key)
        if as_is.exists():
            return str(graph)
        if ir.exists():
            return str(ir)
    model = core.read_model(str(graph))
    layers = split_presents(model)
    if cache_dir is None:
        return model
    if layers is None:
        as_is.touch()
        return str(graph)
    import openvino as ov

    partial = cache_dir / f".{os.getpid()}-{ir.name}"
    try:
        ov.save_model(model, str(partial), compress_to_fp16=False)
        os.replace(partial.with_suffix(".bin"), ir.with_suffix(".bin"))  # the weights first: ir marks it complete
        os.replace(partial, ir)
    except (OSError, RuntimeError):  # a full disk or a folder gone read-only: compile from memory, leave nothing
        for path in (partial, partial.with_suffix(".bin")):
            path.unlink(missing_ok=True)
        return model
    return str(ir)
