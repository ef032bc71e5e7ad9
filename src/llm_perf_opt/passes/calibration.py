"""Measured achievable peaks (`hardware.calibrate=true`) and the peak column a run's matmuls use.

The spec table (analysis/peaks.py) says what the vendor promises; this pass measures what a plain GEMM
and a plain copy reach on this device, for MFU/MBU against achievable peaks.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from llm_perf_opt.analysis.peaks import normalize_dtype
from llm_perf_opt.passes.clock import StageClock


def matmul_dtype(dtype: str | torch.dtype) -> str:
    """The peak column an fp32 model's matmuls run at: tf32 when PyTorch allows TF32 for matmuls."""
    name = normalize_dtype(dtype)
    if name == "fp32" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return name



def _median_ms(clock: StageClock, op, warmup: int, repeats: int) -> float:
    """Median time of `op()` over `repeats` back-to-back calls, each bracketed by two clock marks."""
    for _ in range(warmup):
        op()
    marks = []
    for _ in range(repeats):
        start = clock.mark()
        op()
        marks.append((start, clock.mark()))
    clock.synchronize()
    return float(np.median([clock.elapsed_ms(a, b) for a, b in marks]))


# Bounded sizes: a GEMM and a copy of these sizes take well under a second each on a CPU, a few
# milliseconds on a data-centre GPU (where the larger sizes fill the device and exceed L2).
SIZES = {"cuda": (8192, 1 << 30), "cpu": (1024, 64 << 20)}


def calibrate(
    device: torch.device | str,
    dtype: str | torch.dtype,
    gemm_size: int | None = None,
    copy_bytes: int | None = None,
    warmup: int = 3,
    repeats: int = 20,
) -> dict[str, float] | None:
    """Measure achievable GEMM TFLOP/s and copy GB/s on a CUDA device or a CPU (None + a warning elsewhere).

    GEMM: C = A @ B with A, B of gemm_size^2 elements in `dtype` -> 2 * gemm_size^3 FLOPs per product.
    Copy: dst.copy_(src) of `copy_bytes` -> 2 * copy_bytes bytes moved (read + write), larger than the
    last-level cache so it measures memory. Sizes default to SIZES of the device type (bounded time).
    """
    device = torch.device(device)
    if device.type not in SIZES:
        warnings.warn(f"calibration needs a CUDA device or a CPU, not {device}: no achievable peaks are measured",
                      stacklevel=2)
        return None
    gemm_size = gemm_size or SIZES[device.type][0]
    copy_bytes = copy_bytes or SIZES[device.type][1]
    if device.type == "cpu":
        repeats = min(repeats, 5)  # bounded: a few seconds at most on a slow CPU
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32,
                   "fp32": torch.float32}[normalize_dtype(dtype)]
    clock = StageClock(device)
    generator = torch.Generator(device=device).manual_seed(0)
    n = int(gemm_size)
    a = torch.randn(n, n, device=device, dtype=torch_dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=torch_dtype, generator=generator)
    c = torch.empty(n, n, device=device, dtype=torch_dtype)
    dtype_key = normalize_dtype(dtype)
    precision = torch.get_float32_matmul_precision()
    if dtype_key in ("tf32", "fp32"):  # measure the column asked for, whatever the process set
        torch.set_float32_matmul_precision("high" if dtype_key == "tf32" else "highest")
    try:
        with torch.inference_mode():
            gemm_ms = _median_ms(clock, functools.partial(torch.mm, a, b, out=c), warmup, repeats)
    finally:
        torch.set_float32_matmul_precision(precision)
    del a, b, c
    numel = int(copy_bytes) // 4
    src = torch.empty(numel, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    with torch.inference_mode():
        copy_ms = _median_ms(clock, functools.partial(dst.copy_, src), warmup, repeats)
    moved_bytes = 2 * numel * 4
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "achievable_tflops": 2.0 * n**3 / (gemm_ms * 1e-3) / 1e12,
        "achievable_bandwidth_gbps": moved_bytes / (copy_ms * 1e-3) / 1e9,
        "gemm_ms": gemm_ms,
        "gemm_size": float(n),
        "copy_ms": copy_ms,
        "copy_bytes_moved": float(moved_bytes),
    }
