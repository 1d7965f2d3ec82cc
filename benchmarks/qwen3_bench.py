"""Qwen3-Reranker: our default path against the model card's transformers code, on one checkpoint.

    python -m rerank_onnx_export.random_checkpoint ckpt-q3 --size qwen3-0.6b --weight-std 0.035
    rerank-onnx export ckpt-q3 q3-int8
    python benchmarks/qwen3_bench.py ckpt-q3 q3-int8

Workload b16x256: 16 (query, document) pairs whose prompts are ~256 tokens, scored `--reps` times;
tokens/s counts real prompt tokens. Stacks, each in its own process: the model card's code
(`format_instruction` -> `process_inputs` -> `compute_logits`, PyTorch fp32 as on CPU, and the same
with the model cast to bf16), our artifact with backend auto, and on onnxruntime. Agreement: Spearman of
each stack's P(yes) against the reference fp32 on the same pairs.
Writes results/qwen3-<checkpoint>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, median, text_of_tokens, write_results

STACKS = ["reference-fp32", "reference-bf16", "ours-default", "ours-onnxruntime"]
QUERIES = [f"what causes rivers to flood in spring, case {i}?" for i in range(4)]


def pairs() -> tuple[list[str], list[str]]:
    documents = [text_of_tokens(200, seed=i) for i in range(16)]
    return [QUERIES[i % 4] for i in range(16)], documents


def _reference(checkpoint: str, bf16: bool, reps: int, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_qwen3 import Qwen3Oracle, format_instruction  # the model card's code, as the tests run it

    torch.set_num_threads(threads)
    oracle = Qwen3Oracle(Path(checkpoint))
    if bf16:
        oracle.model = oracle.model.to(torch.bfloat16)
    queries, documents = pairs()
    inputs = oracle.process_inputs([format_instruction(None, q, d) for q, d in zip(queries, documents)])
    tokens = int(inputs["attention_mask"].sum())
    oracle.scores(queries[:2], documents[:2])  # warm-up
    times, scores = [], []
    for _ in range(reps):
        start = time.perf_counter()
        scores = [s for i in range(0, 16, 8) for s in oracle.scores(queries[i : i + 8], documents[i : i + 8])]
        times.append(time.perf_counter() - start)
    return {"tokens": tokens, "seconds": median(times), "scores": scores}


def _ours(artifact: str, backend: str, reps: int, threads: int) -> dict:
    from rerank_onnx import Reranker

    reranker = Reranker(artifact, threads=threads, backend=backend)  # type: ignore[arg-type]
    queries, documents = pairs()
    tokens = sum(len(ids) for ids in reranker.encode(queries, documents).input_ids)
    reranker.predict(queries[:2], documents[:2])  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        scores = reranker.predict(queries, documents, normalize=True)
        times.append(time.perf_counter() - start)
    assert reranker.backend is not None
    return {
        "tokens": tokens,
        "seconds": median(times),
        "scores": scores.tolist(),
        "backend": reranker.backend.describe(),
    }


def worker(stack: str, checkpoint: str, artifact: str, reps: int, threads: int) -> dict:
    if stack.startswith("reference"):
        return _reference(checkpoint, stack.endswith("bf16"), reps, threads)
    return _ours(artifact, "auto" if stack == "ours-default" else "onnxruntime", reps, threads)


def table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# Qwen3-Reranker, {data['checkpoint']} (random weights), b16x256, {env['threads']} threads, "
        f"{env['cpu']} ({env['cpu_class']})",
        f"commit {env['git_commit']}; median of {data['reps']} runs; each stack its own process",
        "",
        "| stack | tokens/s | vs reference fp32 | Spearman vs reference fp32 |",
        "|---|---|---|---|",
    ]
    base = data["results"]["reference-fp32"]["tokens_per_s"]
    for stack, r in data["results"].items():
        lines.append(f"| {stack} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | {r['spearman']:.3f} |")
    return "\n".join(lines)


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = list(data["results"])
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(stacks, [data["results"][s]["tokens_per_s"] for s in stacks])
    ax.set(xlabel="tokens/s (b16x256)", title=f"Qwen3-Reranker {data['checkpoint']}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stacks", nargs="+", default=STACKS, choices=STACKS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, str(args.checkpoint), str(args.artifact), args.reps, args.threads)))
        return 0
    from rerank_onnx_export.report import spearman

    results = {}
    for stack in args.stacks:
        command = [sys.executable, __file__, str(args.checkpoint), str(args.artifact), "--worker", stack]
        out = subprocess.run(
            [*command, "--reps", str(args.reps), "--threads", str(args.threads)], capture_output=True, text=True
        )
        if out.returncode != 0:
            print(f"{stack} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        results[stack] = r
        print(stack, round(r["tokens_per_s"]), file=sys.stderr)
    import numpy as np

    reference = np.asarray(results["reference-fp32"]["scores"])
    for r in results.values():
        r["spearman"] = float(spearman(np.asarray(r["scores"]), reference))
    env = environment(args.threads)
    data = {"checkpoint": args.checkpoint.resolve().name, "reps": args.reps, "environment": env, "results": results}
    name = f"qwen3-{data['checkpoint']}-{env['cpu_class']}"
    write_results(name, data, table(data))
    chart(data, name)
    print((RESULTS / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
