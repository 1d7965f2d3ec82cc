"""Giving memory back after a large run.

Attention memory grows with rows x width x context (past + width). After a run above `LARGE_ATTENTION`,
onnxruntime's arena would keep its high-water mark, OpenVINO its intermediate buffers and glibc's heap its
freed blocks, so an idle server would hold the memory of its longest request. So:
- onnxruntime's arena shrinkage run option gives back most of its arena (onnxruntime.py);
- `malloc_trim` after every large run gives back what numpy and the engines freed;
- after long prompts each engine builds its model again (`Rebuildable`): OpenVINO keeps what it grew until its
  compiled model is dropped, and onnxruntime's arena keeps regions that shrinkage cannot free.
Short batches stay below the threshold and cost nothing. Measurements: docs/memory.md#rebuilds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from typing import Generic, TypeVar

import numpy as np

from ..artifact import INPUT_IDS, PAST_KEYS
from ..errors import ModelLoadError

T = TypeVar("T")

# Above 1M attended positions (16 rows of 256 tokens), a run's working memory is worth giving back.
LARGE_ATTENTION = 1024 * 1024


def attended_length(feeds: Mapping[str, np.ndarray]) -> int:
    """The keys and values each row of a run on these feeds attends over: past + width."""
    past = int(feeds[PAST_KEYS].shape[2]) if PAST_KEYS in feeds else 0
    return past + int(feeds[INPUT_IDS].shape[1])


def is_large(feeds: Mapping[str, np.ndarray]) -> bool:
    """Whether a run on these feeds has attention larger than LARGE_ATTENTION (rows x width x context)."""
    rows, width = (int(n) for n in feeds[INPUT_IDS].shape)
    return rows * width * attended_length(feeds) > LARGE_ATTENTION


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def trim_heap() -> None:
    """Return the heap's free pages to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Rebuildable(Generic[T]):
    """An engine's compiled model, dropped after long prompts (and with it what the engine grew for them)
    and built again on a background thread; the next run waits for that build.

    Args:
        build: compiles the model (raises ModelLoadError when it cannot).
        rebuild_length: after runs whose rows attended over more than this many tokens, `release` drops it.
    """

    def __init__(self, build: Callable[[], T], *, rebuild_length: int) -> None:
        self._build = build
        self._current: T | None = build()
        self._pending: Future[T] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._longest = 0  # the most keys and values a row attended over since the last build
        self.rebuild_length = rebuild_length
        self.rebuilds = 0

    def get(self) -> T:
        """The model: waits for a build under way; if that failed, builds here (raising ModelLoadError if
        that fails too, and trying again on the next call)."""
        if self._current is None:
            pending, self._pending = self._pending, None
            if pending is not None:
                with contextlib.suppress(ModelLoadError):
                    self._current = pending.result()
            if self._current is None:
                self._current = self._build()
        return self._current

    def ran(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Record a run on these feeds."""
        self._longest = max(self._longest, attended_length(feeds))

    def drop(self) -> None:
        """Free the model now, for a run on another model that needs the memory; `release` at the end of the
        call starts building it again (or `get` builds it, if asked first)."""
        pending, self._pending, self._current = self._pending, None, None
        if pending is not None:  # a build under way finishes first, and goes with the rest
            with contextlib.suppress(ModelLoadError):
                pending.result()
        trim_heap()

    def release(self) -> None:
        """After runs longer than `rebuild_length` (or a `drop`): drop the model and start building it again."""
        if self._longest > self.rebuild_length:
            self._current = None  # the last reference: the engine frees its buffers here
        self._longest = 0
        if self._current is not None or self._pending is not None:
            return
        trim_heap()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank-onnx-rebuild")
        self._pending = self._pool.submit(self._build)
        self.rebuilds += 1
