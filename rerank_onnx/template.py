"""(query, document) pairs -> prompt token ids, exactly as mxbai_rerank.MxbaiRerankV2.prepare_inputs builds them.

The reference tokenizes each piece on its own (so no BPE merge crosses a piece boundary), truncates
the query to 3/4 of `max_length`, the document to what the model can still hold, then the
separator + document so that query + separator + document fit in `max_length`, and finally wraps
the result in the fixed chat prefix, task prompt and suffix. We do the same with `tokenizers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from tokenizers import Tokenizer

from .artifact import Template
from .chunking import Chunks, Row, chunk_spans, further_chunks, lay_out
from .errors import ModelLoadError
from .validate import check_encode_limits, check_parallel, check_str


@dataclass(frozen=True)
class EncodedPairs:
    """One prompt per pair, or with `max_chunks_per_doc` one per chunk of a long document (see `chunks`)."""

    input_ids: list[list[int]]
    truncated: list[bool]  # per row: True where any part of the query or document was cut
    # Tokens before the document part (chat prefix, instruction, query): the rows of one query share them.
    document_starts: list[int]
    chunks: Chunks | None = None  # which pair and document span each row scores; None: one row per pair

    @classmethod
    def from_rows(cls, rows: Sequence[Row], chunks: Chunks) -> EncodedPairs:
        """A chunked encoding from its rows (chunking.lay_out)."""
        return cls([r.ids for r in rows], [r.truncated for r in rows], [r.document_start for r in rows], chunks=chunks)

    def pair_truncated(self) -> list[bool]:
        """Per pair: was any of its query or document left unscored."""
        if self.chunks is None:
            return self.truncated
        cut = [not complete for complete in self.chunks.complete]
        for row, pair in enumerate(self.chunks.owner):
            cut[pair] = cut[pair] or self.truncated[row]
        return cut


class CharacterCap:
    """Bounds the text handed to the tokenizer by what can be scored: a text needs at most `tokens` x the
    longest token's characters (the vocabulary's longest entry, at least MIN_CHARS_PER_TOKEN: a WordPiece
    word of up to 100 characters can become one [UNK]) to yield its first `tokens` tokens. A 100 MB
    one-line document would otherwise be tokenized whole (12 GB for 8,192 tokens kept). A cut text has more
    tokens than are kept, so it is truncated (or has more chunks than are scored) all the same, and the
    `truncated` flags say so. The tokens near the cut may merge differently; SLACK_TOKENS of them are kept
    beyond the need, so those never reach what is scored."""

    MIN_CHARS_PER_TOKEN = 100
    SLACK_TOKENS = 64

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    @cached_property
    def chars_per_token(self) -> int:
        """The most characters one token can stand for (read from the vocabulary on first need)."""
        return max(self.MIN_CHARS_PER_TOKEN, max(map(len, self._tokenizer.get_vocab()), default=0))

    def cut(self, texts: list[str], tokens: int) -> list[str]:
        """`texts`, each cut to the characters its first `tokens` tokens can need (most are returned as they are)."""
        if all(len(text) <= (tokens + self.SLACK_TOKENS) * self.MIN_CHARS_PER_TOKEN for text in texts):
            return texts  # shorter than any cap: no need to read the vocabulary
        cap = (tokens + self.SLACK_TOKENS) * self.chars_per_token
        return [text[:cap] for text in texts]


class PairEncoder:
    def __init__(self, tokenizer: Tokenizer, template: Template, *, max_length: int) -> None:
        self._tokenizer = tokenizer
        self._cap = CharacterCap(tokenizer)
        self._t = template
        self.predefined_length = len(template.prefix_ids) + len(template.tail_ids)
        # The reference shrinks max_length so that the template never pushes past the model's limit.
        self.max_length = min(max_length, template.model_max_length - self.predefined_length)
        # what the document prompt adds around a document, plus room for merges that differ at a chunk's edges
        self._chunk_margin = len(self._encode_texts([template.document_prompt.format(document="")])[0]) + 4

    @property
    def template_limit(self) -> int:
        """The largest max_length the model allows."""
        return self._t.model_max_length - self.predefined_length

    def query_text(self, query: str, instruction: str | None) -> str:
        """The query part: the family's query prompt, with the instruction (or its default) where it goes."""
        if instruction is None:
            instruction = self._t.default_instruction
        text = self._t.query_prompt.format(query=query, instruction=instruction)
        if instruction and self._t.instruction_prompt:  # mxbai's reference treats "" like None
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
        max_chunks_per_doc: int | None = None,
    ) -> EncodedPairs:
        """max_document_tokens: an extra cap on each document's own tokens (Cohere's max_tokens_per_doc).
        max_length: a lower query + document budget for this call (vLLM's truncate_prompt_tokens).
        max_chunks_per_doc: None truncates a long document as the reference does; N scores up to N
        overlapping chunks of it instead (chunking.py). Inputs are checked first (InvalidInputError)."""
        queries, documents = check_parallel(queries, documents)
        if instruction is not None:
            check_str("instruction", instruction)
        check_encode_limits(max_document_tokens, max_length, max_chunks_per_doc)
        limit = min(self.max_length, max_length) if max_length else self.max_length
        # only what can be scored reaches the tokenizer: the limit, or with chunks every chunk's share of it
        queries = self._cap.cut(queries, limit)
        documents = self._cap.cut(documents, limit * (max_chunks_per_doc or 1))
        encoded, budgets = self._encode_pairs(queries, documents, instruction, limit, max_document_tokens)
        if max_chunks_per_doc is None:
            return encoded
        return self._in_chunks(encoded, budgets, queries, documents, instruction, limit, max_chunks_per_doc)

    def _encode_pairs(
        self,
        queries: list[str],
        documents: list[str],
        instruction: str | None,
        limit: int,
        max_document_tokens: int | None,
    ) -> tuple[EncodedPairs, list[int | None]]:
        """The prompts, and for each pair whose document was cut the tokens its document could have."""
        # rank() repeats one query for every document: tokenize each distinct query once.
        distinct = list(dict.fromkeys(queries))
        query_ids = dict(zip(distinct, self._encode_texts([self.query_text(q, instruction) for q in distinct])))
        doc_ids = self._encode_texts([self._t.document_prompt.format(document=d) for d in documents])
        chat_prefix, tail = list(self._t.prefix_ids), list(self._t.tail_ids)
        cut_pair = cut_joint if self._t.truncation == "joint" else cut_mxbai
        ids: list[list[int]] = []
        truncated: list[bool] = []
        prefixes: list[int] = []
        budgets: list[int | None] = []
        for query, document in zip(queries, doc_ids):
            q, pair, cut, budget = cut_pair(
                query_ids[query], document, template=self._t, limit=limit, max_document_tokens=max_document_tokens
            )
            ids.append(chat_prefix + q + pair + tail)
            truncated.append(cut)
            prefixes.append(len(chat_prefix) + len(q))
            budgets.append(budget)
        return EncodedPairs(input_ids=ids, truncated=truncated, document_starts=prefixes), budgets

    def _in_chunks(
        self,
        encoded: EncodedPairs,
        budgets: list[int | None],
        queries: list[str],
        documents: list[str],
        instruction: str | None,
        limit: int,
        max_chunks: int,
    ) -> EncodedPairs:
        """Cut documents become overlapping chunks, each a prompt of its own; the other pairs keep the
        prompt `encoded` already holds (so only the chunks are tokenized again). A cut document's first
        chunk is its truncated prompt itself, so a chunked score is never below the truncated one."""
        spans: dict[int, list[tuple[int, int]]] = {}
        complete = [True] * len(documents)
        for i, (document, budget) in enumerate(zip(documents, budgets)):
            chunk = budget - self._chunk_margin if budget is not None else 0
            if chunk < 1:  # whole, or no room for a chunk beside the query: the prompt as encoded
                complete[i] = budget is None
                continue
            offsets = self._tokenizer.encode(document, add_special_tokens=False).offsets
            first_end = self._truncated_document_end(encoded, i, document)
            spans[i], complete[i] = chunk_spans(offsets, chunk, max_chunks, first_end)
        pieces = further_chunks(spans)
        chunked, _ = self._encode_pairs(
            [queries[i] for i, _ in pieces], [documents[i][a:b] for i, (a, b) in pieces], instruction, limit, None
        )
        query_cut = self._query_cut(encoded, queries, instruction)
        # the first row of a cut document is its truncated prompt, cut only if its query was
        firsts = [
            Row(encoded.input_ids[i], query_cut[i] if i in spans else encoded.truncated[i], encoded.document_starts[i])
            for i in range(len(documents))
        ]
        further = [Row(*row) for row in zip(chunked.input_ids, chunked.truncated, chunked.document_starts)]
        rows, chunks = lay_out(firsts, [len(d) for d in documents], spans, further, complete)
        return EncodedPairs.from_rows(rows, chunks)

    def _truncated_document_end(self, encoded: EncodedPairs, pair: int, document: str) -> int:
        """The character end, in `document`, of the text pair `pair`'s truncated prompt holds."""
        lead = self._t.document_prompt.index("{document}")
        text = self._t.document_prompt.format(document=document)
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        after_query = len(encoded.input_ids[pair]) - encoded.document_starts[pair]
        kept = min(max(after_query - len(self._t.tail_ids) - len(self._t.separator_ids), 1), len(offsets))
        end: int = offsets[kept - 1][1]
        return min(max(end - lead, 0), len(document))

    def _query_cut(self, encoded: EncodedPairs, queries: list[str], instruction: str | None) -> list[bool]:
        """Per pair: whether its prompt holds fewer query tokens than the query part has."""
        distinct = list(dict.fromkeys(queries))
        lengths = dict(zip(distinct, map(len, self._encode_texts([self.query_text(q, instruction) for q in distinct]))))
        chat = len(self._t.prefix_ids)
        return [encoded.document_starts[i] - chat < lengths[q] for i, q in enumerate(queries)]

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]


def cut_mxbai(
    query: list[int], document: list[int], *, template: Template, limit: int, max_document_tokens: int | None
) -> tuple[list[int], list[int], bool, int | None]:
    """The official mxbai package's rule: the query to 3/4 of the limit, then the document, then
    separator + document to what is left.

    Returns:
        The query ids, the separator + document ids, whether anything was cut, and the tokens the
        document could have had (None when it was not cut; chunking sizes its chunks by it).
    """
    left = template.truncation_side == "left"
    sep = list(template.separator_ids)
    q, cut_q = _cut(query, limit * 3 // 4, left)  # reference: reserve at least a quarter for the document
    available = template.model_max_length - len(q) - len(template.prefix_ids) - len(template.tail_ids)
    cap = min(available, limit, max_document_tokens or limit)
    d, cut_d = _cut(document, cap, left)
    pair, cut_p = _cut(sep + d, limit - len(q), left)
    budget = min(cap, limit - len(q) - len(sep)) if cut_d or cut_p else None
    return q, pair, cut_q or cut_d or cut_p, budget


def cut_joint(
    query: list[int], document: list[int], *, template: Template, limit: int, max_document_tokens: int | None
) -> tuple[list[int], list[int], bool, int | None]:
    """Qwen3-Reranker's rule: query part + separator + document part cut together to the limit from the
    end (its reference tokenizes them as one text with truncation='longest_first'). Returns as cut_mxbai."""
    left = template.truncation_side == "left"
    d, cut_d = _cut(document, max_document_tokens or len(document), left)
    whole = query + list(template.separator_ids) + d
    kept, cut = _cut(whole, limit, left)
    q = query[max(len(whole) - limit, 0) :] if left else kept[: len(query)]
    before_document = len(whole) - len(d)
    budget = limit - before_document if (cut or cut_d) and before_document < limit else None
    return q, kept[len(q) :], cut or cut_d, budget


def _cut(ids: list[int], limit: int, left: bool) -> tuple[list[int], bool]:
    if len(ids) <= limit:
        return ids, False
    limit = max(limit, 0)
    return (ids[len(ids) - limit :] if left else ids[:limit]), True


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
