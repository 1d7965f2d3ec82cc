"""Resolve the export's input (hub id or local folder) to a local folder of a supported checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_onnx.errors import ExportError

# Files the export reads; weights in other formats (.bin, .pt) are not fetched.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM")

# What the official package uses to normalize scores (mxbai_rerank_v2.estimated_max_cfg): it keys on the
# exact string passed in, so local folders get 12.0. We keep the same rule to give the same numbers.
ESTIMATED_MAX_BY_HUB_ID = {
    "mixedbread-ai/mxbai-rerank-base-v2": 9.0,
    "mixedbread-ai/mxbai-rerank-large-v2": 12.0,
}
DEFAULT_ESTIMATED_MAX = 12.0


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    source: str  # what the user passed: hub id or folder
    revision: str | None  # hub commit, when fetched from the hub
    config: dict[str, Any]

    @property
    def estimated_max(self) -> float:
        return ESTIMATED_MAX_BY_HUB_ID.get(self.source, DEFAULT_ESTIMATED_MAX)


def resolve_checkpoint(source: str, *, revision: str | None = None) -> Checkpoint:
    folder = Path(source).expanduser()
    if folder.is_dir():
        return _checked(Checkpoint(folder=folder, source=source, revision=None, config=_read_config(folder)))
    if folder.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ExportError(
            f"{source!r} is neither a local checkpoint folder nor a Hugging Face hub id of the form "
            "'owner/name'. Pass a folder holding config.json, the *.safetensors weights and the tokenizer "
            "files, or a hub id such as mixedbread-ai/mxbai-rerank-large-v2."
        )
    local = _download(source, revision)
    return _checked(Checkpoint(folder=local, source=source, revision=_revision_of(local), config=_read_config(local)))


def _download(hub_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - part of the export extra
        raise ExportError("huggingface_hub is needed to fetch hub ids: pip install 'rerank-onnx[export]'") from exc
    try:
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, gated repo, network error: one message for all
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        raise ExportError(
            f"could not fetch {hub_id!r} from the Hugging Face Hub ({reason}). "
            "Check the name and your network (HF_HUB_OFFLINE=1 forbids downloads), or download the "
            "checkpoint elsewhere (e.g. `huggingface-cli download " + hub_id + " --local-dir ./ckpt`) "
            "and pass the local folder instead: rerank-onnx export ./ckpt OUTPUT_DIR"
        ) from exc


def _revision_of(folder: Path) -> str | None:
    # snapshot_download returns .../snapshots/<commit>
    name = folder.name
    return name if len(name) == 40 and all(c in "0123456789abcdef" for c in name) else None


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ExportError(f"{folder} has no config.json: expected a Hugging Face checkpoint folder")
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return config
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc


def _checked(checkpoint: Checkpoint) -> Checkpoint:
    architectures = [str(a) for a in checkpoint.config.get("architectures") or []]
    cross_encoder = any(a.endswith("ForSequenceClassification") for a in architectures)
    if not cross_encoder and not any(a in SUPPORTED_ARCHITECTURES for a in architectures):
        raise ExportError(
            f"{checkpoint.source}: expected a {' or '.join(SUPPORTED_ARCHITECTURES)} checkpoint (mxbai-rerank-v2 "
            f"or Qwen3-Reranker) or a *ForSequenceClassification cross-encoder, got architectures={architectures!r}"
        )
    folder = checkpoint.folder
    if not any(folder.glob("*.safetensors")):
        raise ExportError(f"{folder} has no *.safetensors weights")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ExportError(f"{folder} has no tokenizer files (expected one of {', '.join(_TOKENIZER_FILES)})")
    return checkpoint


# tokenizer.json, or what transformers builds a fast tokenizer from (BPE, WordPiece, SentencePiece)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "sentencepiece.bpe.model", "spm.model")
