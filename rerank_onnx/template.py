"""(query, document) pairs -> prompt token ids, exactly as mxbai_rerank.MxbaiRerankV2.prepare_inputs builds them.

The reference tokenizes each piece on its own (so no BPE merge crosses a piece boundary), truncates
the query to 3/4 of `max_length`, the document to what the model can still hold, then the
separator + document so that query + separator + document fit in `max_length`, and finally wraps
the result in the fixed chat prefix, task prompt and suffix. We do the same with `tokenizers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from .artifact import Template
from .errors import ModelLoadError


@dataclass(frozen=True)
class EncodedPairs:
    input_ids: list[list[int]]
    truncated: list[bool]  # True where any part of the query or document was cut
    # Tokens before the document part (chat prefix, instruction, query): the pairs of one query share them.
    prefix_lengths: list[int]


class PairEncoder:
    def __init__(self, tokenizer: Tokenizer, template: Template, *, max_length: int) -> None:
        self._tokenizer = tokenizer
        self._t = template
        self._fixed = len(template.prefix_ids) + len(template.task_ids) + len(template.suffix_ids)
        self.predefined_length = self._fixed + len(template.separator_ids)
        # The reference shrinks max_length so that the template never pushes past the model's limit.
        self.max_length = min(max_length, template.model_max_length - self.predefined_length)
        self._left = template.truncation_side == "left"

    @property
    def template_limit(self) -> int:
        """The largest max_length the model allows."""
        return self._t.model_max_length - self.predefined_length

    def query_text(self, query: str, instruction: str | None) -> str:
        text = self._t.query_prompt.format(query=query)
        if instruction:  # the reference treats "" like None
            text = self._t.instruction_prompt.format(instruction=instruction) + self._t.separator + text
        return text

    def encode(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        instruction: str | None,
        max_document_tokens: int | None = None,
        max_length: int | None = None,
    ) -> EncodedPairs:
        """max_document_tokens: an extra cap on each document's own tokens (Cohere's max_tokens_per_doc).
        max_length: a lower query + document budget for this call (vLLM's truncate_prompt_tokens)."""
        limit = min(self.max_length, max_length) if max_length else self.max_length
        # rank() repeats one query for every document: tokenize each distinct query once.
        distinct = list(dict.fromkeys(queries))
        query_ids = dict(zip(distinct, self._encode_texts([self.query_text(q, instruction) for q in distinct])))
        doc_ids = self._encode_texts([self._t.document_prompt.format(document=d) for d in documents])
        t = self._t
        chat_prefix, tail = list(t.prefix_ids), list(t.separator_ids) + list(t.task_ids) + list(t.suffix_ids)
        sep = list(t.separator_ids)
        query_cap = limit * 3 // 4  # reference: reserve at least a quarter for the document
        ids: list[list[int]] = []
        truncated: list[bool] = []
        prefixes: list[int] = []
        for query, document in zip(queries, doc_ids):
            q, cut_q = self._cut(query_ids[query], query_cap)
            available = t.model_max_length - len(q) - self.predefined_length
            cap = min(available, limit, max_document_tokens or limit)
            d, cut_d = self._cut(document, cap)
            pair, cut_p = self._cut(sep + d, limit - len(q))
            ids.append(chat_prefix + q + pair + tail)
            truncated.append(cut_q or cut_d or cut_p)
            prefixes.append(len(chat_prefix) + len(q))
        return EncodedPairs(input_ids=ids, truncated=truncated, prefix_lengths=prefixes)

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _cut(self, ids: list[int], limit: int) -> tuple[list[int], bool]:
        if len(ids) <= limit:
            return ids, False
        limit = max(limit, 0)
        return (ids[len(ids) - limit :] if self._left else ids[:limit]), True


def load_tokenizer(path: str) -> Tokenizer:
    """The artifact's tokenizer with truncation and padding off (the encoder does both).

    Raises:
        ModelLoadError: the file is missing or is not a tokenizer the `tokenizers` library can read.
    """
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable JSON
        raise ModelLoadError(f"cannot read the tokenizer {path}: {exc}; re-run the export or restore the file") from exc
    # Truncation and padding are ours to do; a tokenizer.json may carry its own settings.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
