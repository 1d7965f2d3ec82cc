"""Loopback HTTP load test of `rerank-onnx serve`: throughput and latency at several concurrencies,
with cross-request coalescing on and off.

    python benchmarks/load.py ARTIFACT [--concurrency 1 4 16] [--requests-per-client 6] [--docs 8] [--doc-tokens 64]

Each client sends its requests one after another; the run stops after the request count or the
time limit, whichever comes first. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, median, percentile, text_of_tokens, write_results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: str, coalesce_ms: float, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "rerank_onnx.cli",
        "serve",
        artifact,
        "--port",
        str(port),
        "--coalesce-ms",
        str(coalesce_ms),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError("server did not become ready")


async def run_load(
    url: str, concurrency: int, requests_per_client: int, time_limit: float, docs: int, doc_tokens: int
) -> dict:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + time_limit

    async def client(cid: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        for r in range(requests_per_client):
            if time.perf_counter() > stop_at:
                return
            body = {
                "query": text_of_tokens(8, seed=cid * 1000 + r),
                "documents": [text_of_tokens(doc_tokens, seed=cid * 100000 + r * 100 + d) for d in range(docs)],
                "return_documents": False,
            }
            start = time.perf_counter()
            response = await http.post(url + "/v1/rerank", json=body)
            if response.status_code != 200:
                errors += 1
            else:
                latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "pairs_per_s": len(latencies) * docs / elapsed,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "median_s": median(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests-per-client", type=int, default=6)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per (mode, concurrency) cell")
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--doc-tokens", type=int, default=64)
    parser.add_argument("--coalesce-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default=None, help="result file name (default load-<artifact folder>)")
    args = parser.parse_args()

    rows = []
    for mode, window in (("coalesce", args.coalesce_ms), ("no-coalesce", 0.0)):
        process, url = start_server(args.artifact, window, args.threads)
        try:
            # warm-up: one request
            asyncio.run(run_load(url, 1, 1, 60, args.docs, args.doc_tokens))
            for concurrency in args.concurrency:
                row = asyncio.run(
                    run_load(url, concurrency, args.requests_per_client, args.time_limit, args.docs, args.doc_tokens)
                )
                row["mode"] = mode
                rows.append(row)
                print(
                    f"{mode:12s} c={concurrency:3d} {row['requests_per_s']:.2f} req/s  p50 {row['p50_s']:.2f}s  p95 {row['p95_s']:.2f}s  errors {row['errors']}"
                )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)

    name = args.name or f"load-{Path(args.artifact).name}"
    table = [
        f"# Load test: {Path(args.artifact).name}, {args.docs} documents x ~{args.doc_tokens} tokens per request",
        "",
        "| mode | clients | requests | req/s | pairs/s | p50 (s) | p95 (s) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['pairs_per_s']:.1f} | "
            f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['errors']} |"
        )
    data = {"environment": environment(args.threads), "workload": vars(args), "rows": rows}
    write_results(name, data, "\n".join(table))
    chart(rows, name)
    return 0


def chart(rows: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common import RESULTS

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in ("coalesce", "no-coalesce"):
        mine = [r for r in rows if r["mode"] == mode]
        xs = [r["concurrency"] for r in mine]
        left.plot(xs, [r["pairs_per_s"] for r in mine], marker="o", label=mode)
        right.plot(xs, [r["p95_s"] for r in mine], marker="o", label=mode)
    left.set(xlabel="concurrent clients", ylabel="pairs / s", title="throughput", xscale="log")
    right.set(xlabel="concurrent clients", ylabel="p95 latency (s)", title="p95 latency", xscale="log")
    left.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
