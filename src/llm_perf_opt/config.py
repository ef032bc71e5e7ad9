"""Typed configuration: Hydra structured configs (the schema), where the YAML lives, and `validate`.

The YAML files under `conf/` (this package's `conf/` directory; the checkout's top-level `conf` is a
link to it) stay the user-facing documentation. Each one extends its schema through its defaults list
(`defaults: [base_deepseek_ocr2, _self_]`), so a composed config is a typed, struct-mode DictConfig:

- types and allowed values (the Enums below) are checked by OmegaConf when Hydra composes, e.g.
  `model.dtype=fp8` fails with "Invalid value 'fp8', expected one of [auto, bf16, fp16, fp32]";
- ranges and cross-field rules OmegaConf cannot express are checked by `validate(cfg)`, which the
  runners call right after composition, before anything is built. Each problem is one `InputError`
  whose message names the key, the bad value and the fix.

Enum-typed fields read back as Enum members that are also `str`: `cfg.model.dtype == "auto"`,
`str(cfg.model.image_mode)`, f-strings, dict lookups by the string and `json.dumps` all see the plain
value ("global768"), and `OmegaConf.to_yaml` writes it unquoted. (`yaml.safe_dump` of a raw member is
the one thing that does not: dump via `OmegaConf.to_yaml` or `OmegaConf.to_container(enum_to_str=True)`.)

Importing this module registers every schema in Hydra's ConfigStore (`register_configs()`, idempotent).
Code that composes the config itself (tests, benchmarks) imports this module first, or uses `compose`.

Also here, for the runners (the bottom layer, so `runners` need not import `cli`): `run_hydra_main`,
which turns Hydra's multi-line report of a composition error into one `error:` line and exit status 2,
and `expand_overrides` (mlflow-style `--overrides "a=1 b=2"` / `--key value` into Hydra overrides).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shlex
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from llm_perf_opt.errors import InputError

# -- where things are ---------------------------------------------------------------------------------

PACKAGE_DIR = Path(__file__).resolve().parent
# The Hydra config directory, shipped inside the package: the same path whether the package runs from
# the checkout (PYTHONPATH=src, `pip install -e .`) or from a wheel in site-packages. Absolute, so it
# serves both `@hydra.main(config_path=CONF_DIR)` and `hydra.initialize_config_dir(CONF_DIR)`.
CONF_DIR = str(PACKAGE_DIR / "conf")
# The source checkout (for the git sha in env.json) when the package runs from one (src/llm_perf_opt ->
# the directory holding pyproject.toml); an installed wheel has no checkout: then the package directory,
# where `git` finds no repository (or the one the environment happens to live in).
_CHECKOUT = PACKAGE_DIR.parents[1]
PROJECT_ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "src").is_dir() else PACKAGE_DIR

PROFILE_CONFIG = "config"   # conf/config.yaml: `llm-perf-opt profile`
COMPARE_CONFIG = "compare"  # conf/compare.yaml: `llm-perf-opt compare`


# -- allowed values -----------------------------------------------------------------------------------

class StrEnum(str, Enum):
    """An Enum whose members behave as their string value downstream (==, hash, str(), format, json)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class DType(StrEnum):
    auto = "auto"  # bf16 on CUDA, fp32 on CPU
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class ImageMode(StrEnum):
    tiled = "tiled"            # 1024 global view + 2..6 768-px tiles
    global1024 = "global1024"
    global768 = "global768"


class AttnImplementation(StrEnum):
    """transformers' `attn_implementation` values that need no extra hub kernel name."""

    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"  # needs the flash-attn package
    flash_attention_3 = "flash_attention_3"  # needs flash-attn 3 (Hopper)
    flex_attention = "flex_attention"


class RemoteImageMode(StrEnum):
    """DeepSeek-OCR v1's infer() modes (the model card's names in comments)."""

    crop = "crop"              # Gundam: 1024 global view + 2..9 640-px tiles
    global512 = "global512"    # Tiny
    global640 = "global640"    # Small
    global1024 = "global1024"  # Base
    global1280 = "global1280"  # Large


class RemoteAttnImplementation(StrEnum):
    """What DeepSeek-OCR v1's remote code (modeling_deepseekv2.ATTENTION_CLASSES) implements: no sdpa."""

    eager = "eager"
    flash_attention_2 = "flash_attention_2"  # needs the flash-attn package (CUDA)


class ExpertsImplementation(StrEnum):
    eager = "eager"
    grouped_mm = "grouped_mm"
    batched_mm = "batched_mm"


class DecodeExpertsImplementation(StrEnum):
    auto = "auto"  # as generate(): batched_mm for decode on a GPU
    same = "same"  # keep model.experts_implementation for decode
    eager = "eager"
    grouped_mm = "grouped_mm"
    batched_mm = "batched_mm"


class MoeRouting(StrEnum):
    auto = "auto"        # uniform for random weights, the model's router for real checkpoints
    uniform = "uniform"
    model = "model"


class BootstrapMethod(StrEnum):
    percentile = "percentile"
    BCa = "BCa"
    basic = "basic"


FAMILIES = ("deepseek_ocr2", "deepseek_ocr", "hf_causal_lm", "custom")
# model.cache and model.compile (models/decoding.py). Plain strings checked by `validate`, not Enums: OmegaConf
# matches Enum members by name, and torch spells its mode "reduce-overhead".
KV_CACHES = ("dynamic", "static")
COMPILE_MODES = ("none", "default", "reduce-overhead")
DATASET_SOURCES = ("synthetic", "omnidocbench")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


# -- profile config: model group ----------------------------------------------------------------------

@dataclass
class TransformersModelConfig:
    """Fields shared by the transformers families (fields in the YAML's order)."""

    family: str = MISSING
    preset: str = "tiny"
    path: str | None = None
    dtype: DType = DType.auto
    attn_implementation: AttnImplementation = AttnImplementation.sdpa
    experts_implementation: ExpertsImplementation | None = None
    decode_experts_implementation: DecodeExpertsImplementation = DecodeExpertsImplementation.auto
    moe_routing: MoeRouting = MoeRouting.auto
    cache: str = "dynamic"   # KV_CACHES
    compile: str = "none"    # COMPILE_MODES: the decode step only (prefill stays eager)


@dataclass
class DeepseekOcr2Config(TransformersModelConfig):
    family: str = "deepseek_ocr2"
    image_mode: ImageMode = ImageMode.tiled
    prompt_text_tokens: int = 12
    architecture_overrides: dict[str, Any] = field(default_factory=dict)
    stage_map: dict[str, Any] = field(default_factory=lambda: {"vision": {
        "sam": "model.vision_tower.sam_encoder",
        "encoder": "model.vision_tower.vision_encoder",
        "projector": "model.multi_modal_projector",
    }})


@dataclass
class DeepseekOcrConfig:
    """model=deepseek_ocr: DeepSeek-OCR v1 through the remote code in `path` (models/deepseek_ocr.py)."""

    family: str = "deepseek_ocr"
    preset: str = "tiny"
    path: str | None = None
    trust_remote_code: bool = False
    dtype: DType = DType.auto
    attn_implementation: RemoteAttnImplementation = RemoteAttnImplementation.eager
    moe_routing: MoeRouting = MoeRouting.auto
    image_mode: RemoteImageMode = RemoteImageMode.crop
    prompt_text_tokens: int = 12
    architecture_overrides: dict[str, Any] = field(default_factory=dict)
    stage_map: dict[str, Any] = field(default_factory=lambda: {"vision": {
        "sam": "model.sam_model",
        "clip": "model.vision_model",
        "projector": "model.projector",
    }})


@dataclass
class HfCausalLMConfig(TransformersModelConfig):
    family: str = "hf_causal_lm"
    prompt_tokens: int = 128
    architecture_overrides: dict[str, Any] = field(default_factory=dict)
    stage_map: dict[str, Any] = field(default_factory=dict)


@dataclass
class CustomModelConfig:
    """model=custom, gemm, copy: an nn.Module from a Hydra `_target_` factory (models/custom.py)."""

    family: str = "custom"
    preset: str = "linear_stack"
    # Any keys: `_target_` plus the factory's own keyword arguments (`+model.factory.<kwarg>=...`).
    factory: Any = field(default_factory=lambda: {"_target_": "llm_perf_opt.models.linear_stack.build_linear_stack"})
    dtype: DType = DType.auto
    prompt_tokens: int = 32
    stage_map: dict[str, Any] = field(default_factory=dict)


# -- profile config: the other groups -----------------------------------------------------------------

@dataclass
class SyntheticDatasetConfig:
    source: str = "synthetic"
    num_pages: int = 2
    sizes: list[list[int]] = field(default_factory=lambda: [[1240, 1754]])
    seed: int = "${seed}"  # type: ignore[assignment]  # an interpolation, typed int once resolved


@dataclass
class OmniDocBenchDatasetConfig:
    source: str = "omnidocbench"
    root: str = MISSING
    subset_file: str | None = None
    limit: int | None = None


@dataclass
class OperatorsConfig:
    enabled: bool = True
    inputs: int = 1
    decode_steps: int = 4
    top_n: int = 10
    record_shapes: bool = False


@dataclass
class CountingConfig:
    enabled: bool = True
    decode_steps: int = 2


@dataclass
class EnergyConfig:
    enabled: bool = True
    interval_ms: float = 20.0


@dataclass
class ProfilingConfig:
    warmup: int = 1
    repeats: int = 3
    new_tokens: int = 8
    batch_size: int = 1  # pages (prompts) per forward; a timed sample is one batch
    stop_at_eos: bool = False
    progress: Any = "auto"  # auto | true | false (OmegaConf 2.3 has no Union[str, bool]; validate checks it)
    operators: OperatorsConfig = field(default_factory=OperatorsConfig)
    counting: CountingConfig = field(default_factory=CountingConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str = "llm-perf-opt"
    run_name: str | None = None
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0


@dataclass
class HardwareConfig:
    name: str = "auto"
    peak_tflops: float | None = None
    peak_bandwidth_gbps: float | None = None
    calibrate: bool = False
    launch_busy_share: float = 0.5


@dataclass
class SweepConfig:
    """How the jobs of a sweep (`-m`) share GPUs: one job per GPU (a lease, runners/gpu_lease.py)."""

    gpu_assignment: bool = True       # each job on a GPU of its own (queueing when all are busy)
    gpus: list[int] | None = None     # device indices the sweep may use; null: every visible GPU
    jobs_per_gpu: int = 1             # >1 lets jobs share a GPU (their timings then disturb each other)


@dataclass
class ProfileConfig:
    """conf/config.yaml. `model` and `dataset` take the schema of the chosen option (Any here)."""

    model: Any = MISSING
    dataset: Any = MISSING
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    device: str = "auto"
    seed: int = 0


# -- compare config -----------------------------------------------------------------------------------

@dataclass
class SelectConfig:
    experiment: Any = None          # a name or a list of names; null: every experiment
    filter: str | None = None
    run_ids: Any = field(default_factory=list)  # [id1,id2] or "id1,id2"
    last: int | None = None
    status: str | None = "FINISHED"
    sweep: str | None = None        # a sweep's parent run id: compare its children


@dataclass
class SummaryConfig:
    metrics: list[str] | None = None
    extra_metrics: list[str] = field(default_factory=list)


@dataclass
class VerdictsConfig:
    enabled: bool = True
    alpha: float = 0.05
    min_effect: float = 0.02
    confidence: float = 0.95
    bootstrap_resamples: int = 2000
    bootstrap_method: BootstrapMethod = BootstrapMethod.percentile
    seed: int = 0
    max_candidates: int = 20


@dataclass
class CompareOperatorsConfig:
    enabled: bool = True
    top_n: int = 10
    time_column: str = "auto"


@dataclass
class PlotsConfig:
    enabled: bool = True
    max_runs: int = 30


@dataclass
class ReportConfig:
    terminal_runs: int = 6
    markdown_runs: int = 20


@dataclass
class CompareConfig:
    """conf/compare.yaml."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    baseline: str | None = None
    allow_env_mismatch: bool = False
    summary: SummaryConfig = field(default_factory=SummaryConfig)
    verdicts: VerdictsConfig = field(default_factory=VerdictsConfig)
    operators: CompareOperatorsConfig = field(default_factory=CompareOperatorsConfig)
    plots: PlotsConfig = field(default_factory=PlotsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


# -- ConfigStore ---------------------------------------------------------------------------------------

# (group, name, schema): the YAML file <group>/<x>.yaml extends <group>/<name> via its defaults list.
SCHEMAS: tuple[tuple[str | None, str, type], ...] = (
    (None, "base_config", ProfileConfig),
    (None, "base_compare", CompareConfig),
    ("model", "base_deepseek_ocr2", DeepseekOcr2Config),
    ("model", "base_deepseek_ocr", DeepseekOcrConfig),
    ("model", "base_hf_causal_lm", HfCausalLMConfig),
    ("model", "base_custom", CustomModelConfig),
    ("dataset", "base_synthetic", SyntheticDatasetConfig),
    ("dataset", "base_omnidocbench", OmniDocBenchDatasetConfig),
    ("profiling", "base_profiling", ProfilingConfig),
    ("tracking", "base_tracking", TrackingConfig),
    ("hardware", "base_hardware", HardwareConfig),
)


# One short random suffix per process for run directory names (`${uid:}` in conf/config.yaml): two runs
# started in the same second get different directories. A sweep's jobs are told apart by their job number.
# Cached (like Hydra's `now`): Hydra copies a config's resolver cache into each job's config, so the jobs
# of a sweep, in whatever process a launcher runs them, resolve the sweep directory to the launcher's.
_PROCESS_UID = secrets.token_hex(4)
if not OmegaConf.has_resolver("uid"):
    OmegaConf.register_new_resolver("uid", lambda: _PROCESS_UID, use_cache=True)


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (done on import; storing again replaces, harmless)."""
    store = ConfigStore.instance()
    for group, name, node in SCHEMAS:
        store.store(group=group, name=name, node=node, provider="llm_perf_opt")


register_configs()


def compose(config_name: str = PROFILE_CONFIG, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose a config from the packaged conf/ outside `@hydra.main` (tests, notebooks, benchmarks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


# -- validate -----------------------------------------------------------------------------------------

def _fail(key: str, value: Any, why: str, fix: str) -> NoReturn:
    raise InputError(f"{key}={_show(value)} {why}: {fix}")


def _show(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, (dict, list)):
        return str(value).replace(" ", "")
    return "null" if value is None else str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _at_least(cfg: Any, key: str, minimum: int, why: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not _is_int(value) or value < minimum:
        _fail(key, value, f"is out of range ({why})", f"set {key} to {minimum} or more")


def _positive(cfg: Any, key: str, why: str, nullable: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        fix = f"set {key} to a number > 0" + (" or null" if nullable else "")
        _fail(key, value, f"must be positive ({why})", fix)


def _open_unit(cfg: Any, key: str, example: str) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        _fail(key, value, "is outside (0, 1)", f"set {key} to a fraction strictly between 0 and 1, e.g. {example}")


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot: ranges, the device string, required keys per option.

    Works on a composed profile config (conf/config.yaml) or compare config (conf/compare.yaml); checks
    the sections present. Raises `InputError` (one line: key, bad value, fix) at the first problem.
    """
    if "model" in cfg or "profiling" in cfg:
        _validate_profile(cfg)
    if "select" in cfg or "verdicts" in cfg:
        _validate_compare(cfg)


def require_trust_remote_code(model: Any) -> None:
    """A family that runs code shipped with the model (deepseek_ocr) needs model.trust_remote_code=true, given
    explicitly: one InputError line otherwise (before anything is built or recorded)."""
    if not model.get("path"):
        _fail("model.path", None, f"is not set (model={model.get('family')} loads its code and config from a "
              "local model directory)", "add model.path=/path/to/DeepSeek-OCR")
    if model.get("trust_remote_code") is not True:
        _fail("model.trust_remote_code", "false",
              f"refuses to run the Python files in {model.get('path')} (DeepSeek-OCR v1 is code that runs when it "
              "loads)", "read them, then add model.trust_remote_code=true")


def _validate_model(cfg: DictConfig, model: DictConfig) -> None:
    family = model.get("family")
    if family not in FAMILIES:
        _fail("model.family", family, "is unknown", f"choose model={' | model='.join(FAMILIES)} (conf/model/)")
    for key in ("prompt_tokens", "prompt_text_tokens"):
        if key in model:
            _at_least(cfg, f"model.{key}", 1 if key == "prompt_tokens" else 0, "prompt length in tokens")
    if "cache" in model:
        _validate_decoding(model)
    if family == "deepseek_ocr":
        require_trust_remote_code(model)
    if family == "custom":
        factory = model.get("factory")
        if not isinstance(factory, DictConfig) or not factory.get("_target_"):
            _fail("model.factory", factory, "has no _target_",
                  "set model.factory._target_=my_module.build (a callable taking device and dtype, returning "
                  "an nn.Module or a dict); its own arguments go in as +model.factory.<kwarg>=...")


def _validate_profile(cfg: DictConfig) -> None:
    if "device" in cfg:
        device = cfg.device
        if not isinstance(device, str) or not _DEVICE.fullmatch(device):
            _fail("device", device, "is not supported (the profiler times CPU and CUDA devices only)",
                  "use device=auto, device=cpu, device=cuda or device=cuda:N")
    if "seed" in cfg and not _is_int(cfg.seed):
        _fail("seed", cfg.seed, "is not an integer", "set seed to a whole number such as 0")

    model = cfg.get("model")
    if model is not None:
        _validate_model(cfg, model)

    dataset = cfg.get("dataset")
    if dataset is not None:
        source = dataset.get("source")
        if source not in DATASET_SOURCES:
            _fail("dataset.source", source, "is unknown", "choose dataset=synthetic or dataset=omnidocbench")
        if source == "synthetic":
            _at_least(cfg, "dataset.num_pages", 1, "pages to generate")
            sizes = dataset.get("sizes")
            if not sizes or not all(len(s) == 2 and all(_is_int(v) and v > 0 for v in s) for s in sizes):
                _fail("dataset.sizes", sizes, "is not a list of [width, height] pairs",
                      "set dataset.sizes to e.g. [[1240,1754]] (A4 at 150 dpi)")
        if source == "omnidocbench":
            if OmegaConf.is_missing(dataset, "root") or not dataset.get("root"):
                _fail("dataset.root", None if OmegaConf.is_missing(dataset, "root") else dataset.root,
                      "is not set (dataset=omnidocbench reads a local OmniDocBench copy)",
                      "add dataset.root=/path/to/OmniDocBench, a folder holding OmniDocBench.json and images/")
            if dataset.get("limit") is not None:
                _at_least(cfg, "dataset.limit", 1, "pages to keep")

    if cfg.get("profiling") is not None:
        _at_least(cfg, "profiling.warmup", 0, "untimed samples per input")
        _at_least(cfg, "profiling.repeats", 1, "each input is timed at least once")
        _at_least(cfg, "profiling.new_tokens", 1, "prefill yields the first token")
        _at_least(cfg, "profiling.batch_size", 1, "pages per forward")
        if cfg.profiling.batch_size > 1 and bool(cfg.profiling.stop_at_eos):
            _fail("profiling.stop_at_eos", "true", f"cannot run with profiling.batch_size={cfg.profiling.batch_size} "
                  "(the requests of a batch would stop at different steps, and the timed pass never pads)",
                  "set profiling.stop_at_eos=false (fixed-length decode) or profiling.batch_size=1")
        progress = cfg.profiling.progress
        if not (isinstance(progress, bool) or progress == "auto"):
            _fail("profiling.progress", progress, "is not auto, true or false",
                  "set profiling.progress=auto, true or false")
        _at_least(cfg, "profiling.operators.inputs", 1, "inputs profiled by torch.profiler")
        _at_least(cfg, "profiling.operators.decode_steps", 0, "decode steps profiled")
        _at_least(cfg, "profiling.operators.top_n", 1, "rows per stage")
        _at_least(cfg, "profiling.counting.decode_steps", 0, "decode steps counted")
        _positive(cfg, "profiling.energy.interval_ms", "NVML sampling period")

    if cfg.get("sweep") is not None:
        _at_least(cfg, "sweep.jobs_per_gpu", 1, "jobs sharing one GPU")
        gpus = cfg.sweep.gpus
        if gpus is not None and (not len(gpus) or not all(_is_int(g) and g >= 0 for g in gpus)):
            _fail("sweep.gpus", gpus, "is not a non-empty list of device indices", "set e.g. sweep.gpus=[0,1] or null")
    if cfg.get("tracking") is not None and "system_metrics_interval_s" in cfg.tracking:
        _positive(cfg, "tracking.system_metrics_interval_s", "MLflow system-metrics sampling period, seconds")

    if cfg.get("hardware") is not None:
        _positive(cfg, "hardware.peak_tflops", "overrides the peak table", nullable=True)
        _positive(cfg, "hardware.peak_bandwidth_gbps", "overrides the peak table", nullable=True)
        share = cfg.hardware.launch_busy_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            _fail("hardware.launch_busy_share", share, "is outside [0, 1]",
                  "set hardware.launch_busy_share to a fraction such as 0.5")


def _validate_decoding(model: DictConfig) -> None:
    """model.cache and model.compile: allowed values, and compile only over a static cache."""
    cache, mode = model.get("cache"), model.get("compile")
    if cache not in KV_CACHES:
        _fail("model.cache", cache, "is unknown", f"choose model.cache={' or '.join(KV_CACHES)}")
    if mode not in COMPILE_MODES:
        _fail("model.compile", mode, "is unknown", f"choose model.compile={' | '.join(COMPILE_MODES)}")
    if mode != "none" and cache != "static":
        _fail("model.compile", mode, "needs a static KV cache (a dynamic cache changes shape every step, so the "
              "compiled decode step would recompile every step)", "add model.cache=static, or set model.compile=none")


def _validate_compare(cfg: DictConfig) -> None:
    if cfg.get("select") is not None and cfg.select.get("last") is not None:
        _at_least(cfg, "select.last", 1, "most recent runs kept")
    if cfg.get("verdicts") is not None:
        _open_unit(cfg, "verdicts.alpha", "0.05")
        _open_unit(cfg, "verdicts.confidence", "0.95")
        min_effect = cfg.verdicts.min_effect
        if isinstance(min_effect, bool) or not isinstance(min_effect, (int, float)) or min_effect < 0:
            _fail("verdicts.min_effect", min_effect, "is negative", "set verdicts.min_effect to 0 or more, e.g. 0.02")
        _at_least(cfg, "verdicts.bootstrap_resamples", 1, "bootstrap resamples")
        _at_least(cfg, "verdicts.max_candidates", 0, "candidates given per-sample verdicts")
    if cfg.get("operators") is not None:
        _at_least(cfg, "operators.top_n", 1, "operators per stage and candidate")
    if cfg.get("plots") is not None:
        _at_least(cfg, "plots.max_runs", 1, "runs drawn")
    if cfg.get("report") is not None:
        _at_least(cfg, "report.terminal_runs", 1, "run columns in the terminal")
        _at_least(cfg, "report.markdown_runs", 1, "run columns in comparison.md")


# -- composition errors on the command line --------------------------------------------------------

_FULL_ERROR = "HYDRA_FULL_ERROR"
_DETAIL_PREFIXES = ("full_key:", "object_type=", "reference_type=", "See https://hydra.cc", "Config search path",
                    "provider=", "Set the environment variable HYDRA_FULL_ERROR")


class _Composing:
    """Whether the current `run_hydra_main` call is still composing (the task has not started)."""

    active = False
    set_env = False


def _lines(text: str) -> list[str]:
    lines = [line.strip().rstrip(".") for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(_DETAIL_PREFIXES)]
    if any(line.startswith("Available options") for line in lines):  # Could not find 'model/x'
        options = [line for line in lines if " " not in line and not line.endswith(":")]
        shown = [line for line in options if not line.startswith("base_")]  # schemas, not choices
        lines = [line for line in lines if line not in options]
        lines[-1] = f"{lines[-1]} {', '.join(shown)}"
    return lines


def compose_error_line(exc: BaseException) -> str:
    """Hydra's multi-line composition report as one line: what failed, why, and the fix Hydra suggests."""
    from hydra.errors import OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OverrideParseException):
        return f"cannot parse override '{exc.override}': {'; '.join(_lines(exc.message))}"
    if isinstance(exc, OSError) and exc.filename:  # Hydra creating the run directory (or its log file)
        return (f"cannot create {exc.filename} ({exc.strerror}): set LLM_PERF_OPT_RUNS_DIR (or hydra.run.dir=...) "
                "to a writable directory")
    lines = _lines(str(exc)) or [type(exc).__name__]
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and _lines(str(cause)):
        lines[0] = f"{lines[0]}: {_lines(str(cause))[0]}"
    return "; ".join(lines)


def task_started() -> None:
    """Called first thing in a Hydra task: composition is over, later errors get Hydra's own reporting."""
    if _Composing.set_env:
        os.environ.pop(_FULL_ERROR, None)
        _Composing.set_env = False
    _Composing.active = False


def run_hydra_main(task: Callable[[], None]) -> None:
    """Run a `@hydra.main` task; an error while composing becomes one `error:` line and exit status 2.

    Hydra reports composition errors itself, over several lines and with exit status 1; with
    HYDRA_FULL_ERROR=1 it raises them instead, so this sets it until the task starts (`task_started()`).
    """
    # On the command line a warning is one line (`warning: ...`), not Python's file:line + source line.
    warnings.formatwarning = lambda message, category, *_args, **_kwargs: f"warning: {message}\n"
    if os.environ.get(_FULL_ERROR) == "1":  # the user asked for Hydra's full reporting
        task()
        return
    os.environ[_FULL_ERROR] = "1"
    _Composing.active, _Composing.set_env = True, True
    try:
        task()
    except Exception as exc:
        if not _Composing.active:
            raise
        print(f"error: {compose_error_line(exc)}", file=sys.stderr)
        sys.exit(2)
    finally:
        task_started()


# Hydra's own flags keep their meaning; every other `--key value` pair becomes `key=value`.
_HYDRA_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--resolve", "--package", "-p",
                "--run", "-r", "--multirun", "-m", "--shell-completion", "-sc", "--config-path", "-cp",
                "--config-name", "-cn", "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def expand_overrides(args: list[str]) -> list[str]:
    """`--overrides "a=1 b=2"` and `--key value` (how `mlflow run` passes parameters) as Hydra's `key=value`."""
    expanded: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--overrides" and index + 1 < len(args):
            expanded.extend(shlex.split(args[index + 1]))
            index += 2
        elif arg.startswith("--overrides="):
            expanded.extend(shlex.split(arg.split("=", 1)[1]))
            index += 1
        elif arg.startswith("--") and arg not in _HYDRA_FLAGS and "=" not in arg and index + 1 < len(args):
            expanded.append(f"{arg[2:]}={args[index + 1]}")
            index += 2
        else:
            expanded.append(arg)
            index += 1
    return expanded
