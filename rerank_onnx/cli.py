"""`rerank-onnx export | rank`: the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from .errors import MissingDependencyError, RerankError


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

    export = commands.add_parser("export", help="convert a Hugging Face checkpoint into an artifact folder")
    export.add_argument("source", help="hub id (e.g. mixedbread-ai/mxbai-rerank-large-v2) or local checkpoint folder")
    export.add_argument("output", help="artifact folder to write")
    export.add_argument(
        "--quantize", choices=["int8", "int8-fast", "none"], default="int8",
        help="int8 (default): blockwise, ranks like fp32; int8-fast: per-tensor activations, fastest, less "
        "faithful; none: fp32",
    )  # fmt: skip
    export.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    export.add_argument(
        "--estimated-max", type=float, default=None,
        help="normalization constant (default: 9.0 for the base-v2 hub id, 12.0 otherwise, as the reference)",
    )  # fmt: skip
    export.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    export.set_defaults(run=_export)

    rank = commands.add_parser("rank", help="rank documents against a query")
    rank.add_argument("model", help="artifact folder written by `rerank-onnx export`")
    rank.add_argument("documents", help="text file with one document per line, or - for stdin")
    rank.add_argument("--query", required=True)
    rank.add_argument("--instruction", default=None)
    rank.add_argument("--top-k", type=int, default=None, help="show only the best K (default: all)")
    rank.add_argument("--normalize", action="store_true", help="scores in (0, 1) instead of raw logit differences")
    rank.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rank.add_argument("--threads", type=int, default=None)
    rank.add_argument("--progress", action="store_true", help="show a progress bar")
    rank.set_defaults(run=_rank)

    serve = commands.add_parser(
        "serve", help="serve the rerank HTTP API (Jina/Cohere/vLLM/TEI shapes)",
        description="Every option can also be set by the environment variable named in its help.",
    )  # fmt: skip
    serve.add_argument("model", nargs="?", default=_env("MODEL"), help="artifact folder [RERANK_ONNX_MODEL]")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="bind address [RERANK_ONNX_HOST] (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=int(_env("PORT", "8080")), help="[RERANK_ONNX_PORT] (default 8080)")
    serve.add_argument("--api-key", default=_env("API_KEY"), help="require 'Authorization: Bearer KEY' [RERANK_ONNX_API_KEY]")
    serve.add_argument("--model-name", default=_env("MODEL_NAME"), help="name reported to clients [RERANK_ONNX_MODEL_NAME]")
    serve.add_argument("--threads", type=int, default=_env_int("THREADS"), help="[RERANK_ONNX_THREADS]")
    serve.add_argument("--max-documents", type=int, default=_env_int("MAX_DOCUMENTS", 1000), help="per request [RERANK_ONNX_MAX_DOCUMENTS] (1000)")
    serve.add_argument("--max-body-bytes", type=int, default=_env_int("MAX_BODY_BYTES", 2 * 1024 * 1024), help="[RERANK_ONNX_MAX_BODY_BYTES] (2 MiB)")
    serve.add_argument("--max-request-tokens", type=int, default=_env_int("MAX_REQUEST_TOKENS", 1_000_000), help="prompt tokens per request [RERANK_ONNX_MAX_REQUEST_TOKENS]")
    serve.add_argument("--max-queue-pairs", type=int, default=_env_int("MAX_QUEUE_PAIRS", 4096), help="queued pairs before 429 [RERANK_ONNX_MAX_QUEUE_PAIRS]")
    serve.add_argument("--coalesce-ms", type=float, default=float(_env("COALESCE_MS", "0")), help="wait this long to batch concurrent requests together; 0 (default) disables [RERANK_ONNX_COALESCE_MS]")
    serve.set_defaults(run=_serve)
    return parser


def _env(name: str, default: str | None = None) -> str | None:
    import os

    return os.environ.get(f"RERANK_ONNX_{name}", default)


def _env_int(name: str, default: int | None = None) -> int | None:
    value = _env(name)
    return int(value) if value else default


def _serve(args: argparse.Namespace) -> int:
    from .errors import InvalidInputError

    if not args.model:
        raise InvalidInputError("serve: expected an artifact folder (argument or RERANK_ONNX_MODEL), got none")
    from .protocol import Limits
    from .server import ServerSettings, serve

    settings = ServerSettings(
        model_dir=args.model, model_name=args.model_name, api_key=args.api_key, threads=args.threads,
        limits=Limits(max_documents=args.max_documents, max_request_tokens=args.max_request_tokens),
        max_body_bytes=args.max_body_bytes, coalesce_ms=args.coalesce_ms, max_queue_pairs=args.max_queue_pairs,
    )  # fmt: skip
    serve(settings, host=args.host, port=args.port)
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        from rerank_onnx_export.pipeline import export_checkpoint
    except ImportError as exc:
        raise MissingDependencyError(
            f"the export extra ({exc.name or exc})", "pip install 'rerank-onnx[export]'"
        ) from exc
    result = export_checkpoint(
        args.source, args.output, quantize=args.quantize, revision=args.revision,
        estimated_max=args.estimated_max, overwrite=args.overwrite,
        log=lambda message: print(message, file=sys.stderr),
    )  # fmt: skip
    print(_summary(result.report))
    for warning in result.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"wrote {result.folder}")
    return 0 if result.passed else 1


def _summary(report: dict) -> str:
    lines = [f"export report ({report['pairs']} built-in pairs, quantization {report['quantization']['scheme']}):"]
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
        a = check["vs_pytorch"]
        lines.append(
            f"  {name + ' vs pytorch':28s} max|diff| {a['max_abs_diff']:.2e}  Spearman {a['spearman']:.4f}  "
            f"top-{a['top_k']} overlap {a['top_k_overlap']:.2f}"
        )
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in report["files"].items())
    lines.append(f"  files: {sizes}")
    return "\n".join(lines)


def _rank(args: argparse.Namespace) -> int:
    from .reranker import Reranker

    documents = _read_documents(args.documents)
    reranker = Reranker(args.model, threads=args.threads)
    results = reranker.rank(
        args.query, documents, top_k=args.top_k, instruction=args.instruction,
        normalize=args.normalize, show_progress=args.progress,
    )  # fmt: skip
    if args.json:
        print(json.dumps([{"index": r.index, "score": r.score, "document": r.document} for r in results], ensure_ascii=False))
    else:
        for rank, r in enumerate(results, start=1):
            print(f"{rank}\t{r.score:.4f}\t{r.index}\t{r.document}")
    return 0


def _read_documents(source: str) -> list[str]:
    from .errors import InvalidInputError

    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot read documents from {source!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"documents file {source!r} is not UTF-8 text: {exc}") from exc
    return text.splitlines()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
