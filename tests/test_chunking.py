"""Long documents scored by chunks (long_documents="chunk"): the plan (boundaries, overlap, caps), the
score as the best of the chunks each scored alone, the winning span, the shared query prefix, the HTTP
field and the CLI flag."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import numpy as np
import pytest
from fakes import PrefixFake

from rerank_onnx import InputTooLongError, Reranker
from rerank_onnx.chunking import OVERLAP_FRACTION, plan_chunks

QUERY = "where do rivers flood in spring?"
# about 3 x the 64-token budget below; every sentence different, so chunks score differently
LONG = " ".join(
    f"Sentence {i} tells of {w} near the {r} river."
    for i, (w, r) in enumerate(
        zip(["snow", "rain", "ice", "mud", "fish", "boats", "bridges", "farms"] * 4, ["old", "wide", "red", "slow"] * 8)
    )
)


@pytest.mark.parametrize("tokens,chunk,cap", [(10, 64, 5), (64, 64, 5), (65, 64, 5), (500, 64, 20), (500, 64, 3)])
def test_chunks_cover_the_tokens_with_overlap_up_to_the_cap(tokens: int, chunk: int, cap: int) -> None:
    ranges, complete = plan_chunks(tokens, chunk, cap)
    assert ranges[0][0] == 0 and all(0 < end - start <= chunk for start, end in ranges)
    assert complete == (ranges[-1][1] == tokens) and len(ranges) <= cap
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end - start == chunk // OVERLAP_FRACTION  # consecutive chunks overlap, no gap
    if tokens <= chunk:
        assert ranges == [(0, tokens)]


@pytest.fixture(scope="module")
def short(fp32_artifact: Path) -> Reranker:
    return Reranker(fp32_artifact, max_length=64)


def test_a_long_document_scores_as_its_best_chunk_scored_alone(short: Reranker) -> None:
    encoded = short.model.encode([QUERY], [LONG], max_chunks_per_doc=10)
    assert encoded.chunks is not None
    spans = encoded.chunks.spans
    assert len(spans) >= 3 and encoded.chunks.complete == [True] and encoded.chunks.counts == [len(spans)]
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG)
    assert all(b[0] < a[1] for a, b in itertools.pairwise(spans))  # overlapping, in order
    assert not any(encoded.truncated)  # every chunk fits whole with the query
    alone = short.predict([QUERY] * len(spans), [LONG[a:b] for a, b in spans])
    (result,) = short.rank(QUERY, [LONG], long_documents="chunk")
    assert result.score == pytest.approx(float(alone.max()), abs=1e-5)
    assert result.span == spans[int(alone.argmax())] and result.chunks == len(spans)
    chunked = short.predict([QUERY], [LONG], long_documents="chunk")
    assert chunked[0] == pytest.approx(result.score, abs=1e-6)
    truncated = short.rank(QUERY, [LONG])[0]
    assert truncated.span is None and truncated.chunks == 1


def test_short_documents_score_the_same_whole_or_chunked(short: Reranker) -> None:
    documents = ["rivers flood when snow melts", "", "bananas are yellow"]
    whole = short.rank(QUERY, documents, sort=False)
    chunked = short.rank(QUERY, documents, sort=False, long_documents="chunk")
    np.testing.assert_allclose([r.score for r in chunked], [r.score for r in whole], atol=1e-6)
    assert [r.span for r in chunked] == [(0, len(d)) for d in documents] and {r.chunks for r in chunked} == {1}


def test_a_chunk_with_no_room_beside_the_query_keeps_the_truncated_prompt(short: Reranker) -> None:
    """A document cap below what a chunk needs (max_document_tokens=5) leaves nothing to cut into
    chunks: the pair keeps its truncated prompt, as one row, and counts as cut."""
    plain = short.model.encode([QUERY, QUERY], [LONG, "short"], max_document_tokens=5)
    chunked = short.model.encode([QUERY, QUERY], [LONG, "short"], max_document_tokens=5, max_chunks_per_doc=3)
    assert chunked.chunks is not None and chunked.chunks.counts == [1, 1]
    assert chunked.input_ids == plain.input_ids and chunked.pair_truncated() == [True, False]


def test_the_chunks_of_one_document_share_the_query_prefix(fp32_artifact: Path) -> None:
    session = PrefixFake()
    reranker = Reranker(fp32_artifact, session=session, max_length=64)
    result = reranker.rank(QUERY, [LONG, "a short one"], long_documents="chunk")
    chunks = max(r.chunks for r in result)
    assert len(session.prefills) == 1 and session.after_rows == chunks + 1 and session.full_rows == 0


def test_max_chunks_per_doc_caps_the_chunks_and_says_the_rest_was_cut(short: Reranker) -> None:
    (result,) = short.rank(QUERY, [LONG], long_documents="chunk", max_chunks_per_doc=2)
    assert result.chunks == 2 and result.span is not None and result.span[1] < len(LONG)
    with pytest.raises(InputTooLongError, match="exceeds max_length"):
        short.rank(QUERY, [LONG], long_documents="chunk", max_chunks_per_doc=2, truncate=False)
    short.rank(QUERY, [LONG], long_documents="chunk", truncate=False)  # all chunks: nothing was cut
    from rerank_onnx import InvalidInputError

    with pytest.raises(InvalidInputError, match="long_documents: expected 'truncate' or 'chunk'"):
        short.rank(QUERY, [LONG], long_documents="split")  # type: ignore[arg-type]
    for mode in ("chunk", "truncate"):
        with pytest.raises(InvalidInputError, match="max_chunks_per_doc: expected a positive integer"):
            short.rank(QUERY, [LONG], long_documents=mode, max_chunks_per_doc=0)


def test_v1_rerank_takes_max_chunks_per_doc(fp32_artifact: Path, short: Reranker) -> None:
    from test_server import _in_process

    from rerank_onnx.server import ServerSettings, create_app

    app = create_app(ServerSettings(model_dir=str(fp32_artifact)), reranker=Reranker(fp32_artifact, max_length=64))
    documents = ["a short one", LONG]

    async def requests(client: httpx.AsyncClient):
        chunked = await client.post(
            "/v1/rerank", json={"query": QUERY, "documents": documents, "max_chunks_per_doc": 4}
        )
        plain = await client.post("/v1/rerank", json={"query": QUERY, "documents": documents})
        return chunked, plain

    chunked, plain = _in_process(app, requests)
    assert chunked.status_code == 200, chunked.text
    expected = short.rank(QUERY, documents, long_documents="chunk", max_chunks_per_doc=4, normalize=True)
    results = chunked.json()["results"]
    assert [r["index"] for r in results] == [e.index for e in expected]
    np.testing.assert_allclose([r["relevance_score"] for r in results], [e.score for e in expected], atol=1e-6)
    chunks = short.model.encode([QUERY] * 2, documents, max_chunks_per_doc=4).chunks
    assert chunks is not None and chunks.complete == [True, False]  # LONG needs more than 4 chunks
    for r, e in zip(results, expected):
        complete = chunks.complete[e.index]
        assert r["chunk"] == {"start": e.span[0], "end": e.span[1], "chunks": e.chunks, "complete": complete}
    assert all("chunk" not in r for r in plain.json()["results"])


@pytest.mark.subprocess
def test_the_cli_chunks_long_documents(fp32_artifact: Path, tmp_path: Path) -> None:
    from test_cli import _run

    documents = tmp_path / "docs.txt"
    documents.write_text(f"a short one\n{LONG}\n", encoding="utf-8")
    out = _run(["rank", str(fp32_artifact), str(documents), "--query", QUERY, "--long-documents", "chunk", "--json"])
    assert out.returncode == 0, out.stderr
    import json

    rows = {row["index"]: row for row in json.loads(out.stdout)}
    assert rows[0]["chunks"] == 1 and rows[0]["span"] == [0, len("a short one")]
    assert rows[1]["span"] == [0, len(LONG)]  # the model's own 8k budget holds it whole
    bad = _run(["rank", str(fp32_artifact), str(documents), "--query", QUERY, "--max-chunks-per-doc", "0"])
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: max_chunks_per_doc"), bad.stderr
