"""The loop that runs planned batches on a session, computing shared prefixes once.

Used by `Reranker`, the server's scheduler (through `Reranker.score_encoded`) and the export's
self-check alike, so every caller scores the same way.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field

import numpy as np

from .backends import Prefix, ScoreBatch, ScoreSession
from .batching import pad_batch, plan_batches, plan_shared_prefixes, split_long
from .errors import InvalidInputError, ScoringError


@dataclass
class Scorer:
    """Scores encoded prompts on `session` in length-bucketed batches, in input order.

    Args:
        session: the graph session (or a fake in tests).
        pad_id: the token right padding uses.
        chat_prefix: the template's chat prefix, shared by the prompts of every query.
        max_batch_tokens: padded tokens per batch at most.
        max_batch_size: pairs per batch at most.
        share_prefix: compute the tokens that rows share once, when the session can.
        pad_multiple: pad rows to a multiple of this and batch rows of one width only, for numerics
            whose result depends on the padded width (batching.py); 1: pad to the batch's longest row.
        max_batch_context: the keys and values a batch attends over, rows x (shared prefix + width), at most
            (None: no bound; batching.py).
        slice_tokens: a row longer than this runs alone, in slices of this many tokens that each attend
            to the keys and values of the slices before, so attention memory grows with slice x length,
            not length squared (needs a session with a past; None: every row in one piece).
        whole_row_tokens: a row longer than this runs alone and whole, from its first token (no shared
            prefix, no slices), where the session bounds that run's memory itself (None: no such rows).
    """

    session: ScoreSession
    _: KW_ONLY
    pad_id: int
    chat_prefix: Sequence[int]
    max_batch_tokens: int
    max_batch_size: int
    share_prefix: bool
    pad_multiple: int = 1
    max_batch_context: int | None = None
    slice_tokens: int | None = None
    whole_row_tokens: int | None = None
    # One call at a time: an engine's infer request, its prefix state and its memory release belong to one
    # call (OpenVINO's request is not reentrant; two threads on it raised or swapped scores). Every engine
    # already uses all the threads it is given, so calls in parallel would not be faster, only wrong.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def computes_shared_prefix(self) -> bool:
        """True when rows that share a prefix compute it once."""
        return self.share_prefix and self.session.shares_prefix

    def score(
        self,
        input_ids: Sequence[Sequence[int]],
        *,
        document_starts: Sequence[int] | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Scores of already-encoded prompts, float32, in input order.

        Args:
            input_ids: one prompt's token ids per row.
            document_starts: each row's tokens before its document: rows that agree on them compute the tokens
                they share once (decoders); a cross-encoder's token types start there (it needs them).
                None: every row runs in full. A cross-encoder's session needs them (its token types).
            batch_size: pairs per batch at most, below `max_batch_size`.
            show_progress: draw a progress bar on stderr.

        Returns:
            One score per row.

        Raises:
            ScoringError: the graph gave a score that is not a finite number (corrupt weights or a broken engine).
        """
        with self._lock:
            scores = self._score_locked(input_ids, document_starts, batch_size, show_progress)
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise ScoringError(
                f"row {int(bad[0])} (and {bad.size - 1} more) scored {scores[bad[0]]}: expected a finite score; the "
                "artifact's weights are likely damaged: check them with rerank_onnx.artifact.verify_artifact, or "
                "export the model again"
            )
        return scores

    def _score_locked(
        self,
        input_ids: Sequence[Sequence[int]],
        document_starts: Sequence[int] | None,
        batch_size: int | None,
        show_progress: bool,
    ) -> np.ndarray:
        starts = None
        if self.session.needs_document_starts:
            if document_starts is None:
                raise InvalidInputError(
                    "document_starts: expected each row's document start for a cross-encoder, got None; pass "
                    "the document_starts that encode() returned (EncodedPairs.document_starts)"
                )
            starts = np.asarray(document_starts, dtype=np.int64)
        scores = np.zeros(len(input_ids), dtype=np.float32)
        progress = _Progress(len(input_ids), show=show_progress)
        whole, groups, alone = self._plan(input_ids, document_starts)
        for i in whole:
            ids, lengths = pad_batch([input_ids[i]], pad_id=self.pad_id, pad_multiple=self.pad_multiple)
            scores[i] = self.session.score(ScoreBatch(ids, lengths, whole_rows=True))[0]
            progress.advance(1)
        for shared, members in groups:
            prefix = self._prefill(input_ids[members[0]][:shared], None)
            self._score_rows(input_ids, members, shared, prefix, batch_size, scores, progress)
        self._score_rows(input_ids, alone, 0, None, batch_size, scores, progress, starts)
        progress.close()
        self.session.release_memory()
        return scores

    def _plan(
        self, input_ids: Sequence[Sequence[int]], document_starts: Sequence[int] | None
    ) -> tuple[list[int], list[tuple[int, list[int]]], list[int]]:
        """Which rows run whole and alone (longer than whole_row_tokens), which share a prefix (its length and
        the rows), and which run in full in batches."""
        alone, whole = list(range(len(input_ids))), list[int]()
        if self.whole_row_tokens is not None:
            alone, whole = split_long([len(ids) for ids in input_ids], alone, limit=self.whole_row_tokens)
        if document_starts is None or not self.computes_shared_prefix:
            return whole, [], alone
        planned, unshared = plan_shared_prefixes(
            [input_ids[i] for i in alone], [document_starts[i] for i in alone], self.chat_prefix
        )
        return (
            whole,
            [(shared, [alone[j] for j in members]) for shared, members in planned],
            [alone[j] for j in unshared],
        )

    def _score_rows(
        self,
        input_ids: Sequence[Sequence[int]],
        rows: list[int],
        start: int,
        prefix: Prefix | None,
        batch_size: int | None,
        scores: np.ndarray,
        progress: _Progress,
        document_starts: np.ndarray | None = None,
    ) -> None:
        """Score input_ids[i][start:] for i in `rows` after `prefix` (None: from the start) into scores[i];
        `document_starts`: every row's document start, for a session that needs them (then start is 0)."""
        if self.slice_tokens is not None and self.session.shares_prefix:
            rows, long_rows = split_long([len(input_ids[i]) - start for i in rows], rows, limit=self.slice_tokens)
            for i in long_rows:
                scores[i] = self._score_in_slices(input_ids[i][start:], prefix, self.slice_tokens)
                progress.advance(1)
        for batch, (ids, lengths) in self._batches([input_ids[i][start:] for i in rows], start, batch_size):
            members = [rows[i] for i in batch]
            starts = None if document_starts is None else document_starts[members]
            scores[members] = self.session.score(ScoreBatch(ids, lengths, prefix=prefix, document_starts=starts))
            progress.advance(len(batch))

    def _score_in_slices(self, ids: Sequence[int], prefix: Prefix | None, step: int) -> float:
        """One row's score, its tokens fed `step` at a time after `prefix`; the last slice is scored."""
        scored_from = (len(ids) - 1) // step * step  # the last slice keeps 1..step tokens
        for begin in range(0, scored_from, step):
            prefix = self._prefill(ids[begin : begin + step], prefix)
        assert prefix is not None  # a row longer than one slice has at least one before the last
        last, lengths = pad_batch([ids[scored_from:]], pad_id=self.pad_id, pad_multiple=self.pad_multiple)
        return float(self.session.score(ScoreBatch(last, lengths, prefix=prefix))[0])

    def _prefill(self, ids: Sequence[int], after: Prefix | None) -> Prefix:
        return self.session.prefill(np.asarray([ids], dtype=np.int64), after)

    def _batches(
        self, rows: Sequence[Sequence[int]], context: int, batch_size: int | None
    ) -> Iterator[tuple[list[int], tuple[np.ndarray, np.ndarray]]]:
        batches = plan_batches(
            [len(ids) for ids in rows],
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=batch_size or self.max_batch_size,
            pad_multiple=self.pad_multiple,
            context=context,
            max_batch_context=self.max_batch_context,
        )
        for batch in batches:
            rows_of_batch = [rows[i] for i in batch]
            yield batch, pad_batch(rows_of_batch, pad_id=self.pad_id, pad_multiple=self.pad_multiple, context=context)


class _Progress:
    """A one-line progress bar on stderr (nothing when not shown); no dependency."""

    def __init__(self, total: int, *, show: bool) -> None:
        self.total, self.done, self.start, self.show = total, 0, time.perf_counter(), show and total > 0

    def advance(self, count: int) -> None:
        if not self.show or not count:
            return
        self.done += count
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        filled = int(30 * self.done / self.total)
        bar = "#" * filled + " " * (30 - filled)
        sys.stderr.write(f"\rRanking |{bar}| {self.done}/{self.total} pairs, {rate:.1f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.show:
            sys.stderr.write("\n")
