"""Concurrent long requests against a running server: do they complete, and what does the server hold?

    python benchmarks/server_long.py benchmarks/work/large-v2-int8 --requests 2 --doc-tokens 8192

Starts `rerank-onnx serve ARTIFACT` (default settings), sends `--requests` /v1/rerank requests at once,
each one query and one document of `--doc-tokens` tokens, and reads the server's /proc status: RSS at
rest (model loaded, warmed up), peak RSS (VmHWM), the most it and its children (OpenVINO's long-prompt
process) held at once (RSS summed every 20 ms while the requests ran), RSS once the requests are answered
and RSS after one short request that follows them.
Writes results/server-long-<artifact>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, TreePeak, environment, publish, text_of_tokens


def _status_gb(pid: int) -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1e6, int(status["VmHWM"].split()[0]) / 1e6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(artifact: Path, requests: int, doc_tokens: int, threads: int, backend: str) -> dict:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "rerank_onnx.cli", "serve", str(artifact), "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--threads", str(threads), "--backend", backend], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        httpx.post(url + "/v1/rerank", json={"query": "warm up", "documents": ["a", "b"]}, timeout=600)
        rest, _ = _status_gb(server.pid)
        bodies = [
            {"query": f"where do rivers flood, question {i}?", "documents": [text_of_tokens(doc_tokens, seed=i)]}
            for i in range(requests)
        ]

        def post(body: dict) -> tuple[int, float]:
            start = time.perf_counter()
            response = httpx.post(url + "/v1/rerank", json=body, timeout=3600)
            return response.status_code, time.perf_counter() - start

        tree = TreePeak(server.pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(requests) as pool:
            answers = list(pool.map(post, bodies))
        wall = time.perf_counter() - start
        tree_peak = tree.stop()
        after, peak = _status_gb(server.pid)
        # what the server then holds while serving short requests (OpenVINO may have recompiled its model)
        httpx.post(
            url + "/v1/rerank", json={"query": "a short request", "documents": ["after", "the long ones"]}, timeout=600
        )
        after_next, _ = _status_gb(server.pid)
        models = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]
        return {
            "requests": requests,
            "doc_tokens": doc_tokens,
            "statuses": [status for status, _ in answers],
            "latencies_s": [seconds for _, seconds in answers],
            "wall_s": wall,
            "rss_rest_gb": rest,
            "peak_rss_gb": peak,
            "peak_with_children_gb": max(peak, tree_peak),
            "rss_after_gb": after,
            "rss_after_next_request_gb": after_next,
            "backend": f"{models['backend']['name']} {models['backend']['precision']}",
        }
    finally:
        server.terminate()
        server.wait(timeout=120)


def table(data: dict) -> str:
    env, r = data["environment"], data["result"]
    return "\n".join(
        [
            f"# {r['requests']} concurrent requests of one {r['doc_tokens']}-token document: {data['artifact']}",
            f"{env['cpu']} ({env['cpu_class']}), {env['threads']} threads, commit {env['git_commit']}; "
            f"server backend {r['backend']}; RSS of the server process in GB",
            "",
            "| statuses | latencies (s) | wall (s) | RSS at rest | peak RSS | peak with children | RSS after "
            "| RSS after a short request |",
            "|---|---|---|---|---|---|---|---|",
            f"| {r['statuses']} | {', '.join(f'{s:.1f}' for s in r['latencies_s'])} | {r['wall_s']:.1f} | "
            f"{r['rss_rest_gb']:.2f} | {r['peak_rss_gb']:.2f} | {r.get('peak_with_children_gb', float('nan')):.2f} | "
            f"{r['rss_after_gb']:.2f} | "
            f"{r.get('rss_after_next_request_gb', float('nan')):.2f} |",
        ]
    )


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = data["result"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    peak = r.get("peak_with_children_gb", r["peak_rss_gb"])
    labels, values = ["at rest", "peak (with children)", "after"], [r["rss_rest_gb"], peak, r["rss_after_gb"]]
    if "rss_after_next_request_gb" in r:
        labels, values = [*labels, "after a short request"], [*values, r["rss_after_next_request_gb"]]
    ax.bar(labels, values)
    ax.set(ylabel="server RSS (GB)", title=f"{data['artifact']}: {r['requests']} x {r['doc_tokens']}-token requests")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--doc-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino"])
    args = parser.parse_args()
    env = environment(args.threads)
    data = {
        "artifact": args.artifact.resolve().name,
        "environment": env,
        "result": run(args.artifact, args.requests, args.doc_tokens, args.threads, args.backend),
    }
    suffix = "" if args.backend == "auto" else f"-{args.backend}"
    name = f"server-long-{data['artifact']}-{env['cpu_class']}{suffix}"
    publish(name, data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
