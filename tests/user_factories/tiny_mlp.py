"""A user's factory as a user writes one: it takes only `device` and `dtype` and returns a module."""

from __future__ import annotations

import torch
from torch import nn

VOCAB, HIDDEN = 128, 32


class TinyMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.body = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.embed(input_ids))))


def build(device: torch.device, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return TinyMlp().to(device=device, dtype=dtype)
