"""The torch-free graph builder (export/decoder_graph.py) against the graph traced from PyTorch (export/graph.py).

Both are built from the same tiny random checkpoints (Qwen2 as mxbai-rerank-v2, Qwen3 as Qwen3-Reranker) and run
on onnxruntime with and without a shared prefix: scores and present keys/values must agree within 1e-5, the
fp32 and int8 schemes alike. The safetensors reader is checked against torch's own reading of bf16 and sharded
checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import export_tiny
from rerank_onnx_export.decoder_graph import DecoderShape, build_decoder_graph
from rerank_onnx_export.safetensors_reader import INDEX_FILE, SafetensorsWeights

from rerank_onnx.errors import ExportError


@pytest.fixture(scope="module")
def qwen3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank_onnx_export.random_checkpoint import build_qwen2_tokenizer_json, build_random_checkpoint

    folder = tmp_path_factory.mktemp("qwen3")
    tokenizer = build_qwen2_tokenizer_json(folder / "tokenizer.json", qwen3=True)
    return build_random_checkpoint(folder / "ckpt", size="qwen3-tiny", tokenizer_json=tokenizer)


def _traced(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, family: str, scheme: str) -> Path:
    if family == "qwen2":
        return Path(request.getfixturevalue({"none": "fp32_artifact", "int8": "int8_artifact"}[scheme]))
    return export_tiny(tmp_path_factory, request.getfixturevalue("qwen3_checkpoint"), scheme)


def _run(graph: Path, ids: np.ndarray, lengths: np.ndarray, past: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids, "lengths": lengths, "past_keys": past, "past_values": past * 0.5})


@pytest.mark.parametrize("scheme", ["none", "int8"])
@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_the_built_graph_computes_what_the_traced_graph_does(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, family: str, scheme: str
) -> None:
    traced = _traced(request, tmp_path_factory, family, scheme)
    config = json.loads((traced / "rerank_config.json").read_text())
    checkpoint = Path(request.getfixturevalue("tiny_checkpoint" if family == "qwen2" else "qwen3_checkpoint"))
    checkpoint_config = json.loads((checkpoint / "config.json").read_text())
    build_decoder_graph(
        checkpoint,
        checkpoint_config,
        tmp_path / "model.onnx",
        data_file="model.onnx.data",
        yes_token_id=config["template"]["yes_token_id"],
        no_token_id=config["template"]["no_token_id"],
        scheme=scheme,
        log=lambda message: None,
    )
    shape = DecoderShape.from_config(checkpoint_config)
    rng = np.random.default_rng(0)
    for past_tokens in (0, 5):
        ids = rng.integers(0, 2000, size=(3, 11)).astype(np.int64)
        lengths = np.array([11, 6, 1], dtype=np.int64)
        past = rng.standard_normal((shape.layers, shape.kv_heads, past_tokens, shape.head_dim)).astype(np.float32)
        expected = _run(traced / "model.onnx", ids, lengths, past)
        built = _run(tmp_path / "model.onnx", ids, lengths, past)
        for name, want, got in zip(("scores", "present_keys", "present_values"), expected, built):
            assert got.shape == want.shape, name
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"{name}, past {past_tokens}")
        assert np.ptp(expected[0]) > 0.01  # the pairs score differently: the comparison has something to see


def test_bf16_and_sharded_weights_read_as_torch_reads_them(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_checkpoint / "model.safetensors"))
    names = sorted(tensors)
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for shard, members in halves.items():
        dtype = torch.bfloat16 if shard == "a.safetensors" else torch.float16
        save_file({n: tensors[n].to(dtype).contiguous() for n in members}, str(tmp_path / shard))
    index = {"weight_map": {n: shard for shard, members in halves.items() for n in members}}
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    weights = SafetensorsWeights(tmp_path)
    assert weights.names() == names
    for shard, members in halves.items():
        dtype = torch.bfloat16 if shard == "a.safetensors" else torch.float16
        for name in members:
            expected = tensors[name].to(dtype).float().numpy()
            got = weights.get(name)
            assert got.dtype == np.float32 and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)


def test_what_the_builder_cannot_read_is_an_export_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(ExportError, match="rotary"):
        DecoderShape.from_config({**config, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ExportError, match="sliding-window"):
        DecoderShape.from_config({**config, "use_sliding_window": True})
    with pytest.raises(ExportError, match=r"no tensor 'lm_head\.weight'"):
        SafetensorsWeights(tiny_checkpoint).get("lm_head.weight")
    truncated = tmp_path / "model.safetensors"
    shutil.copyfile(tiny_checkpoint / "model.safetensors", truncated)
    with truncated.open("r+b") as handle:
        handle.truncate(truncated.stat().st_size // 2)
    weights = SafetensorsWeights(tmp_path)
    with pytest.raises(ExportError, match="truncated"):
        for name in weights.names():
            weights.get(name)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ExportError, match=r"cannot read .* as safetensors"):
        SafetensorsWeights(tmp_path)
