"""Where the time goes: an engine's per-node profile of an artifact, per op type, at given batch shapes.

    python benchmarks/profile_ops.py benchmarks/work/large-v2-int8 --shapes 4x256 1x2048
    python benchmarks/profile_ops.py benchmarks/work/base-v2-int8 --backend openvino --precision int8 --shapes 16x256

onnxruntime: its per-node profiler. OpenVINO: its performance counters (`PERF_COUNT`) on the graph as the
CPU plugin compiled it, with the runtime's own `Compilation` for `--precision`; its op types are the
plugin's fused nodes (FullyConnected = the linear layers), and the table also names the kernels they ran.
Each shape gets its own session (profiling on), one warm-up run, then one measured run; only the
measured run's node times are counted. Writes results/profile-<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: common.py, worker.py
from common import RESULTS, environment, text_of_tokens, write_results

from rerank_onnx.backends import EngineLimits, Prefix, ScoreBatch

if TYPE_CHECKING:
    from rerank_onnx import Reranker

INTEGER_GEMMS = {"MatMulNBits", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger", "QGemm"}
# the linear layers as OpenVINO's CPU plugin compiles them (weights of any precision)
OPENVINO_GEMMS = {"FullyConnected", "FullyConnectedCompressed"}


def parse_shape(text: str) -> tuple[int, int]:
    batch, _, tokens = text.partition("x")
    if not (batch.isdigit() and tokens.isdigit()) or int(batch) < 1 or int(tokens) < 1:
        raise argparse.ArgumentTypeError(f"expected BATCHxTOKENS such as 4x256, got {text!r}")
    return int(batch), int(tokens)


class _NoSession:
    """The profiler runs its own onnxruntime session; the Reranker is here only for its prompt encoder."""

    limits = EngineLimits()
    shares_prefix = False
    needs_document_starts = False

    def release_memory(self) -> None:
        pass

    def score(self, batch: ScoreBatch) -> np.ndarray:
        raise AssertionError("not used")

    def prefill(self, input_ids: np.ndarray, after: Prefix | None = None) -> Prefix:
        raise AssertionError("not used")


def token_ids(reranker: Reranker, batch: int, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts of exactly `tokens` tokens: the template around filler text, cut to length."""
    docs = [text_of_tokens(tokens + 64, 40 + i) for i in range(batch)]
    encoded = reranker.model.encode(["what causes rivers to flood in spring?"] * batch, docs)
    if min(len(row) for row in encoded.input_ids) < tokens:
        raise SystemExit(f"could not build {tokens}-token prompts; raise the filler length")
    ids = np.stack([np.asarray(row[:tokens], dtype=np.int64) for row in encoded.input_ids])
    return ids, np.full(batch, tokens, dtype=np.int64)


def profile_openvino(graph: Path, ids: np.ndarray, lengths: np.ndarray, threads: int, precision: str) -> dict:
    """One measured run on OpenVINO with performance counters on: milliseconds per plugin node type, and
    per kernel of the linear layers."""
    import time

    import openvino as ov

    from rerank_onnx.artifact import INPUT_IDS, LENGTHS, PAST_KEYS, PAST_VALUES, load_artifact
    from rerank_onnx.backends.openvino import Compilation

    config = Compilation(precision, threads, int8_block=load_artifact(graph.parent).quantization_block).properties()
    compiled = ov.Core().compile_model(str(graph), "CPU", config | {"PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    feeds = {INPUT_IDS: ids, LENGTHS: lengths}
    names = {name for port in compiled.inputs for name in port.get_names()}
    if PAST_KEYS in names:  # full prompts: an empty shared prefix
        layers, kv_heads, _, head_dim = (
            d.get_length() if d.is_static else 0 for d in compiled.input(PAST_KEYS).get_partial_shape()
        )
        empty = np.zeros((layers, kv_heads, 0, head_dim), dtype=np.float32)
        feeds |= {PAST_KEYS: empty, PAST_VALUES: empty}
    request.infer(feeds)  # warm-up: prepares the executors for this shape
    start = time.perf_counter()
    request.infer(feeds)
    run_ms = (time.perf_counter() - start) * 1000
    per_op: dict[str, float] = defaultdict(float)
    kernels: dict[str, float] = defaultdict(float)
    for node in request.profiling_info:
        ms = node.real_time.total_seconds() * 1000
        per_op[node.node_type] += ms
        if node.node_type in OPENVINO_GEMMS:
            kernels[node.exec_type] += ms
    return {
        "run_ms": run_ms,
        "tokens_per_s": ids.size / (run_ms / 1000),
        "ops_ms": dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
        "gemm_kernels_ms": dict(sorted(kernels.items(), key=lambda kv: -kv[1])),
    }


def profile_shape(graph: Path, ids: np.ndarray, lengths: np.ndarray, threads: int) -> dict:
    import onnxruntime as ort

    from rerank_onnx.artifact import INPUT_IDS, LENGTHS, PAST_KEYS, PAST_VALUES, SCORES

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
        feeds = {INPUT_IDS: ids, LENGTHS: lengths}
        inputs = {i.name: i.shape for i in session.get_inputs()}
        if PAST_KEYS in inputs:  # full prompts: an empty shared prefix
            layers, kv_heads, _, head_dim = inputs[PAST_KEYS]
            empty = np.zeros((layers, kv_heads, 0, head_dim), dtype=np.float32)
            feeds |= {PAST_KEYS: empty, PAST_VALUES: empty}
        for _ in range(2):  # warm-up, then the measured run
            session.run([SCORES], feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last = runs[-1]
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last["ts"]:
            per_op[e["args"]["op_name"]] += e["dur"] / 1000
    run_ms = last["dur"] / 1000
    return {
        "run_ms": run_ms,
        "tokens_per_s": ids.size / (run_ms / 1000),
        "ops_ms": dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
    }


def table(result: dict) -> str:
    shapes = list(result["shapes"])
    totals = {s: sum(result["shapes"][s]["ops_ms"].values()) for s in shapes}
    ops = sorted(
        {op for s in shapes for op in result["shapes"][s]["ops_ms"]},
        key=lambda op: -max(result["shapes"][s]["ops_ms"].get(op, 0) / totals[s] for s in shapes),
    )
    engine = result.get("engine", "onnxruntime")
    gemms = OPENVINO_GEMMS if engine.startswith("openvino") else INTEGER_GEMMS
    env = result["environment"]
    lines = [
        f"Artifact `{result['artifact']}` (quantization `{result['scheme']}`) on {engine}, {env['threads']} threads, "
        f"{env['cpu']} ({env.get('cpu_class', '?')}: {env.get('cpu_flags', '?')}); share of node time in one run "
        "after a warm-up.",
        "",
        "| op type | " + " | ".join(shapes) + " |",
        "|---|" + "---|" * len(shapes),
    ]
    shown, rest = ops[:10], ops[10:]
    for op in shown:
        lines.append(
            f"| {op} | "
            + " | ".join(f"{100 * result['shapes'][s]['ops_ms'].get(op, 0) / totals[s]:.1f}%" for s in shapes)
            + " |"
        )
    if rest:
        lines.append(
            f"| {len(rest)} other op types | "
            + " | ".join(
                f"{100 * sum(result['shapes'][s]['ops_ms'].get(op, 0) for op in rest) / totals[s]:.1f}%" for s in shapes
            )
            + " |"
        )
    lines.append(
        f"| **{'linear layers' if gemms is OPENVINO_GEMMS else 'integer GEMMs'} together** | "
        + " | ".join(
            f"**{100 * sum(v for op, v in result['shapes'][s]['ops_ms'].items() if op in gemms) / totals[s]:.1f}%**"
            for s in shapes
        )
        + " |"
    )
    lines.append(
        "| run time (s) / tokens/s | "
        + " | ".join(
            f"{result['shapes'][s]['run_ms'] / 1000:.1f} / {result['shapes'][s]['tokens_per_s']:.0f}" for s in shapes
        )
        + " |"
    )
    for s in shapes:
        kernels = result["shapes"][s].get("gemm_kernels_ms")
        if kernels:
            total = sum(kernels.values())
            named = ", ".join(f"`{k}` {100 * v / total:.0f}%" for k, v in kernels.items())
            lines.append(f"\nLinear-layer kernels at {s}: {named}.")
    return "\n".join(lines)


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(result["shapes"])
    totals = {s: sum(result["shapes"][s]["ops_ms"].values()) for s in shapes}
    top = sorted({op for s in shapes for op in list(result["shapes"][s]["ops_ms"])[:6]})
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.6 * len(shapes)))
    left = np.zeros(len(shapes))
    for op in [*top, "other"]:
        if op == "other":
            share = [
                100 * sum(v for o, v in result["shapes"][s]["ops_ms"].items() if o not in top) / totals[s]
                for s in shapes
            ]
        else:
            share = [100 * result["shapes"][s]["ops_ms"].get(op, 0) / totals[s] for s in shapes]
        ax.barh(shapes, share, left=left, label=op)
        left += share
    ax.set_xlabel("% of node time")
    ax.set_title(f"{result['artifact']} ({result['scheme']})")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[(4, 256), (1, 2048)])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "int8"], default="int8", help="OpenVINO's compute precision"
    )
    parser.add_argument(
        "--name", default=None, help="results/profile-<name>.* (default: the artifact folder's name and the engine)"
    )
    args = parser.parse_args()

    from rerank_onnx import Reranker

    # One encoder for every shape (loading the tokenizer takes ~1 s); longer shapes need the larger budget.
    reranker = Reranker(args.artifact, session=_NoSession(), max_length=max(64, *(t for _, t in args.shapes)))
    config = reranker.model.config
    engine = "onnxruntime" if args.backend == "onnxruntime" else f"openvino-{args.precision}"
    environment_now = environment(args.threads)
    result = {
        "artifact": args.artifact.name,
        "scheme": config.quantization,
        "engine": engine,
        "environment": environment_now,
        "shapes": {},
    }
    for batch, tokens in args.shapes:
        ids, lengths = token_ids(reranker, batch, tokens)
        if args.backend == "openvino":
            profile = profile_openvino(config.graph_path, ids, lengths, args.threads, args.precision)
        else:
            profile = profile_shape(config.graph_path, ids, lengths, args.threads)
        result["shapes"][f"{batch}x{tokens}"] = profile
        print(f"{batch}x{tokens}: {profile['run_ms'] / 1000:.1f} s", flush=True)
    default_name = args.artifact.name if args.backend == "onnxruntime" else f"{args.artifact.name}-{engine}"
    name = f"profile-{args.name or default_name}-{environment_now['cpu_class']}"
    text = table(result)
    write_results(name, result, text)
    chart(result, RESULTS / f"{name}.png")
    print(text)


if __name__ == "__main__":
    main()
