"""What the exporter writes: a self-contained, self-checked artifact."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from rerank_onnx_export.quantize import BLOCK

from rerank_onnx.artifact import CONFIG_FILE, INT8_BLOCK_UNRECORDED, REPORT_FILE, file_digest, load_artifact
from rerank_onnx.errors import ExportError, ModelLoadError
from rerank_onnx.reranker import Reranker


def test_artifact_is_self_contained_and_hashed(int8_artifact: Path, tiny_checkpoint: Path) -> None:
    config = json.loads((int8_artifact / CONFIG_FILE).read_text())
    assert set(config["files"]) == {"model.onnx", "model.onnx.data", "tokenizer.json"}
    assert sorted(p.name for p in int8_artifact.iterdir()) == sorted([*config["files"], CONFIG_FILE, REPORT_FILE])
    for name, meta in config["files"].items():
        assert file_digest(int8_artifact / name) == meta
        assert (int8_artifact / name).stat().st_mode & 0o444 == 0o444, f"{name} must be world-readable"
    template = config["template"]
    assert template["yes_token_id"] == 16 and template["no_token_id"] == 15
    assert template["prefix_ids"][0] == 151644  # <|im_start|>
    assert template["max_length"] == 8192 and template["model_max_length"] == 32768
    assert config["normalization"]["estimated_max"] == 12.0  # local folder: the reference's default
    assert config["source_model"] == str(tiny_checkpoint)
    assert config["quantization"]["scheme"] == "int8"


def test_export_report_measures_agreement(int8_artifact: Path, fp32_artifact: Path) -> None:
    report = json.loads((int8_artifact / REPORT_FILE).read_text())
    # the int8 graph is written directly (no fp32 graph); torch is installed here, so PyTorch checks the reference
    assert set(report["agreement"]) == {
        "int8_graph_vs_reference",
        "reference_vs_pytorch",
        "shared_prefix_vs_full_prompts",
    }
    assert report["reference"].startswith("numpy fp32")
    assert report["agreement"]["reference_vs_pytorch"]["max_abs_diff"] < 1e-4
    assert report["agreement"]["int8_graph_vs_reference"]["pairs"] == 32
    assert report["agreement"]["int8_graph_vs_reference"]["spearman"] > 0.95
    assert report["agreement"]["shared_prefix_vs_full_prompts"]["max_abs_diff"] < 1e-3
    fp32_report = json.loads((fp32_artifact / REPORT_FILE).read_text())
    assert set(fp32_report["agreement"]) == {
        "fp32_graph_vs_reference",
        "reference_vs_pytorch",
        "shared_prefix_vs_full_prompts",
    }
    assert fp32_report["agreement"]["fp32_graph_vs_reference"]["max_abs_diff"] < 1e-4
    assert fp32_report["agreement"]["shared_prefix_vs_full_prompts"]["max_abs_diff"] < 1e-4
    assert fp32_report["passed"] is True


def test_graph_outputs_scores_without_a_vocabulary_head(fp32_artifact: Path) -> None:
    model = onnx.load(str(fp32_artifact / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "lengths", "past_keys", "past_values"]
    assert [o.name for o in model.graph.output] == ["scores", "present_keys", "present_values"]
    vocab_sized = [t.name for t in model.graph.initializer if 151936 in t.dims]
    assert len(vocab_sized) == 1, f"only the input embedding should be vocabulary-sized, got {vocab_sized}"


def _weight_matmul_ops(model: onnx.ModelProto) -> list[str]:
    return [
        n.op_type for n in model.graph.node if n.op_type in ("MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear")
    ]


def test_int8_graph_uses_blockwise_8bit_matmuls(int8_artifact: Path) -> None:
    model = onnx.load(str(int8_artifact / "model.onnx"))
    blockwise = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert blockwise and set(_weight_matmul_ops(model)) == {"MatMulNBits"}
    # the config records the block the graph holds (OpenVINO's int8 activations take it as their group)
    block = load_artifact(int8_artifact).quantization_block
    assert block == BLOCK
    for node in blockwise:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert (attributes["bits"], attributes["block_size"], attributes["accuracy_level"]) == (8, block, 4)
    _assert_no_float_weights(model)


def test_the_int8_block_of_an_artifact_that_does_not_record_it_is_32(
    int8_artifact: Path, fp32_artifact: Path, tmp_path: Path
) -> None:
    """Artifacts written before the block was recorded hold blocks of 32; other quantizations have none."""
    assert load_artifact(fp32_artifact).quantization_block is None
    old = tmp_path / "old"
    old.mkdir()
    for path in int8_artifact.iterdir():
        if path.is_file():
            (old / path.name).symlink_to(path)
    config = json.loads((int8_artifact / CONFIG_FILE).read_text())
    del config["quantization"]["block"]
    (old / CONFIG_FILE).unlink()
    (old / CONFIG_FILE).write_text(json.dumps(config))
    assert load_artifact(old).quantization_block == INT8_BLOCK_UNRECORDED == 32
    for bad in (0, "32", 32.5, True):
        config["quantization"]["block"] = bad
        (old / CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(ModelLoadError, match="block"):
            load_artifact(old)


def test_int8_fast_graph_uses_per_tensor_integer_matmuls(int8_fast_artifact: Path) -> None:
    model = onnx.load(str(int8_fast_artifact / "model.onnx"))
    ops = _weight_matmul_ops(model)
    assert ops.count("DynamicQuantizeLinear") > 0 and "MatMulInteger" in ops and "MatMulNBits" not in ops
    _assert_no_float_weights(model)


QUERY = "what is a cat?"
DOCS = ["a cat is a small feline kept as a pet", "bananas are yellow", "the stock market fell", "cats purr"]


@pytest.mark.openvino
def test_int8_static_graph_has_constant_activation_scales_and_ranks_like_fp32(
    int8_static_artifact: Path, fp32_artifact: Path
) -> None:
    model = onnx.load(str(int8_static_artifact / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "DynamicQuantizeLinear" not in ops and "MatMulNBits" not in ops and ops.count("QuantizeLinear") > 0
    constants = {t.name for t in model.graph.initializer}
    # every activation's scale and zero point are constants of the graph: nothing is computed per batch
    for node in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        assert node.input[1] in constants and node.input[2] in constants, node.name
    report = json.loads((int8_static_artifact / REPORT_FILE).read_text())
    assert report["quantization"]["scheme"] == "int8-static"
    # a decoder family: no SmoothQuant unless asked (it ranked further from fp32 on random base-v2)
    assert "smooth_quant_alpha" not in report["quantization"]
    assert not [n for n in model.graph.node if "smooth_quant" in n.name]
    # calibrated against the fp32 graph built beside it: both are compared with the reference
    assert report["agreement"]["fp32_graph_vs_reference"]["max_abs_diff"] < 1e-4
    assert report["agreement"]["int8-static_graph_vs_reference"]["spearman"] > 0.9
    # what auto runs it on (OpenVINO, on every CPU class) shares prefixes exactly
    openvino = [v for k, v in report["backends"]["results"].items() if k.startswith("openvino")]
    assert openvino and all(v["shared_prefix_vs_full_max_abs_diff"] == 0.0 for v in openvino)
    # On both engines it ranks like the fp32 graph.
    fp32 = Reranker(fp32_artifact).predict([QUERY] * 4, DOCS[:4])
    reranker = Reranker(int8_static_artifact, compile_cache=False)
    assert reranker.backend is not None and reranker.backend.backend == "openvino"
    assert np.corrcoef(reranker.predict([QUERY] * 4, DOCS[:4]), fp32)[0, 1] > 0.9
    # Its int8 kernels round by the padded width: rows are padded under fp32 compute too (unpadded, base-v2's
    # scores moved by 12% of their spread between alone and in a batch on AMX, Dec 6), and a pair's score is the
    # same alone and in a batch. (Under bf16 compute this tiny model's still move by ~4%: not explained yet.)
    from rerank_onnx.artifact import load_artifact
    from rerank_onnx.backends import open_backend

    session, _ = open_backend(
        load_artifact(int8_static_artifact), backend="openvino", precision="fp32", threads=1, cache_dir=False
    )
    assert session.limits.pad_multiple > 1
    on_fp32 = Reranker(int8_static_artifact, backend="openvino", precision="fp32", compile_cache=False)
    batch = on_fp32.predict([QUERY] * 4, DOCS[:4])
    alone = np.array([on_fp32.predict([QUERY], [document])[0] for document in DOCS[:4]])
    assert np.abs(alone - batch).max() <= 1e-6 * max(1.0, float(np.abs(batch).max()))
    on_onnxruntime = Reranker(int8_static_artifact, backend="onnxruntime").predict([QUERY] * 4, DOCS[:4])
    assert np.corrcoef(on_onnxruntime, fp32)[0, 1] > 0.9


def _assert_no_float_weights(model: onnx.ModelProto) -> None:
    float_matmuls = [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and any(t.name == n.input[1] and len(t.dims) == 2 for t in model.graph.initializer)
    ]
    assert float_matmuls == []
    vocab_sized = {t.name: t.data_type for t in model.graph.initializer if 151936 in t.dims}
    assert sorted(vocab_sized.values()) == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT8]  # row scales + int8 table
    assert all(len(t.dims) == 2 and t.dims[1] == 1 for t in model.graph.initializer if t.name.endswith("_row_scale"))


def test_unreachable_hub_id_fails_with_a_clear_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from rerank_onnx_export.pipeline import export_checkpoint

    with pytest.raises(ExportError) as info:
        export_checkpoint("mixedbread-ai/mxbai-rerank-large-v2", tmp_path / "out", log=lambda m: None)
    message = str(info.value)
    assert "mixedbread-ai/mxbai-rerank-large-v2" in message and "local folder" in message
    assert not (tmp_path / "out").exists()


def test_bad_sources_and_outputs_are_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from rerank_onnx_export.pipeline import export_checkpoint

    with pytest.raises(ExportError, match="neither a local checkpoint folder nor a Hugging Face hub id"):
        export_checkpoint("./no/such/folder", tmp_path / "out", log=lambda m: None)
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ExportError, match=r"has no config\.json"):
        export_checkpoint(str(tmp_path / "not-a-model"), tmp_path / "out", log=lambda m: None)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; choose another folder or pass --overwrite"):
        export_checkpoint(str(tiny_checkpoint), occupied, log=lambda m: None)
    assert (occupied / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="quantization: expected one of"):
        export_checkpoint(str(tiny_checkpoint), tmp_path / "x", quantization="int4", log=lambda m: None)
    with pytest.raises(ExportError, match="smooth_quant: expected auto, on or off, got 'yes'"):
        export_checkpoint(str(tiny_checkpoint), tmp_path / "x", smooth_quant="yes", log=lambda m: None)
    with pytest.raises(ExportError, match=r"SmoothQuant applies to int8-static only.*quantization='int8-static'"):
        export_checkpoint(str(tiny_checkpoint), tmp_path / "x", smooth_quant="on", log=lambda m: None)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_unsupported_architecture_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    import shutil

    from rerank_onnx_export.pipeline import export_checkpoint

    other = tmp_path / "gpt2"
    shutil.copytree(tiny_checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ExportError, match=r"expected a Qwen2ForCausalLM or Qwen3ForCausalLM checkpoint.*cross-encoder.*GPT2LMHeadModel"
    ):
        export_checkpoint(str(other), tmp_path / "out", log=lambda m: None)
    # a causal LM relabelled as a classifier has transformers' default two-label head: not a reranker
    config["architectures"] = ["Qwen2ForSequenceClassification"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="num_labels=1"):
        export_checkpoint(str(other), tmp_path / "out", log=lambda m: None)


@pytest.mark.subprocess
def test_wheel_installs_no_bare_export_package(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rerank_onnx-*.whl")
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "export" not in top_level
    assert {"rerank_onnx", "rerank_onnx_export"} <= top_level


@pytest.mark.openvino
def test_export_report_checks_what_auto_runs_here(int8_artifact: Path, fp32_artifact: Path) -> None:
    from rerank_onnx.backends.select import choose, cpu_class, cpu_flags

    kind = cpu_class(cpu_flags())
    for artifact, quantization in ((int8_artifact, "int8"), (fp32_artifact, "none")):
        backends = json.loads((artifact / REPORT_FILE).read_text())["backends"]
        assert backends["cpu_class"] == kind and backends["all_backends"] is False
        family = load_artifact(artifact).family
        auto = choose("auto", "auto", quantization=quantization, family=family, openvino_installed=True)
        assert backends["auto"] == auto.describe()
        expected = {"onnxruntime"} | ({f"openvino-{auto.precision}"} if auto.backend == "openvino" else set())
        assert set(backends["results"]) == expected
        for name, check in backends["results"].items():
            assert check["vs_reference"]["pairs"] == 32, name
            assert check["shared_prefix_vs_full_max_abs_diff"] < 1e-3, name


@pytest.mark.openvino
def test_export_report_can_check_every_backend_this_machine_runs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from rerank_onnx_export.pipeline import export_checkpoint

    from rerank_onnx.backends.select import cpu_class, cpu_flags

    kind = cpu_class(cpu_flags())
    result = export_checkpoint(
        str(tiny_checkpoint), tmp_path / "all", quantization="none", all_backends=True, log=lambda message: None
    )
    backends = result.report["backends"]
    bf16_capable = kind in ("amx", "avx512-bf16")
    assert set(backends["results"]) == {"onnxruntime", "openvino-fp32"} | ({"openvino-bf16"} if bf16_capable else set())
    for name in ("onnxruntime", "openvino-fp32"):  # fp32 numerics on either engine equal the fp32 reference
        assert backends["results"][name]["vs_reference"]["max_abs_diff"] < 1e-3, name
    assert backends["results"]["openvino-fp32"]["shared_prefix_vs_full_max_abs_diff"] < 1e-4


def _broken_copy(tiny_checkpoint: Path, tmp_path: Path, name: str) -> Path:
    import shutil

    copy = tmp_path / name
    shutil.copytree(tiny_checkpoint, copy)
    return copy


@pytest.mark.subprocess
@pytest.mark.parametrize("defect", ["hidden_size", "sliding_window", "tokenizer"])
def test_a_failed_export_leaves_nothing_and_says_why_in_one_line(
    tiny_checkpoint: Path, tmp_path: Path, defect: str
) -> None:
    import subprocess
    import sys

    checkpoint = _broken_copy(tiny_checkpoint, tmp_path, f"broken-{defect}")
    if defect == "tokenizer":
        (checkpoint / "tokenizer.json").write_text("{not json")
    else:
        config = json.loads((checkpoint / "config.json").read_text())
        config.update({"hidden_size": 96} if defect == "hidden_size" else {"use_sliding_window": True})
        (checkpoint / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "rerank_onnx.cli", "export", str(checkpoint), str(out), "--quantization", "none"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_exporting_onto_a_file_is_a_clear_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from rerank_onnx_export.pipeline import export_checkpoint

    target = tmp_path / "a-file"
    target.write_text("not a folder")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export_checkpoint(str(tiny_checkpoint), target, log=lambda m: None)


# torch, transformers and optimum made unimportable: what a user of the slim `export` extra has
WITHOUT_TORCH = (
    "import sys\n"
    "for name in ('torch', 'transformers', 'optimum', 'safetensors'):\n"
    "    sys.modules[name] = None\n"
    "from rerank_onnx.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.subprocess
def test_the_decoder_export_needs_no_torch_and_writes_the_same_artifact(
    int8_artifact: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "slim"
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, "export", str(tiny_checkpoint), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "PyTorch" not in done.stderr and "reference_vs_pytorch" not in done.stdout
    report = json.loads((out / REPORT_FILE).read_text())
    assert set(report["agreement"]) == {"int8_graph_vs_reference", "shared_prefix_vs_full_prompts"}
    assert report["passed"] is True
    slim, full = json.loads((out / CONFIG_FILE).read_text()), json.loads((int8_artifact / CONFIG_FILE).read_text())
    assert slim["files"] == full["files"]  # graph, weights and tokenizer: the same bytes as with torch installed
    assert slim["template"] == full["template"]


@pytest.mark.subprocess
def test_a_cross_encoder_without_its_extra_is_one_error_line(tmp_path: Path) -> None:
    from rerank_onnx_export.random_checkpoint import build_random_cross_encoder

    checkpoint = build_random_cross_encoder(tmp_path / "ce", size="bert-tiny")
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, "export", str(checkpoint), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "rerank-onnx[export-cross-encoder]" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_int8_static_without_nncf_is_one_clear_error_before_any_work(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch
) -> None:
    import importlib.util

    from rerank_onnx_export.pipeline import export_checkpoint

    from rerank_onnx.errors import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    lines: list[str] = []
    with pytest.raises(MissingDependencyError, match=r"pip install 'rerank-onnx\[export-int8-static\]'"):
        export_checkpoint(str(tiny_checkpoint), tmp_path / "out", quantization="int8-static", log=lines.append)
    assert lines == [] and not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
