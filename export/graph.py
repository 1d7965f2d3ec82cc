"""PyTorch model -> fp32 ONNX graph that outputs one relevance score per row, traced with torch.onnx.

The export writes the decoder graph without torch (decoder_graph.py); this traced graph is its oracle in the
tests (tests/test_decoder_graph.py: the two agree to the bit) and needs torch and transformers."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any

import onnx
import torch

from rerank_onnx.artifact import INPUT_IDS, LENGTHS, PAST_KEYS, PAST_VALUES, PRESENT_KEYS, PRESENT_VALUES, SCORES
from rerank_onnx.errors import ExportError

from .onnx_files import save_with_external_data

OPSET = 17
# The last layer runs each row's scored token this many times (ScoreGraph.forward says why)
SCORED_COPIES = 2


class ScoreGraph(torch.nn.Module):
    """Score = final hidden state of each row's last real token . (W["1"] - W["0"]), after an optional
    prefix whose keys and values every row shares.

    The full-vocabulary lm_head is collapsed to the one direction that the score needs: logit("1") -
    logit("0") is linear in the hidden state. Rows are right-padded, so with a causal mask no real
    token ever attends to padding, and no padding mask is needed. Only each row's last real token reaches
    the score, so the last layer computes its queries, attention output and MLP for that token alone (at
    base-v2 ~4% of the linear layers' work).

    The prompts of one query start with the same tokens (chat prefix, instruction, query). The graph
    takes their keys and values as `past_keys`/`past_values` [layers, kv_heads, past, head_dim] (past
    may be 0) and returns the keys and values of row 0 after its tokens, so that the runtime computes a
    shared prefix once and scores every document as its continuation.

    The layer loop is written out (with the checkpoint's own modules and rotary embedding) because
    transformers' cache classes and mask builder do not trace; it is the eager attention of Qwen2 (and of
    Qwen3, which adds an RMSNorm over each head's queries and keys).
    """

    def __init__(self, causal_lm: Any, *, yes_token_id: int, no_token_id: int) -> None:
        # causal_lm: a transformers Qwen2/Qwen3 causal LM, Any: torch's stubs cannot see its submodules
        super().__init__()
        config = causal_lm.config
        if getattr(config, "use_sliding_window", False):
            raise ExportError("this checkpoint uses sliding-window attention, which the score graph does not implement")
        body = causal_lm.model
        self.embed, self.layers, self.norm, self.rotary = body.embed_tokens, body.layers, body.norm, body.rotary_emb
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        head = causal_lm.get_output_embeddings()
        direction = head.weight[yes_token_id] - head.weight[no_token_id]
        self.register_buffer("direction", direction.detach().clone().float())
        bias = getattr(head, "bias", None)
        offset = (bias[yes_token_id] - bias[no_token_id]).item() if bias is not None else 0.0
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32))

    def forward(
        self, input_ids: torch.Tensor, lengths: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, seq = input_ids.shape
        past = past_keys.shape[2]
        positions = torch.arange(seq, device=input_ids.device) + past
        # Query i sees every past position and the new positions up to its own.
        causal = positions.view(1, -1) <= positions.view(-1, 1)
        allowed = torch.cat([torch.ones(seq, past, dtype=torch.bool, device=input_ids.device), causal], dim=1)
        zero, blocked = torch.zeros((), dtype=torch.float32), torch.full((), torch.finfo(torch.float32).min)
        mask = torch.where(allowed, zero, blocked).view(1, 1, seq, past + seq)
        x = self.embed(input_ids)
        cos, sin = self.rotary(x, positions.view(1, -1).expand(batch, -1))
        present_keys, present_values = [], []
        last_layer = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer.input_layernorm(x)
            k, v = self._keys_values(layer.self_attn, h, cos, sin, past_keys[i], past_values[i])
            present_keys.append(k[0])
            present_values.append(v[0])
            if i == last_layer:
                # Only each row's last real token reaches the score: the last layer's queries, attention
                # output and MLP run for that token alone (its keys and values still cover every token). The
                # token is taken twice: onnxruntime's blockwise int8 kernel takes another path for a single
                # row, and a pair scored alone would then differ from the same pair in a batch.
                index = (lengths - 1).view(-1, 1).expand(-1, SCORED_COPIES)
                x, h = _rows_at(x, index), _rows_at(h, index)
                cos, sin, mask = _rows_at(cos, index), _rows_at(sin, index), mask[0, 0][index].unsqueeze(1)
            x = x + self._attention(layer.self_attn, h, k, v, cos, sin, mask)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = self.norm(x)[:, 0]
        direction, offset = self.get_buffer("direction"), self.get_buffer("offset")
        scores = torch.matmul(last, direction) + offset
        return scores, torch.stack(present_keys), torch.stack(present_values)

    def _keys_values(
        self,
        attention: Any,  # the layer's self_attn module (its projections and norms are attributes)
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys (rotary applied) and values [batch, kv_heads, past + seq, head_dim] after the past."""
        batch, seq = h.shape[:2]
        k = attention.k_proj(h).view(batch, seq, self.kv_heads, self.head_dim)
        if hasattr(attention, "k_norm"):  # Qwen3: RMSNorm over each head's query and key
            k = attention.k_norm(k)
        k = _rotary(k.transpose(1, 2), cos, sin)
        v = attention.v_proj(h).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        k = torch.cat([past_keys.unsqueeze(0).expand(batch, -1, -1, -1), k], dim=2)
        v = torch.cat([past_values.unsqueeze(0).expand(batch, -1, -1, -1), v], dim=2)
        return k, v

    def _attention(
        self,
        attention: Any,  # the layer's self_attn module (its projections and norms are attributes)
        h: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """o_proj of the attention of `h`'s queries over keys `k` and values `v`, with the additive `mask`."""
        batch, seq = h.shape[:2]
        q = attention.q_proj(h).view(batch, seq, self.heads, self.head_dim)
        if hasattr(attention, "q_norm"):
            q = attention.q_norm(q)
        q = _rotary(q.transpose(1, 2), cos, sin)
        groups, total = self.heads // self.kv_heads, k.shape[2]
        shape = (batch, self.heads, total, self.head_dim)
        k = k[:, :, None].expand(batch, self.kv_heads, groups, total, self.head_dim).reshape(shape)
        v = v[:, :, None].expand(batch, self.kv_heads, groups, total, self.head_dim).reshape(shape)
        scale = self.head_dim**-0.5
        weights = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * scale + mask, dim=-1, dtype=torch.float32)
        out: torch.Tensor = attention.o_proj(torch.matmul(weights, v).transpose(1, 2).reshape(batch, seq, -1))
        return out


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of [batch, heads, seq, head_dim] at positions whose cos/sin are [batch, seq, head_dim]
    (transformers' apply_rotary_pos_emb for one tensor)."""
    from transformers.models.qwen2.modeling_qwen2 import rotate_half

    rotated: torch.Tensor = x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)  # type: ignore[no-untyped-call]
    return rotated


def _rows_at(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor[b, index[b, i]] for each row b of a [batch, seq, features] tensor and index [batch, n]: [batch, n,
    features]."""
    return tensor.gather(1, index.unsqueeze(-1).expand(-1, -1, tensor.shape[-1]))


def export_fp32(graph: ScoreGraph, destination: Path, *, data_file: str) -> None:
    """Write `graph` to `destination`, its weights to one external `data_file` beside it."""
    example_ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 0, 0, 0, 0]], dtype=torch.int64)
    example_lengths = torch.tensor([8, 4], dtype=torch.int64)
    # A non-empty example past, so that the tracer keeps the past length symbolic (0 works at run time).
    example_past = torch.zeros(len(graph.layers), graph.kv_heads, 3, graph.head_dim)
    # The TorchScript exporter writes one file per tensor beside a large graph: keep them in a
    # scratch folder of their own, then gather them into one data file.
    raw = destination.parent / (destination.stem + ".raw")
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (example_ids, example_lengths, example_past, example_past),
            str(raw / destination.name),
            input_names=[INPUT_IDS, LENGTHS, PAST_KEYS, PAST_VALUES],
            output_names=[SCORES, PRESENT_KEYS, PRESENT_VALUES],
            dynamic_axes={
                INPUT_IDS: {0: "batch", 1: "sequence"},
                LENGTHS: {0: "batch"},
                SCORES: {0: "batch"},
                PAST_KEYS: {2: "past"},
                PAST_VALUES: {2: "past"},
                PRESENT_KEYS: {2: "total"},
                PRESENT_VALUES: {2: "total"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    gc.collect()
    model = onnx.load(str(raw / destination.name), load_external_data=True)
    save_with_external_data(model, destination, data_file=data_file)
    del model
    gc.collect()
    shutil.rmtree(raw)
