"""Reports of one run, derived from its run directory: report.md (technical) and stakeholder_summary.md.

Both are rebuilt from files alone (metrics.json, plus operators.csv / kernels.csv for the technical
report), so they can be regenerated for any past run: `write_reports(run_dir)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from llm_perf_opt.reports.stakeholder_summary import write_stakeholder_summary_from_metrics
from llm_perf_opt.reports.takeaways import derive_recommendations, derive_takeaways
from llm_perf_opt.reports.technical_report import write_technical_report

REPORT_FILE = "report.md"
STAKEHOLDER_FILE = "stakeholder_summary.md"

__all__ = ["write_reports", "derive_takeaways", "derive_recommendations", "write_technical_report",
           "write_stakeholder_summary_from_metrics", "REPORT_FILE", "STAKEHOLDER_FILE"]


def write_reports(run_dir: Path, top_n: int | None = None) -> list[Path]:
    """Write run_dir/report.md and run_dir/stakeholder_summary.md from run_dir/metrics.json (+ CSVs).

    `top_n` (operators per stage in report.md) defaults to the length of metrics.json's top_operators,
    else 10.
    """
    run_dir = Path(run_dir)
    metrics_json = json.loads((run_dir / "metrics.json").read_text())
    if top_n is None:
        top_n = len(metrics_json.get("top_operators") or []) or 10
    operators = pd.read_csv(run_dir / "operators.csv") if (run_dir / "operators.csv").exists() else None
    kernels = pd.read_csv(run_dir / "kernels.csv") if (run_dir / "kernels.csv").exists() else None
    return [
        write_technical_report(metrics_json, run_dir / REPORT_FILE, operators, kernels, top_n),
        write_stakeholder_summary_from_metrics(metrics_json, run_dir / STAKEHOLDER_FILE),
    ]
