"""Shared by the benchmark scripts: environment capture, result files, workload texts, memory sampling."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = [
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "but",
    "their",
    "its",
    "new",
    "one",
    "after",
    "also",
    "first",
    "two",
    "they",
    "who",
    "been",
    "more",
    "other",
    "into",
    "all",
    "time",
    "year",
    "some",
    "river",
    "city",
    "music",
    "film",
    "school",
    "team",
    "season",
    "war",
    "state",
    "world",
    "album",
    "game",
    "party",
    "station",
    "line",
    "village",
]


def environment(threads: int | None = None) -> dict:
    import numpy
    import onnxruntime

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except OSError:
        commit = ""
    from rerank_onnx.backends.select import machine_summary

    machine = machine_summary()
    # planned for a less capable class (RERANK_ONNX_CPU_CLASS): result files are named after both
    planned = f"-as-{machine['planned_class']}" if "planned_class" in machine else ""
    env = {
        "cpu": machine["cpu"],
        "cpu_class": f"{machine['cpu_class']}{planned}",
        "cpu_flags": " ".join(machine["cpu_flags"]),
        "cores": len(__import__("os").sched_getaffinity(0)),
        "threads": threads,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "git_commit": commit,
    }
    try:
        import openvino

        env["openvino"] = openvino.__version__
    except ImportError:
        pass
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        pass
    return env


def text_of_tokens(n: int, seed: int) -> str:
    """A text of roughly n tokens (common English words are about one token each)."""
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_results(name: str, data: dict, table: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{name}.json"
    md_path = RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(table + "\n")
    return json_path, md_path


def publish(name: str, data: dict, table: str, chart: Callable[[dict, str], None]) -> None:
    """Write results/<name>.json and .md, draw results/<name>.png with `chart(data, name)`, print the table."""
    write_results(name, data, table)
    chart(data, name)
    print(table)


class TreePeak:
    """Samples the resident memory of process `pid` and its children together every 20 ms, on a thread, and
    keeps the largest sum (VmHWM covers one process only; OpenVINO runs a long prompt in a child)."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process(self.pid)
        while not self._stop.wait(0.02):
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # it ended between listing and reading
                    total += child.memory_info().rss
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        """Stop sampling; the largest sum seen, GB."""
        self._stop.set()
        self._thread.join()
        return self.peak / 1e9


def add_more_artifacts_arguments(parser: argparse.ArgumentParser) -> None:
    """`--also NAME=ARTIFACT ...` (read by `more_artifacts`) and `--tag`, for a bench of one checkpoint."""
    parser.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="NAME=ARTIFACT",
        help="more artifacts of the checkpoint (e.g. int8-static=DIR), each run as stack ours-NAME on backend auto",
    )
    parser.add_argument("--tag", default="", help="added to the result file names")


def more_artifacts(values: list[str]) -> dict[str, str]:
    """`--also NAME=ARTIFACT ...`: more artifacts of the benchmarked checkpoint (another quantization), each a
    stack of its own named ours-NAME that runs with backend auto, beside the others in the same run."""
    stacks = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(
                f"error: --also expects NAME=ARTIFACT (e.g. int8-static=ce-minilm-int8-static), got {value!r}"
            )
        stacks[f"ours-{name}"] = folder
    return stacks


def run_worker(
    script: str, stack: str, arguments: list[str], *, python: str | None, env: dict[str, str] | None = None
) -> dict | None:
    """Run `script --worker stack` with `arguments` in its own process and return the JSON it prints last; None
    (with a line on stderr) when `python` is None (a peer stack without its interpreter) or the worker fails.

    Args:
        script: the benchmark script's path (its `--worker` mode measures one stack).
        stack: the stack's name.
        arguments: the script's positional arguments and options for the worker.
        python: the interpreter (a peer venv's for peer stacks), or None where there is none.
        env: the worker's environment (default: this process's).

    Returns:
        The worker's result, or None.
    """
    if python is None:
        print(f"{stack} skipped: no --peer-python", file=sys.stderr)
        return None
    out = subprocess.run([python, script, *arguments, "--worker", stack], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"{stack} failed: {out.stderr.strip().splitlines()[-3:]}", file=sys.stderr)
        return None
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result
