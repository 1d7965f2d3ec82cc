"""Where OpenVINO keeps compiled models between processes, when a writable place exists."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..artifact import GRAPH_DATA_FILE, GRAPH_FILE, ArtifactConfig

log = logging.getLogger("rerank_onnx")

CACHE_ENV = "RERANK_ONNX_CACHE_DIR"


def cache_root(cache_dir: str | Path | None) -> Path:
    """The cache root: `cache_dir`, else $RERANK_ONNX_CACHE_DIR, else ~/.cache/rerank-onnx."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rerank-onnx").expanduser()


def file_records_dir(cache_dir: str | Path | None) -> Path:
    """Where artifact.check_files keeps what it hashed (a place it may fail to write: then it hashes again)."""
    return cache_root(cache_dir) / "verified"


def compile_cache_dir(config: ArtifactConfig, cache_dir: str | Path | None) -> Path | None:
    """The cache folder for this artifact's weights, or None where nothing can be written there.

    Args:
        config: the artifact; its weights' sha256 names the folder, so a re-exported artifact at the
            same path never picks up a stale compiled model (the files on disk are checked against that
            digest before anything is compiled: artifact.check_files).
        cache_dir: the root (default: $RERANK_ONNX_CACHE_DIR, else ~/.cache/rerank-onnx).

    Returns:
        A writable folder, or None (read-only file systems such as serverless bundles: no cache).
    """
    root = cache_root(cache_dir)
    files = config.files
    digest = str((files.get(GRAPH_DATA_FILE) or files.get(GRAPH_FILE) or {}).get("sha256", ""))[:16]
    if not digest:
        return None  # a config without digests cannot key a cache safely
    folder = root / "openvino" / digest
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        log.info("no compiled-model cache: %s is not writable (%s)", folder, exc.strerror or exc)
        return None
    return folder


def source_folder(cache_dir: Path, name: str) -> Path | None:
    """The folder of one compile source in an artifact's cache folder, made on first use: its rewritten
    graph (or the mark that there is none) and OpenVINO's compiled blobs of it (its CACHE_DIR).

    A name is `<rewrite>-<key>`, the key naming the graph file, the rewrite's revision and OpenVINO's version
    (openvino_graph._graph_key). Making a folder removes the other folders of the same rewrite, which no
    process of this version compiles from again, and the files of the earlier flat layout (IRs named
    `scores-*` and blobs beside them): without that, every upgrade left a compiled copy of the weights
    behind. A process of another version that still reads
    a removed folder keeps what it mapped, and writes its folder again when it next compiles.

    Args:
        cache_dir: the artifact's cache folder (compile_cache_dir).
        name: `<rewrite>-<key>`.

    Returns:
        The folder, or None where it cannot be made (compile without a cache then).
    """
    folder = cache_dir / name
    if folder.is_dir():
        return folder
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        log.info("no compiled-model cache: cannot make %s (%s)", folder, exc.strerror or exc)
        return None
    rewrite = name.rsplit("-", 1)[0]
    for path in cache_dir.iterdir():
        stale_folder = path.is_dir() and path.name != name and path.name.rsplit("-", 1)[0] == rewrite
        if stale_folder:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and (path.name.startswith("scores-") or path.suffix == ".blob"):
            path.unlink(missing_ok=True)
    return folder
