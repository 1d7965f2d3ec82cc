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
import math
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from msgspec import UNSET

from .chunking import Windows
from .errors import RerankError
from .settings import RequestLimits
from .wire import REQUESTS, Chunk, RerankResponse, Result, TeiResult, Usage, validation_message


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


Shape = Literal["v1", "v2", "tei"]


@dataclass(frozen=True)
class RerankRequest:
    shape: Shape
    model: str | None
    query: str
    documents: list[str]
    document_objects: list[Any]  # as sent (strings or objects), echoed back in Jina/Cohere v1 results
    top_n: int | None
    return_documents: bool
    raw_scores: bool
    truncate: bool
    max_tokens_per_doc: int | None
    max_chunks_per_doc: int | None  # Cohere v1: long documents scored by up to this many windows (chunking.py)
    max_prompt_tokens: int | None  # vLLM's truncate_prompt_tokens: the whole prompt, template included
    instruction: str | None


# JSON numbers longer than this are refused (422): no rerank field needs one, and Python refuses to convert
# integers past 4,300 digits anyway (what used to surface as a 500).
MAX_NUMBER_DIGITS = 100


def parse_json(body: bytes) -> dict[str, Any]:
    """A request body as strict JSON: UTF-8, no NaN / Infinity, finite numbers of at most MAX_NUMBER_DIGITS
    digits, and text that is valid Unicode everywhere (keys and fields that are only echoed back included), so
    that nothing refused here can fail later when the answer is written.

    Raises:
        RequestError: 400 for malformed JSON or invalid UTF-8; 422 for a value JSON allows but a rerank
            request cannot carry (a non-finite or overlong number, a lone surrogate), or a body that is not an
            object.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON") from exc
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except RecursionError as exc:
        raise RequestError(400, "request body is nested too deeply to parse; send a flat rerank request") from exc
    except json.JSONDecodeError as exc:
        raise RequestError(
            400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    if not isinstance(data, dict):
        raise RequestError(422, f"request body: expected a JSON object, got {_json_type(data)}")
    _check_text(data)
    return data


def _no_constant(name: str) -> Any:
    raise RequestError(422, f"request body: expected a finite number, got {name}; JSON has no {name}: send a number")


def _bounded_int(digits: str) -> int:
    _check_length(digits)
    return int(digits)


def _finite_float(digits: str) -> float:
    _check_length(digits)
    value = float(digits)
    if not math.isfinite(value):
        raise RequestError(422, f"request body: expected a finite number, got {digits} (out of range)")
    return value


def _check_length(digits: str) -> None:
    if len(digits) > MAX_NUMBER_DIGITS:
        raise RequestError(
            422, f"request body: expected a number of at most {MAX_NUMBER_DIGITS} digits, got one of {len(digits)}"
        )


def _check_text(data: dict[str, Any]) -> None:
    """Every key and string in the body is valid Unicode (JSON's \\ud800 escape decodes to a lone surrogate,
    which no tokenizer or UTF-8 writer takes); a 422 names the first one."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                place = f"{where}.{key}" if where else str(key)
                _check_string(place, key, "key")
                stack.append((place, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_string(where, value, "text")


def _check_string(where: str, value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = where.encode("utf-8", "backslashreplace").decode("ascii", "replace")
        raise RequestError(
            422,
            f"{shown or 'request body'}: expected valid Unicode {what}, got a lone surrogate "
            f"{value[exc.start]!r} at position {exc.start}; fix the text's encoding",
        ) from exc


def shape_for(path: str, data: dict[str, Any]) -> Shape:
    """The request dialect: Cohere v2 by its path; TEI when the body has `texts` and no `documents`;
    otherwise Jina / Cohere v1 / vLLM, which several clients also post to a bare /rerank."""
    if path.rstrip("/").endswith("/v2/rerank"):
        return "v2"
    return "tei" if "texts" in data and "documents" not in data else "v1"


def parse_request(data: dict[str, Any], shape: Shape, limits: RequestLimits) -> RerankRequest:
    """Validate a decoded body of dialect `shape` (wire.py's models) into a RerankRequest.

    Raises:
        RequestError: 422 naming the field for wrong types, missing fields or values out of range; 413
            for more documents or characters than `limits` allow.
    """
    try:
        model: Any = msgspec.convert(data, REQUESTS[shape])
    except msgspec.ValidationError as exc:
        message = validation_message(exc)
        raise RequestError(422, message, code="missing_field" if "required field" in message else None) from exc
    raw_documents, documents = _documents(model, shape)
    _check_sizes(documents, limits)
    top_n = getattr(model, "top_n", None)  # TEI has none
    if top_n is not None and top_n < 0:
        raise RequestError(422, f"top_n: expected a non-negative integer, got {top_n}")
    if top_n == 0 and shape != "tei":
        top_n = None  # vLLM: 0 means all
    max_tokens = getattr(model, "max_tokens_per_doc", None)
    if max_tokens is not None and max_tokens < 1:
        raise RequestError(422, f"max_tokens_per_doc: expected a positive integer, got {max_tokens}")
    max_chunks = getattr(model, "max_chunks_per_doc", None)
    if max_chunks is not None and max_chunks < 1:
        raise RequestError(422, f"max_chunks_per_doc: expected a positive integer, got {max_chunks}")
    prompt_cap = getattr(model, "truncate_prompt_tokens", None)
    if prompt_cap is not None and (prompt_cap < -1 or prompt_cap == 0):
        raise RequestError(422, f"truncate_prompt_tokens: expected a positive integer or -1, got {prompt_cap}")
    if shape == "tei" and model.truncation_direction not in ("Right", "right"):
        raise RequestError(
            422,
            f"truncation_direction: only 'Right' is supported (the model's own rule), got {model.truncation_direction!r}",
        )
    return RerankRequest(
        shape=shape,
        model=model.model,
        query=model.query,
        documents=documents,
        document_objects=raw_documents,
        top_n=top_n,
        return_documents=model.return_text if shape == "tei" else model.return_documents,
        raw_scores=model.raw_scores if shape == "tei" else False,
        # TEI refuses over-long input unless truncate=true; the Cohere/Jina APIs truncate.
        truncate=model.truncate if shape == "tei" else True,
        max_tokens_per_doc=max_tokens,
        max_chunks_per_doc=max_chunks,
        max_prompt_tokens=prompt_cap if prompt_cap and prompt_cap > 0 else None,
        instruction=model.instruction,
    )


def _documents(model: Any, shape: Shape) -> tuple[list[Any], list[str]]:
    """The documents as sent, and the text each is scored on (Cohere v1's rank_fields pick and order the
    fields of object documents: "field: value" lines; otherwise an object's `text`)."""
    if shape == "tei":
        return list(model.texts), list(model.texts)
    raw = list(model.documents)
    rank_fields = getattr(model, "rank_fields", None)
    if rank_fields is None:
        return raw, [_text(item, f"documents[{i}]") for i, item in enumerate(raw)]
    if not rank_fields:
        raise RequestError(422, "rank_fields: expected a non-empty array of field names (strings)")
    texts = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise RequestError(422, f"documents[{i}]: rank_fields needs object documents, got {_json_type(item)}")
        missing = [name for name in rank_fields if name not in item]
        if missing:
            raise RequestError(422, f"documents[{i}]: has no field {missing[0]!r} named in rank_fields")
        texts.append("\n".join(f"{name}: {_field_text(item[name], i, name)}" for name in rank_fields))
    return raw, texts


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
    if request.shape == "tei":
        return msgspec.to_builtins(
            [
                TeiResult(index=i, score=scores[i], text=request.documents[i] if request.return_documents else UNSET)
                for i in order
            ]
        )
    results = []
    for i in order:
        document: Any = UNSET
        if request.return_documents:
            original = request.document_objects[i]
            document = original if isinstance(original, dict) else {"text": request.documents[i]}
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
    prefix_lengths: list[int]  # EncodedPairs.prefix_lengths: lets the pairs of the query share their prefix
    windows: Windows | None = None  # with max_chunks_per_doc: which document and span each row scores


def encode_request(request: RerankRequest, reranker: Any, limits: RequestLimits) -> Prepared:
    """Tokenize a parsed request and apply the token limits (reranker: a rerank_onnx.Reranker)."""
    from .errors import InvalidInputError

    pair_budget = None
    if request.max_prompt_tokens is not None:
        pair_budget = request.max_prompt_tokens - reranker.template_tokens
        if pair_budget < 1:
            raise RequestError(
                422,
                f"truncate_prompt_tokens: the template alone takes {reranker.template_tokens} tokens; "
                f"expected more than that, got {request.max_prompt_tokens}",
            )
    try:
        encoded = reranker.encode(
            [request.query] * len(request.documents),
            request.documents,
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
    return Prepared(encoded.input_ids, prompt_tokens, encoded.prefix_lengths, encoded.windows)


def render_response(
    request: RerankRequest, reranker: Any, prepared: Prepared, raw_scores: Any, *, model_name: str
) -> Any:
    """Scores -> the response body of the request's shape: sorted best first, cut to top_n."""
    from .ranking import pair_scores

    pairs = pair_scores(raw_scores, prepared.windows, normalize=None if request.raw_scores else reranker.normalize)
    chunks = None
    if prepared.windows is not None:  # rows are windows: each document took its best window's score
        chunks = []
        for span, count, complete in zip(pairs.spans, pairs.windows, pairs.complete):
            assert span is not None  # every pair of a chunked request has a winning window
            chunks.append(Chunk(span[0], span[1], count, complete))
    return build_response(
        request,
        [float(s) for s in pairs.scores],
        pairs.order(request.top_n),
        model_name=model_name,
        prompt_tokens=prepared.prompt_tokens,
        chunks=chunks,
    )
