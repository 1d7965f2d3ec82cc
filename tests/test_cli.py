"""The command line end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rerank_onnx import Reranker

CLI = [sys.executable, "-m", "rerank_onnx.cli"]


def _run(args: list[str], *, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, input=stdin, capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.mark.slow
@pytest.mark.subprocess
def test_export_then_rank_from_a_file(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "artifact"
    done = _run(["export", str(tiny_checkpoint), str(out), "--quantization", "none"])
    assert done.returncode == 0, done.stderr
    assert "fp32_graph_vs_reference" in done.stdout and f"wrote {out}" in done.stdout
    assert "scoring the built-in pairs with the fp32 reference: layer 2/2" in done.stderr  # progress is shown
    for alarm in ("incorrect regex pattern", "torch_dtype", "Traceback", "TracerWarning"):
        assert alarm not in done.stderr, done.stderr  # warnings about paths the export does not take
    docs = tmp_path / "docs.txt"
    docs.write_text("a cat is a feline\nbananas are yellow\n\nle chat est un félin\n", encoding="utf-8")
    ranked = _run(["rank", str(out), "--query", "what is a cat?", str(docs), "--json", "--top-k", "3"])
    assert ranked.returncode == 0, ranked.stderr
    assert "skipped 1 blank line(s)" in ranked.stderr
    results = json.loads(ranked.stdout)
    lines = docs.read_text(encoding="utf-8").splitlines()
    kept = [i for i, line in enumerate(lines) if line.strip()]
    expected = Reranker(out).rank("what is a cat?", [lines[i] for i in kept], top_k=3)
    assert [r["index"] for r in results] == [kept[r.index] for r in expected]  # indices are line numbers
    assert 2 not in [r["index"] for r in results]
    every = _run(["rank", str(out), "--query", "what is a cat?", str(docs), "--json", "--keep-blank-lines"])
    assert sorted(r["index"] for r in json.loads(every.stdout)) == [0, 1, 2, 3]
    np.testing.assert_allclose([r["score"] for r in results], [r.score for r in expected], atol=1e-6)
    assert results[0]["document"] == expected[0].document


@pytest.mark.subprocess
def test_rank_reads_stdin_and_prints_a_table(fp32_artifact: Path) -> None:
    ranked = _run(["rank", str(fp32_artifact), "--query", "q", "-", "--normalize"], stdin="one\ntwo\nthree\n")
    assert ranked.returncode == 0, ranked.stderr
    rows = [line.split("\t") for line in ranked.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert sorted(r[3] for r in rows) == ["one", "three", "two"]
    assert all(0.0 < float(r[1]) < 1.0 for r in rows)


@pytest.mark.subprocess
def test_cli_errors_are_one_line_and_exit_nonzero(tmp_path: Path) -> None:
    missing = _run(["rank", str(tmp_path / "nope"), "--query", "q", "-"], stdin="a\n")
    assert missing.returncode == 2 and missing.stderr.startswith("error: artifact folder")
    offline = _run(
        ["export", "mixedbread-ai/mxbai-rerank-large-v2", str(tmp_path / "out")],
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert offline.returncode == 2
    assert "could not fetch 'mixedbread-ai/mxbai-rerank-large-v2'" in offline.stderr
    assert "pass the local folder instead" in offline.stderr
    assert "Traceback" not in offline.stderr


@pytest.mark.subprocess
def test_bad_environment_only_matters_to_serve(tmp_path: Path, fp32_artifact: Path) -> None:
    # Kubernetes sets RERANK_ONNX_PORT=tcp://IP:PORT for a Service named rerank-onnx
    env = {"RERANK_ONNX_PORT": "tcp://10.0.0.1:8080", "RERANK_ONNX_THREADS": "abc", "RERANK_ONNX_COALESCE_MS": "x"}
    assert _run(["export", "--help"], env=env).returncode == 0
    ranked = _run(["rank", str(fp32_artifact), "--query", "q", "-"], stdin="a\n", env=env)
    assert ranked.returncode == 0, ranked.stderr
    served = _run(["serve", str(fp32_artifact)], env=env)
    assert served.returncode == 2 and "Traceback" not in served.stderr
    assert served.stderr.strip().splitlines() == [
        "error: RERANK_ONNX_PORT: expected a non-negative integer, got 'tcp://10.0.0.1:8080'; fix or unset it, or pass --port"
    ]


@pytest.mark.subprocess
def test_invalid_utf8_is_one_error_line(fp32_artifact: Path) -> None:
    def run(args: list[str], stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run(CLI + args, input=stdin, capture_output=True)

    for args, stdin, message in [
        (["rank", str(fp32_artifact), "--query", "q", "-"], b"a\xff\n", b"error: stdin is not UTF-8 text"),
        (
            ["rank", str(fp32_artifact), "--query", b"\xff".decode("utf-8", "surrogateescape"), "-"],
            b"a\n",
            b"error: --query is not valid UTF-8 text",
        ),
    ]:
        done = run(args, stdin)
        assert done.returncode == 2 and done.stderr.startswith(message) and b"Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.openvino
@pytest.mark.subprocess
def test_info_says_what_auto_runs_on_the_planned_class() -> None:
    """`info` reads the CPU as `auto` does: planned for AVX2, the int8 artifact runs OpenVINO's fp32 compute
    of its int8 weights (the avx2 row), an int8-fast artifact onnxruntime; the text form names the class."""
    done = _run(["info", "--json"], env={"RERANK_ONNX_CPU_CLASS": "avx2"})
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["planned_class"] == "avx2" and info["openvino_installed"] is True
    assert info["auto"]["mxbai-rerank-v2, int8"] == {"backend": "openvino", "precision": "fp32"}
    assert info["auto"]["qwen3-reranker, int8-fast"] == {"backend": "onnxruntime", "precision": "stored"}
    text = _run(["info"], env={"RERANK_ONNX_CPU_CLASS": "avx2"})
    assert text.returncode == 0 and "cpu class: avx2, as RERANK_ONNX_CPU_CLASS asks" in text.stdout
    assert "  mxbai-rerank-v2, int8: openvino fp32" in text.stdout
    bad = _run(["info"], env={"RERANK_ONNX_CPU_CLASS": "pentium"})
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
