"""AWS Lambda-style handler: an API Gateway proxy event carrying the same JSON as POST /v1/rerank.

    RERANK_ONNX_MODEL=/opt/model  handler = rerank_onnx.serverless.handler

The model loads once per container, on the first event (or at import when RERANK_ONNX_PRELOAD=1,
so that the load counts as the platform's init phase). Nothing is written to disk, so a read-only
filesystem is fine. The path picks the shape: .../v2/rerank (Cohere v2), .../rerank with `texts`
(TEI); anything else is the Jina / Cohere v1 shape.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from .errors import ModelLoadError
from .protocol import Limits, RequestError, finish, parse_json, parse_request, prepare
from .reranker import Reranker

_reranker: Reranker | None = None
_limits = Limits()


def _model() -> Reranker:
    global _reranker
    if _reranker is None:
        folder = os.environ.get("RERANK_ONNX_MODEL")
        if not folder:
            raise RequestError(500, "RERANK_ONNX_MODEL is not set: point it at the artifact folder", type="server_error")
        threads = os.environ.get("RERANK_ONNX_THREADS")
        _reranker = Reranker(folder, threads=int(threads) if threads else None)
    return _reranker


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        body = event.get("body") or b""
        raw = base64.b64decode(body) if event.get("isBase64Encoded") else (body.encode() if isinstance(body, str) else body)
        data = parse_json(raw)
        path = event.get("rawPath") or event.get("path") or ""
        shape = "v2" if path.rstrip("/").endswith("/v2/rerank") else "tei" if "texts" in data else "v1"
        request = parse_request(data, shape, _limits)
        reranker = _model()
        prepared = prepare(request, reranker, _limits)
        raw_scores = reranker.score_encoded(prepared.input_ids, head_lengths=prepared.head_lengths)
        payload = finish(request, reranker, prepared, raw_scores, model_name=reranker.config.source_model)
        return _respond(200, payload, started)
    except RequestError as exc:
        return _respond(exc.status, exc.body(), started)
    except ModelLoadError as exc:  # input errors were mapped to 4xx by parse_request/prepare
        return _respond(500, RequestError(500, str(exc), type="server_error").body(), started)


def _respond(status: int, payload: Any, started: float) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", "x-total-time": f"{(time.perf_counter() - started) * 1000:.1f}"},
        "body": json.dumps(payload, ensure_ascii=False),
        "isBase64Encoded": False,
    }


if os.environ.get("RERANK_ONNX_PRELOAD") == "1":
    _model()
