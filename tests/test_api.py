"""Public surface, typed errors, and the artifact's own checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rerank_onnx
from rerank_onnx import InputTooLongError, InvalidInputError, ModelLoadError, Reranker, RerankError
from rerank_onnx.artifact import CONFIG_FILE, verify_artifact


def test_public_surface_is_small() -> None:
    assert sorted(rerank_onnx.__all__) == sorted(
        [
            "Reranker",
            "RankResult",
            "RerankError",
            "ModelLoadError",
            "InvalidInputError",
            "InputTooLongError",
            "ScoringError",
        ]
    )
    assert issubclass(ModelLoadError, RerankError) and issubclass(InvalidInputError, RerankError)
    assert issubclass(InputTooLongError, InvalidInputError) and issubclass(InvalidInputError, ValueError)


@pytest.mark.subprocess
def test_import_loads_no_heavy_dependency(fp32_artifact: Path) -> None:
    code = (
        "import sys, rerank_onnx\n"
        f"r = rerank_onnx.Reranker({str(fp32_artifact)!r})\n"
        "r.rank('q', ['a', 'b'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'rerank_onnx_export') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_rank_result_is_frozen(fp32_reranker: Reranker) -> None:
    result = fp32_reranker.rank("q", ["a"])[0]
    with pytest.raises(AttributeError):
        result.score = 1.0  # type: ignore[misc]


def test_empty_document_list_returns_empty(fp32_reranker: Reranker) -> None:
    assert fp32_reranker.rank("q", []) == []
    out = fp32_reranker.predict([], [])
    assert out.shape == (0,) and out.dtype == np.float32


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda r: r.rank(None, ["a"]), "query: expected a string, got NoneType"),
        (lambda r: r.rank(3, ["a"]), "query: expected a string, got int"),
        (lambda r: r.rank("q", "a single string"), "documents: expected a list of strings, got str"),
        (lambda r: r.rank("q", ["ok", 5]), "documents[1]: expected a string, got int"),
        (lambda r: r.rank("q", ["ok", None]), "documents[1]: expected a string, got NoneType"),
        (lambda r: r.rank("q", ["a"], top_k=0), "top_k: expected a positive integer or None, got int 0"),
        (lambda r: r.rank("q", ["a"], top_k=-2), "top_k: expected a positive integer or None"),
        (lambda r: r.rank("q", ["a"], top_k=True), "top_k: expected a positive integer or None, got bool"),
        (lambda r: r.rank("q", ["a"], top_k=1.5), "top_k: expected a positive integer or None, got float"),
        (lambda r: r.rank("q", ["a"], instruction=7), "instruction: expected a string, got int"),
        (lambda r: r.predict(["q"], ["a", "b"]), "equal length, got 1 queries and 2 documents"),
        (lambda r: r.predict("q", ["a"]), "queries: expected a list of strings, got str"),
        (lambda r: r.predict(["q"], {"a": 1}), "documents: expected a list of strings, got dict"),
        (lambda r: r.predict(["q"], ["a"], batch_size=0), "batch_size: expected a positive integer"),
        (lambda r: r.model.encode(["q", "q"], ["a"]), "equal length, got 2 queries and 1 documents"),
        (lambda r: r.predict(["q", "a"]), "pairs[0]: expected a (query, document) pair, got str"),
        (lambda r: r.predict([("q", "a", "b")]), "pairs[0]: expected a (query, document) pair, got tuple"),
        (lambda r: r.predict([("q", 5)]), "documents[0]: expected a string, got int"),
        (lambda r: r.predict("q"), "expected a list of strings with documents, or a list of (query, document)"),
        (lambda r: r.rank("a\ud800", ["x"]), "query: expected valid Unicode text, got a lone surrogate"),
        (lambda r: r.rank("q", ["ok", "x\udfff"]), "documents[1]: expected valid Unicode text"),
    ],
)
def test_bad_arguments_raise_typed_errors(fp32_reranker: Reranker, call, message) -> None:
    with pytest.raises(InvalidInputError, match=None) as info:
        call(fp32_reranker)
    assert message in str(info.value)


def test_constructor_validates_its_knobs(fp32_artifact: Path) -> None:
    with pytest.raises(InvalidInputError, match="max_batch_tokens: expected a positive integer, got int 0"):
        Reranker(fp32_artifact, max_batch_tokens=0)
    with pytest.raises(InvalidInputError, match="threads"):
        Reranker(fp32_artifact, threads="2")


CPU_FLAGS = {
    "amx": frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"}),
    "avx512-bf16": frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}),
    "avx512-vnni": frozenset({"avx2", "avx512f", "avx512_vnni"}),
    "avx2": frozenset({"avx2", "fma"}),
    "other": frozenset({"sse4_2"}),
}


@pytest.mark.parametrize("kind", sorted(CPU_FLAGS))
def test_an_int8_static_artifact_runs_openvino_and_never_falls_back_silently(kind: str) -> None:
    from rerank_onnx.backends.select import choose
    from rerank_onnx.errors import InvalidInputError

    flags = CPU_FLAGS[kind]
    choice = choose(
        "auto", "auto", quantization="int8-static", family="mxbai-rerank-v2", flags=flags, openvino_installed=True
    )
    # OpenVINO's int8 kernels with bf16 between them where the CPU has bf16 instructions, fp32 elsewhere
    assert choice.backend == "openvino" and choice.precision == ("bf16" if kind in ("amx", "avx512-bf16") else "fp32")
    with pytest.raises(InvalidInputError, match=r"pip install 'rerank-onnx\[openvino\]'.*backend='onnxruntime'"):
        choose(
            "auto", "auto", quantization="int8-static", family="mxbai-rerank-v2", flags=flags, openvino_installed=False
        )
    asked = choose(
        "onnxruntime",
        "auto",
        quantization="int8-static",
        family="mxbai-rerank-v2",
        flags=flags,
        openvino_installed=False,
    )
    assert asked.backend == "onnxruntime"  # asked for by name, with its caveat in the docs


@pytest.mark.parametrize("kind", sorted(CPU_FLAGS))
def test_auto_keeps_every_cpu_class_on_a_path_it_can_run(kind: str) -> None:
    from rerank_onnx.backends.select import choose

    flags = CPU_FLAGS[kind]
    choice = choose("auto", "auto", quantization="int8", family="mxbai-rerank-v2", flags=flags, openvino_installed=True)
    assert choice.cpu_class == kind
    if choice.bf16:  # bf16 compute only where the CPU has bf16 instructions
        assert "avx512_bf16" in flags or "amx_bf16" in flags
    if choice.precision == "int8":  # int8 activations only where it has VNNI
        assert "avx512_vnni" in flags
    without = choose(
        "auto", "auto", quantization="int8", family="mxbai-rerank-v2", flags=flags, openvino_installed=False
    )
    assert without.backend == "onnxruntime"
    if choice.backend == "openvino":  # the missing extra is said, with the command that installs it
        assert "pip install 'rerank-onnx[openvino]'" in without.reason
    for quantization in ("none", "int8-fast"):  # fp32 numerics and onnxruntime's int8-fast kernel on every class
        assert (
            choose(
                "auto",
                "auto",
                quantization=quantization,
                family="mxbai-rerank-v2",
                flags=flags,
                openvino_installed=True,
            ).backend
            == "onnxruntime"
        )
    for precision in ("bf16", "int8"):
        asked = choose(
            "openvino", precision, quantization="int8", family="mxbai-rerank-v2", flags=flags, openvino_installed=True
        )
        if kind in ("amx", "avx512-bf16") or (kind, precision) == ("avx512-vnni", "int8"):
            assert (asked.precision, asked.reason) == (precision, "asked for")
            assert asked.bf16 == (kind != "avx512-vnni")  # int8 activations there, fp32 elsewhere
        else:  # OpenVINO would compute fp32 anyway: no padding, and the reason says why
            missing = "no bf16 instructions" if precision == "bf16" else "no VNNI instructions"
            assert asked.precision == "fp32" and missing in asked.reason
    # backend="openvino" alone takes the class's own precision where auto runs OpenVINO
    if choice.backend == "openvino":
        assert (
            choose(
                "openvino", "auto", quantization="int8", family="mxbai-rerank-v2", flags=flags, openvino_installed=True
            ).precision
            == choice.precision
        )


def test_a_family_measured_less_faithful_on_its_class_row_takes_its_own() -> None:
    """Cross-encoders lost agreement to OpenVINO's int8 activations on AVX512-BF16 CPUs where mxbai did not:
    auto (and backend="openvino" alone) gives them bf16 there, and every other class keeps its row."""
    from rerank_onnx.backends.select import AUTO_ROWS, choose

    own_rows = [row for row in AUTO_ROWS if row.family != "*"]
    assert [(row.family, row.cpu_class) for row in own_rows] == [("cross-encoder", "avx512-bf16")]
    for kind, flags in CPU_FLAGS.items():
        for family in ("mxbai-rerank-v2", "qwen3-reranker", "cross-encoder"):
            auto = choose("auto", "auto", quantization="int8", family=family, flags=flags, openvino_installed=True)
            row = next(
                r
                for r in own_rows + [r for r in AUTO_ROWS if r.family == "*"]
                if r.quantization == "int8" and r.cpu_class == kind and r.family in (family, "*")
            )
            assert (auto.backend, auto.precision) == (row.backend, row.precision)
            assert auto.reason == f"{row.evidence} row, docs/backends.md#{row.evidence}"
            if auto.backend == "openvino":
                alone = choose(
                    "openvino", "auto", quantization="int8", family=family, flags=flags, openvino_installed=True
                )
                assert alone.precision == auto.precision
    bf16_cpu = CPU_FLAGS["avx512-bf16"]
    encoder = choose(
        "auto", "auto", quantization="int8", family="cross-encoder", flags=bf16_cpu, openvino_installed=True
    )
    mxbai = choose(
        "auto", "auto", quantization="int8", family="mxbai-rerank-v2", flags=bf16_cpu, openvino_installed=True
    )
    assert (encoder.precision, mxbai.precision) == ("bf16", "int8")
    assert "cross-encoders" in encoder.reason


def test_the_cpu_class_can_be_planned_down_to_a_less_capable_one(monkeypatch) -> None:
    """RERANK_ONNX_CPU_CLASS: the path of a class the CPU can run (a fleet's common numerics, a benchmark of
    that class's path); a class above the CPU's, or no class, is refused with the choices."""
    from rerank_onnx.backends.select import CPU_CLASS_ENV, choose

    def auto(flags: frozenset[str]):
        return choose(
            "auto", "auto", quantization="int8", family="mxbai-rerank-v2", flags=flags, openvino_installed=True
        )

    own = auto(CPU_FLAGS["avx512-bf16"])
    monkeypatch.setenv(CPU_CLASS_ENV, "avx512-vnni")
    planned = auto(CPU_FLAGS["avx512-bf16"])
    assert (planned.cpu_class, planned.precision, planned.bf16) == ("avx512-vnni", "int8", False)
    assert (own.cpu_class, own.precision, own.bf16) == ("avx512-bf16", "int8", True)
    assert CPU_CLASS_ENV in planned.reason and "on a avx512-bf16 CPU" in planned.reason
    assert "(fp32 elsewhere)" in planned.describe()
    monkeypatch.setenv(CPU_CLASS_ENV, "avx2")
    on_amx = auto(CPU_FLAGS["amx"])
    assert (on_amx.cpu_class, on_amx.precision) == ("avx2", "fp32")
    assert CPU_CLASS_ENV not in auto(CPU_FLAGS["avx2"]).reason  # the CPU's own class: nothing to say
    for asked, flags in (
        ("amx", CPU_FLAGS["avx512-bf16"]),
        ("avx512-vnni", CPU_FLAGS["avx2"]),
        ("zen5", CPU_FLAGS["amx"]),
    ):
        monkeypatch.setenv(CPU_CLASS_ENV, asked)
        with pytest.raises(InvalidInputError, match=f"{CPU_CLASS_ENV}: expected a class this"):
            auto(flags)


def test_int8_precision_needs_the_int8_artifact() -> None:
    from rerank_onnx.backends.select import choose

    for quantization in ("none", "int8-fast"):
        with pytest.raises(InvalidInputError, match=r"precision='int8'|int8-fast"):
            choose(
                "openvino",
                "int8",
                quantization=quantization,
                family="mxbai-rerank-v2",
                flags=CPU_FLAGS["avx512-bf16"],
                openvino_installed=True,
            )
    for precision in ("bf16", "int8"):  # onnxruntime runs the stored numerics only
        with pytest.raises(InvalidInputError, match="needs backend='openvino'"):
            choose(
                "onnxruntime",
                precision,
                quantization="int8",
                family="mxbai-rerank-v2",
                flags=CPU_FLAGS["avx512-bf16"],
                openvino_installed=True,
            )


def test_truncation_is_reported_and_can_be_refused(fp32_artifact: Path, caplog) -> None:
    reranker = Reranker(fp32_artifact, max_length=32)
    long_doc = "word " * 100
    assert reranker.model.encode(["q", "q"], [long_doc, "short"]).truncated == [True, False]
    with caplog.at_level("WARNING", logger="rerank_onnx"):
        reranker.rank("q", [long_doc, "short"])
    assert "1 of 2 pairs exceed max_length=32" in caplog.text
    with pytest.raises(InputTooLongError, match=r"pair 0 .* exceeds max_length=32"):
        reranker.rank("q", [long_doc, "short"], truncate=False)
    assert len(reranker.rank("q", ["short"], truncate=False)) == 1


def test_missing_folder_and_files_are_named(tmp_path: Path, fp32_artifact: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        Reranker(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match=f"missing {CONFIG_FILE}"):
        Reranker(tmp_path)
    for missing in ("tokenizer.json", "model.onnx", "model.onnx.data"):
        copy = tmp_path / f"without-{missing}"
        shutil.copytree(fp32_artifact, copy)
        (copy / missing).unlink()
        with pytest.raises(ModelLoadError, match=f"missing {missing}"):
            Reranker(copy)


def test_truncated_or_tampered_files_are_caught(tmp_path: Path, fp32_artifact: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(fp32_artifact, copy)
    assert verify_artifact(copy) == []
    graph = copy / "model.onnx"
    data = graph.read_bytes()
    graph.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or was replaced"):
        Reranker(copy)
    graph.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, different bytes
    assert verify_artifact(copy) == ["model.onnx"]


def test_malformed_config_is_a_load_error(tmp_path: Path, fp32_artifact: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(fp32_artifact, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    del config["template"]["prefix_ids"]
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="incomplete or malformed"):
        Reranker(copy)
    (copy / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        Reranker(copy)


def test_progress_bar_writes_to_stderr(fp32_reranker: Reranker, capsys) -> None:
    fp32_reranker.rank("q", ["a", "b", "c"], show_progress=True)
    assert "3/3 pairs" in capsys.readouterr().err


def test_predict_takes_pairs_as_a_cross_encoder_does(fp32_reranker: Reranker) -> None:
    queries, documents = ["what is a cat?", "bananas?", "what is a cat?"], ["a feline", "yellow fruit", "a dog"]
    expected = fp32_reranker.predict(queries, documents)
    np.testing.assert_array_equal(fp32_reranker.predict(list(zip(queries, documents))), expected)
    np.testing.assert_array_equal(fp32_reranker.predict([list(p) for p in zip(queries, documents)]), expected)


def test_every_auto_row_points_at_its_evidence_in_the_docs() -> None:
    """Each row of `auto`'s table names a section of docs/backends.md (GitHub's anchor of a heading), and the
    table there lists every row: the data and its write-up cannot drift apart unnoticed."""
    import re

    from rerank_onnx.backends.select import AUTO_ROWS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "backends.md").read_text(encoding="utf-8")
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", doc, re.M)}
    for row in AUTO_ROWS:
        assert row.evidence in anchors, row
        assert f"[`{row.evidence}`](#{row.evidence})" in doc, row
