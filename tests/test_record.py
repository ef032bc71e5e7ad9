"""The run record: one typed structure written and read back, its flat metrics, and the docs' schema."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llm_perf_opt import record
from llm_perf_opt.errors import InputError
from llm_perf_opt.record import Efficiency, RunInfo, RunRecord, StageRecord, Stats, WorkloadInfo
from llm_perf_opt.schema import StageTree

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def _stats(mean: float) -> Stats:
    return Stats(mean=mean, std=None, min=mean, max=mean, p50=mean, p90=mean, p99=mean, count=1)


def _record() -> RunRecord:
    tree = StageTree.from_paths([("vision", "sam")])
    stages = [StageRecord(key=s.key, parent=s.parent, label=s.label, kind=s.kind, time_quantity=s.time_quantity,
                          cost_prefix=s.cost_prefix) for s in tree]
    by_key = {s.key: s for s in stages}
    by_key["prefill"].stats = {"ms": _stats(10.0)}
    by_key["vision_sam"].stats = {"ms": _stats(4.0)}
    by_key["decode"].stats = {"tpot_ms": _stats(2.0)}
    by_key["decode"].flops = 1e9
    by_key["decode"].efficiency = Efficiency(time_ms=2.0, mfu=float("nan"), mbu=0.25, bound="memory")
    rec = RunRecord(status="FINISHED", run=RunInfo(run_dir="/r", run_uid="test-run", started_at="t"),
                    workload=WorkloadInfo(family="f", dtype="fp32", device="cpu", new_tokens=2, warmup=0, repeats=1,
                                          inputs=[]), env={}, samples=1, stages=stages)
    rec.metrics = record.flat_metrics(rec)
    return rec


def test_round_trip_through_metrics_json(tmp_path):
    original = _record()
    record.save(original, tmp_path / "metrics.json")
    loaded = record.load(tmp_path)
    assert loaded == original
    assert loaded.tree().get("vision_sam").parent == "vision"
    assert loaded.stage("decode").efficiency.mfu is None  # NaN is "not measured": stored as null, not a number
    assert json.loads((tmp_path / "metrics.json").read_text())["stages"][-1]["efficiency"]["mfu"] is None


def test_flat_metrics_and_tags_come_from_the_schema():
    rec = _record()
    by_key = {s.key: s for s in rec.stages}
    by_key["prefill"].share_of_parent = 0.00031  # a fraction the UI's two decimals would show as 0.00
    by_key["decode"].stats["ms"] = _stats(6.0)
    by_key["decode"].stats["step_ms"] = _stats(2.0)
    rec.throughput = {"pages_per_s": 0.5, "tokens_per_s": 12.0}
    # One section per stage: its time's p50/p90/p99/mean (decode: TPOT and its total), share, MFU and MBU
    # in percent; std/min/max, FLOPs and step times stay in metrics.json and the tables.
    assert record.flat_metrics(rec) == {
        "prefill/ms_p50": 10.0, "prefill/ms_p90": 10.0, "prefill/ms_p99": 10.0, "prefill/ms_mean": 10.0,
        "prefill/share_pct": pytest.approx(0.031),
        "vision_sam/ms_p50": 4.0, "vision_sam/ms_p90": 4.0, "vision_sam/ms_p99": 4.0, "vision_sam/ms_mean": 4.0,
        "decode/tpot_ms_p50": 2.0, "decode/tpot_ms_p90": 2.0, "decode/tpot_ms_p99": 2.0, "decode/tpot_ms_mean": 2.0,
        "decode/ms_p50": 6.0, "decode/ms_p90": 6.0, "decode/ms_p99": 6.0, "decode/ms_mean": 6.0,
        "decode/mbu_pct": 25.0,  # mfu was NaN: not measured, so not logged
        "throughput/pages_per_s": 0.5, "throughput/tokens_per_s": 12.0, "run/samples": 1.0}
    assert all(math.isfinite(v) for v in rec.metrics.values())
    assert record.record_tags(rec) == {"decode/bound": "memory"}


def test_a_missing_field_is_one_line_naming_it(tmp_path):
    payload = json.loads(_record().model_dump_json())
    del payload["stages"][1]["parent"]
    (tmp_path / "metrics.json").write_text(json.dumps(payload))
    with pytest.raises(InputError, match=r"stages\.1\.parent: Field required") as caught:
        record.load(tmp_path)
    assert "\n" not in str(caught.value)


def test_an_older_schema_version_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": 1, "metrics": {}}))
    with pytest.raises(InputError, match="schema_version 1.*re-run"):
        record.load(tmp_path)


def test_docs_schema_section_is_the_types_schema():
    text = DOCS.read_text()
    section = text.split("<!-- record-schema:start -->\n", 1)[1].split("<!-- record-schema:end -->", 1)[0]
    assert section == record.schema_markdown()
