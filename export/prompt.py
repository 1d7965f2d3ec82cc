"""Each model family's prompt, written into the artifact as data.

The strings are copied from each family's reference: the official `mxbai-rerank` package
(mxbai_rerank/mxbai_rerank_v2.py, v0.1.6) for mxbai-rerank-v2, and the transformers usage code on
the Qwen3-Reranker model cards for qwen3-reranker. The runtime never spells them: it reads them, and
their pre-tokenized ids, from the artifact's config. A new causal-LM family is one more `Prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rerank_onnx.errors import ExportError

Family = Literal["mxbai-rerank-v2", "qwen3-reranker", "cross-encoder"]


@dataclass(frozen=True)
class Prompt:
    """A family's prompt: prefix, query part, separator, document part, tail; the two score tokens."""

    family: Family
    prefix_text: str
    instruction_prompt: str  # put before the query part when an instruction is given ("": none)
    query_prompt: str  # may hold {instruction} as well as {query}
    separator: str  # between the query and document parts, and (mxbai) before the task
    document_prompt: str
    task_text: str
    suffix_text: str
    yes_token: str  # score = logit(yes) - logit(no) at the last token
    no_token: str
    default_instruction: str  # used when the caller gives none
    # "mxbai": query capped at 3/4 of max_length, then the document (the official package's rule);
    # "joint": query and document parts cut together from the end (one tokenizer call, as Qwen3's code)
    truncation: Literal["mxbai", "joint"]
    max_length: int  # the reference's default
    max_length_counts_template: bool  # Qwen3's max_length is the whole prompt; mxbai's query + document
    estimated_max: float  # normalize: sigmoid(score - estimated_max / 2); 0 gives P(yes) for Qwen3


MXBAI_RERANK_V2 = Prompt(
    family="mxbai-rerank-v2",
    prefix_text=(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
    ),
    instruction_prompt="instruction: {instruction}",
    query_prompt="query: {query}",
    separator="\n",
    document_prompt="document: {document}",
    task_text=(
        "You are a search relevance expert who evaluates how well documents match search queries. For each "
        "query-document pair, carefully analyze the semantic relationship between them, then provide your "
        "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
    ),
    suffix_text="<|im_end|>\n<|im_start|>assistant\n",
    yes_token="1",
    no_token="0",
    default_instruction="",
    truncation="mxbai",
    max_length=8192,  # MxbaiRerankV2(max_length=8192)
    max_length_counts_template=False,
    estimated_max=12.0,  # overridden per hub id by source.py, as the official package does
)

QWEN3_RERANKER = Prompt(
    family="qwen3-reranker",
    prefix_text=(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    ),
    instruction_prompt="",
    # The reference formats "<Instruct>: {i}\n<Query>: {q}\n<Document>: {d}" and tokenizes it in one call.
    # The newline closes a pre-tokenizer chunk (Qwen's regex), so tokenizing up to it and the document
    # part apart gives the same ids: the query part keeps its newline, and the separator is empty.
    query_prompt="<Instruct>: {instruction}\n<Query>: {query}\n",
    separator="",
    document_prompt="<Document>: {document}",
    task_text="",
    suffix_text="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    yes_token="yes",
    no_token="no",
    default_instruction="Given a web search query, retrieve relevant passages that answer the query",
    truncation="joint",
    max_length=8192,
    max_length_counts_template=True,
    estimated_max=0.0,
)

PROMPTS: dict[str, Prompt] = {p.family: p for p in (MXBAI_RERANK_V2, QWEN3_RERANKER)}
# Every family the exporter writes: the causal-LM prompts above, and cross-encoders (cross_encoder.py), whose
# pair encoding is the tokenizer's own.
FAMILIES = (*PROMPTS, "cross-encoder")


def detect_family(config: dict[str, Any], source: str) -> Family:
    """The family a checkpoint's config and name make certain; ExportError when they do not."""
    architectures = config.get("architectures") or []
    if "Qwen3ForCausalLM" in architectures:
        return "qwen3-reranker"
    if "Qwen2ForCausalLM" in architectures:
        return "mxbai-rerank-v2"
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    raise ExportError(
        f"{source}: cannot tell the model family from architectures={architectures!r}; pass --family "
        f"({', '.join(FAMILIES)})"
    )


def template_data(tokenizer: Any, prompt: Prompt, *, model_max_length: int, truncation_side: str) -> dict[str, Any]:
    """The `template` section of rerank_config.json, tokenized piece by piece as the reference does.

    `tokenizer` is a `tokenizers.Tokenizer` (the same object whose JSON the artifact ships).
    """

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids if text else []

    yes, no = ids(prompt.yes_token), ids(prompt.no_token)
    if len(yes) != 1 or len(no) != 1:
        raise ExportError(f"{prompt.yes_token!r} and {prompt.no_token!r} must be single tokens, got {yes} and {no}")
    pad_id = tokenizer.token_to_id("<|endoftext|>")
    prefix, separator, task, suffix = (
        ids(t) for t in (prompt.prefix_text, prompt.separator, prompt.task_text, prompt.suffix_text)
    )
    tail = (separator + task + suffix) if prompt.truncation == "mxbai" else suffix
    max_length = prompt.max_length - (len(prefix) + len(tail) if prompt.max_length_counts_template else 0)
    return {
        "family": prompt.family,
        "separator": prompt.separator,
        "instruction_prompt": prompt.instruction_prompt,
        "query_prompt": prompt.query_prompt,
        "document_prompt": prompt.document_prompt,
        "default_instruction": prompt.default_instruction,
        "prefix_text": prompt.prefix_text,
        "task_text": prompt.task_text,
        "suffix_text": prompt.suffix_text,
        "prefix_ids": prefix,
        "separator_ids": separator,
        "task_ids": task,
        "suffix_ids": suffix,
        "tail_ids": tail,
        "truncation": prompt.truncation,
        "yes_token_id": yes[0],
        "no_token_id": no[0],
        "pad_token_id": pad_id if pad_id is not None else 0,
        "max_length": max_length,
        "model_max_length": model_max_length,
        "truncation_side": truncation_side,
    }
