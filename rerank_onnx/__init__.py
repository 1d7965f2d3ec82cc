"""rerank-onnx: LLM rerankers on a CPU with onnxruntime. No torch at run time."""

from .errors import InputTooLongError, InvalidInputError, ModelLoadError, RerankError, ScoringError
from .reranker import RankResult, Reranker

__all__ = [
    "InputTooLongError",
    "InvalidInputError",
    "ModelLoadError",
    "RankResult",
    "RerankError",
    "Reranker",
    "ScoringError",
]
__version__ = "0.1.0"
