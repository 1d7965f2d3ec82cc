"""An artifact loaded for scoring, in two steps: text pairs -> prompt tokens (`encode`) -> scores.

`Reranker` loads it (`load_model`) and builds its pair-level API (`rank`, `predict`) on it; the server's
scheduler, the serverless handler, Ray and the export's self-check call the two steps directly
(`reranker.model`), so that they can encode per request and score across requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from .artifact import ArtifactConfig, check_files, load_artifact
from .backends import ScoreSession, open_backend
from .backends.cache import file_records_dir
from .backends.select import Backend, BackendChoice, Precision
from .cross_encoding import CrossEncoderPairs
from .from_checkpoint import artifact_for
from .scorer import Scorer
from .template import EncodedPairs, PairEncoder, load_tokenizer
from .validate import check_bool, check_document_starts, check_positive_int

DEFAULT_MAX_BATCH_SIZE = 32


class LoadedModel:
    """An artifact loaded for scoring: its config, its pair encoding and the scorer on its session.

    `Reranker` loads it (its arguments shape it) and builds rank() and predict() on it; the server's scheduler,
    the serverless handler, Ray and the export's self-check use it as `reranker.model`.

    Args:
        config: the artifact's config.
        encoder: the family's pair encoding (a prompt template, or a cross-encoder's tokenizer pairs).
        scorer: the scoring loop over the artifact's session.
        backend: the engine and precision chosen for this CPU, with the reason; None for a caller's own session.
    """

    def __init__(
        self,
        config: ArtifactConfig,
        encoder: PairEncoder | CrossEncoderPairs,
        scorer: Scorer,
        backend: BackendChoice | None,
    ) -> None:
        self.config = config
        self._encoder = encoder
        self._scorer = scorer
        self.backend = backend
        # the query + document token budget (the reference's max_length, within the model's limit)
        self.max_length: int = encoder.max_length
        self.template_tokens: int = encoder.predefined_length  # what every prompt spends on the template
        self.template_limit: int = encoder.template_limit  # the largest max_length the model allows

    @property
    def share_prefix(self) -> bool:
        """Whether shared prefixes were asked for (`computes_shared_prefix`: whether they happen)."""
        return self._scorer.share_prefix

    @share_prefix.setter
    def share_prefix(self, value: bool) -> None:
        check_bool("share_prefix", value)
        self._scorer.share_prefix = value

    @property
    def computes_shared_prefix(self) -> bool:
        """True when pairs of one query share the computation of their common prefix."""
        return self._scorer.computes_shared_prefix

    def encode(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        max_document_tokens: int | None = None,
        max_length: int | None = None,
        max_chunks_per_doc: int | None = None,
    ) -> EncodedPairs:
        """The prompt token ids of each pair, and whether it had to be truncated.

        Args:
            queries: one query per pair.
            documents: one document per pair, parallel to `queries`.
            instruction: the instruction slot (None: the family's default, none for mxbai; mxbai: "" is none;
                a cross-encoder has none and refuses one).
            max_document_tokens: a cap on each document's own tokens below what max_length allows.
            max_length: a lower query + document budget for this call than the reranker's.
            max_chunks_per_doc: None cuts a long document as the reference does; N encodes up to N
                overlapping chunks of it instead, one row each (EncodedPairs.chunks; chunking.py).

        Returns:
            EncodedPairs: token ids, which rows were cut, each row's prefix (tokens before its document).

        Raises:
            InvalidInputError: wrong types, unequal lengths, or text that is not valid Unicode.
        """
        return self._encoder.encode(
            queries,
            documents,
            instruction=instruction,
            max_document_tokens=max_document_tokens,
            max_length=max_length,
            max_chunks_per_doc=max_chunks_per_doc,
        )

    def score_encoded(
        self,
        input_ids: Sequence[Sequence[int]],
        *,
        document_starts: Sequence[int] | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Run the graph over already-encoded prompts in length-bucketed batches.

        Args:
            input_ids: one prompt's token ids per row (EncodedPairs.input_ids).
            document_starts: EncodedPairs.document_starts: rows that agree on the tokens before their documents
                compute them once; a cross-encoder needs them for its token types.
            batch_size: pairs per batch at most.
            show_progress: draw a progress bar on stderr.

        Returns:
            float32 raw scores in input order.
        """
        if document_starts is not None:
            check_document_starts(document_starts, len(input_ids))
        check_positive_int("batch_size", batch_size, allow_none=True)
        return self._scorer.score(
            input_ids, document_starts=document_starts, batch_size=batch_size, show_progress=show_progress
        )

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """sigmoid(score - estimated_max / 2): the family reference's probability (mxbai: its `normalize=True`;
        Qwen3-Reranker: P("yes"); a cross-encoder: the sigmoid CrossEncoder applies by default)."""
        shifted = np.asarray(scores, dtype=np.float64) - self.config.estimated_max / 2
        return (1.0 / (1.0 + np.exp(-shifted))).astype(np.float32)


def load_model(
    model_dir: str | Path,
    *,
    threads: int | None,
    max_length: int | None,
    max_batch_tokens: int | Literal["auto"],
    max_batch_size: int,
    session: ScoreSession | None,
    share_prefix: bool,
    backend: Backend,
    precision: Precision,
    compile_cache: bool,
    cache_dir: str | Path | None,
    slice_tokens: int | Literal["auto"] | None,
) -> LoadedModel:
    """Load an artifact (exporting a checkpoint first) onto this CPU's backend; the arguments are
    `Reranker`'s, which documents them."""
    _check_knobs(threads, max_length, max_batch_tokens, max_batch_size, slice_tokens, share_prefix, compile_cache)
    config = load_artifact(artifact_for(model_dir, cache_dir=cache_dir))
    # The files' digests are checked before a compiled model can be cached under them; with no cache, the
    # check runs beside the session's creation (hashlib and file reads release the GIL) and is waited for
    # before this returns: a damaged artifact never scores.
    checking = None if compile_cache else _check_in_background(config)
    if checking is None:
        check_files(config, records=file_records_dir(cache_dir))
    try:
        encoder = _pair_encoder(config, max_length)
        scorer, choice = _open_scorer(
            config,
            session=session,
            backend=backend,
            precision=precision,
            threads=threads,
            cache_dir=cache_dir if compile_cache else False,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            share_prefix=share_prefix,
            slice_tokens=slice_tokens,
        )
    finally:  # a damaged file explains a failed load better than the tokenizer's or the engine's error does
        if checking is not None:
            checking.result()
    return LoadedModel(config, encoder, scorer, choice)


def _check_in_background(config: ArtifactConfig) -> Future[None]:
    """check_files(config) on a thread of its own; the future's result() raises what it raised."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank-onnx-check")
    try:
        return pool.submit(check_files, config, records=None)
    finally:
        pool.shutdown(wait=False)


def _pair_encoder(config: ArtifactConfig, max_length: int | None) -> PairEncoder | CrossEncoderPairs:
    """The family's pair encoding: a prompt template (causal-LM families) or the tokenizer's pair encoding."""
    tokenizer = load_tokenizer(str(config.tokenizer_path))
    if config.pair_encoding is not None:
        return CrossEncoderPairs(
            tokenizer, config.pair_encoding, max_length=max_length or config.pair_encoding.max_length
        )
    assert config.template is not None  # load_artifact reads one of the two
    return PairEncoder(tokenizer, config.template, max_length=max_length or config.template.max_length)


def _check_knobs(
    threads: object,
    max_length: object,
    max_batch_tokens: object,
    max_batch_size: object,
    slice_tokens: object,
    share_prefix: object,
    compile_cache: object,
) -> None:
    """The constructor's checks, in its argument order."""
    check_positive_int("threads", threads, allow_none=True)
    check_positive_int("max_length", max_length, allow_none=True)
    if max_batch_tokens != "auto":
        check_positive_int("max_batch_tokens", max_batch_tokens)
    check_positive_int("max_batch_size", max_batch_size)
    if slice_tokens != "auto":
        check_positive_int("slice_tokens", slice_tokens, allow_none=True)
    check_bool("share_prefix", share_prefix)
    check_bool("compile_cache", compile_cache)


def _open_scorer(
    config: ArtifactConfig,
    *,
    session: ScoreSession | None,
    backend: Backend,
    precision: Precision,
    threads: int | None,
    cache_dir: str | Path | Literal[False] | None,
    max_batch_tokens: int | Literal["auto"],
    max_batch_size: int,
    share_prefix: bool,
    slice_tokens: int | Literal["auto"] | None,
) -> tuple[Scorer, BackendChoice | None]:
    """A scorer over `session`, or over the backend chosen for this CPU (returned with the choice)."""
    choice = None
    if session is None:
        session, choice = open_backend(
            config, backend=backend, precision=precision, threads=threads, cache_dir=cache_dir
        )
    limits = session.limits  # what "auto" resolves to: the engine's own (backends/protocols.py)
    scorer = Scorer(
        session,
        pad_id=config.pad_token_id,
        chat_prefix=config.template.prefix_ids if config.template else (),
        max_batch_tokens=limits.batch_tokens if max_batch_tokens == "auto" else max_batch_tokens,
        max_batch_size=max_batch_size,
        share_prefix=share_prefix,
        pad_multiple=limits.pad_multiple,
        # a budget asked for has no bound on what a batch attends over: the caller sized the batches
        max_batch_context=limits.batch_context if max_batch_tokens == "auto" else None,
        slice_tokens=limits.slice_tokens if slice_tokens == "auto" else slice_tokens,
        # slices asked for (or one piece) keep every long row in this process, off the whole-row path
        whole_row_tokens=limits.whole_row_tokens if slice_tokens == "auto" else None,
    )
    return scorer, choice
