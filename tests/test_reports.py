"""Tests for report.md, stakeholder_summary.md, operators.md and the takeaways, rendered from a RunRecord.

Unit tests build records with tests/records.py (defaults: e2e 402 ms = prefill 120 + decode 280 + host
gaps; vision 82 = sam 50 + encoder 30 + projector 2 inside prefill; 8 new tokens -> TPOT 280 / 7 = 40 ms),
so every expected share below is arithmetic on those numbers. One integration test runs the real
pipeline and reads the reports it wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import requires_transformers5
from llm_perf_opt.record import OperatorRecord, load
from llm_perf_opt.reports import derive_recommendations, derive_takeaways, write_reports
from llm_perf_opt.reports.stage_breakdown import plot_stage_breakdown, timed_stages
from llm_perf_opt.reports.stakeholder_summary import write_stakeholder_summary
from records import OPERATORS, build_record, gpu_record, write_run_dir

KERNELS = [("decode", "gemv_bf16_kernel", 672, 100.0), ("prefill", "sm90_gemm_kernel", 48, 25.0)]
FORBIDDEN = ("torch", "llm_perf_opt.passes", "llm_perf_opt.models", "llm_perf_opt.runners", "llm_perf_opt.tracking",
             "llm_perf_opt.compare", "llm_perf_opt.sinks")


def _rows_in_order(text: str, rows: list[str]) -> None:
    positions = [text.index(row) for row in rows]  # ValueError names a missing row
    assert positions == sorted(positions), "rows out of the record's stage order"


# --- imports ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["llm_perf_opt.reports", "llm_perf_opt.profiling.export"])
def test_reports_import_no_torch_nor_pipeline_modules(module):
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                            capture_output=True, text=True, check=True)
    lines = result.stderr.splitlines()
    imported = [line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")]
    assert module in imported  # the check reads real importtime output
    assert not [line for line in lines if "torch" in line]
    assert not [name for name in imported if name.startswith(FORBIDDEN[1:])]


# --- write_reports ----------------------------------------------------------------------------------------


def test_write_reports_writes_every_file_of_a_gpu_run(tmp_path):
    run_dir = write_run_dir(gpu_record(), tmp_path / "run", operators=OPERATORS, kernels=KERNELS)
    written = write_reports(run_dir)
    assert written == [run_dir / "report.md", run_dir / "stakeholder_summary.md", run_dir / "operators.md",
                       run_dir / "roofline.png", run_dir / "stage_breakdown.png"]
    assert (run_dir / "roofline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_reports_without_profiled_pass_or_peaks(tmp_path):
    # Efficiency numbers but no hardware peaks: no roofs to draw, no roofline; no operators.csv: no operators.md.
    record = build_record(costs={"prefill": (4.0e12, 2.0e10)})
    assert record.stage("prefill").efficiency.achieved_tflops == pytest.approx(4.0e12 / 0.120 / 1e12)
    run_dir = write_run_dir(record, tmp_path / "run")
    assert write_reports(run_dir) == [run_dir / "report.md", run_dir / "stakeholder_summary.md",
                                      run_dir / "stage_breakdown.png"]
    report = (run_dir / "report.md").read_text()
    assert "No operator data: the profiled pass did not run." in report
    assert "## Efficiency" in report and "|MFU|" not in report, "no peaks: no MFU column"
    for absent in ("## Profiled pass", "## Energy", "## Hardware peaks"):
        assert absent not in report


def test_technical_report_stage_tables(tmp_path):
    run_dir = write_run_dir(gpu_record(tpot_p50=39.5), tmp_path / "run", operators=OPERATORS, kernels=KERNELS)
    write_reports(run_dir)
    text = (run_dir / "report.md").read_text()
    # Every stage by label, nested in its parent's label, with its share of it, in the record's order.
    _rows_in_order(text, [
        "|end to end|-|measured|402.000|20.100|402.000|422.100|438.180|361.800|442.200|6|-|",
        "|prefill|end to end|measured|120.000|6.000|120.000|126.000|130.800|108.000|132.000|6|29.9% of end to end|",
        "|vision|prefill|sum_of_children|82.000|4.100|82.000|86.100|89.380|73.800|90.200|6|68.3% of prefill|",
        "|vision › sam|vision|measured|50.000|2.500|50.000|52.500|54.500|45.000|55.000|6|61.0% of vision|",
        "|vision › encoder|vision|measured|30.000|",
        "|vision › projector|vision|measured|2.000|0.100|2.000|2.100|2.180|1.800|2.200|6|2.4% of vision|",
        "|decode|end to end|measured|280.000|14.000|280.000|294.000|305.200|252.000|308.000|6|69.7% of end to end|",
    ])
    # TTFT is prefill's time; TPOT = 280 / 7; decode tokens/s = 7 / 0.280; whole request 8 / 0.402.
    assert "|time to first token, TTFT (ms)|prefill|120.000|" in text
    assert "|time per output token, TPOT (ms)|decode|40.000|2.000|39.500|" in text
    assert "|tokens/s|decode|25.000|" in text and "|tokens/s|end to end|19.900|" in text
    # Efficiency: 4e12 FLOPs in 120 ms = 33.33 TFLOP/s, / 989.4 = MFU 0.0337; intensity 200 < ridge 295: memory.
    assert "|prefill|4.000e+12|2.000e+10|120.0000|33.3333|166.6667|200.0000|0.0337|0.0497|" in text
    assert "|memory|" in text.split("|prefill|4.000e+12")[1].split("\n")[0]
    assert "|decode|2.000e+09|1.500e+09|40.0000|0.0500|37.5000|1.3333|" in text  # per step over TPOT
    # Profiled pass: absent busy shares are n/a, not 0; timed mean is decode's TPOT.
    assert "|vision › sam|1|60.000|60.000|1.200|n/a|n/a|50.000|" in text
    assert "|decode|7|504.000|72.000|1.800|0.300|0.100|40.000|" in text
    # Operators per stage from operators.csv, headed by label, share = total / the stage's profiled time.
    _rows_in_order(text, ["### prefill", "### vision › sam", "### vision › encoder", "### decode", "### other"])
    assert "|aten::conv2d|2|21.000|10.500|11.550|23.100|18.900|21.000|0.350|" in text  # 21 / 60
    assert "|aten::mm|672|144.000|0.214|79.200|158.400|129.600|144.000|0.286|" in text  # 144 / 504
    assert "|aten::copy_|4|0.500|0.125|0.275|0.550|0.450|0.500|n/a|" in text  # `other` has no profiled time
    assert "|gemv_bf16_kernel|672|100.000|0.149|0.198|" in text  # 100 / 504
    assert "|end to end|120.600|n/a|counter|" in text and "|decode|n/a|10.500|counter|" in text


def test_operator_rows_follow_the_records_stage_order(tmp_path):
    rows = [("vision_sam", "aten::conv2d", 2, 21.0), ("prefill", "aten::linear", 48, 30.0)]
    run_dir = write_run_dir(gpu_record(), tmp_path / "run", operators=rows)
    write_reports(run_dir, top_n=5)
    report = (run_dir / "report.md").read_text()
    _rows_in_order(report, ["### prefill", "### vision › sam"])  # record order, not CSV order
    assert "|aten::conv2d|2|21.000|10.500|11.550|23.100|18.900|21.000|0.350|" in report
    operators = (run_dir / "operators.md").read_text()
    assert "|vision › sam|aten::conv2d|2|21.000|" in operators and "## Stage vision › sam: top 5 operators" in operators


def test_operators_md_on_a_cpu_run(tmp_path):
    rows = [("prefill", "aten::linear", 48, 30.0), ("decode", "aten::mm", 672, 144.0)]
    run_dir = write_run_dir(gpu_record(), tmp_path / "run", operators=rows, on_device=False)
    write_reports(run_dir, top_n=1)
    text = (run_dir / "operators.md").read_text()
    assert "total_time_ms = total CPU time" in text and "self_device_ms" not in text
    _rows_in_order(text, ["## Stage time in the profiled pass", "|prefill|1|150.000|", "|decode|7|504.000|",
                          "## Top 1 operators overall", "|decode|aten::mm|672|144.000|",
                          "## Stage prefill: top 1 operators", "## Stage decode: top 1 operators"])
    assert "|prefill|aten::linear|" not in text.split("## Stage prefill")[0], "top 1 overall is decode's mm"
    assert "kernels" not in text


def test_stakeholder_summary_cites_the_record(tmp_path):
    run_dir = write_run_dir(gpu_record(tpot_p50=39.5), tmp_path / "run", operators=OPERATORS)
    write_reports(run_dir)
    text = (run_dir / "stakeholder_summary.md").read_text()
    assert ("deepseek_ocr2 full (bf16, sdpa, image mode tiled) on NVIDIA H100 80GB HBM3; torch 2.11.0, "
            "transformers 5.17.0; 6 timed samples of 8 new tokens each.") in text
    _rows_in_order(text, [
        "|end to end|402.00|402.00|422.10|whole request|",
        "|prefill (time to first token)|120.00|120.00|126.00|29.9% of end to end|",  # 120 / 402
        "|vision (inside prefill)|82.00|82.00|86.10|68.3% of prefill|",  # 82 / 120
        "|vision › sam (inside vision)|50.00|50.00|52.50|61.0% of vision|",  # 50 / 82
        "|decode|280.00|280.00|294.00|69.7% of end to end|",  # 280 / 402
    ])
    assert "Time per output token (TPOT): 39.50 ms (median; mean 40.00)" in text
    assert "Tokens per second, decode only: 25.00 tokens/s" in text
    assert "Energy per output token, decode: 10.500 J" in text and "Mean GPU power: 300.0 W" in text
    # Cost centres by self device time (operators.csv: 0.9 x total), share of the stage's profiled time.
    assert "|#|Operator|Stage|Self device time (ms)|Calls|Share of stage|" in text
    _rows_in_order(text, ["|1|aten::mm|decode|129.60|672|25.7%|", "|2|aten::linear|prefill|27.00|48|18.0%|",
                          "|3|aten::conv2d|vision › sam|18.90|2|31.5%|", "|9|aten::copy_|other|0.45|4|n/a|"])
    assert "Decode dominates end-to-end time: 69.7%" in text


# (stage, name, calls, total ms, self ms): aten::linear runs aten::addmm; sdpa runs its cudnn op, which runs
# _cudnn_attention_forward: inclusive times count the same work two or three times.
NESTED = [("decode", "aten::linear", 7, 10.0, 1.0), ("decode", "aten::addmm", 7, 9.0, 9.0),
          ("decode", "aten::scaled_dot_product_attention", 7, 3.81, 0.05),
          ("decode", "aten::_scaled_dot_product_cudnn_attention", 7, 3.81, 0.1),
          ("decode", "aten::_cudnn_attention_forward", 7, 3.81, 3.66), ("decode", "aten::cat", 7, 2.0, 2.0)]
NESTED_DECODE_MS = 24.0  # the decode profiled time: inclusive totals (32.43 ms) would claim 135% of it


def _cost_centres(text: str) -> list[list[str]]:
    section = text.split("## Top cost centres")[1].split("\n## ")[0]
    return [line.strip("|").split("|") for line in section.splitlines() if line[:2].strip("|").isdigit()]


def _nested_summary(tmp_path, on_device: bool, columns: dict) -> tuple[Path, str]:
    """A run directory of the NESTED operators (operators.csv with `columns` set, in NESTED's row order) and
    its stakeholder summary's text."""
    record = gpu_record(operators=[row[:4] for row in NESTED],
                        profiled={"decode": {"ranges": 7, "profiled_ms": NESTED_DECODE_MS}})
    run_dir = write_run_dir(record, tmp_path / "run", operators=[row[:4] for row in NESTED], on_device=on_device)
    frame = pd.read_csv(run_dir / "operators.csv")
    assert list(frame["name"]) == [row[1] for row in NESTED]
    for name, values in columns.items():
        frame[name] = values
    frame.to_csv(run_dir / "operators.csv", index=False)
    write_reports(run_dir)
    return run_dir, (run_dir / "stakeholder_summary.md").read_text()


@pytest.mark.parametrize("on_device", [True, False])
def test_cost_centres_rank_by_self_time_so_nested_work_counts_once(tmp_path, on_device):
    run_dir, text = _nested_summary(tmp_path, on_device, {
        "self_cpu_ms": [row[4] * 1.5 for row in NESTED],  # CPU self times: other numbers, same order
        "self_device_ms": [row[4] for row in NESTED] if on_device else float("nan")})
    basis, heading, scale = (("self device time", "Self device time", 1.0) if on_device
                             else ("self CPU time", "Self CPU time", 1.5))
    assert f"|{heading} (ms)|Calls|Share of stage|" in text and f"most {basis} in the profiled" in text
    rows = _cost_centres(text)
    names = [row[1] for row in rows]
    assert rows[0][:5] == ["1", "aten::addmm", "decode", f"{9.0 * scale:.2f}", "7"]
    assert names.index("aten::linear") > names.index("aten::addmm")
    assert names[1] == "aten::_cudnn_attention_forward"  # the sdpa chain's work, once, where it is done
    # Shares of decode's profiled time add up to the self times over it: at most the whole stage.
    shares = [float(row[5].rstrip("%")) / 100 for row in rows]
    expected = sum(row[4] * scale for row in NESTED) / NESTED_DECODE_MS
    assert sum(shares) == pytest.approx(expected, abs=0.0005 * len(shares)) and sum(shares) <= 1.0
    takeaway = derive_takeaways(load(run_dir), pd.read_csv(run_dir / "operators.csv"))["top operator, decode"]
    assert f"most {basis} in decode" in takeaway and f"is aten::addmm: {9.0 * scale:.2f} ms over 7 calls" in takeaway
    assert f"aten::addmm: {9.0 * scale:.2f} ms" in text.split("## Takeaways")[1], "the summary's takeaway agrees"


@pytest.mark.parametrize("on_device", [True, False])
def test_cost_centres_show_one_level_of_the_operator_tree(tmp_path, on_device):
    """With top-level columns (every run since they exist): the calls the model code makes, inclusive time."""
    top = {"aten::linear": 10.0, "aten::scaled_dot_product_attention": 3.81, "aten::cat": 2.0}  # the others nest
    names = [row[1] for row in NESTED]
    run_dir, text = _nested_summary(tmp_path, on_device, {
        "top_level_calls": [7 if name in top else 0 for name in names],
        "top_level_ms": [top.get(name, 0.0) for name in names]})
    assert "|Time incl. what it calls (ms)|Calls|Share of stage|" in text and "no listed operator runs inside" in text
    rows = _cost_centres(text)
    assert [row[1:5] for row in rows] == [["aten::linear", "decode", "10.00", "7"],
                                          ["aten::scaled_dot_product_attention", "decode", "3.81", "7"],
                                          ["aten::cat", "decode", "2.00", "7"]]
    shares = sum(float(row[5].rstrip("%")) for row in rows)  # shown with one decimal
    assert shares == pytest.approx(100 * 15.81 / NESTED_DECODE_MS, abs=0.15)
    takeaway = derive_takeaways(load(run_dir), pd.read_csv(run_dir / "operators.csv"))["top operator, decode"]
    assert "is aten::linear: 10.00 ms over 7 calls" in takeaway


def test_cost_centres_from_the_records_lists_without_operators_csv(tmp_path):
    record = build_record(operators=[row[:4] for row in NESTED])
    lists = [OperatorRecord(stage=s, name=n, calls=c, total_time_ms=t, self_cpu_ms=own) for s, n, c, t, own in NESTED]
    record = record.model_copy(update={"top_operators": lists[:4], "top_operators_by_stage": {"decode": lists}})
    text = write_stakeholder_summary(record, tmp_path / "s.md").read_text()
    rows = _cost_centres(text)
    assert "|Self CPU time (ms)|" in text and rows[0][1:4] == ["aten::addmm", "decode", "9.00"]
    assert [row[1] for row in rows].index("aten::linear") == 3  # below addmm, _cudnn_attention_forward, cat
    assert len(rows) == 4, "as many rows as the record's top_operators"
    # A record whose lists carry no self time at all says it ranks by total time, inclusive.
    plain = write_stakeholder_summary(build_record(operators=[row[:4] for row in NESTED]), tmp_path / "p.md")
    assert "|Total (ms)|" in plain.read_text() and "operators inside it can both appear" in plain.read_text()


def test_report_of_a_cpu_run_makes_no_efficiency_or_energy_claims(tmp_path):
    run_dir = write_run_dir(build_record(), tmp_path / "run")
    write_reports(run_dir)
    for name in ("report.md", "stakeholder_summary.md"):
        text = (run_dir / name).read_text()
        for claim in ("MFU", "MBU", "launch-bound", "memory-bound", "compute-bound", "busy", "Energy", " J "):
            assert claim not in text, (name, claim)
    assert "No operator data (the profiled pass did not run)." in (run_dir / "stakeholder_summary.md").read_text()


def test_failed_run_says_so(tmp_path):
    record = build_record(status="FAILED", error="RuntimeError: boom")
    text = write_stakeholder_summary(record, tmp_path / "s.md").read_text()
    assert "The run did not finish** (FAILED: RuntimeError: boom)" in text


# --- takeaways follow the numbers --------------------------------------------------------------------------


def test_dominant_stage_of_e2e_follows_the_numbers():
    decode_heavy = derive_takeaways(build_record(prefill_ms=100.0, decode_ms=300.0, e2e_ms=400.0))
    assert decode_heavy["end_to_end"] == ("Decode dominates end-to-end time: 75.0% (300.00 ms of 400.00 ms mean per "
                                          "request). Prefill takes 25.0% (100.00 ms).")
    prefill_heavy = derive_takeaways(build_record(prefill_ms=300.0, decode_ms=100.0, e2e_ms=410.0))
    assert prefill_heavy["end_to_end"].startswith("Prefill dominates end-to-end time: 73.2% (300.00 ms of 410.00 ms")


def test_dominant_child_of_each_group_in_prefill():
    substages = {("vision", "sam"): 60.0, ("vision", "encoder"): 20.0, ("audio", "frontend"): 4.0,
                 ("audio", "encoder"): 12.0}
    takeaways = derive_takeaways(build_record(prefill_ms=100.0, substages=substages))
    assert takeaways["vision"] == ("Vision runs inside prefill and takes 80.0% of it (80.00 of 100.00 ms). "
                                   "Within vision, vision › sam dominates with 75.0% (60.00 ms).")
    assert takeaways["audio"] == ("Audio runs inside prefill and takes 16.0% of it (16.00 of 100.00 ms). "
                                  "Within audio, audio › encoder dominates with 75.0% (12.00 ms).")
    encoder_heavy = derive_takeaways(build_record(prefill_ms=100.0, substages={("vision", "sam"): 10.0,
                                                                               ("vision", "encoder"): 30.0}))
    assert "vision › encoder dominates with 75.0% (30.00 ms)" in encoder_heavy["vision"]


def test_decode_boundness_from_efficiency():
    plain = derive_takeaways(build_record(decode_ms=420.0))
    assert plain["decode"] == ("Decode costs 60.00 ms per output token (TPOT p50; mean 60.00 ms), "
                               "16.7 tokens/s per sequence.")  # 420 / 7; 7 / 0.42
    # The efficiency's verdict wins over busy share and MBU; a low MBU earns no memory recommendation.
    labelled = build_record(efficiency={"decode": {"mbu": 0.015, "bound": "memory", "busy_share": 0.2}})
    text = derive_takeaways(labelled)["decode"]
    assert text.endswith("During decode the device is busy 20% of the time; MBU 1.5%; memory-bound (bytes moved, "
                         "not arithmetic, set the pace) (efficiency verdict).")
    assert derive_recommendations(labelled)["decode"] == "Optimise decode first: it is 69.7% of end-to-end time."
    # Without a verdict, a busy share below 50% reads as launch-bound, MBU >= 50% as memory-bound.
    launch = build_record(efficiency={"decode": {"busy_share": 0.3, "mbu": 0.2, "mfu": 0.00005}})
    text = derive_takeaways(launch)["decode"]
    assert "busy 30% of the time; MBU 20.0%; MFU 0.005%; launch-bound" in text and "(busy share below 50%)" in text
    assert "device busy only 30% of decode" in derive_recommendations(launch)["decode"]
    memory = build_record(efficiency={"decode": {"busy_share": 0.95, "mbu": 0.8}})
    text = derive_takeaways(memory)["decode"]
    assert "MBU 80.0%; memory-bound" in text and "(MBU at or above 50%)" in text and "launch" not in text
    assert "At MBU 80% decode is limited by memory traffic" in derive_recommendations(memory)["decode"]
    assert "prefill" not in derive_takeaways(memory), "no prefill efficiency: nothing said about it"


def test_pipeline_verdict_from_costs_and_busy_share():
    # decode: 2e9 FLOPs / 1.5e9 bytes per 40 ms step; busy 30% -> launch (analysis.efficiency's verdict).
    takeaways = derive_takeaways(gpu_record())
    assert "MBU 1.1%; MFU 0.0051%; launch-bound" in takeaways["decode"]  # 37.5 / 3352; 0.05 / 989.4
    assert takeaways["prefill"].startswith("Prefill (TTFT 120.00 ms mean): the device is busy 90% of the time; "
                                           "MBU 5.0%; MFU 3.4%; memory-bound")


def test_top_operator_per_stage_with_its_share_of_profiled_time():
    takeaways = derive_takeaways(gpu_record())
    assert takeaways["top operator, decode"] == (
        "The largest operator in decode is aten::mm: 144.00 ms total over 672 calls in the profiled pass, "
        "28.6% of decode's profiled time (504.00 ms).")
    assert takeaways["top operator, prefill"] == (  # prefill holds stages: its own operators are those outside them
        "The largest operator directly in prefill (outside the stages nested in it) is aten::linear: 30.00 ms total "
        "over 48 calls in the profiled pass, 20.0% of prefill's profiled time (150.00 ms).")
    assert "aten::conv2d: 21.00 ms total over 2 calls in the profiled pass, 35.0% of vision › sam's" \
        in takeaways["top operator, vision › sam"]
    assert [t for t in takeaways if t.startswith("top operator")] == [
        "top operator, prefill", "top operator, vision › sam", "top operator, vision › encoder",
        "top operator, vision › projector", "top operator, decode"]  # record order; `other` is no stage
    unprofiled = derive_takeaways(build_record(operators=OPERATORS))
    assert unprofiled["top operator, decode"].endswith("over 672 calls in the profiled pass."), "no share without time"


def test_profiler_overhead_and_recommendation():
    record = gpu_record()
    assert derive_takeaways(record)["profiler_overhead"].startswith(
        "Under the profiler, prefill 1.25x and a decode step 1.80x of their timed times")
    assert derive_recommendations(record)["profiling"].endswith("a decode step took 1.80x its timed time.")
    mild = gpu_record(profiled={"prefill": {"profiler_overhead_ratio": 1.1},
                                "decode": {"profiler_overhead_ratio": 1.3}})
    assert "profiling" not in derive_recommendations(mild)


def test_recommendations_follow_the_dominant_stage():
    decode_heavy = derive_recommendations(build_record(prefill_ms=100.0, decode_ms=300.0, e2e_ms=400.0))
    assert list(decode_heavy) == ["decode"] and "75.0%" in decode_heavy["decode"]
    vision_heavy = build_record(prefill_ms=300.0, decode_ms=100.0, e2e_ms=400.0,
                                substages={("vision", "sam"): 200.0, ("vision", "encoder"): 40.0})
    assert derive_recommendations(vision_heavy)["prefill"] == (
        "Optimise prefill (time to first token) first: it is 75.0% of end-to-end time. Vision is 80.0% of prefill "
        "and vision › sam its largest part: fewer or smaller image views (image mode now: tiled) cut it most.")


def test_missing_numbers_give_no_takeaway():
    empty = build_record(prefill_ms=None, decode_ms=None, e2e_ms=None, substages={})
    assert derive_takeaways(empty) == {} and derive_recommendations(empty) == {}
    # Without decode's time, neither which stage dominates nor decode's TPOT is known.
    no_decode = derive_takeaways(build_record(decode_ms=None))
    assert "end_to_end" not in no_decode and "decode" not in no_decode and "vision" in no_decode
    # A group with an untimed part has no time of its own: no vision takeaway.
    untimed_part = build_record(substages={("vision", "sam"): 50.0, ("vision", "encoder"): None})
    assert untimed_part.stage("vision").stats == {}
    assert "vision" not in derive_takeaways(untimed_part)
    partial = build_record()
    del partial.stage("decode").stats["tpot_ms"]
    assert "decode" not in derive_takeaways(partial)
    assert "energy" not in derive_takeaways(partial) and "profiler_overhead" not in derive_takeaways(partial)


# --- the real pipeline -------------------------------------------------------------------------------------


@requires_transformers5
def test_reports_written_by_run_profile_cite_every_stage(tmp_path, tracking_uri):
    from conftest import FAST, compose_config
    from llm_perf_opt.runners.profile import run_profile

    outcome = run_profile(compose_config(*FAST, f"tracking.uri={tracking_uri}"), tmp_path / "run")
    run_dir = tmp_path / "run"
    assert outcome.status == "FINISHED", outcome.error
    record = load(run_dir)
    report = (run_dir / "report.md").read_text()
    summary = (run_dir / "stakeholder_summary.md").read_text()
    timed = [stage for stage in record.stages if "ms" in stage.stats]
    assert {s.key for s in timed} >= {"e2e", "prefill", "decode"}
    for stage in timed:
        parent = record.stage(stage.parent).label if stage.parent else "-"
        assert f"|{stage.label}|{parent}|{stage.kind}|{stage.stats['ms'].mean:.3f}|" in report, stage.key
        assert f"|{stage.stats['ms'].mean:.2f}|{stage.stats['ms'].p50:.2f}|" in summary, stage.key
    tpot = record.stage("decode").stats["tpot_ms"]
    assert f"Time per output token (TPOT): {tpot.p50:.2f} ms (median; mean {tpot.mean:.2f})" in summary
    if (run_dir / "operators.csv").exists():
        operators = (run_dir / "operators.md").read_text()
        for stage in record.stages:
            if stage.profiled is not None and stage.key in record.top_operators_by_stage:
                assert f"## Stage {stage.label}: top" in operators, stage.key


def test_stage_breakdown_draws_each_timed_stage_nested_under_its_parent(tmp_path):
    record = gpu_record()
    rows = timed_stages(record)
    timed = [s for s in record.stages if s.mean() is not None]
    assert [ms for _, ms, _, _ in rows] == [s.mean() for s in timed]  # one bar per timed stage, record order
    depth = {s.key: len(record.tree().ancestors(s.key)) for s in timed}
    assert [label for label, *_ in rows] == ["    " * depth[s.key] + s.label for s in timed]
    assert plot_stage_breakdown(record, tmp_path / "breakdown.png").stat().st_size > 0
