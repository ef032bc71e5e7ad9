"""Tests for the profiled pass and the trace post-processing (operators by stage), CPU only.

A hand-written trace with known answers checks the attribution rules exactly (nesting, self times,
kernels joined by correlation id, memory, `other`); the tiny DeepSeek-OCR-2 checks the real pass:
trace artifact, stage ranges from module hooks, innermost-stage attribution against a brute-force
reference, and the per-stage time accounting.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
import torch

from llm_perf_opt.data import load_pages
from llm_perf_opt.errors import InputError
from llm_perf_opt.models import build_workload
from llm_perf_opt.profiling.operators import (
    OPERATOR_COLUMNS,
    attribute_trace,
    kernel_table,
    load_trace,
    operator_table,
    stage_time_table,
)
from llm_perf_opt.profiling.profiled_pass import (
    DECODE_STEP,
    profiler_overhead,
    run_profiled_pass,
    timed_stage_ms,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DECODE_STEPS = 2
# Timestamps are microseconds with nanosecond decimals; each is rounded to whole ns once, so a sum over
# N events may be off by about N ns (2e-6 ms per event allows for the start and the duration).
ROUNDING_MS_PER_EVENT = 2e-6


# --- a hand-written trace with known answers ----------------------------------------------------------


def _x(cat, name, ts, dur, pid=1, tid=1, **args):
    event = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": float(ts), "dur": float(dur)}
    if args:
        event["args"] = args
    return event


def _memory(ts, nbytes, device_type=0):
    return {"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 1, "tid": 1, "ts": float(ts),
            "args": {"Bytes": nbytes, "Device Type": device_type}}


def hand_trace() -> dict:
    """Times in us. prefill [0,100) holds linear (addmm + t + view) and add; vision/sam [45,80) holds conv2d."""
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}},
        _x("user_annotation", "stage:prefill", 0, 100),
        _x("cpu_op", "aten::linear", 1, 40),
        _x("cpu_op", "aten::addmm", 2, 28),
        _memory(3, 1024),
        _x("cuda_runtime", "cudaLaunchKernel", 5, 3, correlation=1),
        _x("cpu_op", "aten::t", 31, 4),
        _x("cpu_op", "aten::view", 36, 0),  # zero-length: nests in linear, contains nothing
        _x("cpu_op", "aten::mul", 2, 8, tid=2),  # another thread, inside prefill by time
        _x("user_annotation", "stage:vision/sam", 45, 35),
        _x("cpu_op", "aten::conv2d", 46, 24),
        _memory(47, -512),
        _x("cuda_runtime", "cudaLaunchKernel", 50, 2, correlation=2),
        _x("cpu_op", "aten::add", 85, 5),
        _x("cuda_runtime", "cudaLaunchKernel", 86, 1, correlation=3),
        _x("user_annotation", "stage:decode", 110, 20),
        _x("cpu_op", "aten::add", 111, 9),
        _x("cuda_runtime", "cudaLaunchKernel", 112, 1, correlation=4),
        _x("cpu_op", "aten::empty", 140, 1),  # outside every stage
        _x("kernel", "gemm_kernel", 10, 15, pid=0, tid=7, correlation=1),
        _x("kernel", "conv_kernel", 55, 10, pid=0, tid=7, correlation=2),
        _x("kernel", "add_kernel", 88, 3, pid=0, tid=7, correlation=3),
        _x("kernel", "add_kernel", 114, 2, pid=0, tid=7, correlation=4),
        _x("gpu_memcpy", "Memcpy HtoD", 150, 4, pid=0, tid=7, correlation=99),  # no launch in the trace
        {"ph": "s", "id": 1, "pid": 1, "tid": 1, "ts": 5.0, "cat": "ac2g", "name": "ac2g"},
        {"ph": "f", "id": 1, "pid": 0, "tid": 7, "ts": 10.0, "cat": "ac2g", "name": "ac2g", "bp": "e"},
    ]
    return {"schemaVersion": 1, "traceEvents": events}


def _row(table: pd.DataFrame, stage: str, name: str) -> pd.Series:
    rows = table[(table["stage"] == stage) & (table["name"] == name)]
    assert len(rows) == 1, f"expected one row for ({stage}, {name}), got {len(rows)}"
    return rows.iloc[0]


def test_hand_trace_self_times_stages_and_device_attribution():
    attribution = attribute_trace(hand_trace())
    ops = operator_table(attribution)
    assert list(ops.columns) == OPERATOR_COLUMNS
    linear, addmm = _row(ops, "prefill", "aten::linear"), _row(ops, "prefill", "aten::addmm")
    # linear [1,41) minus addmm (28), t (4), view (0); addmm [2,30) minus its launch (3 us).
    assert linear["self_cpu_ms"] == pytest.approx(0.008) and linear["total_cpu_ms"] == pytest.approx(0.040)
    assert addmm["self_cpu_ms"] == pytest.approx(0.025)
    # The gemm kernel is launched by addmm: self device time of addmm, total (not self) of linear.
    assert addmm["self_device_ms"] == pytest.approx(0.015) and addmm["total_device_ms"] == pytest.approx(0.015)
    assert linear["self_device_ms"] == 0 and linear["total_device_ms"] == pytest.approx(0.015)
    assert linear["total_time_ms"] == pytest.approx(0.015), "on a GPU trace total_time_ms is device time"
    assert _row(ops, "prefill", "aten::view")["self_cpu_ms"] == 0
    # Innermost stage: conv2d is in vision/sam (not prefill); adds in prefill and decode; empty outside.
    conv = _row(ops, "vision/sam", "aten::conv2d")
    assert conv["self_cpu_ms"] == pytest.approx(0.022) and conv["total_device_ms"] == pytest.approx(0.010)
    assert _row(ops, "prefill", "aten::add")["total_device_ms"] == pytest.approx(0.003)
    assert _row(ops, "decode", "aten::add")["total_device_ms"] == pytest.approx(0.002)
    assert _row(ops, "other", "aten::empty")["calls"] == 1
    assert _row(ops, "prefill", "aten::mul")["calls"] == 1, "stage by time on any thread"
    assert set(ops[ops["name"] == "aten::conv2d"]["stage"]) == {"vision/sam"}
    # Memory: bytes charged to the innermost op containing the allocator event.
    assert addmm["self_cpu_memory_bytes"] == 1024 and conv["self_cpu_memory_bytes"] == -512
    assert linear["self_cpu_memory_bytes"] == 0

    kernels = kernel_table(attribution)
    assert _row(kernels, "prefill", "gemm_kernel")["device_ms"] == pytest.approx(0.015)
    assert _row(kernels, "vision/sam", "conv_kernel")["device_ms"] == pytest.approx(0.010)
    assert _row(kernels, "other", "Memcpy HtoD")["calls"] == 1, "a kernel without its launch is 'other'"

    stages = stage_time_table(attribution).set_index("stage")
    assert list(stages.index) == ["prefill", "vision/sam", "decode"]
    # Device span of prefill: first kernel start (10) to last end (91) among kernels launched inside it.
    assert stages.loc["prefill", "profiled_ms"] == pytest.approx(0.081)
    assert stages.loc["vision/sam", "profiled_ms"] == pytest.approx(0.010)
    assert stages.loc["prefill", "cpu_ms"] == pytest.approx(0.100)
    assert stages.loc["prefill", "substage_cpu_ms"] == pytest.approx(0.035)
    # Prefill's own time outside linear (40), vision/sam (35) and add (5) is 20 us.
    assert stages.loc["prefill", "host_gap_ms"] == pytest.approx(0.020)
    # Busy share: kernels of prefill and of its nested vision/sam (15 + 3 + 10 us) over its 81 us span.
    assert stages.loc["prefill", "device_ms"] == pytest.approx(0.018)
    assert stages.loc["prefill", "device_busy_ms"] == pytest.approx(0.028)
    assert stages.loc["prefill", "busy_share"] == pytest.approx(28 / 81)
    assert stages.loc["vision/sam", "busy_share"] == pytest.approx(1.0)


def test_hand_trace_on_cpu_uses_cpu_time_and_leaves_device_columns_empty():
    trace = hand_trace()
    trace["traceEvents"] = [e for e in trace["traceEvents"] if e.get("cat") not in ("kernel", "gpu_memcpy")]
    ops = operator_table(attribute_trace(trace))
    linear = _row(ops, "prefill", "aten::linear")
    assert linear["total_time_ms"] == pytest.approx(0.040) and linear["mean_time_ms"] == pytest.approx(0.040)
    assert ops["self_device_ms"].isna().all() and ops["total_device_ms"].isna().all()


def test_load_trace_reads_gzip(tmp_path):
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump(hand_trace(), handle)
    assert load_trace(path) == hand_trace()


# --- the real profiled pass on the tiny DeepSeek-OCR-2 ------------------------------------------------


@pytest.fixture(scope="module")
def workload():
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose("config", overrides=["model.image_mode=global768", "dataset.num_pages=1"])
    return build_workload(cfg.model, load_pages(cfg.dataset), torch.device("cpu"), 0)


@pytest.fixture(scope="module")
def profiled(workload, tmp_path_factory):
    hooks_before = {stage: (len(m._forward_pre_hooks), len(m._forward_hooks))
                    for stage, m in workload.stage_modules.items()}
    result = run_profiled_pass(workload, num_inputs=1, decode_steps=DECODE_STEPS,
                               run_dir=tmp_path_factory.mktemp("profiled_run"), top_n=5)
    hooks_after = {stage: (len(m._forward_pre_hooks), len(m._forward_hooks))
                   for stage, m in workload.stage_modules.items()}
    assert hooks_after == hooks_before, "the stage hooks must be removed after the pass"
    return result


@pytest.fixture(scope="module")
def trace_events(profiled):
    with gzip.open(profiled.trace_path, "rt") as handle:
        return json.load(handle)["traceEvents"]


def test_trace_artifact_is_gzipped_chrome_trace_with_stage_ranges(profiled, trace_events, workload):
    assert profiled.trace_path.name == "trace.json.gz"
    ranges = Counter(e["name"] for e in trace_events if e.get("cat") == "user_annotation"
                     and e["name"].startswith("stage:"))
    expected = {"stage:prefill": 1, "stage:decode": DECODE_STEPS}
    expected.update({f"stage:{stage}": 1 for stage in workload.stage_modules})
    assert ranges == expected
    assert profiled.event_count == len(trace_events)


def _brute_force_stage(ts: float, ranges: list[tuple[float, float, str, float]]) -> str:
    """Innermost (shortest) stage range containing ts, by a plain scan."""
    inside = [(dur, stage) for start, end, stage, dur in ranges if start <= ts < end]
    return min(inside)[1] if inside else "other"


def test_every_operator_is_charged_to_its_innermost_stage(profiled, trace_events):
    ops = profiled.operators
    assert ops["stage"].notna().all() and (ops["stage"] != "").all()
    ranges = [(e["ts"], e["ts"] + e["dur"], e["name"][len("stage:"):], e["dur"]) for e in trace_events
              if e.get("cat") == "user_annotation" and e["name"].startswith("stage:")]
    reference = Counter((_brute_force_stage(e["ts"], ranges), e["name"]) for e in trace_events
                        if e.get("cat") == "cpu_op")
    measured = {(row.stage, row.name): row.calls for row in ops.itertuples()}
    assert measured == dict(reference)
    # SAM's patch embedding is the model's only convolution: it must land in vision/sam, not prefill.
    assert set(ops.loc[ops["name"] == "aten::conv2d", "stage"]) == {"vision/sam"}
    assert {"prefill", "vision/sam", "vision/encoder", "vision/projector", "decode"} <= set(ops["stage"])


def test_stage_time_is_accounted_for_by_operators_substages_and_gaps(profiled, trace_events):
    """cpu_ms of a stage = its operators' self time + other events' self time + sub-stages + host gap.

    Operator self times come from the operator table (the output under test); the host gap is the
    stage ranges' own self time from the nesting, computed independently of stage attribution, so an
    operator charged to the wrong stage breaks the sum for two stages. Tolerance: ns rounding per event.
    """
    stages = profiled.stage_times.set_index("stage")
    op_self = profiled.operators.groupby("stage")["self_cpu_ms"].sum()
    tolerance = ROUNDING_MS_PER_EVENT * len(trace_events)
    for stage, row in stages.iterrows():
        accounted = op_self.get(stage, 0.0) + row["other_self_cpu_ms"] + row["substage_cpu_ms"] + row["host_gap_ms"]
        assert accounted == pytest.approx(row["cpu_ms"], abs=tolerance), stage
        assert row["host_gap_ms"] >= -tolerance
    vision = [s for s in stages.index if s.startswith("vision/")]
    assert stages.loc["prefill", "substage_cpu_ms"] == pytest.approx(stages.loc[vision, "cpu_ms"].sum())


def test_profiled_stage_ms_per_input_and_per_decode_step(profiled):
    stages = profiled.stage_times.set_index("stage")
    ms = profiled.profiled_stage_ms
    assert profiled.time_basis == "cpu_range"
    assert ms["prefill"] == pytest.approx(stages.loc["prefill", "cpu_ms"])
    assert ms[DECODE_STEP] == pytest.approx(stages.loc["decode", "cpu_ms"] / DECODE_STEPS)
    assert ms["vision"] == pytest.approx(sum(ms[s] for s in ("vision/sam", "vision/encoder", "vision/projector")))
    assert ms["vision"] < ms["prefill"]
    record = profiled.metrics_record()
    assert record["stage_ms"] == ms and record["trace"] == "trace.json.gz"
    assert profiled.busy_share == {} and record["busy_share"] == {}, "no device, no busy share"
    json.dumps(record, allow_nan=True)


def test_profiler_overhead_ratios_and_names():
    profiled = {"prefill": 30.0, "vision/sam": 12.0, DECODE_STEP: 3.0, "vision/encoder": 5.0}
    summary = {"prefill_ms": {"mean": 20.0}, "vision_sam_ms": {"mean": 8.0}, "decode_step_ms": {"mean": 2.0},
               "vision_encoder_ms": {"mean": 0.0}, "decode_ms": {"mean": 14.0}}
    timed = timed_stage_ms(summary, profiled)
    assert timed == {"prefill": 20.0, "vision/sam": 8.0, DECODE_STEP: 2.0, "vision/encoder": 0.0}
    ratios = profiler_overhead(profiled, timed)
    assert ratios == {"overhead/prefill_ratio": 1.5, "overhead/vision_sam_ratio": 1.5,
                      "overhead/decode_step_ratio": 1.5}, "a zero timed time gives no ratio"


def test_operator_artifacts(profiled):
    run_dir = profiled.trace_path.parent
    names = {p.name for p in profiled.artifacts}
    assert names == {"trace.json.gz", "operators.csv", "operators.md"}, "kernels.csv only on a GPU"
    csv = pd.read_csv(run_dir / "operators.csv")
    assert len(csv) == len(profiled.operators) and list(csv.columns) == OPERATOR_COLUMNS
    assert csv["self_cpu_memory_bytes"].notna().all(), "profile_memory is on by default"
    text = (run_dir / "operators.md").read_text()
    for stage in ("prefill", "vision/sam", "decode"):
        top = profiled.operators[profiled.operators["stage"] == stage].nlargest(1, "total_time_ms").iloc[0]
        assert f"## Stage {stage}: top 5 operators" in text
        assert top["name"] in text


def test_bad_settings_are_input_errors(workload, tmp_path):
    with pytest.raises(InputError, match="inputs=0"):
        run_profiled_pass(workload, num_inputs=0, decode_steps=1, run_dir=tmp_path)
    with pytest.raises(InputError, match="decode_steps=-1"):
        run_profiled_pass(workload, num_inputs=1, decode_steps=-1, run_dir=tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_profiled_pass_on_gpu_attributes_kernels(tmp_path):
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose("config", overrides=["model.image_mode=global768", "dataset.num_pages=1"])
    gpu_workload = build_workload(cfg.model, load_pages(cfg.dataset), torch.device("cuda"), 0)
    result = run_profiled_pass(gpu_workload, num_inputs=1, decode_steps=DECODE_STEPS, run_dir=tmp_path)
    assert result.time_basis == "device_span" and (tmp_path / "kernels.csv").exists()
    kernels = result.kernels
    assert len(kernels) and kernels["device_ms"].gt(0).all()
    assert {"prefill", "decode"} <= set(kernels["stage"])
    in_stages = kernels[kernels["stage"] != "other"]["device_ms"].sum()
    assert in_stages / kernels["device_ms"].sum() > 0.99, "kernels are launched inside the stage ranges"
    ops = result.operators
    assert ops["total_device_ms"].notna().all() and (ops["total_time_ms"] == ops["total_device_ms"]).all()
    for stage in ("prefill", DECODE_STEP, "vision/sam"):
        assert math.isfinite(result.profiled_stage_ms[stage]) and result.profiled_stage_ms[stage] > 0
    stages = result.stage_times.set_index("stage")
    # Device time inside a stage cannot exceed its device span (one stream executes kernels in order).
    assert (stages["device_busy_ms"] <= stages["device_span_ms"] * 1.001 + 1e-6).all()
    assert stages["busy_share"].between(0, 1.001).all()
    busy = result.busy_share
    assert busy["decode"] == pytest.approx(stages.loc["decode", "busy_share"])
    vision = [s for s in stages.index if s.startswith("vision/")]
    assert busy["vision"] == pytest.approx(stages.loc[vision, "device_busy_ms"].sum() / stages.loc[vision, "device_span_ms"].sum())
    assert np.isfinite(stages["device_span_ms"]).all()
