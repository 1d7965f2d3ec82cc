"""Agreement of scores with an fp32 reference, the way numerics_agreement.py and the int8 block study measure it:
queries of 20 documents each, Spearman and top-10 overlap, and paired differences with 95% intervals over
resampled queries."""

from __future__ import annotations

import numpy as np
from common import text_of_tokens

DOCS_PER_QUERY = 20


def agreement_pairs(queries: int, max_doc_tokens: int) -> tuple[list[str], list[str]]:
    """`queries` queries x 20 documents of 20-`max_doc_tokens` tokens, the same on every run."""
    import random

    rng = random.Random(11)
    query_texts, docs = [], []
    for q in range(queries):
        query = text_of_tokens(rng.randint(4, 16), 3000 + q)
        for d in range(DOCS_PER_QUERY):
            query_texts.append(query)
            docs.append(text_of_tokens(rng.randint(20, max_doc_tokens), 4000 + 100 * q + d))
    return query_texts, docs


def agreement(scores: list[float], reference: list[float]) -> dict:
    from scipy.stats import spearmanr  # scipy comes with the export extra's dependencies

    s, r = np.array(scores).reshape(-1, DOCS_PER_QUERY), np.array(reference).reshape(-1, DOCS_PER_QUERY)
    per_query = [float(spearmanr(a, b).statistic) for a, b in zip(s, r, strict=True)]
    top10 = [len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) / 10 for a, b in zip(s, r, strict=True)]
    return {
        "spearman": float(spearmanr(s.ravel(), r.ravel()).statistic),
        "spearman_per_query": float(np.mean(per_query)),
        "top10": float(np.mean(top10)),
        "mean_abs_diff_of_std": float(np.abs(s - r).mean() / r.std()),
    }


def paired_difference(scores: list[float], baseline: list[float], reference: list[float]) -> dict:
    """Spearman vs fp32 of `scores` minus that of `baseline`, over all pairs and as the mean per query, with
    95% intervals from 2,000 resamplings of the queries (both measured on the same resampled queries)."""
    from scipy.stats import spearmanr

    s, b, r = (np.array(x).reshape(-1, DOCS_PER_QUERY) for x in (scores, baseline, reference))
    per_query = np.array(
        [spearmanr(x, z).statistic - spearmanr(y, z).statistic for x, y, z in zip(s, b, r, strict=True)]
    )
    rng = np.random.default_rng(0)
    overall, means = [], []
    for _ in range(2000):
        pick = rng.integers(0, len(r), len(r))
        overall.append(
            spearmanr(s[pick].ravel(), r[pick].ravel()).statistic
            - spearmanr(b[pick].ravel(), r[pick].ravel()).statistic
        )
        means.append(per_query[pick].mean())
    return {
        "spearman": float(spearmanr(s.ravel(), r.ravel()).statistic - spearmanr(b.ravel(), r.ravel()).statistic),
        "spearman_95": [float(np.percentile(overall, 2.5)), float(np.percentile(overall, 97.5))],
        "per_query": float(per_query.mean()),
        "per_query_95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
    }
