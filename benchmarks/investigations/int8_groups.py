"""The `int8` scheme's block size against OpenVINO's dynamic int8 group: speed and agreement, side by side.

    python benchmarks/int8_groups.py benchmarks/work/base-v2-fp32 benchmarks/work/base-v2-int8 \
        --variants ort-32 ov-32-32 ov-64-64 ov-128-128 ov-128-32 --rounds 2

The default `int8` artifact holds int8 weights in blocks of 32 input channels; under `precision="int8"`
OpenVINO quantizes each token's activations to int8 in groups of DYNAMIC_QUANTIZATION_GROUP_SIZE channels
(the block the artifact records, `ArtifactConfig.quantization_block`) and runs the products as int8 dot
products. A coarser group means
fewer int32-to-float conversions per output (the kernel's work per group), but activations rounded on a
coarser scale. This measures both on one model:

- a variant `ov-B-G`: the fp32 graph quantized as the `int8` quantization but in blocks of B, on OpenVINO with
  `precision="int8"` and the group set to G (`ov-B-bf16`: the same weights under `precision="bf16"`, no
  int8 activations); `ort-B`: those weights on onnxruntime's MatMulNBits (int8 activations in blocks of B).
  B = 32 is the artifact given (the exporter's own); other blocks are written next to it, once.
- speed: 16 pairs of ~256 tokens (bench.py's b16x256), the median of `--reps` calls after a warm-up;
- agreement with the fp32 artifact on onnxruntime (the reference bench.py uses): 12 queries x 20 documents
  of 20-410 tokens; Spearman over all 240 scores, its mean per query, top-10 overlap per query, mean
  |difference| as a share of the reference's score spread;
- faithfulness (issue 10): a pair alone vs in a batch, and with the shared prefix vs full prompts, over
  bench.py's 24 `faithful` pairs.

Every variant runs in its own process, once per round, rounds interleaved (the host drifts); speed is the
median over rounds, agreement and faithfulness are scored in the first round (they do not vary between runs). Writes results/int8-groups-<size>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: common.py, worker.py
from agreement import DOCS_PER_QUERY, agreement, agreement_pairs, paired_difference
from common import environment, median, publish
from worker import Ours, workloads


def blocked_artifact(int8_artifact: Path, fp32_artifact: Path, block: int) -> Path:
    """`int8_artifact` with its graph re-quantized from the fp32 graph in blocks of `block`; the artifact
    itself where it holds that block."""
    from rerank_onnx_export import quantize

    from rerank_onnx.artifact import load_artifact

    if load_artifact(int8_artifact).quantization_block == block:
        return int8_artifact
    out = int8_artifact.with_name(f"{int8_artifact.name}-block{block}")
    config = json.loads((int8_artifact / "rerank_config.json").read_text())
    graph_file = config["graph"]["file"]
    if (out / graph_file).exists():
        return out
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(
        int8_artifact, staging, ignore=shutil.ignore_patterns(graph_file, graph_file + ".data", "*.onnx.data")
    )
    fp32_graph = fp32_artifact / json.loads((fp32_artifact / "rerank_config.json").read_text())["graph"]["file"]
    data_file = _data_file(int8_artifact, graph_file)
    quantize.quantize_int8_blockwise(fp32_graph, staging / graph_file, data_file=data_file, block=block)
    from rerank_onnx.artifact import file_digest

    config["files"].update(
        {name: file_digest(staging / name) for name in config["files"] if name.endswith((".onnx", ".data"))}
    )
    config["quantization"]["description"] = config["quantization"]["description"].replace(
        f"blocks of {quantize.BLOCK}", f"blocks of {block}"
    )
    config["quantization"]["block"] = block
    (staging / "rerank_config.json").write_text(json.dumps(config, indent=2) + "\n")
    staging.rename(out)
    return out


def _data_file(artifact: Path, graph_file: str) -> str:
    """The name of the external weights file beside the graph."""
    import onnx

    model = onnx.load(str(artifact / graph_file), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                return entry.value
    raise SystemExit(f"{artifact}: the graph keeps no external weights")


def parse_variant(variant: str) -> tuple[str, int, str]:
    """'ov-128-32' -> ("openvino", 128, "32"); 'ov-32-bf16' -> ("openvino", 32, "bf16"); 'ort-32' ->
    ("onnxruntime", 32, "")."""
    match = re.fullmatch(r"ort-(\d+)|ov-(\d+)-(\d+|bf16)", variant)
    if match is None:
        raise SystemExit(f"variant: expected ort-B, ov-B-G or ov-B-bf16 (B and G numbers), got {variant!r}")
    ort_block, ov_block, group = match.groups()
    if ort_block is not None:
        return "onnxruntime", int(ort_block), ""
    return "openvino", int(ov_block), group


def worker(artifact: str, variant: str, threads: int, reps: int, speed_only: bool, pairs: tuple[int, int]) -> dict:
    """Load one variant, time b16x256, and (unless `speed_only`) score the agreement and faithfulness pairs."""
    from rerank_onnx import Reranker
    from rerank_onnx.artifact import load_artifact
    from rerank_onnx.backends import open_session
    from rerank_onnx.backends.select import choose

    backend, block, group = parse_variant(variant)
    precision = "auto" if backend == "onnxruntime" else "bf16" if group == "bf16" else "int8"
    config = load_artifact(artifact)
    choice = choose(backend, precision, quantization="int8", family=config.family, openvino_installed=True)
    assert config.quantization_block == block, f"{artifact} holds blocks of {config.quantization_block}, not {block}"
    # the group as the variant says, which may differ from the artifact's block (the runtime uses the block)
    session = open_session(
        config.graph_path, choice, threads=threads, int8_block=int(group) if group.isdigit() else block
    )
    stack = Ours.of(Reranker(artifact, session=session), choice.describe())
    w = workloads(quick=False)["b16x256"]
    stack.scores(w["query"], w["docs"])  # warm-up: the shapes compile on first use
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        stack.scores(w["query"], w["docs"])
        times.append(time.perf_counter() - start)
    tokens = stack.tokens(w["query"], w["docs"])
    result = {
        "variant": variant,
        "backend": stack.backend,
        "b16x256": {"tokens": tokens, "seconds": times, "tokens_per_s": tokens / median(times)},
    }
    if not speed_only:
        queries, docs = agreement_pairs(*pairs)
        result["scores"] = stack.r.predict(queries, docs).tolist()
        f = workloads(quick=False)["faithful"]
        result["faithful"] = stack.faithful(f["queries"], f["docs"])
    return result


def run(artifact: Path, variant: str, threads: int, reps: int, speed_only: bool, pairs: tuple[int, int]) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", str(artifact), variant, "--threads", str(threads), "--reps", str(reps)]
    cmd += ["--queries", str(pairs[0]), "--max-doc-tokens", str(pairs[1])] + (["--speed-only"] if speed_only else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"{variant}: exit {done.returncode}\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def reference_scores(fp32_artifact: Path, threads: int, pairs: tuple[int, int]) -> list[float]:
    from rerank_onnx import Reranker

    queries, docs = agreement_pairs(*pairs)
    return Reranker(fp32_artifact, threads=threads, backend="onnxruntime").predict(queries, docs).tolist()


def table(data: dict) -> str:
    env = data["environment"]
    pairs = len(data["reference_scores"]) if "reference_scores" in data else 240
    first = next(iter(data["variants"]), "-")
    lines = [
        f"`int8` block size vs OpenVINO's dynamic int8 group, {data['size']}, {env['cpu_class']} ({env['cpu']}), "
        f"{env['threads']} threads, commit {env['git_commit']}, median over {data['rounds']} rounds",
        "",
        f"| variant | engine | b16x256 tok/s (rounds) | vs ov-32-32 | Spearman vs fp32 ({pairs} pairs) | per query | top-10 "
        f"| mean abs diff / std | alone vs batch | shared vs full | per-query Spearman minus {first}'s (95%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = data["variants"].get("ov-32-32", {}).get("tokens_per_s")
    for name, v in data["variants"].items():
        a, f = v["agreement"], v["faithful"]
        ratio = f"{v['tokens_per_s'] / base:.2f}x" if base else "-"
        rounds = ", ".join(f"{t:.0f}" for t in v["rounds_tokens_per_s"])
        lines.append(
            f"| {name} | {v['backend']} | {v['tokens_per_s']:.0f} ({rounds}) | {ratio} | {a['spearman']:.4f} | "
            f"{a['spearman_per_query']:.4f} | {a['top10']:.3f} | {a['mean_abs_diff_of_std']:.3f} | "
            f"{f['alone_vs_batch']:.4f} | {f['shared_vs_full']:.4f} | {_difference(a)} |"
        )
    return "\n".join(lines)


def _difference(agreement: dict) -> str:
    d = agreement.get("minus_first")
    if d is None:
        return "-"
    lo, hi = d["per_query_95"]
    return f"{d['per_query']:+.4f} ({lo:+.4f}, {hi:+.4f})"


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common import RESULTS

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, v in data["variants"].items():
        ax.scatter(v["tokens_per_s"], v["agreement"]["spearman_per_query"], s=40)
        ax.annotate(variant, (v["tokens_per_s"], v["agreement"]["spearman_per_query"]), fontsize=8)
    ax.set_xlabel("b16x256 tokens/s")
    ax.set_ylabel("mean Spearman per query vs fp32")
    ax.set_title(f"int8 block / OpenVINO group, {data['size']}, {data['environment']['cpu_class']}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("ARTIFACT", "VARIANT"))
    parser.add_argument("fp32", nargs="?", type=Path, help="the fp32 artifact (the agreement reference)")
    parser.add_argument("int8", nargs="?", type=Path, help="the int8 artifact (block 32)")
    parser.add_argument("--variants", nargs="+", default=["ort-32", "ov-32-32", "ov-32-bf16", "ov-128-128"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=12, help="agreement pairs: queries (20 documents each)")
    parser.add_argument("--max-doc-tokens", type=int, default=410, help="agreement pairs: longest document")
    parser.add_argument("--suffix", default="", help="appended to the result files' name (a run beside another)")
    parser.add_argument("--speed-only", action="store_true", help="worker: time b16x256 only (rounds after the first)")
    args = parser.parse_args()
    pairs = (args.queries, args.max_doc_tokens)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.threads, args.reps, args.speed_only, pairs)))
        return 0
    if args.fp32 is None or args.int8 is None:
        parser.error("give the fp32 and the int8 artifact")
    artifacts = {v: blocked_artifact(args.int8, args.fp32, parse_variant(v)[1]) for v in args.variants}
    reference = reference_scores(args.fp32, args.threads, pairs)
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for round_ in range(args.rounds):
        for variant in args.variants:
            result = run(artifacts[variant], variant, args.threads, args.reps, round_ > 0, pairs)
            if result is not None:
                runs[variant].append(result)
                print(f"round {round_ + 1} {variant}: {result['b16x256']['tokens_per_s']:.0f} tok/s", file=sys.stderr)
    size = args.int8.name.split("-int8")[0]
    data = {
        "size": size,
        "rounds": args.rounds,
        "agreement_pairs": {
            "queries": args.queries,
            "documents_per_query": DOCS_PER_QUERY,
            "max_doc_tokens": args.max_doc_tokens,
        },
        "environment": environment(args.threads),
        "reference_scores": reference,
        "variants": {
            v: {
                "backend": r[0]["backend"],
                "artifact": str(artifacts[v]),
                "rounds_tokens_per_s": [x["b16x256"]["tokens_per_s"] for x in r],
                "tokens_per_s": median([x["b16x256"]["tokens_per_s"] for x in r]),
                "agreement": agreement(r[0]["scores"], reference),
                "faithful": r[0]["faithful"],
                "scores": r[0]["scores"],
            }
            for v, r in runs.items()
            if r
        },
    }
    baseline = data["variants"].get(args.variants[0])
    for variant in data["variants"].values():  # against the first variant (the reference quantization: ort-32)
        if baseline is not None and variant is not baseline:
            variant["agreement"]["minus_first"] = paired_difference(variant["scores"], baseline["scores"], reference)
    suffix = f"-{args.suffix}" if args.suffix else ""
    publish(f"int8-groups-{size}-{data['environment']['cpu_class']}{suffix}", data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
