"""Cross-encoders: our artifact against sentence-transformers' CrossEncoder backends, on one checkpoint.

    python -m rerank_onnx_export.random_checkpoint ce-minilm --size minilm-l6 --weight-std 0.035
    rerank-onnx export ce-minilm ce-minilm-int8
    python benchmarks/cross_encoder_bench.py ce-minilm ce-minilm-int8

Workload r32x200: one query and 32 documents of ~200 words (a RAG rerank call), scored `--reps` times;
tokens/s counts real tokens of the pair encodings (the same ids in every stack: one tokenizer). Stacks,
each in its own process, `--threads` threads:
- st-torch: CrossEncoder(backend="torch"), fp32, what most CPU users run;
- st-onnx: CrossEncoder(backend="onnx"): optimum's ONNX export on onnxruntime, fp32;
- st-onnx-int8: the same after sentence-transformers' own `export_dynamic_quantized_onnx_model(...,
  "avx512_vnni")` (onnxruntime dynamic int8, per-channel weights), its int8 recipe;
- st-openvino: CrossEncoder(backend="openvino"), optimum-intel's OpenVINO model at OpenVINO's default
  precision for the CPU (bf16 where it has AMX);
- openvino-genai: OpenVINO GenAI's TextRerankPipeline on `optimum-cli export openvino --task
  text-classification` of the checkpoint (Intel's CPU rerank pipeline);
- ours-default: our int8 artifact with backend auto; ours-onnxruntime: the same artifact on onnxruntime.
The last two peers need sentence-transformers 6 / optimum-intel / openvino-genai, whose transformers 5
cannot share an environment with the export extra's transformers 4.57: `--peer-python` names the
interpreter of an environment that has them (they are skipped without it).
Each stack scores with its default batch size (CrossEncoder: 32; ours: the token budget), after one
warm-up call on the same pairs.
Agreement: Spearman of each stack's scores against st-torch on the same pairs.
Writes results/cross-encoder-<checkpoint>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import RESULTS, environment, median, publish, run_worker, text_of_tokens

STACKS = ["st-torch", "st-onnx", "st-onnx-int8", "st-openvino", "openvino-genai", "ours-default", "ours-onnxruntime"]
PEER_STACKS = ("st-openvino", "openvino-genai")  # run with --peer-python
QUERY = "what causes rivers to flood in spring?"


def pairs(words: int) -> list[tuple[str, str]]:
    return [(QUERY, text_of_tokens(words, seed=i)) for i in range(32)]


def _timed(score: object, data: list[tuple[str, str]], reps: int) -> tuple[float, list[float]]:
    # warm-up with the whole call: every stack's engine prepares per input shape on its first runs (ours
    # took 4 calls of 0.92-1.0 s before 0.83 s on MiniLM), and a server answers warm
    score(data)  # type: ignore[operator]
    times, scores = [], []
    for _ in range(reps):
        start = time.perf_counter()
        scores = score(data)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return median(times), [float(s) for s in scores]


def _sentence_transformers(checkpoint: str, stack: str, words: int, reps: int, threads: int) -> dict:
    import sentence_transformers
    import torch
    from sentence_transformers import CrossEncoder, export_dynamic_quantized_onnx_model

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="st-"))
    folder = work / "model"
    shutil.copytree(checkpoint, folder)  # the ONNX backend writes its export beside the checkpoint
    session_options = None
    if stack in ("st-onnx", "st-onnx-int8"):
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads
    kwargs: dict = {"session_options": session_options} if session_options else {}
    if stack == "st-openvino":
        kwargs = {"ov_config": {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1"}}
    backend = {"st-torch": "torch", "st-openvino": "openvino"}.get(stack, "onnx")
    model = CrossEncoder(str(folder), device="cpu", backend=backend, model_kwargs=kwargs)
    if stack == "st-onnx-int8":
        export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(folder))
        model = CrossEncoder(
            str(folder),
            device="cpu",
            backend="onnx",
            model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx", **kwargs},
        )
    data = pairs(words)
    encoded = model.tokenizer([q for q, _ in data], [d for _, d in data], truncation=True)
    tokens = sum(len(ids) for ids in encoded["input_ids"])
    seconds, scores = _timed(lambda batch: model.predict(batch, activation_fn=torch.nn.Identity()), data, reps)
    shutil.rmtree(work)
    return {"tokens": tokens, "seconds": seconds, "scores": scores, "version": sentence_transformers.__version__}


def _openvino_genai(checkpoint: str, words: int, reps: int, threads: int) -> dict:
    import numpy as np
    import openvino_genai
    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="ovgenai-"))
    cli = Path(sys.executable).parent / "optimum-cli"
    export = [str(cli), "export", "openvino", "--task", "text-classification", "--model", checkpoint, str(work / "ov")]
    subprocess.run(export, check=True, capture_output=True)
    config = openvino_genai.TextRerankPipeline.Config()
    config.top_n = 32
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config.max_length = tokenizer.model_max_length
    pipeline = openvino_genai.TextRerankPipeline(
        str(work / "ov"), "CPU", config, INFERENCE_NUM_THREADS=threads, NUM_STREAMS=1
    )
    data = pairs(words)
    encoded = tokenizer([q for q, _ in data], [d for _, d in data], truncation=True)
    tokens = sum(len(ids) for ids in encoded["input_ids"])

    def score(batch: list[tuple[str, str]]) -> list[float]:
        ranked = pipeline.rerank(batch[0][0], [d for _, d in batch])
        out = np.zeros(len(batch))
        for index, value in ranked:
            out[index] = value
        return out.tolist()

    seconds, scores = _timed(score, data, reps)
    shutil.rmtree(work)
    return {"tokens": tokens, "seconds": seconds, "scores": scores, "version": openvino_genai.__version__}


def _ours(artifact: str, backend: str, words: int, reps: int, threads: int) -> dict:
    from rerank_onnx import Reranker

    reranker = Reranker(artifact, threads=threads, backend=backend)  # type: ignore[arg-type]
    data = pairs(words)
    tokens = sum(len(ids) for ids in reranker.model.encode([q for q, _ in data], [d for _, d in data]).input_ids)
    seconds, scores = _timed(reranker.predict, data, reps)
    assert reranker.backend is not None
    return {"tokens": tokens, "seconds": seconds, "scores": scores, "backend": reranker.backend.describe()}


def worker(stack: str, checkpoint: str, artifact: str, words: int, reps: int, threads: int) -> dict:
    if stack.startswith("st-"):
        return _sentence_transformers(checkpoint, stack, words, reps, threads)
    if stack == "openvino-genai":
        return _openvino_genai(checkpoint, words, reps, threads)
    return _ours(artifact, "onnxruntime" if stack == "ours-onnxruntime" else "auto", words, reps, threads)


def table(data: dict) -> str:
    env = data["environment"]
    lines = [
        f"# Cross-encoder, {data['checkpoint']} (random weights), 1 query x 32 documents of {data['words']} words, "
        f"{env['threads']} threads, {env['cpu']} ({env['cpu_class']})",
        f"commit {env['git_commit']}; median of {data['reps']} calls a process, of {data.get('rounds', 1)} rounds "
        "(every stack once a round, each in its own process); "
        f"sentence-transformers {data['sentence_transformers']}",
        "",
        "| stack | tokens/s | seconds per call | rounds (tokens/s) | vs st-onnx-int8 | vs st-torch | Spearman vs st-torch |",
        "|---|---|---|---|---|---|---|",
    ]
    results = data["results"]
    int8 = results.get("st-onnx-int8", {}).get("tokens_per_s")
    torch_rate = results.get("st-torch", {}).get("tokens_per_s")
    for stack, r in results.items():
        vs_int8 = f"{r['tokens_per_s'] / int8:.2f}x" if int8 else "-"
        vs_torch = f"{r['tokens_per_s'] / torch_rate:.2f}x" if torch_rate else "-"
        rounds = ", ".join(f"{r['tokens'] / t:.0f}" for t in r.get("round_seconds", [r["seconds"]]))
        lines.append(
            f"| {stack} | {r['tokens_per_s']:.0f} | {r['seconds']:.3f} | {rounds} | {vs_int8} | {vs_torch} | "
            f"{r.get('spearman', float('nan')):.3f} |"
        )
    lines.append("")
    ours, peer = results.get("ours-default", {}), results.get("st-onnx-int8", {})
    if len(ours.get("round_seconds", [])) > 1 and len(ours["round_seconds"]) == len(peer.get("round_seconds", [])):
        ratios = ", ".join(f"{p / o:.2f}x" for o, p in zip(ours["round_seconds"], peer["round_seconds"]))
        lines.append(f"- ours-default against st-onnx-int8, round by round: {ratios}")
    for stack, r in results.items():
        if "backend" in r:
            lines.append(f"- {stack}: {r['backend']}")
        elif "version" in r:
            lines.append(f"- {stack}: version {r['version']}")
    return "\n".join(lines)


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = list(data["results"])
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(stacks, [data["results"][s]["tokens_per_s"] for s in stacks])
    ax.set(xlabel=f"tokens/s (1 x 32 documents of {data['words']} words)", title=f"cross-encoder {data['checkpoint']}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="runs of every stack in turn; medians across them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stacks", nargs="+", default=STACKS, choices=STACKS)
    parser.add_argument("--peer-python", type=Path, default=None, help="interpreter for " + ", ".join(PEER_STACKS))
    common.add_more_artifacts_arguments(parser)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, str(args.checkpoint), str(args.artifact), args.words, args.reps, args.threads)
        print(json.dumps(result))
        return 0
    import numpy as np
    from rerank_onnx_export.report import spearman

    extra = common.more_artifacts(args.also)

    results: dict[str, dict] = {}
    for round_ in range(args.rounds):  # every stack once a round, so that the host's drift spreads over all
        for stack in [*args.stacks, *extra]:
            peer = stack in PEER_STACKS
            python = (str(args.peer_python) if args.peer_python else None) if peer else sys.executable
            options = ["--reps", str(args.reps), "--threads", str(args.threads), "--words", str(args.words)]
            r = run_worker(
                __file__, stack, [str(args.checkpoint), extra.get(stack, str(args.artifact)), *options], python=python
            )
            if r is None:
                continue
            kept = results.setdefault(stack, {**r, "round_seconds": []})
            kept["round_seconds"].append(r["seconds"])
            print(
                f"round {round_ + 1}",
                stack,
                round(r["tokens"] / r["seconds"]),
                f"{r['seconds']:.3f} s",
                file=sys.stderr,
            )
    for r in results.values():
        r["seconds"] = median(r["round_seconds"])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    if "st-torch" in results:
        reference = np.asarray(results["st-torch"]["scores"])
        for r in results.values():
            r["spearman"] = float(spearman(np.asarray(r["scores"]), reference))
    env = environment(args.threads)
    version = results.get("st-torch", {}).get("version", "-")
    data = {
        "checkpoint": args.checkpoint.resolve().name,
        "words": args.words,
        "reps": args.reps,
        "rounds": args.rounds,
        "sentence_transformers": version,
        "environment": env,
        "results": results,
    }
    name = f"cross-encoder-{data['checkpoint']}-{env['cpu_class']}" + (f"-{args.tag}" if args.tag else "")
    publish(name, data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
