"""(query, document) pairs -> a cross-encoder's input, as sentence-transformers' CrossEncoder builds it.

CrossEncoder calls its Hugging Face fast tokenizer on the lists of queries and documents with
truncation='longest_first' and max_length = the model's limit. That tokenizer is a `tokenizers`
Tokenizer (the artifact's tokenizer.json): its post-processor adds the special tokens ([CLS] query
[SEP] document [SEP] for BERT, <s> query </s></s> document </s> for XLM-RoBERTa) and its truncation
cuts the longer of the two texts a token at a time until the pair fits. We call the same Rust code
with the same settings, so the ids are the reference's (tested against CrossEncoder's tokenizer).

`max_length` here is the query + document budget, as for every family: the special tokens come on top.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tokenizers import Encoding, Tokenizer

from .artifact import PairEncoding
from .chunking import Row, chunk_spans, further_chunks, lay_out
from .errors import InvalidInputError
from .template import CharacterCap, EncodedPairs
from .validate import check_encode_limits, check_parallel

# Tokens kept free in a chunk beyond the query's share, for merges that differ at a chunk's edges.
CHUNK_MARGIN = 4


class CrossEncoderPairs:
    """Encodes pairs for a cross-encoder artifact; the same `encode` as template.PairEncoder."""

    def __init__(self, tokenizer: Tokenizer, encoding: PairEncoding, *, max_length: int) -> None:
        self._tokenizer = tokenizer
        self._encoding = encoding
        self._cap = CharacterCap(tokenizer)
        self._lock = threading.Lock()  # truncation is tokenizer state: one encode at a time sets it
        self.predefined_length = (
            tokenizer.post_processor.num_special_tokens_to_add(True) if tokenizer.post_processor else 0
        )
        self.template_limit = encoding.max_length - self.predefined_length
        self.max_length = min(max_length, self.template_limit)

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
        """The pair encodings; arguments as template.PairEncoder.encode. A cross-encoder reads no
        instruction: passing one is an InvalidInputError, not a silently ignored text."""
        queries, documents = check_parallel(queries, documents)
        if instruction is not None:
            raise InvalidInputError(
                f"instruction: expected None for a cross-encoder, got {instruction!r}; this model family has no "
                "instruction slot (mxbai-rerank-v2 and qwen3-reranker artifacts do)"
            )
        check_encode_limits(max_document_tokens, max_length, max_chunks_per_doc)
        limit = min(self.max_length, max_length) if max_length else self.max_length
        # only what can be scored reaches the tokenizer (template.CharacterCap)
        queries = self._cap.cut(queries, limit)
        documents = self._cap.cut(documents, limit * (max_chunks_per_doc or 1))
        capped = [False] * len(documents)
        if max_document_tokens is not None:
            documents, capped = self._cap_documents(documents, max_document_tokens)
        encodings = self._encode(queries, documents, limit)
        encoded = EncodedPairs(
            input_ids=[e.ids for e in encodings],
            truncated=[bool(e.overflowing) or cap for e, cap in zip(encodings, capped)],
            document_starts=[_document_start(e) for e in encodings],
        )
        if max_chunks_per_doc is None:
            return encoded
        return self._in_chunks(encoded, encodings, queries, documents, limit, max_chunks_per_doc)

    def _encode(self, queries: Sequence[str], documents: Sequence[str], limit: int) -> list[Encoding]:
        with self._lock:
            self._tokenizer.enable_truncation(
                limit + self.predefined_length, strategy="longest_first", direction=self._encoding.truncation_side
            )
            try:
                return list(self._tokenizer.encode_batch(list(zip(queries, documents))))
            finally:
                self._tokenizer.no_truncation()

    def _tokens(self, texts: Sequence[str]) -> list[Encoding]:
        """Each text alone, no special tokens, not truncated (for counts and character offsets)."""
        with self._lock:
            return list(self._tokenizer.encode_batch(list(texts), add_special_tokens=False))

    def _cap_documents(self, documents: list[str], cap: int) -> tuple[list[str], list[bool]]:
        """Documents longer than `cap` tokens cut after their cap-th token (at its character end)."""
        out, cut = list(documents), [False] * len(documents)
        for i, tokens in enumerate(self._tokens(documents)):
            if len(tokens.ids) > cap:
                out[i], cut[i] = documents[i][: tokens.offsets[cap - 1][1]], True
        return out, cut

    def _in_chunks(
        self,
        encoded: EncodedPairs,
        encodings: list[Encoding],
        queries: list[str],
        documents: list[str],
        limit: int,
        max_chunks: int,
    ) -> EncodedPairs:
        """Cut documents become overlapping chunks, each scored as a pair of its own (chunking.py). A cut
        document's first chunk is its truncated pair itself (`encodings`), so a chunked score is never below
        the truncated one."""
        spans: dict[int, list[tuple[int, int]]] = {}
        complete = [True] * len(documents)
        cut = [i for i, truncated in enumerate(encoded.truncated) if truncated]
        query_tokens = {q: len(e.ids) for q, e in zip(queries, self._tokens(queries))}
        for i, document_tokens in zip(cut, self._tokens([documents[i] for i in cut])):
            # longest_first leaves the query whole up to half the budget, and the document what is left
            chunk = limit - min(query_tokens[queries[i]], limit // 2) - CHUNK_MARGIN
            if chunk < 1 or not document_tokens.ids:
                complete[i] = False
                continue
            first_end = _document_end(encodings[i])
            spans[i], complete[i] = chunk_spans(document_tokens.offsets, chunk, max_chunks, first_end)
        pieces = further_chunks(spans)
        chunked = self._encode([queries[i] for i, _ in pieces], [documents[i][a:b] for i, (a, b) in pieces], limit)
        # the first row of a cut document is its truncated pair, cut only if its query was
        firsts = [
            Row(
                encoded.input_ids[i],
                encodings[i].sequence_ids.count(0) < query_tokens[queries[i]] if i in spans else encoded.truncated[i],
                encoded.document_starts[i],
            )
            for i in range(len(documents))
        ]
        further = [Row(e.ids, bool(e.overflowing), _document_start(e)) for e in chunked]
        rows, chunks = lay_out(firsts, [len(d) for d in documents], spans, further, complete)
        return EncodedPairs.from_rows(rows, chunks)


def _document_end(encoding: Encoding) -> int:
    """The character end, in the document's text, of the last document token the encoding holds (0: none)."""
    ends = [end for (_, end), sequence in zip(encoding.offsets, encoding.sequence_ids) if sequence == 1]
    return max(ends, default=0)


def _document_start(encoding: Encoding) -> int:
    """Where the document's part begins: the first token of type 1 (BERT's token types), else the first
    token of the second sequence, else the end (no document tokens). The graph's token_type_ids are 1
    from here on, as the tokenizer's own type ids are."""
    types: list[int] = encoding.type_ids
    if 1 in types:
        return types.index(1)
    sequence_ids: list[int | None] = encoding.sequence_ids
    return sequence_ids.index(1) if 1 in sequence_ids else len(types)
