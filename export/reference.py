"""The export's fp32 reference for the decoder families, in numpy: the score of each prompt, computed as
transformers' eager Qwen2 / Qwen3 forward computes it (full causal attention over the whole prompt, no prefix
sharing, no last-layer trimming), streaming one layer's weights at a time from the checkpoint.

It is the self-check's reference where torch is not installed, and a second implementation beside the ONNX
graph: the graph is written node by node (decoder_graph.py), this is written as plain array code, so a wiring
mistake in one does not hide in the other. All prompts go through a layer together (their activations are a
few MB), so the checkpoint is read once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np

from .decoder_graph import DecoderShape
from .safetensors_reader import SafetensorsWeights


def reference_scores(
    weights: SafetensorsWeights,
    shape: DecoderShape,
    prompts: Sequence[Sequence[int]],
    *,
    yes_token_id: int,
    no_token_id: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """logit(yes) - logit(no) at the last token of each prompt, in float32.

    Args:
        weights: the checkpoint's tensors.
        shape: its config.
        prompts: token ids, one list per prompt (any lengths).
        yes_token_id, no_token_id: the score's two tokens.
        progress: called with the number of layers done.

    Returns:
        One score per prompt, in order.
    """
    embedding = "model.embed_tokens.weight"
    used = sorted({int(i) for ids in prompts for i in ids})  # the table's rows the prompts use, read one by one
    vectors = {i: weights.rows(embedding, i, i + 1)[0] for i in used}
    # every prompt's tokens in one [tokens, hidden] matrix: the linear layers run as one GEMM each
    states = np.stack([vectors[int(i)] for ids in prompts for i in ids])
    lengths = [len(ids) for ids in prompts]
    head = embedding if shape.tied or "lm_head.weight" not in weights else "lm_head.weight"
    direction = np.stack([weights.rows(head, i, i + 1)[0] for i in (yes_token_id, no_token_id)])
    offset = 0.0
    if "lm_head.bias" in weights:
        bias = weights.get("lm_head.bias")
        offset = float(bias[yes_token_id] - bias[no_token_id])
    angles = _rotary_tables(shape, max(lengths))
    for layer in range(shape.layers):
        states = _Layer(weights, f"model.layers.{layer}", shape).forward(states, lengths, angles)
        if progress is not None:
            progress(layer + 1)
    norm = weights.get("model.norm.weight")
    last = _rms_norm(states[np.cumsum(lengths) - 1], norm, shape.eps)
    logits: np.ndarray = last @ direction.T
    scores: np.ndarray = (logits[:, 0] - logits[:, 1] + offset).astype(np.float32)
    return scores


class _Layer:
    """One decoder layer's weights, and its forward over a set of prompts."""

    def __init__(self, weights: SafetensorsWeights, prefix: str, shape: DecoderShape) -> None:
        self.shape = shape

        def get(name: str) -> np.ndarray | None:
            return weights.get(f"{prefix}.{name}") if f"{prefix}.{name}" in weights else None

        self.input_norm, self.post_norm = get("input_layernorm.weight"), get("post_attention_layernorm.weight")
        self.q, self.k, self.v, self.o = (get(f"self_attn.{p}_proj.weight") for p in "qkvo")
        self.q_bias, self.k_bias, self.v_bias = (get(f"self_attn.{p}_proj.bias") for p in "qkv")
        self.q_norm, self.k_norm = get("self_attn.q_norm.weight"), get("self_attn.k_norm.weight")
        self.gate, self.up, self.down = (get(f"mlp.{p}_proj.weight") for p in ("gate", "up", "down"))

    def forward(self, x: np.ndarray, lengths: Sequence[int], angles: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The layer over prompts laid end to end in `x` ([sum(lengths), hidden]); each attends to itself only."""
        s = self.shape
        h = _rms_norm(x, self.input_norm, s.eps)
        q = _linear(h, self.q, self.q_bias).reshape(len(x), s.heads, s.head_dim)
        k = _linear(h, self.k, self.k_bias).reshape(len(x), s.kv_heads, s.head_dim)
        v = _linear(h, self.v, self.v_bias).reshape(len(x), s.kv_heads, s.head_dim)
        if s.qk_norm:
            q, k = _rms_norm(q, self.q_norm, s.eps), _rms_norm(k, self.k_norm, s.eps)
        positions = np.concatenate([np.arange(n) for n in lengths])
        cos, sin = angles[0][positions, None], angles[1][positions, None]
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        starts = np.concatenate([[0], np.cumsum(lengths)])
        attended = np.concatenate(
            [_attention(q[a:b], k[a:b], v[a:b], s.heads // s.kv_heads) for a, b in pairwise(starts)]
        )
        x = x + _linear(attended.reshape(len(x), s.heads * s.head_dim), self.o, None)
        h = _rms_norm(x, self.post_norm, s.eps)
        gate, up = _linear(h, self.gate, None), _linear(h, self.up, None)
        sigmoid = np.exp(-gate)  # silu(gate) = gate / (1 + exp(-gate)), in place: these are the largest arrays
        sigmoid += 1
        np.divide(gate, sigmoid, out=gate)
        gate *= up
        out: np.ndarray = x + _linear(gate, self.down, None)
        return out


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, groups: int) -> np.ndarray:
    """Causal attention of one prompt: q [tokens, heads, head_dim], k and v [tokens, kv_heads, head_dim]."""
    tokens, head_dim = len(q), q.shape[-1]
    q = q.transpose(1, 0, 2)  # [heads, tokens, head_dim]
    k = np.repeat(k.transpose(1, 0, 2), groups, axis=0)
    v = np.repeat(v.transpose(1, 0, 2), groups, axis=0)
    scores = (q @ k.transpose(0, 2, 1)) * np.float32(head_dim**-0.5)  # [heads, tokens, tokens]
    scores += np.triu(np.full((tokens, tokens), np.finfo(np.float32).min, np.float32), 1)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    attended: np.ndarray = (scores / scores.sum(axis=-1, keepdims=True)) @ v
    result: np.ndarray = attended.transpose(1, 0, 2)  # [tokens, heads, head_dim]
    return result


def _linear(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None) -> np.ndarray:
    assert weight is not None
    out: np.ndarray = x @ weight.T
    return out + bias if bias is not None else out


def _rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    assert weight is not None
    variance = np.mean(x * x, axis=-1, keepdims=True)
    normed: np.ndarray = weight * (x / np.sqrt(variance + np.float32(eps)))
    return normed


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rotary_tables(shape: DecoderShape, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [tokens, head_dim] of transformers' default rotary embedding."""
    exponents = np.arange(0, shape.head_dim, 2, dtype=np.int64).astype(np.float32) / shape.head_dim
    powers = np.power(np.float64(np.float32(shape.rope_theta)), exponents.astype(np.float64)).astype(np.float32)
    inv_freq = np.float32(1.0) / powers
    freqs = np.arange(tokens, dtype=np.float32)[:, None] * inv_freq[None, :]
    both = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(both).astype(np.float32), np.sin(both).astype(np.float32)
