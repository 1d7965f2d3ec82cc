"""The export measures itself: the fp32 reference (and PyTorch, where installed) vs the written ONNX graph on a
built-in set of pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Four queries x eight documents: relevant, near-miss and unrelated texts, several languages and
# lengths, one empty and one whitespace-only document. Scores are compared per query for top-k.
BUILTIN_QUERIES = [
    "what is a cat?",
    "How do I reset a forgotten router password?",
    "¿Cuál es la capital de Australia?",
    "python sort a list of dicts by key",
]
BUILTIN_DOCUMENTS = [
    "A cat is a small carnivorous mammal, often kept as a pet; domestic cats are valued for companionship.",
    "To reset most home routers, hold the reset button for 30 seconds; the admin password returns to the "
    "factory default printed on the label.",
    "Canberra es la capital de Australia; Sídney y Melbourne son las ciudades más grandes.",
    "Use sorted(items, key=lambda d: d['name']) or operator.itemgetter('name') to sort dictionaries by a key.",
    "Bananas are rich in potassium. 香蕉富含钾。",
    "The 2008 financial crisis began with subprime mortgage defaults in the United States and spread to "
    "banks worldwide, leading to bailouts, a deep recession and years of slow recovery in many economies.",
    "",
    "   \n\t ",
]
BUILTIN_INSTRUCTION = "Prefer concise, factual answers."
TOP_K = 3


@dataclass(frozen=True)
class Agreement:
    pairs: int
    max_abs_diff: float
    mean_abs_diff: float
    spearman: float
    top_k: int
    top_k_overlap: float  # mean over queries of |top-k(ref) & top-k(graph)| / k
    reference_score_std: float


def builtin_pairs() -> tuple[list[str], list[str], list[str | None]]:
    queries, documents, instructions = [], [], []
    for qi, query in enumerate(BUILTIN_QUERIES):
        for document in BUILTIN_DOCUMENTS:
            queries.append(query)
            documents.append(document)
            instructions.append(BUILTIN_INSTRUCTION if qi == 3 else None)
    return queries, documents, instructions


def torch_scores(
    causal_lm: torch.nn.Module,
    input_ids: Sequence[Sequence[int]],
    *,
    yes_id: int,
    no_id: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The reference computation: full-vocabulary logits at the last position, one unpadded row at a time.

    logits_to_keep=1 skips the head at the other positions, whose logits the score never reads.
    """
    import torch

    out = []
    for ids in input_ids:
        batch = torch.tensor([list(ids)], dtype=torch.long)
        with torch.no_grad():
            logits = causal_lm(input_ids=batch, use_cache=False, logits_to_keep=1).logits[0, -1]
        out.append(float(logits[yes_id] - logits[no_id]))
        if progress is not None and (len(out) % 8 == 0 or len(out) == len(input_ids)):
            progress(len(out))
    return np.asarray(out, dtype=np.float32)


def agreement(reference: np.ndarray, candidate: np.ndarray, *, group_size: int = len(BUILTIN_DOCUMENTS)) -> Agreement:
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    overlaps = []
    for start in range(0, len(reference), group_size):
        ref = reference[start : start + group_size]
        cand = candidate[start : start + group_size]
        k = min(TOP_K, len(ref))
        overlaps.append(len(set(np.argsort(-ref, kind="stable")[:k]) & set(np.argsort(-cand, kind="stable")[:k])) / k)
    return Agreement(
        pairs=len(reference),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        spearman=spearman(reference, candidate),
        top_k=TOP_K,
        top_k_overlap=float(np.mean(overlaps)),
        reference_score_std=float(np.std(reference)),
    )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as scipy.stats.rankdata."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks
