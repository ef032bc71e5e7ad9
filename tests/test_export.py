"""Tests for the seed's public export API: top_n_operators, write_stakeholder_summary, build_summary,
and the metrics.json entries the profiler adds for them (operator_summary_for_metrics)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llm_perf_opt.profiling.export import (
    build_summary,
    infer_stage_hint,
    operator_summary_for_metrics,
    top_n_operators,
    write_stakeholder_summary,
)


def test_seed_stakeholder_summary_snippet():
    """The seed project's own test, verbatim."""
    write_stakeholder_summary('/tmp/tmp.md', [], {"decode": "Decode dominated by attention"})
    text = Path('/tmp/tmp.md').read_text()
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


def realistic_metrics_json() -> dict:
    """metrics.json as run_profile writes it (schema 1), plus the profiled pass's entries."""
    def stats(mean, p50=None):
        p50 = mean if p50 is None else p50
        return {"mean": mean, "std": mean * 0.05, "min": mean * 0.9, "max": mean * 1.1, "p50": p50,
                "p90": mean * 1.05, "p99": mean * 1.09, "count": 6}

    summary = {"prefill_ms": stats(120.0), "ttft_ms": stats(120.0), "vision_sam_ms": stats(50.0),
               "vision_encoder_ms": stats(30.0), "vision_projector_ms": stats(2.0), "vision_ms": stats(82.0),
               "decode_ms": stats(280.0), "tpot_ms": stats(40.0, 39.5), "e2e_ms": stats(402.0),
               "tokens_per_s": stats(19.9), "decode_tokens_per_s": stats(25.0), "decode_step_ms": stats(40.0)}
    table = {"prefill": ("prefill_ms", None), "vision": ("vision_ms", "prefill"),
             "vision/sam": ("vision_sam_ms", "vision"), "vision/encoder": ("vision_encoder_ms", "vision"),
             "vision/projector": ("vision_projector_ms", "vision"), "decode": ("decode_ms", None)}
    return {
        "schema_version": 1, "status": "FINISHED", "error": None,
        "run": {"run_dir": "/tmp/run", "mlflow_run_id": "abc"},
        "workload": {"family": "deepseek_ocr2", "preset": "full", "image_mode": "tiled", "new_tokens": 8,
                     "dtype": "bf16"},
        "env": {"device_type": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0",
                "transformers": "5.17.0", "dtype": "bf16", "attn_implementation": "sdpa"},
        "stages": {name: {"column": col, "nested_in": parent, "ms": summary[col]} for name, (col, parent) in table.items()},
        "summary": summary,
        "metrics": {"prefill/ms_mean": 120.0, "samples/count": 6.0, "overhead/prefill_ratio": 1.25,
                    "overhead/decode_step_ratio": 1.8},
        "profiled_pass": {"trace": "trace.json.gz", "inputs": 1, "decode_steps": 4, "time_basis": "device_span",
                          "stage_ms": {"prefill": 150.0, "decode_step": 72.0},
                          "stages": [{"stage": "prefill", "profiled_ms": 150.0}, {"stage": "decode", "profiled_ms": 288.0}]},
        "top_operators": [{"stage": "decode", "name": "aten::mm", "calls": 96, "total_time_ms": 144.0},
                          {"stage": "vision/sam", "name": "aten::conv2d", "calls": 1, "total_time_ms": 20.0}],
        "top_operators_by_stage": {"decode": [{"stage": "decode", "name": "aten::mm", "calls": 96,
                                               "total_time_ms": 144.0}]},
    }


def test_build_summary_regenerates_from_metrics_json_alone(tmp_path):
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text(json.dumps(realistic_metrics_json()))
    out = tmp_path / "stakeholder_summary.md"
    build_summary(str(metrics_path), str(out))
    text = out.read_text()
    assert "NVIDIA H100 80GB HBM3" in text and "6 timed samples of 8 new tokens" in text
    # Stage table: vision stated as nested within prefill, shares computed from the numbers.
    assert "|vision (inside prefill)|82.00|" in text and "68.3% of prefill" in text  # 82 / 120
    assert "|decode|280.00|" in text and "69.7% of end-to-end" in text  # 280 / 402
    assert "Time per output token (TPOT): 39.50 ms" in text
    # Top cost centres with their stage and share of the stage's profiled time (144 / 288).
    assert "|1|aten::mm|decode|144.00|96|50.0%|" in text
    assert "Decode dominates end-to-end time: 69.7%" in text
    assert ("Under the profiler, prefill 1.25x (overhead/prefill_ratio) and a decode step 1.80x "
            "(overhead/decode_step_ratio) of their timed times") in text
    assert "a decode step took 1.80x its timed time" in text
    # Rebuilding gives the same file.
    first = text
    build_summary(str(metrics_path), str(out))
    assert out.read_text() == first
