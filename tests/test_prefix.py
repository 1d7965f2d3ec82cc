"""The shared-prefix path: the pairs of one query compute their common prefix once.

A fake session checks grouping and order in milliseconds; the tiny exported graphs check that scores
with a shared prefix equal scores of full prompts (and, through test_oracle, the reference).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ENGINES, choice
from fakes import PrefixFake, full_score
from onnx import TensorProto, helper

from rerank_onnx import Reranker
from rerank_onnx.backends import GraphSession, ScoreBatch, ScoreSession, open_session
from rerank_onnx.errors import ModelLoadError
from rerank_onnx.metrics import Metrics
from rerank_onnx.scheduler import Scheduler


@pytest.mark.openvino
def test_the_fake_and_every_engine_satisfy_the_protocol(fp32_artifact: Path) -> None:
    assert isinstance(PrefixFake(), ScoreSession)
    for backend, precision in (p.values[0] for p in ENGINES):
        session = open_session(fp32_artifact / "model.onnx", choice(backend, precision), threads=1)
        assert isinstance(session, ScoreSession) and session.shares_prefix, backend


def test_each_query_computes_its_head_once_and_scores_keep_input_order(fp32_artifact: Path) -> None:
    session = PrefixFake()
    reranker = Reranker(fp32_artifact, session=session, max_batch_tokens=300, max_batch_size=3)
    queries = ["cats?", "dogs?", "cats?", "lonely query", "dogs?", "cats?", "dogs?"]
    documents = ["x " * n for n in (50, 1, 30, 2, 80, 5, 0)]
    encoded = reranker.model.encode(queries, documents)
    scores = reranker.predict(queries, documents)
    np.testing.assert_allclose(scores, [full_score(ids) for ids in encoded.input_ids], rtol=1e-6)
    # one prefix per query with two or more documents (as far as its prompts agree); the lonely pair runs in full
    heads = {q: n for q, n in zip(queries, encoded.document_starts)}
    expected = [_agree([ids for q2, ids in zip(queries, encoded.input_ids) if q2 == q]) for q in ("cats?", "dogs?")]
    assert sorted(session.prefills) == sorted(expected)
    assert all(n >= heads[q] + 1 for n, q in zip(expected, ("cats?", "dogs?")))  # + the separator at least
    assert session.after_rows == 6 and session.full_rows == 1


def _agree(rows: list[list[int]]) -> int:
    n = 0
    while all(len(r) > n + 1 and r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def test_pairs_of_different_queries_share_the_chat_prefix(fp32_artifact: Path) -> None:
    session = PrefixFake()
    reranker = Reranker(fp32_artifact, session=session)
    queries, documents = ["cats?", "dogs?", "fish?"], ["a", "b", "c"]
    encoded = reranker.model.encode(queries, documents)
    scores = reranker.predict(queries, documents)
    np.testing.assert_allclose(scores, [full_score(ids) for ids in encoded.input_ids], rtol=1e-6)
    chat_prefix = len(reranker.model.config.template.prefix_ids)
    assert session.prefills == [_agree(encoded.input_ids)] and session.prefills[0] >= chat_prefix
    assert session.full_rows == 0


def test_share_prefix_off_runs_every_prompt_in_full(fp32_artifact: Path) -> None:
    session = PrefixFake()
    reranker = Reranker(fp32_artifact, session=session, share_prefix=False)
    scores = reranker.predict(["q"] * 4, ["a", "b c", "d", "e f g"])
    assert session.prefills == [] and session.full_rows == 4
    assert not reranker.model.computes_shared_prefix
    expected = [full_score(ids) for ids in reranker.model.encode(["q"] * 4, ["a", "b c", "d", "e f g"]).input_ids]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_head_lengths_must_match_the_prompts(fp32_artifact: Path) -> None:
    from rerank_onnx.errors import InvalidInputError

    reranker = Reranker(fp32_artifact, session=PrefixFake())
    with pytest.raises(InvalidInputError, match="one per prompt"):
        reranker.model.score_encoded([[1, 2, 3], [1, 2, 4]], document_starts=[2])
    with pytest.raises(InvalidInputError, match="list of 2 non-negative integers"):
        reranker.model.score_encoded([[1, 2, 3], [1, 2, 4]], document_starts=2)  # type: ignore[arg-type]
    for bad in ("2", -1, 1.5, True):
        with pytest.raises(InvalidInputError, match=r"document_starts\[1\]: expected a non-negative integer"):
            reranker.model.score_encoded([[1, 2, 3], [1, 2, 4]], document_starts=[2, bad])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="share_prefix: expected True or False"):
        Reranker(fp32_artifact, session=PrefixFake(), share_prefix="yes")  # type: ignore[arg-type]


def test_the_scheduler_shares_heads_within_and_across_requests(fp32_artifact: Path) -> None:
    session = PrefixFake()
    reranker = Reranker(fp32_artifact, session=session)
    scheduler = Scheduler(reranker.model, Metrics(), coalesce_ms=50.0, max_queue_pairs=4096)
    first = reranker.model.encode(["cats?"] * 2, ["a b", "c"])
    second = reranker.model.encode(["cats?"] * 3, ["d", "e f", "g"])

    async def both():
        return await asyncio.gather(
            scheduler.score(first.input_ids, first.document_starts),
            scheduler.score(second.input_ids, second.document_starts),
        )

    try:
        a, b = asyncio.run(both())
    finally:
        scheduler.close()
    np.testing.assert_allclose(a, [full_score(r) for r in first.input_ids], rtol=1e-6)
    np.testing.assert_allclose(b, [full_score(r) for r in second.input_ids], rtol=1e-6)
    assert session.full_rows == 0 and len(session.prefills) == 1  # coalesced: one prefix for five pairs


QUERIES = ["where do fish live?", "¿qué come un gato?", "where do fish live?", "x", "¿qué come un gato?", "x"]
DOCUMENTS = [
    "Fish live in rivers.",
    "",
    "Salmon swim upstream to spawn " * 20,
    "x",
    "Los gatos comen pescado. 猫",
    "y " * 300,
]


@pytest.mark.openvino
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("instruction", [None, "Prefer short answers."])
def test_fp32_shared_prefix_equals_full_prompts(
    fp32_artifact: Path, instruction: str | None, engine: tuple[str, str]
) -> None:
    backend, precision = engine
    shared = Reranker(fp32_artifact, max_batch_size=2, backend=backend, precision=precision)  # type: ignore[arg-type]
    assert shared.model.computes_shared_prefix
    full = Reranker(fp32_artifact, share_prefix=False, backend=backend, precision=precision)  # type: ignore[arg-type]
    a = shared.predict(QUERIES, DOCUMENTS, instruction=instruction)
    b = full.predict(QUERIES, DOCUMENTS, instruction=instruction)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_truncated_queries_share_their_truncated_head(fp32_artifact: Path) -> None:
    reranker = Reranker(fp32_artifact, max_length=40)
    query = "a very long query about rivers and fish " * 10
    docs = ["fish", "rivers flood in spring", "nothing at all"]
    encoded = reranker.model.encode([query] * 3, docs)
    assert all(encoded.truncated) and len(set(encoded.document_starts)) == 1
    a = reranker.predict([query] * 3, docs)
    b = Reranker(fp32_artifact, max_length=40, share_prefix=False).predict([query] * 3, docs)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_blockwise_int8_shared_prefix_equals_full_prompts(int8_artifact: Path) -> None:
    # blockwise int8 quantizes each token's activations on their own: a shared head changes only rounding
    a = Reranker(int8_artifact, backend="onnxruntime").predict(QUERIES, DOCUMENTS)
    b = Reranker(int8_artifact, backend="onnxruntime", share_prefix=False).predict(QUERIES, DOCUMENTS)
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)


def test_int8_fast_shared_prefix_stays_within_its_batch_noise(int8_fast_artifact: Path) -> None:
    # int8-fast has one activation scale per batch, which the head no longer joins: held to the same
    # bound as its agreement with the reference (test_oracle)
    a = Reranker(int8_fast_artifact).predict(QUERIES, DOCUMENTS)
    b = Reranker(int8_fast_artifact, share_prefix=False).predict(QUERIES, DOCUMENTS)
    assert np.mean(np.abs(a - b)) < 0.25 * np.std(b)


def _plain_graph(path: Path, inputs: list[str]) -> Path:
    """A graph of the layout written before the prefix cache (or a wrong one): score = float(lengths)."""
    declared = [
        helper.make_tensor_value_info(
            name, TensorProto.INT64, ["batch"] if name == "lengths" else ["batch", "sequence"]
        )
        for name in inputs
    ]
    node = helper.make_node("Cast", ["lengths"], ["scores"], to=TensorProto.FLOAT)
    output = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"])
    graph = helper.make_graph([node], "plain", declared, [output])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.openvino
@pytest.mark.parametrize("engine", ENGINES)
def test_a_graph_without_past_inputs_runs_in_full(tmp_path: Path, engine: tuple[str, str]) -> None:
    session = open_session(_plain_graph(tmp_path / "old.onnx", ["input_ids", "lengths"]), choice(*engine), threads=1)
    assert isinstance(session, GraphSession) and not session.shares_prefix
    ids = np.zeros((2, 3), dtype=np.int64)
    np.testing.assert_array_equal(session.score(ScoreBatch(ids, np.array([3, 1], dtype=np.int64))), [3.0, 1.0])
    with pytest.raises(ValueError, match="no past"):
        session.prefill(ids[:1])


@pytest.mark.openvino
@pytest.mark.parametrize("engine", ENGINES)
def test_a_graph_with_other_inputs_is_refused(tmp_path: Path, engine: tuple[str, str]) -> None:
    odd = _plain_graph(tmp_path / "odd.onnx", ["input_ids", "lengths", "token_type_ids"])
    with pytest.raises(ModelLoadError, match="expected graph inputs"):
        open_session(odd, choice(*engine), threads=1)


@pytest.mark.openvino
@pytest.mark.parametrize("engine", ENGINES)
def test_the_exported_graph_prefills_and_continues(fp32_artifact: Path, engine: tuple[str, str]) -> None:
    session = open_session(fp32_artifact / "model.onnx", choice(*engine), threads=1)
    assert session.shares_prefix
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 151_000, size=(3, 20))
    rows[:, :8] = rows[0, :8]
    full = session.score(ScoreBatch(rows, np.array([20, 20, 20], dtype=np.int64)))
    prefix = session.prefill(rows[:1, :8])
    assert prefix.length == 8 and prefix.keys.shape == prefix.values.shape
    after = session.score(ScoreBatch(rows[:, 8:], np.array([12, 12, 12], dtype=np.int64), prefix=prefix))
    np.testing.assert_allclose(after, full, atol=1e-4, rtol=0)


def test_a_prefix_computed_at_the_padded_width_keeps_only_its_own_keys_and_values(fp32_artifact: Path) -> None:
    """An engine whose numerics depend on a run's width computes a prefix padded as its rows are (OpenVINO
    bf16 and int8); what it returns is the prefix's keys and values alone, as an unpadded prefill gives."""
    session = Reranker(fp32_artifact, backend="onnxruntime").model._scorer.session
    head = np.asarray([list(range(100, 137))], dtype=np.int64)  # 37 tokens: padded to 64
    tail = np.asarray([list(range(200, 210))], dtype=np.int64)
    plain = session.prefill(tail, session.prefill(head))
    session.limits = replace(session.limits, pad_multiple=32)
    padded = session.prefill(tail, session.prefill(head))
    assert padded.keys.shape[2] == padded.values.shape[2] == 47
    np.testing.assert_allclose(padded.keys, plain.keys, atol=1e-5)
    np.testing.assert_allclose(padded.values, plain.values, atol=1e-5)
