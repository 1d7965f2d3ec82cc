"""The peer: sentence-transformers 6 running mxbai-rerank-v2 as a CrossEncoder, on each of its backends.

sentence-transformers 6 runs a causal-LM reranker as `Transformer(text-generation)` + `LogitScore`
(logit("1") - logit("0") at the last token, the mxbai-v2 score), the prompt coming from the
checkpoint's chat template, where the (query, document) pair arrives as messages with the roles
"query" and "document". This module writes that template (the mxbai-rerank-v2 prompt, as its model
card's sentence-transformers section renders it) beside a copy of the benchmark checkpoint, and
builds the CrossEncoder on the backend a stack names:

    st-torch          PyTorch fp32 (what CrossEncoder(...) gives on a CPU)
    st-torch-bf16     PyTorch with bf16 weights (model_kwargs dtype)
    st-openvino       optimum-intel's OVModelForCausalLM (OpenVINO picks bf16 itself on bf16 CPUs)

Its onnx backend (and so its int8 ONNX export helper) is not here: `sentence-transformers[onnx]==6.2.0`
cannot be installed (Nov 2026): it needs transformers >= 5, while optimum-onnx 0.1.0, the newest, pins
transformers < 4.58. It needs sentence-transformers 6 with transformers 5, which the export extra
(transformers < 4.58) cannot share a venv with either: bench.py runs these stacks with the interpreter
given by --st-python (`pip install torch==2.13.0 "sentence-transformers[openvino]==6.2.0"`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

PREFIX = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your "
    "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


def chat_template() -> str:
    """A Jinja chat template that renders a query/document message pair as the mxbai-rerank-v2 prompt."""

    def literal(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return (
        "{%- set ns = namespace(query='', document='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'query' -%}{%- set ns.query = message['content'] -%}"
        "{%- elif message['role'] == 'document' -%}{%- set ns.document = message['content'] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{{- "
        + literal(PREFIX + "query: ")
        + " + ns.query + "
        + literal("\ndocument: ")
        + " + ns.document + "
        + literal("\n" + TASK + SUFFIX)
        + " -}}"
    )


def prepared_checkpoint(checkpoint: Path, work: Path) -> Path:
    """A copy of `checkpoint` (weights linked, not copied) with the chat template beside it."""
    target = work / f"{checkpoint.name}-st"
    if not (target / "chat_template.jinja").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for item in checkpoint.iterdir():
            (target / item.name).symlink_to(item.resolve())
        (target / "chat_template.jinja").write_text(chat_template())
    return target


class SentenceTransformersStack:
    """A sentence-transformers CrossEncoder on one backend, with the bench worker's interface."""

    def __init__(self, stack: str, checkpoint: str, threads: int, work: Path) -> None:
        import torch

        torch.set_num_threads(threads)
        from sentence_transformers import CrossEncoder
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.cross_encoder.modules import LogitScore

        folder = prepared_checkpoint(Path(checkpoint), work)
        backend = "openvino" if stack == "st-openvino" else "torch"
        model_kwargs: dict = {}
        if stack == "st-torch-bf16":
            model_kwargs["dtype"] = torch.bfloat16
        if backend == "openvino":
            model_kwargs["ov_config"] = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1"}
        transformer = Transformer(
            str(folder), transformer_task="text-generation", backend=backend, model_kwargs=model_kwargs
        )
        tokenizer = transformer.tokenizer
        score = LogitScore(
            true_token_id=tokenizer.convert_tokens_to_ids("1"), false_token_id=tokenizer.convert_tokens_to_ids("0")
        )
        self.model = CrossEncoder(modules=[transformer, score], backend=backend)
        self.tokenizer = tokenizer

    def scores(self, query: str, docs: list[str]) -> list[float]:
        return [float(s) for s in self.model.predict([(query, d) for d in docs], batch_size=8)]

    def tokens(self, query: str, docs: list[str]) -> int:
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "query", "content": query}, {"role": "document", "content": d}], tokenize=False
            )
            for d in docs
        ]
        return sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
