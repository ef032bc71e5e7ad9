"""What a recommended configuration measured in this experiment, or that it is untested here.

The stakeholder summary recommends configurations (KNOBS):

- compiled decode (COMPILED_DECODE): `model.compile=reduce-overhead` with `model.cache=static` (CUDA graphs
  replay a fixed set of kernels, which needs a KV cache of fixed shape);
- larger batches (LARGER_BATCH): `profiling.batch_size` above this run's.

The other runs come as plain data (record.RelatedRuns: related_runs.json, which the runner writes from
MLflow when the run ends). A run of a recommended configuration counts (`measured_run`) when it

1. is another run that ended FINISHED;
2. ran the same workload: its configuration (reports/configuration.py: model family, preset, image mode,
   dtype, device name and type, new tokens, and every other config value that changes what is timed)
   equals this run's once the knob's params are set aside;
3. has the recommended knob values (`Knob.accepts`), and logged the metric the wording cites.

Among several: per knob value (batch 8, batch 16, ...) the most recent run, the latest measurement of
that configuration; then the one with the best metric (lowest TPOT for a compiled decode, most pages/s
for batches; a tie goes to the more recent).

The wording (`compiled_decode_effect`, `larger_batch_effect`) names the measured effect against this run's
own numbers (its record's metrics), or says it is untested here and how to measure it; without
related_runs.json (a run not tracked in MLflow, `build_summary` of a bare metrics.json) it says that no
other runs were consulted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from llm_perf_opt.record import RelatedRun, RelatedRuns, RunRecord
from llm_perf_opt.reports.configuration import batch_size, configuration, same_except
from llm_perf_opt.schema import BATCH_SIZE_PARAM, CACHE_PARAM, COMPILE_PARAM, DECODE, E2E, THROUGHPUT_GROUP, metric_key

TPOT = metric_key(DECODE, "tpot_ms", "p50")
PAGES_PER_S = metric_key(THROUGHPUT_GROUP, "pages_per_s")
LATENCY = metric_key(E2E, "ms", "p50")
FINISHED = "FINISHED"
BATCH_FACTORS = (1, 2, 4, 8)  # the batch sizes the untested wording suggests sweeping, as multiples of this run's


@dataclass(frozen=True)
class Knob:
    """A recommended configuration: the params it sets, whether a configuration is it (given this run's), the
    metric that ranks its runs and whether higher is better."""

    name: str
    params: tuple[str, ...]
    accepts: Callable[[Mapping[str, str], Mapping[str, str]], bool]  # (candidate configuration, this run's)
    metric: str
    higher_is_better: bool


def _is_compiled_decode(config: Mapping[str, str]) -> bool:
    return config.get(COMPILE_PARAM) == "reduce-overhead" and config.get(CACHE_PARAM) == "static"


COMPILED_DECODE = Knob("compiled decode", (CACHE_PARAM, COMPILE_PARAM), lambda config, _: _is_compiled_decode(config),
                       TPOT, higher_is_better=False)
LARGER_BATCH = Knob("larger batch", (BATCH_SIZE_PARAM,), lambda config, this: batch_size(config) > batch_size(this),
                    PAGES_PER_S, higher_is_better=True)
KNOBS = (COMPILED_DECODE, LARGER_BATCH)


def measured_runs(this: RelatedRun, others: list[RelatedRun], knob: Knob) -> list[RelatedRun]:
    """Every run among `others` that counts as a run of the knob's configuration (module docstring, 1-3)."""
    own = configuration(this.params, this.tags)
    found = []
    for run in others:
        if run.run_id == this.run_id or run.status != FINISHED or knob.metric not in run.metrics:
            continue
        config = configuration(run.params, run.tags)
        if same_except(own, config, knob.params) and knob.accepts(config, own):
            found.append(run)
    return found


def _recency(run: RelatedRun) -> int:
    return run.start_time_ms if run.start_time_ms is not None else -1


def measured_run(this: RelatedRun, others: list[RelatedRun], knob: Knob) -> RelatedRun | None:
    """The run whose numbers the recommendation cites (module docstring), or None."""
    latest: dict[tuple[str, ...], RelatedRun] = {}
    for run in measured_runs(this, others, knob):
        config = configuration(run.params, run.tags)
        key = tuple(config.get(name, "") for name in knob.params)
        if key not in latest or _recency(run) > _recency(latest[key]):
            latest[key] = run
    if not latest:
        return None
    sign = 1.0 if knob.higher_is_better else -1.0
    return max(latest.values(), key=lambda run: (sign * run.metrics[knob.metric], _recency(run)))


def _run_label(run: RelatedRun) -> str:
    return f"run {run.run_name}, {run.run_id[:8]}" if run.run_name else f"run {run.run_id[:8]}"


def _duration(ms: float) -> str:
    return f"{ms / 1000:.3g} s" if ms >= 1000 else f"{ms:.3g} ms"


def _here(record: RunRecord, name: str) -> float | None:
    return record.metrics.get(name)


def _untested(related: RelatedRuns | None, what: str, command: str) -> str:
    reason = (f"no run of {what} in this experiment" if related is not None
              else "no other runs were consulted (no related_runs.json beside this run: it was not tracked in MLflow)")
    return f"untested here: {reason}; try `{command}`"


def compiled_decode_effect(record: RunRecord, related: RelatedRuns | None) -> str:
    """'reduce-overhead with a static cache measured TPOT 3.1 ms vs 16.2 ms here (5.2x faster, run ...)', or
    why it is untested here."""
    command = "llm-perf-opt profile ... model.cache=static model.compile=reduce-overhead"
    if related is not None and _is_compiled_decode(configuration(related.run.params, related.run.tags)):
        return "this run already uses reduce-overhead with a static cache"
    run = measured_run(related.run, related.others, COMPILED_DECODE) if related is not None else None
    if run is None:
        return _untested(related, "that configuration", command)
    there, here = run.metrics[TPOT], _here(record, TPOT)
    text = f"reduce-overhead with a static cache measured TPOT {there:.3g} ms"
    if here is None or here <= 0 or there <= 0:
        return text + f" ({_run_label(run)}; this run logged no TPOT)"
    speed = f"{here / there:.1f}x faster" if there <= here else f"{there / here:.1f}x slower"
    return text + f" vs {here:.3g} ms here ({speed}, {_run_label(run)})"


def larger_batch_effect(record: RunRecord, related: RelatedRuns | None) -> str:
    """'batch 16 measured 48.1 pages/s vs 5.2 here (9.3x), per-request latency 3.1 s vs 1.5 s (run ...)', or why
    it is untested here."""
    own = configuration(related.run.params, related.run.tags) if related is not None else {}
    current = batch_size(own) if related is not None else int((record.workload.model_extra or {}).get("batch_size")
                                                              or 1)
    sizes = ",".join(str(current * factor) for factor in BATCH_FACTORS)
    command = f"llm-perf-opt profile -m ... {BATCH_SIZE_PARAM}={sizes}"
    run = measured_run(related.run, related.others, LARGER_BATCH) if related is not None else None
    if run is None:
        return _untested(related, f"a batch larger than {current} with this configuration", command)
    batch = batch_size(configuration(run.params, run.tags))
    there, here = run.metrics[PAGES_PER_S], _here(record, PAGES_PER_S)
    here_label = "here" if current == 1 else f"here (batch {current})"
    text = f"batch {batch} measured {there:.3g} pages/s"
    if here:
        ratio = there / here
        text += f" vs {here:.3g} {here_label} ({ratio:.1f}x)" if ratio >= 1 else \
            f" vs {here:.3g} {here_label} ({ratio:.2f}x: fewer)"
    else:
        text += f" ({here_label}: no pages/s logged)"
    latency_there, latency_here = run.metrics.get(LATENCY), _here(record, LATENCY)
    if latency_there is not None and latency_here is not None:
        text += f", per-request latency {_duration(latency_there)} vs {_duration(latency_here)}"
    return text + f" ({_run_label(run)})"
