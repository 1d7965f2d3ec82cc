"""A lever for long prompts on OpenVINO: attention as OpenVINO's stateful kernel, on the raw engine.

    python benchmarks/stateful_attention.py benchmarks/work/base-v2-int8 --tokens 8192 --drops 3

OpenVINO's CPU plugin has one attention kernel that neither expands the key/value heads nor materialises a
[queries, keys] score matrix: the one it fuses a stateful LLM's ScaledDotProductAttention into (keys and
values as model state: ReadValue -> Gather(beam_idx) -> Concat -> Assign). It keeps the ONNX graph's
attention (MatMul-Softmax-MatMul, a snippets `Subgraph`) as it is for a stateless model, and decomposes an
explicit ScaledDotProductAttention op there too. So this script takes the runtime's rewrite of the score
graph into such a model (`openvino_graph.stateful_attention`) and measures it on the raw engine, in this
process rather than the runtime's child, each case in its own process, with the runtime's compile config:
  slices  the runtime's path today: the graph with each layer's new keys and values as outputs
          (openvino_graph.py), one prompt of --tokens in 1,024-token slices, each after the ones before;
  whole   the stateful rewrite, the same prompt whole in one run from its first token;
  drops   the stateful rewrite compiled, run on the prompt and dropped --drops times, RSS after each drop,
          then the runtime's graph compiled and run on a short prompt: what a process holds afterwards.
Reported: latency, RSS before and at peak, the score, and RSS after each drop. Findings (Dec 2, AVX512-BF16
EPYC) are in benchmarks/investigations/notebook.md, "OpenVINO's stateful attention kernel": why the runtime runs it in a
child process (rerank_onnx/backends/openvino_whole.py).

Writes results/stateful-attention-<artifact>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: common.py, worker.py
from common import environment, publish

from rerank_onnx.backends.openvino_graph import BEAM_INDEX

SLICE = 1024


def rss_gb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in GB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1e6, int(status["VmHWM"].split()[0]) / 1e6


def _compile(artifact: Path, stateful: bool) -> Any:
    import openvino as ov

    from rerank_onnx.artifact import load_artifact
    from rerank_onnx.backends.openvino import Compilation
    from rerank_onnx.backends.openvino_graph import split_presents, stateful_attention

    core = ov.Core()
    model = core.read_model(str(artifact / "model.onnx"))
    config = Compilation("int8", 2, int8_block=load_artifact(artifact).quantization_block).properties()
    if stateful:
        assert stateful_attention(model), "the graph's attention is not the exported MatMul-Softmax-MatMul"
        config["KV_CACHE_PRECISION"] = "bf16"  # the compute precision (the plugin's default is u8)
    else:
        split_presents(model)
    compiled = core.compile_model(model, "CPU", config)
    kinds = [n.get_rt_info()["layerType"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops()]
    return compiled, {kind: kinds.count(kind) for kind in ("ScaledDotProductAttention", "Subgraph", "Softmax")}


def _score(request: Any, ids: np.ndarray, stateful: bool, layers: int) -> float:
    """The prompt's score: whole on the stateful model, in slices after the ones before on the other."""
    if stateful:
        request.reset_state()
        request.infer({"input_ids": ids, "lengths": np.array([ids.shape[1]]), BEAM_INDEX: np.zeros(1, np.int32)})
        return float(request.get_tensor("scores").data[0])
    keys = values = np.zeros((layers, 2, 0, 64), np.float32)
    for start in range(0, ids.shape[1], SLICE):
        part = ids[:, start : start + SLICE]
        request.infer(
            {"input_ids": part, "lengths": np.array([part.shape[1]]), "past_keys": keys, "past_values": values}
        )
        new = [
            [request.get_tensor(f"{kind}.{i}").data[0] for i in range(layers)] for kind in ("new_keys", "new_values")
        ]
        keys, values = (np.concatenate([past, np.stack(n)], 2) for past, n in zip((keys, values), new))
    return float(request.get_tensor("scores").data[0])


def worker(artifact: Path, case: str, tokens: int, drops: int) -> dict:
    ids = np.random.default_rng(0).integers(100, 5000, (1, tokens)).astype(np.int64)
    layers = 24
    out: dict[str, Any] = {"case": case, "tokens": tokens}
    if case == "drops":
        out["rss_after_drop_gb"] = []
        for _ in range(drops):
            compiled, out["ops"] = _compile(artifact, stateful=True)
            request = compiled.create_infer_request()
            out["score"] = _score(request, ids, True, layers)
            del request, compiled
            gc.collect()
            out["rss_after_drop_gb"].append(rss_gb()[0])
        compiled, _ = _compile(artifact, stateful=False)
        request = compiled.create_infer_request()
        _score(request, ids[:, :64], False, layers)
        out["rss_then_runtime_graph_gb"] = rss_gb()[0]
        return out
    stateful = case == "whole"
    compiled, out["ops"] = _compile(artifact, stateful)
    request = compiled.create_infer_request()
    _score(request, ids[:, :200], stateful, layers)  # warm up
    out["rss_before_gb"] = rss_gb()[0]
    start = time.perf_counter()
    out["score"] = _score(request, ids, stateful, layers)
    out["latency_s"] = time.perf_counter() - start
    out["peak_rss_gb"] = rss_gb()[1]
    return out


def table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# Attention as OpenVINO's stateful kernel: {data['artifact']}, one {data['tokens']}-token prompt, "
        f"`int8`, 2 threads, {env['cpu']} ({env['cpu_class']}), OpenVINO {env.get('openvino')}",
        f"commit {env['git_commit']}; each case its own process; RSS in GB",
        "",
        "| case | latency (s) | RSS before | peak RSS | peak - before | score | fused attention / Subgraph nodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        if row["case"] == "drops":
            continue
        ops = row["ops"]
        lines.append(
            f"| {row['case']} | {row['latency_s']:.1f} | {row['rss_before_gb']:.2f} | {row['peak_rss_gb']:.2f} | "
            f"{row['peak_rss_gb'] - row['rss_before_gb']:.2f} | {row['score']:.7f} | "
            f"{ops['ScaledDotProductAttention']} / {ops['Subgraph']} |"
        )
    for row in data["rows"]:
        if row["case"] == "drops":
            after = ", ".join(f"{gb:.2f}" for gb in row["rss_after_drop_gb"])
            lines += [
                "",
                f"Stateful model compiled, run on the prompt and dropped {len(row['rss_after_drop_gb'])} times: "
                f"RSS after each drop {after} GB; then the runtime's graph compiled and run on 64 tokens: "
                f"{row['rss_then_runtime_graph_gb']:.2f} GB.",
            ]
    return "\n".join(lines) + "\n"


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common import RESULTS

    runs = [row for row in data["rows"] if row["case"] != "drops"]
    drops = next(row for row in data["rows"] if row["case"] == "drops")
    fig, (memory, kept) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [row["case"] for row in runs]
    memory.bar(labels, [row["peak_rss_gb"] - row["rss_before_gb"] for row in runs], color=["#888", "#2a7"])
    memory.set(ylabel="peak - before (GB)", title=f"one {data['tokens']}-token prompt")
    for i, row in enumerate(runs):
        memory.annotate(f"{row['latency_s']:.0f} s", (i, row["peak_rss_gb"] - row["rss_before_gb"]), ha="center")
    steps = range(1, len(drops["rss_after_drop_gb"]) + 1)
    kept.plot(list(steps), drops["rss_after_drop_gb"], marker="o", color="#c33")
    kept.set_xticks(list(steps))
    kept.set(xlabel="stateful models built, run and dropped", ylabel="RSS (GB)", title="kept after each drop")
    fig.suptitle(f"OpenVINO {data['environment'].get('openvino')}, {data['environment']['cpu_class']}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--drops", type=int, default=3)
    parser.add_argument("--worker", choices=["slices", "whole", "drops"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.artifact, args.worker, args.tokens, args.drops)))
        return
    rows = []
    for case in ("slices", "whole", "drops"):
        command = [
            sys.executable,
            __file__,
            str(args.artifact),
            "--tokens",
            str(args.tokens),
            "--drops",
            str(args.drops),
        ]
        done = subprocess.run([*command, "--worker", case], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    env = environment(threads=2)
    data = {"artifact": args.artifact.resolve().name, "tokens": args.tokens, "environment": env, "rows": rows}
    publish(f"stateful-attention-{data['artifact']}-{env['cpu_class']}", data, table(data), chart)


if __name__ == "__main__":
    main()
