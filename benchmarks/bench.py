"""Side-by-side CPU benchmark of mxbai-rerank-v2 stacks on a random-weight checkpoint of the real architecture.

    python benchmarks/bench.py                 # large-v2 architecture, 3 repetitions
    python benchmarks/bench.py --quick         # base-v2 architecture, 1 repetition, a few minutes
    python benchmarks/bench.py --llama-cpp     # also build llama.cpp from PyPI's llama-cpp-python sdist

Stacks: the official mxbai-rerank package (PyTorch fp32, as a user runs it on CPU), the same with
bf16 weights, our fp32 and int8 artifacts, and optionally llama.cpp Q8_0/Q4_0 prompt processing.
Every stack runs in its own process on the same inputs with the same thread count; results go to
benchmarks/results/bench-<size>.{json,md,png}. Speed does not depend on weight values.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, environment, publish

WORK = HERE / "work"
# "ours-<artifact>" runs on onnxruntime, "ours-<artifact>@openvino-<precision>" on OpenVINO, and
# "ours-default" is what a user gets: the default (int8) artifact with backend="auto".
STACKS = [
    "official-fp32",
    "pytorch-bf16",
    "ours-fp32",
    "ours-int8",
    "ours-int8-fast",
    "ours-default",
    "ours-int8@openvino-fp32",
    "ours-int8@openvino-bf16",
    "ours-int8@openvino-int8",
    "ours-fp32@openvino-bf16",
    "ours-int8-static",
    "ours-int8-static@openvino-bf16",
    "ours-int8-static@openvino-fp32",
]
DEFAULT_STACKS = [s for s in STACKS if "int8-static" not in s]
# sentence-transformers 6 (the peer a well-informed user picks), run with --st-python's interpreter. Its
# onnx backend is missing: sentence-transformers[onnx]==6.2.0 cannot be installed (st_stack.py says why).
ST_STACKS = ["st-torch", "st-torch-bf16", "st-openvino"]
# artifact -> export --quantization
QUANTIZATIONS = {
    "ours-fp32": "none",
    "ours-int8": "int8",
    "ours-int8-fast": "int8-fast",
    "ours-int8-static": "int8-static",
}


def artifact_of(stack: str) -> str:
    """The artifact stack a stack runs on: ours-int8@openvino-bf16 -> ours-int8; ours-default -> ours-int8."""
    return "ours-int8" if stack == "ours-default" else stack.split("@")[0]


def prepare(size: str, stacks: list[str]) -> dict[str, Path]:
    """Checkpoint and artifacts, built once and cached under benchmarks/work/."""
    from rerank_onnx_export.random_checkpoint import build_qwen2_tokenizer_json, build_random_checkpoint

    WORK.mkdir(exist_ok=True)
    tokenizer = WORK / "qwen2-tokenizer.json"
    if not tokenizer.exists():
        build_qwen2_tokenizer_json(tokenizer)
    checkpoint = WORK / f"{size}-checkpoint"
    if not (checkpoint / "config.json").exists():
        print(f"building a random {size} checkpoint", file=sys.stderr)
        build_random_checkpoint(checkpoint, size=size, tokenizer_json=tokenizer)
    paths = {"checkpoint": checkpoint}
    wanted = {artifact_of(s) for s in stacks}
    for stack, quantization in QUANTIZATIONS.items():
        if stack not in wanted:  # name ours-fp32 among the stacks for the fidelity columns (the reference)
            continue
        name = stack.removeprefix("ours-")
        out = WORK / f"{size}-{name}"
        if _cached_scheme(out) != quantization:  # absent, another quantization, or a graph from before the prefix cache
            print(f"exporting {out.name}", file=sys.stderr)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "rerank_onnx.cli",
                    "export",
                    str(checkpoint),
                    str(out),
                    "--quantization",
                    quantization,
                    "--overwrite",
                ],
                check=False,
            )
        paths[stack] = out
    return paths


def _cached_scheme(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "rerank_config.json").read_text())
        return config["quantization"]["scheme"] if "past_keys" in config["graph"]["inputs"] else None
    except (OSError, KeyError, ValueError, TypeError):
        return None


def run_stack(
    stack: str,
    paths: dict[str, Path],
    threads: int,
    reps: int,
    quick: bool,
    skip: list[str],
    timeout: float,
    python: str = sys.executable,
) -> dict:
    model = paths.get(artifact_of(stack), paths["checkpoint"])
    cmd = [
        python,
        str(HERE / "worker.py"),
        "--stack",
        stack,
        "--model",
        str(model),
        "--threads",
        str(threads),
        "--reps",
        str(reps),
        "--spawned-at",
        repr(time.time()),
    ]
    if quick:
        cmd.append("--quick")
    if skip:
        cmd += ["--skip", *skip]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stopped = f"stopped after {timeout:.0f} s (too slow on this machine)"
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        lines = partial.strip().splitlines()
        return {**json.loads(lines[-1]), "stopped": stopped} if lines else {"stack": stack, "error": stopped}
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
        return {"stack": stack, "error": f"exit {out.returncode} {last}".strip()}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(stack: str, args: argparse.Namespace, paths: dict[str, Path], reps: int, bf16_timeout: float) -> dict:
    """One stack, once, in its own process."""
    # Only heavy stacks run mixed100 and growth: the official stack needs ~16 min for mixed100 at large-v2,
    # and the reference materializes [seq, 151936] logits at long lengths.
    heavy = stack in args.heavy_stacks if args.heavy_stacks is not None else stack.startswith("ours")
    skip = list(args.skip) + ([] if heavy else ["growth", "mixed100"])
    timeout = (
        min(args.stack_timeout, bf16_timeout) if stack in ("pytorch-bf16", "st-torch-bf16") else args.stack_timeout
    )
    python = args.st_python if stack.startswith("st-") else sys.executable
    if stack.startswith("st-") and not python:
        return {"stack": stack, "error": "needs --st-python (a venv with sentence-transformers 6)"}
    return run_stack(stack, paths, args.threads, reps, args.quick, skip, timeout, python)


def merge_rounds(runs: list[dict]) -> dict:
    """One stack's rounds as one result: medians of times, the highest peak RSS, the largest batch
    coupling, the first round's scores; a round that failed or stopped makes the result say so."""
    from common import median, percentile

    if len(runs) == 1:
        return runs[0]
    failed = [r for r in runs if "error" in r or "stopped" in r]
    if failed:
        return failed[0]
    merged = dict(runs[0])
    for key in ("cold_start_s", "short_s"):
        merged[key] = median([r[key] for r in runs])
    merged["peak_rss_gb"] = max(r["peak_rss_gb"] for r in runs)
    for workload in ("b16x256", "mixed100"):
        if workload in merged:
            seconds = median([r[workload]["seconds"] for r in runs])
            merged[workload] = {**merged[workload], "seconds": seconds}
            merged[workload]["tokens_per_s"] = merged[workload]["tokens"] / seconds
            if "pairs_per_s" in merged[workload]:
                merged[workload]["pairs_per_s"] = 100 / seconds
            merged[workload]["per_round_tokens_per_s"] = [r[workload]["tokens"] / r[workload]["seconds"] for r in runs]
    if "rag20" in merged:
        times = [t for r in runs for t in r["rag20"]["runs"]]
        merged["rag20"] = {
            **merged["rag20"],
            "runs": times,
            "p50_s": percentile(times, 50),
            "p95_s": percentile(times, 95),
        }
    if "faithful" in merged:
        merged["faithful"] = {
            key: max(r["faithful"][key] for r in runs) if key != "pairs" else value
            for key, value in merged["faithful"].items()
        }
    if "growth" in merged:
        for n, point in merged["growth"].items():
            seconds = median([r["growth"][n]["seconds"] for r in runs if n in r.get("growth", {})])
            merged["growth"][n] = {**point, "seconds": seconds, "tokens_per_s": point["tokens"] / seconds}
    merged["rounds"] = len(runs)
    return merged


def size_of(path: Path) -> int:
    return sum(
        p.stat().st_size for p in path.iterdir() if p.is_file() and p.suffix in (".onnx", ".data", ".safetensors")
    )


def fidelity(reference: list[float], candidate: list[float], k: int = 10) -> dict:
    import numpy as np
    from rerank_onnx_export.report import spearman

    a, b = np.asarray(reference), np.asarray(candidate)
    top = len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k
    return {"spearman": spearman(a, b), f"top{k}_overlap": top, "max_abs_diff": float(np.abs(a - b).max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "base-v2", "large-v2"], default=None)
    parser.add_argument("--quick", action="store_true", help="base-v2, one repetition, no 8k growth point")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every stack, one after the other, this many times and report medians across rounds: "
        "on a host whose speed drifts, stacks then share its slow and fast spells",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--stacks",
        nargs="+",
        default=DEFAULT_STACKS,
        choices=STACKS + ST_STACKS,
        help="the stacks to run (default: all but the int8-static ones, whose export needs the export-int8-static "
        "extra and much memory: see docs/backends.md#int8-static-artifacts)",
    )
    parser.add_argument(
        "--st-python",
        default=None,
        help="interpreter of a venv with sentence-transformers[onnx,openvino]==6.2.0 (transformers 5): adds the st-* stacks",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["mixed100", "growth", "b16x256"], help="workloads to leave out"
    )
    parser.add_argument("--no-thread-scaling", action="store_true", help="skip the 1-thread RAG run")
    parser.add_argument("--tag", default="", help="added to the result file names (bench-SIZE-CLASS-TAG)")
    parser.add_argument(
        "--scaling-stack", default="ours-int8-fast", help="the stack whose RAG call also runs on 1 thread"
    )
    parser.add_argument(
        "--heavy-stacks",
        nargs="*",
        default=None,
        help="stacks that also run mixed100 and growth (default: all of ours)",
    )
    parser.add_argument("--stack-timeout", type=float, default=1800, help="seconds before a stack is given up")
    parser.add_argument(
        "--bf16-timeout",
        type=float,
        default=None,
        help="seconds for pytorch-bf16 and st-torch-bf16, which have no fast path on CPUs without AVX512-BF16/AMX "
        "(default 900; 480 with --quick, enough for its b16x256 at base-v2 size on 2 AVX2 cores)",
    )
    parser.add_argument("--llama-cpp", action="store_true", help="also measure llama.cpp Q8_0/Q4_0 (builds it: ~5 min)")
    args = parser.parse_args()
    if args.rounds < 1 or (args.reps is not None and args.reps < 1):
        parser.error("--rounds and --reps must be at least 1")
    size = args.size or ("base-v2" if args.quick else "large-v2")
    reps = args.reps or (1 if args.quick else 3)
    bf16_timeout = args.bf16_timeout if args.bf16_timeout is not None else (480 if args.quick else 900)

    stacks = list(args.stacks)
    if args.st_python:
        stacks += [s for s in ST_STACKS if s not in stacks]
    paths = prepare(size, stacks)
    rounds: dict[str, list[dict]] = {stack: [] for stack in stacks}
    for round_number in range(args.rounds):
        for stack in stacks:
            print(f"measuring {stack} (round {round_number + 1} of {args.rounds})", file=sys.stderr)
            rounds[stack].append(_measure(stack, args, paths, reps, bf16_timeout))
            print(
                json.dumps({k: v for k, v in rounds[stack][-1].items() if k not in ("rag20", "mixed100")})[:400],
                file=sys.stderr,
            )
    results = {stack: merge_rounds(runs) for stack, runs in rounds.items()}
    if args.scaling_stack in args.stacks and not args.no_thread_scaling and args.threads > 1:
        print(f"measuring {args.scaling_stack} with 1 thread (RAG call only)", file=sys.stderr)
        one = run_stack(
            args.scaling_stack,
            paths,
            1,
            max(1, reps // 2),
            args.quick,
            ["b16x256", "mixed100", "growth"],
            args.stack_timeout,
        )
        results[f"{args.scaling_stack} (1 thread)"] = one
    if args.llama_cpp:
        from llama_cpp_bench import measure

        results.update(measure(paths["checkpoint"], WORK, threads=args.threads, reps=reps))

    sizes = {stack: size_of(paths.get(artifact_of(stack), paths["checkpoint"])) for stack in STACKS}
    reference = results.get("ours-fp32", {})
    score_std = _score_std(reference)
    for stack, r in results.items():
        r["artifact_gb"] = r.get("artifact_gb") or sizes.get(stack.split(" ")[0], 0) / 1e9
        if "faithful" in r and score_std:
            r["faithful"]["reference_score_std"] = score_std
            for key in ("alone_vs_batch", "shared_vs_full"):
                r["faithful"][f"{key}_pct_of_std"] = 100 * r["faithful"][key] / score_std
        if "rag20" in reference and "rag20" in r and stack != "ours-fp32":
            sets = [w for w in ("rag20", "mixed100") if w in reference and w in r]
            r["fidelity_vs_ours_fp32"] = fidelity(
                [x for w in sets for x in reference[w]["scores"]], [x for w in sets for x in r[w]["scores"]]
            )
            r["fidelity_vs_ours_fp32"]["pairs_compared"] = sum(len(r[w]["scores"]) for w in sets)
    env = environment(args.threads)
    data = {"size": size, "reps": reps, "rounds": args.rounds, "environment": env, "results": results}
    name = f"bench-{size}-{env['cpu_class']}" + (f"-{args.tag}" if args.tag else "")
    publish(name, data, table(data), chart)
    return 0


def _score_std(reference: dict) -> float | None:
    import numpy as np

    scores = [x for w in ("rag20", "mixed100") for x in reference.get(w, {}).get("scores", [])]
    return float(np.std(scores)) if len(scores) > 1 else None


def table(data: dict) -> str:
    res = data["results"]
    base = res.get("official-fp32", {}).get("b16x256", {}).get("tokens_per_s")
    env = data["environment"]
    lines = [
        f"# {data['size']} architecture, {env['threads']} threads, {env['cpu']} ({env['cpu_flags']})",
        f"onnxruntime {env['onnxruntime']}, torch {env.get('torch', '-')}, commit {env['git_commit']}, "
        f"median of {data['reps']} run(s) x {data.get('rounds', 1)} interleaved round(s); tokens/s count real prompt "
        "tokens",
        "",
        "| stack | b16x256 tok/s | vs official | RAG 20x200 p50 / p95 (s) | 100 mixed: pairs/s | 1 short pair (s) "
        "| cold start (s) | peak RSS (GB) | model files (GB) | Spearman / top-10 vs ours-fp32 "
        "| alone vs batch / shared vs full (% of score std) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stack, r in res.items():
        if "error" in r:
            lines.append(f"| {stack} | failed: {r['error'][:80]} ||||||||||")
            continue
        if "backend" in r:
            stack = f"{stack} ({r['backend']})"
        tps = r.get("b16x256", {}).get("tokens_per_s")
        ratio = f"{tps / base:.2f}x" if tps and base else "-"
        label = f"{stack} (stopped at the time limit)" if "stopped" in r else stack
        lines.append(
            _row(label, r, ratio, tps, r.get("rag20", {}), r.get("mixed100", {}), r.get("fidelity_vs_ours_fp32"))
        )
    growth = {s: r["growth"] for s, r in res.items() if "growth" in r}
    if growth:
        lengths = sorted({int(n) for g in growth.values() for n in g})
        lines += [
            "",
            "Cost growth, one pair, tokens/s by document length:",
            "",
            "| stack | " + " | ".join(str(n) for n in lengths) + " |",
            "|---" * (len(lengths) + 1) + "|",
        ]
        for stack, g in growth.items():
            lines.append(
                f"| {stack} | "
                + " | ".join(f"{g[str(n)]['tokens_per_s']:.0f}" if str(n) in g else "-" for n in lengths)
                + " |"
            )
    return "\n".join(lines)


def _row(stack: str, r: dict, ratio: str, tps: float | None, rag: dict, mixed: dict, fid: dict | None) -> str:
    def f(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    cells = [
        stack,
        f(tps, ".0f"),
        ratio,
        f"{f(rag.get('p50_s'), '.2f')} / {f(rag.get('p95_s'), '.2f')}" if rag else "-",
        f(mixed.get("pairs_per_s"), ".2f") if mixed else "-",
        f(r.get("short_s"), ".3f"),
        f(r.get("cold_start_s"), ".1f"),
        f(r.get("peak_rss_gb"), ".2f"),
        f(r.get("artifact_gb"), ".2f"),
        f"{fid['spearman']:.3f} / {fid['top10_overlap']:.1f}" if fid else "-",
        _faithful_cell(r.get("faithful", {})),
    ]
    return "| " + " | ".join(cells) + " |"


def _faithful_cell(faithful: dict) -> str:
    if "alone_vs_batch_pct_of_std" not in faithful:
        return "-"
    return f"{faithful['alone_vs_batch_pct_of_std']:.2f}% / {faithful['shared_vs_full_pct_of_std']:.2f}%"


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = {s: r for s, r in data["results"].items() if "b16x256" in r}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(res)
    left.barh(names, [res[s]["b16x256"]["tokens_per_s"] for s in names], color="#4c72b0")
    left.set(
        xlabel="prompt tokens / s (16 x 256)",
        title=f"{data['size']}: throughput, {data['environment']['threads']} threads",
    )
    rag = [s for s in names if "rag20" in res[s]]
    right.barh(rag, [res[s]["rag20"]["p50_s"] for s in rag], color="#dd8452")
    right.set(xlabel="seconds (p50)", title="RAG call: 1 query x 20 documents of ~200 tokens")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
