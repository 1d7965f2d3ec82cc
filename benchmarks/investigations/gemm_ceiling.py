"""The GEMM ceiling: the tokens/s that a model's linear layers allow on this CPU, per kernel.

    python benchmarks/gemm_ceiling.py --size base-v2 --tokens 4096 --reps 5

A prefill is almost all GEMMs on a CPU without AMX (profile_ops.py: 86-96% on 2 AVX2 cores). This times
one GEMM of each linear-layer shape of the architecture (q, k, v, o, gate, up, down; M = the tokens
of one batch, 4,096 for b16x256) in every kernel that one of our paths runs, each in its own process,
and adds the times up the way one decoder layer uses them. The result is the throughput that path
could reach if nothing but its GEMMs cost time: an upper bound to read against the end-to-end
tokens/s of bench.py, and the reason a path cannot go faster on this CPU class.

Kernels (the same quantizers as the export, on a one-MatMul graph with random fp32 weights):
- ort-fp32: onnxruntime MatMul (MLAS SGEMM), as our fp32 artifact;
- ort-int8-blockwise: MatMulNBits, 8 bits, block 32, accuracy_level 4: the default `int8` artifact;
- ort-int8-fast: DynamicQuantizeMatMul (uint8 activations per tensor, int8 weights per channel);
- ov-fp32: OpenVINO MatMul, f32 (an fp32 artifact on OpenVINO);
- ov-int8-weights: OpenVINO reading the MatMulNBits graph with the f32 hint: int8 weights
  decompressed, fp32 compute (backend="openvino", precision="fp32" on the default artifact);
- ov-int8-dynamic: the same with OpenVINO's dynamic int8 activations (group 32);
- ov-bf16: the MatMulNBits graph under `precision="bf16"` (int8 weights, bf16 compute; `auto` on AMX);
- ov-int8: the same under `precision="int8"` (dynamic int8 activations in blocks of 32, bf16 elsewhere;
  `auto` on AVX512-BF16). Both run as fp32 on CPUs without bf16 instructions.
OpenVINO kernels compile with the runtime's own `Compilation` (ov-int8-weights = "fp32"), so the
ceiling is of the settings the runtime uses. On the AVX512-BF16 EPYC its one-MatMul graphs ran well below
the same precision inside the model (208 against 483 GFLOP/s for "int8", profile_ops.py --backend
openvino): there, read the OpenVINO rows as a floor, and the profile for the model's own figure.

Writes results/gemm-ceiling-<size>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: common.py, worker.py
from common import RESULTS, environment, publish

KERNELS = [
    "ort-fp32",
    "ort-int8-blockwise",
    "ort-int8-fast",
    "ov-fp32",
    "ov-int8-weights",
    "ov-int8-dynamic",
    "ov-bf16",
    "ov-int8",
]
SIZES = ("base-v2", "large-v2", "qwen3-0.6b")  # rerank_onnx_export.random_checkpoint.ARCHITECTURES


def layer_shapes(size: str) -> list[tuple[str, int, int]]:
    """(name, K, N) of one decoder layer's linear layers, from the architecture the benchmarks build."""
    from rerank_onnx_export.random_checkpoint import ARCHITECTURES

    arch = ARCHITECTURES[size]
    hidden, heads, kv_heads = arch.hidden_size, arch.num_attention_heads, arch.num_key_value_heads
    head_dim = arch.head_dim or hidden // heads
    return [
        ("q", hidden, heads * head_dim),
        ("k", hidden, kv_heads * head_dim),
        ("v", hidden, kv_heads * head_dim),
        ("o", heads * head_dim, hidden),
        ("gate", hidden, arch.intermediate_size),
        ("up", hidden, arch.intermediate_size),
        ("down", arch.intermediate_size, hidden),
    ]


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_graph(folder: Path, kernel: str, k: int, n: int) -> Path:
    """A one-MatMul ONNX graph [M, K] x [K, N] quantized as `kernel` needs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from rerank_onnx_export.quantize import blockwise_int8_matmuls, dynamic_int8_matmuls

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal((k, n)) * 0.035).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "gemm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fp32 = folder / "fp32.onnx"
    onnx.save(model, str(fp32))
    if kernel in ("ort-fp32", "ov-fp32"):
        return fp32
    out = folder / "quantized.onnx"
    if kernel == "ort-int8-fast":
        dynamic_int8_matmuls(fp32, out, excluded=[], external_data=False)
    else:
        onnx.save(blockwise_int8_matmuls(model, excluded=[]), str(out))
    return out


def time_kernel(kernel: str, m: int, k: int, n: int, threads: int, reps: int) -> float:
    """Median seconds of one [m, k] x [k, n] GEMM in `kernel`, after one warm-up run."""
    x = (np.random.default_rng(1).standard_normal((m, k))).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_graph(Path(tmp), kernel, k, n)
        if kernel.startswith("ort-"):
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

            def run() -> None:
                session.run(["Y"], {"X": x})
        else:
            import openvino as ov
            from rerank_onnx_export.quantize import BLOCK

            from rerank_onnx.backends.openvino import Compilation

            precision = {"ov-bf16": "bf16", "ov-int8": "int8"}.get(kernel, "fp32")
            config = Compilation(precision, threads, int8_block=BLOCK).properties()
            if kernel == "ov-int8-dynamic":  # the f32 hint with dynamic int8 activations: no runtime precision
                config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(BLOCK)
            request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()

            def run() -> None:
                request.infer({"X": x})

        run()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(kernel: str, size: str, tokens: int, threads: int, reps: int) -> dict:
    per_shape = {}
    for name, k, n in layer_shapes(size):
        seconds = time_kernel(kernel, tokens, k, n, threads, reps)
        per_shape[name] = {"k": k, "n": n, "seconds": seconds, "gflops": 2 * tokens * k * n / seconds / 1e9}
    layer_seconds = sum(s["seconds"] for s in per_shape.values())
    from rerank_onnx_export.random_checkpoint import ARCHITECTURES

    layers = ARCHITECTURES[size].num_hidden_layers
    flops_per_token = 2 * layers * sum(k * n for _, k, n in layer_shapes(size))
    return {
        "kernel": kernel,
        "per_shape": per_shape,
        "layer_seconds": layer_seconds,
        "ceiling_tokens_per_s": tokens / (layer_seconds * layers),
        "gflops": flops_per_token * tokens / (layer_seconds * layers) / 1e9,
    }


def table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"GEMM ceiling, {data['size']} linear layers, M = {data['tokens']} tokens, {env['threads']} threads, "
        f"{env['cpu']} ({env['cpu_class']}: {env['cpu_flags']}), commit {env['git_commit']}",
        "",
        "| kernel | GFLOP/s (all shapes) | ceiling tokens/s (GEMMs only) | vs ort-int8-blockwise |",
        "|---|---|---|---|",
    ]
    rows = [r for r in data["rows"] if "error" not in r]
    base = next((r["ceiling_tokens_per_s"] for r in rows if r["kernel"] == "ort-int8-blockwise"), None)
    for row in data["rows"]:
        if "error" in row:
            lines.append(f"| {row['kernel']} | failed: {row['error']} | - | - |")
            continue
        ratio = f"{row['ceiling_tokens_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {row['kernel']} | {row['gflops']:.0f} | {row['ceiling_tokens_per_s']:.0f} | {ratio} |")
    return "\n".join(lines)


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if "error" not in r]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([r["kernel"] for r in rows], [r["ceiling_tokens_per_s"] for r in rows])
    ax.set(xlabel=f"tokens/s if only the GEMMs cost time ({data['size']}, {data['environment']['cpu_class']})")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="base-v2")
    parser.add_argument("--tokens", type=positive_int, default=4096, help="M: the tokens of one batch (b16x256: 4,096)")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--reps", type=positive_int, default=5)
    parser.add_argument("--kernels", nargs="+", default=KERNELS, choices=KERNELS)
    parser.add_argument("--worker", metavar="KERNEL", choices=KERNELS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.tokens, args.threads, args.reps)))
        return 0
    rows = []
    for kernel in args.kernels:  # one process per kernel: no engine's thread pool or arena touches another's
        command = [sys.executable, __file__, "--worker", kernel, "--size", args.size, "--tokens", str(args.tokens)]
        command += ["--threads", str(args.threads), "--reps", str(args.reps)]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            rows.append({"kernel": kernel, "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_shape"}), file=sys.stderr)
    env = environment(args.threads)
    data = {"size": args.size, "tokens": args.tokens, "environment": env, "rows": rows}
    name = f"gemm-ceiling-{args.size}-{env['cpu_class']}"
    publish(name, data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
