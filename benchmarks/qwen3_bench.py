"""Qwen3-Reranker: our default path against the model card's transformers code, on one checkpoint.

    python -m rerank_onnx_export.random_checkpoint ckpt-q3 --size qwen3-0.6b --weight-std 0.035
    rerank-onnx export ckpt-q3 q3-int8
    python benchmarks/qwen3_bench.py ckpt-q3 q3-int8

Workload b16x256: 16 (query, document) pairs (4 queries x 4 documents) whose prompts are ~256 tokens,
scored `--reps` times; tokens/s counts real prompt tokens. Stacks, each in its own process:
- reference-fp32 / -bf16: the model card's code (`format_instruction` -> `process_inputs` ->
  `compute_logits`, PyTorch fp32 as on CPU, and the same with the model cast to bf16), batches of 8;
- openvino-genai / -int8: OpenVINO GenAI's `TextRerankPipeline` on `optimum-cli export openvino --task
  text-generation-with-past` of the checkpoint (at optimum-intel's default weight format, and with
  `--weight-format int8`), one call per query, the prompt pieces formatted as GenAI's own Qwen3 tests do;
  these need transformers 5 / optimum-intel / openvino-genai: `--peer-python` names that interpreter;
- llama.cpp-Q8_0 / -Q4_0: `llama-server --reranking` (built from the llama-cpp-python sdist, see
  llama_cpp_bench.py) on the GGUF its converter writes for a Qwen3 reranker (yes/no head, rank pooling,
  the card's template), one `/v1/rerank` request per query;
- ours-default: our artifact with backend auto; ours-onnxruntime: the same on onnxruntime.
Agreement: Spearman of each stack's P(yes) against the reference fp32 on the same pairs, and the largest
absolute difference of P(yes).
Writes results/qwen3-<checkpoint>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import RESULTS, environment, median, publish, run_worker, text_of_tokens

STACKS = [
    "reference-fp32",
    "reference-bf16",
    "openvino-genai",
    "openvino-genai-int8",
    "llama.cpp-Q8_0",
    "llama.cpp-Q4_0",
    "ours-default",
    "ours-onnxruntime",
]
PEER_STACKS = ("openvino-genai", "openvino-genai-int8")  # run with --peer-python
QUERIES = [f"what causes rivers to flood in spring, case {i}?" for i in range(4)]
WORK = Path(__file__).resolve().parent / "work"


def pairs() -> tuple[list[str], list[str]]:
    documents = [text_of_tokens(200, seed=i) for i in range(16)]
    return [QUERIES[i % 4] for i in range(16)], documents


def by_query() -> list[tuple[str, list[int]]]:
    """The pairs as rerank calls: each query with the indices of its documents."""
    queries, _ = pairs()
    return [(query, [i for i, q in enumerate(queries) if q == query]) for query in QUERIES]


def genai_pieces() -> tuple[list[str], list[str]]:
    """Query and document strings as GenAI's Qwen3 tests format them: the card's prompt, cut in two."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_qwen3 import REFERENCE_PREFIX, REFERENCE_SUFFIX, format_instruction

    _, documents = pairs()
    marker = "\x00"
    formatted = [format_instruction(None, q, marker) for q in QUERIES]
    heads = [REFERENCE_PREFIX + f.split(marker)[0] for f in formatted]
    tails = [f.split(marker)[1] + REFERENCE_SUFFIX for f in formatted]
    assert all(t == tails[0] for t in tails)
    return heads, [d + tails[0] for d in documents]


def _reference(checkpoint: str, bf16: bool, reps: int, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_qwen3 import Qwen3Oracle, format_instruction  # the model card's code, as the tests run it

    torch.set_num_threads(threads)
    oracle = Qwen3Oracle(Path(checkpoint))
    if bf16:
        oracle.model = oracle.model.to(torch.bfloat16)
    queries, documents = pairs()
    inputs = oracle.process_inputs([format_instruction(None, q, d) for q, d in zip(queries, documents)])
    tokens = int(inputs["attention_mask"].sum())
    oracle.scores(queries[:2], documents[:2])  # warm-up
    times, scores = [], []
    for _ in range(reps):
        start = time.perf_counter()
        scores = [s for i in range(0, 16, 8) for s in oracle.scores(queries[i : i + 8], documents[i : i + 8])]
        times.append(time.perf_counter() - start)
    return {"tokens": tokens, "seconds": median(times), "scores": scores}


def _ours(artifact: str, backend: str, reps: int, threads: int) -> dict:
    from rerank_onnx import Reranker

    reranker = Reranker(artifact, threads=threads, backend=backend)  # type: ignore[arg-type]
    queries, documents = pairs()
    tokens = sum(len(ids) for ids in reranker.model.encode(queries, documents).input_ids)
    reranker.predict(queries[:2], documents[:2])  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        scores = reranker.predict(queries, documents, normalize=True)
        times.append(time.perf_counter() - start)
    assert reranker.backend is not None
    return {
        "tokens": tokens,
        "seconds": median(times),
        "scores": scores.tolist(),
        "backend": reranker.backend.describe(),
    }


def _timed_calls(score_call: object, reps: int) -> tuple[float, list[float]]:
    """Time `score_call(query_index, document_indices) -> scores` over every query, `reps` times."""
    scores = [0.0] * 16
    score_call(0, by_query()[0][1][:2])  # type: ignore[operator]  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for index, (_, documents) in enumerate(by_query()):
            for doc, value in zip(documents, score_call(index, documents)):  # type: ignore[operator]
                scores[doc] = value
        times.append(time.perf_counter() - start)
    return median(times), scores


def _openvino_genai(checkpoint: str, weight_format: str | None, pieces: Path, reps: int, threads: int) -> dict:
    import openvino_genai
    from transformers import AutoTokenizer

    heads, documents = json.loads(pieces.read_text())
    work = Path(tempfile.mkdtemp(prefix="ovgenai-"))
    cli = Path(sys.executable).parent / "optimum-cli"
    export = [str(cli), "export", "openvino", "--task", "text-generation-with-past", "--model", checkpoint]
    if weight_format:
        export += ["--weight-format", weight_format]
    subprocess.run([*export, str(work / "ov")], check=True, capture_output=True)
    config = openvino_genai.TextRerankPipeline.Config()
    config.top_n = 16
    config.padding_side = "left"  # as GenAI's own Qwen3 test: the score is read at the last position
    pipeline = openvino_genai.TextRerankPipeline(
        str(work / "ov"), "CPU", config, INFERENCE_NUM_THREADS=threads, NUM_STREAMS=1
    )
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokens = sum(len(tokenizer(heads[i % 4] + d)["input_ids"]) for i, d in enumerate(documents))

    def score_call(query: int, indices: list[int]) -> list[float]:
        ranked = dict(pipeline.rerank(heads[query], [documents[i] for i in indices]))
        return [float(ranked[i]) for i in range(len(indices))]

    seconds, scores = _timed_calls(score_call, reps)
    shutil.rmtree(work)
    return {"tokens": tokens, "seconds": seconds, "scores": scores, "version": openvino_genai.__version__}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def _wait_ready(server: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"llama-server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)  # polling the server's own readiness endpoint, not standing in for an event
    raise RuntimeError("llama-server was not ready in 600 s")


def _llama_cpp(checkpoint: str, quant: str, reps: int, threads: int) -> dict:
    from llama_cpp_bench import build, convert

    llama = build(WORK, targets=("llama-server", "llama-quantize"))
    # llama.cpp's converter recognises a Qwen3 reranker by its folder name; it then writes the yes/no
    # head, rank pooling and the card's prompt as the GGUF's "rerank" template.
    named = WORK / f"qwen3-reranker-{Path(checkpoint).resolve().name}"
    named.mkdir(exist_ok=True)
    for file in Path(checkpoint).iterdir():
        if not (named / file.name).exists():
            (named / file.name).symlink_to(file.resolve())
    gguf = convert(llama, named, WORK, (quant,))[quant]
    port = _free_port()
    command = [str(llama / "build/bin/llama-server"), "-m", str(gguf), "--reranking", "--port", str(port)]
    command += ["-t", str(threads), "-tb", str(threads), "-c", "8192"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(server, f"http://127.0.0.1:{port}/health")
        _, documents = pairs()
        prompt_tokens: dict[int, int] = {}  # per query, from the server's own usage report

        def score_call(query: int, indices: list[int]) -> list[float]:
            body = {"query": QUERIES[query], "documents": [documents[i] for i in indices]}
            answer = _post(f"http://127.0.0.1:{port}/v1/rerank", body)
            prompt_tokens[query] = int(answer["usage"]["prompt_tokens"])
            ranked = {r["index"]: float(r["relevance_score"]) for r in answer["results"]}
            return [ranked[i] for i in range(len(indices))]

        seconds, scores = _timed_calls(score_call, reps)
    finally:
        server.terminate()
        server.wait(timeout=60)
    tokens = sum(prompt_tokens.values())
    return {"tokens": tokens, "seconds": seconds, "scores": scores, "gguf_gb": gguf.stat().st_size / 1e9}


def worker(stack: str, checkpoint: str, artifact: str, pieces: Path | None, reps: int, threads: int) -> dict:
    if stack.startswith("reference"):
        return _reference(checkpoint, stack.endswith("bf16"), reps, threads)
    if stack.startswith("openvino-genai"):
        assert pieces is not None
        return _openvino_genai(checkpoint, "int8" if stack.endswith("int8") else None, pieces, reps, threads)
    if stack.startswith("llama.cpp-"):
        return _llama_cpp(checkpoint, stack.removeprefix("llama.cpp-"), reps, threads)
    return _ours(artifact, "onnxruntime" if stack == "ours-onnxruntime" else "auto", reps, threads)


def table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# Qwen3-Reranker, {data['checkpoint']} (random weights), b16x256, {env['threads']} threads, "
        f"{env['cpu']} ({env['cpu_class']})",
        f"commit {env['git_commit']}; median of {data['reps']} runs; each stack its own process",
        "",
        "| stack | tokens/s | vs reference fp32 | vs ours-default | Spearman vs reference fp32 | max abs diff of P(yes) |",
        "|---|---|---|---|---|---|",
    ]
    results = data["results"]
    base = results["reference-fp32"]["tokens_per_s"]
    ours = results.get("ours-default", {}).get("tokens_per_s")
    for stack, r in results.items():
        vs_ours = f"{r['tokens_per_s'] / ours:.2f}x" if ours else "-"
        lines.append(
            f"| {stack} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | {vs_ours} | "
            f"{r['spearman']:.3f} | {r['max_abs_diff']:.4f} |"
        )
    lines.append("")
    for stack, r in results.items():
        detail = r.get("backend") or (f"version {r['version']}" if "version" in r else None)
        if "gguf_gb" in r:
            detail = f"GGUF {r['gguf_gb']:.2f} GB"
        if detail:
            lines.append(f"- {stack}: {detail}")
    return "\n".join(lines)


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = list(data["results"])
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(stacks, [data["results"][s]["tokens_per_s"] for s in stacks])
    ax.set(xlabel="tokens/s (b16x256)", title=f"Qwen3-Reranker {data['checkpoint']}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stacks", nargs="+", default=STACKS, choices=STACKS)
    parser.add_argument("--peer-python", type=Path, default=None, help="interpreter for " + ", ".join(PEER_STACKS))
    common.add_more_artifacts_arguments(parser)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pieces", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, str(args.checkpoint), str(args.artifact), args.pieces, args.reps, args.threads)
        print(json.dumps(result))
        return 0
    from rerank_onnx_export.report import spearman

    extra = common.more_artifacts(args.also)

    pieces = Path(tempfile.mkstemp(prefix="qwen3-pieces-", suffix=".json")[1])
    pieces.write_text(json.dumps(genai_pieces()))
    results = {}
    for stack in [*args.stacks, *extra]:
        peer = stack in PEER_STACKS
        python = (str(args.peer_python) if args.peer_python else None) if peer else sys.executable
        options = ["--reps", str(args.reps), "--threads", str(args.threads), "--pieces", str(pieces)]
        r = run_worker(
            __file__, stack, [str(args.checkpoint), extra.get(stack, str(args.artifact)), *options], python=python
        )
        if r is None:
            continue
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        results[stack] = r
        print(stack, round(r["tokens_per_s"]), file=sys.stderr)
    import numpy as np

    pieces.unlink()
    reference = np.asarray(results["reference-fp32"]["scores"])
    for r in results.values():
        r["spearman"] = float(spearman(np.asarray(r["scores"]), reference))
        r["max_abs_diff"] = float(np.max(np.abs(np.asarray(r["scores"]) - reference)))
    env = environment(args.threads)
    data = {"checkpoint": args.checkpoint.resolve().name, "reps": args.reps, "environment": env, "results": results}
    name = f"qwen3-{data['checkpoint']}-{env['cpu_class']}" + (f"-{args.tag}" if args.tag else "")
    publish(name, data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
