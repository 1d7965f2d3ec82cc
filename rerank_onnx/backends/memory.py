"""Giving memory back after a large run.

Attention memory grows with rows x width x context (past + width). After a run above
`LARGE_ATTENTION`, onnxruntime's arena would keep its high-water mark, OpenVINO its intermediate
buffers and glibc's heap its freed blocks, so an idle server would hold the memory of its longest
request. Measured on base-v2 int8 with an 8k-token pair (benchmarks/README.md):
- onnxruntime's arena shrinkage run option gives back most of its arena (onnxruntime.py);
- `malloc_trim` after every large run gives back what numpy and the engines freed (8k pair on OpenVINO:
  peak 5.2 -> 3.9 GB);
- OpenVINO keeps what it grew until its compiled model is dropped, so after long prompts the engine
  compiles its model again (openvino.py; its own `release_memory` breaks the next inference).
Short batches stay below the threshold and cost nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Mapping
from functools import cache

import numpy as np

from ..artifact import INPUT_IDS, PAST_KEYS

# Above 1M attended positions (16 rows of 256 tokens), a run's working memory is worth giving back.
LARGE_ATTENTION = 1024 * 1024


def attention_positions(feeds: Mapping[str, np.ndarray]) -> int:
    """The attention a run on these feeds computes: rows x width x context (past + width)."""
    rows, width = (int(n) for n in feeds[INPUT_IDS].shape)
    past = int(feeds[PAST_KEYS].shape[2]) if PAST_KEYS in feeds else 0
    return rows * width * (past + width)


def attended_length(feeds: Mapping[str, np.ndarray]) -> int:
    """The keys and values each row of a run on these feeds attends over: past + width."""
    past = int(feeds[PAST_KEYS].shape[2]) if PAST_KEYS in feeds else 0
    return past + int(feeds[INPUT_IDS].shape[1])


def is_large(feeds: Mapping[str, np.ndarray]) -> bool:
    """Whether a run on these feeds has attention larger than LARGE_ATTENTION."""
    return attention_positions(feeds) > LARGE_ATTENTION


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
