"""Where attention takes over: one pair of growing length, its speed and the memory it costs.

    python benchmarks/long_inputs.py benchmarks/work/base-int8 --doc-lengths 128 512 2048 8192

Every (stack, length) runs in its own process, so that its peak RSS is its own: load, warm up with a
short call, then score one (query, document) pair `--reps` times. Reported per row: prompt tokens,
median latency and tokens/s, RSS before the pair (model loaded and warm), peak RSS, RSS after the
pair (idle), RSS after one short call that follows it (what a server then holds: OpenVINO may have
dropped its compiled model after the long pair and compiled it again), and the model files' size. Where
OpenVINO ran the pair whole in its child process (openvino_whole.py), the child's peak (VmHWM, which it
reports) is a column of its own, and "peak, both" is the most this process and its children held at once
(their RSS summed every 20 ms while the pair ran; or this process's peak, if higher). Stacks:
  default      Reranker(artifact): backend auto, long prompts the engine's way (onnxruntime: 512-token slices;
               OpenVINO: 1,024-token slices, and a prompt over 4,096 tokens whole in a child process)
  openvino-slices  the default with slice_tokens=1024: every long prompt in slices (OpenVINO's way before Dec 2)
  openvino-keeps-buffers  the default without OpenVINO's recompile after long runs (the default before Dec 1)
  onnxruntime-keeps-arena  onnxruntime without the new session after long runs (its default before Dec 1)
  one-piece    the same with slice_tokens=None: every prompt in one piece (the path before slicing)
  onnxruntime  backend="onnxruntime", its 512-token slices (add with --stacks; onnxruntime-slice-1024: the old size)
Writes results/long-inputs-<artifact>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, TreePeak, environment, median, publish, text_of_tokens

QUERY = "where do rivers flood in spring?"
STACKS = {
    "default": {"backend": "auto", "slice_tokens": "auto"},
    # the default before OpenVINO dropped and recompiled its model after long runs (REBUILD_LENGTH)
    "openvino-keeps-buffers": {"backend": "auto", "slice_tokens": "auto", "keep_buffers": True},
    "onnxruntime-keeps-arena": {"backend": "onnxruntime", "slice_tokens": "auto", "keep_buffers": True},
    "openvino-slices": {"backend": "auto", "slice_tokens": 1024},
    "one-piece": {"backend": "auto", "slice_tokens": None},
    "onnxruntime": {"backend": "onnxruntime", "slice_tokens": "auto"},
    "onnxruntime-slice-1024": {"backend": "onnxruntime", "slice_tokens": 1024},
    "onnxruntime-one-piece": {"backend": "onnxruntime", "slice_tokens": None},
    "slice-256": {"backend": "auto", "slice_tokens": 256},
    "slice-512": {"backend": "auto", "slice_tokens": 512},
    "onnxruntime-slice-512": {"backend": "onnxruntime", "slice_tokens": 512},
}


def _rss_gb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, GB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1e6, int(status["VmHWM"].split()[0]) / 1e6


def worker(artifact: str, stack: str, doc_tokens: int, reps: int, threads: int) -> dict:
    """One measurement, in this (fresh) process."""
    from rerank_onnx import Reranker

    settings = STACKS[stack]
    if settings.get("keep_buffers"):
        from rerank_onnx.backends import onnxruntime, openvino

        openvino.REBUILD_LENGTH = onnxruntime.REBUILD_LENGTH = sys.maxsize
    reranker = Reranker(artifact, threads=threads, backend=settings["backend"], slice_tokens=settings["slice_tokens"])
    reranker.rank(QUERY, ["a short warm-up document", "and another"])
    document = text_of_tokens(doc_tokens, seed=doc_tokens)
    prompt_tokens = len(reranker.model.encode([QUERY], [document]).input_ids[0])
    before, _ = _rss_gb()
    tree = TreePeak(os.getpid())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        reranker.rank(QUERY, [document])
        times.append(time.perf_counter() - start)
    after, peak = _rss_gb()
    tree_peak = tree.stop()
    whole = getattr(reranker.model._scorer.session._engine, "_whole", None)  # OpenVINO's long-prompt child process
    child_peak = whole.peak_rss / 1e9 if whole is not None else 0.0
    reranker.rank(QUERY, ["a short document after the long one"])
    after_next, _ = _rss_gb()
    assert reranker.backend is not None
    return {
        "stack": stack,
        "doc_tokens": doc_tokens,
        "prompt_tokens": prompt_tokens,
        "backend": f"{reranker.backend.backend} {reranker.backend.precision}",
        "latency_s": median(times),
        "latencies_s": times,
        "tokens_per_s": prompt_tokens / median(times),
        "rss_before_gb": before,
        "peak_rss_gb": peak,
        "child_peak_rss_gb": child_peak,
        "peak_total_gb": max(peak, tree_peak),
        "rss_after_gb": after,
        "rss_after_next_call_gb": after_next,
    }


def measure(artifact: Path, stack: str, doc_tokens: int, reps: int, threads: int) -> dict:
    command = [sys.executable, __file__, str(artifact), "--worker", stack, str(doc_tokens)]
    command += ["--reps", str(reps), "--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        return {"stack": stack, "doc_tokens": doc_tokens, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# One pair of growing length: {data['artifact']} ({data['files_gb']:.2f} GB of model files), "
        f"{env['threads']} threads, {env['cpu']} ({env['cpu_class']})",
        f"commit {env['git_commit']}; each row its own process; median of {data['reps']} runs; RSS in GB",
        "",
        "| stack | backend | doc tokens | prompt tokens | latency (s) | tokens/s | RSS before | peak RSS | child peak "
        "| peak, both | RSS after | RSS after a short call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        if "error" in r:
            lines.append(f"| {r['stack']} | | {r['doc_tokens']} | failed: {r['error']} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['stack']} | {r['backend']} | {r['doc_tokens']} | {r['prompt_tokens']} | {r['latency_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {r['rss_before_gb']:.2f} | {r['peak_rss_gb']:.2f} | "
            f"{r.get('child_peak_rss_gb', 0.0):.2f} | {r.get('peak_total_gb', r['peak_rss_gb']):.2f} | "
            f"{r['rss_after_gb']:.2f} | "
            + (f"{r['rss_after_next_call_gb']:.2f} |" if "rss_after_next_call_gb" in r else "not measured |")
        )
    return "\n".join(lines)


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10, 3.8))
    for stack in data["stacks"]:
        rows = [r for r in data["results"] if r["stack"] == stack and "error" not in r]
        x = [r["prompt_tokens"] for r in rows]
        speed.plot(x, [r["tokens_per_s"] for r in rows], marker="o", label=stack)
        memory.plot(x, [r.get("peak_total_gb", r["peak_rss_gb"]) for r in rows], marker="o", label=f"{stack} peak")
        memory.plot(x, [r["rss_after_gb"] for r in rows], marker="x", linestyle=":", label=f"{stack} after")
    for ax in (speed, memory):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens (one pair)")
        ax.legend(fontsize=7)
    speed.set(ylabel="tokens/s", title=f"{data['artifact']}: speed")
    memory.set(ylabel="RSS (GB)", title=f"memory ({data['environment']['cpu_class']})")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--doc-lengths", type=int, nargs="+", default=[128, 512, 2048, 8192])
    parser.add_argument("--stacks", nargs="+", default=["default", "one-piece"], choices=sorted(STACKS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--merge", action="store_true", help="keep the other stacks' rows of the last run's file")
    parser.add_argument("--worker", nargs=2, metavar=("STACK", "DOC_TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(str(args.artifact), args.worker[0], int(args.worker[1]), args.reps, args.threads)))
        return 0
    results = []
    for doc_tokens in args.doc_lengths:
        for stack in args.stacks:
            results.append(measure(args.artifact, stack, doc_tokens, args.reps, args.threads))
            print(json.dumps(results[-1]), file=sys.stderr)
    env = environment(args.threads)
    previous = RESULTS / f"long-inputs-{args.artifact.resolve().name}-{env['cpu_class']}.json"
    if args.merge and previous.exists():  # keep the other stacks' rows of an earlier run
        earlier = json.loads(previous.read_text())
        results = [r for r in earlier["results"] if r["stack"] not in args.stacks] + results
        args.stacks = [s for s in earlier["stacks"] if s not in args.stacks] + args.stacks
        results.sort(key=lambda r: (r["doc_tokens"], args.stacks.index(r["stack"])))
    files = sum(p.stat().st_size for p in args.artifact.iterdir() if p.name.startswith("model.onnx"))
    name = f"long-inputs-{args.artifact.resolve().name}-{env['cpu_class']}"
    data = {
        "artifact": args.artifact.resolve().name,
        "files_gb": files / 1e9,
        "stacks": args.stacks,
        "reps": args.reps,
        "environment": env,
        "results": results,
    }
    publish(name, data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
