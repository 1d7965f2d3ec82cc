"""Every backend/numerics pair on one int8 artifact against its fp32 artifact, for any model family.

    python benchmarks/numerics_agreement.py benchmarks/work/ce-minilm-fp32 benchmarks/work/ce-minilm-int8 \
        --queries 40 --max-doc-tokens 200

`auto` picks one engine and numerics per CPU class from measurements made on the mxbai-rerank-v2
architecture (backends/select.py); this checks on another family's graph (a cross-encoder, Qwen3-Reranker)
that the pick ranks as faithfully there too. Issue 10's bound: agreement with the fp32 graph at least that
of blockwise int8 on onnxruntime, on the same model and pairs.

- reference: the fp32 artifact on onnxruntime;
- variants, each on the int8 artifact: onnxruntime (blockwise int8), OpenVINO `int8` (dynamic int8
  activations in the artifact's blocks), `bf16` and `fp32` (fp32 compute of the int8 weights); OpenVINO's
  bf16 and int8 run as fp32 on a CPU without bf16 instructions, and the table says so; with `--static`, each
  `int8-static` artifact of the same checkpoint on what `auto` runs, on OpenVINO fp32 and on onnxruntime;
  `--skip` leaves variants out;
- pairs: `--queries` queries x 20 documents of 20-`--max-doc-tokens` tokens (int8_groups.py's pairs);
  Spearman over all scores and per query, top-10 overlap, mean |difference| as a share of the reference's
  score spread, and each variant's Spearman minus onnxruntime int8's with 95% intervals over resampled
  queries;
- a pair alone against in its call: the first 20 pairs scored one at a time against the same pairs inside
  the whole call, largest |difference| as a share of the reference's score spread (issue 10: at most 2%).

Agreement does not depend on timing, so every variant runs in this one process, one after the other.
Writes results/numerics-agreement-<int8 artifact>-<cpu class>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agreement import agreement, agreement_pairs, paired_difference
from common import environment, publish

# (name, backend, precision) on the int8 artifact; the first is the bound the others are measured against
VARIANTS = [
    ("onnxruntime-int8", "onnxruntime", "auto"),
    ("openvino-int8", "openvino", "int8"),
    ("openvino-bf16", "openvino", "bf16"),
    ("openvino-fp32", "openvino", "fp32"),
]
# (name, backend, precision) on an int8-static artifact (--static): OpenVINO as `auto` runs it, OpenVINO with
# fp32 between the int8 kernels, and onnxruntime
STATIC_VARIANTS = [
    ("int8-static-openvino", "auto", "auto"),
    ("int8-static-openvino-fp32", "openvino", "fp32"),
    ("int8-static-onnxruntime", "onnxruntime", "auto"),
]
ALONE_PAIRS = 20


def score_variant(artifact: Path, backend: str, precision: str, threads: int, pairs: tuple[int, int]) -> dict:
    """The variant's scores on the agreement pairs, and its largest alone-vs-in-call difference."""
    from rerank_onnx import Reranker

    reranker = Reranker(artifact, backend=backend, precision=precision, threads=threads)
    queries, docs = agreement_pairs(*pairs)
    scores = reranker.predict(queries, docs)
    alone = np.array([reranker.predict([q], [d])[0] for q, d in zip(queries[:ALONE_PAIRS], docs[:ALONE_PAIRS])])
    return {
        "runs": _short(reranker.backend),
        "scores": scores.tolist(),
        "alone_vs_call": float(np.abs(alone - scores[:ALONE_PAIRS]).max()),
    }


def _short(choice: object) -> str:
    """'openvino int8' / 'onnxruntime' (stored numerics): the engine and compute, without the reason."""
    from rerank_onnx.backends.select import BackendChoice

    assert isinstance(choice, BackendChoice)
    return choice.backend + ("" if choice.precision == "stored" else f" {choice.precision}")


def table(data: dict) -> str:
    env, first = data["environment"], VARIANTS[0][0]
    lines = [
        f"Backend/numerics agreement, `{data['artifact']}` against `{data['reference']}` on onnxruntime, "
        f"{env['cpu_class']} ({env['cpu']}), {env['threads']} threads, commit {env['git_commit']}, "
        f"{len(data['reference_scores'])} pairs ({data['pairs']['queries']} queries x 20 documents of 20-"
        f"{data['pairs']['max_doc_tokens']} tokens), reference score spread {data['reference_std']:.3f}",
        "",
        "| variant | runs as | Spearman | per query | top-10 | mean abs diff / std | alone vs in call / std | "
        f"Spearman minus {first}'s (95%) | per query minus {first}'s (95%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in data["variants"].items():
        a, d = v["agreement"], v["agreement"].get("minus_first")
        overall = f"{d['spearman']:+.4f} ({d['spearman_95'][0]:+.4f}, {d['spearman_95'][1]:+.4f})" if d else "-"
        per_query = f"{d['per_query']:+.4f} ({d['per_query_95'][0]:+.4f}, {d['per_query_95'][1]:+.4f})" if d else "-"
        lines.append(
            f"| {name} | {v['runs']} | {a['spearman']:.4f} | {a['spearman_per_query']:.4f} | {a['top10']:.3f} | "
            f"{a['mean_abs_diff_of_std']:.3f} | {v['alone_vs_call'] / data['reference_std']:.4f} | {overall} | "
            f"{per_query} |"
        )
    lines += ["", f"`auto` on this CPU: {data['auto']}"]
    return "\n".join(lines)


def chart(data: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common import RESULTS

    names = list(data["variants"])
    values = [data["variants"][n]["agreement"]["spearman_per_query"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(names, values)
    ax.set_xlim(min(values) - 0.01, 1.0)
    ax.set_xlabel("mean Spearman per query vs the fp32 graph")
    ax.set_title(f"{data['artifact']}, {data['environment']['cpu_class']}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="the fp32 artifact (the reference, on onnxruntime)")
    parser.add_argument("int8", type=Path, help="the int8 artifact every variant runs")
    parser.add_argument("--queries", type=int, default=40, help="queries (20 documents each)")
    parser.add_argument("--max-doc-tokens", type=int, default=200, help="longest document")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--suffix", default="", help="appended to the result files' name")
    parser.add_argument(
        "--static",
        type=Path,
        nargs="+",
        default=[],
        help="int8-static artifacts of the same checkpoint (e.g. with and without SmoothQuant): their variants "
        "join the table, named with the artifact when there are several",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=[name for name, _, _ in VARIANTS[1:] + STATIC_VARIANTS],
        help="variants not to run (onnxruntime-int8, the bound, always runs)",
    )
    args = parser.parse_args()
    from rerank_onnx import Reranker

    pairs = (args.queries, args.max_doc_tokens)
    reference_model = Reranker(args.fp32, backend="onnxruntime", threads=args.threads)
    reference = reference_model.predict(*agreement_pairs(*pairs)).tolist()
    variants = {}
    for name, backend, precision in (v for v in VARIANTS if v[0] not in args.skip):
        variants[name] = score_variant(args.int8, backend, precision, args.threads, pairs)
        variants[name]["agreement"] = agreement(variants[name]["scores"], reference)
        print(f"{name}: {variants[name]['agreement']}", file=sys.stderr)
    for static in args.static:
        for variant, backend, precision in (v for v in STATIC_VARIANTS if v[0] not in args.skip):
            name = f"{variant} ({static.name})" if len(args.static) > 1 else variant
            variants[name] = score_variant(static, backend, precision, args.threads, pairs)
            variants[name]["agreement"] = agreement(variants[name]["scores"], reference)
            print(f"{name}: {variants[name]['agreement']}", file=sys.stderr)
    baseline = variants[VARIANTS[0][0]]["scores"]
    for name, variant in variants.items():
        if name != VARIANTS[0][0]:
            variant["agreement"]["minus_first"] = paired_difference(variant["scores"], baseline, reference)
    data = {
        "artifact": args.int8.name,
        "reference": args.fp32.name,
        "pairs": {"queries": args.queries, "documents_per_query": 20, "max_doc_tokens": args.max_doc_tokens},
        "environment": environment(args.threads),
        "auto": _short(Reranker(args.int8, threads=args.threads).backend),
        "reference_std": float(np.std(reference)),
        "reference_scores": reference,
        "variants": variants,
    }
    suffix = f"-{args.suffix}" if args.suffix else ""
    publish(f"numerics-agreement-{args.int8.name}-{data['environment']['cpu_class']}{suffix}", data, table(data), chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
