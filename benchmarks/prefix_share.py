"""What the shared-prefix path saves: one rank() call with it on and off, on the same artifact.

    python benchmarks/prefix_share.py benchmarks/work/large-v2-int8-fast --doc-lengths 32 100 200 512 2048

Every prompt of one rank() call starts with the same tokens: the chat prefix, the (instruction and)
query. With share_prefix (the default) the runtime computes them once per query and scores each
document as their continuation; off, every prompt runs in full. The two alternate, so machine noise
hits both alike. Writes results/prefix-share-<artifact>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, median, publish, text_of_tokens

QUERY = "what causes rivers to flood in spring?"


def measure(reranker, doc_tokens: int, docs: int, reps: int) -> dict:
    texts = [text_of_tokens(doc_tokens, 100 + i) for i in range(docs)]
    encoded = reranker.model.encode([QUERY] * docs, texts)
    rows = encoded.input_ids
    head = encoded.document_starts[0]  # then as far as every prompt agrees, as the runtime extends it
    while head < min(len(r) for r in rows) - 1 and all(r[head] == rows[0][head] for r in rows):
        head += 1
    tokens = sum(len(r) for r in encoded.input_ids)
    for share in (True, False):  # warm-up
        reranker.model.share_prefix = share
        reranker.predict([QUERY] * 2, texts[:2])
    on, off = [], []
    for _ in range(reps):
        reranker.model.share_prefix = True
        start = time.perf_counter()
        a = reranker.predict([QUERY] * docs, texts)
        on.append(time.perf_counter() - start)
        reranker.model.share_prefix = False
        start = time.perf_counter()
        b = reranker.predict([QUERY] * docs, texts)
        off.append(time.perf_counter() - start)
    return {
        "doc_tokens": doc_tokens,
        "docs": docs,
        "prompt_tokens_mean": tokens / docs,
        "shared_head_tokens": head,
        "token_share_saved": (docs - 1) * head / tokens,
        "full_s": median(off),
        "shared_s": median(on),
        "full_runs": off,
        "shared_runs": on,
        "time_saved": 1 - median(on) / median(off),
        "max_abs_score_diff": float(np.abs(a - b).max()),
    }


def table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# Shared prefix on vs off: {data['artifact']} ({data['scheme']}), {env['threads']} threads, {env['cpu']}",
        f"onnxruntime {env['onnxruntime']}, commit {env['git_commit']}, median of {data['reps']} alternating runs; "
        f"query {QUERY!r}",
        "",
        "| document tokens | docs | prompt tokens (mean) | shared head | tokens saved | full prompts (s) | shared prefix (s) | time saved | max score diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['doc_tokens']} | {r['docs']} | {r['prompt_tokens_mean']:.0f} | {r['shared_head_tokens']} | "
            f"{r['token_share_saved']:.1%} | {r['full_s']:.2f} | {r['shared_s']:.2f} | {r['time_saved']:.1%} | "
            f"{r['max_abs_score_diff']:.1e} |"
        )
    return "\n".join(lines)


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["results"]
    labels = [str(r["doc_tokens"]) for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([i - 0.2 for i in x], [100 * r["token_share_saved"] for r in rows], width=0.4, label="tokens saved")
    ax.bar([i + 0.2 for i in x], [100 * r["time_saved"] for r in rows], width=0.4, label="time saved (measured)")
    ax.set_xticks(list(x), labels)
    ax.set(
        xlabel="document tokens",
        ylabel="%",
        title=f"Shared prefix: {data['artifact']}, 1 query x {rows[0]['docs']} docs",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--doc-lengths", type=int, nargs="+", default=[32, 100, 200, 512, 2048])
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if any(n < 1 for n in args.doc_lengths) or args.docs < 2 or args.reps < 1:
        parser.error("--doc-lengths must be >= 1, --docs >= 2, --reps >= 1")

    from rerank_onnx import Reranker

    reranker = Reranker(args.artifact, threads=args.threads, max_batch_tokens=8192)
    if not reranker.model.computes_shared_prefix:
        raise SystemExit(f"{args.artifact}: its graph takes no past keys and values; re-export it")
    results = []
    for n in args.doc_lengths:
        results.append(measure(reranker, n, args.docs, args.reps))
        r = results[-1]
        print(f"{n}: saved {r['token_share_saved']:.1%} of tokens, {r['time_saved']:.1%} of time", file=sys.stderr)
    name = f"prefix-share-{args.artifact.resolve().name}"
    data = {
        "artifact": args.artifact.resolve().name,
        "scheme": reranker.model.config.quantization,
        "reps": args.reps,
        "environment": environment(args.threads),
        "results": results,
    }
    publish(name, data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
