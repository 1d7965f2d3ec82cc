"""Cold start: process start to first score, per backend, with OpenVINO's compiled-model cache cold,
warm and off.

    python benchmarks/cold_start.py benchmarks/work/base-v2-int8 --reps 3
    python benchmarks/cold_start.py benchmarks/work/base-v2-int8 --code before=/tmp/old-tree after=. --tag issue32

`--code NAME=DIR` (repeatable) runs every case with DIR's `rerank_onnx` package first on PYTHONPATH (a git
worktree of another commit, say), the versions taking turns within each repetition, so that two versions of
the code are compared side by side in one run.

Each measurement is a fresh Python process that imports rerank_onnx, loads the artifact and scores one
short pair; the parent takes the time from just before it spawns the process to the moment the child
has its score. The page cache is warm in every case (the artifact was read before): this measures the
work, not the disk. Results: results/cold-start-<artifact>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, environment, median, publish

CHILD = """
import json, sys, time
from rerank_onnx import Reranker
backend, precision, cache, threads = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
loaded_at = time.time()
r = Reranker(sys.argv[1], backend=backend, precision=precision, threads=threads,
             compile_cache=cache != "off", cache_dir=None if cache == "off" else cache)
ready_at = time.time()
r.rank("what is a cat?", ["A cat is a small feline."])
print(json.dumps({"imported_at": loaded_at, "ready_at": ready_at, "scored_at": time.time(),
                  "backend": r.backend.describe() if r.backend else None}))
"""

# (label, backend, precision, cache state)
CASES = [
    ("onnxruntime", "onnxruntime", "auto", "off"),
    ("auto, no cache", "auto", "auto", "off"),
    ("auto, cache cold", "auto", "auto", "cold"),
    ("auto, cache warm", "auto", "auto", "warm"),
]


def measure(artifact: Path, backend: str, precision: str, cache: str, threads: int, code: Path | None) -> dict:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code.resolve()), env.get("PYTHONPATH", "")])
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(artifact.resolve()), backend, precision, cache, str(threads)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tempfile.gettempdir(),  # `python -c` puts the working folder first on sys.path: not this tree
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "first_score_s": child["scored_at"] - started,
        "imports_s": child["imported_at"] - started,
        "load_s": child["ready_at"] - child["imported_at"],
        "first_call_s": child["scored_at"] - child["ready_at"],
        "backend": child["backend"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--code", nargs="+", default=[], metavar="NAME=DIR", help="versions of the code to compare (see above)"
    )
    parser.add_argument("--tag", default="", help="added to the result file names")
    args = parser.parse_args()
    codes: dict[str, Path | None] = {"": None}
    if args.code:
        codes = {name: Path(folder) for name, _, folder in (item.partition("=") for item in args.code)}

    results: dict[str, dict] = {}
    for label, backend, precision, state in CASES:
        runs: dict[str, list[dict]] = {code: [] for code in codes}
        for _ in range(args.reps):
            for code, folder in codes.items():  # the versions take turns: drift hits them alike
                cache = "off"
                if state != "off":
                    cold = state == "cold"
                    cache = tempfile.mkdtemp(prefix="rerank-cache-") if cold else _warm_cache(args, backend, folder)
                runs[code].append(measure(args.artifact, backend, precision, cache, args.threads, folder))
                if state == "cold":
                    shutil.rmtree(cache)
        for code, measured in runs.items():
            key = f"{code}: {label}" if code else label
            results[key] = {
                "runs": measured,
                "backend": measured[-1]["backend"],
                **{
                    k: median([r[k] for r in measured])
                    for k in ("first_score_s", "imports_s", "load_s", "first_call_s")
                },
            }
            print(key, json.dumps({k: v for k, v in results[key].items() if k != "runs"}), file=sys.stderr)
    env = environment(args.threads)
    data = {
        "artifact": args.artifact.name,
        "reps": args.reps,
        "code": {code: str(folder) for code, folder in codes.items() if folder is not None},
        "environment": env,
        "results": results,
    }
    name = f"cold-start-{args.artifact.name}-{env['cpu_class']}" + (f"-{args.tag}" if args.tag else "")
    publish(name, data, _table(data), _chart)
    return 0


_WARM: dict[tuple[str, Path | None], str] = {}


def _warm_cache(args: argparse.Namespace, backend: str, code: Path | None) -> str:
    """One cache folder per code version, filled by a first (unmeasured) run, reused by every warm measurement."""
    if (backend, code) not in _WARM:
        _WARM[backend, code] = tempfile.mkdtemp(prefix="rerank-cache-")
        measure(args.artifact, backend, "auto", _WARM[backend, code], args.threads, code)
    return _WARM[backend, code]


def _table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# Cold start, {data['artifact']}, {env['threads']} threads, {env['cpu']} ({env['cpu_class']}: {env['cpu_flags']})",
        f"onnxruntime {env['onnxruntime']}, openvino {env.get('openvino', '-')}, commit {env['git_commit']}, "
        f"median of {data['reps']} fresh processes, page cache warm",
        "",
        "| case | engine | process start to first score (s) | imports (s) | load + compile (s) | first call (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in data["results"].items():
        lines.append(
            f"| {label} | {r['backend']} | {r['first_score_s']:.2f} | {r['imports_s']:.2f} | {r['load_s']:.2f} "
            f"| {r['first_call_s']:.2f} |"
        )
    return "\n".join(lines)


def _chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(data["results"])
    parts = ("imports_s", "load_s", "first_call_s")
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.4 * len(labels)))
    left = [0.0] * len(labels)
    for part, colour in zip(parts, ("#8172b2", "#4c72b0", "#dd8452")):
        values = [data["results"][label][part] for label in labels]
        ax.barh(labels, values, left=left, color=colour, label=part.removesuffix("_s").replace("_", " "))
        left = [a + b for a, b in zip(left, values)]
    ax.set(xlabel="seconds, process start to first score", title=f"cold start: {data['artifact']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
