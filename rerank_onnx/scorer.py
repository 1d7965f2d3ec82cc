"""The loop that runs planned batches on a session, computing shared prefixes once.

Used by `Reranker`, the server's scheduler (through `Reranker.score_encoded`) and the export's
self-check alike, so every caller scores the same way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np

from .backends import Prefix, PrefixScoreSession, ScoreSession
from .batching import pad_batch, plan_batches, plan_shared_prefixes


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
        slice_tokens: a row longer than this runs alone, in slices of this many tokens that each attend
            to the keys and values of the slices before, so attention memory grows with slice x length,
            not length squared (needs a session with a past; None: every row in one piece).
    """

    def __init__(
        self,
        session: ScoreSession,
        *,
        pad_id: int,
        chat_prefix: Sequence[int],
        max_batch_tokens: int,
        max_batch_size: int,
        share_prefix: bool,
        pad_multiple: int = 1,
        slice_tokens: int | None = None,
    ) -> None:
        self.session = session
        self.pad_multiple = pad_multiple
        self.slice_tokens = slice_tokens
        self.pad_id = pad_id
        self.chat_prefix = list(chat_prefix)
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix

    @property
    def computes_shared_prefix(self) -> bool:
        """True when rows that share a prefix compute it once."""
        return self.share_prefix and isinstance(self.session, PrefixScoreSession)

    def score(
        self,
        input_ids: Sequence[Sequence[int]],
        *,
        prefix_lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Scores of already-encoded prompts, float32, in input order.

        Args:
            input_ids: one prompt's token ids per row.
            prefix_lengths: the tokens before each row's document; rows with equal prefixes share them.
                None: every row runs in full.
            batch_size: pairs per batch at most, below `max_batch_size`.
            show_progress: draw a progress bar on stderr.

        Returns:
            One score per row.
        """
        scores = np.zeros(len(input_ids), dtype=np.float32)
        if not input_ids:
            return scores
        progress = _Progress(len(input_ids)) if show_progress else None
        groups: list[tuple[int, list[int]]] = []
        alone = list(range(len(input_ids)))
        if prefix_lengths is not None and self.computes_shared_prefix:
            groups, alone = plan_shared_prefixes(input_ids, prefix_lengths, self.chat_prefix)
        session = self.session
        for shared, members in groups:
            assert isinstance(session, PrefixScoreSession)  # computes_shared_prefix checked it
            prefix = self._prefill(session, input_ids[members[0]][:shared], None)
            members, long_rows = self._split_long(members, shared, input_ids)
            for i in long_rows:
                scores[i] = self._score_in_slices(session, input_ids[i][shared:], prefix)
            if progress and long_rows:
                progress.advance(len(long_rows))
            rest = [input_ids[i][shared:] for i in members]
            for batch, (ids, lengths) in self._batches(rest, batch_size):
                scores[[members[i] for i in batch]] = session.run_after(prefix, ids, lengths)
                if progress:
                    progress.advance(len(batch))
        alone, long_rows = self._split_long(alone, 0, input_ids)
        for i in long_rows:
            assert isinstance(session, PrefixScoreSession)  # _split_long finds long rows only then
            scores[i] = self._score_in_slices(session, input_ids[i], None)
            if progress:
                progress.advance(1)
        rows = [input_ids[i] for i in alone]
        for batch, (ids, lengths) in self._batches(rows, batch_size):
            scores[[alone[i] for i in batch]] = session.run(ids, lengths)
            if progress:
                progress.advance(len(batch))
        if progress:
            progress.close()
        return scores

    def _split_long(
        self, rows: list[int], start: int, input_ids: Sequence[Sequence[int]]
    ) -> tuple[list[int], list[int]]:
        """Rows that fit in one piece, and rows whose tokens after `start` run in slices."""
        limit = self.slice_tokens
        if limit is None or not isinstance(self.session, PrefixScoreSession):
            return rows, []
        short = [i for i in rows if len(input_ids[i]) - start <= limit]
        return short, [i for i in rows if len(input_ids[i]) - start > limit]

    def _score_in_slices(self, session: PrefixScoreSession, ids: Sequence[int], prefix: Prefix | None) -> float:
        """One row's score, its tokens fed `slice_tokens` at a time after `prefix`; the last slice is scored."""
        assert self.slice_tokens is not None
        step = self.slice_tokens
        scored_from = (len(ids) - 1) // step * step  # the last slice keeps 1..step tokens
        for begin in range(0, scored_from, step):
            prefix = self._prefill(session, ids[begin : begin + step], prefix)
        assert prefix is not None  # a row longer than one slice has at least one before the last
        last, lengths = pad_batch([ids[scored_from:]], pad_id=self.pad_id, pad_multiple=self.pad_multiple)
        return float(session.run_after(prefix, last, lengths)[0])

    @staticmethod
    def _prefill(session: PrefixScoreSession, ids: Sequence[int], after: Prefix | None) -> Prefix:
        return session.prefill(np.asarray([ids], dtype=np.int64), after)

    def _batches(
        self, rows: Sequence[Sequence[int]], batch_size: int | None
    ) -> Iterator[tuple[list[int], tuple[np.ndarray, np.ndarray]]]:
        batches = plan_batches(
            [len(ids) for ids in rows],
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=batch_size or self.max_batch_size,
            pad_multiple=self.pad_multiple,
        )
        for batch in batches:
            yield batch, pad_batch([rows[i] for i in batch], pad_id=self.pad_id, pad_multiple=self.pad_multiple)


class _Progress:
    """A one-line progress bar on stderr; no dependency."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def advance(self, count: int) -> None:
        self.done += count
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        filled = int(30 * self.done / self.total)
        bar = "#" * filled + " " * (30 - filled)
        sys.stderr.write(f"\rRanking |{bar}| {self.done}/{self.total} pairs, {rate:.1f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
