"""A run's configuration as readers compare it: its logged params, less what does not change what is measured.

Two runs have the same configuration when `configuration(params, tags)` gives equal mappings. The
mapping holds every logged param (the resolved config flattened with dots, values as MLflow stores them:
strings) except:

- IGNORED_PREFIXES / IGNORED: where the run is recorded (`tracking.*`), how a sweep placed it
  (`sweep.*`: GPU assignment, and a child's copies of its swept values), peak tables (`hardware.*`:
  they change MFU, not times), the passes that run after the timed one (`profiling.operators.*`,
  `profiling.counting.*`) or beside it (`profiling.energy.*`), the progress bar, how many samples were
  taken (`profiling.warmup`, `profiling.repeats`: a compiled run needs more warmup, and more repeats
  measure the same thing), how many pages of the same source ran (`dataset.num_pages`, `dataset.limit`: a
  batch of B pages needs B pages, so a batch-size sweep changes them with the batch size; each page is
  drawn the same way), `device` (auto | cuda | cuda:N: replaced by what ran, below) and the
  `workload.*` params (derived from the config) but those in WORKLOAD_IDENTITY;
- plus the device that ran: `device_name` (the run's `device` tag: NVML's name, or the CPU's) and
  `device_type` (cpu | cuda, from `workload.device`).

A param a run did not log (runs made before it existed) reads as its default (PARAM_DEFAULTS):
`model.cache` dynamic, `model.compile` none, `profiling.batch_size` 1. Any other param logged by one
run and not the other makes the configurations differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from llm_perf_opt.schema import BATCH_SIZE_PARAM, CACHE_PARAM, COMPILE_PARAM, DEVICE_NAME_TAG

PARAM_DEFAULTS = {CACHE_PARAM: "dynamic", COMPILE_PARAM: "none", BATCH_SIZE_PARAM: "1"}
IGNORED_PREFIXES = ("tracking.", "sweep.", "hardware.", "profiling.operators.", "profiling.counting.",
                    "profiling.energy.", "workload.")
IGNORED = frozenset({"profiling.progress", "profiling.warmup", "profiling.repeats", "dataset.num_pages",
                     "dataset.limit", "device"})
WORKLOAD_IDENTITY = ("workload.family", "workload.preset", "workload.image_mode", "workload.dtype",
                     "workload.new_tokens")
DEVICE_NAME, DEVICE_TYPE = "device_name", "device_type"


def _kept(name: str) -> bool:
    return name not in IGNORED and not name.startswith(IGNORED_PREFIXES)


def configuration(params: Mapping[str, object], tags: Mapping[str, object] | None = None) -> dict[str, str]:
    """{param: value} that decides whether two runs ran the same thing (module docstring). Values are strings;
    a None value (absent in a frame) is left out, so its default applies."""
    config = {name: str(value) for name, value in params.items() if value is not None and _kept(name)}
    config.update({name: str(params[name]) for name in WORKLOAD_IDENTITY if params.get(name) is not None})
    for name, default in PARAM_DEFAULTS.items():
        config.setdefault(name, default)
    device = params.get("workload.device")
    if device is not None:
        config[DEVICE_TYPE] = str(device).split(":", 1)[0]
    name = (tags or {}).get(DEVICE_NAME_TAG)
    if name is not None:
        config[DEVICE_NAME] = str(name)
    return config


def batch_size(config: Mapping[str, str]) -> int:
    """The configuration's pages per forward (1 when it says nothing else); a value that is not a whole
    number is a ValueError naming it."""
    text = config.get(BATCH_SIZE_PARAM, PARAM_DEFAULTS[BATCH_SIZE_PARAM])
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{BATCH_SIZE_PARAM}={text!r} is not a number") from None
    if not value.is_integer() or value < 1:
        raise ValueError(f"{BATCH_SIZE_PARAM}={text!r} is not a whole number of pages >= 1")
    return int(value)


def differences(configs: Iterable[Mapping[str, str]]) -> list[str]:
    """The names whose values are not the same in every configuration (a name missing from one counts as
    differing), sorted."""
    configs = list(configs)
    names = {name for config in configs for name in config}
    return sorted(name for name in names if len({config.get(name) for config in configs}) > 1)


def same_except(a: Mapping[str, str], b: Mapping[str, str], knobs: Iterable[str]) -> bool:
    """Whether two configurations are equal once the names in `knobs` are set aside."""
    knobs = set(knobs)
    return {k: v for k, v in a.items() if k not in knobs} == {k: v for k, v in b.items() if k not in knobs}
