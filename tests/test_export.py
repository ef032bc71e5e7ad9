"""Tests for the seed's public export API: top_n_operators, write_stakeholder_summary, build_summary,
and the metrics.json entries the profiler adds for them (operator_summary_for_metrics)."""

from __future__ import annotations

import copy
import json
import traceback

import numpy as np
import pandas as pd
import pytest

from llm_perf_opt.errors import InputError
from llm_perf_opt.profiling.export import (
    build_summary,
    infer_stage_hint,
    operator_summary_for_metrics,
    top_n_operators,
    write_stakeholder_summary,
)
from llm_perf_opt.record import save
from llm_perf_opt.reports import write_reports
from records import build_record, gpu_record


def test_seed_stakeholder_summary_snippet(tmp_path):
    """The seed project's own test, in tmp_path."""
    write_stakeholder_summary(str(tmp_path / "tmp.md"), [], {"decode": "Decode dominated by attention"})
    text = (tmp_path / "tmp.md").read_text()
    assert "Decode dominated by attention" in text


def test_stakeholder_summary_lists_top_operators_and_writes_exactly_the_path(tmp_path):
    path = tmp_path / "summary.txt"  # not .md: mdutils alone would write summary.txt.md
    ops = [{"name": "aten::mm", "stage": "decode", "total_time_ms": 12.5, "calls": 40}]
    write_stakeholder_summary(str(path), ops, {"decode": "Decode is 80.0% of end-to-end time"})
    text = path.read_text()
    assert not (tmp_path / "summary.txt.md").exists()
    assert "|1|aten::mm|decode|12.50|40|" in text
    assert "**decode**: Decode is 80.0% of end-to-end time" in text


RECORDS = [
    {"name": "aten::mm", "stage": "decode", "total_time_ms": 5.0},
    {"name": "aten::_flash_attention_forward", "total_time_ms": 9.0},
    {"name": "aten::conv2d", "total_time_ms": 7.0},
    {"name": "aten::layer_norm", "total_time_ms": 1.0},
    {"name": "aten::copy_"},  # no time: sorts last
    {"name": "aten::addmm", "total_time_ms": 3.0},
]


def test_top_n_operators_orders_by_total_time_and_cuts_at_n():
    original = copy.deepcopy(RECORDS)
    top = top_n_operators(RECORDS, n=3)
    assert [r["name"] for r in top] == ["aten::_flash_attention_forward", "aten::conv2d", "aten::mm"]
    assert RECORDS == original, "inputs are not modified"
    everything = top_n_operators(iter(RECORDS), n=100)
    assert len(everything) == len(RECORDS) and everything[-1]["name"] == "aten::copy_"
    times = [r["total_time_ms"] for r in everything[:-1]]
    assert times == sorted(times, reverse=True)
    assert top_n_operators(RECORDS, n=0) == []
    assert len(top_n_operators(RECORDS)) == len(RECORDS)  # default n=10 > 6 records


def test_top_n_operators_stage_hints():
    top = {r["name"]: r for r in top_n_operators(RECORDS, n=10)}
    assert top["aten::mm"]["stage"] == "decode" and "stage_inferred" not in top["aten::mm"]
    assert top["aten::_flash_attention_forward"]["stage"] == "attention"
    assert top["aten::_flash_attention_forward"]["stage_inferred"] is True
    assert top["aten::conv2d"]["stage"] == "vision"
    assert top["aten::layer_norm"]["stage"] == "normalization"
    assert top["aten::addmm"]["stage"] == "matmul"
    assert top["aten::copy_"]["stage"] == "other"
    assert infer_stage_hint("sam_encoder.blocks.0") == "vision"
    assert infer_stage_hint("aten::scaled_dot_product_attention") == "attention"
    assert infer_stage_hint("aten::embedding") == "embedding"
    assert infer_stage_hint("aten::bmm") == "matmul" and infer_stage_hint("aten::commit") == "other"


def _operators_frame(on_device: bool) -> pd.DataFrame:
    rows = [("prefill", "aten::linear", 4, 1.0, 9.0), ("prefill", "aten::mm", 8, 8.0, 8.0),
            ("decode", "aten::mm", 16, 6.0, 6.0), ("decode", "aten::add", 16, 2.0, 2.0),
            ("vision/sam", "aten::conv2d", 1, 3.0, 3.0)]
    frame = pd.DataFrame(rows, columns=["stage", "name", "calls", "self_cpu_ms", "total_cpu_ms"])
    frame["self_device_ms"] = frame["self_cpu_ms"] / 2 if on_device else np.nan
    frame["total_device_ms"] = frame["total_cpu_ms"] / 2 if on_device else np.nan
    frame["total_time_ms"] = frame["total_device_ms"] if on_device else frame["total_cpu_ms"]
    frame["mean_time_ms"] = frame["total_time_ms"] / frame["calls"]
    frame["self_cpu_memory_bytes"] = np.nan
    frame["self_device_memory_bytes"] = np.nan
    return frame


@pytest.mark.parametrize("on_device", [False, True])
def test_operator_summary_for_metrics(on_device):
    summary = operator_summary_for_metrics(_operators_frame(on_device), top_n=2)
    assert set(summary) == {"top_operators", "top_operators_by_stage"}
    assert [(r["stage"], r["name"]) for r in summary["top_operators"]] == [("prefill", "aten::linear"),
                                                                           ("prefill", "aten::mm")]
    assert list(summary["top_operators_by_stage"]) == ["prefill", "decode", "vision/sam"]
    assert [r["name"] for r in summary["top_operators_by_stage"]["decode"]] == ["aten::mm", "aten::add"]
    first = summary["top_operators"][0]
    assert isinstance(first["calls"], int) and first["calls"] == 4
    assert "self_cpu_memory_bytes" not in first, "unmeasured values are absent, not NaN"
    assert ("total_device_ms" in first) == on_device
    json.dumps(summary, allow_nan=False)


def test_build_summary_regenerates_from_metrics_json_alone(tmp_path):
    metrics_path = save(gpu_record(tpot_p50=39.5), tmp_path / "metrics.json")
    out = tmp_path / "stakeholder_summary.md"
    build_summary(str(metrics_path), str(out))
    text = out.read_text()
    assert "NVIDIA H100 80GB HBM3" in text and "6 timed samples of 8 new tokens" in text
    # Stage table: vision stated as nested within prefill, shares computed from the numbers.
    assert "|vision (inside prefill)|82.00|" in text and "68.3% of prefill" in text  # 82 / 120
    assert "|decode|280.00|" in text and "69.7% of end to end" in text  # 280 / 402
    assert "Time per output token (TPOT): 39.50 ms" in text
    # Top cost centres with their stage and share of the stage's profiled time (144 / 504).
    assert "|1|aten::mm|decode|144.00|672|28.6%|" in text
    assert "Decode dominates end-to-end time: 69.7%" in text
    assert "Under the profiler, prefill 1.25x and a decode step 1.80x of their timed times" in text
    assert "a decode step took 1.80x its timed time" in text
    # Rebuilding gives the same file, and the same file write_reports writes.
    build_summary(str(metrics_path), str(out))
    assert out.read_text() == text
    write_reports(tmp_path)
    assert (tmp_path / "stakeholder_summary.md").read_text() == text


def _record_json(**changes) -> dict:
    record = json.loads(build_record().model_dump_json())
    record.update(changes)
    return record


@pytest.mark.parametrize(("content", "expected"), [
    (_record_json(schema_version=1), "has schema_version 1; this version of llm-perf-opt reads schema_version 2"),
    (_record_json(stages=[{"key": "e2e", "parent": None, "label": "end to end", "kind": "measured",
                           "stats": {"ms": {"mean": "fast"}}}]),
     "is not a valid run record (schema_version 2): stages.0.stats.ms.mean: Input should be a valid number"),
    (_record_json(status="DONE"), "status: Input should be 'FINISHED', 'FAILED', 'KILLED' or 'RUNNING'"),
    ("{not json", "is not readable JSON"),
])
def test_build_summary_rejects_old_or_malformed_metrics_json(tmp_path, content, expected):
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "summary.md"
    with pytest.raises(InputError) as raised:
        build_summary(str(metrics_path), str(out))
    message = str(raised.value)
    assert expected in message and str(metrics_path) in message
    assert "re-run the profile" in message and "\n" not in message
    shown = "".join(traceback.format_exception(raised.value))
    assert "ValidationError" not in shown and "JSONDecodeError" not in shown, "no pydantic / json traceback attached"
    assert not out.exists()


def test_build_summary_of_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        build_summary(str(tmp_path / "nope.json"), str(tmp_path / "out.md"))
