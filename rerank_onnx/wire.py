"""The rerank wire formats as declared models (msgspec): what each route takes and answers, and the
OpenAPI document built from them.

msgspec rather than pydantic: the serverless handler pays the import on every cold start (msgspec's is the
lighter), and msgspec decodes the body straight into these models, checks types and ranges (`Meta`) and
writes the JSON Schema from the same declarations. It also refuses what a rerank request cannot carry: NaN and
Infinity (not JSON), numbers out of range, lone surrogate escapes, invalid UTF-8. The checks that need more
than one field (rank_fields against the documents, limits) are in protocol.py.

The three request shapes spell some settings differently (`return_text` / `return_documents`) or not at all
(TEI has no top_n, Cohere v2 no max_chunks_per_doc); each model answers the same names (a field, a property or
a class constant: query, model, instruction, sent_documents, rank_fields, top_n, return_documents, raw_scores,
truncate, max_tokens_per_doc, max_chunks_per_doc, max_prompt_tokens), so the layers after parsing read any
`RerankRequest` alike.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

Document = str | dict[str, Any]  # a string, or an object whose `text` (or rank_fields) is scored and echoed back
Shape = Literal["v1", "v2", "tei"]

TopN = Annotated[int, Meta(ge=0, description="how many results to return, best first; 0 or absent: all")]
Positive = Annotated[int, Meta(ge=1)]
PromptCap = Annotated[int, Meta(ge=-1, description="tokens for the whole prompt, template included; -1: no cap")]


def _prompt_cap(value: int | None) -> int | None:
    if value == 0:
        raise ValueError("truncate_prompt_tokens: expected a positive integer or -1 (no cap), got 0")
    return value if value is not None and value > 0 else None


class _DocumentsRequest(msgspec.Struct, kw_only=True):
    """What the Jina / Cohere shapes share: `documents` (strings or objects) and vLLM's prompt cap."""

    query: str
    documents: list[Document]
    truncate_prompt_tokens: PromptCap | None = None  # vLLM
    instruction: str | None = None
    raw_scores: ClassVar[bool] = False
    truncate: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _prompt_cap(self.truncate_prompt_tokens)

    @property
    def sent_documents(self) -> list[Document]:
        return self.documents

    @property
    def max_prompt_tokens(self) -> int | None:
        return _prompt_cap(self.truncate_prompt_tokens)


class JinaRequest(_DocumentsRequest, kw_only=True):
    """POST /v1/rerank (and /rerank with `documents`): Jina, Cohere v1, vLLM, llama.cpp."""

    shape: ClassVar[Shape] = "v1"
    model: str | None = None
    top_n: TopN | None = None
    return_documents: bool = True
    rank_fields: Annotated[list[str], Meta(min_length=1)] | None = None  # Cohere v1: object fields scored, in order
    max_chunks_per_doc: Positive | None = None  # Cohere v1: score a long document by up to this many chunks
    max_tokens_per_doc: ClassVar[int | None] = None


class CohereV2Request(_DocumentsRequest, kw_only=True):
    """POST /v2/rerank: Cohere v2 (and vLLM's /v2/rerank)."""

    shape: ClassVar[Shape] = "v2"
    model: str
    top_n: TopN | None = None
    max_tokens_per_doc: Positive | None = None
    return_documents: bool = False
    rank_fields: ClassVar[list[str] | None] = None
    max_chunks_per_doc: ClassVar[int | None] = None


class TeiRequest(msgspec.Struct, kw_only=True):
    """POST /rerank with `texts`: Hugging Face text-embeddings-inference."""

    shape: ClassVar[Shape] = "tei"
    query: str
    texts: list[str]
    model: str | None = None
    truncate: bool = False  # false: a text over the limit gets 413
    truncation_direction: Literal["Right", "right"] = "Right"  # the model's own rule cuts the document's end
    raw_scores: bool = False
    return_text: bool = False
    instruction: str | None = None
    rank_fields: ClassVar[list[str] | None] = None
    top_n: ClassVar[int | None] = None
    max_tokens_per_doc: ClassVar[int | None] = None
    max_chunks_per_doc: ClassVar[int | None] = None
    max_prompt_tokens: ClassVar[int | None] = None

    @property
    def sent_documents(self) -> list[Document]:
        return list(self.texts)

    @property
    def return_documents(self) -> bool:
        return self.return_text


RerankRequest = JinaRequest | CohereV2Request | TeiRequest
REQUESTS: dict[Shape, type[RerankRequest]] = {
    "v1": JinaRequest,
    "v2": CohereV2Request,
    "tei": TeiRequest,
}


class Chunk(msgspec.Struct):
    """With max_chunks_per_doc: the chunk of the document that gave its score (an extension to the API)."""

    start: int  # character offsets [start, end) in the document's text
    end: int
    chunks: int  # chunks scored for this document
    complete: bool  # false: text after the last chunk was not scored (max_chunks_per_doc reached)


class Result(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    relevance_score: float
    document: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    chunk: Chunk | msgspec.UnsetType = msgspec.UNSET


class Usage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(msgspec.Struct, kw_only=True):
    """The Jina / Cohere v1 / v2 / vLLM answer, best first."""

    id: str
    model: str
    results: list[Result]
    usage: Usage
    meta: dict[str, Any]


class TeiResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    score: float
    text: str | msgspec.UnsetType = msgspec.UNSET


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: str


class ErrorResponse(msgspec.Struct):
    """Every 4xx/5xx body."""

    error: ErrorDetail


def openapi_document(title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route the server answers."""
    models: list[Any] = [JinaRequest, CohereV2Request, TeiRequest, RerankResponse, list[TeiResult], ErrorResponse]
    (jina, v2, tei, response, tei_response, error), components = msgspec.json.schema_components(
        models, ref_template="#/components/schemas/{name}"
    )
    errors = {str(status): _json(error, why) for status, why in _ERRORS.items()}

    def rerank(summary: str, body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {"200": _json(answer, "scores, best first"), **errors},
            }
        }

    either = {"oneOf": [jina, tei]}
    either_answer = {"oneOf": [response, tei_response]}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": {
            "/v1/rerank": rerank("Jina / Cohere v1 / vLLM rerank", jina, response),
            "/v2/rerank": rerank("Cohere v2 rerank", v2, response),
            "/rerank": rerank("TEI (`texts`) or Jina (`documents`) rerank", either, either_answer),
            "/reranking": rerank("llama.cpp's name for /rerank", either, either_answer),
            "/v1/reranking": rerank("llama.cpp's name for /rerank", either, either_answer),
            **_service_paths(error),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _service_paths(error: dict[str, Any]) -> dict[str, Any]:
    """The routes beside the rerank ones: health, metrics, models, this document."""
    return {
        "/health": {
            "get": {
                "summary": "200 once the model is loaded, 503 before or on error",
                "responses": {
                    "200": _json({"type": "object"}, "ready"),
                    "503": _json({"type": "object"}, "loading or error"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "the served model, its backend and CPU",
                "responses": {
                    "200": _json({"type": "object"}, "model list"),
                    "401": _json(error, "missing or wrong API key"),
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "this document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}
        },
    }


_ERRORS = {
    400: "malformed JSON or invalid UTF-8",
    401: "missing or wrong API key (with --api-key)",
    413: "too many documents, bytes or tokens",
    422: "wrong types, missing fields or values out of range",
    429: "queue full: retry later",
    503: "model loading or failed to load",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
