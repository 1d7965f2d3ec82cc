"""The rerank wire formats as declared models (msgspec): what each route takes and answers, and the
OpenAPI document built from them.

msgspec rather than pydantic: the serverless handler pays the import on every cold start (msgspec's is the
lighter), and msgspec validates
the decoded body and writes the JSON Schema from the same declarations. Type errors come back in
the project's "field: expected X, got Y" form (`validation_message`); the checks that need more than
types (limits, rank_fields, value ranges) stay in protocol.py.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

Document = str | dict[str, Any]  # a string, or an object whose `text` (or rank_fields) is scored and echoed back


class JinaRequest(msgspec.Struct, kw_only=True):
    """POST /v1/rerank (and /rerank with `documents`): Jina, Cohere v1, vLLM, llama.cpp."""

    query: str
    documents: list[Document]
    model: str | None = None
    top_n: int | None = None  # 0 or absent: all
    return_documents: bool = True
    rank_fields: list[str] | None = None  # Cohere v1: the object fields to score on, in order
    max_chunks_per_doc: int | None = None  # Cohere v1: score a long document by up to this many windows
    truncate_prompt_tokens: int | None = None  # vLLM: cap on the whole prompt; -1 or absent: none
    instruction: str | None = None


class CohereV2Request(msgspec.Struct, kw_only=True):
    """POST /v2/rerank: Cohere v2 (and vLLM's /v2/rerank)."""

    model: str
    query: str
    documents: list[Document]
    top_n: int | None = None
    max_tokens_per_doc: int | None = None
    return_documents: bool = False
    truncate_prompt_tokens: int | None = None
    instruction: str | None = None


class TeiRequest(msgspec.Struct, kw_only=True):
    """POST /rerank with `texts`: Hugging Face text-embeddings-inference."""

    query: str
    texts: list[str]
    model: str | None = None
    truncate: bool = False  # false: a text over the limit gets 413
    truncation_direction: str = "Right"
    raw_scores: bool = False
    return_text: bool = False
    instruction: str | None = None


REQUESTS: dict[str, type[msgspec.Struct]] = {"v1": JinaRequest, "v2": CohereV2Request, "tei": TeiRequest}


class Chunk(msgspec.Struct):
    """With max_chunks_per_doc: the window of the document that gave its score (an extension to the API)."""

    start: int  # character offsets [start, end) in the document's text
    end: int
    windows: int  # windows scored for this document
    complete: bool  # false: text after the last window was not scored (max_chunks_per_doc reached)


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


_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
    "str | object": "a string or an object with a 'text' string",
}
_GOT = {**_WORDS, "int": "a number", "float": "a number"}


def validation_message(error: msgspec.ValidationError) -> str:
    """msgspec's message in the project's form: "documents[0]: expected a string, got a number"."""
    text = str(error)
    missing = re.fullmatch(r"Object missing required field `(\w+)`(?: - at `\$(.*)`)?", text)
    if missing:
        where = (missing.group(2) or "").lstrip(".")
        return f"{where + '.' if where else ''}{missing.group(1)}: required field is missing"
    wrong = re.fullmatch(r"Expected `(.+?)`, got `(\w+)`(?: - at `\$\.?(.*)`)?", text)
    if wrong:
        expected = wrong.group(1).removesuffix(" | null")
        where = wrong.group(3) or "request body"
        return f"{where}: expected {_WORDS.get(expected, expected)}, got {_GOT.get(wrong.group(2), wrong.group(2))}"
    return text


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
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": {
            "/v1/rerank": rerank("Jina / Cohere v1 / vLLM rerank", jina, response),
            "/v2/rerank": rerank("Cohere v2 rerank", v2, response),
            "/rerank": rerank("TEI (`texts`) or Jina (`documents`) rerank", either, either_answer),
            "/reranking": rerank("llama.cpp's name for /rerank", either, either_answer),
            "/v1/reranking": rerank("llama.cpp's name for /rerank", either, either_answer),
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
                    "responses": {"200": {"description": "text exposition format", "content": text}},
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
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
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
