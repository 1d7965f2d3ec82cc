"""Cross-encoders (BERT, XLM-RoBERTa, ModernBERT) against sentence-transformers' CrossEncoder.

Tiny random *ForSequenceClassification models with small tokenizers of each kind (export/tokenizers/), exported
through the real export code (optimum's graph); the oracle is `sentence_transformers.CrossEncoder`
loaded on the same checkpoint folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from conftest import ENGINES

from rerank_onnx import Reranker
from rerank_onnx.artifact import REPORT_FILE
from rerank_onnx.errors import ExportError, InvalidInputError

KINDS = ["bert-tiny", "xlmr-tiny", "modernbert-tiny"]
QUERIES = ["what is a cat?", "router password reset [SEP] </s> <s>", "", "capital " * 40]
DOCUMENTS = [
    "A cat is a small carnivorous mammal, often kept as a pet.",
    "Hold the reset button for 30 seconds. " * 10,
    "",
    "   \n",
    "Canberra es la capital de Australia; 香蕉富含钾。",
]
PAIRS = [(q, d) for q in QUERIES for d in DOCUMENTS]


def _export(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, quantize: str) -> Path:
    from rerank_onnx_export.pipeline import export_checkpoint

    result = export_checkpoint(
        str(checkpoint),
        tmp_path_factory.mktemp("ce") / f"{checkpoint.name}-{quantize}",
        quantization=quantize,
        log=lambda m: None,
    )
    assert result.passed, result.warnings
    return result.folder


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rerank_onnx_export.random_checkpoint import build_random_cross_encoder

    root = tmp_path_factory.mktemp("ce-ckpt")
    return {kind: build_random_cross_encoder(root / kind, size=kind) for kind in KINDS}


@pytest.fixture(scope="module")
def fp32_artifacts(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]) -> dict[str, Path]:
    return {kind: _export(tmp_path_factory, path, "none") for kind, path in checkpoints.items()}


@pytest.fixture(scope="module")
def oracles(checkpoints: dict[str, Path]) -> dict[str, object]:
    from sentence_transformers import CrossEncoder

    return {kind: CrossEncoder(str(path), device="cpu") for kind, path in checkpoints.items()}


def _reference(oracle: object, pairs: list[tuple[str, str]], *, raw: bool) -> np.ndarray:
    import torch

    activation = torch.nn.Identity() if raw else None
    return np.asarray(oracle.predict(pairs, batch_size=7, activation_fn=activation))  # type: ignore[attr-defined]


@pytest.mark.openvino
@pytest.mark.parametrize("engine", ENGINES)
def test_scores_equal_crossencoder(kind: str, engine: tuple[str, str], fp32_artifacts: dict, oracles: dict) -> None:
    backend, precision = engine
    reranker = Reranker(fp32_artifacts[kind], backend=backend, precision=precision)  # type: ignore[arg-type]
    raw = reranker.predict(PAIRS)
    assert np.abs(raw - _reference(oracles[kind], PAIRS, raw=True)).max() < 1e-3  # the head's logit
    probabilities = reranker.predict(PAIRS, normalize=True)  # CrossEncoder's default sigmoid
    assert np.abs(probabilities - _reference(oracles[kind], PAIRS, raw=False)).max() < 1e-4
    # a pair scores the same alone as in a batch (padding is masked)
    alone = reranker.predict([PAIRS[6]])
    assert abs(float(alone[0]) - float(raw[6])) < 1e-5


def test_pair_encoding_is_the_tokenizers(kind: str, fp32_artifacts: dict, oracles: dict) -> None:
    """Ids (literal special tokens in the text included), truncation flags and document starts."""
    tokenizer = oracles[kind].tokenizer  # type: ignore[attr-defined]
    reranker = Reranker(fp32_artifacts[kind])
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    encoded = reranker.model.encode(queries, documents)
    limit = reranker.model.max_length + reranker.model.template_tokens
    reference = tokenizer(queries, documents, truncation="longest_first", max_length=limit)
    assert encoded.input_ids == reference["input_ids"]
    whole = tokenizer(queries, documents)["input_ids"]
    assert encoded.truncated == [len(ids) > limit for ids in whole]
    assert any(encoded.truncated) and not all(encoded.truncated)
    if "token_type_ids" in reference:
        for types, start, ids in zip(reference["token_type_ids"], encoded.document_starts, encoded.input_ids):
            assert types == [int(i >= start) for i in range(len(ids))]


def test_token_types_reach_the_graph(fp32_artifacts: dict) -> None:
    """BERT's graph takes token types: scoring without document starts is refused, not guessed."""
    reranker = Reranker(fp32_artifacts["bert-tiny"], backend="onnxruntime")
    encoded = reranker.model.encode(["q"], ["a cat"])
    with pytest.raises(InvalidInputError, match="document_starts"):
        reranker.model.score_encoded(encoded.input_ids)
    moved = reranker.model.score_encoded(encoded.input_ids, document_starts=[1])
    assert (
        abs(
            float(moved[0])
            - float(reranker.model.score_encoded(encoded.input_ids, document_starts=encoded.document_starts)[0])
        )
        > 1e-4
    )


@pytest.mark.openvino
def test_openvino_batches_encoder_graphs_in_larger_runs(fp32_artifacts: dict) -> None:
    """An encoder graph keeps no keys and values per token: OpenVINO's default budget for it is onnxruntime's,
    not the 1,024 tokens a decoder's present outputs need, and a budget the caller asks for still wins."""
    from rerank_onnx.backends.openvino import ENCODER_BATCH_TOKENS, LIMITS

    assert LIMITS.batch_tokens < ENCODER_BATCH_TOKENS
    encoder = Reranker(fp32_artifacts["bert-tiny"], backend="openvino", precision="fp32").model._scorer
    assert encoder.max_batch_tokens == ENCODER_BATCH_TOKENS
    asked = Reranker(fp32_artifacts["bert-tiny"], backend="openvino", precision="fp32", max_batch_tokens=300)
    assert asked.model._scorer.max_batch_tokens == 300


def test_no_instruction_slot(fp32_artifacts: dict) -> None:
    reranker = Reranker(fp32_artifacts["xlmr-tiny"])
    with pytest.raises(InvalidInputError, match="instruction"):
        reranker.rank("q", ["d"], instruction="be brief")


def test_long_documents_by_chunks(fp32_artifacts: dict) -> None:
    reranker = Reranker(fp32_artifacts["bert-tiny"], backend="onnxruntime")
    document = " ".join(f"word{i % 7} cat router capital" for i in range(60))  # about 3-4x max_length
    (result,) = reranker.rank("what is a cat?", [document], long_documents="chunk", max_chunks_per_doc=20)
    encoded = reranker.model.encode(["what is a cat?"], [document], max_chunks_per_doc=20)
    assert encoded.chunks is not None and result.chunks == len(encoded.chunks.spans) >= 3
    spans = encoded.chunks.spans
    assert all(a < b for a, b in spans) and all(spans[i][0] < spans[i - 1][1] for i in range(1, len(spans)))  # overlap
    alone = reranker.predict([("what is a cat?", document[a:b]) for a, b in spans])
    assert abs(result.score - float(alone.max())) < 1e-5
    assert result.span == spans[int(alone.argmax())]
    (truncated,) = reranker.rank("what is a cat?", [document])
    assert truncated.chunks == 1


@pytest.fixture(scope="module")
def int8_bert(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict) -> Path:
    return _export(tmp_path_factory, checkpoints["bert-tiny"], "int8")


def test_int8_ranks_like_fp32(int8_bert: Path, fp32_artifacts: dict) -> None:
    int8 = int8_bert
    reference = Reranker(fp32_artifacts["bert-tiny"], backend="onnxruntime").predict(PAIRS)
    scores = Reranker(int8, backend="onnxruntime").predict(PAIRS)
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    assert np.corrcoef(ranks(reference), ranks(scores))[0, 1] > 0.9


def _integer_weight_matmuls(model: object) -> int:
    from rerank_onnx.backends.openvino_graph import _integer_weights

    ops = model.get_ordered_ops()  # type: ignore[attr-defined]
    return sum(1 for n in ops if n.get_type_name() == "MatMul" and _integer_weights(n))


@pytest.mark.openvino
def test_openvino_bf16_multiplies_an_encoders_int8_weights_stored_as_bf16(
    int8_bert: Path, fp32_artifacts: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under bf16 an encoder graph's int8 weights are expanded to bf16 constants before compiling (faster on
    the plugin's bf16 kernels), with the values its own decompression gives: the same scores as the graph
    compiled as exported, and the same as fp32 compute of the int8 weights up to bf16 rounding."""
    import openvino

    from rerank_onnx.backends import openvino as openvino_backend
    from rerank_onnx.backends.openvino_graph import NEW_KV, expand_weights

    core = openvino.Core()
    model = core.read_model(str(int8_bert / "model.onnx"))
    integer = _integer_weight_matmuls(model)
    assert integer > 0
    assert expand_weights(model) and _integer_weight_matmuls(model) == 0
    weights = [
        n.input_value(1).get_node().input_value(0).get_node()
        for n in model.get_ordered_ops()
        if n.get_type_name() == "MatMul" and n.input_value(1).get_node().get_type_name() == "Convert"
    ]
    assert len(weights) == integer and all(w.get_output_element_type(0) == openvino.Type.bf16 for w in weights)
    assert not expand_weights(core.read_model(str(fp32_artifacts["bert-tiny"] / "model.onnx")))  # nothing to expand

    reranker = Reranker(int8_bert, backend="openvino", precision="bf16", cache_dir=tmp_path)
    scores = reranker.predict(PAIRS)
    weight_only = Reranker(int8_bert, backend="openvino", precision="fp32", compile_cache=False).predict(PAIRS)
    spread = float(np.std(weight_only))
    # bf16 activations move a tiny model's scores by up to ~7% of their spread; wrong weights move them by far more
    assert spread > 0 and np.abs(weight_only - scores).max() < 0.15 * spread
    expanded = list(tmp_path.glob("openvino/*/new-kv-bf16-*/scores.xml"))
    assert reranker.backend is not None
    if reranker.backend.precision == "fp32":  # no bf16 instructions: bf16 runs as fp32, with the int8 weights
        assert not expanded
        return
    assert len(expanded) == 1  # the expanded graph is what compiled, and is cached
    monkeypatch.setattr(openvino_backend, "NEW_KV_BF16", NEW_KV)  # the graph as exported, in the same batches
    as_exported = Reranker(int8_bert, backend="openvino", precision="bf16", compile_cache=False).predict(PAIRS)
    # the same values as the plugin's own decompression: equal to 6 digits on the AVX512-BF16 EPYC (Dec 2) and for
    # MiniLM on AMX (Dec 1); weights rounded another way (truncated to bf16) moved these scores by 14% of their spread
    assert np.abs(as_exported - scores).max() < 0.01 * spread


@pytest.mark.openvino
def test_int8_static_ranks_like_the_reference_and_keeps_a_pair_apart_from_its_batch(
    kind: str, checkpoints: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """int8-static for a cross-encoder: activation scales calibrated at export are constants of the graph; it
    ranks like the PyTorch reference on the export's pairs; OpenVINO runs its int8 weights as int8 (not expanded
    to bf16), and a pair's score is the same alone and in a batch."""
    import openvino
    from rerank_onnx_export.quantize import SMOOTH_QUANT_ALPHA

    from rerank_onnx.backends.openvino_graph import expand_weights

    folder = _export(tmp_path_factory, checkpoints[kind], "int8-static")
    graph = onnx.load(str(folder / "model.onnx"))
    constants = {t.name for t in graph.graph.initializer}
    quantize_nodes = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize_nodes and all(n.input[1] in constants and n.input[2] in constants for n in quantize_nodes)
    assert not {"DynamicQuantizeLinear", "MatMulNBits"} & {n.op_type for n in graph.graph.node}
    report = json.loads((folder / REPORT_FILE).read_text())
    # a cross-encoder gets SmoothQuant by default (it ranked closer to fp32 on a real-weight MiniLM): its scales
    # are constants multiplied in before the quantized MatMuls
    assert report["quantization"]["smooth_quant_alpha"] == SMOOTH_QUANT_ALPHA
    smoothing = [n for n in graph.graph.node if n.op_type == "Mul" and n.name.endswith("nncf_smooth_quant")]
    assert smoothing and all(any(i in constants for i in n.input) for n in smoothing)
    # random tiny models, 32 pairs, with SmoothQuant (which ranks further from fp32 on random weights): 0.981 (BERT),
    # 0.972 (XLM-R), 0.956 (ModernBERT) on AMX, Dec 6, equal on every build since the tokenizers are files (trained
    # per build, they gave 0.877-0.986); the decoders' bound. Broken scales rank near 0.
    assert report["agreement"]["int8-static_graph_vs_reference"]["spearman"] > 0.9
    for result in report["backends"]["results"].values():
        assert result["vs_reference"]["spearman"] > 0.9

    model = openvino.Core().read_model(str(folder / "model.onnx"))
    assert not expand_weights(model) and _integer_weight_matmuls(model) > 0
    reranker = Reranker(folder, compile_cache=False)
    assert reranker.backend is not None and reranker.backend.backend == "openvino"
    batch = reranker.predict(PAIRS)
    alone = np.array([reranker.predict([pair])[0] for pair in PAIRS])
    assert np.abs(alone - batch).max() <= 1e-6 * max(1.0, float(np.abs(batch).max()))


def test_the_server_serves_the_family(fp32_artifacts: dict, oracles: dict) -> None:
    from test_server import _in_process

    from rerank_onnx.server import ServerSettings, create_app

    app = create_app(ServerSettings(model_dir=str(fp32_artifacts["modernbert-tiny"])))

    async def requests(client: httpx.AsyncClient) -> tuple[dict, dict, httpx.Response]:
        ranked = await client.post("/v1/rerank", json={"query": QUERIES[0], "documents": DOCUMENTS})
        refused = await client.post("/v1/rerank", json={"query": "q", "documents": ["d"], "instruction": "x"})
        return ranked.json(), (await client.get("/v1/models")).json(), refused

    ranked, models, refused = _in_process(app, requests)
    assert models["data"][0]["family"] == "cross-encoder"
    expected = _reference(oracles["modernbert-tiny"], [(QUERIES[0], d) for d in DOCUMENTS], raw=False)
    assert len(ranked["results"]) == len(DOCUMENTS)
    for result in ranked["results"]:
        assert abs(result["relevance_score"] - expected[result["index"]]) < 1e-3  # default bf16 path on AMX
    assert refused.status_code == 422 and "instruction" in refused.json()["error"]["message"]


def test_export_refuses_a_multi_class_head(tmp_path: Path) -> None:
    import json

    from rerank_onnx_export.pipeline import export_checkpoint
    from rerank_onnx_export.random_checkpoint import build_random_cross_encoder

    folder = build_random_cross_encoder(tmp_path / "ckpt", size="bert-tiny")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "a", "1": "b", "2": "c"}, {"a": 0, "b": 1, "c": 2}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="num_labels=1"):
        export_checkpoint(str(folder), tmp_path / "out", quantization="none", log=lambda m: None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_per_document_token_cap(fp32_artifacts: dict) -> None:
    """Cohere's max_tokens_per_doc: the document is cut to its first N tokens before pairing."""
    reranker = Reranker(fp32_artifacts["bert-tiny"], backend="onnxruntime")
    document = "hold the reset button for thirty seconds then wait"
    capped = reranker.model.encode(["q"], [document], max_document_tokens=4)
    whole = reranker.model.encode(["q"], [document])
    start = capped.document_starts[0]
    assert capped.truncated == [True] and whole.truncated == [False]
    assert capped.input_ids[0][start:-1] == whole.input_ids[0][start : start + 4]  # the first 4, then [SEP]
    with pytest.raises(InvalidInputError, match="max_document_tokens"):
        reranker.model.encode(["q"], [document], max_document_tokens=0)
