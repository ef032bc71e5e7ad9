"""One comparison, start to finish: select runs -> summary -> verdicts / operator diff -> sinks.

Cost model: the summary (table, ratios, environment from tags) is one `search_runs` query plus
column-wise pandas, whatever the number of runs, and the baseline's metrics.json (its stage tree: order,
nesting and labels of the stages). Files (samples.csv, decode_steps.csv, env.json, operators.csv) are
read only for the baseline and up to `verdicts.max_candidates` candidates: beyond that the per-sample
part is skipped with a note. The output directory is written completely before the MLflow run mirrors it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from llm_perf_opt.compare import plots as comparison_plots
from llm_perf_opt.compare.artifacts import RunFiles
from llm_perf_opt.compare.environment import (
    environment_from_runs,
    environment_mismatches,
    environment_unknowns,
    fill_from_env_json,
)
from llm_perf_opt.compare.operator_diff import OPERATOR_DIFF_COLUMNS, operator_diff
from llm_perf_opt.compare.report import terminal_text, write_markdown
from llm_perf_opt.compare.selection import COMPARISON_KIND, RunSelection, as_list, select_runs
from llm_perf_opt.compare.summary import logged_metrics, summary_table
from llm_perf_opt.compare.verdicts import (
    SAMPLE_FILES,
    TOO_FEW,
    VERDICT_COLUMNS,
    VERDICTS,
    VerdictSettings,
    sampled_metrics,
    verdict_table,
)
from llm_perf_opt.record import RECORD_FILE, RunRecord
from llm_perf_opt.reports import throughput_latency
from llm_perf_opt.reports.run_note import comparison_note
from llm_perf_opt.schema import KIND_TAG, StageTree, metric_key
from llm_perf_opt.sinks.run_directory import RunDirectory
from llm_perf_opt.tracking.mlflow_tracker import MlflowTracker, flatten, resolve_tracking_uri

TAG_VALUE_LIMIT = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH


@dataclass
class CompareOutcome:
    out_dir: Path
    baseline_run_id: str
    run_ids: list[str]
    summary: pd.DataFrame
    verdicts: pd.DataFrame
    operator_diff: pd.DataFrame
    mismatches: dict[str, list[str]]
    notes: list[str]
    text: str
    mlflow_run_id: str | None = None
    tracking_errors: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    runs: pd.DataFrame  # the search_runs frame, oldest first
    baseline_run_id: str
    summary: pd.DataFrame
    environment: pd.DataFrame
    record: RunRecord | None = None  # the baseline's metrics.json, when it could be read

    @property
    def tree(self) -> StageTree | None:
        return self.record.tree() if self.record is not None else None


def selection_from_config(cfg: DictConfig) -> RunSelection:
    last = cfg.select.get("last")
    return RunSelection(experiments=as_list(cfg.select.get("experiment")), filter_string=cfg.select.get("filter"),
                        run_ids=as_list(cfg.select.get("run_ids")), last=int(last) if last else None,
                        status=cfg.select.get("status"), sweep=cfg.select.get("sweep"))


def settings_from_config(cfg: DictConfig) -> VerdictSettings:
    v = cfg.verdicts
    return VerdictSettings(alpha=float(v.alpha), min_effect=float(v.min_effect), confidence=float(v.confidence),
                           bootstrap_resamples=int(v.bootstrap_resamples), bootstrap_method=str(v.bootstrap_method),
                           seed=int(v.seed), allow_env_mismatch=bool(cfg.allow_env_mismatch))


def _run_dirs(runs: pd.DataFrame) -> dict[str, str]:
    if "tags.run_dir" not in runs:
        return {}
    return {str(r): d for r, d in zip(runs["run_id"], runs["tags.run_dir"]) if isinstance(d, str) and d}


def summarize_runs(tracking_uri: str, selection: RunSelection, baseline_run_id: str | None,
                   patterns: list[str] | None = None, extra: list[str] | tuple[str, ...] = (),
                   files: RunFiles | None = None) -> RunSummary:
    """The fast part: one query, the baseline's record (when `files` is given), then the table, ratios and
    environments from tags (no per-run calls). patterns None: the default headline set."""
    runs, baseline = select_runs(tracking_uri, selection, baseline_run_id)
    record = files.record(baseline, _run_dirs(runs).get(baseline)) if files is not None else None
    tree = record.tree() if record is not None else None
    return RunSummary(runs, baseline, summary_table(runs, baseline, patterns, extra, tree),
                      environment_from_runs(runs), record)


def baseline_metric_names(runs: pd.DataFrame, baseline_run_id: str) -> list[str]:
    """The metrics the baseline logged (non-empty in the search frame)."""
    row = runs.loc[runs["run_id"].astype(str) == baseline_run_id].iloc[0]
    return [name for name in logged_metrics(runs) if pd.notna(row[f"metrics.{name}"])]


def judged_names(runs: pd.DataFrame, baseline_run_id: str, baseline: RunRecord | None) -> list[str]:
    """Metric names whose (stage, quantity) get per-sample verdicts: the baseline's logged metrics and every
    distribution of its record (MLflow gets only the time statistics; tokens/s and decode step times are
    judged from the record's `stats` and the per-sample files all the same)."""
    names = baseline_metric_names(runs, baseline_run_id)
    if baseline is not None:
        names += [metric_key(stage.key, quantity, "p50") for stage in baseline.stages for quantity in stage.stats]
    return names


def _read_run_files(files: RunFiles, runs: pd.DataFrame, run_ids: list[str], environment: pd.DataFrame,
                    operators_enabled: bool) -> tuple[dict[str, dict[str, pd.DataFrame]], dict[str, pd.DataFrame]]:
    """samples[run_id][file] for the SAMPLE_FILES a run has (a run without samples.csv is left out), and
    operators[run_id]."""
    run_dirs = _run_dirs(runs)
    samples: dict[str, dict[str, pd.DataFrame]] = {}
    operators: dict[str, pd.DataFrame] = {}
    for run_id in run_ids:
        run_dir = run_dirs.get(run_id)
        env = files.json(run_id, "env.json", run_dir)
        if env is not None:
            fill_from_env_json(environment, run_id, env)
        first = files.csv(run_id, SAMPLE_FILES[0], run_dir)
        if first is not None:  # the other sample files are read only for a run with samples.csv
            tables = {SAMPLE_FILES[0]: first}
            for name in SAMPLE_FILES[1:]:
                frame = files.csv(run_id, name, run_dir)
                if frame is not None:
                    tables[name] = frame
            samples[run_id] = tables
        if operators_enabled:
            ops = files.csv(run_id, "operators.csv", run_dir)
            if ops is not None:
                operators[run_id] = ops
    return samples, operators


_CONSEQUENCE = {RECORD_FILE: "sub-stages are listed by name and the stage plot shows prefill and decode only",
                "samples.csv": "no per-sample verdicts or distributions for them",
                "decode_steps.csv": "no decode/step_ms verdicts for them",
                "env.json": "their environment comes from tags only",
                "operators.csv": "operator diff skipped for them (profile with profiling.operators.enabled=true)"}


def _missing_notes(files: RunFiles) -> list[str]:
    notes = []
    for name, by_run in files.missing.items():
        first_reason = next(iter(by_run.values()))
        notes.append(f"{name} unavailable for {len(by_run)} run(s) ({', '.join(r[:8] for r in by_run)}): "
                     f"{_CONSEQUENCE.get(name, 'skipped')}; e.g. {first_reason}")
    return notes


def _truncated_ids(run_ids: list[str], limit: int = TAG_VALUE_LIMIT) -> tuple[str, bool]:
    """Comma-separated ids that fit an MLflow tag value; the full list is in compared_runs.json."""
    joined = ",".join(run_ids)
    if len(joined) <= limit:
        return joined, False
    kept: list[str] = []
    length = -1  # no comma before the first id
    for run_id in run_ids:
        if length + 1 + len(run_id) > limit:
            break
        kept.append(run_id)
        length += 1 + len(run_id)
    return ",".join(kept), True


def run_comparison(cfg: DictConfig, out_dir: Path) -> CompareOutcome:
    """Compare the selected runs. Raises InputError for a bad selection before anything is written."""
    uri = resolve_tracking_uri(cfg.tracking.uri, Path.cwd())
    selection = selection_from_config(cfg)
    settings = settings_from_config(cfg)
    patterns = [str(p) for p in cfg.summary.metrics] if cfg.summary.metrics else None
    extra = [str(p) for p in cfg.summary.get("extra_metrics") or []]
    with tempfile.TemporaryDirectory(prefix="llm-perf-opt-compare-") as cache:
        files = RunFiles(uri, Path(cache))
        return _compare(cfg, out_dir, uri, selection, settings, patterns, extra, files)


def _environment_notes(environment: pd.DataFrame, baseline: str, mismatches: dict[str, list[str]],
                       settings: VerdictSettings, detailed: bool) -> list[str]:
    notes = []
    one_sided: dict[str, list[str]] = {}
    for run_id, fields in environment_unknowns(environment, baseline).items():
        for name in fields:
            one_sided.setdefault(name, []).append(run_id[:8])
    for name, run_ids in one_sided.items():
        notes.append(f"environment field {name} is known for only one of the baseline and {len(run_ids)} run(s) "
                     f"({', '.join(run_ids[:5])}{', ...' if len(run_ids) > 5 else ''}): not compared for them")
    if mismatches and not settings.allow_env_mismatch and detailed:
        notes.append(f"{len(mismatches)} run(s) differ from the baseline's environment: their verdicts read "
                     "'environment mismatch' (allow_env_mismatch=true compares them anyway)")
    return notes


def _operator_diffs(cfg: DictConfig, operators: dict[str, pd.DataFrame], baseline: str, candidates: list[str],
                    tree: StageTree | None, notes: list[str]) -> pd.DataFrame:
    diffs = [pd.DataFrame(columns=OPERATOR_DIFF_COLUMNS)]
    if baseline in operators:
        for run_id in (r for r in candidates if r in operators):
            diff, note = operator_diff(operators[baseline], operators[run_id], run_id, int(cfg.operators.top_n),
                                       str(cfg.operators.time_column), tree)
            diffs.append(diff)
            if note:
                notes.append(note)
    return pd.concat([d for d in diffs if not d.empty] or diffs, ignore_index=True)


def _plotted(cfg: DictConfig, summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows the plots draw: baseline first, at most plots.max_runs."""
    return pd.concat([summary[summary["baseline"]], summary[~summary["baseline"]]]).head(int(cfg.plots.max_runs))


def _plots(cfg: DictConfig, out: RunDirectory, summary: pd.DataFrame, samples: dict[str, dict[str, pd.DataFrame]],
           tree: StageTree | None, notes: list[str], throughput: pd.DataFrame | None = None) -> list[Path]:
    if not bool(cfg.plots.enabled):
        return []
    plot_dir = out.file("plots")
    plot_dir.mkdir(exist_ok=True)
    shown = _plotted(cfg, summary)
    if len(shown) < len(summary):
        notes.append(f"plots show {len(shown)} of {len(summary)} runs (plots.max_runs)")
    made = (comparison_plots.plot_stage_times(shown, plot_dir / "stage_times.png", tree),
            comparison_plots.plot_efficiency(shown, plot_dir / "efficiency.png", tree),
            comparison_plots.plot_distributions(samples, shown, plot_dir / "latency_distributions.png", tree),
            comparison_plots.plot_throughput_latency(throughput, plot_dir / "throughput_latency.png"))
    return [path for path in made if path is not None]


def _write_tables(out: RunDirectory, cfg: DictConfig, uri: str, selection: RunSelection, result: RunSummary,
                  mismatches: dict[str, list[str]], verdicts: pd.DataFrame, op_diff: pd.DataFrame) -> pd.DataFrame:
    """config.yaml, comparison.csv (summary + environment), verdicts.csv, operator_diff.csv, compared_runs.json."""
    summary, runs = result.summary, result.runs
    out.write_text("config.yaml", OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))))
    env_columns = result.environment.add_prefix("env.").reindex(summary.index)
    env_columns["env.mismatch"] = [" ; ".join(mismatches.get(r, [])) for r in summary.index]
    summary_out = pd.concat([summary, env_columns], axis=1)
    out.write_csv("comparison.csv", summary_out)
    out.write_csv("verdicts.csv", verdicts)
    out.write_csv("operator_diff.csv", op_diff)
    columns = ["run_id", "experiment_id", "status", "start_time", "artifact_uri", "tags.mlflow.runName", "tags.run_dir"]
    listed = runs[[c for c in columns if c in runs.columns]].astype(str)
    out.write_json("compared_runs.json", {
        "baseline_run_id": result.baseline_run_id,
        "run_ids": list(summary.index),
        "tracking_uri": uri,
        "selection": selection.describe(),
        "runs": listed.rename(columns=lambda c: c.removeprefix("tags.")).to_dict(orient="records"),
    })
    return summary_out


def _track(cfg: DictConfig, uri: str, out: RunDirectory, baseline: str, run_ids: list[str],
           mismatches: dict[str, list[str]], verdicts: pd.DataFrame) -> MlflowTracker:
    """The comparison's own MLflow run: tags and a description (links to the compared runs), verdict counts,
    every output file."""
    ids_tag, truncated = _truncated_ids(run_ids)
    tracker = MlflowTracker(uri, cfg.tracking.experiment, bool(cfg.tracking.enabled))
    tracker.start(cfg.tracking.run_name or f"compare-{len(run_ids)}-runs-vs-{baseline[:8]}", {
        KIND_TAG: COMPARISON_KIND,
        "compare.baseline_run_id": baseline,
        "compare.run_ids": ids_tag,
        "compare.run_ids_truncated": str(truncated).lower(),
        "compare.run_count": len(run_ids),
    })
    tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
    listed = json.loads(out.file("compared_runs.json").read_text(encoding="utf-8"))["runs"]  # _write_tables wrote it
    tracker.set_note(comparison_note(({**run, "name": run.get("mlflow.runName")} for run in listed), baseline))
    counted = {"compare/runs": float(len(run_ids)), "compare/env_mismatched_runs": float(len(mismatches))}
    if not verdicts.empty:  # counts only when verdicts were computed: a skipped test is not "0 regressed"
        counts = verdicts["verdict"].value_counts()
        counted.update({f"compare/verdict_{v.replace(' ', '_')}": float(counts.get(v, 0)) for v in VERDICTS})
    tracker.log_metrics(counted)
    if tracker.errors:
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
    tracker.log_artifacts(out.path)
    tracker.finish("FINISHED")
    if tracker.errors and not out.file("tracking_error.txt").exists():
        out.write_text("tracking_error.txt", "\n".join(tracker.errors) + "\n")
    return tracker


def _compare(cfg: DictConfig, out_dir: Path, uri: str, selection: RunSelection, settings: VerdictSettings,
             patterns: list[str] | None, extra: list[str], files: RunFiles) -> CompareOutcome:
    result = summarize_runs(uri, selection, cfg.get("baseline"), patterns, extra, files)
    runs, baseline, summary, tree = result.runs, result.baseline_run_id, result.summary, result.tree
    candidates = [r for r in summary.index if r != baseline]
    notes: list[str] = []
    samples: dict[str, dict[str, pd.DataFrame]] = {}
    operators: dict[str, pd.DataFrame] = {}
    detailed = bool(cfg.verdicts.enabled) and len(candidates) <= int(cfg.verdicts.max_candidates)
    if not bool(cfg.verdicts.enabled):
        notes.append("verdicts.enabled=false: summary only (no per-sample verdicts, operator diff or distributions)")
    elif not detailed:
        notes.append(f"{len(candidates)} candidates > verdicts.max_candidates={cfg.verdicts.max_candidates}: "
                     "per-sample verdicts, operator diff and distributions skipped (narrow select.* or raise it)")
    if detailed:
        samples, operators = _read_run_files(files, runs, [baseline, *candidates], result.environment,
                                             bool(cfg.operators.enabled))
    notes += _missing_notes(files)
    mismatches = environment_mismatches(result.environment, baseline)
    notes += _environment_notes(result.environment, baseline, mismatches, settings, detailed)

    verdicts = pd.DataFrame(columns=VERDICT_COLUMNS)
    if detailed and baseline in samples:
        verdicts = verdict_table(samples, baseline, candidates, mismatches, settings,
                                 sampled_metrics(judged_names(runs, baseline, result.record), tree))
        for run_id in verdicts.loc[verdicts["verdict"] == TOO_FEW, "run_id"].unique():
            notes.append(f"run {run_id[:8]}: too few samples for some metrics at alpha={settings.alpha} "
                         "(see the verdict notes)")
    elif detailed:
        notes.append(f"baseline {baseline[:8]} has no samples.csv: no per-sample verdicts")
    op_diff = _operator_diffs(cfg, operators, baseline, candidates, tree, notes)

    out = RunDirectory(out_dir)
    summary_out = _write_tables(out, cfg, uri, selection, result, mismatches, verdicts, op_diff)
    # The throughput-latency points of the plotted runs; None unless their batch sizes differ.
    throughput = comparison_plots.throughput_latency_points(runs[runs["run_id"].astype(str).isin(
        _plotted(cfg, summary).index)])
    if throughput is not None:
        out.write_csv(throughput_latency.TABLE_FILE, throughput)
    plots = _plots(cfg, out, summary, samples, tree, notes, throughput)
    settings_line = (f"alpha={settings.alpha}, min_effect={settings.min_effect:.1%}, "
                     f"allow_env_mismatch={settings.allow_env_mismatch}")
    write_markdown(out.file("comparison.md"), summary, result.environment, mismatches, verdicts, op_diff, plots,
                   notes, {"tracking_uri": uri, "selection": selection.describe(), "settings_line": settings_line},
                   int(cfg.report.markdown_runs), tree, throughput)
    text = terminal_text(summary, verdicts, mismatches, notes, settings_line, int(cfg.report.terminal_runs))
    out.write_text("comparison.txt", text + "\n")
    run_ids = list(summary.index)
    tracker = _track(cfg, uri, out, baseline, run_ids, mismatches, verdicts)
    return CompareOutcome(out.path, baseline, run_ids, summary_out, verdicts, op_diff, mismatches, notes, text,
                          tracker.run_id, list(tracker.errors))
