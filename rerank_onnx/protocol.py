"""The rerank wire formats clients already speak, parsed and answered without any web framework.

Shared by the HTTP server and the serverless handler. Three request shapes:
  Jina / Cohere v1 / vLLM   POST /v1/rerank   {query, documents, top_n, return_documents, model}
  Cohere v2                 POST /v2/rerank   {model, query, documents, top_n, max_tokens_per_doc}
  Hugging Face TEI          POST /rerank      {query, texts, raw_scores, return_text, truncate}
plus `instruction`, passed to the model's instruction slot. Scores are relevance in [0, 1] (the
model's normalization) except for TEI with raw_scores=true, which gets logit("1") - logit("0").
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import RerankError


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


@dataclass(frozen=True)
class Limits:
    max_documents: int = 1000
    max_document_chars: int = 1_000_000
    max_request_tokens: int = 1_000_000


@dataclass(frozen=True)
class RerankRequest:
    shape: str  # "v1" | "v2" | "tei"
    model: str | None
    query: str
    documents: list[str]
    document_objects: list[Any]  # as sent (strings or objects), echoed back in Jina/Cohere v1 results
    top_n: int | None
    return_documents: bool
    raw_scores: bool
    truncate: bool
    max_tokens_per_doc: int | None
    instruction: str | None


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON") from exc
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise RequestError(400, "request body is nested too deeply to parse; send a flat rerank request") from exc
    except json.JSONDecodeError as exc:
        raise RequestError(
            400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    if not isinstance(data, dict):
        raise RequestError(422, f"request body: expected a JSON object, got {_json_type(data)}")
    return data


def parse_request(data: dict[str, Any], shape: str, limits: Limits) -> RerankRequest:
    query = _field(data, "query", str, required=True)
    if shape == "tei":
        raw_documents = _field(data, "texts", list, required=True)
        documents = [_text(item, f"texts[{i}]", allow_object=False) for i, item in enumerate(raw_documents)]
    else:
        raw_documents = _field(data, "documents", list, required=True)
        documents = [_text(item, f"documents[{i}]", allow_object=True) for i, item in enumerate(raw_documents)]
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
    top_n = _field(data, "top_n", int, required=False)
    if top_n is not None and top_n < 0:
        raise RequestError(422, f"top_n: expected a non-negative integer, got {top_n}")
    if top_n == 0 and shape != "tei":
        top_n = None  # vLLM: 0 means all
    max_tokens = _field(data, "max_tokens_per_doc", int, required=False) if shape == "v2" else None
    if max_tokens is not None and max_tokens < 1:
        raise RequestError(422, f"max_tokens_per_doc: expected a positive integer, got {max_tokens}")
    model = _field(data, "model", str, required=shape == "v2")
    if shape == "tei":
        return_documents = bool(_field(data, "return_text", bool, required=False, default=False))
        direction = _field(data, "truncation_direction", str, required=False, default="Right")
        if direction not in ("Right", "right"):
            raise RequestError(
                422, f"truncation_direction: only 'Right' is supported (the model's own rule), got {direction!r}"
            )
    else:
        return_documents = bool(_field(data, "return_documents", bool, required=False, default=shape == "v1"))
    return RerankRequest(
        shape=shape,
        model=model,
        query=query,
        documents=documents,
        document_objects=list(raw_documents),
        top_n=top_n,
        return_documents=return_documents,
        raw_scores=bool(_field(data, "raw_scores", bool, required=False, default=False)) if shape == "tei" else False,
        # TEI refuses over-long input unless truncate=true; the Cohere/Jina APIs truncate.
        truncate=bool(_field(data, "truncate", bool, required=False, default=False)) if shape == "tei" else True,
        max_tokens_per_doc=max_tokens,
        instruction=_field(data, "instruction", str, required=False),
    )


def build_response(
    request: RerankRequest, scores: list[float], order: list[int], *, model_name: str, prompt_tokens: int
) -> Any:
    """`order`: document indices best first, already cut to top_n."""
    if request.shape == "tei":
        return [
            {"index": i, "score": scores[i], **({"text": request.documents[i]} if request.return_documents else {})}
            for i in order
        ]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if request.return_documents:
            original = request.document_objects[i]
            item["document"] = original if isinstance(original, dict) else {"text": request.documents[i]}
        results.append(item)
    response: dict[str, Any] = {"id": str(uuid.uuid4()), "model": request.model or model_name, "results": results}
    response["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    if request.shape == "v2":
        response["meta"] = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    else:
        response["meta"] = {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}
    return response


def _field(data: dict[str, Any], name: str, kind: type, *, required: bool, default: Any = None) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise RequestError(422, f"{name}: required field is missing", code="missing_field")
        return default
    value = data[name]
    # JSON true/false are Python bools, which are ints: never accept one for the other.
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise RequestError(422, f"{name}: expected {_KIND_NAMES[kind]}, got {_json_type(value)}")
    return value


def _text(item: Any, where: str, *, allow_object: bool) -> str:
    if isinstance(item, str):
        return item
    if allow_object and isinstance(item, dict):
        text = item.get("text")
        if isinstance(text, str):
            return text
        raise RequestError(422, f"{where}: a document object needs a string field 'text', got {_json_type(text)}")
    expected = "a string or an object with a 'text' string" if allow_object else "a string"
    raise RequestError(422, f"{where}: expected {expected}, got {_json_type(item)}")


_KIND_NAMES = {str: "a string", int: "an integer", bool: "a boolean", list: "an array", dict: "an object"}


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
    head_lengths: list[int]  # EncodedPairs.head_lengths: lets the pairs of the query share its head


def prepare(request: RerankRequest, reranker: Any, limits: Limits) -> Prepared:
    """Tokenize a parsed request and apply the token limits (reranker: a rerank_onnx.Reranker)."""
    from .errors import InvalidInputError

    try:
        encoded = reranker.encode(
            [request.query] * len(request.documents),
            request.documents,
            instruction=request.instruction,
            max_document_tokens=request.max_tokens_per_doc,
        )
    except InvalidInputError as exc:
        raise RequestError(422, str(exc)) from exc
    if not request.truncate and any(encoded.truncated):
        first = encoded.truncated.index(True)
        raise RequestError(
            413,
            f"texts[{first}]: query + text exceed the model's {reranker.max_length}-token limit; "
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
    return Prepared(encoded.input_ids, prompt_tokens, encoded.head_lengths)


def finish(request: RerankRequest, reranker: Any, prepared: Prepared, raw_scores: Any, *, model_name: str) -> Any:
    """Scores -> the response body of the request's shape: sorted best first, cut to top_n."""
    import numpy as np

    scores = raw_scores if request.raw_scores else reranker.normalize(raw_scores)
    order = np.lexsort((np.arange(len(scores)), -scores)).tolist()[: request.top_n]
    return build_response(
        request, [float(s) for s in scores], order, model_name=model_name, prompt_tokens=prepared.prompt_tokens
    )
