"""Session fixtures: a tiny random-weight Qwen2 reranker with the real Qwen2 vocabulary, exported
through the real export code, and the official mxbai-rerank package loaded on the same checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

logging.getLogger("transformers").setLevel(logging.ERROR)

# Every backend the runtime has, at fp32 numerics: each must equal the reference (test_oracle).
ENGINES = [pytest.param(("onnxruntime", "auto"), id="onnxruntime"), pytest.param(("openvino", "fp32"), id="openvino")]


def choice(backend: str, precision: str = "auto"):
    """A BackendChoice as `choose` resolves it on this machine."""
    from rerank_onnx.backends.select import choose

    return choose(backend, precision, quantization="none", family="mxbai-rerank-v2", openvino_installed=True)


@pytest.fixture(scope="session", autouse=True)
def _caches_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory):
    """OpenVINO's compiled models and the file-check records go to a folder of this run, not ~/.cache
    (subprocesses inherit the variable)."""
    import os

    from rerank_onnx.backends.cache import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("rerank-onnx-cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank_onnx_export.random_checkpoint import build_qwen2_tokenizer_json

    return build_qwen2_tokenizer_json(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer_json: Path) -> Path:
    from rerank_onnx_export.random_checkpoint import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", size="tiny", tokenizer_json=tokenizer_json)


@pytest.fixture(scope="session")
def short_context_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer_json: Path) -> Path:
    """A model whose context (160 tokens) is shorter than max_length + template: the reference's limit rules."""
    from rerank_onnx_export.random_checkpoint import build_random_checkpoint

    return build_random_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "short",
        size="tiny",
        seed=1,
        tokenizer_json=tokenizer_json,
        max_position_embeddings=160,
    )


def export_tiny(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, quantize: str) -> Path:
    """Export `checkpoint` with the real export code into a fresh temporary folder; its checks must pass."""
    from rerank_onnx_export.pipeline import export_checkpoint

    result = export_checkpoint(
        str(checkpoint),
        tmp_path_factory.mktemp("artifacts") / f"{checkpoint.name}-{quantize}",
        quantization=quantize,
        log=lambda message: None,
    )
    assert result.passed, result.warnings
    return result.folder


@pytest.fixture(scope="session")
def fp32_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return export_tiny(tmp_path_factory, tiny_checkpoint, "none")


@pytest.fixture(scope="session")
def int8_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return export_tiny(tmp_path_factory, tiny_checkpoint, "int8")


@pytest.fixture(scope="session")
def int8_fast_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return export_tiny(tmp_path_factory, tiny_checkpoint, "int8-fast")


@pytest.fixture(scope="session")
def int8_static_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    return export_tiny(tmp_path_factory, tiny_checkpoint, "int8-static")


@pytest.fixture(scope="session")
def short_context_artifact(tmp_path_factory: pytest.TempPathFactory, short_context_checkpoint: Path) -> Path:
    return export_tiny(tmp_path_factory, short_context_checkpoint, "none")


@pytest.fixture(scope="session", params=ENGINES)
def fp32_reranker(request: pytest.FixtureRequest, fp32_artifact: Path):
    """The fp32 artifact on each backend in turn."""
    from rerank_onnx import Reranker

    backend, precision = request.param
    return Reranker(fp32_artifact, backend=backend, precision=precision, compile_cache=False)


@pytest.fixture(scope="session")
def oracle(tiny_checkpoint: Path):
    """The official package, as a user runs it on CPU."""
    from mxbai_rerank import MxbaiRerankV2

    return MxbaiRerankV2(str(tiny_checkpoint), device="cpu", disable_transformers_warnings=True)
