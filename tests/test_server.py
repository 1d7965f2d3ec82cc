"""The HTTP server. Hand-written requests run in-process (starlette's TestClient over `create_app`, the
app the CLI serves, lifespan included); real client libraries, signals and the CLI's own serve start a
real server on a loopback port."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fakes import FakeSession

from rerank_onnx import Reranker
from rerank_onnx.backends import ScoreBatch

DOCS = ["a cat is a feline", "bananas are yellow", "", "le chat est un félin", "dogs bark at cats"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, artifact: Path, *extra: str, env: dict | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rerank_onnx.cli", "serve", str(artifact), "--port", str(self.port), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(fp32_artifact: Path):
    s = Server(fp32_artifact, "--max-documents", "50", "--max-body-bytes", "1000000")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def library(fp32_artifact: Path) -> Reranker:
    return Reranker(fp32_artifact)


@pytest.fixture(scope="module")
def client(fp32_artifact: Path):
    """The app in this process, with the limits the `server` fixture's flags set."""
    from starlette.testclient import TestClient

    from rerank_onnx.server import ServerSettings, create_app
    from rerank_onnx.settings import RequestLimits

    settings = ServerSettings(
        model_dir=str(fp32_artifact), limits=RequestLimits(max_documents=50), max_body_bytes=1_000_000
    )
    with TestClient(create_app(settings)) as test_client:
        deadline = time.time() + 60
        while test_client.get("/health").status_code != 200:  # the loader thread finishes
            assert time.time() < deadline, "the model did not load"
            time.sleep(0.05)
        yield test_client


def _post(target, path: str, body, **kwargs) -> httpx.Response:
    """POST to a real `Server` over loopback, or to the in-process `client`."""
    if isinstance(target, Server):
        post, url = functools.partial(httpx.post, timeout=60), target.url + path
    else:
        post, url = target.post, path
    if isinstance(body, (bytes, str)):
        return post(url, content=body, headers={"content-type": "application/json"}, **kwargs)
    return post(url, json=body, **kwargs)


def test_v1_rerank_jina_cohere_shape(client, library: Reranker) -> None:
    r = _post(client, "/v1/rerank", {"model": "m", "query": "what is a cat?", "documents": DOCS, "top_n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"id", "model", "results", "usage"} and body["model"] == "m"
    expected = library.rank("what is a cat?", DOCS, normalize=True)
    assert [x["index"] for x in body["results"]] == [e.index for e in expected[:3]]
    np.testing.assert_allclose(
        [x["relevance_score"] for x in body["results"]], [e.score for e in expected[:3]], atol=1e-6
    )
    assert all(0 <= x["relevance_score"] <= 1 for x in body["results"])
    assert body["results"][0]["document"] == {"text": DOCS[expected[0].index]}
    tokens = sum(len(ids) for ids in library.model.encode(["what is a cat?"] * len(DOCS), DOCS).input_ids)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_v1_options(client) -> None:
    everything = _post(
        client, "/v1/rerank", {"query": "q", "documents": DOCS, "top_n": 99, "return_documents": False}
    ).json()
    assert len(everything["results"]) == len(DOCS) and all("document" not in x for x in everything["results"])
    objects = [{"text": "a cat", "id": "doc-1"}, {"text": "a dog", "id": "doc-2"}]
    kept = _post(client, "/v1/rerank", {"query": "q", "documents": objects}).json()
    assert sorted(x["document"]["id"] for x in kept["results"]) == ["doc-1", "doc-2"]
    zero = _post(client, "/v1/rerank", {"query": "q", "documents": DOCS, "top_n": 0}).json()
    assert len(zero["results"]) == len(DOCS)  # vLLM: top_n 0 means all
    empty = _post(client, "/v1/rerank", {"query": "q", "documents": []})
    assert empty.status_code == 200 and empty.json()["results"] == []


def test_instruction_passes_through(client, library: Reranker) -> None:
    body = _post(client, "/v1/rerank", {"query": "q", "documents": DOCS, "instruction": "prefer French"}).json()
    got = {x["index"]: x["relevance_score"] for x in body["results"]}
    expected = library.predict(["q"] * len(DOCS), DOCS, instruction="prefer French", normalize=True)
    np.testing.assert_allclose([got[i] for i in range(len(DOCS))], expected, atol=1e-6)


def test_v2_rerank_cohere_shape(client, library: Reranker) -> None:
    r = _post(client, "/v2/rerank", {"model": "rerank", "query": "what is a cat?", "documents": DOCS, "top_n": 2})
    body = r.json()
    assert r.status_code == 200 and body["meta"]["api_version"]["version"] == "2"
    expected = library.rank("what is a cat?", DOCS, normalize=True, top_k=2)
    assert [x["index"] for x in body["results"]] == [e.index for e in expected]
    missing_model = _post(client, "/v2/rerank", {"query": "q", "documents": DOCS})
    assert missing_model.status_code == 422 and "model" in missing_model.json()["error"]["message"]
    capped = _post(
        client, "/v2/rerank", {"model": "m", "query": "q", "documents": ["word " * 50], "max_tokens_per_doc": 5}
    )
    assert capped.status_code == 200
    full = library.model.encode(["q"], ["word " * 50]).input_ids[0]
    cut = library.model.encode(["q"], ["word " * 50], max_document_tokens=5).input_ids[0]
    assert capped.json()["usage"]["prompt_tokens"] == len(cut) < len(full)


def test_tei_shape(client, library: Reranker) -> None:
    r = _post(client, "/rerank", {"query": "what is a cat?", "texts": DOCS, "raw_scores": True, "return_text": True})
    body = r.json()
    assert r.status_code == 200 and isinstance(body, list) and len(body) == len(DOCS)
    raw = library.predict(["what is a cat?"] * len(DOCS), DOCS)
    for item in body:
        assert item["text"] == DOCS[item["index"]]
        assert abs(item["score"] - raw[item["index"]]) < 1e-5
    assert [x["score"] for x in body] == sorted((x["score"] for x in body), reverse=True)
    normalized = _post(client, "/rerank", {"query": "what is a cat?", "texts": DOCS}).json()
    assert all("text" not in x and 0 <= x["score"] <= 1 for x in normalized)
    too_long = _post(client, "/rerank", {"query": "q", "texts": ["word " * 9000]})
    assert too_long.status_code == 413 and too_long.json()["error"]["code"] == "input_too_long"
    assert _post(client, "/rerank", {"query": "q", "texts": ["word " * 9000], "truncate": True}).status_code == 200


@pytest.mark.parametrize(
    "path,body,status,fragment",
    [
        ("/v1/rerank", b"{not json", 400, "not valid JSON"),
        ("/v1/rerank", b'{"query": "\xff\xfe", "documents": []}', 400, "Invalid UTF-8"),
        ("/v1/rerank", b"[1, 2, 3]", 422, "Expected `object`, got `array`"),
        ("/v1/rerank", b'"just a string"', 422, "Expected `object`, got `str`"),
        ("/v1/rerank", {"documents": ["a"]}, 422, "missing required field `query`"),
        ("/v1/rerank", {"query": "q"}, 422, "missing required field `documents`"),
        ("/v1/rerank", {"query": 5, "documents": ["a"]}, 422, "Expected `str`, got `int` - at `$.query`"),
        ("/v1/rerank", {"query": "q", "documents": "a"}, 422, "Expected `array`, got `str` - at `$.documents`"),
        (
            "/v1/rerank",
            {"query": "q", "documents": [1]},
            422,
            "Expected `str | object`, got `int` - at `$.documents[0]`",
        ),
        ("/v1/rerank", {"query": "q", "documents": [{"title": "x"}]}, 422, "documents[0]: a document object needs"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, 422, "Expected `int` >= 0 - at `$.top_n`"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "3"}, 422, "got `str` - at `$.top_n`"),
        (
            "/v1/rerank",
            {"query": "q", "documents": ["a"], "top_n": True},
            422,
            "got `bool` - at `$.top_n`",
        ),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "return_documents": "yes"}, 422, "return_documents"),
        ("/v1/rerank", {"query": "q", "documents": ["a"] * 51}, 413, "at most 50"),
        ("/rerank", {"query": "q", "texts": [{"text": "a"}]}, 422, "Expected `str`, got `object` - at `$.texts[0]`"),
        ("/rerank", {"query": "q"}, 422, "missing required field `documents`"),
        (
            "/v1/rerank",
            {"query": "q", "documents": ["a"], "max_chunks_per_doc": 0},
            422,
            "Expected `int` >= 1 - at `$.max_chunks_per_doc`",
        ),
        (
            "/v1/rerank",
            {"query": "q", "documents": ["a"], "rank_fields": []},
            422,
            "of length >= 1 - at `$.rank_fields`",
        ),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "rank_fields": ["title"]}, 422, "needs object documents"),
        ("/v1/rerank", {"query": "q", "documents": [{"text": "a"}], "rank_fields": ["title"]}, 422, "no field 'title'"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "truncate_prompt_tokens": 0}, 422, "truncate_prompt_tokens"),
        (
            "/v1/rerank",
            {"query": "q", "documents": ["a"], "truncate_prompt_tokens": 5},
            422,
            "the template alone takes",
        ),
        (
            "/v2/rerank",
            {"model": "m", "query": "q", "documents": ["a"], "max_tokens_per_doc": 0},
            422,
            "max_tokens_per_doc",
        ),
    ],
)
def test_hostile_bodies_get_4xx_json(client, path, body, status, fragment) -> None:
    r = _post(client, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"] and set(error) == {"message", "type", "code"}


def test_bare_rerank_takes_the_jina_shape_and_cohere_fields(client, library: Reranker) -> None:
    jina = _post(client, "/rerank", {"model": "m", "query": "what is a cat?", "documents": DOCS, "top_n": 2}).json()
    expected = library.rank("what is a cat?", DOCS, top_k=2, normalize=True)
    assert [r["index"] for r in jina["results"]] == [e.index for e in expected]
    for route in ("/reranking", "/v1/reranking"):  # llama.cpp's routes
        assert _post(client, route, {"query": "q", "texts": DOCS}).status_code == 200
    objects = [{"title": "Cats", "body": "a cat is a feline", "id": 7}, {"title": "Fruit", "body": "bananas", "id": 8}]
    ranked = _post(client, "/v1/rerank", {"query": "q", "documents": objects, "rank_fields": ["title", "body"]}).json()
    texts = ["title: Cats\nbody: a cat is a feline", "title: Fruit\nbody: bananas"]
    expected = library.rank("q", texts, normalize=True)
    assert [r["index"] for r in ranked["results"]] == [e.index for e in expected]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in ranked["results"]], [e.score for e in expected], atol=1e-6
    )
    assert ranked["results"][0]["document"] == objects[expected[0].index]  # echoed whole
    long_doc = "word " * 300
    cut = _post(client, "/v1/rerank", {"query": "q", "documents": [long_doc], "truncate_prompt_tokens": 150}).json()
    budget = 150 - library.model.template_tokens
    assert cut["usage"]["prompt_tokens"] == 150
    expected_score = library.model.normalize(
        library.model.score_encoded(library.model.encode(["q"], [long_doc], max_length=budget).input_ids)
    )
    np.testing.assert_allclose(cut["results"][0]["relevance_score"], expected_score[0], atol=1e-6)


def test_oversized_body_and_unknown_routes(client) -> None:
    big = json.dumps({"query": "q", "documents": ["x" * (10 * 1024 * 1024)]})
    r = _post(client, "/v1/rerank", big)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert client.get("/v1/rerank").status_code == 405
    missing = client.get("/nope")
    assert missing.status_code == 404 and "error" in missing.json()


@pytest.mark.openvino
def test_health_models_metrics(client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and len(models["data"]) == 1
    assert models["data"][0]["family"] == "mxbai-rerank-v2"
    _post(client, "/v1/rerank", {"query": "q", "documents": ["a", "b"]})
    text = client.get("/metrics").text
    assert 'rerank_requests_total{endpoint="/v1/rerank",status="200"}' in text
    assert "rerank_request_seconds_bucket" in text and "rerank_batch_pairs_count" in text
    assert "rerank_queue_pairs 0.0" in text
    tokens = [line for line in text.splitlines() if line.startswith("rerank_tokens_total ")]
    assert float(tokens[0].split()[1]) > 0
    assert "process_resident_memory_bytes" in text  # prometheus_client's process collector
    model = models["data"][0]
    assert model["backend"]["name"] in ("onnxruntime", "openvino") and model["backend"]["cpu_class"]


def test_concurrent_clients_each_get_their_own_answer(server: Server, library: Reranker) -> None:
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "fish", "river", "bank", "money", "tree", "sun", "moon", "star", "rain"]
    jobs = []
    for i in range(12):
        query = f"query {i} " + " ".join(rng.choice(words, 3))
        docs = [" ".join(rng.choice(words, int(rng.integers(1, 30)))) for _ in range(int(rng.integers(1, 9)))]
        jobs.append((query, docs))

    def call(job):
        query, docs = job
        return _post(server, "/v1/rerank", {"query": query, "documents": docs, "return_documents": False}).json()

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(call, jobs))
    for (query, docs), answer in zip(jobs, answers):
        expected = library.predict([query] * len(docs), docs, normalize=True)
        got = {x["index"]: x["relevance_score"] for x in answer["results"]}
        assert sorted(got) == list(range(len(docs)))
        np.testing.assert_allclose([got[i] for i in range(len(docs))], expected, atol=1e-5)


def test_api_key(fp32_artifact: Path) -> None:
    server = Server(fp32_artifact, env={"RERANK_ONNX_API_KEY": "s3cret"})
    try:
        body = {"query": "q", "documents": ["a"]}
        assert _post(server, "/v1/rerank", body).status_code == 401
        wrong = _post(server, "/v1/rerank", body, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        assert _post(server, "/v1/rerank", body, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
    finally:
        assert server.stop() == 0


def _wait_for_queued_pairs(server: Server, deadline_s: float = 60.0) -> None:
    """Poll /metrics until the inference queue holds pairs (an event, not a guess at timing)."""
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        text = httpx.get(server.url + "/metrics").text
        line = next(line for line in text.splitlines() if line.startswith("rerank_queue_pairs "))
        if float(line.split()[1]) > 0:
            return
    raise AssertionError("no request reached the inference queue")


def test_sigterm_finishes_in_flight_requests(fp32_artifact: Path) -> None:
    server = Server(fp32_artifact)
    docs = [
        f"word {i} " * 300 for i in range(40)
    ]  # ~4 s of work per request: long enough to be in flight when the signal lands
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_post, server, "/v1/rerank", {"query": f"q{i}", "documents": docs}) for i in range(4)]
        _wait_for_queued_pairs(server)  # the signal lands while pairs are queued or running
        in_flight = sum(not f.done() for f in futures)
        server.process.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert in_flight > 0
    assert [r.status_code for r in responses] == [200] * 4
    assert all(len(r.json()["results"]) == 40 for r in responses)
    assert server.process.wait(timeout=60) == 0


def test_official_cohere_client_talks_to_the_server(server: Server, library: Reranker) -> None:
    import cohere  # the dev extra installs it

    v2 = cohere.ClientV2(api_key="unused", base_url=server.url)
    response = v2.rerank(model="mxbai", query="what is a cat?", documents=DOCS, top_n=2)
    expected = library.rank("what is a cat?", DOCS, normalize=True, top_k=2)
    assert [r.index for r in response.results] == [e.index for e in expected]
    np.testing.assert_allclose([r.relevance_score for r in response.results], [e.score for e in expected], atol=1e-6)
    v1 = cohere.Client(api_key="unused", base_url=server.url)
    response = v1.rerank(model="mxbai", query="what is a cat?", documents=DOCS, top_n=3, return_documents=True)
    assert [r.index for r in response.results] == [e.index for e in library.rank("what is a cat?", DOCS, top_k=3)]
    assert response.results[0].document.text == DOCS[response.results[0].index]


def test_langchain_cohere_rerank_talks_to_the_server(server: Server, library: Reranker) -> None:
    from langchain_cohere import CohereRerank  # the dev extra installs it
    from langchain_core.documents import Document

    compressor = CohereRerank(base_url=server.url, cohere_api_key="unused", model="mxbai", top_n=3)
    documents = [Document(page_content=text, metadata={"position": i}) for i, text in enumerate(DOCS)]
    kept = compressor.compress_documents(documents, "what is a cat?")
    expected = library.rank("what is a cat?", DOCS, normalize=True, top_k=3)
    assert [d.metadata["position"] for d in kept] == [e.index for e in expected]
    np.testing.assert_allclose([d.metadata["relevance_score"] for d in kept], [e.score for e in expected], atol=1e-6)
    records = [{"title": "Cats", "body": DOCS[0]}, {"title": "Fruit", "body": DOCS[1]}]
    ranked = compressor.rerank(records, "what is a cat?", rank_fields=["title"], top_n=None)
    texts = ["title: Cats\n", "title: Fruit\n"]  # LangChain sends the chosen fields as YAML text
    assert [r["index"] for r in ranked] == [e.index for e in library.rank("what is a cat?", texts)]


def test_llama_index_tei_postprocessor_talks_to_the_server(server: Server, library: Reranker) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # the dev extra installs them
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    postprocessor = TextEmbeddingInference(base_url=server.url, top_n=3)
    nodes = [NodeWithScore(node=TextNode(text=text, id_=str(i)), score=0.0) for i, text in enumerate(DOCS)]
    kept = postprocessor.postprocess_nodes(nodes, query_bundle=QueryBundle("what is a cat?"))
    expected = library.rank("what is a cat?", DOCS, normalize=True, top_k=3)
    assert [int(n.node.id_) for n in kept] == [e.index for e in expected]
    np.testing.assert_allclose([n.score for n in kept], [e.score for e in expected], atol=1e-6)


@pytest.mark.subprocess
def test_missing_server_extra_names_the_install_command() -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "try:\n"
        "    import rerank_onnx.server\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'rerank-onnx[server]'" in out


def _in_process(app, requests):
    """Run `requests(client)` against the ASGI app in this process, lifespan included, once the model is ready."""
    import asyncio

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://rerank.test") as client:
                while (await client.get("/health")).status_code != 200:  # the loader thread finishes
                    await asyncio.sleep(0)
                return await requests(client)

    return asyncio.run(main())


def test_an_engine_fault_answers_500_json_and_is_counted(fp32_artifact: Path) -> None:
    from rerank_onnx.server import ServerSettings, create_app

    class Broken(FakeSession):
        def score(self, batch: ScoreBatch) -> np.ndarray:
            raise RuntimeError("engine fault")

    app = create_app(ServerSettings(model_dir=str(fp32_artifact)), reranker=Reranker(fp32_artifact, session=Broken()))

    async def requests(client):
        response = await client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
        return response, (await client.get("/metrics")).text

    response, metrics = _in_process(app, requests)
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert 'rerank_requests_total{endpoint="/v1/rerank",status="500"} 1.0' in metrics


def test_a_body_over_the_limit_without_content_length_gets_413(fp32_artifact: Path) -> None:
    from rerank_onnx.server import ServerSettings, create_app

    settings = ServerSettings(model_dir=str(fp32_artifact), max_body_bytes=1000)
    app = create_app(settings, reranker=Reranker(fp32_artifact))

    async def chunks():
        for _ in range(10):
            yield b" " * 500

    async def requests(client):
        return await client.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})

    response = _in_process(app, requests)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "exceeds the 1000-byte limit" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        (
            b'{"query": "q", "documents": [{"text": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}",
            400,
            "nested too deeply",
        ),
        (b"[" * 100_000 + b"]" * 100_000, 422, "Expected `object`, got `array`"),
        (b'{"query": "a\\ud800b", "documents": ["x"]}', 400, "not valid JSON"),
        (b'{"query": "q", "texts": ["x\\udfff"]}', 400, "surrogate"),
    ],
)
def test_hostile_text_gets_4xx_in_process(fp32_artifact: Path, body: bytes, status: int, fragment: str) -> None:
    from rerank_onnx.server import ServerSettings, create_app

    app = create_app(ServerSettings(model_dir=str(fp32_artifact)), reranker=Reranker(fp32_artifact))
    path = "/rerank" if b"texts" in body else "/v1/rerank"

    async def requests(client):
        return await client.post(path, content=body, headers={"content-type": "application/json"})

    response = _in_process(app, requests)
    assert response.status_code == status and fragment in response.json()["error"]["message"]


@pytest.mark.subprocess
def test_a_corrupt_tokenizer_is_an_error_everywhere(tmp_path: Path, fp32_artifact: Path) -> None:
    import shutil

    from rerank_onnx.errors import ModelLoadError
    from rerank_onnx.server import ServerSettings, create_app

    broken = tmp_path / "artifact"
    shutil.copytree(fp32_artifact, broken)
    size = (broken / "tokenizer.json").stat().st_size
    (broken / "tokenizer.json").write_bytes(b"x" * size)  # same size: only its sha256 tells
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json: its sha256 .* damaged"):
        Reranker(broken)
    app = create_app(ServerSettings(model_dir=str(broken)))

    async def requests(client):
        import asyncio

        while (await client.get("/health")).json()["status"] == "loading":
            await asyncio.sleep(0)
        return await client.get("/health"), await client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://rerank.test") as client:
                return await requests(client)

    import asyncio

    health, rerank = asyncio.run(main())
    assert health.status_code == 503 and health.json()["status"] == "error"
    assert "tokenizer.json: its sha256" in health.json()["error"]
    assert rerank.status_code == 503 and "tokenizer.json: its sha256" in rerank.json()["error"]["message"]
    cli = subprocess.run(
        [sys.executable, "-m", "rerank_onnx.cli", "rank", str(broken), "--query", "q", "-"],
        input="a\n",
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2 and cli.stderr.startswith("error: ") and "tokenizer.json: its sha256" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1


def test_an_unreadable_tokenizer_that_matches_its_digest_is_named(tmp_path: Path, fp32_artifact: Path) -> None:
    import json
    import shutil

    from rerank_onnx.artifact import CONFIG_FILE, file_digest
    from rerank_onnx.errors import ModelLoadError

    broken = tmp_path / "artifact"
    shutil.copytree(fp32_artifact, broken)
    (broken / "tokenizer.json").write_bytes(b"x" * 100)
    config = json.loads((broken / CONFIG_FILE).read_text())
    config["files"]["tokenizer.json"] = file_digest(broken / "tokenizer.json")  # consistent, but no tokenizer
    (broken / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="cannot read the tokenizer"):
        Reranker(broken)


def test_a_client_that_leaves_mid_body_is_counted_without_a_traceback(fp32_artifact: Path, caplog) -> None:
    import asyncio

    from rerank_onnx.server import ServerSettings, create_app

    app = create_app(ServerSettings(model_dir=str(fp32_artifact)), reranker=Reranker(fp32_artifact))
    sent: list[dict] = []

    async def main():
        async with app.router.lifespan_context(app):
            messages = iter([{"type": "http.request", "body": b'{"query": "q", ', "more_body": True},
                             {"type": "http.disconnect"}])  # fmt: skip

            async def receive():
                return next(messages)

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": "/v1/rerank", "headers": [], "query_string": b"",
                     "http_version": "1.1", "scheme": "http", "server": ("test", 80), "client": ("test", 1),
                     "root_path": "", "raw_path": b"/v1/rerank"}  # fmt: skip
            with caplog.at_level("INFO", logger="rerank_onnx.server"):
                await app(scope, receive, send)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://rerank.test") as client:
                return (await client.get("/metrics")).text

    metrics = asyncio.run(main())
    assert 'rerank_requests_total{endpoint="/v1/rerank",status="499"} 1.0' in metrics
    assert "client disconnected" in caplog.text and "Traceback" not in caplog.text


def test_openapi_document_is_valid_and_covers_every_route(fp32_artifact: Path) -> None:
    from openapi_spec_validator import validate
    from starlette.routing import Route

    from rerank_onnx.server import ServerSettings, create_app

    app = create_app(ServerSettings(model_dir=str(fp32_artifact)), reranker=Reranker(fp32_artifact))

    async def requests(client):
        return await client.get("/openapi.json")

    document = _in_process(app, requests).json()
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    routes = {route.path for route in app.routes if isinstance(route, Route)}
    assert routes == set(document["paths"])
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        assert "requestBody" in document["paths"][path]["post"]
