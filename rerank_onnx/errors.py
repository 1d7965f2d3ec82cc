"""The exception tree. Every error the runtime raises on purpose is a `RerankError`."""

from __future__ import annotations


class RerankError(Exception):
    """Base class of every error raised on purpose by rerank-onnx."""


class ModelLoadError(RerankError):
    """The artifact folder is missing, incomplete, or not one this runtime can read."""


class InvalidInputError(RerankError, ValueError):
    """An argument has the wrong type, shape or value."""


class InputTooLongError(InvalidInputError):
    """A pair would be truncated and the caller asked for no truncation."""


class QueueFullError(RerankError):
    """The inference queue holds as many pairs as it may: retry later (HTTP 429)."""


class ScoringError(RerankError):
    """The model gave a score that is no finite number: its weights are damaged or the engine failed."""


class ExportError(RerankError):
    """The checkpoint could not be fetched, read or converted."""


class MissingDependencyError(RerankError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, install: str) -> None:
        super().__init__(f"{package} is required for this feature but is not installed: {install}")
        self.package = package
        self.install = install


def describe(value: object) -> str:
    """Short description of a value for 'expected X, got Y' messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
