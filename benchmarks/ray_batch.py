"""Batch reranking on Ray Data against one plain process: pairs/s for 1 and 2 actors, and the cost per batch.

    python benchmarks/ray_batch.py benchmarks/work/base-v2-int8 --queries 8 --docs 20 --reps 3
    python benchmarks/ray_batch.py /path/to/tiny-int8 --queries 40 --docs 25 --reps 3   # overhead: ~no compute

Stacks, same pairs, same batch size, same CPUs (all of this machine's, 2 here):
- plain: one process, `Reranker(threads=cores).predict` batch after batch (what a script would do);
- ray 1x<cores>: a local Ray instance, `RerankBatch` in one actor holding every core;
- ray <cores>x1: one actor per core, one thread each.
Each run is the whole job as a user sees it: model load (per actor), read from memory, score, collect, in
input order. Ray's own start (`ray.init`) is reported once, apart. The overhead per batch is
(ray wall - plain wall) / batches for the 1-actor stack: with a tiny model it is nearly all overhead.
Results: results/ray-batch-<artifact>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, environment, median, publish, text_of_tokens


def make_rows(queries: int, docs: int, doc_tokens: int) -> list[dict]:
    return [
        {
            "id": q * docs + d,
            "query": text_of_tokens(12, seed=q),
            "document": text_of_tokens(doc_tokens, seed=1000 + q * docs + d),
        }
        for q in range(queries)
        for d in range(docs)
    ]


def run_plain(artifact: Path, rows: list[dict], batch_rows: int, threads: int) -> dict:
    from rerank_onnx import Reranker

    start = time.perf_counter()
    model = Reranker(artifact, threads=threads)
    loaded = time.perf_counter()
    scores = []
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i : i + batch_rows]
        scores.extend(model.predict([r["query"] for r in chunk], [r["document"] for r in chunk]).tolist())
    end = time.perf_counter()
    return {"wall_s": end - start, "load_s": loaded - start, "score_s": end - loaded, "scores": scores}


def run_ray(artifact: Path, rows: list[dict], batch_rows: int, actors: int, threads: int) -> dict:
    import ray

    from rerank_onnx.ray import RerankBatch

    start = time.perf_counter()
    ds = ray.data.from_items(rows, override_num_blocks=max(actors * 2, 4)).map_batches(
        RerankBatch,
        fn_constructor_args=(str(artifact),),
        batch_size=batch_rows,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads,
    )
    out = []
    first = None
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        first = first or time.perf_counter()
        out.extend(zip(batch["id"].tolist(), batch["score"].tolist()))
    end = time.perf_counter()
    assert [i for i, _ in out] == [r["id"] for r in rows], "order lost"
    return {"wall_s": end - start, "first_batch_s": (first or end) - start, "scores": [s for _, s in out]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--doc-tokens", type=int, default=80)
    parser.add_argument("--batch-rows", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = make_rows(args.queries, args.docs, args.doc_tokens)
    batches = -(-len(rows) // args.batch_rows)

    runs: dict[str, list[dict]] = {"plain": []}
    for _ in range(args.reps):  # before Ray starts: its daemons are not running beside the plain process
        runs["plain"].append(run_plain(args.artifact, rows, args.batch_rows, cores))
        print("plain", f"{runs['plain'][-1]['wall_s']:.2f}s", file=sys.stderr)

    import ray

    t = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    configs = {f"ray 1x{cores}": (1, cores), f"ray {cores}x1": (cores, 1)}
    for _ in range(args.reps):  # interleaved, so that drift hits every stack alike
        for label, (actors, threads) in configs.items():
            runs.setdefault(label, []).append(run_ray(args.artifact, rows, args.batch_rows, actors, threads))
            print(label, f"{runs[label][-1]['wall_s']:.2f}s", file=sys.stderr)
    ray.shutdown()

    import numpy as np

    reference = np.array(runs["plain"][0]["scores"])
    results = {}
    for label, reps in runs.items():
        wall = median([r["wall_s"] for r in reps])
        results[label] = {
            "wall_s": wall,
            "pairs_per_s": len(rows) / wall,
            "walls": [r["wall_s"] for r in reps],
            "max_abs_diff_vs_plain": float(np.abs(np.array(reps[0]["scores"]) - reference).max()),
        }
        for key in ("load_s", "score_s", "first_batch_s"):
            if key in reps[0]:
                results[label][key] = median([r[key] for r in reps])
    plain = results["plain"]["wall_s"]
    for label in configs:
        results[label]["vs_plain"] = results["plain"]["wall_s"] / results[label]["wall_s"]
        results[label]["overhead_per_batch_ms"] = (results[label]["wall_s"] - plain) / batches * 1000
    env = environment(cores)
    data = {
        "artifact": args.artifact.name,
        "pairs": len(rows),
        "batches": batches,
        "batch_rows": args.batch_rows,
        "doc_tokens": args.doc_tokens,
        "reps": args.reps,
        "ray": ray.__version__,
        "ray_init_s": ray_init_s,
        "environment": env,
        "results": results,
    }
    name = f"ray-batch-{args.artifact.name}-{env['cpu_class']}"
    publish(name, data, _table(data), _chart)
    print(
        json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "walls"} for k, v in results.items()}), file=sys.stderr
    )
    return 0


def _table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# Ray batch vs one process, {data['artifact']}, {env['cores']} cores, {env['cpu']} ({env['cpu_class']}: "
        f"{env['cpu_flags']})",
        f"{data['pairs']} pairs (~{data['doc_tokens']}-token documents) in {data['batches']} batches of "
        f"{data['batch_rows']}; ray {data['ray']}, onnxruntime {env['onnxruntime']}, openvino {env.get('openvino', '-')}, "
        f"commit {env['git_commit']}; median of {data['reps']} runs; each run includes model load (per actor); "
        f"`ray.init` took {data['ray_init_s']:.1f} s once, not counted",
        "",
        "| stack | wall (s) | pairs/s | vs plain | overhead per batch (ms) | max abs diff vs plain |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in data["results"].items():
        vs = f"{r['vs_plain']:.2f}x" if "vs_plain" in r else "1"
        overhead = f"{r['overhead_per_batch_ms']:.0f}" if "overhead_per_batch_ms" in r else "-"
        lines.append(
            f"| {label} | {r['wall_s']:.2f} | {r['pairs_per_s']:.1f} | {vs} | {overhead} | {r['max_abs_diff_vs_plain']:.1e} |"
        )
    return "\n".join(lines)


def _chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(data["results"])
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.barh(labels, [data["results"][label]["pairs_per_s"] for label in labels], color="#4c72b0")
    ax.set(
        xlabel="pairs/s (whole job, incl. model load)", title=f"Ray batch: {data['artifact']}, {data['pairs']} pairs"
    )
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
