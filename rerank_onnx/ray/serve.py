"""The HTTP server on Ray Serve: replicas of the same ASGI app `rerank-onnx serve` runs, behind one endpoint.

    serve run rerank_onnx.ray.serve:build model_dir=/models/base-int8 replicas=2 cpus_per_replica=1

or from Python, `serve.run(deployment(ServerSettings("/models/base-int8"), replicas=2))`. Each replica loads
the artifact once, with one thread per CPU Ray reserved for it, and answers every route of `rerank-onnx serve`
(/v1/rerank, /rerank, /health, /metrics, /v1/models, ...) through Serve's proxy (port 8000 by default).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..backends.select import BACKENDS, PRECISIONS
from ..errors import InvalidInputError, MissingDependencyError
from ..reranker import Reranker
from ..server import create_app
from ..settings import ServerSettings
from ..validate import check_positive_int
from .batch import assigned_cpus

try:
    from ray import serve
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise MissingDependencyError("ray[serve] (the ray extra)", "pip install 'rerank-onnx[ray]'") from exc


@serve.deployment
@serve.ingress()
class RerankDeployment:
    """One replica: the artifact loaded in the constructor (so Serve counts it ready only once it can score)."""

    def __init__(self, settings: ServerSettings) -> None:
        threads = settings.threads or assigned_cpus()
        self.settings = replace(settings, threads=threads)
        self.reranker = Reranker(
            settings.model_dir, threads=threads, backend=settings.backend, precision=settings.precision
        )

    def __serve_build_asgi_app__(self) -> Any:
        """Serve's hook for an ingress app built after the constructor: the server's app over this replica's model."""
        return create_app(self.settings, reranker=self.reranker)


def deployment(settings: ServerSettings, *, replicas: int = 1, cpus_per_replica: int = 1) -> Any:
    """A Serve application of `replicas` copies of the rerank server.

    Args:
        settings: the server's settings (model_dir, api_key, limits, backend, ...), as `rerank-onnx serve` takes them.
        replicas: copies of the model, each in its own Ray actor.
        cpus_per_replica: CPUs Ray reserves for each replica; its threads (unless settings.threads says otherwise).

    Returns:
        serve.Application: pass it to `serve.run`.
    """
    check_positive_int("replicas", replicas)
    check_positive_int("cpus_per_replica", cpus_per_replica)
    return RerankDeployment.options(  # type: ignore[attr-defined]
        num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica}
    ).bind(settings)


def build(args: dict[str, str]) -> Any:
    """`serve run rerank_onnx.ray.serve:build model_dir=... [replicas=N] [cpus_per_replica=N] [backend=...]`.

    Args:
        args: the key=value pairs of `serve run`: model_dir (required), replicas, cpus_per_replica,
            backend, precision, api_key, model_name.

    Returns:
        serve.Application: what `serve run` deploys.

    Raises:
        InvalidInputError: a missing model_dir, an unknown key, or a value of the wrong kind.
    """
    known = {"model_dir", "replicas", "cpus_per_replica", "backend", "precision", "api_key", "model_name"}
    unknown = sorted(set(args) - known)
    if unknown or "model_dir" not in args:
        raise InvalidInputError(
            f"expected model_dir=PATH and optionally {', '.join(sorted(known - {'model_dir'}))}, got "
            f"{sorted(args)}; e.g. serve run rerank_onnx.ray.serve:build model_dir=/models/base-int8 replicas=2"
        )
    backend, precision = args.get("backend", "auto"), args.get("precision", "auto")
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise InvalidInputError(
            f"backend / precision: expected one of {list(BACKENDS)} / {list(PRECISIONS)}, got {backend!r} / {precision!r}"
        )
    settings = ServerSettings(
        args["model_dir"],
        model_name=args.get("model_name"),
        api_key=args.get("api_key"),
        backend=backend,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
    )
    return deployment(settings, replicas=_count(args, "replicas"), cpus_per_replica=_count(args, "cpus_per_replica"))


def _count(args: dict[str, str], key: str) -> int:
    raw = args.get(key, "1")
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInputError(f"{key}: expected a positive integer, got {raw!r}")
    return int(raw)
