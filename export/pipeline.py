"""export_checkpoint: checkpoint -> self-contained artifact folder, with a self-check report."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rerank_onnx import artifact
from rerank_onnx.artifact import Template
from rerank_onnx.backends import open_session
from rerank_onnx.backends.select import BackendChoice
from rerank_onnx.errors import ExportError, MissingDependencyError, RerankError
from rerank_onnx.model import LoadedModel
from rerank_onnx.reranker import Reranker
from rerank_onnx.template import PairEncoder, load_tokenizer

from . import cross_encoder, report
from .calibration import calibration_pairs
from .decoder_graph import DecoderShape, build_decoder_graph
from .prompt import FAMILIES, PROMPTS, Prompt, detect_family, template_data
from .quantize import BLOCK, QUANTIZATIONS, SMOOTH_QUANT_ALPHA, decoder_feeds, describe, encoder_feeds
from .quantize import quantize as quantize_graph
from .reference import reference_scores
from .safetensors_reader import SafetensorsWeights
from .source import Checkpoint, resolve_checkpoint

FP32_TOLERANCE = 1e-3  # fp32 graph vs the fp32 reference, max |diff|: above this the export is broken
INT8_MIN_SPEARMAN = 0.95  # a quantized graph vs the fp32 reference on the built-in pairs: below this, warn loudly
INT8_MIN_TOP_K_OVERLAP = 0.66
# the self-check's batches: onnxruntime's arena keeps the largest run's working memory, which at 4B is GBs
SELF_CHECK_BATCH_TOKENS = 1024
BROKEN_SPEARMAN = 0.5  # a quantized graph (with no fp32 graph to check) this far from the reference is broken
NUMPY_REFERENCE = "numpy fp32 (rerank_onnx_export.reference: transformers' eager forward, written in numpy)"
PYTORCH_REFERENCE = "PyTorch fp32 (transformers)"


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    report: dict[str, Any]
    passed: bool  # every hard check (fp32 agreement) passed
    warnings: list[str]


def export_checkpoint(
    source: str,
    output_dir: str | Path,
    *,
    quantization: str = "int8",
    revision: str | None = None,
    estimated_max: float | None = None,
    overwrite: bool = False,
    family: str = "auto",
    smooth_quant: str = "auto",
    all_backends: bool = False,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Convert a reranker checkpoint (hub id or folder) into an artifact folder.

    Args:
        source: a hub id or a local checkpoint folder.
        output_dir: the artifact folder to write (written as `<name>.partial`, renamed when complete).
        quantization: "int8" (blockwise, the default), "int8-fast", "int8-static" (activation scales calibrated
            at export; needs the export-int8-static extra) or "none".
        revision: the hub revision.
        estimated_max: the normalization constant (default: the family reference's, for mxbai per hub id).
        overwrite: replace an existing, non-empty output folder.
        family: "auto" (from the checkpoint's architecture), "mxbai-rerank-v2", "qwen3-reranker" or
            "cross-encoder".
        smooth_quant: int8-static only: "on" or "off" applies SmoothQuant before calibrating or not; "auto"
            applies it to cross-encoders (it ranked closer to fp32 on a real-weight encoder) and not to the decoder
            families (it ranked further from fp32 on random base-v2 weights, at 1.6x the export's memory).
        all_backends: self-check every OpenVINO precision this CPU runs natively, not only onnxruntime and
            what backend="auto" picks here (at large-v2 the others cost minutes, and OpenVINO fp32 6 GB).
        log: where progress lines go.

    Returns:
        The folder, its self-check report, whether the hard checks passed, and warnings.

    Raises:
        ExportError: the checkpoint cannot be fetched, read or converted; nothing is left behind.
    """
    _check_arguments(quantization, family, estimated_max, smooth_quant)
    output = Path(output_dir).expanduser()
    _check_output(source, output, overwrite)
    started = time.perf_counter()
    checkpoint = resolve_checkpoint(source, revision=revision)
    family = family if family != "auto" else detect_family(checkpoint.config, source)
    prompt = PROMPTS.get(family)  # None: a cross-encoder, which has a pair encoding instead of a prompt
    _check_cross_encoder(checkpoint, prompt, quantization)
    smooth = smooth_quant == "on" or (smooth_quant == "auto" and quantization == "int8-static" and prompt is None)
    estimated_max = _default_estimated_max(checkpoint, prompt) if estimated_max is None else estimated_max
    log(f"checkpoint: {checkpoint.folder} ({family})")
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        export_report = _export_family(
            staging, checkpoint, prompt, quantization, smooth, estimated_max, all_backends, log
        )
        export_report["timings"]["total_s"] = time.perf_counter() - started
        (staging / artifact.REPORT_FILE).write_text(json.dumps(export_report, indent=2) + "\n")
    except BaseException as exc:  # Ctrl-C, or SIGTERM through the CLI's handler, too: no partial folder
        shutil.rmtree(staging, ignore_errors=True)
        error = _as_export_error(exc, source)
        if error is exc:
            raise
        raise error from exc
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    return ExportResult(output, export_report, export_report["passed"], export_report["warnings"])


def _export_family(
    staging: Path,
    checkpoint: Checkpoint,
    prompt: Prompt | None,
    quantization: str,
    smooth_quant: bool,
    estimated_max: float,
    all_backends: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Write the artifact into `staging` by the family's route; its self-check report."""
    with quiet_transformers():
        if prompt is None:  # a cross-encoder
            return _export_cross_encoder_into(staging, checkpoint, quantization, smooth_quant, all_backends, log)
        return _export_into(staging, checkpoint, prompt, quantization, smooth_quant, estimated_max, all_backends, log)


def _default_estimated_max(checkpoint: Checkpoint, prompt: Prompt | None) -> float:
    """The family reference's normalization constant (mxbai's per hub id); a cross-encoder's probability is the
    plain sigmoid of its logit."""
    if prompt is None:
        return 0.0
    return checkpoint.estimated_max if prompt.family == "mxbai-rerank-v2" else prompt.estimated_max


def _as_export_error(exc: BaseException, source: str) -> BaseException:
    """transformers, torch and onnx raise their own types for a checkpoint they cannot take: one ExportError
    line instead; the project's own errors and KeyboardInterrupt / SystemExit as they are."""
    if not isinstance(exc, Exception) or isinstance(exc, RerankError):
        return exc
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ExportError(f"cannot export {source}: {type(exc).__name__}: {reason}")


def _check_arguments(quantization: str, family: str, estimated_max: float | None, smooth_quant: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization: expected one of {sorted(QUANTIZATIONS)}, got {quantization!r}")
    if smooth_quant not in ("auto", "on", "off"):
        raise ExportError(f"smooth_quant: expected auto, on or off, got {smooth_quant!r}")
    if smooth_quant != "auto" and quantization != "int8-static":
        raise ExportError(
            f"smooth_quant: SmoothQuant applies to int8-static only, got {smooth_quant!r} with quantization "
            f"{quantization!r}; pass quantization='int8-static', or leave smooth_quant out"
        )
    if quantization == "int8-static" and importlib.util.find_spec("nncf") is None:  # said before minutes of work
        raise MissingDependencyError("nncf", "pip install 'rerank-onnx[export-int8-static]'")
    if family != "auto" and family not in FAMILIES:
        raise ExportError(f"family: expected auto or one of {sorted(FAMILIES)}, got {family!r}")
    if estimated_max is not None and (
        isinstance(estimated_max, bool)
        or not isinstance(estimated_max, (int, float))
        or not math.isfinite(estimated_max)
    ):
        raise ExportError(
            f"estimated_max: expected a finite number, got {estimated_max!r}; pass e.g. 12.0, or leave it out"
        )


def _check_cross_encoder(checkpoint: Checkpoint, prompt: Prompt | None, quantization: str) -> None:
    """A cross-encoder (no prompt): its exporter installed, its head one logit."""
    if prompt is not None:
        return
    cross_encoder.require_exporter()
    cross_encoder.check_head(checkpoint)


def _check_output(source: str, output: Path, overwrite: bool) -> None:
    _refuse_source_as_output(source, output)
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} is a file, not a folder: choose a folder path for the artifact")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"{output} exists and is not empty; choose another folder or pass --overwrite")


def _refuse_source_as_output(source: str, output: Path) -> None:
    """An output folder that is the checkpoint folder, or holds it, would be replaced by its own export."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return  # a hub id
    src, out = folder.resolve(), output.resolve()
    if out == src or out in src.parents:
        raise ExportError(
            f"output {str(output)!r} is (or holds) the checkpoint folder {source!r}: the export would replace its own "
            "source; choose another output folder"
        )


def torch_installed() -> bool:
    """Whether torch and transformers can be imported (the decoder export runs without them)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence what transformers and torch.onnx print about code paths this export does not take (the
    Mistral regex notice of a converted tokenizer, deprecations inside the tracer); nothing without them."""
    if not torch_installed():
        yield
        return
    import torch
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*TracerWarning.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
            warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
            yield
    finally:
        transformers.logging.set_verbosity(level)


@dataclass
class _Built:
    """What a family's export step leaves for the shared tail: the fp32 graph (None: the quantized graph was
    written directly), its config section, the built-in pairs as the runtime encodes them and the fp32
    reference's scores of them."""

    family: str
    fp32_path: Path | None
    graph_written: bool  # the artifact's graph is in place (else _finish quantizes fp32_path into it)
    config_section: dict[str, dict[str, Any]]  # write_config's `template=` or `pair_encoding=` argument
    architecture: dict[str, Any]
    pair_ids: list[list[int]]
    document_starts: list[int]
    reference: str  # what computed reference_scores
    reference_scores: np.ndarray
    pytorch_scores: np.ndarray | None  # a second reference, where torch is installed (decoders)
    timings: dict[str, float]
    calibration: list[dict[str, np.ndarray]] | None = None  # int8-static: the graph's inputs per calibration prompt


def _export_into(
    staging: Path,
    checkpoint: Checkpoint,
    prompt: Prompt,
    quantization: str,
    smooth_quant: bool,
    estimated_max: float,
    all_backends: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Write a decoder family's artifact into `staging` with numpy and onnx only (decoder_graph.py); return its
    self-check report (without the total time). PyTorch scores the built-in pairs too where it is installed."""
    timings: dict[str, float] = {}
    work = staging / ".work"
    work.mkdir(parents=True)
    template_dict = _write_tokenizer(staging, checkpoint, prompt)
    template = Template.from_dict(template_dict)
    tokenizer = load_tokenizer(str(staging / artifact.TOKENIZER_FILE))
    encoder = PairEncoder(tokenizer, template, max_length=template.max_length)
    pair_ids, document_starts = _builtin_pair_ids(encoder)
    weights, shape = SafetensorsWeights(checkpoint.folder), DecoderShape.from_config(checkpoint.config)
    yes, no = template.yes_token_id, template.no_token_id

    t = time.perf_counter()
    scores = reference_scores(
        weights,
        shape,
        pair_ids,
        yes_token_id=yes,
        no_token_id=no,
        progress=lambda done: log(f"scoring the built-in pairs with the fp32 reference: layer {done}/{shape.layers}"),
    )
    timings["reference_scoring_s"] = time.perf_counter() - t
    pytorch_scores = _pytorch_scores(checkpoint, pair_ids, yes, no, timings, log) if torch_installed() else None

    t = time.perf_counter()
    graph_path = _write_decoder_graph(staging, checkpoint, quantization, yes, no, log)
    timings["build_graph_s"] = time.perf_counter() - t
    static = quantization == "int8-static"
    built = _Built(
        family=prompt.family,
        fp32_path=graph_path if quantization in ("none", "int8-static") else None,
        graph_written=not static,
        calibration=_calibration_feeds(graph_path, encoder) if static else None,
        config_section={"template": template_dict},
        architecture={k: checkpoint.config.get(k) for k in _ARCH_KEYS},
        pair_ids=pair_ids,
        document_starts=document_starts,
        reference=NUMPY_REFERENCE,
        reference_scores=scores,
        pytorch_scores=pytorch_scores,
        timings=timings,
    )
    return _finish(staging, checkpoint, built, quantization, smooth_quant, estimated_max, all_backends, log)


def _write_decoder_graph(
    staging: Path, checkpoint: Checkpoint, quantization: str, yes: int, no: int, log: Callable[[str], None]
) -> Path:
    """Write the score graph: the artifact's own, or for int8-static the fp32 graph it is calibrated on, into
    the work folder (quantized by `_finish`). Returns its path."""
    static = quantization == "int8-static"
    log(f"writing the {'fp32' if quantization in ('none', 'int8-static') else quantization} score graph")
    graph_path = staging / ".work" / "fp32.onnx" if static else staging / artifact.GRAPH_FILE
    build_decoder_graph(
        checkpoint.folder,
        checkpoint.config,
        graph_path,
        data_file=graph_path.name + ".data" if static else artifact.GRAPH_DATA_FILE,
        yes_token_id=yes,
        no_token_id=no,
        quantization="none" if static else quantization,
        log=lambda message: None,
    )
    return graph_path


def _pytorch_scores(
    checkpoint: Checkpoint,
    pair_ids: list[list[int]],
    yes: int,
    no: int,
    timings: dict[str, float],
    log: Callable[[str], None],
) -> np.ndarray:
    """The built-in pairs scored by transformers' model in fp32: a second reference, where torch is installed."""
    import torch
    from transformers import AutoModelForCausalLM

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(checkpoint.folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()  # type: ignore[no-untyped-call]
    scores = report.torch_scores(
        model,
        pair_ids,
        yes_id=yes,
        no_id=no,
        progress=lambda done: log(f"scoring the built-in pairs with PyTorch fp32: {done}/{len(pair_ids)}"),
    )
    del model
    gc.collect()
    timings["pytorch_scoring_s"] = time.perf_counter() - t
    return scores


def _export_cross_encoder_into(
    staging: Path,
    checkpoint: Checkpoint,
    quantization: str,
    smooth_quant: bool,
    all_backends: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """`_export_into` for a cross-encoder: optimum's graph and the tokenizer's pair encoding."""
    timings: dict[str, float] = {}
    work = staging / ".work"
    work.mkdir(parents=True)
    t = time.perf_counter()
    log("exporting the fp32 graph (optimum, text-classification)")
    fp32_path = (work if quantization != "none" else staging) / artifact.GRAPH_FILE
    graph_inputs = cross_encoder.export_fp32(checkpoint, fp32_path, data_file=artifact.GRAPH_DATA_FILE)
    timings["export_fp32_s"] = time.perf_counter() - t
    pair_encoding = cross_encoder.write_tokenizer(staging, checkpoint, graph_inputs)
    pair_ids, starts = cross_encoder.builtin_pairs(staging, pair_encoding)
    t = time.perf_counter()
    log(f"scoring the {len(pair_ids)} built-in pairs with PyTorch fp32")
    torch_scores = cross_encoder.torch_scores(checkpoint, pair_ids, starts, pair_encoding["token_types"])
    timings["pytorch_scoring_s"] = time.perf_counter() - t
    calibration = None
    if quantization == "int8-static":
        calibration_ids, calibration_starts = cross_encoder.encode_pairs(staging, pair_encoding, *calibration_pairs())
        calibration = encoder_feeds(calibration_ids, calibration_starts, token_types=pair_encoding["token_types"])
    built = _Built(
        family=artifact.CROSS_ENCODER,
        fp32_path=fp32_path,
        graph_written=quantization == "none",
        calibration=calibration,
        config_section={"pair_encoding": pair_encoding},
        architecture={k: checkpoint.config.get(k) for k in _ENCODER_ARCH_KEYS},
        pair_ids=pair_ids,
        document_starts=starts,
        reference=PYTORCH_REFERENCE,
        reference_scores=torch_scores,
        pytorch_scores=None,
        timings=timings,
    )
    return _finish(staging, checkpoint, built, quantization, smooth_quant, 0.0, all_backends, log)


def _finish(
    staging: Path,
    checkpoint: Checkpoint,
    built: _Built,
    quantization: str,
    smooth_quant: bool,
    estimated_max: float,
    all_backends: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every family's tail: quantize, write the config, check the written graph on every backend, report."""
    timings = built.timings
    block = BLOCK if quantization == "int8" else None  # recorded: OpenVINO's int8 activations take it as their group
    if not built.graph_written:
        assert built.fp32_path is not None
        t = time.perf_counter()
        log(f"quantizing ({quantization}{', SmoothQuant' if smooth_quant else ''})")
        quantize_graph(
            quantization,
            built.fp32_path,
            staging / artifact.GRAPH_FILE,
            data_file=artifact.GRAPH_DATA_FILE,
            calibration=built.calibration,
            smooth_quant=smooth_quant,
        )
        timings["quantize_s"] = time.perf_counter() - t
    artifact.write_config(
        staging,
        source_model=checkpoint.source,
        source_revision=checkpoint.revision,
        template=built.config_section.get("template"),
        pair_encoding=built.config_section.get("pair_encoding"),
        quantization=quantization,
        quantization_description=describe(quantization, smooth_quant=smooth_quant),
        quantization_block=block,
        estimated_max=estimated_max,
    )
    log(
        f"checking the written graph on {'every backend this machine runs' if all_backends else 'onnxruntime and what auto picks here'}"
    )
    t = time.perf_counter()
    checks = _self_check(staging, built, quantization, all_backends)
    timings["self_check_s"] = time.perf_counter() - t
    shutil.rmtree(staging / ".work")
    return {
        "source_model": checkpoint.source,
        "source_revision": checkpoint.revision,
        "family": built.family,
        "architecture": built.architecture,
        "reference": built.reference,
        "quantization": {
            "scheme": quantization,
            "description": describe(quantization, smooth_quant=smooth_quant),
            **({"block": block} if block is not None else {}),
            **({"smooth_quant_alpha": SMOOTH_QUANT_ALPHA} if smooth_quant else {}),
        },
        "pairs": len(built.pair_ids),
        "prompt_tokens": [len(ids) for ids in built.pair_ids],
        **checks,
        "timings": timings,
        "files": {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()},
    }


def _write_tokenizer(staging: Path, checkpoint: Checkpoint, prompt: Prompt) -> dict[str, Any]:
    """Save the checkpoint's fast tokenizer into the artifact; return the template section built with it."""
    settings = _tokenizer_settings(checkpoint.folder)
    destination = staging / artifact.TOKENIZER_FILE
    if (checkpoint.folder / artifact.TOKENIZER_FILE).is_file():
        _write_tokenizer_json(checkpoint.folder / artifact.TOKENIZER_FILE, settings, destination)
    elif torch_installed():  # vocab.json + merges.txt only: transformers builds the fast tokenizer
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.folder))  # type: ignore[no-untyped-call]
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ExportError(
                f"{checkpoint.source}: no fast tokenizer (tokenizer.json) could be built for this checkpoint"
            )
        hf_tokenizer.backend_tokenizer.save(str(destination))
    else:
        raise ExportError(
            f"{checkpoint.folder} has no tokenizer.json; build one with transformers "
            "(AutoTokenizer.from_pretrained(folder).save_pretrained(folder)) and export again"
        )
    tokenizer = load_tokenizer(str(destination))
    model_max_length = int(checkpoint.config.get("max_position_embeddings", 32768))
    truncation_side = str(settings.get("truncation_side") or "right")
    return template_data(tokenizer, prompt, model_max_length=model_max_length, truncation_side=truncation_side)


def _tokenizer_settings(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json (empty when absent)."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    return settings if isinstance(settings, dict) else {}


def _write_tokenizer_json(source: Path, settings: dict[str, Any], destination: Path) -> None:
    """tokenizer.json with tokenizer_config.json's `added_tokens_decoder` applied, as transformers applies it
    when it loads the tokenizer (it can mark tokens special, or add tokens the file lacks)."""
    data = json.loads(source.read_text(encoding="utf-8"))
    added = {int(token["id"]): token for token in data.get("added_tokens") or []}
    for key, entry in (settings.get("added_tokens_decoder") or {}).items():
        token = {"id": int(key), **{k: entry[k] for k in _ADDED_TOKEN_KEYS if k in entry}}
        added[int(key)] = {**added.get(int(key), {}), **token}
    data["added_tokens"] = [added[i] for i in sorted(added)]
    destination.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


_ADDED_TOKEN_KEYS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def _self_check(staging: Path, built: _Built, quantization: str, all_backends: bool) -> dict[str, Any]:
    """The report's agreement, backends, passed and warnings sections."""
    pair_ids, document_starts, reference = built.pair_ids, built.document_starts, built.reference_scores
    # Scored as rank() scores them: the pairs of one query share the computation of its head.
    # One session for both: a second one of the large-v2 graph costs seconds and its prepacked weights.
    model = Reranker(staging, backend="onnxruntime", max_batch_tokens=SELF_CHECK_BATCH_TOKENS).model
    graph_scores = model.score_encoded(pair_ids, document_starts=document_starts)
    full_prompt_scores = _full_prompt_scores(model, pair_ids)
    del model
    gc.collect()
    backend_checks = _backend_checks(staging, quantization, pair_ids, document_starts, reference, all_backends)
    backend_checks["results"]["onnxruntime"] = _backend_agreement(reference, graph_scores, full_prompt_scores)
    comparisons: dict[str, dict[str, Any]] = {}
    graph_name = "fp32" if quantization == "none" else quantization
    comparisons[f"{graph_name}_graph_vs_reference"] = asdict(report.agreement(reference, graph_scores))
    if full_prompt_scores is not None:  # a cross-encoder has no shared prefix to check
        comparisons["shared_prefix_vs_full_prompts"] = asdict(
            report.agreement(full_prompt_scores, graph_scores[_full_prompt_pairs()], group_size=_FULL_PROMPT_DOCUMENTS)
        )
    if quantization != "none" and built.fp32_path is not None:
        fp32_scores = _score_fp32_graph(staging, built.fp32_path, pair_ids, document_starts)
        comparisons["fp32_graph_vs_reference"] = asdict(report.agreement(reference, fp32_scores))
        comparisons[f"{quantization}_graph_vs_fp32_graph"] = asdict(report.agreement(fp32_scores, graph_scores))
    if built.pytorch_scores is not None:
        comparisons["reference_vs_pytorch"] = asdict(report.agreement(built.pytorch_scores, reference))
    passed, warnings = _verdict(comparisons, quantization)
    if quantization == "int8-static":  # the engine auto runs it on must share prefixes exactly
        for name, result in backend_checks["results"].items():
            moved = result.get("shared_prefix_vs_full_max_abs_diff", 0.0)
            if name.startswith("openvino") and not moved <= FP32_TOLERANCE:
                passed = False
                warnings.append(
                    f"{name}: scores with a shared prefix disagree with full prompts: max |diff| {moved:.2e}"
                )
    return {"agreement": comparisons, "backends": backend_checks, "passed": passed, "warnings": warnings}


_FULL_PROMPT_DOCUMENTS = len(report.BUILTIN_DOCUMENTS) // 2


def _full_prompt_pairs() -> list[int]:
    """The built-in pairs scored a second time as full prompts: the first half of every query's documents
    (equality is what is checked, which a few pairs per query show as well as all of them)."""
    per_query = len(report.BUILTIN_DOCUMENTS)
    return [q * per_query + d for q in range(len(report.BUILTIN_QUERIES)) for d in range(_FULL_PROMPT_DOCUMENTS)]


def _full_prompt_scores(model: LoadedModel, pair_ids: list[list[int]]) -> np.ndarray | None:
    """The _full_prompt_pairs scored as full prompts, no prefix shared; None for a model that shares nothing
    (a cross-encoder: its scores are full-prompt scores already)."""
    if not model.computes_shared_prefix:
        return None
    return model.score_encoded([pair_ids[i] for i in _full_prompt_pairs()])


def _verdict(comparisons: dict[str, dict[str, Any]], quantization: str) -> tuple[bool, list[str]]:
    """Whether the hard checks pass, and warnings. Hard: the fp32 graph equals the fp32 reference (a quantized
    graph written without an fp32 graph: ranks like it at all, Spearman >= BROKEN_SPEARMAN), the reference
    equals PyTorch where both ran, and a shared prefix equals full prompts."""
    warnings: list[str] = []
    passed = True
    for name in ("fp32_graph_vs_reference", "reference_vs_pytorch"):
        check = comparisons.get(name)
        if check is not None and not check["max_abs_diff"] <= FP32_TOLERANCE:
            passed = False
            warnings.append(f"{name}: max |diff| {check['max_abs_diff']:.2e} > {FP32_TOLERANCE:.0e}")
    quantized = comparisons.get(f"{quantization}_graph_vs_reference") if quantization != "none" else None
    unchecked = quantized is not None and "fp32_graph_vs_reference" not in comparisons  # no fp32 graph was built
    if unchecked and quantized is not None and not quantized["spearman"] >= BROKEN_SPEARMAN:  # NaN fails too
        passed = False
        warnings.append(
            f"{quantization} graph does not rank like the fp32 reference: Spearman {quantized['spearman']:.3f}"
        )
    prefix_check = comparisons.get("shared_prefix_vs_full_prompts", {"max_abs_diff": 0.0})
    prefix_ok = prefix_check["max_abs_diff"] <= FP32_TOLERANCE
    if quantization == "int8-static" and not prefix_ok:
        # measured on base-v2: onnxruntime's scores after a shared prefix move (OpenVINO's, which auto runs for this
        # quantization, do not: the backends section says so per engine); not explained yet
        warnings.append(
            f"onnxruntime: scores with a shared prefix disagree with full prompts (max |diff| "
            f"{prefix_check['max_abs_diff']:.2e}); backend='auto' runs this quantization on OpenVINO (pip install "
            "'rerank-onnx[openvino]'): see its line in the backends section"
        )
    # int8-fast quantizes activations with one scale per batch, so a shared prefix moves its scores a little
    elif quantization != "int8-fast" and not prefix_ok:
        passed = False
        warnings.append(
            f"scores with a shared prefix disagree with full prompts: max |diff| {prefix_check['max_abs_diff']:.2e} "
            f"> {FP32_TOLERANCE:.0e}"
        )
    if quantized is not None and not (
        quantized["spearman"] >= INT8_MIN_SPEARMAN and quantized["top_k_overlap"] >= INT8_MIN_TOP_K_OVERLAP
    ):
        warnings.append(
            f"{quantization} graph agrees poorly with the fp32 reference: Spearman {quantized['spearman']:.3f} (want >= "
            f"{INT8_MIN_SPEARMAN}), top-{quantized['top_k']} overlap {quantized['top_k_overlap']:.2f} (want >= "
            f"{INT8_MIN_TOP_K_OVERLAP}). Check the ranking on your own data, or export with --quantization int8 "
            "(blockwise) or none (fp32)."
        )
    return passed, warnings


_ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
    "tie_word_embeddings",
)


_ENCODER_ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
)


def _calibration_feeds(graph_path: Path, encoder: PairEncoder) -> list[dict[str, np.ndarray]]:
    """int8-static's calibration inputs: calibration.py's pairs, each prompt alone (no padding), as the runtime
    encodes them."""
    queries, documents = calibration_pairs()
    encoded = encoder.encode(queries, documents, instruction=None)
    return decoder_feeds(graph_path, encoded.input_ids)


def _builtin_pair_ids(encoder: PairEncoder) -> tuple[list[list[int]], list[int]]:
    queries, documents, instructions = report.builtin_pairs()
    ids: list[list[int]] = []
    heads: list[int] = []
    for q, d, i in zip(queries, documents, instructions):
        encoded = encoder.encode([q], [d], instruction=i)
        ids.extend(encoded.input_ids)
        heads.extend(encoded.document_starts)
    return ids, heads


def _backend_checks(
    folder: Path,
    quantization: str,
    pair_ids: list[list[int]],
    document_starts: list[int],
    reference: np.ndarray,
    all_backends: bool,
) -> dict[str, Any]:
    """The artifact on what `backend="auto"` picks here (with all_backends: on every OpenVINO precision this
    machine runs natively) against the fp32 reference: a user with the real checkpoint sees the agreement on
    their CPU. onnxruntime is checked by the caller."""
    from rerank_onnx.artifact import load_artifact
    from rerank_onnx.backends.openvino import available
    from rerank_onnx.backends.select import choose, cpu_class, cpu_flags
    from rerank_onnx.errors import RerankError

    installed = available()
    kind = cpu_class(cpu_flags())
    family = load_artifact(folder).family
    auto = choose("auto", "auto", quantization=quantization, family=family, openvino_installed=installed)
    checks: dict[str, Any] = {"cpu_class": kind, "auto": auto.describe(), "all_backends": all_backends, "results": {}}
    precisions = _native_precisions(quantization, family) if installed and all_backends else []
    if auto.backend == "openvino" and auto.precision not in precisions:
        precisions.append(auto.precision)
    for precision in precisions:
        try:
            # compiled into the compile cache as the runtime compiles it: the weights are read from the rewritten
            # graph's file there, not held twice in memory, and the first load of the artifact finds the blob
            reranker = Reranker(
                folder,
                backend="openvino",
                precision=precision,  # type: ignore[arg-type]
                max_batch_tokens=SELF_CHECK_BATCH_TOKENS,
            )
        except RerankError as exc:
            checks["results"][f"openvino-{precision}"] = {"error": str(exc)}
            continue
        shared = reranker.model.score_encoded(pair_ids, document_starts=document_starts)
        checks["results"][f"openvino-{precision}"] = _backend_agreement(
            reference, shared, _full_prompt_scores(reranker.model, pair_ids)
        )
        del reranker
        gc.collect()
    return checks


def _native_precisions(quantization: str, family: str) -> list[str]:
    """The OpenVINO precisions that run as themselves on this CPU for an artifact of `quantization`, as `choose`
    resolves them: bf16 and int8 run as fp32 without bf16 instructions, int8 needs the int8 artifact, and
    OpenVINO cannot run int8-fast at all."""
    from rerank_onnx.backends.select import PRECISIONS, choose
    from rerank_onnx.errors import InvalidInputError

    native: list[str] = []
    for precision in (p for p in PRECISIONS if p != "auto"):
        try:
            asked = choose("openvino", precision, quantization=quantization, family=family, openvino_installed=True)
            if asked.precision == precision:
                native.append(precision)
        except InvalidInputError:  # refused for this artifact
            continue
    return native


def _backend_agreement(reference: np.ndarray, shared: np.ndarray, full: np.ndarray | None) -> dict[str, Any]:
    """A backend's shared-prefix scores against the reference, and against its own full-prompt scores of
    _full_prompt_pairs (0.0 for a model that shares nothing)."""
    sample = _full_prompt_pairs()
    return {
        "vs_reference": asdict(report.agreement(reference, shared)),
        "shared_prefix_vs_full_max_abs_diff": 0.0 if full is None else float(np.abs(shared[sample] - full).max()),
    }


def _score_fp32_graph(
    folder: Path, fp32_path: Path, pair_ids: list[list[int]], document_starts: list[int]
) -> np.ndarray:
    """The unquantized graph, with the artifact's tokenizer and template, before it is deleted."""
    onnxruntime = BackendChoice("onnxruntime", "stored", "other", "the export's reference graph")
    model = Reranker(folder, session=open_session(fp32_path, onnxruntime)).model
    scores = model.score_encoded(pair_ids, document_starts=document_starts)
    del model
    gc.collect()
    return scores
