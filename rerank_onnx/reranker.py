"""The public API: a drop-in for mxbai_rerank.MxbaiRerankV2's rank() and predict()."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import ArtifactConfig, load_artifact
from .batching import pad_batch, plan_batches
from .errors import InputTooLongError, InvalidInputError, describe
from .session import PrefixScoreSession, ScoreSession, open_session
from .template import EncodedPairs, PairEncoder, load_tokenizer

log = logging.getLogger("rerank_onnx")

DEFAULT_MAX_BATCH_TOKENS = 4096
DEFAULT_MAX_BATCH_SIZE = 32


@dataclass(frozen=True)
class RankResult:
    index: int  # position of the document in the input list
    score: float
    document: str | None


class Reranker:
    """Scores (query, document) pairs with an artifact written by `rerank-onnx export`.

    threads: onnxruntime intra-op threads (default: the CPUs this process may use).
    max_length: token budget for query + document, as in the reference (default 8192).
    max_batch_tokens / max_batch_size: a batch holds at most this many padded tokens / pairs.
    session: a ready ScoreSession to use instead of loading the artifact's graph (tests, custom providers).
    share_prefix: compute the tokens that the pairs of one query share (chat prefix, instruction, query)
        once per query instead of once per pair, when the graph takes past keys and values (older
        artifacts run every prompt in full). Scores agree up to float rounding (int8-fast: up to its
        per-batch activation scales); off, every prompt runs in full.
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
    ) -> None:
        _check_positive_int("threads", threads, allow_none=True)
        _check_positive_int("max_length", max_length, allow_none=True)
        _check_positive_int("max_batch_tokens", max_batch_tokens)
        _check_positive_int("max_batch_size", max_batch_size)
        if not isinstance(share_prefix, bool):
            raise InvalidInputError(f"share_prefix: expected True or False, got {describe(share_prefix)}")
        self.config: ArtifactConfig = load_artifact(model_dir)
        template = self.config.template
        self._encoder = PairEncoder(
            load_tokenizer(str(self.config.tokenizer_path)),
            template,
            max_length=max_length or template.max_length,
        )
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self._session: ScoreSession = session or open_session(self.config.graph_path, threads=threads)
        self.share_prefix = share_prefix

    @property
    def shares_prefix(self) -> bool:
        """True when pairs of one query share the computation of their common head."""
        return self.share_prefix and isinstance(self._session, PrefixScoreSession)

    @property
    def max_length(self) -> int:
        return self._encoder.max_length

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
            [query] * len(docs), docs, instruction=instruction, normalize=normalize,
            truncate=truncate, batch_size=batch_size, show_progress=show_progress,
        )  # fmt: skip
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
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        normalize: bool = False,
        truncate: bool = True,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Scores of the pairs (queries[i], documents[i]) as float32, in input order.

        Raw scores are logit("1") - logit("0"); normalize=True maps them to (0, 1) as the reference does.
        """
        _check_positive_int("batch_size", batch_size, allow_none=True)
        encoded = self.encode(queries, documents, instruction=instruction)
        if any(encoded.truncated) and not truncate:
            first = encoded.truncated.index(True)
            raise InputTooLongError(
                f"pair {first} (and {sum(encoded.truncated) - 1} more) exceeds max_length={self.max_length} "
                "tokens for query + document; shorten it, raise max_length (model limit "
                f"{self._encoder.template_limit}), or pass truncate=True to cut it as the reference does"
            )
        if any(encoded.truncated):
            log.warning(
                "%d of %d pairs exceed max_length=%d tokens and were truncated as the reference does",
                sum(encoded.truncated), len(encoded.truncated), self.max_length,
            )  # fmt: skip
        scores = self.score_encoded(
            encoded.input_ids, head_lengths=encoded.head_lengths, batch_size=batch_size, show_progress=show_progress
        )
        return self.normalize(scores) if normalize else scores

    def encode(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        max_document_tokens: int | None = None,
    ) -> EncodedPairs:
        """The prompt token ids of each pair, and whether it had to be truncated.

        max_document_tokens caps each document's own tokens below what max_length allows.
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
        return self._encoder.encode(
            queries, documents, instruction=instruction, max_document_tokens=max_document_tokens
        )

    def score_encoded(
        self,
        input_ids: Sequence[Sequence[int]],
        *,
        head_lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Run the graph over already-encoded prompts in length-bucketed batches; scores in input order.

        head_lengths (EncodedPairs.head_lengths): rows whose first head_lengths[i] tokens are equal share
        one computation of those tokens. Without it every prompt runs in full.
        """
        scores = np.zeros(len(input_ids), dtype=np.float32)
        if not input_ids:
            return scores
        if head_lengths is not None:
            _check_head_lengths(head_lengths, len(input_ids))
        progress = _Progress(len(input_ids)) if show_progress else None
        groups, alone = self._shared_heads(input_ids, head_lengths)
        session = self._session
        for head, members in groups:
            assert isinstance(session, PrefixScoreSession)
            prefix = session.prefill(np.asarray([input_ids[members[0]][:head]], dtype=np.int64))
            rest = [input_ids[i][head:] for i in members]
            for batch, part in self._batches(rest, batch_size):
                scores[[members[i] for i in batch]] = session.run_after(prefix, *part)
                if progress:
                    progress.advance(len(batch))
        rows = [input_ids[i] for i in alone]
        for batch, part in self._batches(rows, batch_size):
            scores[[alone[i] for i in batch]] = session.run(*part)
            if progress:
                progress.advance(len(batch))
        if progress:
            progress.close()
        return scores

    def _batches(
        self, rows: Sequence[Sequence[int]], batch_size: int | None
    ) -> Iterator[tuple[list[int], tuple[np.ndarray, np.ndarray]]]:
        batches = plan_batches(
            [len(ids) for ids in rows],
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=batch_size or self.max_batch_size,
        )
        pad_id = self.config.template.pad_token_id
        for batch in batches:
            yield batch, pad_batch([rows[i] for i in batch], pad_id=pad_id)

    def _shared_heads(
        self, input_ids: Sequence[Sequence[int]], head_lengths: Sequence[int] | None
    ) -> tuple[list[tuple[int, list[int]]], list[int]]:
        """(head length, row indices) for each head that two or more rows share, and the rows that share none."""
        if head_lengths is None or not self.shares_prefix:
            return [], list(range(len(input_ids)))
        by_head: dict[tuple[int, ...], list[int]] = {}
        for i, (ids, n) in enumerate(zip(input_ids, head_lengths)):
            n = min(int(n), len(ids) - 1)  # at least one token after the head carries the score
            by_head.setdefault(tuple(ids[:n]) if n > 0 else (), []).append(i)
        groups = [
            (_common_length([input_ids[i] for i in rows], len(head)), rows)
            for head, rows in by_head.items()
            if head and len(rows) > 1
        ]
        alone = sorted(i for head, rows in by_head.items() if not (head and len(rows) > 1) for i in rows)
        # Pairs of different queries still share the chat prefix that opens every prompt of the template.
        opening = list(self.config.template.prefix_ids)
        openers = [
            i for i in alone
            if 0 < len(opening) <= head_lengths[i] < len(input_ids[i]) and list(input_ids[i][: len(opening)]) == opening
        ]  # fmt: skip
        if len(openers) > 1:
            groups.append((_common_length([input_ids[i] for i in openers], len(opening)), openers))
            alone = sorted(set(alone) - set(openers))
        return groups, alone

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """sigmoid(score - estimated_max / 2): the reference's `normalize=True`."""
        shifted = np.asarray(scores, dtype=np.float64) - self.config.estimated_max / 2
        return (1.0 / (1.0 + np.exp(-shifted))).astype(np.float32)


def _common_length(rows: Sequence[Sequence[int]], start: int) -> int:
    """How far rows that agree on their first `start` tokens go on agreeing (the separator and "document:"
    that follow every query, or a boilerplate opening), keeping one token of each row to score."""
    limit = min(len(r) for r in rows) - 1
    n = start
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


class _Progress:
    """A one-line progress bar on stderr; no dependency."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def advance(self, count: int) -> None:
        self.done += count
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        filled = int(30 * self.done / self.total)
        sys.stderr.write(f"\rRanking |{'#' * filled}{' ' * (30 - filled)}| {self.done}/{self.total} pairs, {rate:.1f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name}: expected a string, got {describe(value)}")


def _check_str_list(name: str, value: object) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidInputError(
            f"{name}: expected a list of strings, got {describe(value)}; wrap a single text in a list: [text]"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInputError(f"{name}[{i}]: expected a string, got {describe(item)}")
    return list(value)


def _check_head_lengths(value: object, prompts: int) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != prompts:
        raise InvalidInputError(
            f"head_lengths: expected a list of {prompts} non-negative integers (one per prompt; "
            f"EncodedPairs.head_lengths), got {describe(value)}"
        )
    for i, n in enumerate(value):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInputError(f"head_lengths[{i}]: expected a non-negative integer, got {describe(n)}")


def _check_positive_int(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        expected = "a positive integer" + (" or None" if allow_none else "")
        raise InvalidInputError(f"{name}: expected {expected}, got {describe(value)}")
