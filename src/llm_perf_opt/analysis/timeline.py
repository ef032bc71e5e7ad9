"""Stage timelines: one representative timed sample per input, laid out as nested spans.

The representative sample of an input is the repeat whose e2e time is closest to the median e2e time of
that input's repeats (the first such repeat on a tie). Its spans, in milliseconds from the sample's
start mark (the clock the timed pass used: CUDA events on a GPU, perf_counter on a CPU):

    e2e                [0, e2e_ms]                      host wall time between the two synchronisations
      prefill          [0, prefill_ms]                  start of the first forward to the first token
        <group>        [first call start, last call end] of its sub-stages (e.g. vision)
          <sub-stage>  [call start, call end]           one span per call of the stage's module
      decode           [prefill_ms, prefill_ms + decode_ms]
        decode step k  consecutive, each as long as that step's measured time

A span's duration is the measured time of that stage in that sample (a group's `measured_ms` attribute is
the sum of its children, which the span can exceed when there are gaps between them). The host's start
time (`epoch_start_ns`) anchors the sample on the wall clock; the device clock's zero is taken to be that
moment (the device is idle after the synchronisation that precedes it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from llm_perf_opt.schema import DECODE, E2E, PREFILL, StageTree, column

TIMELINE_FILE = "timeline.json"
MAX_STEP_SPANS = 1024  # decode steps drawn per sample; longer decodes keep the decode span whole


def representative(samples: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Per input (in input order), the sample whose e2e time is closest to that input's median."""
    by_input: dict[int, list[Mapping[str, Any]]] = {}
    for sample in samples:
        by_input.setdefault(int(sample["row"]["input_index"]), []).append(sample)
    chosen = []
    for index in sorted(by_input):
        group = by_input[index]
        times = np.array([float(s["row"][column(E2E, "ms")]) for s in group])
        chosen.append(group[int(np.argmin(np.abs(times - np.median(times))))])
    return chosen


class _Spans:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, stage: str, parent: int | None, start: float, end: float, **attrs: Any) -> int:
        self.items.append({"id": len(self.items), "parent": parent, "name": name, "stage": stage,
                           "start_ms": float(start), "end_ms": float(end), "attributes": attrs})
        return len(self.items) - 1


def _prefill_spans(spans: _Spans, tree: StageTree, calls: list[list[Any]], prefill_id: int) -> None:
    """Groups (spanning their descendants' calls) and one span per sub-stage call, nested by the tree."""
    ids = {PREFILL: prefill_id}
    by_stage: dict[str, list[list[Any]]] = {}
    for stage, start, end in calls:
        by_stage.setdefault(stage, []).append([stage, start, end])
    for stage in tree:
        if stage.key in (E2E, PREFILL, DECODE) or stage.parent not in ids:
            continue
        parent = ids[stage.parent]
        if stage.kind == "sum_of_children":
            inner = [c for d in tree.descendants(stage.key) for c in by_stage.get(d.key, [])]
            if inner:
                ids[stage.key] = spans.add(stage.key, stage.key, parent, min(c[1] for c in inner),
                                           max(c[2] for c in inner), label=stage.label)
            continue
        calls = by_stage.get(stage.key, [])
        for number, (_, start, end) in enumerate(calls, 1):  # several calls (tiles, then the global view): numbered
            name = stage.key if len(calls) == 1 else f"{stage.key} #{number}"
            spans.add(name, stage.key, parent, start, end, label=stage.label, call=number)


def sample_spans(sample: Mapping[str, Any], tree: StageTree) -> list[dict[str, Any]]:
    """The nested spans of one timed sample (see the module docstring)."""
    row = sample["row"]
    spans = _Spans()
    root = spans.add(E2E, E2E, None, 0.0, row[column(E2E, "ms")], label=tree.get(E2E).label)
    prefill_ms = float(row[column(PREFILL, "ms")])
    prefill = spans.add(PREFILL, PREFILL, root, 0.0, prefill_ms, label=tree.get(PREFILL).label)
    _prefill_spans(spans, tree, list(sample.get("calls", [])), prefill)
    steps = [float(ms) for ms in sample.get("decode_step_ms", [])]
    if steps:
        decode = spans.add(DECODE, DECODE, root, prefill_ms, prefill_ms + float(row[column(DECODE, "ms")]),
                           label=tree.get(DECODE).label, steps=len(steps))
        edges = prefill_ms + np.concatenate([[0.0], np.cumsum(steps)])
        for step in range(min(len(steps), MAX_STEP_SPANS)):
            spans.add(f"decode step {step + 1}", DECODE, decode, edges[step], edges[step + 1], step=step + 1)
    for span in spans.items:
        measured = row.get(column(span["stage"], "ms"))
        if "step" not in span["attributes"] and "call" not in span["attributes"] and measured is not None:
            span["attributes"]["measured_ms"] = float(measured)
    return spans.items


def timelines(samples: Iterable[Mapping[str, Any]], tree: StageTree, clock: str) -> dict[str, Any]:
    """timeline.json: the representative sample of every input with its spans."""
    chosen = representative(samples)
    return {"clock": clock, "samples": [
        {"input_id": s["row"]["input_id"], "input_index": int(s["row"]["input_index"]),
         "repeat": int(s["row"]["repeat"]), "epoch_start_ns": s.get("epoch_start_ns"),
         "spans": sample_spans(s, tree)} for s in chosen]}
