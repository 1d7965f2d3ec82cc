"""llama.cpp prompt processing on the same checkpoint: built from the llama-cpp-python sdist on PyPI
(which vendors llama.cpp, its GGUF converter, llama-bench and llama-quantize). Nothing is committed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path


def _cpu_flags() -> set[str]:
    from rerank_onnx.backends.select import cpu_flags

    return set(cpu_flags())


def build(work: Path, targets: tuple[str, ...] = ("llama-bench", "llama-quantize")) -> Path:
    """Return the llama.cpp source folder with build/bin/<target> for every target."""
    src_root = work / "llama-cpp-python-src"
    existing = list(src_root.glob("*/vendor/llama.cpp"))
    if existing and all((existing[0] / "build/bin" / target).exists() for target in targets):
        return existing[0]
    if existing:
        return _compile(existing[0], targets)
    src_root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "llama-cpp-python",
            "--no-binary",
            ":all:",
            "--no-deps",
            "-d",
            str(src_root),
        ],
        check=True,
    )
    (archive,) = src_root.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(src_root, filter="data")
    (llama,) = src_root.glob("*/vendor/llama.cpp")
    return _compile(llama, targets)


def _compile(llama: Path, targets: tuple[str, ...]) -> Path:
    flags = _cpu_flags()
    # A native build enables ggml's AMX path, which died with SIGILL on these machines: pick ISA by hand.
    options = [
        "-DGGML_NATIVE=OFF",
        "-DGGML_AMX_TILE=OFF",
        "-DGGML_AMX_INT8=OFF",
        "-DGGML_AMX_BF16=OFF",
        "-DLLAMA_CURL=OFF",
        "-DGGML_OPENMP=ON",
        "-DLLAMA_USE_PREBUILT_UI=OFF",  # the server's web UI would be fetched from the Hub
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DGGML_AVX={'ON' if 'avx' in flags else 'OFF'}",
        f"-DGGML_AVX2={'ON' if 'avx2' in flags else 'OFF'}",
        f"-DGGML_FMA={'ON' if 'fma' in flags else 'OFF'}",
        f"-DGGML_F16C={'ON' if 'f16c' in flags else 'OFF'}",
        f"-DGGML_AVX512={'ON' if 'avx512f' in flags else 'OFF'}",
        f"-DGGML_AVX512_VNNI={'ON' if 'avx512_vnni' in flags else 'OFF'}",
        f"-DGGML_AVX512_BF16={'ON' if 'avx512_bf16' in flags else 'OFF'}",
    ]
    subprocess.run(["cmake", "-S", str(llama), "-B", str(llama / "build"), *options], check=True)
    subprocess.run(
        [
            "cmake",
            "--build",
            str(llama / "build"),
            "-j",
            str(os.cpu_count() or 2),
            "--target",
            *targets,
        ],
        check=True,
    )
    return llama


def convert(llama: Path, checkpoint: Path, work: Path, quants: tuple[str, ...] = ("Q8_0", "Q4_0")) -> dict[str, Path]:
    # The converter imports sentencepiece before falling back to the GPT-2 style BPE that Qwen2 uses.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sentencepiece"], check=True)
    f16 = work / f"{checkpoint.name}-f16.gguf"
    env = {**os.environ, "PYTHONPATH": str(llama / "gguf-py")}
    if not f16.exists():
        subprocess.run(
            [
                sys.executable,
                str(llama / "convert_hf_to_gguf.py"),
                str(checkpoint),
                "--outfile",
                str(f16),
                "--outtype",
                "f16",
            ],
            check=True,
            env=env,
        )
    out = {}
    for q in quants:
        path = work / f"{checkpoint.name}-{q}.gguf"
        if not path.exists():
            subprocess.run([str(llama / "build/bin/llama-quantize"), str(f16), str(path), q], check=True)
        out[q] = path
    return out


def measure(checkpoint: Path, work: Path, *, threads: int, reps: int) -> dict[str, dict]:
    results: dict[str, dict] = {}
    try:
        llama = build(work)
        models = convert(llama, checkpoint, work)
    except (subprocess.CalledProcessError, OSError, ValueError) as exc:
        return {"llama.cpp": {"stack": "llama.cpp", "error": f"build or conversion failed: {exc}"}}
    for q, path in models.items():
        name = f"llama.cpp-{q}"
        run = subprocess.run(
            [
                str(llama / "build/bin/llama-bench"),
                "-m",
                str(path),
                "-p",
                "256",
                "-n",
                "0",
                "-t",
                str(threads),
                "-r",
                str(max(reps, 2)),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            results[name] = {"stack": name, "error": f"llama-bench exit {run.returncode}: {run.stderr.strip()[-200:]}"}
            continue
        rows = json.loads(run.stdout)
        tps = rows[0]["avg_ts"]
        # pp256 is one 256-token sequence; reported in the b16x256 column as the closest workload
        results[name] = {
            "stack": name,
            "b16x256": {"tokens": 256, "tokens_per_s": tps, "note": "pp256, one sequence"},
            "artifact_gb": path.stat().st_size / 1e9,
        }
    return results
