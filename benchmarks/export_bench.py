"""Export: wall time and peak RSS of `rerank-onnx export` per checkpoint, for one or more versions of the code.

    python benchmarks/export_bench.py benchmarks/work/base-v2-checkpoint benchmarks/work/large-v2-checkpoint \\
        --code torch=/tmp/old-pkgs new=. --tag issue33

`--code NAME=DIR` puts DIR's `rerank_onnx` and `rerank_onnx_export` packages first on PYTHONPATH (make DIR a
folder of two symlinks into a git worktree of another commit: `rerank_onnx -> tree/rerank_onnx`,
`rerank_onnx_export -> tree/export`; `.` is this tree). `--slim NAME` runs that version with torch,
transformers and optimum unimportable, as the slim `export` extra installs it. Each export is a fresh process; the versions take turns
per checkpoint and repetition. Peak RSS is the process's own VmHWM, file-backed pages it mapped included (the
self-check's OpenVINO maps the compiled graph's weights, and keeps them mapped beside its repacked copy); peak
private memory is the highest RssAnon seen by sampling the process every 20 ms: what it needs that the kernel
cannot take back as page cache. The export's own split of its time
(export_report.json's `timings`) is kept too. Results: results/export-<cpu class>[-tag].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, environment, median, publish

CHILD = """
import re, sys
if sys.argv[1] == "slim":  # what the slim export extra installs: no torch, transformers or optimum
    for name in ("torch", "transformers", "optimum"):
        sys.modules[name] = None
del sys.argv[1]
from rerank_onnx.cli import main
code = main(sys.argv[1:])
peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print("PEAK_KB", peak, file=sys.stderr)
sys.exit(code)
"""


def measure(checkpoint: Path, code: Path | None, quantization: str, out: Path, slim: bool) -> dict:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code.resolve()), env.get("PYTHONPATH", "")])
    shutil.rmtree(out, ignore_errors=True)
    # a first export on this machine: nothing compiled for this artifact yet (the self-check compiles into it)
    cache = out.parent / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env["RERANK_ONNX_CACHE_DIR"] = str(cache)
    options = ["--quantization", quantization, "--overwrite"]
    started = time.perf_counter()
    done, private_kb = run_sampled(
        [sys.executable, "-c", CHILD, "slim" if slim else "full", "export", str(checkpoint), str(out), *options],
        env=env,
        cwd=out.parent,  # `python -c` puts the working folder first on sys.path: not this tree
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1) or "PEAK_KB" not in done.stderr:  # 1: the export ran, a self-check warned
        raise RuntimeError(f"export of {checkpoint} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_kb = int(done.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
    report = json.loads((out / "export_report.json").read_text())
    artifact = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    result = {
        "seconds": seconds,
        "peak_rss_gb": peak_kb * 1024 / 1e9,
        "peak_private_gb": private_kb * 1024 / 1e9,
        "artifact_gb": artifact / 1e9,
        "timings": report["timings"],
        "agreement": report["agreement"],
        "passed": report["passed"],
    }
    shutil.rmtree(out)
    shutil.rmtree(cache, ignore_errors=True)
    return result


def run_sampled(
    command: list[str], *, env: dict, cwd: Path, stdin: str | None = None
) -> tuple[subprocess.CompletedProcess, int]:
    """Run `command`, sampling its RssAnon every 20 ms: the finished process and the highest value (kB)."""
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    ) as process:
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            status = Path(f"/proc/{process.pid}/status")
            while not stop.is_set():
                try:
                    found = re.search(r"RssAnon:\s+(\d+)", status.read_text())
                except OSError:
                    return
                if found:
                    peak[0] = max(peak[0], int(found.group(1)))
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, stderr = process.communicate(stdin)
        stop.set()
        sampler.join()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), peak[0]


def first_rank(checkpoint: Path, code: Path | None, slim: bool, scratch: Path) -> dict:
    """`rerank-onnx rank CHECKPOINT` with an empty cache: the export into the cache, the load and the scores."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code.resolve()), env.get("PYTHONPATH", "")])
    cache = scratch / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env["RERANK_ONNX_CACHE_DIR"] = str(cache)
    started = time.perf_counter()
    done, private_kb = run_sampled(
        [sys.executable, "-c", CHILD, "slim" if slim else "full", "rank", str(checkpoint), "--query", "a cat?", "-"],
        stdin="A cat is a small feline.\nBananas are yellow.\n",
        env=env,
        cwd=scratch,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"rank from {checkpoint} failed:\n{done.stderr[-2000:]}")
    peak_kb = int(done.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
    shutil.rmtree(cache)
    return {"seconds": seconds, "peak_rss_gb": peak_kb * 1024 / 1e9, "peak_private_gb": private_kb * 1024 / 1e9}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--code", nargs="+", default=[], metavar="NAME=DIR")
    parser.add_argument("--quantization", default="int8", choices=["int8", "int8-fast", "none"])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--slim", nargs="*", default=[], metavar="NAME", help="code versions run without torch")
    parser.add_argument(
        "--first-rank", nargs="*", default=[], metavar="NAME", help="also time `rank CHECKPOINT` (empty cache)"
    )
    parser.add_argument("--tag", default="")
    parser.add_argument("--scratch", type=Path, default=HERE / "work" / "export-bench")
    args = parser.parse_args()
    codes: dict[str, Path | None] = {"this tree": None}
    if args.code:
        codes = {name: Path(folder) for name, _, folder in (item.partition("=") for item in args.code)}

    args.scratch = args.scratch.resolve()
    args.scratch.mkdir(parents=True, exist_ok=True)
    args.checkpoints = [c.resolve() for c in args.checkpoints]
    results: dict[str, dict] = {}
    for checkpoint in args.checkpoints:
        runs: dict[str, list[dict]] = {code: [] for code in codes}
        for _ in range(args.reps):
            for code, folder in codes.items():
                print(f"exporting {checkpoint.name} with {code}", file=sys.stderr, flush=True)
                slim = code in args.slim
                runs[code].append(measure(checkpoint, folder, args.quantization, args.scratch / "out", slim))
        for code in args.first_rank:
            print(f"ranking from {checkpoint.name} with {code}", file=sys.stderr, flush=True)
            ranked = first_rank(checkpoint, codes[code], code in args.slim, args.scratch)
            results[f"{checkpoint.name}: {code}, first rank from the checkpoint"] = {"runs": [ranked], **ranked}
            print(json.dumps(ranked), file=sys.stderr, flush=True)
        for code, measured in runs.items():
            key = f"{checkpoint.name}: {code}"
            results[key] = {
                "runs": measured,
                "seconds": median([r["seconds"] for r in measured]),
                "peak_rss_gb": median([r["peak_rss_gb"] for r in measured]),
                "peak_private_gb": median([r["peak_private_gb"] for r in measured]),
                "artifact_gb": measured[-1]["artifact_gb"],
            }
            summary = {k: v for k, v in results[key].items() if k != "runs"}
            print(key, json.dumps(summary), file=sys.stderr, flush=True)
    env = environment()
    data = {
        "quantize": args.quantization,
        "reps": args.reps,
        "code": {code: str(folder) for code, folder in codes.items() if folder is not None},
        "slim": args.slim,
        "environment": env,
        "results": results,
    }
    name = f"export-{env['cpu_class']}" + (f"-{args.tag}" if args.tag else "")
    publish(name, data, _table(data), _chart)
    return 0


def _table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# Export, --quantization {data['quantize']}, {env['cpu']} ({env['cpu_class']}: {env['cpu_flags']})",
        f"commit {env['git_commit']}, median of {data['reps']} fresh process(es), page cache warm",
        "",
        "| checkpoint: code | wall (s) | peak RSS (GB) | peak private (GB) | artifact (GB) | peak RSS / private - artifact (GB) "
        "| where the time went (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in data["results"].items():
        if "artifact_gb" not in r:  # a first rank from the checkpoint
            lines.append(
                f"| {key} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | {r['peak_private_gb']:.2f} | | "
                "| export + load + 2 scores |"
            )
            continue
        timings = r["runs"][-1]["timings"]
        split = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in timings.items() if k != "total_s")
        lines.append(
            f"| {key} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | {r['peak_private_gb']:.2f} | {r['artifact_gb']:.2f} "
            f"| {r['peak_rss_gb'] - r['artifact_gb']:.2f} / {r['peak_private_gb'] - r['artifact_gb']:.2f} | {split} |"
        )
    return "\n".join(lines)


def _chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(data["results"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 1.4 + 0.45 * len(labels)))
    titles = ("wall time (s)", "peak RSS (GB)", "peak private memory (GB)")
    for ax, key, title in zip(axes, ("seconds", "peak_rss_gb", "peak_private_gb"), titles):
        ax.barh(labels, [data["results"][label].get(key, 0.0) for label in labels], color="#4c72b0")
        ax.set(title=title)
    for ax in axes[1:]:
        ax.set_yticks([])
    fig.suptitle(f"rerank-onnx export --quantization {data['quantize']}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
