"""The run record: one typed, versioned structure, written as metrics.json and read back through the same type.

Writers build a `RunRecord`; `save` writes it, `load` reads it back and validates it (a missing or
mistyped field is a `pydantic.ValidationError` naming the field, not a silent `None`). Reports, the
stakeholder summary and compare read runs only through this type. No torch here: reading a record
costs a JSON parse.

Everything stage-named is keyed by the stage schema's keys (`llm_perf_opt.schema`); `stages` carries
the nesting (`parent`), so readers never infer it from names. Absent means not measured: optional
fields are None (JSON null), never zero.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llm_perf_opt.errors import InputError
from llm_perf_opt.schema import DEVICE_GROUP, RUN_GROUP, THROUGHPUT_GROUP, Stage, StageTree, metric_key, tag_key

SCHEMA_VERSION = 2
RECORD_FILE = "metrics.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")

    @field_validator("*", mode="before")
    @classmethod
    def _non_finite_is_absent(cls, value: Any) -> Any:
        # NaN/inf mean "not measured": stored as null, never as a number.
        return None if isinstance(value, float) and not math.isfinite(value) else value


class Stats(_Model):
    """Statistics of one quantity over the timed samples (std: sample, ddof=1; None for one sample)."""

    mean: float
    std: float | None = None
    min: float
    max: float
    p50: float
    p90: float
    p99: float
    count: int


class Efficiency(_Model):
    """Rates of one stage: its FLOPs and bytes over its own time (analysis.efficiency has the formulas)."""

    time_ms: float
    achieved_tflops: float | None = None
    achieved_gbps: float | None = None
    intensity_flop_per_byte: float | None = None
    mfu: float | None = None
    mbu: float | None = None
    mfu_achievable: float | None = None
    mbu_achievable: float | None = None
    ridge_flop_per_byte: float | None = None
    attainable_tflops: float | None = None
    busy_share: float | None = None
    bound: Literal["compute", "memory", "launch"] | None = None


class ProfiledStage(_Model):
    """The profiled pass's view of one stage (sums over its ranges unless said otherwise; ms)."""

    ranges: int
    profiled_ms: float | None = None       # device span on a GPU, host range time on a CPU (all ranges)
    per_execution_ms: float | None = None  # per input (prefill, sub-stages) or per step (decode)
    cpu_ms: float | None = None
    host_gap_ms: float | None = None
    operator_self_cpu_ms: float | None = None
    other_self_cpu_ms: float | None = None
    substage_cpu_ms: float | None = None
    device_ms: float | None = None
    device_span_ms: float | None = None
    device_busy_ms: float | None = None
    busy_share: float | None = None
    profiler_overhead_ratio: float | None = None  # per_execution_ms / the timed mean of the same stage
    no_formula_share: float | None = None          # profiled time in operators without a FLOP formula


class StageRecord(_Model):
    """One stage: where it nests, its timed statistics, its costs and the rates derived from them."""

    key: str
    parent: str | None
    label: str
    kind: Literal["measured", "sum_of_children"]
    time_quantity: str = "ms"
    cost_prefix: str = ""
    stats: dict[str, Stats] = Field(default_factory=dict)  # quantity ("ms", "tpot_ms", ...) -> statistics
    share_of_parent: float | None = None  # mean ms / the parent's mean ms
    flops: float | None = None            # one execution (decode: one step)
    bytes: float | None = None
    flops_measured_over_analytic: float | None = None
    efficiency: Efficiency | None = None
    profiled: ProfiledStage | None = None
    energy_j: dict[str, float] = Field(default_factory=dict)  # "mean" (per execution), "per_token" (decode)

    def as_stage(self) -> Stage:
        return Stage(self.key, self.parent, self.label, self.kind, self.time_quantity, self.cost_prefix)

    def mean(self, quantity: str = "ms") -> float | None:
        stats = self.stats.get(quantity)
        return stats.mean if stats else None


class RunInfo(_Model):
    """Where the run lives: its directory, its MLflow run and store, when it started and ended (UTC ISO 8601)."""

    run_dir: str
    run_uid: str                            # unique id of this run (tag llm_perf_opt.run_uid): log-run finds it by it
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    started_at: str
    first_sample_at: str | None = None      # when the first timed sample ended
    finished_at: str | None = None
    phase: str | None = None                # the step running when the run ended early (timed, counted, ...)


class InputInfo(_Model):
    """One input (page or prompt): its id and token counts; DeepSeek-OCR-2 adds tiles, size and source."""

    model_config = ConfigDict(extra="allow")
    input_id: str
    prompt_tokens: int
    image_tokens: int = 0


class DatasetInfo(_Model):
    """The inputs as one dataset (data.describe): logged as the MLflow run's dataset input."""

    model_config = ConfigDict(extra="allow")
    name: str
    source: str                  # synthetic | omnidocbench
    digest: str                  # SHA-256 (16 hex digits) over page ids, sizes and pixels
    pages: int
    uri: str | None = None       # where the pages were read from (none for synthetic pages)
    generator: dict[str, Any] | None = None  # settings that regenerate synthetic pages


class WorkloadInfo(_Model):
    """What ran. Family-specific details (image mode, routers switched, ...) are extra fields."""

    model_config = ConfigDict(extra="allow")
    family: str
    preset: str | None = None
    weights: str | None = None
    dtype: str
    device: str
    new_tokens: int
    warmup: int
    repeats: int
    moe_routing: str | None = None
    cache: str | None = None         # KV cache: dynamic | static (models.decoding)
    compile: str | None = None       # compiled decode step: none | default | reduce-overhead
    max_cache_len: int | None = None  # the static cache's length (longest prompt + new tokens)
    compile_s: float | None = None   # seconds compiling and capturing the decode step, before any timed sample
    dataset: DatasetInfo | None = None
    inputs: list[InputInfo]


class Peaks(_Model):
    """The device peaks MFU/MBU use (dense TFLOP/s, GB/s = 1e9 B/s) and where they came from."""

    name: str
    dtype: str
    peak_tflops: float | None = None
    peak_bandwidth_gbps: float | None = None
    source: str
    achievable_tflops: float | None = None
    achievable_bandwidth_gbps: float | None = None
    note: str = ""
    ridge_flop_per_byte: float | None = None
    achievable_ridge_flop_per_byte: float | None = None


class ProfiledPassInfo(_Model):
    """What the profiled pass ran: inputs, decode steps, device, time basis of its stage times, trace file."""

    trace: str
    inputs: int
    decode_steps: int
    device_type: str
    time_basis: Literal["device_span", "cpu_range"]
    event_count: int


class EnergyInfo(_Model):
    """How energy was measured: method per stage, the energy counter's update period, power source."""

    methods: dict[str, str] = Field(default_factory=dict)  # stage -> counter | power_trapezoid | mixed
    counter_period_ms: float | None = None
    power_source: str | None = None


class OperatorRecord(_Model):
    """One operator of the profiled pass in one stage (the seed export API's record)."""

    model_config = ConfigDict(extra="allow")
    stage: str
    name: str
    calls: int
    total_time_ms: float | None = None
    mean_time_ms: float | None = None
    self_cpu_ms: float | None = None
    total_cpu_ms: float | None = None
    self_device_ms: float | None = None
    total_device_ms: float | None = None
    self_cpu_memory_bytes: float | None = None
    top_level_calls: int | None = None   # calls made by the model code itself (not from inside another operator)
    top_level_ms: float | None = None    # their inclusive time (device on a GPU, CPU otherwise)


class RunRecord(_Model):
    """metrics.json. `metrics` is the flat view logged to MLflow, derived from the rest by `flat_metrics`."""

    schema_version: Literal[2] = SCHEMA_VERSION
    status: Literal["FINISHED", "FAILED", "KILLED", "RUNNING"]
    error: str | None = None
    run: RunInfo
    workload: WorkloadInfo
    env: dict[str, Any]
    hardware: Peaks | None = None
    samples: int = 0
    stages: list[StageRecord]
    throughput: dict[str, float] = Field(default_factory=dict)  # pages_per_s, tokens_per_s, decode_tokens_per_s
    device: dict[str, float] = Field(default_factory=dict)  # gpu-wide readings: power_w_max, sm_clock_mhz_mean, ...
    profiled_pass: ProfiledPassInfo | None = None
    energy: EnergyInfo | None = None
    top_operators: list[OperatorRecord] = Field(default_factory=list)
    top_operators_by_stage: dict[str, list[OperatorRecord]] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)

    def tree(self) -> StageTree:
        return StageTree(tuple(stage.as_stage() for stage in self.stages))

    def stage(self, key: str) -> StageRecord | None:
        return next((stage for stage in self.stages if stage.key == key), None)

    def children(self, key: str) -> list[StageRecord]:
        return [stage for stage in self.stages if stage.parent == key]


RELATED_RUNS_FILE = "related_runs.json"
# The metrics a related run carries (MLflow names): what the recommendations cite.
RELATED_METRICS = (metric_key("e2e", "ms", "p50"), metric_key("prefill", "ms", "p50"),
                   metric_key("decode", "tpot_ms", "p50"), metric_key(THROUGHPUT_GROUP, "pages_per_s"),
                   metric_key(THROUGHPUT_GROUP, "tokens_per_s"), metric_key(THROUGHPUT_GROUP, "decode_tokens_per_s"),
                   metric_key(THROUGHPUT_GROUP, "pages_per_day"))


class RelatedRun(_Model):
    """A profile run as MLflow holds it: params (strings, as logged), a few tags, RELATED_METRICS it logged."""

    run_id: str
    run_name: str | None = None
    status: str                      # MLflow's: FINISHED | FAILED | KILLED | RUNNING
    start_time_ms: int | None = None  # ms since the epoch
    params: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)


class RelatedRuns(_Model):
    """related_runs.json: this run and the other profile runs of its experiment, looked up in MLflow when the run
    ended (llm_perf_opt.tracking.related); the stakeholder summary's recommendations cite what they measured."""

    tracking_uri: str
    experiment_id: str
    looked_up_at: str                # UTC ISO 8601
    run: RelatedRun                  # this run (its params and tags; its metrics come from its record)
    others: list[RelatedRun] = Field(default_factory=list)


def load_related(run_dir: str | Path) -> RelatedRuns | None:
    """related_runs.json of a run directory; None when there is none (the run was not tracked, or older). An
    unreadable file is one warning and None: the recommendations then say they consulted no other runs."""
    file = Path(run_dir) / RELATED_RUNS_FILE
    if not file.is_file():
        return None
    try:
        return RelatedRuns.model_validate_json(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warnings.warn(f"{file} is not readable ({first}): recommendations cite no other runs", stacklevel=2)
        return None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# What MLflow gets per stage (everything else stays in metrics.json, the tables and the reports):
UI_STATS = ("p50", "p90", "p99", "mean")  # of the stage's time (and decode's total time)
PERCENT_METRICS = {"mfu": "mfu_pct", "mbu": "mbu_pct"}  # Efficiency field -> metric quantity (x 100)


def _time_quantities(stage: StageRecord) -> list[str]:
    """The stage's time quantity (decode: tpot_ms) and, when different, its total time (ms)."""
    return [q for q in dict.fromkeys((stage.time_quantity, "ms")) if q in stage.stats]


def stage_metrics(stage: StageRecord) -> dict[str, float]:
    """One stage's MLflow metrics, one UI section: <stage>/<time>_{p50,p90,p99,mean}, share_pct, mfu_pct,
    mbu_pct, peak_mem_mib_max and energy. Fractions are logged in percent so that the UI's two-decimal
    display keeps them (MFU 0.0039 shows as 0.39, not 0.00)."""
    key = stage.key
    flat: dict[str, float] = {}
    for quantity in _time_quantities(stage):
        stats = stage.stats[quantity]
        flat.update({metric_key(key, quantity, stat): getattr(stats, stat) for stat in UI_STATS})
    if (memory := stage.stats.get("peak_mem_mib")) is not None:
        flat[metric_key(key, "peak_mem_mib", "max")] = memory.max
    scalars: dict[str, float | None] = {}
    if stage.share_of_parent is not None:
        scalars["share_pct"] = 100.0 * stage.share_of_parent
    if stage.efficiency is not None:
        scalars.update({quantity: 100.0 * value for field, quantity in PERCENT_METRICS.items()
                        if (value := getattr(stage.efficiency, field)) is not None})
    scalars.update({f"energy_j_{kind}": value for kind, value in stage.energy_j.items()})
    flat.update({metric_key(key, q): float(v) for q, v in scalars.items() if _finite(v)})
    return flat


def flat_metrics(record: RunRecord) -> dict[str, float]:
    """The MLflow metrics of a run: one section per stage, throughput/..., gpu/... and run/samples, each to 7
    significant digits (the UI's tables show a value's every digit; metrics.json keeps them all)."""
    flat: dict[str, float] = {}
    for stage in record.stages:
        flat.update(stage_metrics(stage))
    flat.update({metric_key(THROUGHPUT_GROUP, q): v for q, v in record.throughput.items() if _finite(v)})
    flat.update({metric_key(DEVICE_GROUP, q): v for q, v in record.device.items() if _finite(v)})
    flat[metric_key(RUN_GROUP, "samples")] = float(record.samples)
    if _finite(record.workload.compile_s):
        flat[metric_key(RUN_GROUP, "compile_s")] = float(record.workload.compile_s)
    return {name: float(f"{value:.7g}") for name, value in flat.items()}


def record_tags(record: RunRecord) -> dict[str, str]:
    """MLflow tags from the record: `<stage>/bound` = compute | memory | launch."""
    return {tag_key(s.key, "bound"): s.efficiency.bound for s in record.stages
            if s.efficiency is not None and s.efficiency.bound}


def save(record: RunRecord, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


RERUN = "re-run the profile (llm-perf-opt profile ...) to write it again"


def _describe(error: ValidationError, limit: int = 3) -> str:
    problems = [f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in error.errors()[:limit]]
    more = error.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def load(path: str | Path) -> RunRecord:
    """Read metrics.json (a file or a run directory) through the type that wrote it.

    A missing, unreadable, other-version or malformed record is one InputError line: what is wrong
    (the fields a validation error names) and to re-run the profile.
    """
    path = Path(path)
    file = path / RECORD_FILE if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{file} does not exist: point at a run directory with a metrics.json, or {RERUN}")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{file} is not readable JSON ({exc}): {RERUN}") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise InputError(f"{file} has schema_version {version}; this version of llm-perf-opt reads schema_version "
                         f"{SCHEMA_VERSION} only: {RERUN}")
    try:
        return RunRecord.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{file} is not a valid run record (schema_version {SCHEMA_VERSION}): {_describe(exc)}; "
                         f"{RERUN}") from None


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "").replace("llm_perf_opt.record.", "")
    return text.replace("|", "\\|")  # a pipe would end the Markdown table cell


def schema_markdown() -> str:
    """metrics.json's schema as Markdown, from the types themselves (docs/metrics.md embeds it; a test
    checks that the two agree)."""
    models = (RunRecord, RunInfo, WorkloadInfo, DatasetInfo, InputInfo, Peaks, StageRecord, Stats, Efficiency,
              ProfiledStage, ProfiledPassInfo, EnergyInfo, OperatorRecord)
    lines = [f"schema_version {SCHEMA_VERSION}. Optional fields are null when not measured, never 0."]
    for model in models:
        doc = " ".join((model.__doc__ or "").split())
        lines += ["", f"### {model.__name__}", ""] + ([doc, ""] if doc else [])
        lines += ["| field | type |", "|---|---|"]
        lines += [f"| `{name}` | `{_type_name(field.annotation)}` |" for name, field in model.model_fields.items()]
        if model.model_config.get("extra") == "allow":
            lines.append("| (more) | family- or input-specific fields |")
    return "\n".join(lines) + "\n"
