"""The server's settings, with the range of every number in them: one home for their defaults, read by the
server, the serverless handler and `rerank-onnx serve` (whose flags and environment variables default to these)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .backends.select import Backend, Precision
from .errors import InvalidInputError

DEFAULT_HOST = "127.0.0.1"  # loopback: a server is exposed only when asked to be
DEFAULT_PORT = 8080


def default_of(name: str) -> object:
    """The default of a ServerSettings or RequestLimits field, or of the host and port: what `serve`'s flags and
    environment variables fall back to."""
    from dataclasses import MISSING, fields

    if name in ("host", "port"):
        return {"host": DEFAULT_HOST, "port": DEFAULT_PORT}[name]
    for settings in (ServerSettings, RequestLimits):
        for f in fields(settings):
            if f.name == name and f.default is not MISSING:
                return f.default
    raise KeyError(f"no default for the setting {name!r}")


# The range of every numeric server setting (ServerSettings, RequestLimits, `serve`'s flags and environment): a value
# outside it is refused at start, instead of a server that listens elsewhere, answers 503 forever or hangs.
SETTING_RANGES: dict[str, tuple[int, int]] = {
    "port": (1, 65535),
    "threads": (1, 1024),
    "max_documents": (1, 1_000_000),
    "max_document_chars": (1, 1 << 30),
    "max_request_tokens": (1, 1 << 40),
    "max_body_bytes": (1, 1 << 30),
    "max_queue_pairs": (1, 1 << 30),
    "coalesce_ms": (0, 1000),  # a longer wait only delays every request
}


def check_setting(name: str, value: object, *, shown_as: str | None = None) -> None:
    """`value` lies in SETTING_RANGES[name] (coalesce_ms: any number; the others: whole numbers).

    Raises:
        InvalidInputError: naming the setting as `shown_as` (a flag or variable), else by its name.
    """
    from .errors import InvalidInputError, describe

    low, high = SETTING_RANGES[name]
    whole = name != "coalesce_ms"
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:  # NaN fails too
        wanted = "a whole number" if whole else "a number"
        raise InvalidInputError(
            f"{shown_as or name}: expected {wanted} from {low} to {high}, got {describe(value)}; fix the setting"
        )


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for: documents, characters per document, prompt tokens."""

    max_documents: int = 1000
    max_document_chars: int = 1_000_000
    max_request_tokens: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_document_chars", "max_request_tokens"):
            check_setting(name, getattr(self, name))


@dataclass(frozen=True)
class ServerSettings:
    model_dir: str
    model_name: str | None = None  # reported in responses and /v1/models (default: the source model)
    api_key: str | None = None
    threads: int | None = None
    backend: Backend = "auto"
    precision: Precision = "auto"
    limits: RequestLimits = field(default_factory=RequestLimits)
    max_body_bytes: int = 2 * 1024 * 1024
    # Off by default: where it was measured it gained neither throughput nor p95 (docs/serving.md)
    coalesce_ms: float = 0.0
    max_queue_pairs: int = 4096

    def __post_init__(self) -> None:
        if self.threads is not None:
            check_setting("threads", self.threads)
        for name in ("max_body_bytes", "coalesce_ms", "max_queue_pairs"):
            check_setting(name, getattr(self, name))
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInputError(
                "api_key: expected a non-empty key, got an empty one; an empty key would let every request in: "
                "pass a real key, or none to serve without authentication"
            )
