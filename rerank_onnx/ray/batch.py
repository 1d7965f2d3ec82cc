"""Batch reranking on Ray Data: `RerankBatch`, the callable class for `Dataset.map_batches`.

It loads the artifact once per actor and adds a `score` column to every row (job.py runs it over files).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import default_threads
from ..backends.select import Backend, Precision
from ..chunking import DEFAULT_MAX_CHUNKS_PER_DOC
from ..errors import InvalidInputError, MissingDependencyError
from ..ranking import pair_scores
from ..reranker import LongDocuments, Reranker
from ..validate import check_bool, check_long_documents, check_str

try:
    import ray
    import ray.data
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise MissingDependencyError("ray[data] (the ray extra)", "pip install 'rerank-onnx[ray]'") from exc

# JSON-lines input (job.py): each row's original line, parsed here rather than by Ray's reader, which falls back
# to pandas on mixed types and turns "\\ud800" into "" (scored as an empty document). Parsed here, every value
# reaches the checks as written, and the writer writes each row's original object back with the new columns.
JSON_LINE = "_rerank_json_line"


class RerankBatch:
    """A `map_batches` callable: loads the artifact once per actor, adds score / error / truncated columns.

    Rows pass through with every input column (a query or document that is no string becomes null).
    `score` is NaN and `error` says why (expected / got / fix)
    for a row whose query or document is missing or not valid text; `error` is null for scored rows.
    `truncated` is True where the pair was longer than max_length and was cut as the reference cuts it.
    With long_documents="chunk", `chunk_start` and `chunk_end` give the winning chunk's character span.

    Threads: one per CPU Ray gave the actor (`num_cpus` of map_batches), so that actors x threads
    never exceed the cores Ray schedules on; outside Ray, the backend's default.

    Example:
        ds.map_batches(RerankBatch, fn_constructor_kwargs={"model_dir": "art"}, batch_size=256,
                       compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)
    """

    def __init__(
        self,
        model_dir: str,
        *,
        query_column: str = "query",
        document_column: str = "document",
        score_column: str = "score",
        instruction: str | None = None,
        normalize: bool = False,
        long_documents: LongDocuments = "truncate",
        max_chunks_per_doc: int = DEFAULT_MAX_CHUNKS_PER_DOC,
        backend: Backend = "auto",
        precision: Precision = "auto",
        threads: int | None = None,
    ) -> None:
        """Load the artifact on this actor.

        Args:
            model_dir: artifact folder, readable from every node of the cluster.
            query_column: the input column holding each row's query.
            document_column: the input column holding each row's document.
            score_column: the output column of scores.
            instruction: the instruction slot (None: the family's default).
            normalize: scores in (0, 1) as the reference's `normalize=True`.
            long_documents: "truncate" (the reference) or "chunk" (score a long document by its best chunk).
            max_chunks_per_doc: with "chunk", chunks per document at most.
            backend: inference engine, as `Reranker`.
            precision: OpenVINO's compute precision, as `Reranker`.
            threads: threads for this actor (None: the CPUs Ray assigned to it).
        """
        check_options(query_column, document_column, score_column, normalize, long_documents, max_chunks_per_doc)
        self.columns = (query_column, document_column)
        self.score_column = score_column
        self.instruction = instruction
        self.normalize = normalize
        self.chunks = max_chunks_per_doc if long_documents == "chunk" else None
        self.threads: int = threads or assigned_cpus() or default_threads()
        self.model = Reranker(model_dir, threads=self.threads, backend=backend, precision=precision).model

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Score one batch of rows.

        Args:
            batch: columns (numpy format, or a pandas DataFrame) with the query and document columns.

        Returns:
            The input columns plus the score, error and truncated columns (and the chunk span with "chunk").

        Raises:
            InvalidInputError: the batch lacks the query or document column.
        """
        if JSON_LINE in batch:
            return self._score_lines(list(batch[JSON_LINE]))
        missing = [name for name in self.columns if name not in batch]
        if missing:
            raise InvalidInputError(
                f"expected columns {list(self.columns)}, got {list(batch.keys())}; name the columns that hold "
                "the texts (query_column= / document_column=, or --query-column / --document-column)"
            )
        queries, documents = (list(batch[name]) for name in self.columns)
        out = {name: np.asarray(batch[name]) for name in batch}
        errors: list[str | None] = [_row_error(self.columns, q, d) for q, d in zip(queries, documents)]
        for name, texts in zip(self.columns, (queries, documents)):
            # strings or null, so that every batch has one column type (the error column keeps a bad value's repr)
            out[name] = np.array([_valid_or_none(text) for text in texts], dtype=object)
        return {**out, **self._score_rows(queries, documents, errors)}

    def _score_lines(self, lines: list[str]) -> dict[str, np.ndarray]:
        """A batch of JSON lines: each row's query and document as the line has them; the line is kept whole."""
        queries: list[Any] = []
        documents: list[Any] = []
        errors: list[str | None] = []
        for line in lines:
            error: str | None = None
            try:
                row = json.loads(line)
            except ValueError as exc:
                row, error = None, f"line: expected a JSON object, got malformed JSON ({exc}); fix the line"
            else:
                error = None if isinstance(row, dict) else f"line: expected a JSON object, got {type(row).__name__}"
            fields = row if isinstance(row, dict) else {}
            queries.append(fields.get(self.columns[0]))
            documents.append(fields.get(self.columns[1]))
            errors.append(error or _row_error(self.columns, queries[-1], documents[-1]))
        return {JSON_LINE: np.array(lines, dtype=object), **self._score_rows(queries, documents, errors)}

    def _score_rows(self, queries: list[Any], documents: list[Any], errors: list[str | None]) -> dict[str, np.ndarray]:
        """The score, error, truncated (and chunk) columns: rows with an error get NaN and keep it."""
        good = [i for i, error in enumerate(errors) if error is None]
        n = len(queries)
        scores = np.full(n, np.nan, dtype=np.float32)
        truncated = np.zeros(n, dtype=bool)
        spans = np.full((n, 2), -1, dtype=np.int64)
        if good:
            rows = self._score([queries[i] for i in good], [documents[i] for i in good])
            scores[good], truncated[good], spans[good] = rows
        out = {self.score_column: scores, "error": np.array(errors, dtype=object), "truncated": truncated}
        if self.chunks is not None:
            out["chunk_start"], out["chunk_end"] = spans[:, 0], spans[:, 1]
        return out

    def _score(self, queries: list[str], documents: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores, truncation flags and winning spans ([-1, -1] unless chunked) of valid pairs."""
        encoded = self.model.encode(queries, documents, instruction=self.instruction, max_chunks_per_doc=self.chunks)
        scores = self.model.score_encoded(encoded.input_ids, document_starts=encoded.document_starts)
        pairs = pair_scores(scores, encoded.chunks, normalize=self.model.normalize if self.normalize else None)
        spans = np.array([span or (-1, -1) for span in pairs.spans], dtype=np.int64).reshape(-1, 2)
        return pairs.scores, np.array(encoded.pair_truncated(), dtype=bool), spans


def check_options(
    query_column: object,
    document_column: object,
    score_column: object,
    normalize: object,
    long_documents: object,
    max_chunks_per_doc: object,
) -> None:
    """RerankBatch's knobs, checked in the driver too (job.py) so that a bad one fails before any actor starts."""
    for name, value in (
        ("query_column", query_column),
        ("document_column", document_column),
        ("score_column", score_column),
    ):
        check_str(name, value)
    check_bool("normalize", normalize)
    check_long_documents(long_documents, max_chunks_per_doc)


def _row_error(columns: tuple[str, str], query: object, document: object) -> str | None:
    """Why a row cannot be scored (the runtime's own expected / got / fix), or None."""
    for name, value in zip(columns, (query, document)):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{name}: expected a string, got a missing value (null); fill it in or drop the row"
    try:
        check_str(columns[0], query)
        check_str(columns[1], document)
    except InvalidInputError as exc:
        return str(exc)
    return None


def _valid_or_none(value: object) -> str | None:
    """A string column's value when it is valid text, else None (Arrow holds no lone surrogates)."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def assigned_cpus() -> int | None:
    """The CPUs Ray reserved for this actor (None outside a Ray worker or with none reserved)."""
    if not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)  # type: ignore[no-untyped-call]
    return max(1, int(cpus)) if cpus >= 1 else None


@dataclass(frozen=True)
class BatchOptions:
    """What `run_batch` passes to every actor's `RerankBatch` (fields: see its constructor)."""

    query_column: str = "query"
    document_column: str = "document"
    score_column: str = "score"
    instruction: str | None = None
    normalize: bool = False
    long_documents: LongDocuments = "truncate"
    max_chunks_per_doc: int = DEFAULT_MAX_CHUNKS_PER_DOC
    backend: Backend = "auto"
    precision: Precision = "auto"
