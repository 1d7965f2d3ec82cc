"""`rerank-onnx export | rank | serve | batch`: the command line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from .backends.select import BACKENDS, PRECISIONS
from .chunking import DEFAULT_MAX_CHUNKS_PER_DOC
from .errors import MissingDependencyError, RerankError
from .settings import default_of


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.run(args))
    except RerankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerank-onnx", description="LLM rerankers on a CPU with onnxruntime.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser(
        "info",
        help="this machine's CPU class and what backend='auto' runs on it, per model family and artifact scheme",
    )
    info.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    info.set_defaults(run=_info)
    _export_parser(commands)
    _rank_parser(commands)
    _serve_parser(commands)
    _batch_parser(commands)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # a string: not subscriptable at run time


def _export_parser(commands: Commands) -> None:
    export = commands.add_parser("export", help="convert a Hugging Face checkpoint into an artifact folder")
    export.add_argument("source", help="hub id (e.g. mixedbread-ai/mxbai-rerank-large-v2) or local checkpoint folder")
    export.add_argument("output", help="artifact folder to write")
    export.add_argument(
        "--quantization",
        choices=["int8", "int8-fast", "int8-static", "none"],
        default="int8",
        help="int8 (default): blockwise, ranks like fp32; int8-fast: per-tensor activations, less faithful; "
        "int8-static: activation scales calibrated at export (NNCF; the export-int8-static extra), faster on "
        "OpenVINO, less faithful; none: fp32",
    )
    export.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    export.add_argument(
        "--estimated-max",
        type=float,
        default=None,
        help="normalization constant: sigmoid(score - X / 2) (mxbai: 9.0 for the base-v2 hub id, 12.0 otherwise, "
        "as its reference; qwen3-reranker: 0, its P(yes))",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    export.add_argument(
        "--check-all-backends",
        action="store_true",
        help="self-check every OpenVINO precision this CPU runs, not only onnxruntime and what auto picks",
    )
    export.add_argument(
        "--family",
        choices=["auto", "mxbai-rerank-v2", "qwen3-reranker", "cross-encoder"],
        default="auto",
        help="the model family: its prompt, score tokens and normalization (default: from the architecture)",
    )
    export.add_argument(
        "--smooth-quant",
        choices=["auto", "on", "off"],
        default="auto",
        help="int8-static only: SmoothQuant before calibrating (auto: on for cross-encoders, off for the decoder "
        "families; docs/backends.md#int8-static-artifacts has the measurements)",
    )
    export.set_defaults(run=_export)


def _rank_parser(commands: Commands) -> None:
    rank = commands.add_parser("rank", help="rank documents against a query")
    rank.add_argument(
        "model",
        help="artifact folder written by `rerank-onnx export`, or a checkpoint folder or hub id (exported once)",
    )
    rank.add_argument("documents", help="text file with one document per line, or - for stdin")
    rank.add_argument("--query", required=True)
    rank.add_argument("--instruction", default=None)
    rank.add_argument("--top-k", type=int, default=None, help="show only the best K (default: all)")
    rank.add_argument("--normalize", action="store_true", help="scores in (0, 1) instead of raw logit differences")
    rank.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rank.add_argument("--threads", type=int, default=None)
    _engine_arguments(rank)
    rank.add_argument("--progress", action="store_true", help="show a progress bar")
    rank.add_argument(
        "--long-documents",
        choices=["truncate", "chunk"],
        default="truncate",
        help="truncate a long document as the reference does (default), or score it by its best chunk; "
        "chunk adds the winning chunk's character span to the output",
    )
    rank.add_argument(
        "--max-chunks-per-doc", type=int, default=DEFAULT_MAX_CHUNKS_PER_DOC, help="chunks per document at most"
    )
    rank.add_argument(
        "--keep-blank-lines", action="store_true", help="rank blank lines as empty documents (default: skip them)"
    )
    rank.set_defaults(run=_rank)


def _serve_parser(commands: Commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the rerank HTTP API (Jina/Cohere/vLLM/TEI shapes)",
        description="Every option can also be set by the environment variable named in its help; a flag wins.",
    )
    serve.add_argument(
        "model", nargs="?", default=None, help="artifact folder, checkpoint folder or hub id [RERANK_ONNX_MODEL]"
    )
    for setting in SERVE_SETTINGS:
        value_type = {int: int, float: float}.get(setting.value_type, str)
        serve.add_argument(
            setting.flag,
            type=value_type,
            default=None,
            choices=setting.choices,
            help=f"{setting.help} [RERANK_ONNX_{setting.env}] (default {setting.default})",
        )
    serve.set_defaults(run=_serve)


def _batch_parser(commands: Commands) -> None:
    batch = commands.add_parser(
        "batch",
        help="score every (query, document) row of a Parquet or JSON-lines file on Ray (the ray extra)",
        description="Reads INPUT through Ray Data, scores it in a pool of actors (one model each) and writes OUTPUT "
        "in input order with every input column plus score, error (why a row could not be scored) and truncated. "
        "Exits 1 when some rows could not be scored: the output is still complete, their error column says why.",
    )
    batch.add_argument(
        "model", help="artifact folder, checkpoint folder or hub id (on a cluster: a path every node can read)"
    )
    batch.add_argument("input", help="a .parquet or .jsonl file, or a folder of them (any path Ray Data reads)")
    batch.add_argument("output", help="the result file: .parquet or .jsonl")
    batch.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local one)")
    batch.add_argument("--actors", type=int, default=None, help="model copies (default: cluster CPUs / threads)")
    batch.add_argument(
        "--threads-per-actor",
        type=int,
        default=None,
        help="CPUs reserved and threads per actor (default: a node's CPUs less one, so one actor per node)",
    )
    batch.add_argument("--batch-rows", type=int, default=256, help="rows per batch (256)")
    batch.add_argument("--input-format", choices=["parquet", "jsonl"], default=None, help="default: from INPUT")
    batch.add_argument("--query-column", default="query")
    batch.add_argument("--document-column", default="document")
    batch.add_argument("--score-column", default="score")
    batch.add_argument("--instruction", default=None)
    batch.add_argument("--normalize", action="store_true", help="scores in (0, 1) instead of raw logit differences")
    batch.add_argument("--long-documents", choices=["truncate", "chunk"], default="truncate")
    batch.add_argument("--max-chunks-per-doc", type=int, default=DEFAULT_MAX_CHUNKS_PER_DOC)
    _engine_arguments(batch)
    batch.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    batch.set_defaults(run=_batch)


BACKEND_HELP = "inference engine: auto takes the fastest faithful one measured for this CPU class"
PRECISION_HELP = "OpenVINO's compute precision (auto: the CPU class's measured best, docs/backends.md)"


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    from .backends.select import BACKENDS, PRECISIONS

    parser.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP + " (default auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP + " (default auto)")


@dataclass(frozen=True)
class ServeSetting:
    """One `serve` option: its flag, its environment variable (RERANK_ONNX_<env>), type and default."""

    flag: str
    env: str
    value_type: type
    default: object
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


SERVE_SETTINGS = (  # defaults: settings.py, the one home of the server's defaults
    ServeSetting("--host", "HOST", str, default_of("host"), "bind address"),
    ServeSetting("--port", "PORT", int, default_of("port"), "TCP port"),
    ServeSetting("--api-key", "API_KEY", str, default_of("api_key"), "require 'Authorization: Bearer KEY'"),
    ServeSetting("--model-name", "MODEL_NAME", str, default_of("model_name"), "name reported to clients"),
    ServeSetting("--threads", "THREADS", int, default_of("threads"), "inference threads"),
    ServeSetting("--backend", "BACKEND", str, default_of("backend"), BACKEND_HELP, BACKENDS),
    ServeSetting("--precision", "PRECISION", str, default_of("precision"), PRECISION_HELP, PRECISIONS),
    ServeSetting("--max-documents", "MAX_DOCUMENTS", int, default_of("max_documents"), "documents per request"),
    ServeSetting("--max-body-bytes", "MAX_BODY_BYTES", int, default_of("max_body_bytes"), "request body bytes"),
    ServeSetting(
        "--max-request-tokens", "MAX_REQUEST_TOKENS", int, default_of("max_request_tokens"), "prompt tokens per request"
    ),
    ServeSetting("--max-queue-pairs", "MAX_QUEUE_PAIRS", int, default_of("max_queue_pairs"), "queued pairs before 429"),
    ServeSetting(
        "--coalesce-ms",
        "COALESCE_MS",
        float,
        default_of("coalesce_ms"),
        "wait this long to batch concurrent requests; 0 disables",
    ),
)


def _serve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Each serve option from its flag, else its environment variable (parsed here, and only for serve:
    Kubernetes sets RERANK_ONNX_PORT=tcp://... for a Service of that name), else its default."""
    import os

    from .errors import InvalidInputError

    values: dict[str, Any] = {}
    for setting in SERVE_SETTINGS:
        value = getattr(args, setting.dest)
        raw = os.environ.get(f"RERANK_ONNX_{setting.env}")
        if value is None and raw == "" and setting.dest == "api_key":
            value = raw  # set but empty: refused below, not taken as "no key"
        elif value is None and raw:
            value = _parse_setting(setting, raw)
            if value is None:
                described = {int: "a non-negative integer", float: "a non-negative number", str: "a string"}
                expected = f"one of {', '.join(setting.choices)}" if setting.choices else described[setting.value_type]
                raise InvalidInputError(
                    f"RERANK_ONNX_{setting.env}: expected {expected}, got {raw!r}; fix or unset it, or pass {setting.flag}"
                )
        values[setting.dest] = setting.default if value is None else value
        _check_serve_setting(setting, values[setting.dest], from_flag=getattr(args, setting.dest) is not None)
    values["model"] = args.model or os.environ.get("RERANK_ONNX_MODEL")
    return values


def _check_serve_setting(setting: ServeSetting, value: object, *, from_flag: bool) -> None:
    """A numeric setting within its range (protocol.SETTING_RANGES); an API key that is not empty."""
    from .errors import InvalidInputError
    from .settings import SETTING_RANGES, check_setting

    shown = setting.flag if from_flag else f"RERANK_ONNX_{setting.env}"
    if setting.dest in SETTING_RANGES and value is not None:
        check_setting(setting.dest, value, shown_as=shown)
    if setting.dest == "api_key" and value is not None and not str(value).strip():
        raise InvalidInputError(
            f"{shown}: expected a non-empty key, got an empty one; an empty key would let every request in: "
            "pass a real key, or leave it out to serve without authentication"
        )


def _parse_setting(setting: ServeSetting, raw: str) -> object | None:
    """The environment value as the setting's type, or None when it is not one."""
    try:
        value: object = setting.value_type(raw)
    except ValueError:
        return None
    if setting.choices and value not in setting.choices:
        return None
    if isinstance(value, (int, float)) and value < 0:
        return None
    return value


def _serve(args: argparse.Namespace) -> int:
    from .errors import InvalidInputError

    values = _serve_settings(args)
    if not values["model"]:
        raise InvalidInputError("serve: expected an artifact folder (argument or RERANK_ONNX_MODEL), got none")
    from .server import serve
    from .settings import RequestLimits, ServerSettings

    v: dict[str, Any] = values
    settings = ServerSettings(
        model_dir=v["model"],
        model_name=v["model_name"],
        api_key=v["api_key"],
        threads=v["threads"],
        backend=v["backend"],
        precision=v["precision"],
        limits=RequestLimits(max_documents=v["max_documents"], max_request_tokens=v["max_request_tokens"]),
        max_body_bytes=v["max_body_bytes"],
        coalesce_ms=v["coalesce_ms"],
        max_queue_pairs=v["max_queue_pairs"],
    )
    serve(settings, host=v["host"], port=v["port"])
    return 0


INFO_FAMILIES = ("mxbai-rerank-v2", "qwen3-reranker", "cross-encoder")
INFO_QUANTIZATIONS = ("int8", "int8-fast", "int8-static", "none")


def _info(args: argparse.Namespace) -> int:
    """Print the CPU, its class and `auto`'s choice for each family and quantization (docs/backends.md explains the rows)."""
    import json

    from .backends.openvino import available
    from .backends.select import choose, machine_summary

    installed = available()
    picks: dict[str, dict[str, str]] = {}
    for family in INFO_FAMILIES:
        for quantization in INFO_QUANTIZATIONS:
            try:
                choice = choose("auto", "auto", quantization=quantization, family=family, openvino_installed=installed)
                picks[f"{family}, {quantization}"] = {"backend": choice.backend, "precision": choice.precision}
            except RerankError as exc:  # int8-static without OpenVINO: auto refuses to fall back
                picks[f"{family}, {quantization}"] = {"error": str(exc)}
    summary = {**machine_summary(), "openvino_installed": installed}
    if args.json:
        print(json.dumps({**summary, "auto": picks}, indent=2))
        return 0
    flags = ", ".join(summary["cpu_flags"])  # type: ignore[arg-type]
    print(f"cpu: {summary['cpu']} ({summary['machine']})")
    if "planned_class" in summary:
        print(
            f"cpu class: {summary['planned_class']}, as RERANK_ONNX_CPU_CLASS asks (this CPU: {summary['cpu_class']})"
        )
    else:
        print(f"cpu class: {summary['cpu_class']}")
    print(f"cpu flags: {flags}")
    print(f"openvino: {'installed' if installed else 'not installed (pip install rerank-onnx[openvino])'}")
    print("backend='auto' runs, per artifact (family, quantization):")
    for key, pick in picks.items():
        if "error" in pick:
            print(f"  {key}: needs OpenVINO (pip install 'rerank-onnx[openvino]')")
            continue
        precision = "" if pick["precision"] == "stored" else f" {pick['precision']}"
        print(f"  {key}: {pick['backend']}{precision}")
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        from rerank_onnx_export.pipeline import export_checkpoint
    except ImportError as exc:
        raise MissingDependencyError(
            f"the export extra ({exc.name or exc})", "pip install 'rerank-onnx[export]'"
        ) from exc
    # SIGTERM (a container stop, `kill`) unwinds like Ctrl-C, so that the export removes its `.partial` folder
    signal.signal(signal.SIGTERM, _terminate)
    result = export_checkpoint(
        args.source,
        args.output,
        quantization=args.quantization,
        revision=args.revision,
        estimated_max=args.estimated_max,
        overwrite=args.overwrite,
        family=args.family,
        smooth_quant=args.smooth_quant,
        all_backends=args.check_all_backends,
        log=lambda message: print(message, file=sys.stderr),
    )
    print(_summary(result.report))
    for warning in result.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"wrote {result.folder}")
    return 0 if result.passed else 1


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _summary(report: dict[str, Any]) -> str:
    lines = [
        f"export report ({report['pairs']} built-in pairs, quantization {report['quantization']['scheme']}; "
        f"reference: {report.get('reference', 'PyTorch fp32')}):"
    ]
    for name, a in report["agreement"].items():
        lines.append(
            f"  {name:28s} max|diff| {a['max_abs_diff']:.2e}  Spearman {a['spearman']:.4f}  "
            f"top-{a['top_k']} overlap {a['top_k_overlap']:.2f}  (score std {a['reference_score_std']:.2f})"
        )
    backends = report.get("backends", {})
    if backends:
        lines.append(f"  on this {backends['cpu_class']} CPU, backend='auto' runs {backends['auto']}")
    for name, check in backends.get("results", {}).items():
        if "error" in check:
            lines.append(f"  {name:28s} cannot run here: {check['error']}")
            continue
        a = check["vs_reference"]
        lines.append(
            f"  {name + ' vs reference':28s} max|diff| {a['max_abs_diff']:.2e}  Spearman {a['spearman']:.4f}  "
            f"top-{a['top_k']} overlap {a['top_k_overlap']:.2f}"
        )
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in report["files"].items())
    lines.append(f"  files: {sizes}")
    return "\n".join(lines)


# Documents are read, encoded and scored this many lines at a time, so that memory follows the block, not the
# file (a file of 1M short lines held every token list at once: 5.1 GB).
RANK_BLOCK_LINES = 2048


@dataclass(frozen=True)
class _Ranked:
    line: int
    score: float
    text: str
    span: tuple[int, int] | None
    chunks: int


def _rank(args: argparse.Namespace) -> int:
    from .reranker import Reranker

    query = _strict_text("--query", args.query)
    instruction = _strict_text("--instruction", args.instruction) if args.instruction is not None else None
    reranker = Reranker(args.model, threads=args.threads, backend=args.backend, precision=args.precision)
    ranked: list[_Ranked] = []
    skipped = 0
    for block in _document_blocks(args.documents, RANK_BLOCK_LINES):
        # a blank line is no document: skipped unless asked for, and said so; indices stay line numbers
        kept = [(i, text) for i, text in block if args.keep_blank_lines or text.strip()]
        skipped += len(block) - len(kept)
        results = reranker.rank(
            query,
            [text for _, text in kept],
            instruction=instruction,
            normalize=args.normalize,
            long_documents=args.long_documents,
            max_chunks_per_doc=args.max_chunks_per_doc,
            return_documents=False,
            sort=False,
            show_progress=args.progress,
        )
        ranked.extend(_Ranked(kept[r.index][0], r.score, kept[r.index][1], r.span, r.chunks) for r in results)
    if skipped:
        print(f"note: skipped {skipped} blank line(s); --keep-blank-lines ranks them", file=sys.stderr)
    ranked.sort(key=lambda r: (-r.score, r.line))  # best first, ties by line, as Reranker.rank orders
    _print_ranked(ranked[: args.top_k], json_lines=args.json, chunked=args.long_documents == "chunk")
    return 0


def _print_ranked(ranked: list[_Ranked], *, json_lines: bool, chunked: bool) -> None:
    if json_lines:
        rows: list[dict[str, object]] = []
        for r in ranked:
            rows.append({"index": r.line, "score": r.score, "document": r.text})
            if chunked:
                rows[-1].update(span=r.span, chunks=r.chunks)
        print(json.dumps(rows, ensure_ascii=False))
        return
    for rank, r in enumerate(ranked, start=1):
        span = f"{r.span[0]}:{r.span[1]}/{r.chunks}\t" if chunked and r.span else ""
        print(f"{rank}\t{r.score:.4f}\t{r.line}\t{span}{r.text}")


def _batch(args: argparse.Namespace) -> int:
    from .ray.batch import BatchOptions
    from .ray.job import run_batch

    options = BatchOptions(
        query_column=args.query_column,
        document_column=args.document_column,
        score_column=args.score_column,
        instruction=_strict_text("--instruction", args.instruction) if args.instruction is not None else None,
        normalize=args.normalize,
        long_documents=args.long_documents,
        max_chunks_per_doc=args.max_chunks_per_doc,
        backend=args.backend,
        precision=args.precision,
    )
    report = run_batch(
        args.model,
        args.input,
        args.output,
        address=args.address,
        actors=args.actors,
        threads_per_actor=args.threads_per_actor,
        batch_rows=args.batch_rows,
        input_format=args.input_format,
        options=options,
        overwrite=args.overwrite,
    )
    print(
        f"scored {report.rows - report.failed} of {report.rows} rows in {report.seconds:.1f} s "
        f"({report.rows / report.seconds:.1f} rows/s; {report.actors} actor(s) x {report.threads_per_actor} "
        f"thread(s)); {report.truncated} truncated; wrote {args.output}",
        file=sys.stderr,
    )
    if report.failed:
        print(f"error: {report.failed} row(s) could not be scored; their error column says why", file=sys.stderr)
        return 1
    return 0


def _strict_text(name: str, value: str) -> str:
    """A command-line argument as text: the shell hands over bytes, which Python decodes with
    surrogateescape, so invalid UTF-8 shows up as lone surrogates."""
    from .errors import InvalidInputError

    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{name} is not valid UTF-8 text (byte {exc.start}); pass UTF-8") from exc
    return value


def _document_blocks(source: str, size: int) -> Iterator[list[tuple[int, str]]]:
    """The documents file (or stdin), `size` numbered lines at a time, read as it is consumed."""
    from .errors import InvalidInputError

    where = "stdin" if source == "-" else f"documents file {source!r}"
    try:
        handle = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InvalidInputError(f"cannot read documents from {source!r}: {exc.strerror}") from exc
    offset = 0
    block: list[tuple[int, str]] = []
    try:
        for number, raw in enumerate(handle):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(
                    f"{where} is not UTF-8 text (byte {offset + exc.start}); convert it to UTF-8"
                ) from exc
            offset += len(raw)
            block.append((number, text.rstrip("\r\n")))
            if len(block) == size:
                yield block
                block = []
    except OSError as exc:
        raise InvalidInputError(f"cannot read documents from {source!r}: {exc.strerror}") from exc
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    if block:
        yield block


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
