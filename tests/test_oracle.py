"""The runtime against the official mxbai-rerank package on the same checkpoint: same ids, same scores."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest

from rerank_onnx import Reranker

LONG_DOC = " ".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog near river bank {i * 7}." for i in range(25)
)
QUERIES = [
    "what is a cat?",
    "Was ist die Hauptstadt von Deutschland?",
    "猫是什么动物？",
    "emoji 🐱 and {braces} and <|im_end|> inside",
    "   ",
    "",
]
DOCUMENTS = [
    "A cat is a small carnivorous mammal.",
    "Berlin ist die Hauptstadt Deutschlands.",
    "猫是一种小型食肉哺乳动物。",
    "",
    "   \n\t  ",
    unicodedata.normalize("NFD", "Crème brûlée, café, naïve résumé"),  # decomposed: the tokenizer's NFC must apply
    "مرحبا بالعالم. Привет, мир! שלום עולם",
    "Line one\nLine two\r\nLine three\ttabbed",
    "document: query: <|im_start|>assistant\nfake template pieces 1 0",
    "{document} {query} {instruction}",
    "Numbers 1234567890 and 3.14159 and 1e-9",
    LONG_DOC,
]


def _pairs() -> tuple[list[str], list[str]]:
    queries, documents = [], []
    for i, q in enumerate(QUERIES):
        for j, d in enumerate(DOCUMENTS):
            if (i + j) % 2 == 0 or j >= len(DOCUMENTS) - 2:
                queries.append(q)
                documents.append(d)
    return queries, documents


def _oracle_predict(oracle, queries, documents, *, instruction=None, normalize=False) -> np.ndarray:
    """The reference materializes full-vocabulary logits for every position: feed it a few pairs at a time."""
    return np.concatenate(
        [
            oracle.predict(
                queries[i : i + 4], documents[i : i + 4], instruction=instruction, normalize=normalize
            ).numpy()
            for i in range(0, len(queries), 4)
        ]
    )


def _oracle_ids(oracle, queries, documents, instruction):
    batch = oracle.prepare_inputs(queries=queries, documents=documents, instruction=instruction)
    ids, mask = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    return [[t for t, m in zip(row, row_mask) if m] for row, row_mask in zip(ids, mask)]


@pytest.mark.parametrize("instruction", [None, "Judge relevance for a cooking website.", "指示：简短"])
def test_prompt_ids_equal_the_reference(oracle, fp32_reranker: Reranker, instruction) -> None:
    queries, documents = _pairs()
    ours = fp32_reranker.model.encode(queries, documents, instruction=instruction).input_ids
    assert ours == _oracle_ids(oracle, queries, documents, instruction)


@pytest.mark.parametrize("instruction", [None, "Prefer documents written in German."])
@pytest.mark.parametrize("normalize", [False, True])
def test_fp32_scores_equal_the_reference(oracle, fp32_reranker: Reranker, instruction, normalize) -> None:
    queries, documents = _pairs()
    expected = _oracle_predict(oracle, queries, documents, instruction=instruction, normalize=normalize)
    got = fp32_reranker.predict(queries, documents, instruction=instruction, normalize=normalize)
    assert got.dtype == np.float32 and got.shape == (len(queries),)
    if normalize:  # sigmoid(score - 6) of small random-weight scores: near 0, so compare relatively
        assert np.all((got > 0) & (got < 1))
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-6)
    else:
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)
        assert np.std(expected) > 0.3, "scores too flat for the comparison to mean anything"


def test_rank_equals_the_reference(oracle, fp32_reranker: Reranker) -> None:
    query = "which text is about animals?"
    expected = oracle.rank(query, DOCUMENTS, top_k=5, return_documents=True, batch_size=4)
    got = fp32_reranker.rank(query, DOCUMENTS, top_k=5)
    assert [r.index for r in got] == [r.index for r in expected]
    assert [r.document for r in got] == [r.document for r in expected]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in expected], atol=1e-3)


def test_truncation_of_long_queries_and_documents_follows_the_reference(tiny_checkpoint, fp32_artifact) -> None:
    from mxbai_rerank import MxbaiRerankV2

    oracle = MxbaiRerankV2(str(tiny_checkpoint), device="cpu", max_length=48, disable_transformers_warnings=True)
    reranker = Reranker(fp32_artifact, max_length=48)
    long_query = "why " * 80 + "do cats purr?"
    queries = [long_query, "short query", long_query, "short query"]
    documents = [LONG_DOC, LONG_DOC, "tiny doc", "tiny doc"]
    encoded = reranker.model.encode(queries, documents, instruction="an instruction that also takes room")
    assert encoded.input_ids == _oracle_ids(oracle, queries, documents, "an instruction that also takes room")
    assert encoded.truncated == [True, True, True, False]
    np.testing.assert_allclose(
        reranker.predict(queries, documents), _oracle_predict(oracle, queries, documents), atol=1e-3
    )


def test_model_context_limit_follows_the_reference(short_context_checkpoint, short_context_artifact) -> None:
    """A 160-token model: max_length shrinks to fit the template, documents to what the model can hold."""
    from mxbai_rerank import MxbaiRerankV2

    oracle = MxbaiRerankV2(str(short_context_checkpoint), device="cpu", disable_transformers_warnings=True)
    reranker = Reranker(short_context_artifact)
    assert reranker.model.max_length == oracle.max_length
    queries = ["cat " * 200, "cat", "cat " * 20]
    documents = [LONG_DOC, LONG_DOC, LONG_DOC[:300]]
    ours = reranker.model.encode(queries, documents).input_ids
    assert ours == _oracle_ids(oracle, queries, documents, None)
    assert max(len(ids) for ids in ours) <= 160
    np.testing.assert_allclose(
        reranker.predict(queries, documents), _oracle_predict(oracle, queries, documents), atol=1e-3
    )


@pytest.mark.parametrize("quantization", ["int8", "int8-fast"])
def test_int8_scores_are_close_to_the_reference(oracle, quantization, request) -> None:
    artifact = request.getfixturevalue("int8_artifact" if quantization == "int8" else "int8_fast_artifact")
    queries, documents = _pairs()
    expected = _oracle_predict(oracle, queries, documents)
    got = Reranker(artifact).predict(queries, documents)
    from rerank_onnx_export.report import spearman

    assert spearman(expected, got) > 0.9
    assert np.mean(np.abs(got - expected)) < 0.25 * np.std(expected)


def test_blockwise_int8_on_onnxruntime_does_not_depend_on_the_batch(int8_artifact) -> None:
    # Blockwise activation scales are per row, so a pair scores the same alone or among others.
    queries, documents = _pairs()
    reranker = Reranker(int8_artifact, backend="onnxruntime")
    together = reranker.predict(queries, documents)
    alone = np.array([reranker.predict([q], [d])[0] for q, d in zip(queries, documents)])
    np.testing.assert_allclose(alone, together, atol=1e-4)


def _assert_faithful(reranker: Reranker, oracle, int8_artifact: Path, fp32_artifact: Path) -> None:
    """A pair alone and in a batch, and a shared prefix and full prompts, within 2% of the score spread;
    ranking like fp32 as well as onnxruntime's blockwise int8 does, side by side on the same pairs."""
    from rerank_onnx_export.report import spearman

    assert reranker.backend is not None
    queries, documents = _pairs()
    bound = 0.02 * np.std(_oracle_predict(oracle, queries, documents))
    reranker.model.share_prefix = False
    alone = np.array([reranker.predict([q], [d])[0] for q, d in zip(queries, documents)])
    together = reranker.predict(queries, documents)
    reranker.model.share_prefix = True
    shared = reranker.predict(queries, documents)
    assert np.abs(alone - together).max() <= bound, reranker.backend.describe()
    assert np.abs(shared - together).max() <= bound, reranker.backend.describe()
    fp32 = Reranker(fp32_artifact, backend="onnxruntime").predict(queries, documents)
    blockwise = Reranker(int8_artifact, backend="onnxruntime").predict(queries, documents)
    # 0.005 of slack for the tiny model's ties and rounding
    assert spearman(fp32, shared) >= spearman(fp32, blockwise) - 0.005, reranker.backend.describe()


def _runnable_classes() -> list[str]:
    """Every CPU class this CPU can run the path of (its own and the less capable ones)."""
    from rerank_onnx.backends.select import CLASS_ORDER, cpu_class, cpu_flags

    return list(CLASS_ORDER[: CLASS_ORDER.index(cpu_class(cpu_flags())) + 1])


@pytest.mark.openvino
@pytest.mark.parametrize("planned", _runnable_classes())
def test_the_default_path_is_faithful(oracle, int8_artifact, fp32_artifact, planned, monkeypatch) -> None:
    """What `Reranker(artifact)` runs (backend="auto") on each CPU class this CPU can plan for: every row of
    `auto`'s table that can run here, not only this CPU's own. The `other` row is onnxruntime's blockwise int8
    itself, so there only its batch independence is at stake; every other row runs another engine or numerics."""
    from rerank_onnx.backends.select import CPU_CLASS_ENV

    monkeypatch.setenv(CPU_CLASS_ENV, planned)
    reranker = Reranker(int8_artifact)
    assert reranker.backend is not None and reranker.backend.cpu_class == planned
    _assert_faithful(reranker, oracle, int8_artifact, fp32_artifact)


def _planned_int8_classes() -> list[str | None]:
    """None (the CPU's own class) and, on a CPU with bf16 instructions, the class without them, whose int8
    activations OpenVINO computes beside fp32 (RERANK_ONNX_CPU_CLASS)."""
    from rerank_onnx.backends.select import BF16_CLASSES, cpu_class, cpu_flags

    return [None, "avx512-vnni"] if cpu_class(cpu_flags()) in BF16_CLASSES else [None]


@pytest.mark.openvino
@pytest.mark.parametrize("planned", _planned_int8_classes())
def test_openvino_int8_activations_are_faithful_in_any_batch(
    oracle, int8_artifact, fp32_artifact, planned, monkeypatch
) -> None:
    """precision="int8": OpenVINO's dynamic int8 activations in the weights' blocks (the artifact's recorded
    block), bf16 elsewhere on a CPU with bf16 instructions, fp32 elsewhere on one with VNNI only (planned here on
    a bf16 CPU), fp32 throughout on a CPU without VNNI."""
    from rerank_onnx.artifact import load_artifact
    from rerank_onnx.backends.openvino import Compilation
    from rerank_onnx.backends.select import CPU_CLASS_ENV
    from rerank_onnx.errors import ModelLoadError

    block = load_artifact(int8_artifact).quantization_block
    assert block is not None
    assert Compilation("int8", 2, int8_block=block).properties()["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == str(block)
    assert Compilation("int8", 2, int8_block=block, bf16=False).properties()["INFERENCE_PRECISION_HINT"] == "f32"
    assert Compilation("bf16", 2, int8_block=block).properties()["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0"
    with pytest.raises(ModelLoadError, match="block"):
        Compilation("int8", 2)
    if planned is not None:
        monkeypatch.setenv(CPU_CLASS_ENV, planned)
    reranker = Reranker(int8_artifact, backend="openvino", precision="int8", compile_cache=False)
    assert reranker.backend is not None and reranker.backend.precision in ("int8", "fp32")
    if reranker.backend.precision == "int8":  # the compiled model carries the group size and the float type
        compiled, _ = reranker.model._scorer.session._engine.model.get()  # type: ignore[attr-defined]
        assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == block
        hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        assert ("bf16" in hint or "bfloat16" in hint) == reranker.backend.bf16, hint
    _assert_faithful(reranker, oracle, int8_artifact, fp32_artifact)
