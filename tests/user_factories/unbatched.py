"""A module whose forward drops the batch: logits for the first sequence only (batching must refuse it)."""

from __future__ import annotations

import torch
from torch import nn

VOCAB, HIDDEN = 64, 16


class FirstRowOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids[:1]))


def build(device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    return {"model": FirstRowOnly().to(device=device, dtype=dtype), "vocab_size": VOCAB}
