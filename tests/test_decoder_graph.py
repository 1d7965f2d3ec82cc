"""The torch-free graph builder (export/decoder_graph.py) against the graph traced from PyTorch (export/graph.py).

Both are built from the same tiny random checkpoints (Qwen2 as mxbai-rerank-v2, Qwen3 as Qwen3-Reranker) and run
on onnxruntime with and without a shared prefix: scores and present keys/values must agree within 1e-5, the
fp32 and int8 quantizations alike. The safetensors reader is checked against torch's own reading of bf16 and sharded
checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from rerank_onnx_export.decoder_graph import DecoderShape, build_decoder_graph
from rerank_onnx_export.safetensors_reader import INDEX_FILE, SafetensorsWeights

from rerank_onnx.errors import ExportError


@pytest.fixture(scope="module")
def qwen3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank_onnx_export.random_checkpoint import build_qwen2_tokenizer_json, build_random_checkpoint

    folder = tmp_path_factory.mktemp("qwen3")
    tokenizer = build_qwen2_tokenizer_json(folder / "tokenizer.json", qwen3=True)
    return build_random_checkpoint(folder / "ckpt", size="qwen3-tiny", tokenizer_json=tokenizer)


@pytest.fixture(scope="module")
def untied_bf16_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3-Reranker-8B's kind: an output head of its own, weights in bf16."""
    from rerank_onnx_export.random_checkpoint import build_qwen2_tokenizer_json, build_random_checkpoint

    folder = tmp_path_factory.mktemp("untied")
    tokenizer = build_qwen2_tokenizer_json(folder / "tokenizer.json", qwen3=True)
    return build_random_checkpoint(
        folder / "ckpt", size="qwen3-tiny", tokenizer_json=tokenizer, dtype="bfloat16", tied=False, seed=3
    )


CHECKPOINTS = {"qwen2": "tiny_checkpoint", "qwen3": "qwen3_checkpoint", "qwen3-untied-bf16": "untied_bf16_checkpoint"}


def _traced(checkpoint: Path, folder: Path, quantization: str, yes: int, no: int) -> Path:
    """The graph traced from transformers' model with torch.onnx (export/graph.py), quantized by quantize.py."""
    import torch
    from rerank_onnx_export.graph import ScoreGraph, export_fp32
    from rerank_onnx_export.quantize import quantize
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32, attn_implementation="eager")
    fp32 = folder / "fp32" / "model.onnx"
    export_fp32(ScoreGraph(model.eval(), yes_token_id=yes, no_token_id=no), fp32, data_file="model.onnx.data")
    if quantization == "none":
        return fp32
    (folder / quantization).mkdir()
    quantize(quantization, fp32, folder / quantization / "model.onnx", data_file="model.onnx.data")
    return folder / quantization / "model.onnx"


def _run(graph: Path, ids: np.ndarray, lengths: np.ndarray, past: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids, "lengths": lengths, "past_keys": past, "past_values": past * 0.5})


@pytest.mark.parametrize("quantization", ["none", "int8", "int8-fast"])
@pytest.mark.parametrize("family", list(CHECKPOINTS))
def test_the_built_graph_computes_what_the_traced_graph_does(
    request: pytest.FixtureRequest, tmp_path: Path, family: str, quantization: str
) -> None:
    checkpoint = Path(request.getfixturevalue(CHECKPOINTS[family]))
    checkpoint_config = json.loads((checkpoint / "config.json").read_text())
    yes, no = 16, 15  # "1" and "0" in the Qwen2 vocabulary (Qwen3-Reranker scores "yes" / "no": any two ids do)
    traced = _traced(checkpoint, tmp_path / "traced", quantization, yes, no)
    (tmp_path / "built").mkdir()
    build_decoder_graph(
        checkpoint,
        checkpoint_config,
        tmp_path / "built" / "model.onnx",
        data_file="model.onnx.data",
        yes_token_id=yes,
        no_token_id=no,
        quantization=quantization,
        log=lambda message: None,
    )
    shape = DecoderShape.from_config(checkpoint_config)
    rng = np.random.default_rng(0)
    for past_tokens in (0, 5):
        ids = rng.integers(0, 2000, size=(3, 11)).astype(np.int64)
        lengths = np.array([11, 6, 1], dtype=np.int64)
        past = rng.standard_normal((shape.layers, shape.kv_heads, past_tokens, shape.head_dim)).astype(np.float32)
        expected = _run(traced, ids, lengths, past)
        built = _run(tmp_path / "built" / "model.onnx", ids, lengths, past)
        for name, want, got in zip(("scores", "present_keys", "present_values"), expected, built):
            assert got.shape == want.shape, name
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"{name}, past {past_tokens}")
        assert np.ptp(expected[0]) > 0.01  # the pairs score differently: the comparison has something to see


def test_the_reference_scores_as_pytorch_does(request: pytest.FixtureRequest) -> None:
    import torch
    from rerank_onnx_export.reference import reference_scores
    from rerank_onnx_export.report import torch_scores
    from transformers import AutoModelForCausalLM

    prompts = [[151644, *range(100, 100 + n)] for n in (1, 7, 40)]
    for fixture in CHECKPOINTS.values():
        checkpoint = Path(request.getfixturevalue(fixture))
        shape = DecoderShape.from_config(json.loads((checkpoint / "config.json").read_text()))
        ours = reference_scores(SafetensorsWeights(checkpoint), shape, prompts, yes_token_id=16, no_token_id=15)
        model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32, attn_implementation="eager")
        expected = torch_scores(model.eval(), prompts, yes_id=16, no_id=15)
        np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0, err_msg=fixture)
        assert np.ptp(expected) > 0.01


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
