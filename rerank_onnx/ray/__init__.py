"""rerank-onnx on Ray: batch jobs over Ray Data (`RerankBatch`, `run_batch`) and Ray Serve replicas (`serve`).

Install with `pip install 'rerank-onnx[ray]'`. The core runtime never imports this package.
"""

from __future__ import annotations

from .batch import BatchOptions, RerankBatch
from .job import BatchReport, run_batch

__all__ = ["BatchOptions", "BatchReport", "RerankBatch", "run_batch"]
