"""Tests for the profiled pass and the trace post-processing (operators by stage), CPU only.

A hand-written trace with known answers checks the attribution rules exactly (nesting, self times,
kernels joined by correlation id, memory, `other`); the tiny DeepSeek-OCR-2 checks the real pass:
trace artifact, stage ranges from module hooks, innermost-stage attribution against a brute-force
reference, the per-stage time accounting, the operator table against torch.profiler's own
key_averages() of the same profile, and the profiled stages as the run record carries them.
"""

from __future__ import annotations

import gzip
import json
import math
import types
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
import torch
from torch.profiler import profile

from conftest import requires_transformers5
from llm_perf_opt.analysis.operators import (
    OPERATOR_COLUMNS,
    attribute_trace,
    kernel_table,
    load_trace,
    operator_table,
    stage_time_table,
)
from llm_perf_opt.assembly import ProfiledTables, RunParts, build_record
from llm_perf_opt.config import compose
from llm_perf_opt.data import load_pages
from llm_perf_opt.errors import InputError
from llm_perf_opt.models import build_workload
from llm_perf_opt.passes.counted import formula_operator_names
from llm_perf_opt.passes.profiled import run_profiled_pass
from llm_perf_opt.record import ProfiledPassInfo, RunInfo, WorkloadInfo
from llm_perf_opt.schema import StageTree

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
    """Times in us. prefill [0,100) holds linear (addmm + t + view) and add; vision_sam [45,80) holds conv2d."""
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
        _x("user_annotation", "stage:vision_sam", 45, 35),
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
    # Innermost stage: conv2d is in vision_sam (not prefill); adds in prefill and decode; empty outside.
    conv = _row(ops, "vision_sam", "aten::conv2d")
    assert conv["self_cpu_ms"] == pytest.approx(0.022) and conv["total_device_ms"] == pytest.approx(0.010)
    assert _row(ops, "prefill", "aten::add")["total_device_ms"] == pytest.approx(0.003)
    assert _row(ops, "decode", "aten::add")["total_device_ms"] == pytest.approx(0.002)
    assert _row(ops, "other", "aten::empty")["calls"] == 1
    assert _row(ops, "prefill", "aten::mul")["calls"] == 1, "stage by time on any thread"
    assert set(ops[ops["name"] == "aten::conv2d"]["stage"]) == {"vision_sam"}
    # Memory: bytes charged to the innermost op containing the allocator event.
    assert addmm["self_cpu_memory_bytes"] == 1024 and conv["self_cpu_memory_bytes"] == -512
    assert linear["self_cpu_memory_bytes"] == 0
    # One level of the tree: linear is a top-level call (its parent is the stage range) with its kernels'
    # time; addmm, t and view run inside it and have no top-level calls.
    assert (linear["top_level_calls"], linear["top_level_ms"]) == (1, pytest.approx(0.015))
    assert all(_row(ops, "prefill", n)["top_level_calls"] == 0 for n in ("aten::addmm", "aten::t", "aten::view"))
    assert conv["top_level_calls"] == 1 and _row(ops, "prefill", "aten::mul")["top_level_calls"] == 1

    kernels = kernel_table(attribution)
    assert _row(kernels, "prefill", "gemm_kernel")["device_ms"] == pytest.approx(0.015)
    assert _row(kernels, "vision_sam", "conv_kernel")["device_ms"] == pytest.approx(0.010)
    assert _row(kernels, "other", "Memcpy HtoD")["calls"] == 1, "a kernel without its launch is 'other'"

    stages = stage_time_table(attribution).set_index("stage")
    assert list(stages.index) == ["prefill", "vision_sam", "decode"]
    # Device span of prefill: first kernel start (10) to last end (91) among kernels launched inside it.
    assert stages.loc["prefill", "profiled_ms"] == pytest.approx(0.081)
    assert stages.loc["vision_sam", "profiled_ms"] == pytest.approx(0.010)
    assert stages.loc["prefill", "cpu_ms"] == pytest.approx(0.100)
    assert stages.loc["prefill", "substage_cpu_ms"] == pytest.approx(0.035)
    # Prefill's own time outside linear (40), vision_sam (35) and add (5) is 20 us.
    assert stages.loc["prefill", "host_gap_ms"] == pytest.approx(0.020)
    # Busy share: kernels of prefill and of its nested vision_sam (15 + 3 + 10 us) over its 81 us span.
    assert stages.loc["prefill", "device_ms"] == pytest.approx(0.018)
    assert stages.loc["prefill", "device_busy_ms"] == pytest.approx(0.028)
    assert stages.loc["prefill", "busy_share"] == pytest.approx(28 / 81)
    assert stages.loc["vision_sam", "busy_share"] == pytest.approx(1.0)


def test_hand_trace_on_cpu_uses_cpu_time_and_leaves_device_columns_empty():
    trace = hand_trace()
    trace["traceEvents"] = [e for e in trace["traceEvents"] if e.get("cat") not in ("kernel", "gpu_memcpy")]
    ops = operator_table(attribute_trace(trace))
    linear = _row(ops, "prefill", "aten::linear")
    assert linear["total_time_ms"] == pytest.approx(0.040) and linear["mean_time_ms"] == pytest.approx(0.040)
    assert ops["self_device_ms"].isna().all() and ops["total_device_ms"].isna().all()
    assert linear["top_level_ms"] == pytest.approx(0.040) and _row(ops, "prefill", "aten::addmm")["top_level_ms"] == 0


def test_load_trace_reads_gzip(tmp_path):
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump(hand_trace(), handle)
    assert load_trace(path) == hand_trace()


# --- the real profiled pass on the tiny DeepSeek-OCR-2 ------------------------------------------------


def _settings(inputs: int = 1, decode_steps: int = DECODE_STEPS, record_shapes: bool = False):
    """The `profiling.operators` section the pass reads (inputs, decode_steps, record_shapes)."""
    return types.SimpleNamespace(inputs=inputs, decode_steps=decode_steps, record_shapes=record_shapes)


def _tiny_deepseek(device: str):
    cfg = compose("config", ["model.image_mode=global768", "dataset.num_pages=1", f"device={device}"])
    return build_workload(cfg.model, load_pages(cfg.dataset), torch.device(device), 0)


@pytest.fixture(scope="module")
def workload():
    return _tiny_deepseek("cpu")


@pytest.fixture(scope="module")
def profiled(workload, tmp_path_factory):
    hooks_before = {stage: (len(m._forward_pre_hooks), len(m._forward_hooks))
                    for stage, m in workload.stage_modules.items()}
    result = run_profiled_pass(workload, _settings(), tmp_path_factory.mktemp("profiled_run"))
    hooks_after = {stage: (len(m._forward_pre_hooks), len(m._forward_hooks))
                   for stage, m in workload.stage_modules.items()}
    assert hooks_after == hooks_before, "the stage hooks must be removed after the pass"
    return result


@pytest.fixture(scope="module")
def trace_events(profiled):
    with gzip.open(profiled.trace_path, "rt") as handle:
        return json.load(handle)["traceEvents"]


def _record(tree: StageTree, **parts):
    """The run record assembled from `parts` alone (everything else absent)."""
    workload = WorkloadInfo(family="test", dtype="fp32", device="cpu", new_tokens=3, warmup=0, repeats=1, inputs=[])
    return build_record(RunParts(tree=tree, run=RunInfo(
        run_dir="run", run_uid="test-run", started_at="2025-01-01T00:00:00+00:00"),
                                 workload=workload, env={}, **parts))


def _info(inputs: int, decode_steps: int, device_type: str = "cpu") -> ProfiledPassInfo:
    return ProfiledPassInfo(trace="trace.json.gz", inputs=inputs, decode_steps=decode_steps, device_type=device_type,
                            time_basis="device_span" if device_type == "cuda" else "cpu_range", event_count=0)


@requires_transformers5
def test_trace_artifact_is_gzipped_chrome_trace_with_stage_ranges(profiled, trace_events, workload):
    assert profiled.trace_path.name == "trace.json.gz"
    # The pass writes the trace and nothing else (tables go to the run directory's sink; no temp file left).
    assert [p.name for p in profiled.trace_path.parent.iterdir()] == ["trace.json.gz"]
    ranges = Counter(e["name"] for e in trace_events if e.get("cat") == "user_annotation"
                     and e["name"].startswith("stage:"))
    expected = {"stage:prefill": 1, "stage:decode": DECODE_STEPS}
    expected.update({f"stage:{stage}": 1 for stage in workload.stage_modules})
    assert ranges == expected
    assert set(workload.stage_modules) == {"vision_sam", "vision_encoder", "vision_projector"}
    assert profiled.event_count == len(trace_events)
    assert (profiled.num_inputs, profiled.decode_steps, profiled.device_type) == (1, DECODE_STEPS, "cpu")
    assert list(profiled.operators.columns) == OPERATOR_COLUMNS
    assert profiled.operators["self_cpu_memory_bytes"].notna().all(), "profile_memory is on by default"
    assert profiled.kernels.empty, "no device activity on a CPU run"


def _brute_force_stage(ts: float, ranges: list[tuple[float, float, str, float]]) -> str:
    """Innermost (shortest) stage range containing ts, by a plain scan."""
    inside = [(dur, stage) for start, end, stage, dur in ranges if start <= ts < end]
    return min(inside)[1] if inside else "other"


@requires_transformers5
def test_every_operator_is_charged_to_its_innermost_stage(profiled, trace_events):
    ops = profiled.operators
    assert ops["stage"].notna().all() and (ops["stage"] != "").all()
    ranges = [(e["ts"], e["ts"] + e["dur"], e["name"][len("stage:"):], e["dur"]) for e in trace_events
              if e.get("cat") == "user_annotation" and e["name"].startswith("stage:")]
    reference = Counter((_brute_force_stage(e["ts"], ranges), e["name"]) for e in trace_events
                        if e.get("cat") == "cpu_op")
    measured = {(row.stage, row.name): row.calls for row in ops.itertuples()}
    assert measured == dict(reference)
    # SAM's patch embedding is the model's only convolution: it must land in vision_sam, not prefill.
    assert set(ops.loc[ops["name"] == "aten::conv2d", "stage"]) == {"vision_sam"}
    assert {"prefill", "vision_sam", "vision_encoder", "vision_projector", "decode"} <= set(ops["stage"])


@requires_transformers5
def test_stage_time_is_accounted_for_by_operators_substages_and_gaps(profiled, trace_events, workload):
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
    vision = [s.key for s in workload.stages.children("vision")]
    assert vision == ["vision_sam", "vision_encoder", "vision_projector"]
    assert stages.loc["prefill", "substage_cpu_ms"] == pytest.approx(stages.loc[vision, "cpu_ms"].sum())


@requires_transformers5
def test_record_profiled_stages_per_input_and_per_decode_step(profiled, workload):
    """The run record's profiled view of the real pass: per execution, groups summed, nothing on a device."""
    stages = profiled.stage_times.set_index("stage")
    tables = ProfiledTables(profiled.operators, profiled.stage_times, _info(1, DECODE_STEPS),
                            formula_operator_names())
    record = _record(workload.stages, profiled=tables)
    per = {s.key: s.profiled.per_execution_ms for s in record.stages if s.profiled is not None}
    assert profiled.time_basis == "cpu_range"
    assert per["prefill"] == pytest.approx(stages.loc["prefill", "cpu_ms"])
    assert per["decode"] == pytest.approx(stages.loc["decode", "cpu_ms"] / DECODE_STEPS)
    assert record.stage("decode").profiled.ranges == DECODE_STEPS
    subs = ("vision_sam", "vision_encoder", "vision_projector")
    assert per["vision"] == pytest.approx(sum(stages.loc[s, "cpu_ms"] for s in subs))
    assert per["vision"] < per["prefill"]
    assert "e2e" not in per, "e2e has no range of its own and is no group"
    for stage in record.stages:
        if stage.profiled is not None:
            assert stage.profiled.busy_share is None, "no device, no busy share"
            assert stage.profiled.profiler_overhead_ratio is None, "no timed samples, no overhead ratio"
    # FLOP coverage on real operators: every stage runs matmuls/attention (counted) and elementwise ops (not),
    # so its share is strictly between 0 and 1; 1.0 would mean the registry's names miss the profiler's.
    for stage in ("prefill", "decode", *subs):
        assert 0.0 < record.stage(stage).profiled.no_formula_share < 1.0, stage


def test_profiler_overhead_ratios_and_names():
    """Per execution over the timed mean of the same stage; decode per step against decode_step_ms."""
    tree = StageTree.from_paths([("vision", "sam"), ("vision", "encoder")])
    nan = float("nan")
    stage_times = pd.DataFrame([  # 2 profiled inputs, 2 decode ranges: per execution 30, 12, 5 and 3 ms
        {"stage": "prefill", "ranges": 2, "profiled_ms": 60.0, "cpu_ms": 60.0},
        {"stage": "vision_sam", "ranges": 2, "profiled_ms": 24.0, "cpu_ms": 24.0},
        {"stage": "vision_encoder", "ranges": 2, "profiled_ms": 10.0, "cpu_ms": 10.0},
        {"stage": "decode", "ranges": 2, "profiled_ms": 6.0, "cpu_ms": 6.0},
    ]).assign(device_span_ms=nan, device_busy_ms=nan)
    operators = pd.DataFrame({"stage": ["vision_sam", "vision_sam"], "name": ["aten::convolution", "aten::copy_"],
                              "self_cpu_ms": [9.0, 3.0], "self_device_ms": [nan, nan]})
    samples = pd.DataFrame({"prefill_ms": [18.0, 22.0], "vision_sam_ms": [8.0, 8.0], "vision_encoder_ms": [0.0, 0.0],
                            "vision_ms": [8.0, 8.0], "decode_ms": [14.0, 14.0], "e2e_ms": [40.0, 40.0]})
    steps = pd.DataFrame({"decode_step_ms": [1.0, 3.0, 2.0, 2.0]})
    record = _record(tree, samples=samples, decode_steps=steps,
                     profiled=ProfiledTables(operators, stage_times, _info(2, 2), formula_operator_names()))
    ratio = {s.key: s.profiled.profiler_overhead_ratio for s in record.stages if s.profiled is not None}
    assert ratio["prefill"] == pytest.approx(1.5)
    assert ratio["vision_sam"] == pytest.approx(1.5)
    assert ratio["decode"] == pytest.approx(1.5), "per step, not per decode_ms"
    assert ratio.get("vision_encoder") is None, "a zero timed time gives no ratio"
    # A group: its children's summed profiled time over its own timed mean (vision_ms = the children's sum).
    assert record.stage("vision").profiled.per_execution_ms == pytest.approx(17.0)
    assert ratio["vision"] == pytest.approx(17.0 / 8.0)
    assert record.stage("vision_sam").profiled.no_formula_share == pytest.approx(0.25)
    assert not [k for k in record.metrics if "overhead" in k], "overhead stays in metrics.json and report.md"


# --- the operator table against torch.profiler's own totals -----------------------------------------


HOST_CATEGORIES = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver")


def _merged_by_key_averages(events: list[dict]) -> Counter:
    """Per name, the calls key_averages() folds into their parent (torch's EventList._remove_dup_nodes).

    torch nests each thread's host events (operators, record_function ranges, CUDA runtime/driver calls)
    by interval, as the trace shows them, and then drops an event whose direct parent has the same name
    and no other child (an op re-dispatching to itself: aten::sort -> aten::sort, aten::div_ -> aten::div_).
    The parent keeps the child's children, so its self time absorbs the child's and the self time summed
    over a name is unchanged; only the call count drops by one per such pair. Counted here by a plain
    stack walk of the raw trace, independently of analysis.operators.
    """
    by_thread: dict[tuple, list[tuple[int, int, str]]] = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in HOST_CATEGORIES:
            start = round(e["ts"] * 1000)
            by_thread[(e["pid"], e["tid"])].append((start, start + round(e["dur"] * 1000), e["name"]))
    merged: Counter = Counter()
    for items in by_thread.values():
        items.sort(key=lambda item: (item[0], -item[1]))
        parent_of: list[int] = []
        stack: list[int] = []
        for index, (start, end, _) in enumerate(items):
            while stack and (start >= items[stack[-1]][1] or end > items[stack[-1]][1]):
                stack.pop()
            parent_of.append(stack[-1] if stack else -1)
            stack.append(index)
        children = Counter(p for p in parent_of if p >= 0)
        for index, parent in enumerate(parent_of):
            if parent >= 0 and items[parent][2] == items[index][2] and children[parent] == 1:
                merged[items[index][2]] += 1
    return merged


# Trace categories of key_averages() rows that are not operators: the pass's `stage:*` record_function
# ranges (on a GPU also mirrored on the device track as gpu_user_annotation), CUDA runtime/driver calls
# and synchronisations (a CUDA build of torch makes some even for CPU work, e.g. cudaStreamIsCapturing),
# device activities (kernels, copies, memsets: rows of their own in key_averages() on a GPU), the
# profiler's own bookkeeping (`Activity Buffer Request`, category overhead) and allocator events
# (`[memory]`, carried by the table as self_cpu_memory_bytes).
NOT_OPERATORS = {"user_annotation", "gpu_user_annotation", "cuda_runtime", "cuda_driver", "cuda_sync", "kernel",
                 "gpu_memcpy", "gpu_memset", "overhead", "cpu_instant_event"}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
@requires_transformers5
def test_operator_table_matches_key_averages_of_the_same_profile(device, workload, tmp_path, monkeypatch):
    """Summed over stages, each operator's calls, self CPU time and self CPU memory equal key_averages()'s.

    The profile is the profiled pass's own, as the pipeline runs it (memory profiling on): its
    torch.profiler object is captured, so the table under test and the reference come from one recording.
    Left out of the comparison, from key_averages() only: rows whose events the trace files under a
    category other than cpu_op (NOT_OPERATORS); every key_averages() row is either an operator of the
    table or one of those. Calls: exact, after adding back the self-nested calls key_averages() folds into
    their parent (_merged_by_key_averages). Self CPU time: both sides hold the same integer-nanosecond
    durations; tolerance 1 ns per call (abs 1e-6 ms x calls) for rounding a duration to whole ns (seen:
    ~1e-13 ms), after adding back the profiler's buffer requests torch takes out of an operator (a GPU
    trace only, see below). Self CPU memory: exact (integer bytes).
    """
    import llm_perf_opt.passes.profiled as profiled_module

    captured = []

    def capturing_profile(*args, **kwargs):
        captured.append(profile(*args, **kwargs))
        return captured[-1]

    monkeypatch.setattr(profiled_module, "profile", capturing_profile)
    profiled_workload = workload if device == "cpu" else _tiny_deepseek(device)
    result = run_profiled_pass(profiled_workload, _settings(), tmp_path)
    assert len(captured) == 1
    with gzip.open(result.trace_path, "rt") as handle:
        events = json.load(handle)["traceEvents"]
    categories: dict[str, set] = defaultdict(set)
    for e in events:
        if "cat" in e and "name" in e:
            categories[e["name"]].add(e["cat"])
    averages = {e.key: e for e in captured[0].key_averages()}
    excluded = {name for name in averages if categories[name] and categories[name] <= NOT_OPERATORS}
    assert {name for name in excluded if name.startswith("stage:")} == {f"stage:{s}" for s in (
        "prefill", "decode", *profiled_workload.stage_modules)}
    assert "[memory]" in excluded, "memory profiling is on in the pass"
    reference = {name: e for name, e in averages.items() if name not in excluded}
    table = result.operators.groupby("name").agg(calls=("calls", "sum"), self_cpu_ms=("self_cpu_ms", "sum"),
                                                 self_cpu_memory_bytes=("self_cpu_memory_bytes", "sum"))
    assert set(result.operators["stage"]) >= {"prefill", "vision_sam", "vision_encoder", "vision_projector",
                                              "decode"}, "the comparison spans every stage"
    unexplained = {name: sorted(categories[name]) for name in set(reference) ^ set(table.index)}
    assert not unexplained, f"rows on one side only (trace categories): {unexplained}"
    merged = _merged_by_key_averages(events)
    assert merged, "this model has self-nested calls (aten::sort, aten::div_): the fold is exercised"
    # The profiler's own buffer requests (`Activity Buffer Request`, category overhead, on a GPU) sit on
    # another trace thread; torch makes them children of the operator running at the time and takes them
    # out of its self time, the table (which nests per trace thread) leaves them in. Added back here.
    overhead_names = {name for name, cats in categories.items() if cats == {"overhead"}}
    overhead_us: Counter = Counter()
    for event in captured[0].events():
        overhead_us[event.key] += sum(c.cpu_time_total for c in event.cpu_children if c.name in overhead_names)
    for name, row in table.iterrows():
        ref = reference[name]
        assert row["calls"] == ref.count + merged[name], name
        expected_ms = (ref.self_cpu_time_total + overhead_us[name]) / 1e3
        assert row["self_cpu_ms"] == pytest.approx(expected_ms, abs=1e-6 * row["calls"]), name
        assert row["self_cpu_memory_bytes"] == ref.self_cpu_memory_usage, name
    assert table["calls"].sum() == sum(e.count for e in reference.values()) + sum(merged[n] for n in reference)


@requires_transformers5
def test_bad_settings_are_input_errors(workload, tmp_path):
    with pytest.raises(InputError, match="inputs=0"):
        run_profiled_pass(workload, _settings(inputs=0, decode_steps=1), tmp_path)
    with pytest.raises(InputError, match="decode_steps=-1"):
        run_profiled_pass(workload, _settings(inputs=1, decode_steps=-1), tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_profiled_pass_on_gpu_attributes_kernels(tmp_path):
    gpu_workload = _tiny_deepseek("cuda")
    result = run_profiled_pass(gpu_workload, _settings(), tmp_path)
    assert result.time_basis == "device_span" and result.device_type == "cuda"
    kernels = result.kernels
    assert len(kernels) and kernels["device_ms"].gt(0).all()
    assert {"prefill", "decode"} <= set(kernels["stage"])
    in_stages = kernels[kernels["stage"] != "other"]["device_ms"].sum()
    assert in_stages / kernels["device_ms"].sum() > 0.99, "kernels are launched inside the stage ranges"
    ops = result.operators
    assert ops["total_device_ms"].notna().all() and (ops["total_time_ms"] == ops["total_device_ms"]).all()
    stages = result.stage_times.set_index("stage")
    for stage in ("prefill", "decode", "vision_sam"):
        assert math.isfinite(stages.loc[stage, "profiled_ms"]) and stages.loc[stage, "profiled_ms"] > 0
    assert (stages["profiled_ms"] == stages["device_span_ms"]).all()
    # Device time inside a stage cannot exceed its device span (one stream executes kernels in order).
    assert (stages["device_busy_ms"] <= stages["device_span_ms"] * 1.001 + 1e-6).all()
    assert stages["busy_share"].between(0, 1.001).all()
    assert np.isfinite(stages["device_span_ms"]).all()
    tables = ProfiledTables(result.operators, result.stage_times, _info(1, DECODE_STEPS, "cuda"),
                            formula_operator_names())
    record = _record(gpu_workload.stages, profiled=tables)
    assert record.stage("decode").profiled.busy_share == pytest.approx(stages.loc["decode", "busy_share"])
    vision = [s.key for s in gpu_workload.stages.children("vision")]
    assert record.stage("vision").profiled.busy_share == pytest.approx(
        stages.loc[vision, "device_busy_ms"].sum() / stages.loc[vision, "device_span_ms"].sum())
    # On a GPU coverage is by self device time: prefill and decode run counted matmuls and uncounted
    # elementwise kernels; a sub-stage may be all matmul (the projector is one linear layer: share 0).
    for stage in ("prefill", "decode"):
        assert 0.0 < record.stage(stage).profiled.no_formula_share < 1.0, stage
    for stage in vision:
        assert 0.0 <= record.stage(stage).profiled.no_formula_share < 1.0, stage
