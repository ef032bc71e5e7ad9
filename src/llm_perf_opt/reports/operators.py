"""operators.md: the profiled pass's operators (and kernels on a GPU) by stage, from operators.csv / kernels.csv
and the RunRecord (stage order, labels, each stage's profiled time).

Tables: stage time in the profiled pass (from each stage's `profiled`), the top-N operators overall,
the top-N per stage (stages in the record's order, shown by label, `other` and unknown names last),
and the same for kernels when kernels.csv has rows. `share of stage` = total time / the stage's
profiled time (both summed over the profiled pass).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llm_perf_opt.record import RunRecord
from llm_perf_opt.reports.markdown import header, new_document, table, write_markdown
from llm_perf_opt.reports.technical_report import operator_rows, present_columns
from llm_perf_opt.reports.view import stage_display

TITLE = "Operators by stage"
KERNEL_COLUMNS = ["name", "calls", "device_ms", "mean_device_ms"]
STAGE_TIME_FIELDS = (("ranges", "ranges"), ("profiled (ms)", "profiled_ms"), ("cpu (ms)", "cpu_ms"),
                     ("operator self cpu (ms)", "operator_self_cpu_ms"), ("other self cpu (ms)", "other_self_cpu_ms"),
                     ("sub-stage cpu (ms)", "substage_cpu_ms"), ("host gap (ms)", "host_gap_ms"),
                     ("device (ms)", "device_ms"), ("device busy (ms)", "device_busy_ms"),
                     ("device span (ms)", "device_span_ms"), ("busy share", "busy_share"))


def _on_device(operators: pd.DataFrame, kernels: pd.DataFrame | None) -> bool:
    has_kernels = kernels is not None and len(kernels) > 0
    return has_kernels or ("total_device_ms" in operators and bool(operators["total_device_ms"].notna().any()))


def _overall(record: RunRecord, frame: pd.DataFrame, columns: list[str], by: str, top_n: int) -> list[list]:
    return [[stage_display(record, row["stage"]), *(row[c] for c in columns)]
            for _, row in frame.nlargest(top_n, by).iterrows()]


def write_operators_markdown(record: RunRecord, operators: pd.DataFrame, kernels: pd.DataFrame | None, path: str | Path,
                             top_n: int = 10) -> Path:
    """Write operators.md for `record` to exactly `path`."""
    basis = "device" if _on_device(operators, kernels) else "CPU"
    md = new_document(TITLE)
    md.new_paragraph(
        f"From the profiled pass (torch.profiler trace: "
        f"{record.profiled_pass.trace if record.profiled_pass else 'trace.json.gz'}). Each operator is charged to "
        f"the innermost stage range containing it (sub-stages nest in the stage they run inside; `other` is outside "
        f"every stage). Ranked by total_time_ms = total {basis} time (children included, so nested operators "
        f"overlap: aten::linear contains aten::addmm). Self time excludes the operator's child operators. Times are "
        f"summed over the profiled pass and inflated by the profiler (see the overhead ratios in report.md)."
    )
    profiled = [stage for stage in record.stages if stage.profiled is not None]
    if profiled:
        rows = [[stage.label, *(getattr(stage.profiled, f) for _, f in STAGE_TIME_FIELDS)] for stage in profiled]
        columns, rows = present_columns(["stage", *(h for h, _ in STAGE_TIME_FIELDS)], rows)
        header(md, "Stage time in the profiled pass (ms, summed over ranges)")
        table(md, columns, rows, digits=3)
    columns = ["name", "calls", "total_time_ms", "mean_time_ms", "self_cpu_ms", "total_cpu_ms"]
    if basis == "device":
        columns += ["self_device_ms"]
    if len(operators):
        header(md, f"Top {top_n} operators overall")
        table(md, ["stage", *columns], _overall(record, operators, columns, "total_time_ms", top_n), digits=3)
        for label, rows in operator_rows(record, operators, columns, "total_time_ms", top_n):
            header(md, f"Stage {label}: top {top_n} operators")
            table(md, [*columns, "share of stage"], rows, digits=3)
    else:
        md.new_paragraph("operators.csv has no rows.")
    if kernels is not None and len(kernels):
        header(md, f"Top {top_n} kernels overall")
        table(md, ["stage", *KERNEL_COLUMNS], _overall(record, kernels, KERNEL_COLUMNS, "device_ms", top_n), digits=3)
        for label, rows in operator_rows(record, kernels, KERNEL_COLUMNS, "device_ms", top_n):
            header(md, f"Stage {label}: top {top_n} kernels")
            table(md, [*KERNEL_COLUMNS, "share of stage"], rows, digits=3)
    return write_markdown(md, path)
