"""The Lambda-style handler on simulated API Gateway events."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rerank_onnx import Reranker

DOCS = ["a cat is a feline", "bananas", "le chat"]


@pytest.fixture()
def handler(fp32_artifact: Path, monkeypatch):
    import rerank_onnx.serverless as serverless

    monkeypatch.setenv("RERANK_ONNX_MODEL", str(fp32_artifact))
    monkeypatch.setattr(serverless, "_loaded", None)
    return serverless.handler


def test_api_gateway_v1_event(handler, fp32_artifact: Path) -> None:
    event = {
        "httpMethod": "POST",
        "path": "/v1/rerank",
        "isBase64Encoded": False,
        "body": json.dumps({"query": "what is a cat?", "documents": DOCS, "top_n": 2}),
    }
    response = handler(event, None)
    assert response["statusCode"] == 200 and response["headers"]["content-type"] == "application/json"
    body = json.loads(response["body"])
    expected = Reranker(fp32_artifact).rank("what is a cat?", DOCS, top_k=2, normalize=True)
    assert [r["index"] for r in body["results"]] == [e.index for e in expected]
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [e.score for e in expected], atol=1e-6)


def test_http_api_v2_event_with_base64_body_and_other_shapes(handler) -> None:
    payload = json.dumps({"model": "m", "query": "q", "documents": DOCS}).encode()
    event = {"rawPath": "/v2/rerank", "isBase64Encoded": True, "body": base64.b64encode(payload).decode()}
    body = json.loads(handler(event, None)["body"])
    assert body["meta"]["api_version"]["version"] == "2" and len(body["results"]) == 3
    tei = json.loads(
        handler({"path": "/rerank", "body": json.dumps({"query": "q", "texts": DOCS, "raw_scores": True})})["body"]
    )
    assert isinstance(tei, list) and len(tei) == 3


@pytest.mark.parametrize(
    "body,status",
    [
        ("{oops", 400),
        ("[]", 422),
        (json.dumps({"query": "q"}), 422),
        (None, 400),
        (json.dumps({"query": "q", "documents": [3]}), 422),
    ],
)
def test_bad_events_get_4xx(handler, body, status) -> None:
    response = handler({"path": "/v1/rerank", "body": body}, None)
    assert response["statusCode"] == status
    assert set(json.loads(response["body"])["error"]) == {"message", "type", "code"}


def test_missing_model_setting_is_a_clear_500(monkeypatch) -> None:
    import rerank_onnx.serverless as serverless

    monkeypatch.delenv("RERANK_ONNX_MODEL", raising=False)
    monkeypatch.setattr(serverless, "_loaded", None)
    response = serverless.handler({"body": json.dumps({"query": "q", "documents": ["a"]})})
    assert response["statusCode"] == 500 and "RERANK_ONNX_MODEL" in response["body"]


@pytest.mark.subprocess
def test_cold_container_on_a_read_only_copy(fp32_artifact: Path, tmp_path: Path) -> None:
    """A fresh process with the artifact read-only, preloading at import as a container's init does."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(fp32_artifact, model)
    for path in [model, *model.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    code = (
        "import json, rerank_onnx.serverless as s\n"
        "print(s.handler({'body': json.dumps({'query': 'q', 'documents': ['a', 'b']})})['statusCode'])\n"
    )
    env = {**os.environ, "RERANK_ONNX_MODEL": str(model), "RERANK_ONNX_PRELOAD": "1", "HOME": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "200"
    # root ignores file modes, so also check that nothing was written beside the model
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in fp32_artifact.iterdir())


@pytest.mark.parametrize(
    "event,status,fragment",
    [
        ({"path": "/v1/rerank", "isBase64Encoded": True, "body": "abc"}, 400, "not valid base64"),
        ({"path": "/v1/rerank", "isBase64Encoded": True, "body": "a"}, 400, "not valid base64"),
        ({"path": "/v1/rerank", "body": 12}, 400, "body: expected a string"),
        (
            {"path": "/rerank", "body": '{"query": "q", "texts": [{"x": ' + "[" * 100_000 + "]" * 100_000 + "}]}"},
            400,
            "nested too deeply",
        ),
        ({"path": "/v1/rerank", "body": '{"query": "a\\ud800b", "documents": ["x"]}'}, 400, "lone surrogates"),
        ({"path": "/v1/rerank", "body": '{"query": "q", "documents": ["x\\udfff"]}'}, 400, "surrogate pair"),
        ({"path": "/v1/rerank", "body": "a\ud800b"}, 400, "not valid JSON"),
    ],
)
def test_every_event_gets_a_json_answer(handler, event, status, fragment) -> None:
    response = handler(event, None)
    assert response["statusCode"] == status, response["body"]
    assert fragment in json.loads(response["body"])["error"]["message"]


@pytest.mark.subprocess
def test_a_bad_environment_answers_500_with_the_reason_at_init_and_per_event(fp32_artifact: Path) -> None:
    code = (
        "import json, rerank_onnx.serverless as s\n"
        "r = s.handler({'path': '/v1/rerank', 'body': json.dumps({'query': 'q', 'documents': ['a']})})\n"
        "print(r['statusCode']); print(json.loads(r['body'])['error']['message'])\n"
    )
    env = {
        **os.environ,
        "RERANK_ONNX_MODEL": str(fp32_artifact),
        "RERANK_ONNX_THREADS": "abc",
        "RERANK_ONNX_PRELOAD": "1",
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    status, message = out.stdout.strip().splitlines()
    assert status == "500" and "RERANK_ONNX_THREADS: expected a positive integer, got 'abc'" in message
    assert "Traceback" not in out.stderr
