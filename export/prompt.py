"""The mxbai-rerank-v2 prompt, written into the artifact as data.

These strings are copied from the official package (mxbai_rerank/mxbai_rerank_v2.py, v0.1.6), the
specification. The runtime never spells them: it reads them, and their pre-tokenized ids, from the
artifact's config.
"""

from __future__ import annotations

from typing import Any

SEPARATOR = "\n"
INSTRUCTION_PROMPT = "instruction: {instruction}"
QUERY_PROMPT = "query: {query}"
DOCUMENT_PROMPT = "document: {document}"
TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your "
    "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
CHAT_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
YES_TOKEN = "1"
NO_TOKEN = "0"
DEFAULT_MAX_LENGTH = 8192  # MxbaiRerankV2(max_length=8192)


def template_data(tokenizer: Any, *, model_max_length: int, truncation_side: str) -> dict:
    """The `template` section of rerank_config.json, tokenized piece by piece as the reference does.

    `tokenizer` is a `tokenizers.Tokenizer` (the same object whose JSON the artifact ships).
    """

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    yes, no = ids(YES_TOKEN), ids(NO_TOKEN)
    if len(yes) != 1 or len(no) != 1:
        raise ValueError(f"'1' and '0' must be single tokens, got {yes} and {no}")
    pad_id = tokenizer.token_to_id("<|endoftext|>")
    return {
        "separator": SEPARATOR,
        "instruction_prompt": INSTRUCTION_PROMPT,
        "query_prompt": QUERY_PROMPT,
        "document_prompt": DOCUMENT_PROMPT,
        "prefix_text": CHAT_PREFIX,
        "task_text": TASK_PROMPT,
        "suffix_text": CHAT_SUFFIX,
        "prefix_ids": ids(CHAT_PREFIX),
        "separator_ids": ids(SEPARATOR),
        "task_ids": ids(TASK_PROMPT),
        "suffix_ids": ids(CHAT_SUFFIX),
        "yes_token_id": yes[0],
        "no_token_id": no[0],
        "pad_token_id": pad_id if pad_id is not None else 0,
        "max_length": DEFAULT_MAX_LENGTH,
        "model_max_length": model_max_length,
        "truncation_side": truncation_side,
    }
