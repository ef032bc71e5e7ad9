"""Reports of one run, rendered from its run directory: report.md, stakeholder_summary.md, operators.md
and roofline.png.

Everything comes from files: metrics.json (the RunRecord, read through `llm_perf_opt.record.load`),
plus operators.csv / kernels.csv when the profiled pass wrote them and related_runs.json (the experiment's
other runs, which recommendations cite) when the run was tracked; so the reports of any past run can
be regenerated with `write_reports(run_dir)`. No torch is imported here (nor by anything this package
imports).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llm_perf_opt.record import RunRecord, load, load_related
from llm_perf_opt.reports.operators import write_operators_markdown
from llm_perf_opt.reports.stakeholder_summary import write_stakeholder_markdown, write_stakeholder_summary
from llm_perf_opt.reports.takeaways import derive_recommendations, derive_takeaways
from llm_perf_opt.reports.technical_report import write_technical_report

REPORT_FILE = "report.md"
STAKEHOLDER_FILE = "stakeholder_summary.md"
OPERATORS_FILE = "operators.md"
ROOFLINE_FILE = "roofline.png"
OPERATORS_CSV = "operators.csv"
KERNELS_CSV = "kernels.csv"
DEFAULT_TOP_N = 10

__all__ = ["write_reports", "read_record", "derive_takeaways", "derive_recommendations", "write_technical_report",
           "write_stakeholder_summary", "write_stakeholder_markdown", "write_operators_markdown", "REPORT_FILE",
           "STAKEHOLDER_FILE", "OPERATORS_FILE", "ROOFLINE_FILE"]


def read_record(path: str | Path) -> RunRecord:
    """The RunRecord of a run directory or metrics.json file (`record.load`: one-line InputError when it
    is missing, unreadable, of another schema version or malformed)."""
    return load(path)


def _csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None


def write_reports(run_dir: str | Path, top_n: int | None = None) -> list[Path]:
    """Write report.md, stakeholder_summary.md, operators.md (with operators.csv), stage_breakdown.png and
    roofline.png (when a stage has efficiency with intensity and achieved TFLOP/s and the record has peaks) into
    `run_dir`, from its metrics.json and CSVs alone. Returns the paths written.

    Recommendations cite related_runs.json when the directory has one (record.load_related).
    `top_n` (operators per stage) defaults to the length of the record's top_operators, else 10.
    """
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    if top_n is None:
        top_n = len(record.top_operators) or DEFAULT_TOP_N
    operators, kernels = _csv(run_dir / OPERATORS_CSV), _csv(run_dir / KERNELS_CSV)
    related = load_related(run_dir)
    written = [write_technical_report(record, run_dir / REPORT_FILE, operators, kernels, top_n, related),
               write_stakeholder_summary(record, run_dir / STAKEHOLDER_FILE, operators, related)]
    if operators is not None:
        written.append(write_operators_markdown(record, operators, kernels, run_dir / OPERATORS_FILE, top_n))
    from llm_perf_opt.reports import roofline, stage_breakdown  # matplotlib: loaded only when a report is written

    if roofline.can_plot(record):
        written.append(roofline.plot_roofline(record, run_dir / ROOFLINE_FILE))
    breakdown = stage_breakdown.plot_stage_breakdown(record, run_dir / stage_breakdown.BREAKDOWN_FILE)
    return written + ([breakdown] if breakdown is not None else [])
