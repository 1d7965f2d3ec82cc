"""Inference backends behind small protocols (protocols.py), so batching and ordering can be tested with a fake.

An engine (onnxruntime.py, openvino.py) compiles the artifact's score graph and runs it on named numpy feeds;
a session (sessions.py) turns it into what the scorer drives. This module opens them: the backend `select.py`
chooses for this CPU, its engine, and the session for the graph's inputs. Adding a backend is one engine module
plus a row in `select.py`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from ..artifact import ATTENTION_MASK, ArtifactConfig
from .protocols import Engine, EngineLimits, Prefix, ScoreBatch, ScoreSession
from .select import BackendChoice
from .sessions import EncoderGraphSession, GraphSession

log = logging.getLogger("rerank_onnx")


def default_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def open_session(
    graph: Path,
    choice: BackendChoice,
    *,
    threads: int | None = None,
    cache_dir: Path | None = None,
    int8_block: int | None = None,
    static_int8: bool = False,
) -> GraphSession:
    """The session for an artifact's graph on the chosen backend: a cross-encoder's when the graph takes an
    attention mask, a decoder's otherwise (sharing prefixes when the graph takes past keys and values).

    Args:
        graph: the artifact's model.onnx.
        choice: backend and precision, from `select.choose`.
        threads: intra-op threads (default: the CPUs this process may use).
        cache_dir: where OpenVINO keeps compiled models (None: no cache); onnxruntime ignores it.
        int8_block: the int8 artifact's weight block, OpenVINO's int8 activation group under precision "int8".
        static_int8: the graph's activations are quantized with constant scales (an int8-static artifact).

    Returns:
        An `EncoderGraphSession` (cross-encoders) or a `GraphSession`.
    """
    threads = threads or default_threads()
    engine: Engine
    if choice.backend == "openvino":
        from .openvino import Compilation, OpenVinoEngine

        compilation = Compilation(
            choice.precision, threads, int8_block=int8_block, bf16=choice.bf16, static_int8=static_int8
        )
        engine = OpenVinoEngine(graph, compilation, cache_dir=cache_dir)
    else:
        from .onnxruntime import OnnxRuntimeEngine

        engine = OnnxRuntimeEngine(graph, threads=threads)
    session_class = EncoderGraphSession if ATTENTION_MASK in engine.input_shapes() else GraphSession
    return session_class(engine, graph)


def open_backend(
    config: ArtifactConfig,
    *,
    backend: str,
    precision: str,
    threads: int | None,
    cache_dir: str | Path | Literal[False] | None,
) -> tuple[GraphSession, BackendChoice]:
    """Choose the backend for an artifact on this CPU (logged once), and open its session.

    Args:
        config: the loaded artifact.
        backend: "auto", "onnxruntime" or "openvino".
        precision: "auto", "fp32", "bf16" or "int8".
        threads: intra-op threads (default: the CPUs this process may use).
        cache_dir: OpenVINO's compiled-model cache root (None: the default place; False: no cache).

    Returns:
        The session and the choice, with the reason for it.
    """
    from .cache import compile_cache_dir
    from .openvino import available
    from .select import choose

    choice = choose(
        backend, precision, quantization=config.quantization, family=config.family, openvino_installed=available()
    )
    # a missing extra on a CPU where it would pay is worth a warning; the ordinary choice is info
    (log.warning if "not installed" in choice.reason else log.info)("backend: %s", choice.describe())
    cache = None
    if cache_dir is not False and choice.backend == "openvino":
        cache = compile_cache_dir(config, cache_dir)
    session = open_session(
        config.graph_path,
        choice,
        threads=threads,
        cache_dir=cache,
        int8_block=config.quantization_block,
        static_int8=config.quantization == "int8-static",
    )
    return session, choice


__all__ = [
    "BackendChoice",
    "EncoderGraphSession",
    "Engine",
    "EngineLimits",
    "GraphSession",
    "Prefix",
    "ScoreBatch",
    "ScoreSession",
    "default_threads",
    "open_backend",
    "open_session",
]
