"""The public API: a drop-in for mxbai_rerank.MxbaiRerankV2's rank() and predict()."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .backends import ScoreSession
from .backends.select import Backend, BackendChoice, Precision
from .chunking import DEFAULT_MAX_CHUNKS_PER_DOC
from .errors import InputTooLongError
from .model import DEFAULT_MAX_BATCH_SIZE, LoadedModel, load_model
from .ranking import PairScores, pair_scores
from .validate import (
    check_bool,
    check_long_documents,
    check_positive_int,
    check_str,
    check_str_list,
    split_pairs,
)

log = logging.getLogger("rerank_onnx")


LongDocuments = Literal["truncate", "chunk"]


@dataclass(frozen=True)
class RankResult:
    index: int  # position of the document in the input list
    score: float
    document: str | None
    # long_documents="chunk": the character span [start, end) of the chunk that gave the score, and how
    # many chunks were scored; (0, len(document)) and 1 for a document scored whole
    span: tuple[int, int] | None = None
    chunks: int = 1


class Reranker:
    """Scores (query, document) pairs with an artifact written by `rerank-onnx export`.

    Args:
        model_dir: the artifact folder; or a checkpoint folder or hub id, exported on first use into the cache
            (`cache_dir`) and loaded from there afterwards (needs the export extra; from_checkpoint.py).
        threads: intra-op threads (default: the CPUs this process may use).
        max_length: token budget for query + document, as in the reference (default 8192).
        max_batch_tokens: a batch holds at most this many padded tokens ("auto": the engine's measured
            budget, 4,096 on onnxruntime and 1,024 on OpenVINO, whose memory grows with a run's tokens; on
            OpenVINO the rows after a shared prefix then also attend over at most 8,192 keys and values in
            all, rows x (prefix + width)).
        max_batch_size: a batch holds at most this many pairs.
        session: a ready ScoreSession to use instead of the artifact's graph (tests, custom engines).
        share_prefix: compute what the pairs of one query share (chat prefix, instruction, query) once.
        backend: "auto" (the fastest faithful engine measured for this CPU class), "onnxruntime", "openvino".
        precision: OpenVINO's compute precision, "auto", "fp32", "bf16" or "int8" (int8 activations in the
            int8 artifact's weight blocks, bf16 elsewhere, fp32 on a CPU without bf16); onnxruntime: "auto" only.
        compile_cache: keep OpenVINO's compiled model on disk, so that the next start skips compiling.
        cache_dir: where that cache lives (default: $RERANK_ONNX_CACHE_DIR, else ~/.cache/rerank-onnx).
        slice_tokens: a longer prompt runs in slices of this many tokens that attend to the ones before, so
            memory grows with slice x length, not length squared ("auto": the engine's measured way, 512 on
            onnxruntime; 1,024 on OpenVINO, where a prompt over 4,096 tokens runs whole, in a child process,
            on a form of the graph whose attention kernel bounds its memory; a number: every long prompt in
            slices in this process; None, or an artifact without a past: whole, in this process).

    Raises:
        ModelLoadError: the artifact is missing, incomplete, or cannot be compiled.
        InvalidInputError: a knob has the wrong type or value.

    Attributes:
        model: the loaded artifact in two steps (`encode`, then `score_encoded`), for callers that encode per
            request and score across requests (the server's scheduler, the serverless handler, Ray).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int | None = None,
        max_length: int | None = None,
        max_batch_tokens: int | Literal["auto"] = "auto",
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        session: ScoreSession | None = None,
        share_prefix: bool = True,
        backend: Backend = "auto",
        precision: Precision = "auto",
        compile_cache: bool = True,
        cache_dir: str | Path | None = None,
        slice_tokens: int | Literal["auto"] | None = "auto",
    ) -> None:
        self.model: LoadedModel = load_model(
            model_dir,
            threads=threads,
            max_length=max_length,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            session=session,
            share_prefix=share_prefix,
            backend=backend,
            precision=precision,
            compile_cache=compile_cache,
            cache_dir=cache_dir,
            slice_tokens=slice_tokens,
        )

    @property
    def backend(self) -> BackendChoice | None:
        """The engine and precision `backend="auto"` chose on this CPU, and why (None for a caller's session)."""
        return self.model.backend

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        instruction: str | None = None,
        return_documents: bool = True,
        normalize: bool = False,
        sort: bool = True,
        truncate: bool = True,
        long_documents: LongDocuments = "truncate",
        max_chunks_per_doc: int = DEFAULT_MAX_CHUNKS_PER_DOC,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> list[RankResult]:
        """Score every document against `query` and return the best, as the reference's `rank`.

        Args:
            query: the query.
            documents: the documents to rank.
            top_k: how many results to return (None: all).
            instruction: the instruction slot (None: the family's default, none for mxbai).
            return_documents: put each document's text in its result.
            normalize: scores in (0, 1) as the reference's `normalize=True`.
            sort: highest score first, ties by input position; False keeps the top_k in input order.
            truncate: cut pairs longer than max_length as the reference does; False raises instead.
            long_documents: "truncate" (the reference) or "chunk": a document longer than its share of
                max_length is scored by overlapping chunks, and gets the best chunk's score.
            max_chunks_per_doc: with "chunk", the chunks per document at most (the rest is truncated).
            batch_size: pairs per batch at most (below max_batch_size).
            show_progress: draw a progress bar on stderr.

        Returns:
            One RankResult (index, score, document or None, winning span, chunks) per document returned.

        Raises:
            InvalidInputError: wrong types or invalid text.
            InputTooLongError: a pair exceeds max_length and truncate is False.
        """
        check_str("query", query)
        docs = check_str_list("documents", documents)
        check_positive_int("top_k", top_k, allow_none=True)
        for name, flag in (("return_documents", return_documents), ("sort", sort)):
            check_bool(name, flag)
        how = _PairOptions(
            instruction, normalize, truncate, long_documents, max_chunks_per_doc, batch_size, show_progress
        )
        pairs = _score_pairs(self.model, [query] * len(docs), docs, how)
        chosen = pairs.order(top_k)
        if not sort:
            chosen = sorted(chosen)
        return [
            RankResult(
                i, float(pairs.scores[i]), docs[i] if return_documents else None, pairs.spans[i], pairs.chunks[i]
            )
            for i in chosen
        ]

    def predict(
        self,
        queries: Sequence[str] | Sequence[tuple[str, str]],
        documents: Sequence[str] | None = None,
        *,
        instruction: str | None = None,
        normalize: bool = False,
        truncate: bool = True,
        long_documents: LongDocuments = "truncate",
        max_chunks_per_doc: int = DEFAULT_MAX_CHUNKS_PER_DOC,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Scores of the pairs (queries[i], documents[i]), in input order.

        Args:
            queries: one query per pair; or, with `documents` left out, the pairs themselves as
                (query, document) tuples, as sentence-transformers' `CrossEncoder.predict` takes them.
            documents: one document per pair, parallel to `queries`.
            instruction: the instruction slot (None: the family's default, none for mxbai).
            normalize: scores in (0, 1) as the reference's `normalize=True`.
            truncate: cut pairs longer than max_length as the reference does; False raises instead.
            long_documents: "truncate" (the reference) or "chunk": score a long document by its best chunk.
            max_chunks_per_doc: with "chunk", the chunks scored per document at most.
            batch_size: pairs per batch at most (below max_batch_size).
            show_progress: draw a progress bar on stderr.

        Returns:
            float32 scores: raw logit("1") - logit("0"), or the normalized ones.

        Raises:
            InvalidInputError: wrong types, unequal lengths, malformed pairs, or invalid text.
            InputTooLongError: a pair exceeds max_length and truncate is False.
        """
        how = _PairOptions(
            instruction, normalize, truncate, long_documents, max_chunks_per_doc, batch_size, show_progress
        )
        if documents is None:
            queries, documents = split_pairs(queries)
        return _score_pairs(self.model, queries, documents, how).scores  # type: ignore[arg-type]


@dataclass(frozen=True)
class _PairOptions:
    """How rank() and predict() score their pairs (their arguments of the same names), checked once."""

    instruction: str | None
    normalize: bool
    truncate: bool
    long_documents: LongDocuments
    max_chunks_per_doc: int
    batch_size: int | None
    show_progress: bool

    def __post_init__(self) -> None:
        # booleans, not truthy values: a string such as "no" is refused
        for name in ("normalize", "truncate", "show_progress"):
            check_bool(name, getattr(self, name))
        check_long_documents(self.long_documents, self.max_chunks_per_doc)


def _score_pairs(model: LoadedModel, queries: Sequence[str], documents: Sequence[str], how: _PairOptions) -> PairScores:
    """rank()'s and predict()'s common path: encode, score, and fold chunks into one score per pair."""
    chunks = how.max_chunks_per_doc if how.long_documents == "chunk" else None
    encoded = model.encode(queries, documents, instruction=how.instruction, max_chunks_per_doc=chunks)
    _check_truncation(encoded.pair_truncated(), truncate=how.truncate, model=model)
    scores = model.score_encoded(
        encoded.input_ids,
        document_starts=encoded.document_starts,
        batch_size=how.batch_size,
        show_progress=how.show_progress,
    )
    return pair_scores(scores, encoded.chunks, normalize=model.normalize if how.normalize else None)


def _check_truncation(truncated: list[bool], *, truncate: bool, model: LoadedModel) -> None:
    """Raise InputTooLongError for cut pairs when truncation is refused; otherwise log how many were cut."""
    if not any(truncated):
        return
    if not truncate:
        raise InputTooLongError(
            f"pair {truncated.index(True)} (and {sum(truncated) - 1} more) exceeds max_length={model.max_length} "
            "tokens for query + document; shorten it, raise max_length (model limit "
            f"{model.template_limit}), or pass truncate=True to cut it as the reference does"
        )
    log.warning(
        "%d of %d pairs exceed max_length=%d tokens and were truncated as the reference does",
        sum(truncated),
        len(truncated),
        model.max_length,
    )
