"""AWS Lambda-style handler: an API Gateway proxy event carrying the same JSON as POST /v1/rerank.

    RERANK_ONNX_MODEL=/opt/model  handler = rerank_onnx.serverless.handler

The model loads once per container, on the first event (or at import when RERANK_ONNX_PRELOAD=1,
so that the load counts as the platform's init phase). RERANK_ONNX_THREADS, RERANK_ONNX_BACKEND and
RERANK_ONNX_PRECISION choose as `rerank-onnx serve` does. Nothing is written to disk unless
RERANK_ONNX_CACHE_DIR names a writable folder for OpenVINO's compiled model, so a read-only
filesystem is fine. The path picks the shape: .../v2/rerank (Cohere v2), .../rerank with `texts`
(TEI); anything else is the Jina / Cohere v1 shape.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
from typing import Any

from .errors import InvalidInputError, ModelLoadError, RerankError
from .model import LoadedModel
from .protocol import RequestError, encode_request, parse_request, render_response, shape_for
from .reranker import Reranker
from .settings import RequestLimits

log = logging.getLogger("rerank_onnx.serverless")
_loaded: LoadedModel | None = None
_limits = RequestLimits()


def _model() -> LoadedModel:
    global _loaded
    if _loaded is None:
        folder = os.environ.get("RERANK_ONNX_MODEL")
        if not folder:
            raise RequestError(
                500, "RERANK_ONNX_MODEL is not set: point it at the artifact folder", type="server_error"
            )
        threads = os.environ.get("RERANK_ONNX_THREADS") or None
        if threads is not None and not threads.isdigit():
            raise RequestError(
                500,
                f"RERANK_ONNX_THREADS: expected a positive integer, got {threads!r}; fix the function's environment",
                type="server_error",
            )
        try:
            _loaded = Reranker(
                folder,
                threads=int(threads) if threads else None,
                backend=os.environ.get("RERANK_ONNX_BACKEND", "auto"),  # type: ignore[arg-type]
                precision=os.environ.get("RERANK_ONNX_PRECISION", "auto"),  # type: ignore[arg-type]
                compile_cache=bool(os.environ.get("RERANK_ONNX_CACHE_DIR")),
            ).model
        except InvalidInputError as exc:  # a bad setting in the environment is the deployment's error
            raise RequestError(500, f"the function's environment: {exc}", type="server_error") from exc
    return _loaded


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Answer one API Gateway proxy event; every event gets a {statusCode, headers, body} answer.

    Args:
        event: the proxy event (REST or HTTP API), its body the JSON of a rerank request.
        context: the platform's context object (unused).

    Returns:
        The proxy response: 200 with the rerank body, 4xx for a bad request, 5xx for a server fault.
    """
    started = time.perf_counter()
    try:
        if not isinstance(event, dict):
            raise RequestError(
                400, f"event: expected an API Gateway proxy event (an object), got {type(event).__name__}"
            )
        body = _body_bytes(event)
        path = str(event.get("rawPath") or event.get("path") or "")
        request = parse_request(body, shape_for(path, body), _limits)
        model = _model()
        prepared = encode_request(request, model, _limits)
        raw_scores = model.score_encoded(prepared.input_ids, document_starts=prepared.document_starts)
        payload = render_response(request, model, prepared, raw_scores, model_name=model.config.source_model)
        return _respond(200, payload, started)
    except RequestError as exc:
        return _respond(exc.status, exc.body(), started)
    except ModelLoadError as exc:  # input errors were mapped to 4xx by parse_request/prepare
        return _respond(500, RequestError(500, str(exc), type="server_error").body(), started)
    except Exception as exc:  # a bug or an engine fault: logged once, answered as JSON
        log.error("unexpected error", exc_info=exc)
        error = RequestError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return _respond(500, error.body(), started)


def _body_bytes(event: dict[str, Any]) -> bytes:
    """The request body as bytes: plain text, or base64 when the event says so."""
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, (str, bytes)):
        raise RequestError(400, f"body: expected a string (JSON text, or base64 of it), got {type(body).__name__}")
    encoded = event.get("isBase64Encoded", False)
    if encoded is not None and not isinstance(encoded, bool):
        raise RequestError(
            400,
            f"isBase64Encoded: expected true or false, got {type(encoded).__name__} {encoded!r}; send a JSON boolean",
        )
    if not encoded:
        return body.encode("utf-8", errors="surrogatepass") if isinstance(body, str) else body
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"body: isBase64Encoded is true but the body is not valid base64 ({exc})") from exc


def _respond(status: int, payload: Any, started: float) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {
            "content-type": "application/json",
            "x-total-time": f"{(time.perf_counter() - started) * 1000:.1f}",
        },
        # strict JSON: the request decoder refused every value that could not be written so (NaN, lone surrogates)
        "body": json.dumps(payload, ensure_ascii=False, allow_nan=False),
        "isBase64Encoded": False,
    }


if os.environ.get("RERANK_ONNX_PRELOAD") == "1":
    try:
        _model()
    except RerankError as exc:  # the init phase must not crash: every event then answers 500 with the reason
        log.error("cannot load the model at init: %s", exc)
