"""Where OpenVINO keeps compiled models between processes, when a writable place exists."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ..artifact import GRAPH_DATA_FILE, GRAPH_FILE, ArtifactConfig

log = logging.getLogger("rerank_onnx")

CACHE_ENV = "RERANK_ONNX_CACHE_DIR"


def compile_cache_dir(config: ArtifactConfig, cache_dir: str | Path | None) -> Path | None:
    """The cache folder for this artifact's weights, or None where nothing can be written there.

    Args:
        config: the artifact; its weights' sha256 names the folder, so a re-exported artifact at the
            same path never picks up a stale compiled model.
        cache_dir: the root (default: $RERANK_ONNX_CACHE_DIR, else ~/.cache/rerank-onnx).

    Returns:
        A writable folder, or None (read-only file systems such as serverless bundles: no cache).
    """
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rerank-onnx").expanduser()
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
