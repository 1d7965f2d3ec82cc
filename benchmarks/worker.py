"""One stack, one process: load, score the workloads, report JSON on stdout.

Run by bench.py; a fresh process per stack so that cold start and peak RSS are the stack's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import text_of_tokens


def workloads(quick: bool) -> dict:
    import random

    rng = random.Random(7)
    mixed_lengths = [min(900, max(20, int(rng.lognormvariate(5.3, 0.7)))) for _ in range(100)]  # median ~200
    return {
        "rag20": {
            "query": "what causes rivers to flood in spring?",
            "docs": [text_of_tokens(200, 100 + i) for i in range(20)],
        },
        "mixed100": {
            "query": "history of music in the city",
            "docs": [text_of_tokens(n, 500 + i) for i, n in enumerate(mixed_lengths)],
        },
        "short": {"query": "cat", "docs": ["a cat is a small feline"]},
        "b16x256": {"query": "team season game", "docs": [text_of_tokens(256 - 90, 900 + i) for i in range(16)]},
        "growth": [128, 512, 2048] if quick else [128, 512, 2048, 8192],
        # queries of different lengths: a shared prefix's width changes how bf16 attention blocks its work
        "faithful": {
            "queries": [
                "where do rivers flood?",
                "history of music in the city",
                "how do vaccines train the immune system",
            ],
            "docs": [text_of_tokens(n, 1200 + n) for n in (12, 40, 75, 110, 150, 190, 230, 300)],
        },
    }


def peak_rss_gb() -> float:
    """This process's own peak RSS. Linux keeps ru_maxrss across exec, so a worker spawned by a parent
    that once held more memory (bench.py after an export) would report the parent's peak; VmHWM belongs
    to the worker's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    # no /proc (macOS): ru_maxrss is in bytes there, and exec does not carry it over
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e9


class Ours:
    def __init__(self, artifact: str, threads: int, backend: str, precision: str) -> None:
        from rerank_onnx import Reranker

        self.r = Reranker(artifact, threads=threads, backend=backend, precision=precision)
        self.backend = self.r.backend.describe() if self.r.backend else "custom session"

    @property
    def model(self) -> Any:
        """The two-step model: `reranker.model`, or the Reranker itself in code from before it had one (graph_ab.py
        --code measures older code with this worker)."""
        return getattr(self.r, "model", self.r)

    @classmethod
    def of(cls, reranker: Any, backend: str) -> Ours:
        """A stack over a Reranker built by the caller (a session of its own), described as `backend`."""
        stack = cls.__new__(cls)
        stack.r, stack.backend = reranker, backend
        return stack

    def faithful(self, queries: list[str], docs: list[str]) -> dict:
        """Max |score difference| over every query's pairs: each pair alone vs inside one batch, and a shared
        head vs full prompts."""
        import numpy as np

        alone_vs_batch = shared_vs_full = 0.0
        for query in queries:
            self.model.share_prefix = False
            alone = np.concatenate([self.r.predict([query], [d]) for d in docs])
            batch = self.r.predict([query] * len(docs), docs)
            self.model.share_prefix = True
            shared = self.r.predict([query] * len(docs), docs)
            alone_vs_batch = max(alone_vs_batch, float(np.abs(alone - batch).max()))
            shared_vs_full = max(shared_vs_full, float(np.abs(shared - batch).max()))
        return {"pairs": len(queries) * len(docs), "alone_vs_batch": alone_vs_batch, "shared_vs_full": shared_vs_full}

    def scores(self, query: str, docs: list[str]) -> list[float]:
        return self.r.predict([query] * len(docs), docs).tolist()

    def tokens(self, query: str, docs: list[str]) -> int:
        return sum(len(ids) for ids in self.model.encode([query] * len(docs), docs).input_ids)


class Official:
    """mxbai_rerank.MxbaiRerankV2 as a user runs it on CPU (fp32), or with its weights cast to bf16."""

    def __init__(self, checkpoint: str, threads: int, bf16: bool) -> None:
        import torch

        torch.set_num_threads(threads)
        from mxbai_rerank import MxbaiRerankV2

        self.m = MxbaiRerankV2(checkpoint, device="cpu", disable_transformers_warnings=True)
        if bf16:  # the package forces fp32 on CPU; a savvy user casts the model afterwards
            self.m.model.to(torch.bfloat16)

    def scores(self, query: str, docs: list[str]) -> list[float]:
        # rank() as the package does it, in length buckets; batch_size 8 instead of its default 32, because
        # it materializes [batch, sequence, 151936] fp32 logits (32 x 700 tokens would be 13.6 GB)
        results = self.m.rank(query, docs, top_k=len(docs), return_documents=False, batch_size=8)
        out = [0.0] * len(docs)
        for r in results:
            out[r.index] = r.score
        return out

    def tokens(self, query: str, docs: list[str]) -> int:
        batch = self.m.prepare_inputs([query] * len(docs), docs)
        return int(batch["attention_mask"].sum())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--spawned-at", type=float, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[])
    args = parser.parse_args()

    if args.stack.startswith("st-"):
        from st_stack import SentenceTransformersStack

        stack = SentenceTransformersStack(
            args.stack, args.model, args.threads, Path(__file__).resolve().parent / "work"
        )
    elif args.stack.startswith("ours"):
        backend, _, precision = args.stack.partition("@")[2].partition("-")
        stack = Ours(
            args.model,
            args.threads,
            backend or ("auto" if args.stack == "ours-default" else "onnxruntime"),
            precision or "auto",
        )
    else:
        stack = Official(args.model, args.threads, bf16=args.stack == "pytorch-bf16")
    w = workloads(args.quick)
    stack.scores(w["short"]["query"], w["short"]["docs"])
    result: dict = {"stack": args.stack, "cold_start_s": time.time() - args.spawned_at}
    if isinstance(stack, Ours):
        result["backend"] = stack.backend

    def report() -> None:  # after every workload: a stack stopped at its time limit keeps what it measured
        result["peak_rss_gb"] = peak_rss_gb()
        print(json.dumps(result), flush=True)

    def timed(query: str, docs: list[str], reps: int) -> tuple[list[float], list[float]]:
        times, scores = [], []
        for _ in range(reps):
            start = time.perf_counter()
            scores = stack.scores(query, docs)
            times.append(time.perf_counter() - start)
        return times, scores

    from common import median, percentile

    # warm-up of the batched path
    stack.scores(w["b16x256"]["query"], w["b16x256"]["docs"][:2])
    times, _ = timed(w["short"]["query"], w["short"]["docs"], max(5, args.reps))
    result["short_s"] = median(times)
    report()
    if "b16x256" not in args.skip:
        times, _ = timed(w["b16x256"]["query"], w["b16x256"]["docs"], args.reps)
        tokens = stack.tokens(w["b16x256"]["query"], w["b16x256"]["docs"])
        result["b16x256"] = {"tokens": tokens, "seconds": median(times), "tokens_per_s": tokens / median(times)}
        report()
    if isinstance(stack, Ours):
        result["faithful"] = stack.faithful(w["faithful"]["queries"], w["faithful"]["docs"])
        report()
    times, rag_scores = timed(w["rag20"]["query"], w["rag20"]["docs"], args.reps)
    result["rag20"] = {
        "p50_s": percentile(times, 50),
        "p95_s": percentile(times, 95),
        "runs": times,
        "tokens": stack.tokens(w["rag20"]["query"], w["rag20"]["docs"]),
        "scores": rag_scores,
    }
    report()
    if "mixed100" not in args.skip:
        times, scores = timed(w["mixed100"]["query"], w["mixed100"]["docs"], max(1, args.reps // 2))
        tokens = stack.tokens(w["mixed100"]["query"], w["mixed100"]["docs"])
        result["mixed100"] = {
            "tokens": tokens,
            "seconds": median(times),
            "pairs_per_s": 100 / median(times),
            "tokens_per_s": tokens / median(times),
            "scores": scores,
        }
        report()
    if "growth" not in args.skip:
        growth = {}
        for n in w["growth"]:
            doc = text_of_tokens(n, 3000 + n)
            times, _ = timed("river", [doc], 1)
            growth[str(n)] = {"tokens": stack.tokens("river", [doc]), "seconds": times[0]}
            growth[str(n)]["tokens_per_s"] = growth[str(n)]["tokens"] / times[0]
            result["growth"] = growth
            report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
