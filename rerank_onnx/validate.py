"""Checks on what callers pass in: each failure is an InvalidInputError that says expected / got / fix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidInputError, describe


def check_positive_int(name: str, value: object, *, allow_none: bool = False) -> None:
    """A positive integer (bool is not one), or None when `allow_none`."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        expected = "a positive integer" + (" or None" if allow_none else "")
        raise InvalidInputError(f"{name}: expected {expected}, got {describe(value)}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name}: expected True or False, got {describe(value)}")


def check_str(name: str, value: object) -> str:
    """A string the tokenizer can take."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name}: expected a string, got {describe(value)}")
    _check_encodable(name, value)
    return value


def check_str_list(name: str, value: object) -> list[str]:
    """A list (any sequence but a string) of strings the tokenizer can take, as a new list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidInputError(
            f"{name}: expected a list of strings, got {describe(value)}; wrap a single text in a list: [text]"
        )
    for i, item in enumerate(value):
        check_str(f"{name}[{i}]", item)
    return list(value)


def check_parallel(queries: object, documents: object) -> tuple[list[str], list[str]]:
    """Two lists of strings of equal length: pair i is (queries[i], documents[i])."""
    query_list = check_str_list("queries", queries)
    document_list = check_str_list("documents", documents)
    if len(query_list) != len(document_list):
        raise InvalidInputError(
            f"queries and documents must be parallel lists of equal length, got {len(query_list)} queries "
            f"and {len(document_list)} documents; for one query against many documents use rank()"
        )
    return query_list, document_list


def split_pairs(pairs: object) -> tuple[list[str], list[str]]:
    """(query, document) pairs -> parallel lists, as sentence-transformers' CrossEncoder takes them."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise InvalidInputError(
            f"queries: expected a list of strings with documents, or a list of (query, document) pairs, "
            f"got {describe(pairs)}"
        )
    queries, documents = [], []
    for i, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidInputError(
                f"pairs[{i}]: expected a (query, document) pair, got {describe(pair)}; pass documents= to give "
                "queries and documents as two lists"
            )
        queries.append(pair[0])
        documents.append(pair[1])
    return queries, documents


def check_encode_limits(max_document_tokens: object, max_length: object, max_chunks_per_doc: object) -> None:
    """The per-call limits of encode(), every family's: each a positive int or None."""
    for name, value in (
        ("max_document_tokens", max_document_tokens),
        ("max_length", max_length),
        ("max_chunks_per_doc", max_chunks_per_doc),
    ):
        check_positive_int(name, value, allow_none=True)


def check_long_documents(long_documents: object, max_chunks_per_doc: object) -> None:
    """ "truncate" or "chunk", and a positive chunk cap (checked in either mode: a bad value is a bug)."""
    if long_documents not in ("truncate", "chunk"):
        raise InvalidInputError(f"long_documents: expected 'truncate' or 'chunk', got {describe(long_documents)}")
    check_positive_int("max_chunks_per_doc", max_chunks_per_doc)


def check_document_starts(value: object, prompts: int) -> None:
    """One non-negative integer per prompt (EncodedPairs.document_starts)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != prompts:
        raise InvalidInputError(
            f"document_starts: expected a list of {prompts} non-negative integers (one per prompt; "
            f"EncodedPairs.document_starts), got {describe(value)}"
        )
    for i, n in enumerate(value):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInputError(f"document_starts[{i}]: expected a non-negative integer, got {describe(n)}")


def _check_encodable(name: str, value: str) -> None:
    """Text the tokenizer can take: a lone surrogate (e.g. JSON's "\\ud800") is no character at all."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{name}: expected valid Unicode text, got a lone surrogate {value[exc.start]!r} at position "
            f"{exc.start}; fix the text's encoding, or replace it (text.encode('utf-8', 'replace').decode())"
        ) from exc
