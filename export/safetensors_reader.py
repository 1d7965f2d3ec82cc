"""A checkpoint's safetensors shards, read one tensor at a time from memory maps, as float32 numpy arrays.

Written by hand because the `safetensors` package's numpy loader refuses bf16, the dtype real checkpoints
ship in, and its torch loader needs torch. The format is small and fixed: an 8-byte little-endian header
length, a JSON header naming each tensor's dtype, shape and byte range, then the raw bytes
(https://huggingface.co/docs/safetensors). Nothing is read until a tensor is asked for, and then only its
bytes, with a plain read (a memory map would leave the pages it touched counted in the process's resident
memory), so a checkpoint larger than memory converts layer by layer.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from rerank_onnx.errors import ExportError

INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20  # the format's own limit
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class SafetensorsWeights:
    """Tensors by name across a checkpoint folder's shards (`model.safetensors`, or the shards that
    `model.safetensors.index.json` names, or every `*.safetensors` file)."""

    def __init__(self, folder: Path) -> None:
        self._where: dict[str, tuple[Path, dict[str, Any]]] = {}
        for shard in _shards(folder):
            header, start = _read_header(shard)
            for name, entry in header.items():
                if name != "__metadata__":
                    self._where[name] = (shard, {**entry, "start": start})

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)[1]["shape"])

    def get(self, name: str) -> np.ndarray:
        """The tensor as a float32 array (read into memory of its own; nothing stays mapped).

        Raises:
            ExportError: no such tensor, a dtype other than F32 / F16 / BF16 / F64, or a truncated file.
        """
        return self.rows(name, 0, self.shape(name)[0] if self.shape(name) else 1)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop (along the first axis) of the tensor as float32: a slice of a large table (the token
        embedding, an untied output head) without reading the rest of it.

        Raises:
            ExportError: as `get`.
        """
        shard, entry = self._entry(name)
        kind = _DTYPES.get(entry["dtype"])
        if kind is None:
            raise ExportError(f"{shard}: tensor {name} has dtype {entry['dtype']}; expected F32, F16 or BF16 weights")
        shape = list(entry["shape"])
        row_items = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
        row_bytes = row_items * np.dtype(kind).itemsize
        begin = entry["start"] + entry["data_offsets"][0] + start * row_bytes
        raw = np.empty((stop - start) * row_bytes, dtype=np.uint8)
        with shard.open("rb") as handle:
            handle.seek(begin)
            if handle.readinto(raw.data) != raw.nbytes:
                raise ExportError(f"{shard} ends inside tensor {name}: the file is truncated")
        values = raw.view(kind).reshape([stop - start, *shape[1:]] if shape else [])
        if entry["dtype"] == "BF16":  # bf16 is the top half of a float32
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values if kind is np.float32 else values.astype(np.float32)

    def _entry(self, name: str) -> tuple[Path, dict[str, Any]]:
        if name not in self._where:
            raise ExportError(f"the checkpoint has no tensor {name!r}; expected a Qwen2 or Qwen3 checkpoint")
        return self._where[name]


def _shards(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ExportError(f"cannot read {index}: {exc}") from exc
        return [folder / name for name in names]
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ExportError(f"{folder} has no *.safetensors weights")
    return shards


def _read_header(shard: Path) -> tuple[dict[str, Any], int]:
    """The shard's JSON header and the offset its data starts at."""
    try:
        with shard.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"a header of {length} bytes")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ExportError(f"cannot read {shard} as safetensors ({type(exc).__name__}: {exc})") from exc
    if not isinstance(header, dict):
        raise ExportError(f"cannot read {shard} as safetensors: its header is not a JSON object")
    return header, 8 + length
