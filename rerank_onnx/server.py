"""`rerank-onnx serve`: the rerank HTTP API (Jina / Cohere v1 and v2 / vLLM / TEI shapes) on starlette."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .backends.select import machine_summary
from .errors import MissingDependencyError, QueueFullError, RerankError
from .metrics import CONTENT_TYPE, Metrics
from .model import LoadedModel
from .protocol import (
    RequestError,
    encode_request,
    parse_request,
    render_response,
    shape_for,
)
from .reranker import Reranker
from .settings import DEFAULT_HOST, DEFAULT_PORT, ServerSettings

try:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise MissingDependencyError(
        "starlette and uvicorn (the server extra)", "pip install 'rerank-onnx[server]'"
    ) from exc

from . import __version__
from .scheduler import Scheduler
from .wire import RerankRequest, Shape, openapi_document

log = logging.getLogger("rerank_onnx.server")
# nginx's status for a request its client abandoned; it appears only in /metrics and the log
CLIENT_CLOSED_REQUEST = 499


def create_app(settings: ServerSettings, *, reranker: Reranker | None = None) -> Starlette:
    """The ASGI app. The model loads in the background after start-up; /health says when it is ready.

    Args:
        settings: the server's settings (settings.py).
        reranker: a loaded model to serve instead of loading settings.model_dir (tests).

    Returns:
        The Starlette app, its routes those of docs/serving.md.
    """
    service = _Service(settings, reranker)
    routes = [
        Route("/v1/rerank", service.rerank_route("v1"), methods=["POST"]),
        # a bare /rerank speaks TEI (`texts`) or Jina/Cohere/vLLM (`documents`), as vLLM and llama.cpp do
        Route("/rerank", service.rerank_route(None), methods=["POST"]),
        Route("/v2/rerank", service.rerank_route("v2"), methods=["POST"]),
        Route("/reranking", service.rerank_route(None), methods=["POST"]),  # llama.cpp's names
        Route("/v1/reranking", service.rerank_route(None), methods=["POST"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/metrics", service.prometheus, methods=["GET"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/openapi.json", service.openapi, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=service.lifespan,
        middleware=[Middleware(_Counted, metrics=service.metrics, paths=frozenset(route.path for route in routes))],
        exception_handlers={404: _not_found, 405: _not_allowed, Exception: _internal_error},
    )


class _Service:
    """The served model (loaded in the background), its scheduler and metrics, and the route handlers."""

    def __init__(self, settings: ServerSettings, reranker: Reranker | None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.given = reranker
        self.model: LoadedModel | None = None
        self.scheduler: Scheduler | None = None
        self.load_error: str | None = None
        self.model_name = "unknown"
        self.started = int(time.time())

    def load(self) -> None:
        settings = self.settings
        try:
            model = (
                self.given
                or Reranker(
                    settings.model_dir, threads=settings.threads, backend=settings.backend, precision=settings.precision
                )
            ).model
            self.model_name = settings.model_name or model.config.source_model
            self.scheduler = Scheduler(
                model, self.metrics, coalesce_ms=settings.coalesce_ms, max_queue_pairs=settings.max_queue_pairs
            )
            self.model = model
            log.info("model %s ready", self.model_name)
        except Exception as exc:  # any failure: /health and every route say why, instead of "loading" forever
            self.load_error = str(exc) if isinstance(exc, RerankError) else f"{type(exc).__name__}: {exc}"
            log.error("cannot load the model: %s", self.load_error)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        loader = threading.Thread(target=self.load, name="rerank-load", daemon=True)
        loader.start()
        yield
        # Shutdown (SIGTERM): uvicorn has stopped accepting and waited for in-flight requests.
        await asyncio.to_thread(loader.join)
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.close)

    def rerank_route(self, shape: Shape | None) -> Callable[[Request], Awaitable[Response]]:
        settings = self.settings

        async def handle(request: Request) -> Response:
            try:
                _authorize(request, settings.api_key)
                body = await _read_body(request, settings.max_body_bytes)
                parsed = parse_request(body, shape or shape_for(request.url.path, body), settings.limits)
                payload = await self._rerank(parsed)
                response: Response = JSONResponse(payload)
            except QueueFullError as exc:
                error = RequestError(429, str(exc), type="rate_limit_error")
                response = JSONResponse(error.body(), status_code=429, headers=_extra_headers(error))
            except RequestError as exc:
                response = JSONResponse(exc.body(), status_code=exc.status, headers=_extra_headers(exc))
            except ClientDisconnect:  # the client left mid-body: nobody to answer; counted, one line
                log.info("client disconnected before sending its whole request to %s", request.url.path)
                response = Response(status_code=CLIENT_CLOSED_REQUEST)
            except Exception as exc:  # a bug or an engine failure: still a JSON answer, and counted
                response = _internal_error_response(request, exc)
            return response

        return handle

    async def _rerank(self, request: RerankRequest) -> Any:
        if self.load_error is not None:
            raise RequestError(503, f"the model could not be loaded: {self.load_error}", type="server_error")
        if self.model is None or self.scheduler is None:
            raise RequestError(
                503, "the model is still loading; retry when GET /health answers 200", type="server_error"
            )
        limits = self.settings.limits
        # tokenizing a large request takes milliseconds to seconds: keep it off the event loop too
        prepared = await asyncio.to_thread(encode_request, request, self.model, limits)
        raw = await self.scheduler.score(prepared.input_ids, prepared.document_starts)
        return render_response(request, self.model, prepared, raw, model_name=self.model_name)

    async def health(self, request: Request) -> Response:
        if self.model is not None:
            return JSONResponse({"status": "ok", "model": self.model_name})
        if self.load_error:
            return JSONResponse({"status": "error", "error": self.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    async def prometheus(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type=CONTENT_TYPE)

    async def models(self, request: Request) -> Response:
        try:
            _authorize(request, self.settings.api_key)
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=_extra_headers(exc))
        entry: dict[str, Any] = {
            "id": self.model_name,
            "object": "model",
            "created": self.started,
            "owned_by": "rerank-onnx",
        }
        if self.model is not None:
            choice = self.model.backend
            entry["quantization"] = self.model.config.quantization
            entry["family"] = self.model.config.family
            entry["backend"] = {
                "name": choice.backend if choice else "custom",
                "precision": choice.precision if choice else None,
                "reason": choice.reason if choice else None,
                **machine_summary(),
            }
        return JSONResponse({"object": "list", "data": [entry] if self.model is not None else []})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document("rerank-onnx", __version__))


class _Counted:
    """Counts every HTTP response in /metrics by route and status (404, 405 and 401 included); a path that is
    no route counts as "other", so that clients cannot grow the label set."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, paths: frozenset[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes the app is answered 500 by starlette's outermost layer

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            endpoint = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.request(endpoint, status, time.perf_counter() - started)


def _authorize(request: Request, api_key: str | None) -> None:
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise RequestError(
            401, "missing or wrong API key: send 'Authorization: Bearer <key>'", type="authentication_error"
        )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, f"request body of {declared} bytes exceeds the {limit}-byte limit", code="body_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the {limit}-byte limit", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _extra_headers(error: RequestError) -> dict[str, str]:
    if error.status == 401:
        return {"www-authenticate": "Bearer"}
    if error.status in (429, 503):
        return {"retry-after": "1"}
    return {}


async def _not_found(request: Request, exc: Exception) -> Response:
    error = RequestError(404, f"no route {request.url.path}; see /v1/rerank, /v2/rerank, /rerank, /health, /metrics")
    return JSONResponse(error.body(), status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    error = RequestError(405, f"{request.method} is not allowed on {request.url.path}")
    return JSONResponse(error.body(), status_code=405)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _internal_error_response(request, exc)


def _internal_error_response(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    error = RequestError(500, f"internal error: {type(exc).__name__}", type="server_error")
    return JSONResponse(error.body(), status_code=500)


def serve(settings: ServerSettings, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("uvicorn (the server extra)", "pip install 'rerank-onnx[server]'") from exc
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal with the handler that was
    # in place before it started: make that handler a clean exit, so a graceful stop exits 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=60)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
