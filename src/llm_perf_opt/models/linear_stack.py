"""A model whose FLOPs and bytes are known exactly: embedding -> L Linear layers -> lm_head.

For T tokens: FLOPs = 2 * T * (L * hidden^2 + hidden * vocab) (bias-free matmuls, a multiply-add
counted as two FLOPs); weights read = (L * hidden^2 + hidden * vocab) * bytes per element, plus the
T embedding rows. Used as ground truth for the measurement passes and as the example `_target_` factory.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearStack(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.layers = nn.Sequential(*[nn.Linear(hidden_size, hidden_size, bias=False) for _ in range(num_layers)])
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.layers(self.embed(input_ids)))


def build_linear_stack(
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 4,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict:
    torch.manual_seed(seed)
    with torch.device(device):
        model = LinearStack(vocab_size, hidden_size, num_layers).to(dtype)
    # The stack stands for a "body" sub-stage nested in prefill, like the vision encoder in a VLM.
    return {"model": model, "stage_map": {"body/layers": "layers", "body/lm_head": "lm_head"},
            "vocab_size": vocab_size}
