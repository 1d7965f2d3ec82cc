"""The scoring loop on fake sessions, no exported model: batches within their budget, shared prefixes
computed once, long rows in slices, scores in input order."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import FakeSession, PrefixFake, full_score

from rerank_onnx.backends import ScoreBatch, ScoreSession
from rerank_onnx.batching import padded_width
from rerank_onnx.scorer import Scorer

PAD = 0


class PlainFake(FakeSession):
    """A session without a past (an older artifact): records every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, list[int]]] = []  # rows, width, lengths

    def score(self, batch: ScoreBatch) -> np.ndarray:
        input_ids, lengths = batch.input_ids, batch.lengths
        self.batches.append((input_ids.shape[0], input_ids.shape[1], [int(n) for n in lengths]))
        for row, n in zip(input_ids, lengths):
            assert (row[n:] == PAD).all()  # right padding
        return np.array([full_score(list(row[:n])) for row, n in zip(input_ids, lengths)], dtype=np.float32)


def _scorer(
    session: ScoreSession,
    *,
    chat_prefix: list[int] | None = None,
    max_batch_tokens: int = 4096,
    max_batch_size: int = 32,
    share_prefix: bool = True,
    pad_multiple: int = 1,
    slice_tokens: int | None = None,
    whole_row_tokens: int | None = None,
) -> Scorer:
    return Scorer(
        session,
        pad_id=PAD,
        chat_prefix=chat_prefix or [1],
        max_batch_tokens=max_batch_tokens,
        max_batch_size=max_batch_size,
        share_prefix=share_prefix,
        pad_multiple=pad_multiple,
        slice_tokens=slice_tokens,
        whole_row_tokens=whole_row_tokens,
    )


def _rows(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(1, 50, size=int(rng.integers(1, 90)))] for _ in range(count)]


def test_both_fakes_satisfy_the_session_protocol() -> None:
    assert isinstance(PrefixFake(), ScoreSession) and isinstance(PlainFake(), ScoreSession)


def test_a_session_without_a_past_is_never_asked_for_a_prefix() -> None:
    session = PlainFake()  # its prefill raises
    rows = [[1, 2, 3, 4, 9], [1, 2, 3, 4, 8, 7], [1, 2, 3, 5]]
    scorer = _scorer(session, slice_tokens=2)
    assert not scorer.computes_shared_prefix
    np.testing.assert_allclose(scorer.score(rows, document_starts=[2, 2, 2]), [full_score(r) for r in rows], rtol=1e-6)


def test_batches_stay_within_their_budget_and_scores_keep_input_order() -> None:
    session = PlainFake()
    rows = _rows(40)
    scores = _scorer(session, max_batch_tokens=300, max_batch_size=6).score(rows)
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    assert sum(n for n, _, _ in session.batches) == len(rows)
    for n, width, lengths in session.batches:
        assert n <= 6 and (n * width <= 300 or n == 1) and width == max(lengths)


def test_batch_size_lowers_the_cap_for_one_call() -> None:
    session = PlainFake()
    _scorer(session, max_batch_size=32).score(_rows(10), batch_size=3)
    assert max(n for n, _, _ in session.batches) == 3


def test_with_a_pad_multiple_a_batch_holds_one_padded_width() -> None:
    session = PlainFake()
    rows = _rows(30, seed=1)
    scores = _scorer(session, pad_multiple=32, max_batch_tokens=1000).score(rows)
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    for _, width, lengths in session.batches:
        assert width % 32 == 0 and {padded_width(n, 32) for n in lengths} == {width}


class WidthFake(PrefixFake):
    """Records the key count each run after a prefix attends over: the prefix's length plus the batch's width."""

    def __init__(self) -> None:
        super().__init__()
        self.after_runs: list[tuple[int, int, list[int]]] = []  # prefix length, width, lengths

    def score(self, batch: ScoreBatch) -> np.ndarray:
        if batch.prefix is not None:
            lengths = [int(n) for n in batch.lengths]
            self.after_runs.append((batch.prefix.keys.shape[2], batch.input_ids.shape[1], lengths))
        return super().score(batch)


def test_after_a_prefix_a_row_attends_over_as_many_keys_as_its_full_prompt() -> None:
    """With a pad multiple, the prefix and the padded row together reach the full prompt's padded width (a
    bf16 attention blocks by it: batching.py), not the prefix plus the row padded alone."""
    session = WidthFake()
    prefix = list(range(1, 41))  # 40 tokens: 40 + 23 = 63 pads to 64 in full, the row alone to 32 (72 keys)
    rows = [
        prefix + [int(t) for t in np.random.default_rng(i).integers(50, 90, size=n)]
        for i, n in enumerate([23, 24, 25, 57, 88, 89, 120])
    ]
    scores = _scorer(session, pad_multiple=32, max_batch_tokens=1000).score(rows, document_starts=[40] * len(rows))
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    assert sum(len(lengths) for _, _, lengths in session.after_runs) == len(rows)
    for context, width, lengths in session.after_runs:
        assert {padded_width(context + n, 32) for n in lengths} == {context + width}, (context, width, lengths)


def test_a_prefix_extends_as_far_as_its_rows_agree() -> None:
    session = PrefixFake()
    rows = [[1, 2, 3, 4, 9], [1, 2, 3, 4, 8, 7], [1, 2, 3, 5]]
    scores = _scorer(session).score(rows, document_starts=[2, 2, 2])
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    assert session.prefills == [3] and session.after_rows == 3 and session.full_rows == 0


def test_rows_that_do_not_open_with_the_chat_prefix_run_in_full() -> None:
    session = PrefixFake()
    rows = [[1, 2, 3] * 20, [4, 5, 6] * 20]  # different prefixes, and not the chat prefix [9, 9]
    scores = _scorer(session, chat_prefix=[9, 9]).score(rows, document_starts=[40, 40])
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    assert session.prefills == [] and session.full_rows == 2


def test_rows_of_different_queries_share_the_chat_prefix() -> None:
    session = PrefixFake()
    rows = [[9, 9, 7, 1, 2], [9, 9, 7, 3], [9, 9, 8, 4, 4]]  # queries 7 1 / 7 / 8 4 after the chat prefix 9 9
    scores = _scorer(session, chat_prefix=[9, 9]).score(rows, document_starts=[4, 3, 4])
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    assert session.prefills == [2] and session.full_rows == 0


def test_a_prefix_as_long_as_the_prompt_keeps_one_token_to_score() -> None:
    session = PrefixFake()
    rows = [[5, 6, 7], [5, 6, 7], [5, 6, 7, 8]]
    scores = _scorer(session).score(rows, document_starts=[3, 3, 3])
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    assert session.prefills == [2]  # the prefix of [5, 6, 7] shrinks to [5, 6]


def test_share_prefix_off_or_a_session_without_a_past_runs_every_row_in_full() -> None:
    rows = [[1, 2, 3, 4], [1, 2, 3, 5]]
    off = PrefixFake()
    scorer = _scorer(off, share_prefix=False)
    assert not scorer.computes_shared_prefix
    scorer.score(rows, document_starts=[3, 3])
    assert off.prefills == [] and off.full_rows == 2
    plain = PlainFake()
    scorer = _scorer(plain, slice_tokens=2)  # no past: neither shared prefixes nor slices can happen
    assert not scorer.computes_shared_prefix
    np.testing.assert_allclose(scorer.score(rows, document_starts=[3, 3]), [full_score(r) for r in rows], rtol=1e-6)
    assert [n for n, _, _ in plain.batches] == [2]


def test_a_long_row_runs_in_slices_and_scores_as_a_whole() -> None:
    session = PrefixFake()
    rows = [[1, 2, 3, 4] * 9, [1, 2, 3, 4, 5], [7] * 10]  # 36 tokens: slices 10 + 10 + 10, then 6 scored
    scores = _scorer(session, slice_tokens=10).score(rows)
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    assert session.prefills == [10, 10, 10] and session.after_rows == 1 and session.full_rows == 2


def test_long_rows_after_a_shared_prefix_continue_it() -> None:
    session = PrefixFake()
    rows = [[5, 6, 7, 1] + [2] * 20, [5, 6, 7, 1, 3], [5, 6, 7, 1, 4, 4]]
    scores = _scorer(session, slice_tokens=8).score(rows, document_starts=[3, 3, 3])
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    # the shared prefix once (4 tokens: the rows agree on one more), then the long row's 20 in 8 + 8 + 4
    assert session.prefills == [4, 8, 8] and session.full_rows == 0


def test_rows_over_the_whole_row_length_run_alone_from_their_first_token() -> None:
    session = PrefixFake()
    rows = [[5, 6, 7, 1] + [2] * 30, [5, 6, 7, 1, 3], [5, 6, 7, 1, 4, 4], [9] * 40]
    scorer = _scorer(session, slice_tokens=8, whole_row_tokens=20)
    scores = scorer.score(rows, document_starts=[3, 3, 3, 0])
    np.testing.assert_allclose(scores, [full_score(r) for r in rows], rtol=1e-6)
    # the two long rows in full, one run each, neither in slices nor after the prefix; the two short rows
    # share their prefix (4 tokens: they agree on one more), computed once
    assert session.whole_rows == session.full_rows == 2 and session.prefills == [4] and session.after_rows == 2


def test_no_rows_make_no_calls() -> None:
    session = PlainFake()
    assert _scorer(session).score([]).shape == (0,) and session.batches == []


@pytest.mark.parametrize("show", [True, False])
def test_the_progress_bar_counts_every_row_once(show: bool, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [[1, 2, 3, 4] * 9, [1, 2, 3, 4, 5], [1, 2, 3, 6], [8, 8]]
    _scorer(PrefixFake(), slice_tokens=10).score(rows, document_starts=[3, 3, 3, 1], show_progress=show)
    err = capsys.readouterr().err
    assert ("4/4 pairs" in err and "5/4" not in err) if show else err == ""


class SegmentFake(PlainFake):
    """A cross-encoder's session: the score depends on where each row's document starts."""

    needs_document_starts = True

    def score(self, batch: ScoreBatch) -> np.ndarray:
        assert batch.document_starts is not None and batch.prefix is None
        plain = super().score(ScoreBatch(batch.input_ids, batch.lengths))
        return plain + np.asarray(batch.document_starts, dtype=np.float32) * 1000


def test_a_pair_session_gets_each_rows_document_start_in_any_batch_order() -> None:
    from rerank_onnx.errors import InvalidInputError

    rows = _rows(40, seed=3)
    starts = [len(r) // 2 for r in rows]
    session = SegmentFake()
    assert isinstance(session, ScoreSession) and not session.shares_prefix
    scores = _scorer(session, max_batch_tokens=300).score(rows, document_starts=starts)
    assert len(session.batches) > 1  # length-bucketed into several batches, not in input order
    assert scores.tolist() == pytest.approx([full_score(r) + 1000 * s for r, s in zip(rows, starts)])
    with pytest.raises(InvalidInputError, match="document_starts"):
        _scorer(SegmentFake()).score(rows)
