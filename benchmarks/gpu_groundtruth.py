"""Ground truth for MFU and MBU: the profiler's own numbers for one GEMM and one copy vs a bare timing.

Run on a CUDA host from the project root:

    python benchmarks/gpu_groundtruth.py                      # 16384^3 bf16 GEMM, 4 GiB copy
    python benchmarks/gpu_groundtruth.py --m 8192 --dtype fp16 --energy --calibrate

Tool: the GEMM / copy workloads of conf/model/gemm.yaml and copy.yaml (composed against their schema by
`llm_perf_opt.config.compose`), built by `llm_perf_opt.models.build_workload`, timed by
`passes.timed.iter_timed_samples` (prefill = one forward), turned into MFU/MBU by
`analysis.efficiency.stage_efficiency` with FLOPs = 2*M*N*K and bytes = 2 x buffer size.
Reference: torch.cuda.Event pairs around a bare `torch.mm(a, b, out=c)` / `dst.copy_(src)` on the same
tensors, 2*M*N*K / time / peak, three back-to-back calls measured after each tool sample (interleaved,
so the clock drift of a power-capped GPU hits both alike). Also measured, the same bare call started
on an idle device ("idle start", as the timed pass starts each sample after a synchronisation): the
tool's excess over the back-to-back reference is that launch gap, a fixed few tens of microseconds,
hence the large default shapes. Goal: tool / reference within 2 % for MFU and 5 % for MBU; exit status
1 otherwise, 2 without a GPU. `--energy` samples NVML over ~3 s of GEMMs and compares the energy
counter with power integration over the same window.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import types

import torch

from llm_perf_opt.analysis.efficiency import stage_efficiency
from llm_perf_opt.analysis.peaks import lookup_peaks, with_calibration
from llm_perf_opt.config import compose
from llm_perf_opt.models import build_workload
from llm_perf_opt.models.kernels import gemm_flops, gemm_min_bytes
from llm_perf_opt.passes.calibration import calibrate
from llm_perf_opt.passes.timed import iter_timed_samples

MFU_GOAL, MBU_GOAL = 0.02, 0.05


def back_to_back_ms(op, repeats: int) -> float:
    """Mean time of `op()` from its own torch.cuda.Event pairs, calls queued back to back."""
    pairs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        op()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.fmean(start.elapsed_time(end) for start, end in pairs)


def idle_start_ms(op) -> float:
    """One call of `op()` started on an idle device (synchronised before), timed by an event pair."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    op()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def compare(workload, op, warmup: int, repeats: int) -> dict[str, float]:
    """Mean tool prefill_ms and reference times, one reference measurement after each tool sample."""
    for _ in range(warmup):
        op()
    tool, reference, idle = [], [], []
    settings = types.SimpleNamespace(new_tokens=1, warmup=warmup, repeats=repeats, stop_at_eos=False)
    for record in iter_timed_samples(workload, settings):
        tool.append(record.row["prefill_ms"])
        reference.append(back_to_back_ms(op, 3))
        idle.append(idle_start_ms(op))
    return {"tool_ms": statistics.fmean(tool), "reference_ms": statistics.fmean(reference),
            "idle_start_ms": statistics.fmean(idle),
            "reference_ms_first": reference[0], "reference_ms_last": reference[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=16384)
    parser.add_argument("--n", type=int, default=None, help="default: m")
    parser.add_argument("--k", type=int, default=None, help="default: m")
    parser.add_argument("--copy-mib", type=int, default=4096)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--energy", action="store_true", help="also check the NVML energy methods")
    parser.add_argument("--calibrate", action="store_true", help="also report MFU against calibrated peaks")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_groundtruth: needs a CUDA device; torch {torch.__version__} sees none "
              f"(CUDA build: {torch.version.cuda}). Run it on a GPU host.", file=sys.stderr)
        return 2
    m, n, k = args.m, args.n or args.m, args.k or args.m
    device = torch.device("cuda", torch.cuda.current_device())
    device_name = torch.cuda.get_device_name(device)
    peaks = lookup_peaks(device_name, args.dtype)
    if args.calibrate:
        peaks = with_calibration(peaks, calibrate(device, args.dtype), device_name, args.dtype)
    if peaks is None or peaks.peak_tflops is None:
        print(f"gpu_groundtruth: '{device_name}' is not in the peak table: ratios of achieved rates only")
    report: dict = {"device": device_name, "dtype": args.dtype, "torch": torch.__version__,
                    "peak_tflops": peaks.peak_tflops if peaks else None,
                    "peak_bandwidth_gbps": peaks.peak_bandwidth_gbps if peaks else None,
                    "achievable_tflops": peaks.achievable_tflops if peaks else None,
                    "achievable_bandwidth_gbps": peaks.achievable_bandwidth_gbps if peaks else None}

    # -- GEMM: MFU ---------------------------------------------------------------------------------
    gemm_cfg = compose("config", ["model=gemm", f"model.factory.m={m}", f"model.factory.n={n}",
                                  f"model.factory.k={k}", f"model.dtype={args.dtype}"]).model
    workload = build_workload(gemm_cfg, [], device)
    a, b = workload.model.activation, workload.model.weight
    c = torch.empty(m, n, device=device, dtype=a.dtype)
    bare_mm = functools.partial(torch.mm, a, b, out=c)
    times = compare(workload, bare_mm, args.warmup, args.repeats)
    costs = {"prefill": {"flops": gemm_flops(m, n, k), "bytes": gemm_min_bytes(m, n, k, a.element_size())}}
    tool = stage_efficiency(costs, {"prefill": times["tool_ms"]}, peaks)["prefill"]
    reference = stage_efficiency(costs, {"prefill": times["reference_ms"]}, peaks)["prefill"]
    report["gemm"] = {"m": m, "n": n, "k": k, "flops": costs["prefill"]["flops"], **times,
                      "tool_tflops": tool["achieved_tflops"], "reference_tflops": reference["achieved_tflops"],
                      "tool_mfu": tool["mfu"], "reference_mfu": reference["mfu"],
                      "tool_mfu_achievable": tool["mfu_achievable"],
                      "ratio": tool["achieved_tflops"] / reference["achieved_tflops"],
                      "ratio_to_idle_start": times["idle_start_ms"] / times["tool_ms"]}

    if args.energy:
        from llm_perf_opt.analysis.energy import counter_update_period_ms, energy_between
        from llm_perf_opt.passes.energy import NvmlSampler

        with NvmlSampler(device.index or 0, interval_ms=5) as sampler:
            time.sleep(0.2)
            start = time.perf_counter_ns()
            for _ in range(max(1, int(3000 / times["reference_ms"]))):  # about 3 s of back-to-back GEMMs
                bare_mm()
            torch.cuda.synchronize()
            end = time.perf_counter_ns()
            time.sleep(0.2)
        timeline = sampler.timeline
        report["energy"] = {
            "power_source": sampler.power_source, "rows": len(timeline),
            "counter_period_ms": counter_update_period_ms(timeline), "window_s": (end - start) / 1e9,
            "counter": energy_between(timeline, start, end),
            "power_trapezoid": energy_between(timeline, start, end, min_counter_periods=float("inf")),
            "short_34ms": energy_between(timeline, start + 1_000_000_000, start + 1_034_000_000),
            "power_w_mean": float(timeline["power_w"].mean()),
            "sm_clock_mhz_mean": float(timeline["sm_clock_mhz"].mean())}
    del workload, a, b, c
    torch.cuda.empty_cache()

    # -- copy: MBU ---------------------------------------------------------------------------------
    copy_cfg = compose("config", ["model=copy", f"model.factory.num_bytes={args.copy_mib << 20}",
                                  f"model.dtype={args.dtype}"]).model
    workload = build_workload(copy_cfg, [], device)
    src, dst = workload.model.src, workload.model.dst
    times = compare(workload, functools.partial(dst.copy_, src), args.warmup, args.repeats)
    moved = {"prefill": {"flops": 0.0, "bytes": 2 * (args.copy_mib << 20)}}
    tool = stage_efficiency(moved, {"prefill": times["tool_ms"]}, peaks)["prefill"]
    reference = stage_efficiency(moved, {"prefill": times["reference_ms"]}, peaks)["prefill"]
    report["copy"] = {"bytes_moved": moved["prefill"]["bytes"], **times,
                      "tool_gbps": tool["achieved_gbps"], "reference_gbps": reference["achieved_gbps"],
                      "tool_mbu": tool["mbu"], "reference_mbu": reference["mbu"],
                      "tool_mbu_achievable": tool["mbu_achievable"],
                      "ratio": tool["achieved_gbps"] / reference["achieved_gbps"],
                      "ratio_to_idle_start": times["idle_start_ms"] / times["tool_ms"]}
    del workload, src, dst
    torch.cuda.empty_cache()

    gemm_ok = abs(report["gemm"]["ratio"] - 1) <= MFU_GOAL
    copy_ok = abs(report["copy"]["ratio"] - 1) <= MBU_GOAL
    g, cp = report["gemm"], report["copy"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"device {device_name}, dtype {args.dtype}, torch {torch.__version__}")
    source = peaks.source if peaks else "-"
    print(f"peaks: {report['peak_tflops']} TFLOP/s, {report['peak_bandwidth_gbps']} GB/s ({source})")
    print(f"GEMM {m}x{k} @ {k}x{n}: tool {g['tool_ms']:.4f} ms = {g['tool_tflops']:.1f} TFLOP/s, MFU "
          f"{fmt(g['tool_mfu'])} | reference {g['reference_ms']:.4f} ms = {g['reference_tflops']:.1f} TFLOP/s, "
          f"MFU {fmt(g['reference_mfu'])} | MFU ratio {g['ratio']:.4f} ({'within' if gemm_ok else 'OUTSIDE'} "
          f"{MFU_GOAL:.0%}); idle-start {g['idle_start_ms']:.4f} ms (launch gap "
          f"{(g['idle_start_ms'] - g['reference_ms']) * 1e3:.0f} us)")
    print(f"copy {args.copy_mib} MiB: tool {cp['tool_ms']:.4f} ms = {cp['tool_gbps']:.0f} GB/s, MBU "
          f"{fmt(cp['tool_mbu'])} | reference {cp['reference_ms']:.4f} ms = {cp['reference_gbps']:.0f} GB/s, "
          f"MBU {fmt(cp['reference_mbu'])} | MBU ratio {cp['ratio']:.4f} ({'within' if copy_ok else 'OUTSIDE'} "
          f"{MBU_GOAL:.0%}); idle-start {cp['idle_start_ms']:.4f} ms (launch gap "
          f"{(cp['idle_start_ms'] - cp['reference_ms']) * 1e3:.0f} us)")
    if peaks is not None and peaks.achievable_tflops is not None:
        print(f"calibrated: {peaks.achievable_tflops:.1f} TFLOP/s, {peaks.achievable_bandwidth_gbps:.0f} GB/s; "
              f"tool MFU vs achievable {fmt(g['tool_mfu_achievable'])}, MBU vs achievable "
              f"{fmt(cp['tool_mbu_achievable'])}")
    if "energy" in report:
        e = report["energy"]
        print(f"energy over {e['window_s']:.2f} s: counter {e['counter']}, power integral {e['power_trapezoid']}, "
              f"34 ms window {e['short_34ms']}; counter period {e['counter_period_ms']} ms, power source "
              f"{e['power_source']}")
    print(json.dumps(report, default=float))
    return 0 if gemm_ok and copy_ok else 1


if __name__ == "__main__":
    sys.exit(main())
