"""PyTorch model -> fp32 ONNX graph that outputs one relevance score per row."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import onnx
import torch

from rerank_onnx.session import INPUT_IDS, LENGTHS, SCORES

OPSET = 17


class ScoreGraph(torch.nn.Module):
    """Score = final hidden state of each row's last real token . (W["1"] - W["0"]).

    The full-vocabulary lm_head is collapsed to the one direction that the score needs: logit("1") -
    logit("0") is linear in the hidden state. Rows are right-padded, so with a causal mask no real
    token ever attends to padding, and no padding mask is needed.
    """

    def __init__(self, causal_lm: torch.nn.Module, *, yes_token_id: int, no_token_id: int) -> None:
        super().__init__()
        self.body = causal_lm.model
        head = causal_lm.get_output_embeddings()
        direction = head.weight[yes_token_id] - head.weight[no_token_id]
        self.register_buffer("direction", direction.detach().clone().float())
        bias = getattr(head, "bias", None)
        offset = (bias[yes_token_id] - bias[no_token_id]).item() if bias is not None else 0.0
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32))

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch, seq = input_ids.shape
        # Our own 4-D additive causal mask: transformers' mask builder uses vmap, which the TorchScript
        # exporter cannot trace ("unordered_map::at").
        positions = torch.arange(seq, device=input_ids.device)
        allowed = positions.view(1, -1) <= positions.view(-1, 1)
        mask = torch.where(allowed, torch.zeros((), dtype=torch.float32), torch.full((), torch.finfo(torch.float32).min))
        mask = mask.view(1, 1, seq, seq).expand(batch, 1, seq, seq)
        hidden = self.body(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        last = hidden.gather(1, index).squeeze(1)
        return torch.matmul(last, self.direction) + self.offset


def export_fp32(graph: ScoreGraph, destination: Path, *, data_file: str) -> None:
    """Write `graph` to `destination`, its weights to one external `data_file` beside it."""
    example_ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 0, 0, 0, 0]], dtype=torch.int64)
    example_lengths = torch.tensor([8, 4], dtype=torch.int64)
    # The TorchScript exporter writes one file per tensor beside a large graph: keep them in a
    # scratch folder of their own, then gather them into one data file.
    raw = destination.parent / (destination.stem + ".raw")
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (example_ids, example_lengths),
            str(raw / destination.name),
            input_names=[INPUT_IDS, LENGTHS],
            output_names=[SCORES],
            dynamic_axes={INPUT_IDS: {0: "batch", 1: "sequence"}, LENGTHS: {0: "batch"}, SCORES: {0: "batch"}},
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


def save_with_external_data(model: onnx.ModelProto, destination: Path, *, data_file: str) -> None:
    """Weights in one external file, whatever the size: onnxruntime memory-maps it, which halves
    session creation time and peak RSS of the large-v2 int8 graph against weights inside the protobuf."""
    onnx.save_model(
        model, str(destination), save_as_external_data=True, all_tensors_to_one_file=True,
        location=data_file, size_threshold=1024,
    )  # fmt: skip
