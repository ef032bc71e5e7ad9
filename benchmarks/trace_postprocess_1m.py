"""Rate of the trace post-processing (stage attribution + operator, kernel and stage tables) on ~1M events.

Builds a synthetic Chrome trace shaped like torch.profiler's CUDA traces of DeepSeek-OCR-2: per input
one `stage:prefill` range holding `stage:vision_sam`, `stage:vision_encoder`, `stage:vision_projector`
and language-model layers, then `stage:decode` ranges (one per step); inside them nested `cpu_op`
trees (aten::linear -> aten::t -> aten::transpose -> aten::as_strided, aten::addmm -> ...), a
`cuda_runtime` launch under each kernel-launching op with its `kernel` / `gpu_memcpy` on the device
(joined by `args.correlation`, plus the `ac2g` flow events kineto writes), and `[memory]` instants.

Prints: event count, seconds for processing the trace dict already in memory (as generated: its
strings are shared objects), seconds for loading the gzipped file and processing it (split into the
json load and the processing of the loaded dict, whose strings are all distinct objects), the machine
(platform, CPU count), and a consistency check (every kernel attributed to a stage, op calls equal
to op events; exit status 1 when it fails). Goal: at most 5 s for the dict on a 2-core machine.
Stage names are the stage schema's keys, as the profiled pass writes them.
Run: `python benchmarks/trace_postprocess_1m.py [--events 1000000] [--keep PATH]`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from llm_perf_opt.analysis.operators import attribute_trace, kernel_table, load_trace, operator_table, stage_time_table

PID, TID, DEVICE_PID, STREAM = 4242, 4242, 0, 7
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"


def _op(name, children=(), kernel=None, memcpy=False, alloc=0):
    return {"name": name, "children": list(children), "kernel": kernel, "memcpy": memcpy, "alloc": alloc}


LINEAR = _op("aten::linear", [
    _op("aten::t", [_op("aten::transpose", [_op("aten::as_strided")])]),
    _op("aten::addmm", kernel=GEMM, alloc=1 << 20),
])
LAYER_NORM = _op("aten::layer_norm", [_op("aten::native_layer_norm", [_op("aten::empty_like", [_op("aten::empty")])],
                                          kernel="vectorized_layer_norm_kernel", alloc=1 << 16)])
SDPA = _op("aten::scaled_dot_product_attention", [
    _op("aten::_scaled_dot_product_flash_attention", [
        _op("aten::transpose", [_op("aten::as_strided")]),
        _op("aten::_flash_attention_forward", [_op("aten::empty")], kernel="flash_fwd_kernel", alloc=1 << 18),
    ]),
])
ADD = _op("aten::add", kernel="vectorized_elementwise_kernel<add>", alloc=1 << 16)
RESHAPE = _op("aten::reshape", [_op("aten::view")])
COPY = _op("aten::copy_", kernel="Memcpy DtoD (Device -> Device)", memcpy=True)
CONV = _op("aten::conv2d", [_op("aten::convolution", [_op("aten::_convolution", [
    _op("aten::cudnn_convolution", kernel="sm90_xmma_fprop_implicit_gemm", alloc=1 << 22)])])])
LAYER = [LAYER_NORM, LINEAR, LINEAR, LINEAR, RESHAPE, RESHAPE, SDPA, RESHAPE, LINEAR, ADD, LAYER_NORM, LINEAR,
         LINEAR, ADD, COPY, LINEAR, ADD]


class TraceWriter:
    """Appends events with a host clock (ns) and a device clock that trails it, as on a real GPU."""

    def __init__(self):
        self.events: list[dict] = []
        self.host_ns = 1_700_000_000_000_000
        self.device_ns = self.host_ns
        self.correlation = 0

    def _x(self, cat, name, start_ns, dur_ns, pid=PID, tid=TID, args=None):
        event = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": start_ns / 1e3, "dur": dur_ns / 1e3}
        if args:
            event["args"] = args
        self.events.append(event)
        return event

    def op(self, spec):
        start = self.host_ns
        event = self._x("cpu_op", spec["name"], start, 0, args={"External id": len(self.events)})
        self.host_ns += 700
        for child in spec["children"]:
            self.op(child)
            self.host_ns += 300
        if spec["alloc"]:
            self.events.append({"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": PID,
                                "tid": TID, "ts": self.host_ns / 1e3,
                                "args": {"Bytes": spec["alloc"], "Device Type": 1, "Total Allocated": 0}})
            self.host_ns += 200
        if spec["kernel"]:
            self.correlation += 1
            launch_start = self.host_ns
            self._x("cuda_runtime", "cudaMemcpyAsync" if spec["memcpy"] else "cudaLaunchKernel", launch_start, 2_500,
                    args={"correlation": self.correlation})
            self.host_ns += 2_500
            kernel_start = max(self.device_ns, launch_start + 4_000)
            kernel_dur = 9_000 if "gemm" in spec["kernel"] or "flash" in spec["kernel"] else 3_000
            self._x("gpu_memcpy" if spec["memcpy"] else "kernel", spec["kernel"], kernel_start, kernel_dur,
                    pid=DEVICE_PID, tid=STREAM, args={"correlation": self.correlation, "device": 0, "stream": STREAM})
            self.device_ns = kernel_start + kernel_dur + 1_000
            self.events.append({"ph": "s", "id": self.correlation, "pid": PID, "tid": TID, "ts": launch_start / 1e3,
                                "cat": "ac2g", "name": "ac2g"})
            self.events.append({"ph": "f", "id": self.correlation, "pid": DEVICE_PID, "tid": STREAM,
                                "ts": kernel_start / 1e3, "cat": "ac2g", "name": "ac2g", "bp": "e"})
        self.host_ns += 400
        event["dur"] = (self.host_ns - start) / 1e3

    def stage(self, name, body):
        start = self.host_ns
        event = self._x("user_annotation", f"stage:{name}", start, 0)
        self.host_ns += 5_000
        body()
        self.host_ns += 5_000
        event["dur"] = (self.host_ns - start) / 1e3

    def layers(self, count, extra=()):
        for spec in extra:
            self.op(spec)
        for _ in range(count):
            for spec in LAYER:
                self.op(spec)
                self.host_ns += 1_000


def synthetic_trace(target_events: int) -> dict:
    writer = TraceWriter()
    while len(writer.events) < target_events:
        def prefill_body():
            writer.stage("vision_sam", lambda: writer.layers(12, extra=[CONV]))
            writer.stage("vision_encoder", lambda: writer.layers(24))
            writer.stage("vision_projector", lambda: writer.layers(0, extra=[LINEAR]))
            writer.layers(12)

        writer.stage("prefill", prefill_body)
        for _ in range(32):
            if len(writer.events) >= target_events:
                break
            writer.stage("decode", lambda: writer.layers(12))
        writer.host_ns = max(writer.host_ns, writer.device_ns) + 100_000
    return {"schemaVersion": 1, "traceEvents": writer.events, "displayTimeUnit": "ms"}


def process(trace: dict):
    attribution = attribute_trace(trace)
    return attribution, operator_table(attribution), kernel_table(attribution), stage_time_table(attribution)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="also keep the gzipped trace here")
    args = parser.parse_args()

    trace = synthetic_trace(args.events)
    events = trace["traceEvents"]
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"os.cpu_count()={os.cpu_count()} | python {platform.python_version()}")
    print(f"events: {len(events):,} (cpu_op {sum(e.get('cat') == 'cpu_op' for e in events):,}, "
          f"kernel+memcpy {sum(e.get('cat') in ('kernel', 'gpu_memcpy') for e in events):,})")

    start = time.perf_counter()
    attribution, operators, kernels, stages = process(trace)
    in_memory_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "trace.json.gz"
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=6) as handle:
            json.dump(trace, handle)
        size_mib = path.stat().st_size / 2**20
        del trace, events
        start = time.perf_counter()
        loaded = load_trace(path)
        load_s = time.perf_counter() - start
        process(loaded)
        from_file_s = time.perf_counter() - start

    op_events = int((attribution.host["cat"] == "cpu_op").sum())
    unattributed_kernels = int((attribution.device["stage"] == "other").sum())
    expected_stages = {"prefill", "vision_sam", "vision_encoder", "vision_projector", "decode"}
    consistent = (int(operators["calls"].sum()) == op_events and unattributed_kernels == 0
                  and set(stages["stage"]) == expected_stages)
    print(f"post-processing from the dict in memory: {in_memory_s:.2f} s")
    print(f"load trace.json.gz ({size_mib:.1f} MiB) + post-processing: {from_file_s:.2f} s "
          f"(json/gzip load {load_s:.2f} s, post-processing of the loaded dict {from_file_s - load_s:.2f} s)")
    print(f"rows: operators {len(operators)}, kernels {len(kernels)}, stages {len(stages)}; "
          f"op calls {int(operators['calls'].sum()):,} == op events {op_events:,}: "
          f"{int(operators['calls'].sum()) == op_events}; "
          f"kernels without a stage: {unattributed_kernels}")
    print(f"stages: {', '.join(stages['stage'])}; consistent: {consistent}")
    print(f"goal (<= 5 s from the dict): {'met' if in_memory_s <= 5 else 'NOT met'}")
    return 0 if consistent else 1


if __name__ == "__main__":
    raise SystemExit(main())
