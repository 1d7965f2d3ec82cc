"""Which backend and precision run an artifact on this CPU: the table `auto` reads, and why.

The table is data (AUTO_ROWS); each row names the section of docs/backends.md with the measurement behind it,
and a choice's reason names the row. A CPU class with no measurement keeps onnxruntime, the path every artifact
was built and tested for. `RERANK_ONNX_CPU_CLASS` plans for a less capable class than the
CPU's own (`planned_class`): its engine and numerics, and how a benchmark measures that path here.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidInputError, describe

Backend = Literal["auto", "onnxruntime", "openvino"]
Precision = Literal["auto", "fp32", "bf16", "int8"]
CpuClass = Literal["amx", "avx512-bf16", "avx512-vnni", "avx2", "other"]

BACKENDS: tuple[Backend, ...] = ("auto", "onnxruntime", "openvino")
PRECISIONS: tuple[Precision, ...] = ("auto", "fp32", "bf16", "int8")
# OpenVINO precisions whose results depend on a run's padded width (bf16 compute; int8 activations, whose
# roundings follow the floats they quantize): rows are padded to a width multiple (openvino.py)
PADDED_PRECISIONS: frozenset[str] = frozenset({"bf16", "int8"})
# Classes from least to most capable: each runs the paths of the classes before it.
CLASS_ORDER: tuple[CpuClass, ...] = ("other", "avx2", "avx512-vnni", "avx512-bf16", "amx")
BF16_CLASSES: frozenset[CpuClass] = frozenset({"avx512-bf16", "amx"})
# OpenVINO's dynamic int8 activations need VNNI dot products: on AVX2 it leaves them off
INT8_CLASSES: frozenset[CpuClass] = frozenset({"avx512-vnni", "avx512-bf16", "amx"})
# Plan for a less capable class than the CPU's own (its engine and numerics): a fleet of mixed CPUs that wants
# one path everywhere, or a benchmark measuring a class's path on a more capable CPU.
CPU_CLASS_ENV = "RERANK_ONNX_CPU_CLASS"


@dataclass(frozen=True)
class BackendChoice:
    """A resolved choice: the engine, its compute precision ("stored" for onnxruntime: the artifact's
    own numerics; "int8" for OpenVINO: int8 activations in the int8 weights' blocks, bf16 elsewhere on a
    CPU with bf16 instructions, fp32 elsewhere otherwise), the CPU class it was made for, and the reason, for
    logs, /v1/models and benchmarks."""

    backend: Literal["onnxruntime", "openvino"]
    precision: Literal["stored", "fp32", "bf16", "int8"]
    cpu_class: CpuClass
    reason: str

    @property
    def bf16(self) -> bool:
        """OpenVINO computes in bf16 what it does not compute in int8."""
        return self.precision == "bf16" or (self.precision == "int8" and self.cpu_class in BF16_CLASSES)

    def describe(self) -> str:
        precision = "" if self.precision == "stored" else f" {self.precision}"
        if self.precision == "int8" and not self.bf16:
            precision += " (fp32 elsewhere)"
        return f"{self.backend}{precision} on a {self.cpu_class} CPU ({self.reason})"


EVIDENCE_DOC = "docs/backends.md"


@dataclass(frozen=True)
class Row:
    """One row of `auto`'s table: an artifact of `quantization` and model `family` ("*": any) on a CPU of `cpu_class`
    ("*": any) runs on `backend` at `precision`; `evidence` is the section of docs/backends.md that holds the
    measurement behind the row."""

    quantization: str
    cpu_class: CpuClass | Literal["*"]
    family: str
    backend: Literal["onnxruntime", "openvino"]
    precision: Literal["stored", "fp32", "bf16", "int8"]
    evidence: str

    @property
    def reference(self) -> str:
        """Where the row's measurement is written up: docs/backends.md#<evidence>."""
        return f"{EVIDENCE_DOC}#{self.evidence}"


# What `auto` runs. The first row that matches wins: a family's own row comes before its class's row.
AUTO_ROWS: tuple[Row, ...] = (
    Row("none", "*", "*", "onnxruntime", "stored", "fp32-artifacts"),
    Row("int8-fast", "*", "*", "onnxruntime", "stored", "int8-fast-artifacts"),
    Row("int8-static", "amx", "*", "openvino", "bf16", "int8-static-artifacts"),
    Row("int8-static", "avx512-bf16", "*", "openvino", "bf16", "int8-static-artifacts"),
    Row("int8-static", "*", "*", "openvino", "fp32", "int8-static-artifacts"),
    Row("int8", "amx", "*", "openvino", "bf16", "amx"),
    Row("int8", "avx512-bf16", "cross-encoder", "openvino", "bf16", "avx512-bf16-cross-encoders"),
    Row("int8", "avx512-bf16", "*", "openvino", "int8", "avx512-bf16"),
    Row("int8", "avx512-vnni", "*", "openvino", "int8", "avx512-vnni"),
    Row("int8", "avx2", "*", "openvino", "fp32", "avx2"),
    Row("int8", "other", "*", "onnxruntime", "stored", "other-cpus"),
)


def auto_row(quantization: str, cpu_class: CpuClass, family: str) -> Row:
    """The row `auto` takes for an artifact of `quantization` and model `family` on a CPU of class `cpu_class`.

    Raises:
        InvalidInputError: a quantization the table does not know.
    """
    for row in AUTO_ROWS:
        if row.quantization == quantization and row.cpu_class in (cpu_class, "*") and row.family in (family, "*"):
            return row
    quantizations = sorted({row.quantization for row in AUTO_ROWS})
    raise InvalidInputError(f"quantization: expected one of {', '.join(quantizations)}, got {describe(quantization)}")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, read once (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_class(flags: frozenset[str]) -> CpuClass:
    """The class of a CPU by its flags, most capable first."""
    if {"amx_bf16", "amx_tile"} <= flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512_vnni" in flags:
        return "avx512-vnni"
    if "avx2" in flags:
        return "avx2"
    return "other"


def planned_class(flags: frozenset[str]) -> tuple[CpuClass, CpuClass | None]:
    """The class `auto` plans for on a CPU with `flags`: its own, or the less capable one that CPU_CLASS_ENV names.

    Returns:
        The class planned for, and the CPU's own class when that differs (None otherwise).

    Raises:
        InvalidInputError: CPU_CLASS_ENV names no class, or one this CPU cannot run.
    """
    detected = cpu_class(flags)
    asked = os.environ.get(CPU_CLASS_ENV, "").strip()
    if not asked or asked == detected:
        return detected, None
    runnable = CLASS_ORDER[: CLASS_ORDER.index(detected) + 1]
    if asked not in runnable:
        raise InvalidInputError(
            f"{CPU_CLASS_ENV}: expected a class this {detected} CPU can run ({', '.join(runnable)}), got "
            f"{describe(asked)}; unset it to plan for the CPU's own class"
        )
    return asked, detected  # type: ignore[return-value]


def choose(
    backend: str,
    precision: str,
    *,
    quantization: str,
    family: str,
    flags: frozenset[str] | None = None,
    openvino_installed: bool,
) -> BackendChoice:
    """Resolve the caller's backend and precision for an artifact of quantization `quantization`.

    Args:
        backend: "auto", "onnxruntime" or "openvino".
        precision: "auto", "fp32", "bf16" or "int8" (OpenVINO's compute precision; "int8": int8 activations in
            the int8 artifact's weight blocks, bf16 elsewhere, fp32 on a CPU without bf16; onnxruntime runs the
            stored numerics).
        quantization: the artifact's quantization ("int8", "int8-fast", "int8-static" or "none").
        family: the artifact's model family (`ArtifactConfig.family`); a family measured to rank less like fp32
            on its CPU class's row takes its own (AUTO_ROWS).
        flags: the CPU's flags (default: this machine's).
        openvino_installed: whether the openvino package imports.

    Returns:
        The resolved choice with its reason.

    Raises:
        InvalidInputError: an unknown name, a combination that cannot run, or a CPU_CLASS_ENV this CPU cannot run.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend: expected one of {', '.join(BACKENDS)}, got {describe(backend)}")
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {describe(precision)}")
    cpu_class, detected = planned_class(cpu_flags() if flags is None else flags)
    choice = _choose(
        backend,
        precision,
        quantization=quantization,
        family=family,
        cpu_class=cpu_class,
        openvino_installed=openvino_installed,
    )
    if detected is None:
        return choice
    reason = f"{choice.reason}; planned for {cpu_class} on a {detected} CPU, as {CPU_CLASS_ENV} asks"
    return BackendChoice(choice.backend, choice.precision, cpu_class, reason)


def _choose(
    backend: str, precision: str, *, quantization: str, family: str, cpu_class: CpuClass, openvino_installed: bool
) -> BackendChoice:
    if backend == "onnxruntime":
        if precision != "auto":
            raise InvalidInputError(
                f"precision={precision!r} needs backend='openvino': onnxruntime runs the artifact's stored "
                f"numerics ({quantization}); pass precision='auto' or backend='openvino'"
            )
        return BackendChoice("onnxruntime", "stored", cpu_class, "asked for")
    if backend == "openvino":
        return _choose_openvino(
            precision,
            quantization=quantization,
            family=family,
            cpu_class=cpu_class,
            openvino_installed=openvino_installed,
        )
    # auto
    if precision != "auto":
        raise InvalidInputError(
            f"precision={precision!r} needs backend='openvino' (auto picks the precision itself); "
            "pass backend='openvino' too, or leave precision='auto'"
        )
    row = auto_row(quantization, cpu_class, family)
    if quantization == "int8-static" and not openvino_installed:
        raise InvalidInputError(
            "an int8-static artifact runs on OpenVINO: pip install 'rerank-onnx[openvino]'; onnxruntime's kernels "
            "for its scales make a score depend on its batch (docs/backends.md#int8-static-artifacts), so auto does "
            "not fall back to them: pass backend='onnxruntime' to accept that, or export with --quantization int8"
        )
    if row.backend == "openvino" and not openvino_installed:
        return BackendChoice(
            "onnxruntime",
            "stored",
            cpu_class,
            "OpenVINO is faster on this CPU but not installed: pip install 'rerank-onnx[openvino]'",
        )
    return BackendChoice(row.backend, row.precision, cpu_class, f"{row.evidence} row, {row.reference}")


def _choose_openvino(
    precision: str, *, quantization: str, family: str, cpu_class: CpuClass, openvino_installed: bool
) -> BackendChoice:
    """backend="openvino": the precision asked for where this CPU and artifact run it, else what they run."""
    bf16_capable = cpu_class in BF16_CLASSES
    if not openvino_installed:
        raise InvalidInputError(
            "backend='openvino' needs the openvino package: pip install 'rerank-onnx[openvino]', or pass "
            "backend='auto' to fall back to onnxruntime"
        )
    if quantization == "int8-fast":
        raise InvalidInputError(
            "backend='openvino' cannot run an int8-fast artifact (its DynamicQuantizeMatMul nodes are "
            "onnxruntime's); use backend='onnxruntime', or export with --quantization int8 or none"
        )
    if precision == "int8" and quantization != "int8":
        raise InvalidInputError(
            f"precision='int8' quantizes activations in the blocks of the int8 artifact's weights; this artifact "
            f"is {quantization!r}: pass precision='bf16' or 'fp32', or export with --quantization int8"
        )
    if precision == "int8" and cpu_class not in INT8_CLASSES:
        return BackendChoice(
            "openvino",
            "fp32",
            cpu_class,
            "int8 asked for, but this CPU has no VNNI instructions, where OpenVINO leaves its int8 activations off "
            "(docs/backends.md#avx2); run as fp32, without the row padding int8 needs",
        )
    if precision == "bf16" and not bf16_capable:
        # OpenVINO computes fp32 there whatever the hint; only bf16's row padding would remain
        return BackendChoice(
            "openvino",
            "fp32",
            cpu_class,
            "bf16 asked for, but this CPU has no bf16 instructions, where OpenVINO computes in fp32 anyway "
            "(docs/backends.md#avx2); run as fp32, without the bf16 row padding, which only costs time there",
        )
    if precision != "auto":
        return BackendChoice("openvino", precision, cpu_class, "asked for")  # type: ignore[arg-type]
    row = auto_row("int8", cpu_class, family)
    best = row.precision if quantization == "int8" and row.backend == "openvino" else "bf16" if bf16_capable else "fp32"
    return BackendChoice("openvino", best, cpu_class, "the CPU's best faithful precision")  # type: ignore[arg-type]


def machine_summary() -> dict[str, object]:
    """The CPU as benchmarks and /v1/models report it: model name, class, and the flags that matter here."""
    flags = cpu_flags()
    interesting = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    planned, detected = planned_class(flags)
    summary: dict[str, object] = {"cpu": _cpu_model(), "cpu_class": detected or planned, "cpu_flags": interesting}
    if detected is not None:
        summary["planned_class"] = planned  # CPU_CLASS_ENV
    return {**summary, "machine": platform.machine()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
