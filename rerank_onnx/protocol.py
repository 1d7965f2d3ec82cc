"""The rerank wire formats clients already speak, parsed and answered without any web framework.

Shared by the HTTP server and the serverless handler. Three request shapes:
  Jina / Cohere v1 / vLLM   POST /v1/rerank   {query, documents, top_n, return_documents, model}
  Cohere v2                 POST /v2/rerank   {model, query, documents, top_n, max_tokens_per_doc}
  Hugging Face TEI          POST /rerank      {query, texts, raw_scores, return_text, truncate}
plus `instruction`, passed to the model's instruction slot. Scores are relevance in [0, 1] (the
model's normalization) except for TEI with raw_scores=true, which gets logit("1") - logit("0").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from msgspec import UNSET

from .chunking import Chunks
from .errors import RerankError
from .model import LoadedModel
from .settings import RequestLimits
from .wire import (
    REQUESTS,
    Chunk,
    RerankRequest,
    RerankResponse,
    Result,
    Shape,
    TeiRequest,
    TeiResult,
    Usage,
)

_T = TypeVar("_T")


class RequestError(RerankError):
    """A request the server refuses; carries its HTTP status and an OpenAI-style error type."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code or {
            400: "bad_request",
            401: "unauthorized",
            413: "too_large",
            422: "invalid_value",
            429: "overloaded",
            503: "unavailable",
        }.get(status, "error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "code": self.code}}


def shape_for(path: str, body: bytes) -> Shape:
    """The request dialect: Cohere v2 by its path; TEI when the body has `texts` and no `documents`;
    otherwise Jina / Cohere v1 / vLLM, which several clients also post to a bare /rerank.

    Raises:
        RequestError: 400 for a body that is not JSON, 422 for one that is not an object.
    """
    if path.rstrip("/").endswith("/v2/rerank"):
        return "v2"
    keys = _decode(body, dict[str, msgspec.Raw])  # the top-level keys, their values left undecoded
    return "tei" if "texts" in keys and "documents" not in keys else "v1"


def parse_request(body: bytes, shape: Shape, limits: RequestLimits) -> RerankRequest:
    """Decode a request body of dialect `shape` into its wire model (wire.py), and check what spans fields.

    Args:
        body: the raw JSON body.
        shape: the dialect (`shape_for`).
        limits: the server's per-request limits.

    Returns:
        The request as its wire model; every shape reads alike through `wire.RerankBody`.

    Raises:
        RequestError: 400 for malformed JSON or invalid UTF-8 (NaN, Infinity and lone surrogate escapes
            included); 422 naming the field for wrong types, missing fields or values out of range; 413 for
            more documents or characters than `limits` allow.
    """
    request = _decode(body, REQUESTS[shape])
    _check_sizes(document_texts(request), limits)
    return request


_SCHEMA_FIX = "fix: send the request as GET /openapi.json declares it"


def _decode(body: bytes, model: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as exc:
        raise RequestError(422, f"invalid request: {exc}; {_SCHEMA_FIX}") from exc
    except RecursionError as exc:  # msgspec's guard against deep nesting (an echoed object's values are free)
        raise RequestError(400, "request body is nested too deeply to parse; send a flat rerank request") from exc
    except msgspec.DecodeError as exc:
        raise RequestError(
            400, f"request body is not valid JSON ({exc}); send UTF-8 JSON (no NaN, Infinity or lone surrogates)"
        ) from exc


def document_texts(request: RerankRequest) -> list[str]:
    """The text each document is scored on: a string as is, an object's `text`, or with Cohere v1's
    rank_fields the named fields as "field: value" lines, in rank_fields' order."""
    sent = request.sent_documents
    rank_fields = request.rank_fields
    if rank_fields is None:
        return [_text(item, f"documents[{i}]") for i, item in enumerate(sent)]
    texts = []
    for i, item in enumerate(sent):
        if not isinstance(item, dict):
            raise RequestError(422, f"documents[{i}]: rank_fields needs object documents, got {_json_type(item)}")
        missing = [name for name in rank_fields if name not in item]
        if missing:
            raise RequestError(422, f"documents[{i}]: has no field {missing[0]!r} named in rank_fields")
        texts.append("\n".join(f"{name}: {_field_text(item[name], i, name)}" for name in rank_fields))
    return texts


def _field_text(value: Any, index: int, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RequestError(422, f"documents[{index}].{name}: expected a string or number, got {_json_type(value)}")
    return str(value)


def _check_sizes(documents: list[str], limits: RequestLimits) -> None:
    if len(documents) > limits.max_documents:
        raise RequestError(
            413,
            f"{len(documents)} documents in one request; this server takes at most {limits.max_documents}: "
            "split the request",
            code="too_many_documents",
        )
    for i, document in enumerate(documents):
        if len(document) > limits.max_document_chars:
            raise RequestError(
                413,
                f"document {i} has {len(document)} characters; the limit is {limits.max_document_chars}",
                code="document_too_long",
            )


def build_response(
    request: RerankRequest,
    scores: list[float],
    order: list[int],
    *,
    model_name: str,
    prompt_tokens: int,
    chunks: list[Chunk] | None = None,
) -> Any:
    """The response body (wire.py's models, as JSON-ready builtins); `order`: indices best first, cut to top_n."""
    if isinstance(request, TeiRequest):
        return msgspec.to_builtins(
            [
                TeiResult(index=i, score=scores[i], text=request.texts[i] if request.return_documents else UNSET)
                for i in order
            ]
        )
    results = []
    for i in order:
        document: Any = UNSET
        if request.return_documents:
            original = request.sent_documents[i]
            document = original if isinstance(original, dict) else {"text": original}
        chunk = chunks[i] if chunks is not None else UNSET
        results.append(Result(index=i, relevance_score=scores[i], document=document, chunk=chunk))
    version = "2" if request.shape == "v2" else "1"
    response = RerankResponse(
        id=str(uuid.uuid4()),
        model=request.model or model_name,
        results=results,
        usage=Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        meta={"api_version": {"version": version}, "billed_units": {"search_units": 1}},
    )
    return msgspec.to_builtins(response)


def _text(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    text = item.get("text")
    if isinstance(text, str):
        return text
    raise RequestError(422, f"{where}: a document object needs a string field 'text', got {_json_type(text)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@dataclass(frozen=True)
class Prepared:
    input_ids: list[list[int]]
    prompt_tokens: int
    document_starts: list[int]  # EncodedPairs.document_starts: lets the pairs of the query share their prefix
    chunks: Chunks | None = None  # with max_chunks_per_doc: which document and span each row scores


def encode_request(request: RerankRequest, model: LoadedModel, limits: RequestLimits) -> Prepared:
    """Tokenize a parsed request and apply the token limits (model: `Reranker.model`)."""
    from .errors import InvalidInputError

    pair_budget = None
    if request.max_prompt_tokens is not None:
        pair_budget = request.max_prompt_tokens - model.template_tokens
        if pair_budget < 1:
            raise RequestError(
                422,
                f"truncate_prompt_tokens: the template alone takes {model.template_tokens} tokens; "
                f"expected more than that, got {request.max_prompt_tokens}",
            )
    documents = document_texts(request)
    try:
        encoded = model.encode(
            [request.query] * len(documents),
            documents,
            instruction=request.instruction,
            max_document_tokens=request.max_tokens_per_doc,
            max_length=pair_budget,
            max_chunks_per_doc=request.max_chunks_per_doc,
        )
    except InvalidInputError as exc:
        raise RequestError(422, str(exc)) from exc
    truncated = encoded.pair_truncated()
    if not request.truncate and any(truncated):
        first = truncated.index(True)
        raise RequestError(
            413,
            f"texts[{first}]: query + text exceed the model's {model.max_length}-token limit; "
            "send truncate=true to cut it, or shorten it",
            code="input_too_long",
        )
    prompt_tokens = sum(len(ids) for ids in encoded.input_ids)
    if prompt_tokens > limits.max_request_tokens:
        raise RequestError(
            413,
            f"the request needs {prompt_tokens} prompt tokens; the limit is {limits.max_request_tokens}",
            code="too_many_tokens",
        )
    return Prepared(encoded.input_ids, prompt_tokens, encoded.document_starts, encoded.chunks)


def render_response(
    request: RerankRequest, model: LoadedModel, prepared: Prepared, raw_scores: Any, *, model_name: str
) -> Any:
    """Scores -> the response body of the request's shape: sorted best first, cut to top_n."""
    from .ranking import pair_scores

    pairs = pair_scores(raw_scores, prepared.chunks, normalize=None if request.raw_scores else model.normalize)
    chunks = None
    if prepared.chunks is not None:  # rows are chunks: each document took its best chunk's score
        chunks = []
        for span, count, complete in zip(pairs.spans, pairs.chunks, pairs.complete):
            assert span is not None  # every pair of a chunked request has a winning chunk
            chunks.append(Chunk(span[0], span[1], count, complete))
    return build_response(
        request,
        [float(s) for s in pairs.scores],
        pairs.order(request.top_n or None),  # 0: all
        model_name=model_name,
        prompt_tokens=prepared.prompt_tokens,
        chunks=chunks,
    )
