"""The artifact folder: what the exporter writes and the runtime reads.

    model.onnx            score graph (input_ids, lengths) -> scores
    model.onnx.data       its weights (memory-mapped by onnxruntime)
    tokenizer.json        the checkpoint's fast tokenizer
    rerank_config.json    prompt template and token ids, limits, normalization, provenance, sha256 of files
    export_report.json    the exporter's agreement check against PyTorch (informational)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

CONFIG_FILE = "rerank_config.json"
TOKENIZER_FILE = "tokenizer.json"
GRAPH_FILE = "model.onnx"
GRAPH_DATA_FILE = "model.onnx.data"
REPORT_FILE = "export_report.json"
FORMAT_NAME = "rerank-onnx"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Template:
    """How one (query, document) pair becomes token ids: see template.py."""

    separator: str
    instruction_prompt: str
    query_prompt: str
    document_prompt: str
    prefix_ids: tuple[int, ...]
    separator_ids: tuple[int, ...]
    task_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    yes_token_id: int
    no_token_id: int
    pad_token_id: int
    max_length: int
    model_max_length: int
    truncation_side: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Template:
        ids = ("prefix_ids", "separator_ids", "task_ids", "suffix_ids")
        fields = {name: data[name] for name in cls.__dataclass_fields__}
        fields.update({name: tuple(int(i) for i in data[name]) for name in ids})
        return cls(**fields)


@dataclass(frozen=True)
class ArtifactConfig:
    folder: Path
    template: Template
    estimated_max: float  # normalize: sigmoid(score - estimated_max / 2), as the reference does
    source_model: str
    quantization: str
    files: dict[str, dict[str, Any]]  # name -> {"sha256", "bytes"}

    @property
    def graph_path(self) -> Path:
        return self.folder / GRAPH_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / TOKENIZER_FILE


def load_artifact(folder: str | Path) -> ArtifactConfig:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelLoadError(
            f"artifact folder {str(path)!r} does not exist or is not a folder: expected the output folder "
            "of `rerank-onnx export`"
        )
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ModelLoadError(
            f"{path} is missing {CONFIG_FILE}: it is not a rerank-onnx artifact (or the export did not "
            f"finish). Create one with: rerank-onnx export CHECKPOINT {path}"
        )
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {config_path}: {exc}") from exc
    if data.get("format") != FORMAT_NAME or data.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{config_path}: expected format {FORMAT_NAME!r} version {FORMAT_VERSION}, got "
            f"{data.get('format')!r} version {data.get('format_version')!r}; re-export with this version"
        )
    try:
        config = ArtifactConfig(
            folder=path,
            template=Template.from_dict(data["template"]),
            estimated_max=float(data["normalization"]["estimated_max"]),
            source_model=str(data["source_model"]),
            quantization=str(data["quantization"]["scheme"]),
            files=dict(data["files"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path} is incomplete or malformed ({type(exc).__name__}: {exc})") from exc
    for name, meta in config.files.items():
        file = path / name
        if not file.is_file():
            raise ModelLoadError(f"{path} is missing {name}, listed in {CONFIG_FILE}; re-run the export")
        # A size check is free; a full sha256 of a 1.5 GB graph is not (see verify_artifact).
        if "bytes" in meta and file.stat().st_size != int(meta["bytes"]):
            raise ModelLoadError(
                f"{file} has {file.stat().st_size} bytes, {CONFIG_FILE} says {meta['bytes']}: the file is "
                "truncated or was replaced; re-run the export"
            )
    return config


def file_digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    return {"sha256": sha.hexdigest(), "bytes": path.stat().st_size}


def verify_artifact(folder: str | Path) -> list[str]:
    """Recompute each file's sha256; return the names that differ from the config (empty: all good)."""
    config = load_artifact(folder)
    return [name for name, meta in config.files.items() if file_digest(config.folder / name)["sha256"] != meta["sha256"]]
