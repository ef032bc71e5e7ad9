"""Tests for report.md and stakeholder_summary.md (CPU, tiny DeepSeek-OCR-2).

One real run (run_profile's timed pass + the profiled pass, merged into metrics.json as run_profile
does it) feeds the report tests; hand-made metrics dicts check that takeaways follow the numbers.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import hydra
import pandas as pd
import pytest
import torch

from llm_perf_opt.data import load_pages
from llm_perf_opt.models import build_workload
from llm_perf_opt.profile_run import run_profile
from llm_perf_opt.profiling.export import build_summary
from llm_perf_opt.profiling.profiled_pass import metrics_for_run, run_profiled_pass
from llm_perf_opt.reports import derive_recommendations, derive_takeaways, write_reports
from llm_perf_opt.reports.stakeholder_summary import write_stakeholder_summary_from_metrics

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
TOP_N = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished run directory with the profiled pass merged in (what run_profile writes once integrated)."""
    root = tmp_path_factory.mktemp("report_run")
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose("config", overrides=[
            f"tracking.uri=sqlite:///{root}/mlflow.db", "tracking.enabled=false", "model.image_mode=global768",
            "dataset.num_pages=1", "profiling.repeats=2", "profiling.new_tokens=3", "profiling.warmup=1",
            "profiling.progress=false"])
    outcome = run_profile(cfg, root / "run")
    assert outcome.status == "FINISHED", outcome.error
    workload = build_workload(cfg.model, load_pages(cfg.dataset), torch.device("cpu"), 0)
    profiled = run_profiled_pass(workload, num_inputs=1, decode_steps=2, run_dir=outcome.run_dir, top_n=TOP_N)
    metrics_path = outcome.run_dir / "metrics.json"
    metrics_json = json.loads(metrics_path.read_text())
    overhead, entries = metrics_for_run(profiled, metrics_json["summary"], TOP_N)
    metrics_json["metrics"].update(overhead)
    metrics_json.update(entries)
    metrics_path.write_text(json.dumps(metrics_json, indent=2))
    return outcome.run_dir


@pytest.fixture(scope="module")
def reports(run_dir):
    return write_reports(run_dir)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_write_reports_writes_both_files(run_dir, reports):
    assert reports == [run_dir / "report.md", run_dir / "stakeholder_summary.md"]
    assert all(p.stat().st_size > 0 for p in reports)


def test_technical_report_content(run_dir, reports):
    text = (run_dir / "report.md").read_text()
    metrics_json = _metrics(run_dir)
    assert f"|torch|{metrics_json['env']['torch']}|" in text
    sam = metrics_json["stages"]["vision/sam"]["ms"]
    assert f"|vision/sam|vision|{sam['mean']:.3f}|{sam['std']:.3f}|{sam['p50']:.3f}|{sam['p90']:.3f}|{sam['p99']:.3f}|" in text
    assert "nested within prefill" in text
    ttft = metrics_json["summary"]["ttft_ms"]
    assert f"|TTFT (ms)|{ttft['mean']:.3f}|" in text and "|TPOT (ms)|" in text and "|tokens/s (decode)|" in text
    operators = pd.read_csv(run_dir / "operators.csv")
    for stage in ("prefill", "vision/sam", "decode"):
        top = operators[operators["stage"] == stage].nlargest(1, "total_time_ms").iloc[0]
        assert f"### {stage}" in text and f"|{top['name']}|{top['calls']}|{top['total_time_ms']:.3f}|" in text
    ratio = metrics_json["metrics"]["overhead/prefill_ratio"]
    assert f"|{metrics_json['profiled_pass']['stage_ms']['prefill']:.3f}|" in text and f"|{ratio:.3f}|" in text
    if not metrics_json.get("efficiency"):
        assert "Efficiency" not in text, "no efficiency section without efficiency numbers"
    else:
        assert "## Efficiency (FLOPs, MFU, MBU, bound)" in text


def test_efficiency_section_and_statements_when_present(run_dir, reports, tmp_path):
    metrics_json = _metrics(run_dir)
    metrics_json["efficiency"] = {"prefill": {"flops": 2.5e9, "mfu": 0.41, "mbu": 0.12, "bound": "compute"},
                                  "decode": {"flops": 1.0e7, "mfu": 0.01, "mbu": 0.83, "bound": "memory",
                                             "busy_share": 0.92}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics_json))
    write_reports(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Efficiency (FLOPs, MFU, MBU, bound)" in report
    assert "|decode|1.000e+07|0.0100|0.8300|memory|0.9200|" in report
    summary = (tmp_path / "stakeholder_summary.md").read_text()
    assert "busy 92% of the time; MBU 83.0%; MFU 1.0%; memory-bound" in summary
    assert "launch-bound" not in summary


def test_stakeholder_summary_cites_the_run(run_dir, reports, tmp_path):
    text = (run_dir / "stakeholder_summary.md").read_text()
    metrics_json = _metrics(run_dir)
    prefill = metrics_json["stages"]["prefill"]["ms"]["mean"]
    vision = metrics_json["stages"]["vision"]["ms"]["mean"]
    e2e = metrics_json["summary"]["e2e_ms"]["mean"]
    assert f"|prefill (time to first token)|{prefill:.2f}|" in text
    assert f"{100 * prefill / e2e:.1f}% of end-to-end" in text
    assert f"|vision (inside prefill)|{vision:.2f}|" in text and f"{100 * vision / prefill:.1f}% of prefill" in text
    assert "Vision runs inside prefill" in text
    tpot = metrics_json["summary"]["tpot_ms"]["p50"]
    assert f"Time per output token (TPOT): {tpot:.2f} ms" in text
    for rank, op in enumerate(metrics_json["top_operators"], 1):
        assert f"|{rank}|{op['name']}|{op['stage']}|{op['total_time_ms']:.2f}|" in text
    # Environment on one line; no efficiency claims without efficiency numbers (a CPU run has no peaks).
    assert f"torch {metrics_json['env']['torch']}" in text
    decode_efficiency = (metrics_json.get("efficiency") or {}).get("decode") or {}
    if all(decode_efficiency.get(k) is None for k in ("mfu", "mbu", "bound", "busy_share")):
        for claim in ("MFU", "MBU", "launch-bound", "memory-bound", "compute-bound", "busy"):
            assert claim not in text
    # build_summary (metrics.json alone) regenerates the same file.
    rebuilt = tmp_path / "rebuilt.md"
    build_summary(str(run_dir / "metrics.json"), str(rebuilt))
    assert rebuilt.read_text() == text


# --- takeaways follow the numbers ---------------------------------------------------------------------


def metrics_with(prefill: float, decode: float, sam: float, encoder: float, e2e: float | None = None,
                 efficiency: dict | None = None) -> dict:
    def stats(mean):
        return {"mean": mean, "std": 0.1, "min": mean, "max": mean, "p50": mean, "p90": mean, "p99": mean, "count": 3}

    steps = 4
    summary = {"prefill_ms": stats(prefill), "vision_sam_ms": stats(sam), "vision_encoder_ms": stats(encoder),
               "vision_ms": stats(sam + encoder), "decode_ms": stats(decode), "tpot_ms": stats(decode / steps),
               "decode_tokens_per_s": stats(1000 * steps / decode), "e2e_ms": stats(e2e or prefill + decode + 1.0)}
    entries = {"prefill": ("prefill_ms", None), "vision": ("vision_ms", "prefill"),
               "vision/sam": ("vision_sam_ms", "vision"), "vision/encoder": ("vision_encoder_ms", "vision"),
               "decode": ("decode_ms", None)}
    result = {"status": "FINISHED", "summary": summary, "metrics": {},
              "stages": {k: {"column": c, "nested_in": p, "ms": summary[c]} for k, (c, p) in entries.items()}}
    if efficiency is not None:
        result["efficiency"] = efficiency
    return result


def test_dominant_stage_follows_the_numbers():
    decode_heavy = derive_takeaways(metrics_with(prefill=100.0, decode=300.0, sam=60.0, encoder=20.0, e2e=400.0))
    assert decode_heavy["end_to_end"].startswith("Decode dominates end-to-end time: 75.0% (300.00 ms of 400.00 ms")
    assert "Prefill takes 25.0% (100.00 ms)" in decode_heavy["end_to_end"]
    prefill_heavy = derive_takeaways(metrics_with(prefill=300.0, decode=100.0, sam=60.0, encoder=20.0, e2e=400.0))
    assert prefill_heavy["end_to_end"].startswith("Prefill dominates end-to-end time: 75.0%")


def test_dominant_vision_substage_follows_the_numbers():
    sam_heavy = derive_takeaways(metrics_with(prefill=100.0, decode=50.0, sam=60.0, encoder=20.0))
    assert sam_heavy["vision"] == ("Vision runs inside prefill and takes 80.0% of it (80.00 of 100.00 ms). "
                                   "Within vision, vision/sam dominates with 75.0% (60.00 ms).")
    encoder_heavy = derive_takeaways(metrics_with(prefill=100.0, decode=50.0, sam=10.0, encoder=30.0))
    assert "vision/encoder dominates with 75.0% (30.00 ms)" in encoder_heavy["vision"]


def test_decode_boundness_only_from_efficiency_numbers():
    base = dict(prefill=100.0, decode=400.0, sam=60.0, encoder=20.0)
    plain = derive_takeaways(metrics_with(**base))
    assert plain["decode"] == "Decode costs 100.00 ms per output token (TPOT p50; mean 100.00 ms), 10.0 tokens/s per sequence."
    # Without a verdict of the efficiency module, the busy share and MBU decide.
    launch = metrics_with(**base, efficiency={"decode": {"busy_share": 0.3, "mbu": 0.2, "mfu": 0.01}})
    text = derive_takeaways(launch)["decode"]
    assert "the device is busy 30% of the time; MBU 20.0%; MFU 1.0%; launch-bound" in text
    assert "(busy share below 50%)" in text and "memory-bound" not in text
    assert "device busy only 30% of decode" in derive_recommendations(launch)["decode"]
    memory = metrics_with(**base, efficiency={"decode": {"busy_share": 0.95, "mbu": 0.8}})
    text = derive_takeaways(memory)["decode"]
    assert "MBU 80.0%" in text and "memory-bound" in text and "(MBU at or above 50%)" in text
    assert "launch-bound" not in text
    assert "memory traffic" in derive_recommendations(memory)["decode"]
    # The efficiency module's verdict wins; a low MBU earns no memory recommendation.
    labelled = metrics_with(**base, efficiency={"decode": {"mbu": 0.015, "bound": "memory"}})
    text = derive_takeaways(labelled)["decode"]
    assert "MBU 1.5%; memory-bound (bytes moved, not arithmetic, set the pace) (efficiency verdict)" in text
    assert derive_recommendations(labelled)["decode"] == "Optimise decode first: it is 79.8% of end-to-end time."
    launch_label = metrics_with(**base, efficiency={"decode": {"busy_share": 0.09, "mbu": 0.9, "bound": "launch"}})
    assert "launch-bound" in derive_takeaways(launch_label)["decode"]
    assert "CUDA graphs" in derive_recommendations(launch_label)["decode"]
    assert "prefill" not in derive_takeaways(memory), "no prefill efficiency given: nothing said about it"


def test_recommendations_follow_the_dominant_stage():
    decode_heavy = derive_recommendations(metrics_with(prefill=100.0, decode=300.0, sam=60.0, encoder=20.0, e2e=400.0))
    assert list(decode_heavy) == ["decode"] and "75.0%" in decode_heavy["decode"]
    vision_heavy = metrics_with(prefill=300.0, decode=100.0, sam=200.0, encoder=40.0, e2e=400.0)
    vision_heavy["workload"] = {"image_mode": "tiled"}
    text = derive_recommendations(vision_heavy)["prefill"]
    assert "Vision is 80.0% of prefill and vision/sam its largest part" in text and "tiled" in text


def test_missing_numbers_give_no_takeaway(tmp_path):
    assert derive_takeaways({}) == {} and derive_recommendations({}) == {}
    partial = metrics_with(prefill=100.0, decode=300.0, sam=60.0, encoder=20.0)
    del partial["summary"]["tpot_ms"]
    assert "decode" not in derive_takeaways(partial)
    failed = copy.deepcopy(partial)
    failed.update(status="FAILED", error="RuntimeError: boom")
    text = write_stakeholder_summary_from_metrics(failed, tmp_path / "s.md").read_text()
    assert "The run did not finish" in text and "RuntimeError: boom" in text
