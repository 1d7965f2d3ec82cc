"""Rank straight from a checkpoint: a checkpoint folder or a hub id is exported once into the cache, then loaded.

`Reranker("./mxbai-rerank-base-v2")` or `Reranker("mixedbread-ai/mxbai-rerank-base-v2")` exports on first use
(the export extra: onnx and numpy, no torch) into `<cache>/artifacts/<name>-<key>`, where the key covers what
the artifact is made of: the source files' identity (a local folder: each file's name, size and modification
time; a hub id: the snapshot's commit), the exporter's version and the quantization. A lock file keeps
two processes from exporting the same key twice: the second waits, then loads what the first wrote. An
artifact folder (one holding rerank_config.json) is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .artifact import CONFIG_FILE
from .backends.cache import cache_root
from .errors import ModelLoadError

# Part of every cache key: bump it when the exporter writes a different artifact for the same checkpoint.
EXPORTER_REVISION = 1
QUANTIZATION = "int8"  # what a checkpoint is exported with (the export's default)


def artifact_for(
    model: str | Path, *, cache_dir: str | Path | None, log: Callable[[str], None] | None = None
) -> str | Path:
    """`model` itself when it is an artifact folder (or nothing this module handles), else the cached artifact
    exported from the checkpoint folder or hub id it names.

    Args:
        model: an artifact folder, a checkpoint folder (config.json + *.safetensors) or a hub id (owner/name).
        cache_dir: the cache root (default: $RERANK_ONNX_CACHE_DIR, else ~/.cache/rerank-onnx).
        log: where the export's progress goes (default: stderr).

    Returns:
        The artifact folder to load.

    Raises:
        ModelLoadError: the export extra is missing, or the checkpoint could not be exported (the reason given).
    """
    if not isinstance(model, (str, os.PathLike)) or isinstance(model, bytes):
        return model  # load_artifact says what a model_dir must be
    path = Path(model).expanduser()
    if (path / CONFIG_FILE).is_file():
        return model
    checkpoint = path.is_dir() and (path / "config.json").is_file()
    hub_id = not path.exists() and isinstance(model, str) and _looks_like_hub_id(model)
    if not (checkpoint or hub_id):
        return model
    exporter = _exporter()
    if hub_id:
        try:  # offline (HF_HUB_OFFLINE=1): from the hub cache only
            path = exporter.resolve_checkpoint(str(model)).folder
        except exporter.RerankError as exc:
            raise ModelLoadError(f"cannot export {model}: {exc}") from exc
    name = (str(model).replace("/", "--") if hub_id else path.resolve().name) or "checkpoint"
    target = cache_root(cache_dir) / "artifacts" / f"{name}-{_key(path)}"
    if (target / CONFIG_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(target.name + ".lock")):
        if not (target / CONFIG_FILE).is_file():  # another process may have exported it while this one waited
            say = log or (lambda line: print(line, file=sys.stderr, flush=True))
            say(f"exporting {model} into {target} (once; later loads read it from there)")
            try:
                # a hub id is passed as such: the export records it and its commit, and takes its normalization
                source = str(model) if hub_id else str(path)
                exporter.export_checkpoint(source, target, quantization=QUANTIZATION, overwrite=True, log=say)
            except exporter.RerankError as exc:
                raise ModelLoadError(f"cannot export {model}: {exc}") from exc
    return target


def _looks_like_hub_id(text: str) -> bool:
    owner, _, name = text.partition("/")
    return bool(owner and name) and "/" not in name and not text.startswith((".", "~"))


class _Exporter:
    """The export package's entry points, imported only when a checkpoint is given."""

    def __init__(self) -> None:
        from rerank_onnx_export.pipeline import export_checkpoint
        from rerank_onnx_export.source import resolve_checkpoint

        from .errors import RerankError

        self.export_checkpoint, self.resolve_checkpoint, self.RerankError = (
            export_checkpoint,
            resolve_checkpoint,
            RerankError,
        )


def _exporter() -> _Exporter:
    try:
        return _Exporter()
    except ImportError as exc:
        raise ModelLoadError(
            f"ranking straight from a checkpoint exports it first, which needs the export extra ({exc}); "
            "pip install 'rerank-onnx[export]', or export elsewhere and pass the artifact folder"
        ) from exc


def _key(folder: Path) -> str:
    """What the artifact is made of: the files the export reads (name, size, mtime), exporter and quantization."""
    from . import __version__

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".txt"))
    identity = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    source = json.dumps([identity, __version__, EXPORTER_REVISION, QUANTIZATION])
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive lock on `lock` (fcntl; where there is none, no lock: two processes may export alike)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
