"""Qwen3-Reranker as a model family: a tiny random Qwen3ForCausalLM with the real Qwen3 vocabulary,
exported through the real export, against an oracle that is the model card's transformers code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ENGINES, export_tiny

from rerank_onnx import Reranker

# The model card's reference code (Qwen/Qwen3-Reranker-0.6B, "Transformers Usage"), kept as written there.
REFERENCE_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
REFERENCE_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def format_instruction(instruction: str | None, query: str, doc: str) -> str:
    if instruction is None:
        instruction = "Given a web search query, retrieve relevant passages that answer the query"
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


class Qwen3Oracle:
    """format_instruction -> process_inputs -> compute_logits, as on the model card (fp32, CPU)."""

    def __init__(self, checkpoint: Path, max_length: int = 8192) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
        self.true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.prefix_tokens = self.tokenizer.encode(REFERENCE_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(REFERENCE_SUFFIX, add_special_tokens=False)
        self.max_length = max_length

    def process_inputs(self, pairs: list[str]):
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=self.max_length)

    def scores(self, queries: list[str], documents: list[str], instruction: str | None = None) -> list[float]:
        pairs = [format_instruction(instruction, q, d) for q, d in zip(queries, documents)]
        with self.torch.no_grad():
            batch_scores = self.model(**self.process_inputs(pairs)).logits[:, -1, :]
        true_vector = batch_scores[:, self.true_id]
        false_vector = batch_scores[:, self.false_id]
        batch_scores = self.torch.stack([false_vector, true_vector], dim=1)
        batch_scores = self.torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()


QUERIES = ["What is the capital of China?", "Explain gravity", "¿Dónde viven los peces?", "trailing space? "]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. " * 3,
    "Los peces viven en ríos y mares. 魚は川に住む。",
    "\nA document that opens with a newline, and ends with one\n",
]


@pytest.fixture(scope="module")
def qwen3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerank_onnx_export.random_checkpoint import build_qwen2_tokenizer_json, build_random_checkpoint

    folder = tmp_path_factory.mktemp("qwen3")
    tokenizer = build_qwen2_tokenizer_json(folder / "tokenizer" / "tokenizer.json", qwen3=True)
    return build_random_checkpoint(folder / "ckpt", size="qwen3-tiny", tokenizer_json=tokenizer)


@pytest.fixture(scope="module")
def qwen3_fp32(tmp_path_factory: pytest.TempPathFactory, qwen3_checkpoint: Path) -> Path:
    return export_tiny(tmp_path_factory, qwen3_checkpoint, "none")


@pytest.fixture(scope="module")
def oracle(qwen3_checkpoint: Path) -> Qwen3Oracle:
    return Qwen3Oracle(qwen3_checkpoint)


def test_the_family_is_detected_and_written(qwen3_fp32: Path) -> None:
    import json

    config = json.loads((qwen3_fp32 / "rerank_config.json").read_text())
    assert config["model_family"] == "qwen3-reranker" and config["template"]["family"] == "qwen3-reranker"
    assert config["normalization"]["estimated_max"] == 0.0


@pytest.mark.openvino
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("instruction", [None, "Find the passage that answers the question", ""])
def test_probabilities_equal_the_model_card_code(
    qwen3_fp32: Path, oracle: Qwen3Oracle, instruction: str | None, engine: tuple[str, str]
) -> None:
    backend, precision = engine
    reranker = Reranker(qwen3_fp32, backend=backend, precision=precision, compile_cache=False)  # type: ignore[arg-type]
    expected = oracle.scores(QUERIES, DOCUMENTS, instruction)
    got = reranker.predict(QUERIES, DOCUMENTS, instruction=instruction, normalize=True)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    raw = reranker.predict(QUERIES, DOCUMENTS, instruction=instruction)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw.astype(np.float64))), expected, atol=1e-4)  # raw: log-odds


def test_prompts_are_the_model_card_tokens(qwen3_fp32: Path, oracle: Qwen3Oracle) -> None:
    reranker = Reranker(qwen3_fp32)
    ours = reranker.model.encode(QUERIES, DOCUMENTS, instruction=None).input_ids
    pairs = [format_instruction(None, q, d) for q, d in zip(QUERIES, DOCUMENTS)]
    theirs = oracle.process_inputs(pairs)
    for row, mask, mine in zip(theirs["input_ids"].tolist(), theirs["attention_mask"].tolist(), ours):
        assert [t for t, m in zip(row, mask) if m] == mine


@pytest.mark.parametrize("reference_max_length", [70, 90])
def test_truncation_follows_the_model_card_code(
    qwen3_fp32: Path, qwen3_checkpoint: Path, reference_max_length: int
) -> None:
    """The reference's max_length counts the whole prompt; ours counts query + document (the template
    is added), so max_length = reference max_length - prefix - suffix gives its prompts."""
    short = Qwen3Oracle(qwen3_checkpoint, max_length=reference_max_length)
    budget = reference_max_length - len(short.prefix_tokens) - len(short.suffix_tokens)
    reranker = Reranker(qwen3_fp32, max_length=budget)
    long_query = ["word " * 60 + "?"]
    for queries, documents in ((QUERIES, DOCUMENTS), (long_query, ["short document"])):
        encoded = reranker.model.encode(queries, documents)
        pairs = [format_instruction(None, q, d) for q, d in zip(queries, documents)]
        theirs = short.process_inputs(pairs)
        for row, mask, mine in zip(theirs["input_ids"].tolist(), theirs["attention_mask"].tolist(), encoded.input_ids):
            assert [t for t, m in zip(row, mask) if m] == mine
        np.testing.assert_allclose(
            reranker.predict(queries, documents, normalize=True), short.scores(queries, documents), atol=1e-4
        )


def test_shared_prefix_equals_full_prompts(qwen3_fp32: Path) -> None:
    shared = Reranker(qwen3_fp32, max_batch_size=2)
    assert shared.model.computes_shared_prefix
    full = Reranker(qwen3_fp32, share_prefix=False)
    queries = [QUERIES[0]] * 3 + [QUERIES[1]] * 2
    documents = DOCUMENTS[:3] + DOCUMENTS[1:3]
    np.testing.assert_allclose(shared.predict(queries, documents), full.predict(queries, documents), atol=1e-4)


def test_int8_ranks_like_the_reference(tmp_path_factory: pytest.TempPathFactory, qwen3_checkpoint: Path) -> None:
    from rerank_onnx_export.report import spearman

    oracle = Qwen3Oracle(qwen3_checkpoint)
    reranker = Reranker(export_tiny(tmp_path_factory, qwen3_checkpoint, "int8"))
    queries = [q for q in QUERIES for _ in DOCUMENTS]
    documents = DOCUMENTS * len(QUERIES)
    expected = oracle.scores(queries, documents)
    got = reranker.predict(queries, documents, normalize=True)
    assert spearman(np.asarray(got), np.asarray(expected)) > 0.9


def test_the_server_serves_the_family(qwen3_fp32: Path, oracle: Qwen3Oracle) -> None:
    import httpx
    from test_server import _in_process

    from rerank_onnx.server import ServerSettings, create_app

    app = create_app(ServerSettings(model_dir=str(qwen3_fp32)))

    async def requests(client: httpx.AsyncClient):
        ranked = await client.post("/v1/rerank", json={"query": QUERIES[0], "documents": DOCUMENTS})
        return ranked.json(), (await client.get("/v1/models")).json()

    ranked, models = _in_process(app, requests)
    assert models["data"][0]["family"] == "qwen3-reranker"
    expected = oracle.scores([QUERIES[0]] * len(DOCUMENTS), DOCUMENTS)
    for result in ranked["results"]:
        assert abs(result["relevance_score"] - expected[result["index"]]) < 1e-4  # P(yes), as the reference
