"""The cross-encoder adapter: a *ForSequenceClassification checkpoint (BERT, XLM-RoBERTa, ModernBERT, ...)
-> its fp32 graph, tokenizer and pair-encoding section.

The graph is optimum's ONNX export of the model for text classification (the exporter that knows
these architectures, and the graph sentence-transformers' own ONNX backend runs): inputs input_ids,
attention_mask (and token_type_ids where the model has token types), output logits. The runtime
builds those inputs from lengths and document starts (backends.EncoderGraphSession).
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rerank_onnx import artifact
from rerank_onnx.artifact import PairEncoding
from rerank_onnx.cross_encoding import CrossEncoderPairs
from rerank_onnx.errors import ExportError
from rerank_onnx.template import load_tokenizer

from . import report
from .onnx_files import save_with_external_data
from .source import Checkpoint

OPSET = 18  # optimum's recommended minimum for these architectures
# RoBERTa-style models number positions from pad_token_id + 1: the last pad_token_id + 1 positions are unusable
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


def check_head(checkpoint: Checkpoint) -> None:
    """One logit per pair is what a reranker's score is; a multi-class head is not a reranker."""
    config = checkpoint.config
    # transformers' rule: id2label decides; without it num_labels, whose default is 2
    labels = len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 2))
    if labels != 1:
        raise ExportError(
            f"{checkpoint.source}: expected a one-logit relevance head (num_labels=1), got {labels} labels; "
            "multi-class classifiers are not rerankers"
        )


def require_exporter() -> None:
    """Raises ExportError naming the extra when optimum's exporter, torch or transformers cannot be imported."""
    try:
        import optimum.exporters.onnx  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"exporting a cross-encoder needs optimum's ONNX exporter, torch and transformers ({exc}); "
            "pip install 'rerank-onnx[export-cross-encoder]' (and the CPU build of torch first)"
        ) from exc


def export_fp32(checkpoint: Checkpoint, destination: Path, *, data_file: str) -> list[str]:
    """optimum's text-classification export of the checkpoint, re-saved with one external data file.

    Returns:
        The graph's input names.
    """
    from optimum.exporters.onnx import main_export

    raw = destination.parent / "optimum"
    shutil.rmtree(raw, ignore_errors=True)
    main_export(str(checkpoint.folder), output=raw, task="text-classification", opset=OPSET, device="cpu")
    model = onnx.load(str(raw / "model.onnx"), load_external_data=True)
    inputs = [i.name for i in model.graph.input]
    save_with_external_data(model, destination, data_file=data_file)
    del model
    gc.collect()
    shutil.rmtree(raw)
    return inputs


def write_tokenizer(staging: Path, checkpoint: Checkpoint, graph_inputs: list[str]) -> dict[str, Any]:
    """Save the checkpoint's fast tokenizer into the artifact; return the `pair_encoding` section."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.folder))  # type: ignore[no-untyped-call]
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{checkpoint.source}: no fast tokenizer (tokenizer.json) could be built for this checkpoint")
    if tokenizer.pad_token_id is None:
        raise ExportError(f"{checkpoint.source}: the tokenizer has no pad token; a cross-encoder batch needs one")
    tokenizer.backend_tokenizer.save(str(staging / artifact.TOKENIZER_FILE))
    config = checkpoint.config
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in _OFFSET_POSITIONS:
        positions -= int(config.get("pad_token_id", 1)) + 1
    # CrossEncoder truncates to the tokenizer's model_max_length; a tokenizer without one (1e30) to the positions
    max_length = min(int(min(tokenizer.model_max_length, 1 << 30)), positions)
    return {
        "family": artifact.CROSS_ENCODER,
        "max_length": max_length,
        "pad_token_id": int(tokenizer.pad_token_id),
        "truncation_side": tokenizer.truncation_side,
        "token_types": artifact.TOKEN_TYPE_IDS in graph_inputs,
        "model_type": str(config.get("model_type", "")),
    }


def builtin_pairs(staging: Path, pair_encoding: dict[str, Any]) -> tuple[list[list[int]], list[int]]:
    """The built-in pairs (report.py) encoded as the runtime encodes them; instructions do not apply."""
    queries, documents, _ = report.builtin_pairs()
    return encode_pairs(staging, pair_encoding, queries, documents)


def encode_pairs(
    staging: Path, pair_encoding: dict[str, Any], queries: list[str], documents: list[str]
) -> tuple[list[list[int]], list[int]]:
    """(query, document) pairs encoded as the runtime encodes them, with the artifact's tokenizer in `staging`.

    Returns:
        Each pair's token ids and the index of its document's first token.
    """
    encoding = PairEncoding.from_dict(pair_encoding)
    encoder = CrossEncoderPairs(
        load_tokenizer(str(staging / artifact.TOKENIZER_FILE)), encoding, max_length=encoding.max_length
    )
    encoded = encoder.encode(queries, documents, instruction=None)
    return encoded.input_ids, encoded.document_starts


def torch_scores(checkpoint: Checkpoint, pair_ids: list[list[int]], starts: list[int], token_types: bool) -> np.ndarray:
    """The checkpoint's logits in PyTorch fp32, one pair at a time (no padding): the reference."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(checkpoint.folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    scores = []
    with torch.no_grad():
        for ids, start in zip(pair_ids, starts):
            feeds = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.int64)}
            if token_types:
                feeds["token_type_ids"] = (torch.arange(len(ids)) >= start).to(torch.int64)[None, :]
            scores.append(float(model(**feeds).logits[0, 0]))
    del model
    gc.collect()
    return np.asarray(scores, dtype=np.float32)
