"""Ground-truth workloads whose work is known exactly: one GEMM, one copy (`_target_` factories).

They run through the same custom-workload path, timed pass and efficiency maths as any model, so the
MFU/MBU the profiler reports for them can be checked against a bare measurement of the same kernel
(benchmarks/gpu_groundtruth.py).

- `build_gemm(m, n, k)`: every forward (prefill and each decode step) is one (M x K) @ (K x N) matmul
  of a stored activation and a stored weight; the token ids are ignored. FLOPs per forward = 2*M*N*K
  exactly (no bias, no other arithmetic in the module; the greedy argmax the generation loop adds
  over the last row's N logits is a reduction of N elements, < 1e-4 of the GEMM for M = K = 8192).
  Bytes of the matmul at minimum = (M*K + K*N + M*N) * element size (each operand read once, the
  output written once).
- `build_copy(num_bytes)`: every forward copies a `num_bytes` buffer into another
  (`dst.copy_(src)`): bytes moved = 2 * num_bytes (read + write), FLOPs = 0. The logits it returns
  are a view of the first 8 elements of the destination.

Batches (`profiling.batch_size`, `num_inputs` >= the batch size): a GEMM forward over B inputs is one
bmm of B activations (the stored one, broadcast without a copy) by the one weight: 2*B*M*N*K FLOPs,
(B*M*K + K*N + B*M*N) * element size bytes at minimum, the weight (`weight_bytes`) read once. A copy
forward copies its buffer once whatever the batch (all its bytes are `weight_bytes`), its logits
broadcast over the batch. At batch 1 both run exactly the kernels above.
"""

from __future__ import annotations

import torch
from torch import nn

COPY_LOGITS = 8  # width of the logits view the copy module returns


class GemmModule(nn.Module):
    """forward(input_ids) -> (activation @ weight)[None]: logits of shape (1, M, N)."""

    def __init__(self, activation: torch.Tensor, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("activation", activation)
        self.register_buffer("weight", weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch = input_ids.shape[0]
        if batch == 1:
            return torch.mm(self.activation, self.weight).unsqueeze(0)
        return torch.bmm(self.activation.expand(batch, -1, -1), self.weight.expand(batch, -1, -1))


class CopyModule(nn.Module):
    """forward(input_ids) copies `src` into `dst` and returns a (1, 1, 8) view of `dst` as logits."""

    def __init__(self, numel: int, device: torch.device | str, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("src", torch.ones(numel, device=device, dtype=dtype))
        self.register_buffer("dst", torch.zeros(numel, device=device, dtype=dtype))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.dst.copy_(self.src)
        return self.dst[:COPY_LOGITS].view(1, 1, COPY_LOGITS).expand(input_ids.shape[0], 1, COPY_LOGITS)


def gemm_flops(m: int, n: int, k: int) -> int:
    return 2 * int(m) * int(n) * int(k)


def gemm_min_bytes(m: int, n: int, k: int, element_bytes: int) -> int:
    return (int(m) * int(k) + int(k) * int(n) + int(m) * int(n)) * int(element_bytes)


def build_gemm(
    m: int = 8192,
    n: int = 8192,
    k: int = 8192,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    num_inputs: int = 1,
) -> dict:
    """A workload whose every forward is one M x K @ K x N matmul (2*M*N*K FLOPs) per input of the batch;
    `num_inputs` identical inputs (batches need at least profiling.batch_size of them)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    activation = torch.randn(m, k, device=device, dtype=dtype, generator=generator)
    weight = torch.randn(k, n, device=device, dtype=dtype, generator=generator) / float(k) ** 0.5
    return {
        "model": GemmModule(activation, weight),
        "stage_map": {},
        # Inputs whose length is M, the "tokens" of the GEMM; the ids themselves are ignored.
        "inputs": [{"input_ids": torch.zeros(1, m, dtype=torch.long, device=device)} for _ in range(num_inputs)],
        "vocab_size": n,
        "costs": {stage: {"flops": float(gemm_flops(m, n, k)),
                          "bytes": float(gemm_min_bytes(m, n, k, activation.element_size())),
                          "weight_bytes": float(k * n * weight.element_size())}
                  for stage in ("prefill", "decode")},
    }


def build_copy(
    num_bytes: int = 1 << 30,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    num_inputs: int = 1,
) -> dict:
    """A workload whose every forward copies `num_bytes` (2 * num_bytes moved, read + write), whatever the
    batch; `num_inputs` identical inputs."""
    element_bytes = torch.empty((), dtype=dtype).element_size()
    if num_bytes % element_bytes or num_bytes // element_bytes < COPY_LOGITS:
        raise ValueError(f"num_bytes={num_bytes} must be a multiple of {element_bytes} and hold "
                         f">= {COPY_LOGITS} elements of {dtype}")
    return {
        "model": CopyModule(num_bytes // element_bytes, device, dtype),
        "stage_map": {},
        "inputs": [{"input_ids": torch.zeros(1, 1, dtype=torch.long, device=device)} for _ in range(num_inputs)],
        "vocab_size": COPY_LOGITS,
        "costs": {stage: {"flops": 0.0, "bytes": 2.0 * num_bytes, "weight_bytes": 2.0 * num_bytes}
                  for stage in ("prefill", "decode")},
    }
