"""The public API: a drop-in for mxbai_rerank.MxbaiRerankV2's rank() and predict()."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import ArtifactConfig, load_artifact
from .backends import GraphSession, ScoreSession, open_backend
from .backends.select import Backend, BackendChoice, Precision
from .errors import InputTooLongError, InvalidInputError, describe
from .scorer import Scorer
from .template import EncodedPairs, PairEncoder, load_tokenizer

log = logging.getLogger("rerank_onnx")

DEFAULT_MAX_BATCH_TOKENS = 4096
DEFAULT_MAX_BATCH_SIZE = 32
# A prompt longer than this runs in slices of this many tokens (attention memory: slice x length).
DEFAULT_SLICE_TOKENS = 1024


@dataclass(frozen=True)
class RankResult:
    index: int  # position of the document in the input list
    score: float
    document: str | None


class Reranker:
    """Scores (query, document) pairs with an artifact written by `rerank-onnx export`.

    Args:
        model_dir: the artifact folder.
        threads: intra-op threads (default: the CPUs this process may use).
        max_length: token budget for query + document, as in the reference (default 8192).
        max_batch_tokens: a batch holds at most this many padded tokens.
        max_batch_size: a batch holds at most this many pairs.
        session: a ready ScoreSession to use instead of loading the artifact's graph (tests, custom engines).
        share_prefix: compute the tokens that the pairs of one query share (chat prefix, instruction,
            query) once per query instead of once per pair, when the graph takes past keys and values
            (older artifacts run every prompt in full). Off, every prompt runs in full.
        backend: "auto" (the fastest faithful engine measured for this CPU class, see
            `backends/select.py`), "onnxruntime" or "openvino".
        precision: OpenVINO's compute precision, "auto", "fp32" or "bf16"; onnxruntime runs the
            artifact's stored numerics and takes only "auto".
        compile_cache: keep OpenVINO's compiled model on disk, so the next start skips compiling
            (off by itself where no writable folder exists).
        cache_dir: where that cache lives (default: $RERANK_ONNX_CACHE_DIR, else ~/.cache/rerank-onnx).
        slice_tokens: a prompt longer than this is computed in slices of this many tokens, each attending
            to the ones before, so memory grows with slice x length instead of length squared (None:
            every prompt in one piece; artifacts from before the shared prefix always run in one piece).

    Raises:
        ModelLoadError: the artifact is missing, incomplete, or cannot be compiled.
        InvalidInputError: a knob has the wrong type or value.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int | None = None,
        max_length: int | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        session: ScoreSession | None = None,
        share_prefix: bool = True,
        backend: Backend = "auto",
        precision: Precision = "auto",
        compile_cache: bool = True,
        cache_dir: str | Path | None = None,
        slice_tokens: int | None = DEFAULT_SLICE_TOKENS,
    ) -> None:
        _check_positive_int("threads", threads, allow_none=True)
        _check_positive_int("max_length", max_length, allow_none=True)
        _check_positive_int("max_batch_tokens", max_batch_tokens)
        _check_positive_int("max_batch_size", max_batch_size)
        _check_positive_int("slice_tokens", slice_tokens, allow_none=True)
        for name, flag in (("share_prefix", share_prefix), ("compile_cache", compile_cache)):
            if not isinstance(flag, bool):
                raise InvalidInputError(f"{name}: expected True or False, got {describe(flag)}")
        self.config: ArtifactConfig = load_artifact(model_dir)
        template = self.config.template
        self._encoder = PairEncoder(
            load_tokenizer(str(self.config.tokenizer_path)),
            template,
            max_length=max_length or template.max_length,
        )
        # None when the caller brought its own session
        self.backend: BackendChoice | None = None
        if session is None:
            session, self.backend = open_backend(
                self.config,
                backend=backend,
                precision=precision,
                threads=threads,
                cache_dir=cache_dir if compile_cache else False,
            )
        self._scorer = Scorer(
            session,
            pad_id=template.pad_token_id,
            chat_prefix=template.prefix_ids,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            share_prefix=share_prefix,
            pad_multiple=session.pad_multiple if isinstance(session, GraphSession) else 1,
            slice_tokens=slice_tokens,
        )

    @property
    def share_prefix(self) -> bool:
        """Whether the caller asked for shared prefixes (see `computes_shared_prefix` for whether they happen)."""
        return self._scorer.share_prefix

    @share_prefix.setter
    def share_prefix(self, value: bool) -> None:
        self._scorer.share_prefix = value

    @property
    def computes_shared_prefix(self) -> bool:
        """True when pairs of one query share the computation of their common prefix."""
        return self._scorer.computes_shared_prefix

    @property
    def max_batch_tokens(self) -> int:
        return self._scorer.max_batch_tokens

    @property
    def max_batch_size(self) -> int:
        return self._scorer.max_batch_size

    @property
    def max_length(self) -> int:
        """The query + document token budget (the reference's max_length, within the model's limit)."""
        return self._encoder.max_length

    @property
    def template_tokens(self) -> int:
        """Tokens every prompt spends on the template around query and document."""
        return self._encoder.predefined_length

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
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> list[RankResult]:
        """Score every document against `query`; return the best `top_k` (all when None).

        sort=True orders by score, highest first, ties by index; sort=False keeps the top_k in input order.
        truncate=False raises InputTooLongError instead of truncating a pair longer than max_length.
        """
        _check_str("query", query)
        docs = _check_str_list("documents", documents)
        _check_positive_int("top_k", top_k, allow_none=True)
        scores = self.predict(
            [query] * len(docs),
            docs,
            instruction=instruction,
            normalize=normalize,
            truncate=truncate,
            batch_size=batch_size,
            show_progress=show_progress,
        )
        order = np.lexsort((np.arange(len(scores)), -scores))  # score descending, then index ascending
        chosen = order[: top_k if top_k is not None else len(order)]
        if not sort:
            chosen = np.sort(chosen)
        return [
            RankResult(index=int(i), score=float(scores[i]), document=docs[i] if return_documents else None)
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
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Scores of the pairs (queries[i], documents[i]), in input order.

        Args:
            queries: one query per pair; or, with `documents` left out, the pairs themselves as
                (query, document) tuples, as sentence-transformers' `CrossEncoder.predict` takes them.
            documents: one document per pair, parallel to `queries`.
            instruction: the model's instruction slot (None or "": none).
            normalize: map scores to (0, 1) as the reference does: sigmoid(score - estimated_max / 2).
            truncate: cut pairs longer than max_length as the reference does; False raises instead.
            batch_size: pairs per batch at most (below max_batch_size).
            show_progress: draw a progress bar on stderr.

        Returns:
            float32 scores: raw logit("1") - logit("0"), or the normalized ones.

        Raises:
            InvalidInputError: wrong types, unequal lengths, malformed pairs, or invalid text.
            InputTooLongError: a pair exceeds max_length and truncate is False.
        """
        _check_positive_int("batch_size", batch_size, allow_none=True)
        if documents is None:
            queries, documents = _split_pairs(queries)
        encoded = self.encode(queries, documents, instruction=instruction)  # type: ignore[arg-type]
        _check_truncation(encoded.truncated, truncate=truncate, encoder=self._encoder)
        scores = self.score_encoded(
            encoded.input_ids, prefix_lengths=encoded.prefix_lengths, batch_size=batch_size, show_progress=show_progress
        )
        return self.normalize(scores) if normalize else scores

    def encode(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        max_document_tokens: int | None = None,
        max_length: int | None = None,
    ) -> EncodedPairs:
        """The prompt token ids of each pair, and whether it had to be truncated.

        Args:
            queries: one query per pair.
            documents: one document per pair, parallel to `queries`.
            instruction: the model's instruction slot (None or "": none).
            max_document_tokens: a cap on each document's own tokens below what max_length allows.
            max_length: a lower query + document budget for this call than the reranker's.

        Returns:
            EncodedPairs: token ids, which pairs were cut, and each pair's prefix length (the tokens before its document).

        Raises:
            InvalidInputError: wrong types, unequal lengths, or text that is not valid Unicode.
        """
        queries = _check_str_list("queries", queries)
        documents = _check_str_list("documents", documents)
        if len(queries) != len(documents):
            raise InvalidInputError(
                f"queries and documents must be parallel lists of equal length, got {len(queries)} queries "
                f"and {len(documents)} documents; for one query against many documents use rank()"
            )
        if instruction is not None:
            _check_str("instruction", instruction)
        _check_positive_int("max_document_tokens", max_document_tokens, allow_none=True)
        _check_positive_int("max_length", max_length, allow_none=True)
        return self._encoder.encode(
            queries, documents, instruction=instruction, max_document_tokens=max_document_tokens, max_length=max_length
        )

    def score_encoded(
        self,
        input_ids: Sequence[Sequence[int]],
        *,
        prefix_lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Run the graph over already-encoded prompts in length-bucketed batches.

        Args:
            input_ids: one prompt's token ids per row (EncodedPairs.input_ids).
            prefix_lengths: EncodedPairs.prefix_lengths; rows whose first prefix_lengths[i] tokens are equal
                share one computation of those tokens. None: every prompt runs in full.
            batch_size: pairs per batch at most.
            show_progress: draw a progress bar on stderr.

        Returns:
            float32 scores in input order.
        """
        if prefix_lengths is not None:
            _check_prefix_lengths(prefix_lengths, len(input_ids))
        return self._scorer.score(
            input_ids, prefix_lengths=prefix_lengths, batch_size=batch_size, show_progress=show_progress
        )

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """sigmoid(score - estimated_max / 2): the reference's `normalize=True`."""
        shifted = np.asarray(scores, dtype=np.float64) - self.config.estimated_max / 2
        return (1.0 / (1.0 + np.exp(-shifted))).astype(np.float32)


def _check_truncation(truncated: list[bool], *, truncate: bool, encoder: PairEncoder) -> None:
    """Raise InputTooLongError for cut pairs when truncation is refused; otherwise log how many were cut."""
    if not any(truncated):
        return
    if not truncate:
        raise InputTooLongError(
            f"pair {truncated.index(True)} (and {sum(truncated) - 1} more) exceeds max_length={encoder.max_length} "
            "tokens for query + document; shorten it, raise max_length (model limit "
            f"{encoder.template_limit}), or pass truncate=True to cut it as the reference does"
        )
    log.warning(
        "%d of %d pairs exceed max_length=%d tokens and were truncated as the reference does",
        sum(truncated),
        len(truncated),
        encoder.max_length,
    )


def _split_pairs(pairs: object) -> tuple[list[str], list[str]]:
    """(query, document) pairs -> parallel lists, with a typed error for anything else."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise InvalidInputError(
            f"queries: expected a list of strings with documents, or a list of (query, document) pairs, "
            f"got {describe(pairs)}"
        )
    queries, documents = [], []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidInputError(
                f"pairs[{i}]: expected a (query, document) pair, got {describe(pair)}; pass documents= to give "
                "queries and documents as two lists"
            )
        queries.append(pair[0])
        documents.append(pair[1])
    return queries, documents


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name}: expected a string, got {describe(value)}")
    _check_encodable(name, value)


def _check_encodable(name: str, value: str) -> None:
    """Text the tokenizer can take: a lone surrogate (e.g. JSON's "\\ud800") is no character at all."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{name}: expected valid Unicode text, got a lone surrogate {value[exc.start]!r} at position "
            f"{exc.start}; fix the text's encoding, or replace it (text.encode('utf-8', 'replace').decode())"
        ) from exc


def _check_str_list(name: str, value: object) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidInputError(
            f"{name}: expected a list of strings, got {describe(value)}; wrap a single text in a list: [text]"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInputError(f"{name}[{i}]: expected a string, got {describe(item)}")
        _check_encodable(f"{name}[{i}]", item)
    return list(value)


def _check_prefix_lengths(value: object, prompts: int) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != prompts:
        raise InvalidInputError(
            f"prefix_lengths: expected a list of {prompts} non-negative integers (one per prompt; "
            f"EncodedPairs.prefix_lengths), got {describe(value)}"
        )
    for i, n in enumerate(value):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInputError(f"prefix_lengths[{i}]: expected a non-negative integer, got {describe(n)}")


def _check_positive_int(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        expected = "a positive integer" + (" or None" if allow_none else "")
        raise InvalidInputError(f"{name}: expected {expected}, got {describe(value)}")
