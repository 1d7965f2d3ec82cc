"""rerank-onnx: LLM rerankers on a CPU with onnxruntime. No torch at run time."""

from .errors import InputTooLongError, InvalidInputError, ModelLoadError, RerankError
from .reranker import RankResult, Reranker

__all__ = ["Reranker", "RankResult", "RerankError", "ModelLoadError", "InvalidInputError", "InputTooLongError"]
__version__ = "0.1.0"
