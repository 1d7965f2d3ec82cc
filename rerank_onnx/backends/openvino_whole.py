"""Rows that run whole, on the stateful model (openvino_graph.stateful_attention), in a child process.

The stateful model's attention keeps a long prompt's memory bounded, but OpenVINO 2026.4.1 does not give a
stateful compiled model's working memory back when the model is dropped: ~100 KB per token of its longest
run stays with the process, for every model built and dropped (docs/memory.md#whole-rows). So that model lives in a child process for the length of one scoring call, and what it
grew goes back to the OS when the child exits. The child is a fresh interpreter running this module, not a
fork of a process whose engine threads are running, nor multiprocessing's spawn, which would import the
caller's `__main__` again.

Protocol, over the child's stdin and stdout: per request the parent writes one frame holding an .npz of
`input_ids` and `lengths`; the child answers with one frame holding an .npz of the `scores` and its
`peak_rss` so far (VmHWM, bytes). A frame is an 8-byte little-endian length and that many bytes. The child
exits at the end of its stdin; on an error it writes one line to stderr and exits 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from ..artifact import INPUT_IDS, LENGTHS, SCORES
from ..errors import ModelLoadError

if TYPE_CHECKING:
    from .openvino import Compilation

_LENGTH = 8


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(len(payload).to_bytes(_LENGTH, "little") + payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """One frame's bytes, or None at the end of the stream."""
    head = stream.read(_LENGTH)
    if len(head) < _LENGTH:
        return None
    size = int.from_bytes(head, "little")
    payload = stream.read(size)
    return payload if len(payload) == size else None


class WholeRowProcess:
    """The child process that scores rows whole on the stateful model, started on first use.

    Args:
        graph: the artifact's model.onnx.
        compilation: what the child compiles the stateful model for (the parent's engine's own).
        cache_dir: OpenVINO's compile cache folder (None: compile from the ONNX graph each time).
    """

    def __init__(self, graph: Path, compilation: Compilation, *, cache_dir: Path | None) -> None:
        self._command = [
            sys.executable,
            "-m",
            __name__,
            str(graph),
            json.dumps(dataclasses.asdict(compilation)),
            str(cache_dir) if cache_dir is not None else "",
        ]
        self._child: subprocess.Popen[bytes] | None = None
        self._errors: IO[bytes] | None = None
        self.runs = 0  # requests answered
        self.peak_rss = 0  # the largest resident memory a child reported, bytes

    def run(self, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Scores of these rows, each run whole from its first token (float32, one per row).

        Raises:
            ModelLoadError: the child could not start, compile or run (its last error line says why).
        """
        child = self._start()
        assert child.stdin is not None and child.stdout is not None  # both are pipes (_start)
        request = io.BytesIO()
        np.savez(request, input_ids=input_ids, lengths=lengths)
        try:
            _write_frame(child.stdin, request.getvalue())
            answer = _read_frame(child.stdout)
        except BrokenPipeError:
            answer = None
        if answer is None:
            raise ModelLoadError(
                f"openvino's long-prompt process failed: {self._last_error()}. To run long prompts in this "
                "process instead, in slices, pass slice_tokens=1024"
            )
        self.runs += 1
        with np.load(io.BytesIO(answer)) as reply:
            self.peak_rss = max(self.peak_rss, int(reply["peak_rss"]))
            scores: np.ndarray = reply["scores"]
        return scores

    def close(self) -> None:
        """End the child (it exits at the end of its input), and with it the memory it grew."""
        child, self._child = self._child, None
        if child is not None:
            assert child.stdin is not None
            with contextlib.suppress(OSError):  # a child that died leaves a broken pipe
                child.stdin.close()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._errors is not None:
            self._errors.close()
            self._errors = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self.close()
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the child's life; close() closes it)
        try:
            self._child = subprocess.Popen(
                self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors
            )
        except OSError as exc:
            raise ModelLoadError(
                f"openvino's long-prompt process could not start ({self._command[0]}): {exc}. To run long prompts "
                "in this process instead, in slices, pass slice_tokens=1024"
            ) from exc
        return self._child

    def _last_error(self) -> str:
        """The failed child's last error line; the child is reaped and forgotten (the next run starts one)."""
        errors, child = self._errors, self._child
        self._errors = None
        self.close()
        lines: list[str] = []
        if errors is not None:
            errors.seek(0)
            lines = [line for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
            errors.close()
        if lines:
            return lines[-1]
        code = child.returncode if child is not None else None
        if code is not None and code < 0:  # e.g. the kernel's out-of-memory killer: signal 9
            return f"it was killed by signal {-code}"
        return f"it exited with code {code} and no error line"


def _peak_rss() -> int:
    """This process's peak resident memory (VmHWM), bytes; 0 where /proc is not there."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _serve(graph: Path, compilation: Compilation, cache_dir: Path | None) -> None:
    """The child: compile the stateful model, then answer frames until the end of stdin."""
    import openvino as ov

    from .openvino_graph import BEAM_INDEX, STATEFUL, compile_source

    core = ov.Core()
    config = compilation.properties()
    # its keys and values in the compute precision (the plugin's default is u8)
    config["KV_CACHE_PRECISION"] = "bf16" if compilation.computes_bf16 else "f32"
    source, blobs = compile_source(core, graph, cache_dir, STATEFUL, config)
    if blobs is not None:
        config["CACHE_DIR"] = str(blobs)
    request = core.compile_model(source, "CPU", config).create_infer_request()
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    while (frame := _read_frame(requests)) is not None:
        feeds = np.load(io.BytesIO(frame))
        input_ids, lengths = feeds[INPUT_IDS], feeds[LENGTHS]
        request.reset_state()
        beam = np.arange(input_ids.shape[0], dtype=np.int32)
        request.infer({INPUT_IDS: input_ids, LENGTHS: lengths, BEAM_INDEX: beam})
        answer = io.BytesIO()
        scores = np.array(request.get_tensor(SCORES).data, dtype=np.float32, copy=True)
        np.savez(answer, scores=scores, peak_rss=np.int64(_peak_rss()))
        _write_frame(answers, answer.getvalue())


def main(argv: list[str]) -> int:
    """The child's entry point: `python -m rerank_onnx.backends.openvino_whole GRAPH COMPILATION CACHE`
    (COMPILATION: the openvino.Compilation's fields as a JSON object; CACHE empty: no compile cache), as
    WholeRowProcess starts it. Returns its exit code."""
    try:
        if len(argv) != 3:
            raise ValueError(f"expected the arguments GRAPH COMPILATION CACHE, got {argv!r}")
        from .openvino import Compilation

        graph, fields, cache = argv
        _serve(Path(graph), Compilation(**json.loads(fields)), Path(cache) if cache else None)
    except Exception as exc:  # one line for the parent's error message; the parent raises ModelLoadError
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"{type(exc).__name__}: {message[:400]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
