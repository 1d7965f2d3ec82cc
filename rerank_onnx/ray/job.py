"""`rerank-onnx batch ARTIFACT INPUT OUTPUT`: read through Ray Data, score in an actor pool, write one file."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import ray
import ray.data

from ..artifact import load_artifact
from ..errors import InvalidInputError, RerankError
from ..from_checkpoint import artifact_for
from ..validate import check_positive_int
from .batch import JSON_LINE, BatchOptions, RerankBatch, _valid_or_none, check_options

DEFAULT_BATCH_ROWS = 256
Format = Literal["parquet", "jsonl"]


@dataclass(frozen=True)
class BatchReport:
    """What a batch job did: rows written, rows that failed (error column), rows truncated, timing."""

    rows: int
    failed: int
    truncated: int
    seconds: float
    actors: int
    threads_per_actor: int


def run_batch(
    model_dir: str,
    source: str,
    output: str,
    *,
    address: str | None = None,
    actors: int | None = None,
    threads_per_actor: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    input_format: Format | None = None,
    options: BatchOptions | None = None,
    overwrite: bool = False,
) -> BatchReport:
    """Read `source`, score every row in an actor pool, and write `output` (one file, input order).

    Args:
        model_dir: artifact folder, readable from every node.
        source: a Parquet or JSON-lines file, a folder of them, or any path Ray Data reads (s3://, gs://).
        output: the result file (.parquet or .jsonl); written to a temporary name, then renamed.
        address: the Ray cluster ("auto", "ray://host:10001"); None starts a local instance
            (or joins the one RAY_ADDRESS names).
        actors: model copies (None: the cluster's CPUs // threads_per_actor).
        threads_per_actor: CPUs reserved and threads used per actor (None: a node's CPUs less one, the
            smallest node's: one actor with every thread ran faster than several with fewer, docs/ray.md).
        batch_rows: rows per map_batches call (rows of one query in a batch share its prefix).
        input_format: "parquet" or "jsonl" (None: from the source's suffix).
        options: the columns, scoring and engine options of every actor's `RerankBatch`.
        overwrite: replace an existing output file.

    Returns:
        BatchReport: rows written, rows that failed (their error column says why), timing.

    Raises:
        InvalidInputError: unknown formats, an existing output, or invalid counts.
    """
    check_positive_int("actors", actors, allow_none=True)
    check_positive_int("threads_per_actor", threads_per_actor, allow_none=True)
    check_positive_int("batch_rows", batch_rows)
    options = options or BatchOptions()
    _check_options(options)
    model_dir = str(artifact_for(model_dir, cache_dir=None))  # a checkpoint is exported once, here, not per actor
    load_artifact(model_dir)  # a wrong folder fails here, in one line, not in every actor
    fmt = input_format or _format_of(source, "input")
    out_fmt = _format_of(output, "output")
    target = Path(output)
    if target.exists() and not overwrite:
        raise InvalidInputError(f"output: {output} exists; remove it, choose another path, or pass --overwrite")
    started = _start_ray(address)
    try:
        threads_per_actor = threads_per_actor or _node_threads()
        actors = _pool_size(actors, threads_per_actor)
        ds = _read(source, fmt)
        _check_columns(_columns(ds, fmt), options)
        begin = time.perf_counter()
        rows, failed, cut = _score_into(ds, model_dir, options, actors, threads_per_actor, batch_rows, target, out_fmt)
        return BatchReport(rows, failed, cut, time.perf_counter() - begin, actors, threads_per_actor)
    finally:
        if started:
            ray.shutdown()


def _check_options(options: BatchOptions) -> None:
    check_options(
        options.query_column,
        options.document_column,
        options.score_column,
        options.normalize,
        options.long_documents,
        options.max_chunks_per_doc,
    )


def _start_ray(address: str | None) -> bool:
    """Join or start Ray unless this process already did; True when this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    # a local instance gets one CPU slot more than the cores: reading and listing files need one, and
    # actors holding every slot would leave them waiting forever
    local = address is None and not os.environ.get("RAY_ADDRESS")
    cpus = len(os.sched_getaffinity(0)) + 1 if local else None
    ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    return True


def _score_into(
    ds: ray.data.Dataset,
    model_dir: str,
    options: BatchOptions,
    actors: int,
    threads_per_actor: int,
    batch_rows: int,
    target: Path,
    out_fmt: Format,
) -> tuple[int, int, int]:
    """Score `ds` in a pool of RerankBatch actors and write it to `target` in input order: rows, failed, cut."""
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    scored = ds.map_batches(
        RerankBatch,
        fn_constructor_args=(model_dir,),
        fn_constructor_kwargs=asdict(options),
        batch_size=batch_rows,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads_per_actor,
    )
    try:
        batches = scored.iter_batches(batch_size=None, batch_format="pyarrow")
        return _write(batches, target, out_fmt, (options.query_column, options.document_column))
    except ray.exceptions.RayError as exc:  # an actor or a read failed: say why in one line, not a remote traceback
        raise _cause_of(exc) from exc


def _read(source: str, fmt: Format) -> ray.data.Dataset:
    """The input as a dataset, or one error line for a path that is not there or not readable as `fmt`. JSON
    lines are read as text, one column of lines that RerankBatch parses (batch.JSON_LINE)."""
    try:
        if fmt == "parquet":
            return ray.data.read_parquet(source)
        lines: ray.data.Dataset = ray.data.read_text(source).rename_columns({"text": JSON_LINE})
        return lines
    except (OSError, ValueError) as exc:  # FileNotFoundError, and pyarrow's ArrowInvalid for a bad file
        raise InvalidInputError(
            f"input: expected a readable {fmt} file or folder, got {source!r} ({type(exc).__name__}: {exc}); "
            "fix the path or pass --input-format"
        ) from exc


def _columns(ds: ray.data.Dataset, fmt: Format) -> list[str] | None:
    """The input's columns: Parquet's schema, or the keys of the first JSON line (None: no rows)."""
    if fmt == "parquet":
        columns: list[str] | None = ds.columns()
        return columns
    first = ds.take(1)
    if not first:
        return None
    try:
        row = json.loads(first[0][JSON_LINE])
    except ValueError:
        row = None
    return list(row) if isinstance(row, dict) else None


def _check_columns(columns: list[str] | None, options: BatchOptions) -> None:
    if not columns:  # an empty file has no schema at all
        raise InvalidInputError("input: expected rows to score, got none; check the input path and format")
    missing = [name for name in (options.query_column, options.document_column) if name not in columns]
    if missing:
        raise InvalidInputError(
            f"input: expected columns {[options.query_column, options.document_column]}, got {columns}; name the "
            "columns that hold the texts with --query-column / --document-column"
        )


def _cause_of(exc: BaseException) -> RerankError:
    """Our own error inside Ray's wrappers (it says expected / got / fix), else one line about the failure."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, RerankError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return RerankError(f"the batch job failed on Ray: {type(exc).__name__}: {lines[0] if lines else ''}")


def _node_threads() -> int:
    """The smallest node's CPUs less one (the reader's slot): one actor per node uses its cores."""
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    return max(1, int(min(nodes, default=2)) - 1)


def _pool_size(actors: int | None, threads_per_actor: int) -> int:
    """Actors that fit the cluster's CPUs with one left for reading: the pool never waits on its own input."""
    cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    room = cpus - 1
    actors = actors or room // threads_per_actor
    if actors < 1 or actors * threads_per_actor > room:
        raise InvalidInputError(
            f"actors x threads_per_actor: expected at most {room} CPUs (the cluster's {cpus} less one for reading "
            f"the input), got {actors} x {threads_per_actor}; lower --actors or --threads-per-actor"
        )
    return actors


def _format_of(path: str, role: str) -> Format:
    name = path.rstrip("/").lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return "jsonl"
    if role == "input" and os.path.isdir(path):
        kinds = {_format_of(str(p), role) for p in Path(path).iterdir() if p.suffix in (".parquet", ".jsonl", ".json")}
        if len(kinds) == 1:
            return kinds.pop()
    raise InvalidInputError(
        f"{role}: expected a .parquet or .jsonl path{' (or a folder of them)' if role == 'input' else ''}, "
        f"got {path!r}; rename it{', or pass --input-format' if role == 'input' else ''}"
    )


def _write(tables: Iterable[Any], target: Path, fmt: Format, text_columns: tuple[str, str]) -> tuple[int, int, int]:
    """Stream result tables into `target` via a temporary file; returns rows, failed rows, truncated rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    partial = target.with_name(f".{target.name}.partial")
    rows = failed = cut = 0
    try:
        with open(partial, "wb") as sink:
            writer: Any = None
            for table in tables:
                if JSON_LINE in table.column_names and fmt == "parquet":
                    table = _as_columns(table, text_columns)
                # a batch with no failure has an all-null error column: give it the string type of the others
                errors = table["error"].cast(pa.string())
                table = table.set_column(table.schema.get_field_index("error"), "error", errors)
                rows += table.num_rows
                failed += table.num_rows - errors.null_count
                cut += int(pc.sum(table["truncated"]).as_py() or 0)
                if fmt == "parquet":
                    if writer is None:
                        writer = pq.ParquetWriter(sink, table.schema)
                    elif table.schema != writer.schema:  # e.g. a column all null in one batch
                        table = _conform(table, writer.schema)
                    writer.write_table(table)
                else:
                    _write_jsonl(sink, table)
            if writer is not None:
                writer.close()
        if rows == 0:
            raise InvalidInputError("input: expected rows to score, got none; check the input path and format")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return rows, failed, cut


def _conform(table: Any, schema: Any) -> Any:
    """`table` in the schema of the batches written before it, or an error naming the column that changed."""
    try:
        return table.cast(schema)
    except (ValueError, TypeError, NotImplementedError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        changed = [f.name for f in table.schema if f.name in schema.names and f.type != schema.field(f.name).type]
        raise InvalidInputError(
            f"input: expected each column to keep one type, got {changed} changing type between batches ({exc}); "
            "clean the column, or write .jsonl, which takes mixed types"
        ) from exc


def _original(line: str) -> dict[str, Any]:
    """A JSON-lines row's original object, every value as written; a line that is no object is kept under "input"."""
    try:
        value = json.loads(line)
    except ValueError:
        return {"input": line}
    return value if isinstance(value, dict) else {"input": value}


def _as_columns(table: Any, text_columns: tuple[str, str]) -> Any:
    """A batch of JSON-lines input as Parquet columns: each row's original fields, then the new columns. A
    Parquet column has one type and holds no lone surrogates: a query or document that is not valid text (the
    row's error says why) and any string with a lone surrogate become null there."""
    import pyarrow as pa

    added = table.drop_columns([JSON_LINE]).to_pylist()
    rows = [{**_original(line), **extra} for line, extra in zip(table[JSON_LINE].to_pylist(), added)]
    rows = [
        {
            key: None if _invalid_text(value) or (key in text_columns and not isinstance(value, str)) else value
            for key, value in row.items()
        }
        for row in rows
    ]
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInputError(
            f"input: expected each JSON field to keep one type for a Parquet output, got {exc}; clean the field, "
            "or write .jsonl, which keeps every value as it was"
        ) from exc


def _invalid_text(value: Any) -> bool:
    """A string Arrow cannot hold (a lone surrogate)."""
    return isinstance(value, str) and _valid_or_none(value) is None


def _write_jsonl(sink: Any, table: Any) -> None:
    """One JSON object per row; NaN (a failed row's score) is written as null, as JSON has no NaN. A row of
    JSON-lines input is its original object (each value as it was written) with the new columns."""
    for row in table.to_pylist():
        line = row.pop(JSON_LINE, None)
        merged = {**(_original(line) if line is not None else {}), **row}
        merged = {
            key: None if isinstance(value, float) and math.isnan(value) else value for key, value in merged.items()
        }
        try:
            sink.write(json.dumps(merged, ensure_ascii=False).encode("utf-8") + b"\n")
        except UnicodeEncodeError:  # a lone surrogate as read: written back as the same JSON escape
            sink.write(json.dumps(merged).encode("ascii") + b"\n")
