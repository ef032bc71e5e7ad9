"""One comparison, start to finish: select runs -> summary -> verdicts / operator diff -> sinks.

Cost model: the summary (table, ratios, environment from tags) is one `mlflow.search_runs` query plus
column-wise pandas, whatever the number of runs. Files (samples.csv, env.json, operators.csv) are read
only for the baseline and up to `verdicts.max_candidates` candidates: beyond that the per-sample part
is skipped with a note. The output directory is written completely before the MLflow run mirrors it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from llm_perf_opt.compare.artifacts import RunFiles
from llm_perf_opt.compare.environment import (environment_from_runs, environment_mismatches,
                                              environment_unknowns, fill_from_env_json)
from llm_perf_opt.compare.operator_diff import OPERATOR_DIFF_COLUMNS, operator_diff
from llm_perf_opt.compare.report import terminal_text, write_markdown
from llm_perf_opt.compare.selection import COMPARISON_KIND, KIND_TAG, RunSelection, as_list, select_runs
from llm_perf_opt.compare.summary import DEFAULT_HEADLINE, summary_table
from llm_perf_opt.compare.verdicts import TOO_FEW, VERDICT_COLUMNS, VERDICTS, VerdictSettings, verdict_table
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


def selection_from_config(cfg: DictConfig) -> RunSelection:
    last = cfg.select.get("last")
    return RunSelection(experiments=as_list(cfg.select.get("experiment")), filter_string=cfg.select.get("filter"),
                        run_ids=as_list(cfg.select.get("run_ids")), last=int(last) if last else None,
                        status=cfg.select.get("status"))


def settings_from_config(cfg: DictConfig) -> VerdictSettings:
    v = cfg.verdicts
    return VerdictSettings(alpha=float(v.alpha), min_effect=float(v.min_effect), confidence=float(v.confidence),
                           bootstrap_resamples=int(v.bootstrap_resamples), bootstrap_method=str(v.bootstrap_method),
                           seed=int(v.seed), allow_env_mismatch=bool(cfg.allow_env_mismatch))


def summarize_runs(tracking_uri: str, selection: RunSelection, baseline_run_id: str | None,
                   patterns: list[str] | tuple[str, ...] = DEFAULT_HEADLINE) -> RunSummary:
    """The fast part: one query, then the table, ratios and environments from tags (no per-run calls)."""
    runs, baseline = select_runs(tracking_uri, selection, baseline_run_id)
    return RunSummary(runs, baseline, summary_table(runs, baseline, patterns), environment_from_runs(runs))


def _read_run_files(files: RunFiles, runs: pd.DataFrame, run_ids: list[str], environment: pd.DataFrame,
                    operators_enabled: bool) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    run_dirs = runs.set_index("run_id")["tags.run_dir"] if "tags.run_dir" in runs else pd.Series(dtype=object)
    samples, operators = {}, {}
    for run_id in run_ids:
        run_dir = run_dirs.get(run_id)
        run_dir = run_dir if isinstance(run_dir, str) else None
        env = files.json(run_id, "env.json", run_dir)
        if env is not None:
            fill_from_env_json(environment, run_id, env)
        frame = files.csv(run_id, "samples.csv", run_dir)
        if frame is not None:
            samples[run_id] = frame
        if operators_enabled:
            ops = files.csv(run_id, "operators.csv", run_dir)
            if ops is not None:
                operators[run_id] = ops
    return samples, operators


_CONSEQUENCE = {"samples.csv": "no per-sample verdicts or distributions for them",
                "env.json": "their environment comes from tags only",
                "operators.csv": "operator diff skipped for them (profile with profiling.operators.enabled=true)"}


def _missing_notes(files: RunFiles) -> list[str]:
    notes = []
    for name, by_run in files.missing.items():
        first_reason = next(iter(by_run.values()))
        notes.append(f"{name} absent for {len(by_run)} run(s) ({', '.join(r[:8] for r in by_run)}): "
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
    patterns = [*(cfg.summary.metrics or DEFAULT_HEADLINE), *(cfg.summary.get("extra_metrics") or [])]
    result = summarize_runs(uri, selection, cfg.get("baseline"), [str(p) for p in patterns])
    runs, baseline, summary, environment = result.runs, result.baseline_run_id, result.summary, result.environment
    candidates = [r for r in summary.index if r != baseline]
    notes: list[str] = []

    samples: dict[str, pd.DataFrame] = {}
    operators: dict[str, pd.DataFrame] = {}
    detailed = bool(cfg.verdicts.enabled) and len(candidates) <= int(cfg.verdicts.max_candidates)
    if not bool(cfg.verdicts.enabled):
        notes.append("verdicts.enabled=false: summary only (no per-sample verdicts, operator diff or distributions)")
    elif not detailed:
        notes.append(f"{len(candidates)} candidates > verdicts.max_candidates={cfg.verdicts.max_candidates}: "
                     "per-sample verdicts, operator diff and distributions skipped (narrow select.* or raise it)")
    if detailed:
        with tempfile.TemporaryDirectory(prefix="llm-perf-opt-compare-") as cache:
            files = RunFiles(uri, Path(cache))
            samples, operators = _read_run_files(files, runs, [baseline, *candidates], environment,
                                                 bool(cfg.operators.enabled))
            notes += _missing_notes(files)

    mismatches = environment_mismatches(environment, baseline)
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

    verdicts = pd.DataFrame(columns=VERDICT_COLUMNS)
    if detailed and baseline in samples:
        verdicts = verdict_table(samples, baseline, candidates, mismatches, settings)
        for run_id in verdicts.loc[verdicts["verdict"] == TOO_FEW, "run_id"].unique():
            notes.append(f"run {run_id[:8]}: too few samples for some metrics at alpha={settings.alpha} "
                         "(see the verdict notes)")
    elif detailed:
        notes.append(f"baseline {baseline[:8]} has no samples.csv: no per-sample verdicts")

    diffs = [pd.DataFrame(columns=OPERATOR_DIFF_COLUMNS)]
    if baseline in operators:
        for run_id in candidates:
            if run_id in operators:
                diff, note = operator_diff(operators[baseline], operators[run_id], run_id,
                                           int(cfg.operators.top_n), str(cfg.operators.time_column))
                diffs.append(diff)
                if note:
                    notes.append(note)
    op_diff = pd.concat([d for d in diffs if not d.empty] or diffs, ignore_index=True)

    out = RunDirectory(out_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    out.write_text("config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    env_columns = environment.add_prefix("env.").reindex(summary.index)
    env_columns["env.mismatch"] = [" ; ".join(mismatches.get(r, [])) for r in summary.index]
    summary_out = pd.concat([summary, env_columns], axis=1)
    out.write_csv("comparison.csv", summary_out)
    out.write_csv("verdicts.csv", verdicts)
    out.write_csv("operator_diff.csv", op_diff)
    run_ids = list(summary.index)
    columns = ["run_id", "experiment_id", "status", "start_time", "artifact_uri", "tags.mlflow.runName", "tags.run_dir"]
    listed = runs[[c for c in columns if c in runs.columns]].astype(str)
    out.write_json("compared_runs.json", {
        "baseline_run_id": baseline,
        "run_ids": run_ids,
        "tracking_uri": uri,
        "selection": selection.describe(),
        "runs": listed.rename(columns=lambda c: c.removeprefix("tags.")).to_dict(orient="records"),
    })
    plots: list[Path] = []
    if bool(cfg.plots.enabled):
        from llm_perf_opt.compare import plots as plotting

        plot_dir = out.file("plots")
        plot_dir.mkdir(exist_ok=True)
        shown = pd.concat([summary[summary["baseline"]], summary[~summary["baseline"]]]).head(int(cfg.plots.max_runs))
        if len(shown) < len(summary):
            notes.append(f"plots show {len(shown)} of {len(summary)} runs (plots.max_runs)")
        for made in (plotting.plot_stage_times(shown, plot_dir / "stage_times.png"),
                     plotting.plot_efficiency(shown, plot_dir / "efficiency.png"),
                     plotting.plot_distributions(samples, shown, plot_dir / "latency_distributions.png")):
            if made is not None:
                plots.append(made)
    settings_line = (f"alpha={settings.alpha}, min_effect={settings.min_effect:.1%}, "
                     f"allow_env_mismatch={settings.allow_env_mismatch}")
    write_markdown(out.file("comparison.md"), summary, environment, mismatches, verdicts, op_diff, plots, notes,
                   {"tracking_uri": uri, "selection": selection.describe(), "settings_line": settings_line},
                   int(cfg.report.markdown_runs))
    text = terminal_text(summary, verdicts, mismatches, notes, settings_line, int(cfg.report.terminal_runs))
    out.write_text("comparison.txt", text + "\n")

    ids_tag, truncated = _truncated_ids(run_ids)
    tracker = MlflowTracker(uri, cfg.tracking.experiment, bool(cfg.tracking.enabled))
    tracker.start(cfg.tracking.run_name or f"compare-{len(run_ids)}-runs-vs-{baseline[:8]}", {
        KIND_TAG: COMPARISON_KIND,
        "compare.baseline_run_id": baseline,
        "compare.run_ids": ids_tag,
        "compare.run_ids_truncated": str(truncated).lower(),
        "compare.run_count": len(run_ids),
    })
    tracker.log_params(flatten(resolved))
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
    return CompareOutcome(out.path, baseline, run_ids, summary_out, verdicts, op_diff, mismatches, notes, text,
                          tracker.run_id, list(tracker.errors))
