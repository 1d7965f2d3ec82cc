"""The artifact folder: its schema, read here and written here (the exporter calls `write_config`).

model.onnx            score graph: causal-LM families (input_ids, lengths, past_keys, past_values) -> scores,
                      present_*; cross-encoders (input_ids, attention_mask[, token_type_ids]) -> logits
model.onnx.data       its weights (memory-mapped by onnxruntime)
tokenizer.json        the checkpoint's fast tokenizer
rerank_config.json    prompt template and token ids, limits, normalization, provenance, sha256 of files
export_report.json    the exporter's agreement check against PyTorch (informational)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, ModelLoadError, describe

CONFIG_FILE = "rerank_config.json"
TOKENIZER_FILE = "tokenizer.json"
GRAPH_FILE = "model.onnx"
GRAPH_DATA_FILE = "model.onnx.data"
REPORT_FILE = "export_report.json"
FORMAT_NAME = "rerank-onnx"
FORMAT_VERSION = 1
# the int8 scheme's weight block in artifacts that do not record it (the exporter's block before it was recorded)
INT8_BLOCK_UNRECORDED = 32

# The score graph's inputs and outputs (names shared by the exporter and every backend).
INPUT_IDS = "input_ids"
LENGTHS = "lengths"
PAST_KEYS = "past_keys"
PAST_VALUES = "past_values"
SCORES = "scores"
PRESENT_KEYS = "present_keys"
PRESENT_VALUES = "present_values"
GRAPH_INPUTS = {
    INPUT_IDS: "int64 [batch, sequence], right-padded; the tokens after the past ones",
    LENGTHS: "int64 [batch], real tokens of each row after the past ones",
    PAST_KEYS: "float32 [layers, kv_heads, past, head_dim], keys of a prefix every row shares (past may be 0)",
    PAST_VALUES: "float32 [layers, kv_heads, past, head_dim], its values",
}
GRAPH_OUTPUTS = {
    SCORES: "float32 [batch], logit('1') - logit('0') at each row's last token",
    PRESENT_KEYS: "float32 [layers, kv_heads, past + sequence, head_dim], row 0's keys after its tokens",
    PRESENT_VALUES: "float32 [layers, kv_heads, past + sequence, head_dim], row 0's values",
}
# Graphs written before the shared prefix take only these two inputs; they still load and run in full.
PLAIN_GRAPH_INPUTS = (INPUT_IDS, LENGTHS)
# A cross-encoder's graph is the transformers model as optimum exports it: the tokenizer's inputs, the head's logits.
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
LOGITS = "logits"
ENCODER_GRAPH_INPUTS = {
    INPUT_IDS: "int64 [batch, sequence], right-padded pair encodings ([CLS] query [SEP] document [SEP])",
    ATTENTION_MASK: "int64 [batch, sequence], 1 on real tokens",
    TOKEN_TYPE_IDS: "int64 [batch, sequence], 1 from the document on (only models with token types take it)",
}
ENCODER_GRAPH_OUTPUTS = {LOGITS: "float32 [batch, 1], the classification head's logit"}
CROSS_ENCODER = "cross-encoder"


@dataclass(frozen=True)
class Template:
    """How one (query, document) pair becomes token ids, per model family: see template.py.

    prefix + query part (+ separator) + document part + tail, where the query part is
    `query_prompt` (with the instruction, or `instruction_prompt` + separator before it) and the tail
    follows the document (mxbai: separator + task + suffix; Qwen3: suffix).
    """

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
    max_length: int  # the query + document token budget
    model_max_length: int
    truncation_side: str
    # Written since model families (artifacts from before are mxbai-rerank-v2 and get these defaults).
    family: str = "mxbai-rerank-v2"
    default_instruction: str = ""
    truncation: str = "mxbai"  # "mxbai": the official package's rule; "joint": query + document cut at the end
    tail_ids: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Template:
        ids = ("prefix_ids", "separator_ids", "task_ids", "suffix_ids")
        optional = ("family", "default_instruction", "truncation", "tail_ids")
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name not in optional}
        fields.update({name: data[name] for name in optional if name in data})
        fields.update({name: tuple(int(i) for i in data[name]) for name in ids})
        fields["tail_ids"] = tuple(
            int(i) for i in data.get("tail_ids", [*data["separator_ids"], *data["task_ids"], *data["suffix_ids"]])
        )
        if fields.get("truncation", "mxbai") not in ("mxbai", "joint"):
            raise ValueError(f"template truncation: expected 'mxbai' or 'joint', got {fields['truncation']!r}")
        return cls(**fields)


@dataclass(frozen=True)
class PairEncoding:
    """How a cross-encoder's (query, document) pair becomes its input: the tokenizer's own pair encoding
    (tokenizer.json's post-processor adds the special tokens), truncated 'longest_first' to `max_length`,
    as sentence-transformers' CrossEncoder does; see cross_encoding.py."""

    max_length: int  # the whole encoding, special tokens included (the tokenizer's model_max_length)
    pad_token_id: int
    truncation_side: str
    token_types: bool  # the graph takes token_type_ids (BERT); XLM-RoBERTa and ModernBERT do not
    model_type: str  # the transformers architecture, for readers ("bert", "xlm-roberta", "modernbert")
    family: str = CROSS_ENCODER

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairEncoding:
        if data.get("truncation_side", "right") not in ("left", "right"):
            raise ValueError(f"truncation_side: expected 'left' or 'right', got {data['truncation_side']!r}")
        return cls(
            max_length=int(data["max_length"]),
            pad_token_id=int(data["pad_token_id"]),
            truncation_side=str(data.get("truncation_side", "right")),
            token_types=bool(data["token_types"]),
            model_type=str(data.get("model_type", "")),
        )


@dataclass(frozen=True)
class ArtifactConfig:
    """rerank_config.json as read: a causal-LM family has a `template`, a cross-encoder a `pair_encoding`."""

    folder: Path
    template: Template | None
    pair_encoding: PairEncoding | None
    estimated_max: float  # normalize: sigmoid(score - estimated_max / 2), as the reference does
    source_model: str
    quantization: str
    files: dict[str, dict[str, Any]]  # name -> {"sha256", "bytes"}
    # the int8 scheme's weight block (input channels per scale): the group OpenVINO's int8 activations use;
    # None for the other quantizations
    quantization_block: int | None = None

    @property
    def family(self) -> str:
        """The model family: "mxbai-rerank-v2", "qwen3-reranker" or "cross-encoder"."""
        spec = self.template or self.pair_encoding
        assert spec is not None  # load_artifact reads one of the two
        return spec.family

    @property
    def pad_token_id(self) -> int:
        spec = self.template or self.pair_encoding
        assert spec is not None
        return spec.pad_token_id

    @property
    def graph_path(self) -> Path:
        return self.folder / GRAPH_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / TOKENIZER_FILE


def load_artifact(folder: str | Path) -> ArtifactConfig:
    """rerank_config.json of an artifact folder, checked: the schema, every listed file present at its size,
    finite constants. The files' contents are checked by `check_files`.

    Raises:
        InvalidInputError: `folder` is not a path (str or os.PathLike).
        ModelLoadError: the folder is not a complete artifact of this format version.
    """
    if not isinstance(folder, (str, os.PathLike)) or isinstance(folder, bytes):
        raise InvalidInputError(
            f"model_dir: expected an artifact folder path (str or pathlib.Path), got {describe(folder)}; "
            "pass the output folder of `rerank-onnx export`"
        )
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
        cross_encoder = data.get("model_family") == CROSS_ENCODER
        config = ArtifactConfig(
            folder=path,
            template=None if cross_encoder else Template.from_dict(data["template"]),
            pair_encoding=PairEncoding.from_dict(data["pair_encoding"]) if cross_encoder else None,
            estimated_max=float(data["normalization"]["estimated_max"]),
            source_model=str(data["source_model"]),
            quantization=str(data["quantization"]["scheme"]),
            files=dict(data["files"]),
            quantization_block=_quantization_block(data["quantization"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_path} is incomplete or malformed ({type(exc).__name__}: {exc})") from exc
    if not math.isfinite(config.estimated_max):
        raise ModelLoadError(
            f"{config_path}: normalization.estimated_max: expected a finite number, got {config.estimated_max}; "
            "export again with a finite --estimated-max"
        )
    _check_sizes(config)
    return config


def _check_sizes(config: ArtifactConfig) -> None:
    """Every listed file present at its recorded size. A size check is free; a full sha256 of a 1.5 GB graph
    is not (`check_files`)."""
    for name, meta in config.files.items():
        file = config.folder / name
        if not file.is_file():
            raise ModelLoadError(f"{config.folder} is missing {name}, listed in {CONFIG_FILE}; re-run the export")
        if "bytes" in meta and file.stat().st_size != int(meta["bytes"]):
            raise ModelLoadError(
                f"{file} has {file.stat().st_size} bytes, {CONFIG_FILE} says {meta['bytes']}: the file is "
                "truncated or was replaced; re-run the export"
            )


def _quantization_block(section: dict[str, Any]) -> int | None:
    """The int8 scheme's block: as recorded, or INT8_BLOCK_UNRECORDED for artifacts written before it was."""
    if section["scheme"] != "int8":
        return None
    block = section.get("block", INT8_BLOCK_UNRECORDED)
    if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
        raise ValueError(f"quantization block: expected a positive integer, got {block!r}")
    return block


def write_config(
    folder: Path,
    *,
    source_model: str,
    source_revision: str | None,
    template: dict[str, Any] | None = None,
    pair_encoding: dict[str, Any] | None = None,
    quantization: str,
    quantization_description: str,
    quantization_block: int | None,
    estimated_max: float,
) -> None:
    """Write rerank_config.json for the files already in `folder` (the exporter's last step before the report).

    Args:
        folder: the staging artifact folder, holding the graph, its data and the tokenizer.
        source_model: the hub id or folder the user exported.
        source_revision: the hub commit, when fetched from the hub.
        template: a causal-LM family's `template` section (export/prompt.py's `template_data`).
        pair_encoding: a cross-encoder's `pair_encoding` section (PairEncoding's fields) instead.
        quantization: the quantization name (`--quantization`).
        quantization_description: what the quantization does, for a reader of the config.
        quantization_block: the int8 scheme's weight block (input channels per scale), None for the others.
        estimated_max: the normalization constant.
    """
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o644)  # onnx writes its data file 0600: unreadable to a service user or a container
    files = {
        p.name: file_digest(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (CONFIG_FILE, REPORT_FILE)
    }
    if (template is None) == (pair_encoding is None):
        raise ValueError("write_config: pass a template (causal-LM family) or a pair_encoding (cross-encoder)")
    family, section, graph = (
        (CROSS_ENCODER, {"pair_encoding": pair_encoding}, (ENCODER_GRAPH_INPUTS, ENCODER_GRAPH_OUTPUTS))
        if template is None
        else (template.get("family", "mxbai-rerank-v2"), {"template": template}, (GRAPH_INPUTS, GRAPH_OUTPUTS))
    )
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_family": family,
        "source_model": source_model,
        "source_revision": source_revision,
        "quantization": {
            "scheme": quantization,
            "description": quantization_description,
            **({"block": quantization_block} if quantization_block is not None else {}),
        },
        "graph": {"file": GRAPH_FILE, "inputs": graph[0], "outputs": graph[1]},
        **section,
        "normalization": {"kind": "sigmoid(score - estimated_max / 2)", "estimated_max": float(estimated_max)},
        "files": files,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def file_digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    return {"sha256": sha.hexdigest(), "bytes": path.stat().st_size}


# Files whose sha256 this process has checked, by (path, what the file system says of it, expected digest).
_checked: set[tuple[str, tuple[int, ...], str]] = set()
_checked_lock = threading.Lock()


def check_files(config: ArtifactConfig, *, records: Path | None) -> None:
    """Each listed file's sha256 against the config, computed once per file state: a file whose device,
    inode, size, mtime and ctime equal those recorded after its last full hash is not read again (in this
    process, or through `records` in any process), so a warm start stays fast and a file changed in place
    (same size, new bytes) is hashed again. A corrupt graph would otherwise score garbage, and OpenVINO's
    compile cache, keyed by the config's digest, would serve one artifact's compiled weights to the other.

    Args:
        config: the loaded artifact.
        records: a writable folder for the per-file records (None: this process only).

    Raises:
        ModelLoadError: a file's content differs from what the config says, naming the file.
    """
    for name, meta in config.files.items():
        expected = str(meta.get("sha256", ""))
        if not expected:
            continue  # an artifact without digests (hand-made): nothing to check against
        path = config.folder / name
        state = _file_state(path)
        key = (str(path.resolve()), state, expected)
        record = records / (hashlib.sha256(key[0].encode()).hexdigest()[:32] + ".json") if records else None
        with _checked_lock:
            if key in _checked:
                continue
        if record is not None and _read_record(record) == [list(state), expected]:
            with _checked_lock:
                _checked.add(key)
            continue
        actual = file_digest(path)["sha256"]
        if actual != expected:
            raise ModelLoadError(
                f"{path}: its sha256 is {actual[:16]}..., {CONFIG_FILE} says {expected[:16]}...: the file is "
                "damaged or was replaced; restore it or export the model again"
            )
        with _checked_lock:
            _checked.add(key)
        if record is not None and _file_state(path) == state:  # unchanged while it was read
            _write_record(record, [list(state), expected])


def _file_state(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_record(record: Path) -> object:
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_record(record: Path, content: object) -> None:
    """Written whole or not at all (a reader never sees half a record); a read-only place is no error."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_name(f".{record.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps(content), encoding="utf-8")
        os.replace(partial, record)
    except OSError:
        pass


def verify_artifact(folder: str | Path) -> list[str]:
    """Recompute each file's sha256; return the names that differ from the config (empty: all good)."""
    config = load_artifact(folder)
    return [
        name for name, meta in config.files.items() if file_digest(config.folder / name)["sha256"] != meta["sha256"]
    ]
