"""The same model's artifacts from two exporter versions (or any two graphs of one model), side by side.

    python benchmarks/graph_ab.py benchmarks/work/base-v2-int8 benchmarks/work/base-v2-int8-lastrow \
        --backends auto onnxruntime --rounds 3

An exporter change that should not move scores but should save time (a rewrite of the score graph) is measured
here: each artifact on each backend in its own process, the rounds interleaved so that both share the host's
slow and fast spells; per round the median of `--reps` calls after a warm-up call:
- b16x256: 1 query x 16 documents of ~256 prompt tokens (bench.py's workload), prompt tokens/s;
- rag20: 1 query x 20 documents of 200 words (bench.py's RAG call), seconds per call;
- scores: every artifact's scores on the faithfulness pairs (3 queries x 8 documents) against the first
  artifact's on the same backend (max |difference| as a share of their spread), and alone vs batch and shared
  vs full for each (max |difference|; the table also gives it as a share of the first artifact's score standard
  deviation, issue 10's unit).

Writes results/graph-ab-<first artifact>-<cpu class>[-suffix].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: common.py, worker.py
from common import RESULTS, environment, median, publish, run_worker
from worker import Ours, workloads


def worker(artifact: str, backend: str, threads: int, reps: int) -> dict:
    """Load `artifact` on `backend`, time b16x256 and rag20, and score the faithfulness pairs."""
    engine, _, precision = backend.partition(":")  # "openvino:fp32": an engine and its precision
    stack = Ours(artifact, threads, engine, precision or "auto")
    w = workloads(quick=False)
    result: dict = {"backend": stack.backend}
    for name in ("b16x256", "rag20"):
        query, docs = w[name]["query"], w[name]["docs"]
        stack.scores(query, docs)  # warm-up: the shapes compile on first use
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            stack.scores(query, docs)
            times.append(time.perf_counter() - start)
        tokens = stack.tokens(query, docs)
        result[name] = {"tokens": tokens, "seconds": times, "tokens_per_s": tokens / median(times)}
    f = w["faithful"]
    result["scores"] = [s for q in f["queries"] for s in stack.scores(q, f["docs"])]
    result["faithful"] = stack.faithful(f["queries"], f["docs"])
    return result


def run(artifact: Path, backend: str, threads: int, reps: int, code: Path | None = None) -> dict | None:
    """One artifact on one backend, measured in its own process (worker()); `code`: a folder whose
    `rerank_onnx` package the worker imports instead of the installed one."""
    arguments = [str(artifact), "--threads", str(threads), "--reps", str(reps)]
    env = None
    if code is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code.resolve()), os.environ.get("PYTHONPATH", "")])}
    return run_worker(__file__, backend, arguments, python=sys.executable, env=env)


def summarize(runs: list[dict], first: list[dict] | None) -> dict:
    """One artifact on one backend over its rounds; scores against the first artifact's on the same backend."""
    scores = np.array(runs[0]["scores"])
    summary = {
        "backend": runs[0]["backend"],
        "scores": runs[0]["scores"],
        "b16x256_tokens_per_s": [r["b16x256"]["tokens_per_s"] for r in runs],
        "rag20_seconds": [median(r["rag20"]["seconds"]) for r in runs],
        "faithful": runs[0]["faithful"],
    }
    if first is not None:
        reference = np.array(first[0]["scores"])
        spread = float(reference.max() - reference.min())
        summary["scores_vs_first_of_spread"] = float(np.abs(scores - reference).max()) / spread
    return summary


def table(data: dict) -> str:
    lines = [
        "| artifact | backend | b16x256 tok/s (rounds) | vs first | RAG 20x200 s (rounds) | vs first | "
        "scores vs first (share of spread) | alone vs batch / shared vs full (share of score std) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, by_artifact in data["results"].items():
        first = next(iter(by_artifact.values()))
        for name, r in by_artifact.items():
            tps, rag = median(r["b16x256_tokens_per_s"]), median(r["rag20_seconds"])
            f, std = r["faithful"], float(np.std(first["scores"]))
            lines.append(
                f"| {name} | {backend}: {r['backend'].split(' (')[0]} | {tps:.0f} "
                f"({', '.join(f'{x:.0f}' for x in r['b16x256_tokens_per_s'])}) | "
                f"{tps / median(first['b16x256_tokens_per_s']):.3f}x | {rag:.2f} "
                f"({', '.join(f'{x:.2f}' for x in r['rag20_seconds'])}) | {median(first['rag20_seconds']) / rag:.3f}x | "
                f"{r.get('scores_vs_first_of_spread', 0.0):.2%} | {f['alone_vs_batch']:.3g} ({f['alone_vs_batch'] / std:.2%}) / "
                f"{f['shared_vs_full']:.3g} ({f['shared_vs_full'] / std:.2%}) |"
            )
    return "\n".join(lines)


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for backend, by_artifact in data["results"].items():
        for artifact, r in by_artifact.items():
            labels.append(f"{artifact}\n{backend}")
            values.append(median(r["b16x256_tokens_per_s"]))
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(labels) + 1.5))
    ax.barh(labels, values, color="#4c72b0")
    ax.set_xlabel("b16x256 prompt tokens/s (median of the rounds)")
    ax.set_title(f"{data['environment']['cpu_class']}, {data['environment']['threads']} threads")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="BACKEND", help="measure the one artifact given on BACKEND (internal)")
    parser.add_argument(
        "artifacts", nargs="*", type=Path, help="two or more artifacts of one model; the first is the baseline"
    )
    parser.add_argument(
        "--backends", nargs="+", default=["auto", "onnxruntime"], help="BACKEND or BACKEND:PRECISION (openvino:fp32)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--suffix", default="", help="appended to the result files' name")
    parser.add_argument(
        "--code",
        nargs="+",
        default=[],
        metavar="NAME=DIR",
        help="compare code versions on the one artifact given instead of artifacts: DIR holds a `rerank_onnx` "
        "(a symlink into a git worktree of another commit); the first is the baseline",
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(str(args.artifacts[0]), args.worker, args.threads, args.reps)))
        return 0
    variants: list[tuple[str, Path, Path | None]]  # label, artifact, code folder
    if args.code:
        if len(args.artifacts) != 1:
            parser.error("with --code, give one artifact")
        variants = [
            (name, args.artifacts[0], Path(folder)) for name, _, folder in (c.partition("=") for c in args.code)
        ]
    elif len(args.artifacts) >= 2:
        variants = [(artifact.name, artifact, None) for artifact in args.artifacts]
    else:
        parser.error("give two or more artifacts of one model, or one artifact and --code")
    runs: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        for backend in args.backends:
            for label, artifact, code in variants:
                result = run(artifact, backend, args.threads, args.reps, code)
                if result is not None:
                    runs.setdefault((backend, label), []).append(result)
                    print(
                        f"round {round_ + 1} {label} on {backend}: {result['b16x256']['tokens_per_s']:.0f} "
                        f"tok/s, RAG {median(result['rag20']['seconds']):.2f} s",
                        file=sys.stderr,
                    )
    results: dict[str, dict[str, dict]] = {}
    for backend in args.backends:
        first = runs.get((backend, variants[0][0]))
        for label, _, _ in variants:
            r = runs.get((backend, label))
            if r:
                results.setdefault(backend, {})[label] = summarize(r, None if r is first else first)
    data = {"rounds": args.rounds, "reps": args.reps, "environment": environment(args.threads), "results": results}
    suffix = f"-{args.suffix}" if args.suffix else ""
    publish(f"graph-ab-{args.artifacts[0].name}-{data['environment']['cpu_class']}{suffix}", data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
