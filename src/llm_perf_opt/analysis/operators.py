"""Operators and kernels attributed to stages, from a Chrome trace's events (not `key_averages()`).

`key_averages()` sums an operator over the whole profile, so it cannot say how much of `aten::mm`
ran in vision_sam and how much in decode. Here every event of the trace is placed by its interval:

- Stage ranges are the `user_annotation` events named `stage:<name>` (record_function ranges the
  profiled pass opens: `stage:prefill`, `stage:vision_sam`, ..., `stage:decode`). An event belongs to
  the **innermost** stage range containing its start time (any thread: the stages run one after
  another, so time alone decides). Inside `stage:prefill` but outside every sub-stage: `prefill`.
  Outside every stage range: `other`.
- Host events nest on their thread (`cpu_op`, `user_annotation`, `cuda_runtime`, `cuda_driver`).
  Direct parents come from interval nesting: half-open intervals [ts, ts + dur), sorted by start
  (longer first on ties); an item's depth is the number of earlier intervals still open at its start,
  and its parent is the latest earlier item one level up. Self time = duration minus the durations
  of its direct children (the definition `key_averages()` uses).
- Device activities (`kernel`, `gpu_memcpy`, `gpu_memset`) are joined to the runtime call that
  launched them through `args.correlation` (the id the `ac2g` flow arrows draw). The launch's stage
  is the kernel's stage; the launch's direct parent is the operator that launched it:
  self_device_ms = kernels launched directly by the op, total_device_ms = kernels launched by it or
  by its descendants. A kernel with no launch in the trace is `other` with no operator.
- Top level: an operator event whose direct parent is not an operator (a stage range, or nothing) is
  a call the model code made itself. top_level_calls / top_level_ms count those events only, with
  their inclusive time (device total on a GPU, CPU total otherwise): summed over a stage they never
  count one piece of work twice, and no top-level event lies inside another.
- Memory: with `profile_memory`, `[memory]` instant events carry the bytes (de)allocated; each is
  charged to the innermost host event containing it: self_cpu_memory_bytes (and, on a GPU,
  self_device_memory_bytes) is the net bytes an op allocated itself, as in `key_averages()`.

Timestamps are microseconds (floats with nanosecond decimals); they are converted to integer
nanoseconds once, so nesting tests are exact. Every step is vectorised (numpy sort / searchsorted /
bincount, pandas groupby): about one million events take a few seconds (benchmarks/
trace_postprocess_1m.py). Units: *_ms columns are milliseconds, *_bytes are bytes.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llm_perf_opt.analysis.gc_paused import gc_paused

STAGE_PREFIX = "stage:"
OTHER_STAGE = "other"
HOST_CATEGORIES = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
MEMORY_CATEGORY = "cpu_instant_event"
MEMORY_EVENT_NAME = "[memory]"
CPU_MEMORY_DEVICE_TYPE = 0  # args["Device Type"] of a [memory] event: 0 = CPU, 1 = CUDA

OPERATOR_COLUMNS = ["stage", "name", "calls", "self_cpu_ms", "total_cpu_ms", "self_device_ms", "total_device_ms",
                    "total_time_ms", "mean_time_ms", "self_cpu_memory_bytes", "self_device_memory_bytes",
                    "top_level_calls", "top_level_ms"]
KERNEL_COLUMNS = ["stage", "name", "calls", "device_ms", "mean_device_ms"]
STAGE_TIME_COLUMNS = ["stage", "ranges", "cpu_ms", "device_span_ms", "profiled_ms", "operator_self_cpu_ms",
                      "other_self_cpu_ms", "substage_cpu_ms", "host_gap_ms", "device_ms", "device_busy_ms",
                      "busy_share"]
_NS_PER_MS = 1e6


@dataclass
class TraceAttribution:
    """Every host and device event of a trace with its stage, parent and self time.

    host: one row per host interval or memory point (cat, name, thread, start_ns, dur_ns, bytes,
      device_type, correlation, parent, depth, self_ns, stage, total_device_ns, self_device_ns);
      `parent` is a row position or -1, `thread` a code for the (pid, tid) pair.
    device: one row per device activity (cat, name, thread, start_ns, dur_ns, correlation, launch,
      stage); `launch` is the host row of the launching runtime call or -1.
    stage_ranges: one row per `stage:` range instance (row, stage, start_ns, end_ns, stage_depth,
      parent_stage, cpu_ms, host_gap_ms, device_span_ms).
    """

    host: pd.DataFrame
    device: pd.DataFrame
    stage_ranges: pd.DataFrame
    stage_order: list[str]
    on_device: bool
    has_memory: bool
    misnested_events: int



def load_trace(path: str | Path) -> dict[str, Any]:
    """A Chrome trace as a dict; `.gz` files are decompressed (the profiled pass writes trace.json.gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle, gc_paused():
        return json.load(handle)


def stage_of_range(name: str) -> str:
    """'stage:vision_sam' -> 'vision_sam'."""
    return name[len(STAGE_PREFIX):]


def _direct_parents(group: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Direct parent (row position or -1) and depth of each interval, nesting only within `group`.

    Intervals are half-open [start, end). Zero-length items (instants, memory points) get half a
    nanosecond of length so they nest inside an interval that starts with them but never contain
    anything. Sorted by (start asc, end desc, row), the depth of item i is the number of earlier items
    whose end lies after i's start (for nested data, exactly its ancestors); the parent is the latest
    earlier item at depth - 1. Items that overlap without nesting (a broken trace) keep -1 and are
    counted in the third return value.
    """
    n = len(start_ns)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), 0
    base = start_ns.min()
    start2 = (start_ns - base) * 2
    end2 = np.maximum((end_ns - base) * 2, start2 + 1)
    span = int(end2.max()) + 2
    # Threads are laid end to end on one axis, so one sort handles them all.
    start2 = start2 + group.astype(np.int64) * span
    end2 = end2 + group.astype(np.int64) * span
    rows = np.arange(n, dtype=np.int64)
    order = np.lexsort((rows, -end2, start2))
    start_sorted, end_sorted = start2[order], end2[order]
    closed_before = np.searchsorted(np.sort(end_sorted), start_sorted, side="right")
    depth = rows - closed_before
    keys = np.sort(depth * n + rows)
    found = np.searchsorted(keys, (depth - 1) * n + rows, side="left") - 1
    candidate = keys[np.maximum(found, 0)]
    cand_pos = candidate % n
    has_parent = (depth > 0) & (found >= 0) & (candidate // n == depth - 1)
    nested = has_parent & (end_sorted[cand_pos] >= end_sorted)
    misnested = int((has_parent & ~nested).sum())
    parent = np.full(n, -1, dtype=np.int64)
    parent[order] = np.where(nested, order[cand_pos], -1)
    depth_out = np.empty(n, dtype=np.int64)
    depth_out[order] = depth
    return parent, depth_out, misnested


def _columns(picked: tuple[dict, ...] | list[dict], keys: tuple[str, ...]) -> list[tuple]:
    """Values of `keys` for each event, as one tuple per key (C-speed itemgetter; .get when keys are missing)."""
    if not picked:
        return [() for _ in keys]
    try:
        rows = list(map(itemgetter(*keys), picked))
    except KeyError:
        rows = [tuple(e.get(k) for k in keys) for e in picked]
    return list(zip(*rows)) if len(keys) > 1 else [tuple(rows)]


def _pick(events: list[dict], positions: np.ndarray) -> tuple[dict, ...]:
    if len(positions) == 0:
        return ()
    if len(positions) == 1:
        return (events[int(positions[0])],)
    return itemgetter(*positions.tolist())(events)


def _codes(values: tuple) -> tuple[np.ndarray, pd.Index]:
    codes, uniques = pd.factorize(pd.Series(values, dtype=object))
    return codes.astype(np.int64), pd.Index(uniques, dtype=object)


def _frame(columns: dict[str, tuple], cat: np.ndarray, categories: pd.Index) -> pd.DataFrame:
    """cat, name (categoricals), thread (int code of (pid, tid)), start_ns, dur_ns from raw event fields."""
    name_codes, names = _codes(columns["name"])
    pid_codes, _ = _codes(columns["pid"])
    tid_codes, _ = _codes(columns["tid"])
    return pd.DataFrame({
        "cat": pd.Categorical.from_codes(cat, categories=categories),
        "name": pd.Categorical.from_codes(name_codes, categories=names),
        # pid and tid together name a thread; a string key would cost a second per million events.
        "thread": pid_codes * (int(tid_codes.max(initial=0)) + 1) + tid_codes,
        "start_ns": np.rint(np.asarray(columns["ts"], dtype=float) * 1e3).astype(np.int64),
        "dur_ns": np.rint(np.asarray(columns["dur"], dtype=float) * 1e3).astype(np.int64),
    })


def _extract(events: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Host events (intervals, then memory points) and device activities as columns."""
    cat_codes, categories = _codes(tuple(e.get("cat") for e in events))
    categories = pd.Index([str(c) for c in categories], dtype=object)
    cat_index = {name: code for code, name in enumerate(categories)}

    def positions(wanted: Iterable[str]) -> np.ndarray:
        codes = [cat_index[c] for c in wanted if c in cat_index]
        return np.flatnonzero(np.isin(cat_codes, codes)) if codes else np.empty(0, np.int64)

    host_pos = positions(HOST_CATEGORIES)
    memory_pos = positions((MEMORY_CATEGORY,))
    memory_events = _pick(events, memory_pos)
    is_memory = np.fromiter((e.get("name") == MEMORY_EVENT_NAME for e in memory_events), bool, len(memory_events))
    memory_pos = memory_pos[is_memory]
    memory_events = tuple(e for e, keep in zip(memory_events, is_memory) if keep)
    device_pos = positions(DEVICE_CATEGORIES)

    # Host intervals and memory points share one frame: memory points nest like zero-length events.
    host_events = _pick(events, host_pos)
    keys = ("ts", "name", "pid", "tid")
    interval_fields = dict(zip(keys + ("dur",), _columns(host_events, keys + ("dur",))))
    point_fields = dict(zip(keys, _columns(memory_events, keys)))
    point_fields["dur"] = (0.0,) * len(memory_events)
    host = _frame({k: interval_fields[k] + point_fields[k] for k in interval_fields},
                  cat_codes[np.concatenate([host_pos, memory_pos])], categories)

    memory_args = [e.get("args") or {} for e in memory_events]
    n_host = len(host_events)
    host["bytes"] = np.concatenate([np.zeros(n_host), np.fromiter((a.get("Bytes", 0) for a in memory_args), float,
                                                                  len(memory_args))])
    host["device_type"] = np.concatenate([np.full(n_host, -1, np.int64),
                                          np.fromiter((a.get("Device Type", CPU_MEMORY_DEVICE_TYPE)
                                                       for a in memory_args), np.int64, len(memory_args))])
    correlation = np.full(len(host), -1, dtype=np.int64)
    launch_codes = [cat_index[c] for c in LAUNCH_CATEGORIES if c in cat_index]
    launch_rows = np.flatnonzero(np.isin(cat_codes[host_pos], launch_codes))
    correlation[launch_rows] = [(host_events[i].get("args") or {}).get("correlation", -1) for i in launch_rows]
    host["correlation"] = correlation

    device_events = _pick(events, device_pos)
    device = _frame(dict(zip(keys + ("dur",), _columns(device_events, keys + ("dur",)))), cat_codes[device_pos],
                    categories)
    device["correlation"] = np.fromiter(((e.get("args") or {}).get("correlation", -1) for e in device_events),
                                        np.int64, len(device_events))
    return host, device


def _attribute_stages(start_ns: np.ndarray, ranges: pd.DataFrame) -> np.ndarray:
    """Row position (in `ranges`) of the innermost stage range containing each start time, or -1.

    Stage ranges of one nesting level are disjoint, so one searchsorted per level finds the range a
    time falls in; deeper levels overwrite shallower ones.
    """
    owner = np.full(len(start_ns), -1, dtype=np.int64)
    for level in sorted(ranges["stage_depth"].unique()):
        level_rows = np.flatnonzero(ranges["stage_depth"].to_numpy() == level)
        level_rows = level_rows[np.argsort(ranges["start_ns"].to_numpy()[level_rows], kind="stable")]
        starts = ranges["start_ns"].to_numpy()[level_rows]
        ends = ranges["end_ns"].to_numpy()[level_rows]
        found = np.searchsorted(starts, start_ns, side="right") - 1
        inside = (found >= 0) & (start_ns < ends[np.maximum(found, 0)])
        owner[inside] = level_rows[found[inside]]
    return owner


def _stage_ranges(host: pd.DataFrame, start_ns: np.ndarray, dur_ns: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The `stage:` ranges (row, stage, start/end, depth among ranges, the enclosing range's stage)."""
    names = [n for n in host["name"].cat.categories if isinstance(n, str) and n.startswith(STAGE_PREFIX)]
    range_rows = np.flatnonzero(((host["cat"] == "user_annotation") & host["name"].isin(names)).to_numpy())
    ranges = pd.DataFrame({
        "row": range_rows,
        "stage": [stage_of_range(str(n)) for n in host["name"].to_numpy()[range_rows]],
        "start_ns": start_ns[range_rows],
        "end_ns": start_ns[range_rows] + dur_ns[range_rows],
    })
    range_parent, range_depth, _ = _direct_parents(np.zeros(len(ranges), np.int64), ranges["start_ns"].to_numpy(),
                                                   ranges["end_ns"].to_numpy())
    ranges["stage_depth"] = range_depth
    ranges["parent_stage"] = [ranges["stage"].iat[p] if p >= 0 else None for p in range_parent]
    return ranges, range_rows


def _device_times(host: pd.DataFrame, device: pd.DataFrame, parent: np.ndarray,
                  depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Device activities -> launching runtime call (correlation id): sets device["launch"]; returns the
    (total, self) device ns of every host row. Self: kernels whose launch is a direct child of the op;
    total: summed up the tree, deepest first."""
    has_parent = parent >= 0
    launches = np.flatnonzero(host["correlation"].to_numpy() >= 0)
    by_correlation = pd.Index(host["correlation"].to_numpy()[launches])
    keep = ~by_correlation.duplicated()
    found = pd.Index(by_correlation[keep]).get_indexer(device["correlation"].to_numpy())
    launch = np.where(found >= 0, launches[keep][np.maximum(found, 0)], -1)
    device["launch"] = launch
    has_launch = launch >= 0
    launch_device_ns = np.bincount(launch[has_launch], weights=device["dur_ns"].to_numpy()[has_launch],
                                   minlength=len(host))
    launch_has_parent = has_parent & (launch_device_ns > 0)
    self_device_ns = np.bincount(parent[launch_has_parent], weights=launch_device_ns[launch_has_parent],
                                 minlength=len(host))
    total_device_ns = launch_device_ns.copy()
    by_depth = np.argsort(-depth, kind="stable")
    depth_sorted = depth[by_depth]
    level_starts = np.flatnonzero(np.r_[True, depth_sorted[1:] != depth_sorted[:-1]])
    for begin, end in zip(level_starts, np.r_[level_starts[1:], len(by_depth)]):
        nodes = by_depth[begin:end]
        nodes = nodes[has_parent[nodes]]
        if len(nodes):
            np.add.at(total_device_ns, parent[nodes], total_device_ns[nodes])
    return total_device_ns, self_device_ns


def attribute_trace(trace: dict[str, Any]) -> TraceAttribution:
    """Stage, parent, self time and device time of every event of a Chrome trace (see module doc)."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    with gc_paused():
        host, device = _extract(events)
    on_device = len(device) > 0
    has_memory = bool((host["cat"] == MEMORY_CATEGORY).any())

    # Nesting per thread (pid, tid): direct parents, depth, self time.
    thread = host["thread"].to_numpy()
    start_ns = host["start_ns"].to_numpy()
    dur_ns = host["dur_ns"].to_numpy()
    parent, depth, misnested = _direct_parents(thread, start_ns, start_ns + dur_ns)
    if misnested:
        warnings.warn(f"{misnested} trace events overlap without nesting: they are kept but have no parent",
                      stacklevel=2)
    has_parent = parent >= 0
    child_ns = np.bincount(parent[has_parent], weights=dur_ns[has_parent], minlength=len(host))
    host["parent"] = parent
    host["depth"] = depth
    host["self_ns"] = dur_ns - child_ns

    ranges, range_rows = _stage_ranges(host, start_ns, dur_ns)
    stage_order = list(dict.fromkeys(ranges.sort_values("start_ns")["stage"]))
    owner = _attribute_stages(start_ns, ranges) if len(ranges) else np.full(len(host), -1, np.int64)
    stage_names = np.array(stage_order + [OTHER_STAGE], dtype=object)
    stage_code_of_range = np.array([stage_order.index(s) for s in ranges["stage"]], dtype=np.int64)
    host_stage_code = np.where(owner >= 0, stage_code_of_range[np.maximum(owner, 0)] if len(ranges) else 0,
                               len(stage_order))
    host["stage"] = pd.Categorical.from_codes(host_stage_code, categories=stage_names)

    stage_of_device = np.full(len(device), len(stage_order), dtype=np.int64)
    total_device_ns, self_device_ns = np.zeros(len(host)), np.zeros(len(host))
    if on_device:
        total_device_ns, self_device_ns = _device_times(host, device, parent, depth)
        launched = device["launch"].to_numpy() >= 0
        stage_of_device[launched] = host_stage_code[device["launch"].to_numpy()[launched]]
    else:
        device["launch"] = np.empty(0, np.int64)
    device["stage"] = pd.Categorical.from_codes(stage_of_device, categories=stage_names)
    host["total_device_ns"] = total_device_ns
    host["self_device_ns"] = self_device_ns

    ranges["cpu_ms"] = (ranges["end_ns"] - ranges["start_ns"]) / _NS_PER_MS
    ranges["host_gap_ms"] = host["self_ns"].to_numpy()[range_rows] / _NS_PER_MS
    ranges["device_span_ms"] = _device_spans(ranges, host, device) if on_device else np.nan
    return TraceAttribution(host=host, device=device, stage_ranges=ranges, stage_order=stage_order,
                            on_device=on_device, has_memory=has_memory, misnested_events=misnested)


def _device_spans(ranges: pd.DataFrame, host: pd.DataFrame, device: pd.DataFrame) -> np.ndarray:
    """Per stage range: last end minus first start of the device activities launched inside it (ms).

    This is the range's execution time on the device (what a CUDA event pair around it measures),
    not the host time spent launching. NaN when nothing was launched inside.
    """
    launched = device[device["launch"] >= 0]
    launch_ns = host["start_ns"].to_numpy()[launched["launch"].to_numpy()]
    order = np.argsort(launch_ns, kind="stable")
    launch_ns = launch_ns[order]
    kernel_start = launched["start_ns"].to_numpy()[order]
    kernel_end = kernel_start + launched["dur_ns"].to_numpy()[order]
    lo = np.searchsorted(launch_ns, ranges["start_ns"].to_numpy(), side="left")
    hi = np.searchsorted(launch_ns, ranges["end_ns"].to_numpy(), side="left")
    spans = np.full(len(ranges), np.nan)
    for i, (a, b) in enumerate(zip(lo, hi)):
        if b > a:
            spans[i] = (kernel_end[a:b].max() - kernel_start[a:b].min()) / _NS_PER_MS
    return spans


def operator_table(attribution: TraceAttribution) -> pd.DataFrame:
    """One row per (stage, operator name): calls, self/total CPU and device ms, memory (OPERATOR_COLUMNS).

    total_time_ms is the device total on a GPU trace and the CPU total otherwise; mean_time_ms is
    total_time_ms / calls. Device columns are NaN on a CPU trace, memory columns NaN without
    `profile_memory`. Rows are ordered by stage (trace order) then total_time_ms, largest first.
    """
    host = attribution.host
    ops = host[host["cat"] == "cpu_op"]
    memory = host[(host["cat"] == MEMORY_CATEGORY) & (host["parent"] >= 0)]
    memory_owner = memory["parent"].to_numpy()
    cpu_bytes = np.bincount(memory_owner, weights=np.where(memory["device_type"] == CPU_MEMORY_DEVICE_TYPE,
                                                           memory["bytes"], 0.0), minlength=len(host))
    device_bytes = np.bincount(memory_owner, weights=np.where(memory["device_type"] != CPU_MEMORY_DEVICE_TYPE,
                                                              memory["bytes"], 0.0), minlength=len(host))
    rows = ops.index.to_numpy()
    parents = ops["parent"].to_numpy()
    category = host["cat"].to_numpy()
    top_level = (parents < 0) | (category[np.maximum(parents, 0)] != "cpu_op")
    inclusive_ns = ops["total_device_ns"] if attribution.on_device else ops["dur_ns"]
    frame = pd.DataFrame({
        "stage": ops["stage"],
        "name": ops["name"],
        "self_cpu_ms": ops["self_ns"] / _NS_PER_MS,
        "total_cpu_ms": ops["dur_ns"] / _NS_PER_MS,
        "self_device_ms": ops["self_device_ns"] / _NS_PER_MS,
        "total_device_ms": ops["total_device_ns"] / _NS_PER_MS,
        "self_cpu_memory_bytes": cpu_bytes[rows],
        "self_device_memory_bytes": device_bytes[rows],
        "top_level_calls": top_level.astype(np.int64),
        "top_level_ms": np.where(top_level, inclusive_ns / _NS_PER_MS, 0.0),
    })
    table = (frame.groupby(["stage", "name"], observed=True, sort=False)
             .agg(calls=("self_cpu_ms", "size"), self_cpu_ms=("self_cpu_ms", "sum"),
                  total_cpu_ms=("total_cpu_ms", "sum"), self_device_ms=("self_device_ms", "sum"),
                  total_device_ms=("total_device_ms", "sum"),
                  self_cpu_memory_bytes=("self_cpu_memory_bytes", "sum"),
                  self_device_memory_bytes=("self_device_memory_bytes", "sum"),
                  top_level_calls=("top_level_calls", "sum"), top_level_ms=("top_level_ms", "sum"))
             .reset_index())
    if not attribution.on_device:
        table[["self_device_ms", "total_device_ms", "self_device_memory_bytes"]] = np.nan
    if not attribution.has_memory:
        table[["self_cpu_memory_bytes", "self_device_memory_bytes"]] = np.nan
    table["total_time_ms"] = table["total_device_ms"] if attribution.on_device else table["total_cpu_ms"]
    table["mean_time_ms"] = table["total_time_ms"] / table["calls"]
    table["stage"] = table["stage"].astype(str)
    return _order_by_stage(table[OPERATOR_COLUMNS], attribution.stage_order, "total_time_ms")


def kernel_table(attribution: TraceAttribution) -> pd.DataFrame:
    """One row per (stage, device activity name): calls, device_ms, mean_device_ms (KERNEL_COLUMNS)."""
    device = attribution.device
    if not len(device):
        return pd.DataFrame(columns=KERNEL_COLUMNS)
    frame = pd.DataFrame({"stage": device["stage"], "name": device["name"], "device_ms": device["dur_ns"] / _NS_PER_MS})
    table = (frame
             .groupby(["stage", "name"], observed=True, sort=False)
             .agg(calls=("device_ms", "size"), device_ms=("device_ms", "sum")).reset_index())
    table["mean_device_ms"] = table["device_ms"] / table["calls"]
    table["stage"] = table["stage"].astype(str)
    return _order_by_stage(table[KERNEL_COLUMNS], attribution.stage_order, "device_ms")


def _order_by_stage(table: pd.DataFrame, stage_order: list[str], by: str) -> pd.DataFrame:
    rank = {stage: i for i, stage in enumerate(stage_order + [OTHER_STAGE])}
    return (table.assign(_rank=table["stage"].map(rank))
            .sort_values(["_rank", by], ascending=[True, False], kind="stable")
            .drop(columns="_rank").reset_index(drop=True))


def stage_time_table(attribution: TraceAttribution) -> pd.DataFrame:
    """Per stage: how its profiled time splits (STAGE_TIME_COLUMNS, all ms summed over its ranges).

    cpu_ms = operator_self_cpu_ms + other_self_cpu_ms + substage_cpu_ms + host_gap_ms, where
    other_self_cpu_ms is the self time of non-operator host events (runtime calls, other
    annotations) and host_gap_ms is time inside the ranges but in no event (Python between ops).
    The identity holds exactly when all events sit on the ranges' thread and nest properly.
    profiled_ms is device_span_ms on a GPU trace (execution on the device) and cpu_ms otherwise;
    device_ms is the summed duration of the device activities charged to the stage itself;
    device_busy_ms adds those of the stages nested in it, and busy_share = device_busy_ms /
    device_span_ms is the fraction of the stage's device span in which a kernel ran (low: the device
    waits for the host between launches). Under the profiler host gaps grow, so busy_share is a lower
    bound of the unprofiled one. Device columns are NaN on a CPU trace.
    """
    ranges, host = attribution.stage_ranges, attribution.host
    if not len(ranges):
        return pd.DataFrame(columns=STAGE_TIME_COLUMNS)
    self_ms = host["self_ns"] / _NS_PER_MS
    is_range = np.zeros(len(host), bool)
    is_range[ranges["row"].to_numpy()] = True
    is_op = (host["cat"] == "cpu_op").to_numpy()
    op_self = self_ms[is_op].groupby(host["stage"][is_op], observed=True).sum()
    other = ~is_op & ~is_range
    other_self = self_ms[other].groupby(host["stage"][other], observed=True).sum()
    substage = ranges.dropna(subset=["parent_stage"]).groupby("parent_stage")["cpu_ms"].sum()
    device_ms = (attribution.device["dur_ns"] / _NS_PER_MS).groupby(attribution.device["stage"], observed=True).sum()
    table = ranges.groupby("stage", sort=False).agg(ranges=("cpu_ms", "size"), cpu_ms=("cpu_ms", "sum"),
                                                    device_span_ms=("device_span_ms", "sum"),
                                                    host_gap_ms=("host_gap_ms", "sum"))
    if not attribution.on_device:
        table["device_span_ms"] = np.nan
    table["profiled_ms"] = table["device_span_ms"] if attribution.on_device else table["cpu_ms"]
    table["operator_self_cpu_ms"] = op_self.reindex(table.index).fillna(0.0)
    table["other_self_cpu_ms"] = other_self.reindex(table.index).fillna(0.0)
    table["substage_cpu_ms"] = substage.reindex(table.index).fillna(0.0)
    table["device_ms"] = device_ms.reindex(table.index).fillna(0.0) if attribution.on_device else np.nan
    parent_of = ranges.dropna(subset=["parent_stage"]).drop_duplicates("stage").set_index("stage")["parent_stage"]
    busy = table["device_ms"].copy()
    for stage, own_ms in table["device_ms"].items():
        ancestor = parent_of.get(stage)
        while ancestor is not None and ancestor in busy.index:  # charge nested stages to every enclosing stage
            busy[ancestor] += own_ms
            ancestor = parent_of.get(ancestor)
    table["device_busy_ms"] = busy
    table["busy_share"] = table["device_busy_ms"] / table["device_span_ms"]
    table = table.reset_index()
    rank = {stage: i for i, stage in enumerate(attribution.stage_order)}
    return table.sort_values("stage", key=lambda s: s.map(rank)).reset_index(drop=True)[STAGE_TIME_COLUMNS]


def operators_from_trace(trace: dict[str, Any] | str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(operators, kernels, stage times) of a trace dict or a trace file (.json or .json.gz)."""
    if not isinstance(trace, dict):
        trace = load_trace(trace)
    attribution = attribute_trace(trace)
    return operator_table(attribution), kernel_table(attribution), stage_time_table(attribution)


# --- artifacts -------------------------------------------------------------------------------------


def top_per_stage(table: pd.DataFrame, n: int, by: str) -> dict[str, pd.DataFrame]:
    """{stage: its n largest rows by `by`}, stages in table order."""
    return {stage: group.nlargest(n, by) for stage, group in table.groupby("stage", sort=False)}
