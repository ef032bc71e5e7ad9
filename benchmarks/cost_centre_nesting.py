"""Check a run's "Top cost centres" against its own trace: does any listed operator run inside another?

The stakeholder summary lists one level of the operator tree: the operators the model code calls
directly (top-level calls), each with the inclusive time of those calls. This script re-derives that
from the raw trace with its own sweep, independently of the project's trace attribution: for every
`cpu_op` event it finds the innermost `stage:<key>` range and whether any other `cpu_op` on the same
thread encloses it. For each listed (operator, stage) it checks that the trace's top-level events of
that name in that stage number the row's `top_level_calls`, and for every ordered pair of listed rows it
counts the counted events of one that lie inside a counted event of the other. It prints the list, the
nested calls of listed names that are not counted separately (they are inside their caller's time),
and every nested pair; exits 1 when a count differs or a pair nests.

    python benchmarks/cost_centre_nesting.py RUN_DIR
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd

from llm_perf_opt import record
from llm_perf_opt.reports.stakeholder_summary import cost_centres


def classify(events: list[dict]) -> list[dict]:
    """cpu_op events with `stage` (innermost stage range, or 'other') and `top` (no cpu_op encloses it)."""
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for event in events:
        if event.get("ph") == "X" and (event.get("cat") == "cpu_op" or (
                event.get("cat") == "user_annotation" and str(event.get("name", "")).startswith("stage:"))):
            by_thread[(event.get("pid"), event.get("tid"))].append(event)
    ops = []
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        open_ops: list[float] = []
        open_stages: list[tuple[float, str]] = []
        for event in thread_events:
            start, end = float(event["ts"]), float(event["ts"]) + float(event["dur"])
            open_ops = [e for e in open_ops if e > start]
            open_stages = [s for s in open_stages if s[0] > start]
            if event["cat"] == "user_annotation":
                open_stages.append((end, event["name"][len("stage:"):]))
                continue
            ops.append({"name": event["name"], "start": start, "end": end, "top": not open_ops,
                        "stage": open_stages[-1][1] if open_stages else "other", "thread": id(thread_events)})
            open_ops.append(end)
    return ops


def main(run_dir: str) -> int:
    path = Path(run_dir)
    run = record.load(path)
    operators = pd.read_csv(path / "operators.csv") if (path / "operators.csv").is_file() else None
    listed, basis = cost_centres(run, operators)
    print(f"{path}: {len(listed)} cost centres, basis: {basis.name} ({run.env.get('device_name')})")
    with gzip.open(path / run.profiled_pass.trace, "rt", encoding="utf-8") as handle:
        ops = classify(json.load(handle)["traceEvents"])
    keys = {(op.name, op.stage) for op in listed}
    counted = {key: [e for e in ops if e["top"] and (e["name"], e["stage"]) == key] for key in keys}
    problems = 0
    for rank, op in enumerate(listed, 1):
        found = len(counted[(op.name, op.stage)])
        inner = sum(1 for e in ops if not e["top"] and (e["name"], e["stage"]) == (op.name, op.stage))
        ok = found == op.top_level_calls
        problems += not ok
        print(f"  {rank:2d}. {op.name} [{op.stage}] {getattr(op, basis.field):.3f} ms, top-level calls "
              f"{op.top_level_calls} (trace: {found}{'' if ok else ' MISMATCH'}); nested calls not listed: {inner}")
    for outer in keys:
        for inner in keys - {outer}:
            n = sum(1 for e in counted[inner] for o in counted[outer]
                    if o["thread"] == e["thread"] and o["start"] <= e["start"] and e["end"] <= o["end"])
            if n:
                problems += 1
                print(f"  NESTED: {n} counted {inner} events inside counted {outer} events")
    print("no listed operator runs inside another; every count matches the trace" if not problems
          else f"{problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
