"""OpenVINO's per-shape executor cache (CPU_RUNTIME_CACHE_CAPACITY): how many shapes to keep.

    python benchmarks/shape_cache.py benchmarks/work/base-v2-int8 /work/bw/ce-minilm-int8 --capacities 0 16

Every (capacity, workload) runs in its own process, with `rerank_onnx.backends.openvino.SHAPE_CACHE`
set before the model loads (backend auto: OpenVINO where it is the default). Workloads:
  8k-pair       one (query, document) pair of ~8,200 prompt tokens on the LLM artifact (long prompts
                run in 1,024-token slices: a new shape per slice), after a short warm-up call
  server-calls  16 rank() calls of 1-12 documents of 20-300 words, 3 queries (new shapes every call)
  encoder-rag   the cross-encoder artifact, 1 query x 32 documents of 200 words, median of 3
Reported: seconds, RSS before (loaded, warm), peak RSS, RSS after (idle), GB.
Writes results/shape-cache-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: common.py, worker.py
from common import RESULTS, environment, median, publish, text_of_tokens

WORKLOADS = ("8k-pair", "server-calls", "encoder-rag")


def _rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def worker(workload: str, artifact: str, capacity: int) -> dict:
    import rerank_onnx.backends.openvino as openvino_backend
    from rerank_onnx import Reranker

    openvino_backend.SHAPE_CACHE = capacity
    logging.disable(logging.WARNING)
    reranker = Reranker(artifact, compile_cache=False)
    reranker.rank("q", ["a short warm-up document"])
    before = _rss_gb()
    start = time.perf_counter()
    if workload == "8k-pair":
        reranker.rank("where do rivers flood in spring?", [text_of_tokens(8192, seed=1)])
        seconds = time.perf_counter() - start
    elif workload == "server-calls":
        rng = random.Random(0)
        for i in range(16):
            count = rng.randint(1, 12)
            documents = [text_of_tokens(rng.randint(20, 300), seed=rng.randint(0, 10**6)) for _ in range(count)]
            reranker.rank(f"query number {i % 3}", documents)
        seconds = time.perf_counter() - start
    else:
        pairs = [("what causes rivers to flood in spring?", text_of_tokens(200, seed=i)) for i in range(32)]
        reranker.predict(pairs)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            reranker.predict(pairs)
            times.append(time.perf_counter() - start)
        seconds = median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    assert reranker.backend is not None
    return {
        "seconds": seconds,
        "rss_before_gb": before,
        "peak_rss_gb": peak,
        "rss_after_gb": _rss_gb(),
        "backend": reranker.backend.describe(),
    }


def table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# OpenVINO shape cache, {env['threads']} threads, {env['cpu']} ({env['cpu_class']})",
        f"commit {env['git_commit']}; each row its own process; LLM artifact {data['llm']}, encoder {data['encoder']}",
        "",
        "| workload | capacity | seconds | RSS before | peak RSS | RSS after |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        lines.append(
            f"| {row['workload']} | {row['capacity']} | {row['seconds']:.2f} | {row['rss_before_gb']:.2f} | "
            f"{row['peak_rss_gb']:.2f} | {row['rss_after_gb']:.2f} |"
        )
    return "\n".join(lines)


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    labels = [f"{r['workload']}\ncap {r['capacity']}" for r in data["rows"]]
    axes[0].barh(labels, [r["seconds"] for r in data["rows"]])
    axes[0].set(xlabel="seconds")
    axes[1].barh(labels, [r["peak_rss_gb"] for r in data["rows"]])
    axes[1].set(xlabel="peak RSS (GB)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("llm_artifact", type=Path)
    parser.add_argument("encoder_artifact", type=Path)
    parser.add_argument("--capacities", type=int, nargs="+", default=[0, 16])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "ARTIFACT", "CAPACITY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        workload, artifact, capacity = args.worker
        print(json.dumps(worker(workload, artifact, int(capacity))))
        return 0
    rows = []
    for workload in args.workloads:
        artifact = args.encoder_artifact if workload == "encoder-rag" else args.llm_artifact
        for capacity in args.capacities:  # interleaved per workload: the capacities of one workload run back to back
            command = [sys.executable, __file__, "x", "y", "--worker", workload, str(artifact), str(capacity)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            row = {"workload": workload, "capacity": capacity, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(workload, capacity, f"{row['seconds']:.2f} s", f"peak {row['peak_rss_gb']:.2f} GB", file=sys.stderr)
    env = environment(2)
    data = {
        "llm": args.llm_artifact.resolve().name,
        "encoder": args.encoder_artifact.resolve().name,
        "environment": env,
        "rows": rows,
    }
    name = f"shape-cache-{env['cpu_class']}"
    publish(name, data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
