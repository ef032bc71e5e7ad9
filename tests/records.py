"""Realistic RunRecords for unit tests: the shape the profile pipeline writes, built without torch or a model.

    record = build_record()                              # timings of a DeepSeek-OCR-2-like run, nothing else
    record = gpu_record()                                # + H100 costs/efficiency, profiled pass, operators, energy
    record = build_record(decode_ms=300.0, e2e_ms=400.0) # move the numbers an assertion is about
    run_dir = write_run_dir(record, tmp_path / "run", operators=OPERATORS)  # metrics.json (+ operators.csv)

Stages come from the schema (`StageTree.from_paths` of the sub-stage paths): e2e > prefill > vision >
vision_sam / vision_encoder / vision_projector, e2e > decode. A group's time is the sum of its
children's (it is `sum_of_children`), share_of_parent is mean / parent mean, decode has
new_tokens - 1 tokens (the first token comes from prefill): TPOT = decode_ms / (new_tokens - 1).
Efficiency comes from `analysis.efficiency.stage_efficiency` over the given costs, the stage's time
basis (decode: TPOT) and any busy_share in `efficiency`, then the other per-stage overrides. A stage
passed as None in `substages`, or a `*_ms=None`, has no timing (absent, not zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_perf_opt.analysis.efficiency import stage_efficiency
from llm_perf_opt.analysis.peaks import lookup_peaks
from llm_perf_opt.record import (
    Efficiency,
    EnergyInfo,
    InputInfo,
    OperatorRecord,
    Peaks,
    ProfiledPassInfo,
    ProfiledStage,
    RunInfo,
    RunRecord,
    StageRecord,
    Stats,
    WorkloadInfo,
    flat_metrics,
    save,
)
from llm_perf_opt.schema import DECODE, E2E, PREFILL, StageTree

H100 = "NVIDIA H100 80GB HBM3"
DEFAULT_SUBSTAGES: dict[tuple[str, ...], float | None] = {
    ("vision", "sam"): 50.0, ("vision", "encoder"): 30.0, ("vision", "projector"): 2.0}
ENV = {"device_type": "cuda", "device_name": H100, "torch": "2.11.0", "transformers": "5.17.0", "dtype": "bf16",
       "attn_implementation": "sdpa"}
# (stage, operator, calls, total ms in the profiled pass): what gpu_record's profiled pass saw.
OPERATORS: list[tuple[str, str, int, float]] = [
    ("prefill", "aten::linear", 48, 30.0), ("prefill", "aten::scaled_dot_product_attention", 24, 12.0),
    ("vision_sam", "aten::conv2d", 2, 21.0), ("vision_sam", "aten::add", 40, 3.0),
    ("vision_encoder", "aten::mm", 96, 18.0), ("vision_projector", "aten::linear", 1, 1.5),
    ("decode", "aten::mm", 672, 144.0), ("decode", "aten::cat", 336, 20.0), ("other", "aten::copy_", 4, 0.5),
]
# stage -> ProfiledStage fields; profiled_ms sums the ranges (1 input; decode: 7 steps of 72 ms), the
# overhead ratio is per_execution_ms / the timed mean of build_record's defaults (decode: over TPOT 40 ms).
PROFILED: dict[str, dict[str, Any]] = {
    "prefill": {"ranges": 1, "profiled_ms": 150.0, "per_execution_ms": 150.0, "profiler_overhead_ratio": 1.25,
                "busy_share": 0.9, "no_formula_share": 0.2},
    "vision_sam": {"ranges": 1, "profiled_ms": 60.0, "per_execution_ms": 60.0, "profiler_overhead_ratio": 1.2},
    "vision_encoder": {"ranges": 1, "profiled_ms": 36.0, "per_execution_ms": 36.0, "profiler_overhead_ratio": 1.2},
    "vision_projector": {"ranges": 1, "profiled_ms": 3.0, "per_execution_ms": 3.0, "profiler_overhead_ratio": 1.5},
    "decode": {"ranges": 7, "profiled_ms": 504.0, "per_execution_ms": 72.0, "busy_share": 0.3,
               "profiler_overhead_ratio": 1.8, "no_formula_share": 0.1},
}
# stage -> (FLOPs, bytes) of one execution (decode: one step).
COSTS: dict[str, tuple[float, float]] = {"prefill": (4.0e12, 2.0e10), "vision_sam": (1.0e12, 1.0e9),
                                          "decode": (2.0e9, 1.5e9)}


def stats(mean: float, *, p50: float | None = None, spread: float = 0.05, count: int = 6) -> Stats:
    """Statistics around `mean` (p50 = mean unless given)."""
    return Stats(mean=mean, std=mean * spread, min=mean * (1 - 2 * spread), max=mean * (1 + 2 * spread),
                 p50=mean if p50 is None else p50, p90=mean * (1 + spread), p99=mean * (1 + 1.8 * spread), count=count)


def peaks_of(device_name: str = H100, dtype: str = "bf16") -> Peaks:
    return Peaks(**lookup_peaks(device_name, dtype).as_record())


def _operator(stage: str, name: str, calls: int, total_ms: float) -> OperatorRecord:
    return OperatorRecord(stage=stage, name=name, calls=calls, total_time_ms=total_ms, mean_time_ms=total_ms / calls)


def build_record(
    *,
    prefill_ms: float | None = 120.0,
    decode_ms: float | None = 280.0,
    e2e_ms: float | None = 402.0,
    substages: Mapping[tuple[str, ...], float | None] | None = None,
    new_tokens: int = 8,
    samples: int = 6,
    tpot_p50: float | None = None,
    costs: Mapping[str, tuple[float, float]] | None = None,
    hardware: Peaks | None = None,
    efficiency: Mapping[str, Mapping[str, Any]] | None = None,
    profiled: Mapping[str, Mapping[str, Any]] | None = None,
    operators: Sequence[tuple[str, str, int, float]] = (),
    top_n: int = 10,
    energy_j: Mapping[str, Mapping[str, float]] | None = None,
    device: Mapping[str, float] | None = None,
    status: str = "FINISHED",
    error: str | None = None,
    image_mode: str | None = "tiled",
) -> RunRecord:
    """A RunRecord with these numbers (module docstring); everything not given is absent."""
    substages = DEFAULT_SUBSTAGES if substages is None else substages
    tree = StageTree.from_paths(substages)
    means: dict[str, float | None] = {PREFILL: prefill_ms, DECODE: decode_ms, E2E: e2e_ms}
    means.update({"_".join(path): ms for path, ms in substages.items()})
    for group in tree.bottom_up_groups():
        parts = [means.get(child.key) for child in tree.children(group.key)]
        means[group.key] = sum(parts) if parts and all(p is not None for p in parts) else None

    decode_tokens = new_tokens - 1
    records = {}
    for stage in tree:
        record = StageRecord(key=stage.key, parent=stage.parent, label=stage.label, kind=stage.kind,
                             time_quantity=stage.time_quantity, cost_prefix=stage.cost_prefix)
        mean = means.get(stage.key)
        if mean is not None:
            record.stats["ms"] = stats(mean)
            if stage.key == DECODE:
                tpot = mean / decode_tokens
                record.stats["tpot_ms"] = stats(tpot, p50=tpot_p50)
                record.stats["step_ms"] = stats(tpot, count=samples * decode_tokens)
                record.stats["tokens_per_s"] = stats(1000.0 * decode_tokens / mean)
                record.stats["peak_mem_mib"] = stats(7300.0, spread=0.0)
            elif stage.key == E2E:
                record.stats["tokens_per_s"] = stats(1000.0 * new_tokens / mean)
            elif stage.key == PREFILL:
                record.stats["peak_mem_mib"] = stats(7200.0, spread=0.0)
        parent_mean = means.get(stage.parent) if stage.parent else None
        if mean is not None and parent_mean:
            record.share_of_parent = mean / parent_mean
        records[stage.key] = record

    if costs:
        from llm_perf_opt.analysis.peaks import HardwarePeaks

        peaks = HardwarePeaks(**{k: v for k, v in hardware.model_dump().items()
                                 if k in HardwarePeaks.__dataclass_fields__}) if hardware else None
        times = {key: records[key].mean(records[key].time_quantity) for key in costs}
        busy = {k: fields["busy_share"] for k, fields in (efficiency or {}).items() if "busy_share" in fields}
        computed = stage_efficiency({k: {"flops": f, "bytes": b} for k, (f, b) in costs.items()},
                                    {k: t for k, t in times.items() if t is not None}, peaks, busy)
        for key, (flops, nbytes) in costs.items():
            records[key].flops, records[key].bytes = flops, nbytes
            if key in computed:
                records[key].efficiency = Efficiency(**{k: v for k, v in computed[key].items()
                                                        if k in Efficiency.model_fields})
    for key, fields in (efficiency or {}).items():
        base = records[key].efficiency.model_dump() if records[key].efficiency else {
            "time_ms": records[key].mean(records[key].time_quantity)}
        records[key].efficiency = Efficiency(**{**base, **fields})
    for key, fields in (profiled or {}).items():
        records[key].profiled = ProfiledStage(**{"ranges": 1, **fields})
    for key, values in (energy_j or {}).items():
        records[key].energy_j = dict(values)

    ops = [_operator(*row) for row in operators]
    by_stage: dict[str, list[OperatorRecord]] = {}
    for key in [*tree.keys(), *sorted({op.stage for op in ops} - set(tree.keys()))]:
        rows = sorted((op for op in ops if op.stage == key), key=lambda op: -op.total_time_ms)[:top_n]
        if rows:
            by_stage[key] = rows
    record = RunRecord(
        status=status, error=error,
        run=RunInfo(
        run_dir="runs/test", run_uid="test-run", mlflow_run_id="0123abcd", started_at="2026-01-01T00:00:00+00:00",
                    finished_at="2026-01-01T00:01:00+00:00"),
        workload=WorkloadInfo(family="deepseek_ocr2", preset="full", dtype="bf16", device="cuda:0",
                              new_tokens=new_tokens, warmup=1, repeats=samples,
                              inputs=[InputInfo(input_id="page-0", prompt_tokens=1100, image_tokens=1024)],
                              **({"image_mode": image_mode} if image_mode else {})),
        env=dict(ENV), hardware=hardware, samples=samples, stages=list(records.values()),
        device=dict(device or {}),
        profiled_pass=(ProfiledPassInfo(trace="trace.json.gz", inputs=1, decode_steps=decode_tokens,
                                        device_type="cuda", time_basis="device_span", event_count=12345)
                       if profiled or ops else None),
        energy=EnergyInfo(methods={key: "counter" for key in energy_j}, power_source="nvml") if energy_j else None,
        top_operators=sorted(ops, key=lambda op: -op.total_time_ms)[:top_n],
        top_operators_by_stage=by_stage,
    )
    record.metrics = flat_metrics(record)
    return record


def gpu_record(**overrides: Any) -> RunRecord:
    """build_record with everything a GPU run measures: costs and efficiency on an H100, the profiled pass,
    operators, energy and device readings."""
    settings: dict[str, Any] = dict(
        costs=COSTS, hardware=peaks_of(), efficiency={"decode": {"busy_share": 0.3}, "prefill": {"busy_share": 0.9}},
        profiled=PROFILED, operators=OPERATORS,
        energy_j={E2E: {"mean": 120.6}, PREFILL: {"mean": 40.0}, DECODE: {"per_token": 10.5}},
        device={"power_w_mean": 300.0, "power_w_max": 410.0, "sm_clock_mhz_mean": 1980.0})
    settings.update(overrides)
    return build_record(**settings)


def operators_frame(rows: Sequence[tuple[str, str, int, float]], on_device: bool = True) -> pd.DataFrame:
    """operators.csv as the profiled pass writes it, from (stage, name, calls, total ms) rows."""
    frame = pd.DataFrame(list(rows), columns=["stage", "name", "calls", "total_time_ms"])
    frame["total_cpu_ms"] = frame["total_time_ms"] * 1.1
    frame["self_cpu_ms"] = frame["total_cpu_ms"] * 0.5
    frame["total_device_ms"] = frame["total_time_ms"] if on_device else np.nan
    frame["self_device_ms"] = frame["total_time_ms"] * 0.9 if on_device else np.nan
    frame["mean_time_ms"] = frame["total_time_ms"] / frame["calls"]
    frame["self_cpu_memory_bytes"] = np.nan
    frame["self_device_memory_bytes"] = np.nan
    return frame[["stage", "name", "calls", "self_cpu_ms", "total_cpu_ms", "self_device_ms", "total_device_ms",
                  "total_time_ms", "mean_time_ms", "self_cpu_memory_bytes", "self_device_memory_bytes"]]


def kernels_frame(rows: Sequence[tuple[str, str, int, float]]) -> pd.DataFrame:
    """kernels.csv from (stage, kernel, calls, device ms) rows."""
    frame = pd.DataFrame(list(rows), columns=["stage", "name", "calls", "device_ms"])
    frame["mean_device_ms"] = frame["device_ms"] / frame["calls"]
    return frame


def write_run_dir(record: RunRecord, run_dir: Path, operators: Sequence[tuple[str, str, int, float]] | None = None,
                  kernels: Sequence[tuple[str, str, int, float]] | None = None, on_device: bool = True) -> Path:
    """A run directory with metrics.json (the record) and, when given, operators.csv / kernels.csv."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save(record, run_dir / "metrics.json")
    if operators is not None:
        operators_frame(operators, on_device).to_csv(run_dir / "operators.csv", index=False)
    if kernels is not None:
        kernels_frame(kernels).to_csv(run_dir / "kernels.csv", index=False)
    return run_dir
