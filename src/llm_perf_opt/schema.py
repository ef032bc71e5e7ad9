"""The stage schema: which stages a run has, how they nest, and the one spelling of every stage-named thing.

A stage has a key (the one spelling: `prefill`, `decode`, `e2e`, `vision`, `vision_sam`), a parent (the
stage it runs inside), a display label and a kind:

- `measured`: timed directly (prefill, decode, e2e; a sub-stage whose module's forward calls are timed);
- `sum_of_children`: a group of sub-stages (`vision` = `vision_sam` + `vision_encoder` + ...), whose
  time, FLOPs and bytes are the sums of its children's.

The tree of one run: `e2e` (one request, host wall time) holds `prefill` and `decode`; the workload's
sub-stages (a stage map path such as `vision/sam`, key `vision_sam`) and their groups (`vision`) nest
inside `prefill`: they run in the first forward pass and are never added to it.

Every name that carries a stage is made here, from (stage, quantity[, statistic]):

    metric_key("vision_sam", "ms", "p50")  -> "vision_sam/ms_p50"     MLflow metric
    metric_key("prefill", "mfu")           -> "prefill/mfu"
    column("vision_sam", "ms")             -> "vision_sam_ms"         samples.csv / energy_samples.csv column
    tag_key("prefill", "bound")            -> "prefill/bound"         MLflow tag
    parse_metric_key("vision_sam/ms_p50")  -> ("vision_sam", "ms", "p50")

A key that ends in a statistic's name is that statistic of the quantity before it: `e2e/energy_j_mean`
is the mean of the per-sample energy, `gpu/power_w_max` the maximum power reading.

The MLflow UI groups metric charts by the text before the first `/`, so one stage's time (p50, p90,
p99, mean), share of its parent, MFU and MBU (in percent) and energy sit in one group. Run-wide rates
(pages/s, tokens/s) use the group `throughput`, device-wide readings `gpu` and run-wide counts `run`
(none of them is a stage).

Nesting is carried in the run record (`RunRecord.stages`) and read back from it: no consumer derives it
from a key's spelling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from llm_perf_opt.errors import InputError

E2E, PREFILL, DECODE = "e2e", "prefill", "decode"
DEVICE_GROUP, RUN_GROUP, THROUGHPUT_GROUP = "gpu", "run", "throughput"  # metric groups that are not stages
RESERVED = frozenset({E2E, PREFILL, DECODE, DEVICE_GROUP, RUN_GROUP, THROUGHPUT_GROUP})
STATS = ("mean", "std", "min", "max", "p50", "p90", "p99")
StageKind = Literal["measured", "sum_of_children"]

# Run-level MLflow tags, one spelling for every writer and reader (tracking, runners, compare, reports).
KIND_TAG = "llm_perf_opt.kind"            # profile | comparison | sweep
RUN_UID_TAG = "llm_perf_opt.run_uid"      # a run directory's id: log-run finds its MLflow run by it
INPUT_TAG = "llm_perf_opt.input_id"       # an MLflow trace's input (or batch)
PARENT_TAG = "mlflow.parentRunId"         # MLflow's own: a sweep's child names its parent (the UI nests it)
SWEEP_JOB_TAG = "llm_perf_opt.sweep_job"  # Hydra's job number of a sweep's child
SWEEP_DIR_TAG = "llm_perf_opt.sweep_dir"  # the sweep directory (parent and children)
GPU_TAG = "llm_perf_opt.gpu"              # the device index a sweep job leased

# Run params (the resolved config flattened with dots) that readers interpret; a run logged before a param
# existed reads as its default (llm_perf_opt.reports.configuration.PARAM_DEFAULTS).
BATCH_SIZE_PARAM = "profiling.batch_size"  # pages per forward
CACHE_PARAM = "model.cache"                # KV cache: dynamic | static
COMPILE_PARAM = "model.compile"            # torch.compile mode: none | default | reduce-overhead
DEVICE_NAME_TAG = "device"                 # the device's name (NVML's / the CPU's), a profile run's tag

_SEGMENT = re.compile(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*")
_STAT_SUFFIX = re.compile(r"^(?P<quantity>.+)_(?P<stat>" + "|".join(STATS) + r")$")
_FIXED_LABELS = {E2E: "end to end", PREFILL: "prefill", DECODE: "decode"}


@dataclass(frozen=True)
class Stage:
    key: str
    parent: str | None
    label: str
    kind: StageKind = "measured"
    # The quantity whose mean is this stage's time for rates (MFU, MBU): decode's costs are per step.
    time_quantity: str = "ms"
    cost_prefix: str = ""


def metric_key(stage: str, quantity: str, stat: str | None = None) -> str:
    return f"{stage}/{quantity}" + (f"_{stat}" if stat else "")


def column(stage: str, quantity: str) -> str:
    return f"{stage}_{quantity}"


def tag_key(stage: str, quantity: str) -> str:
    return f"{stage}/{quantity}"


def parse_metric_key(key: str) -> tuple[str, str, str | None]:
    """The inverse of metric_key: (stage or group, quantity, statistic or None)."""
    stage, sep, rest = key.partition("/")
    if not sep or not rest:
        raise ValueError(f"{key!r} is not a stage metric key (<stage>/<quantity>[_<stat>])")
    match = _STAT_SUFFIX.match(rest)
    return (stage, match["quantity"], match["stat"]) if match else (stage, rest, None)


def stage_key(path: Sequence[str]) -> str:
    """('vision', 'sam') -> 'vision_sam': a stage map path's key."""
    for segment in path:
        if not _SEGMENT.fullmatch(str(segment)):
            raise InputError(f"stage map name {'/'.join(map(str, path))!r}: each level must be letters, digits and "
                             "single underscores (e.g. vision/sam): rename it in model.stage_map")
    return "_".join(str(segment) for segment in path)


def _label(path: Sequence[str]) -> str:
    return " › ".join(path)


@dataclass(frozen=True)
class StageTree:
    """The stages of one run in display order (parents before children), with their nesting."""

    stages: tuple[Stage, ...]

    @classmethod
    def from_paths(cls, paths: Iterable[Sequence[str]]) -> StageTree:
        """e2e > prefill > groups > sub-stages, e2e > decode, for the sub-stage paths of a stage map."""
        paths = [tuple(str(p) for p in path) for path in paths]
        stages = [Stage(E2E, None, _FIXED_LABELS[E2E]), Stage(PREFILL, E2E, _FIXED_LABELS[PREFILL])]
        seen = {E2E: (E2E,), PREFILL: (PREFILL,), DECODE: (DECODE,)}
        leaves = {stage_key(path) for path in paths}
        for path in paths:
            for depth in range(1, len(path) + 1):
                prefix = path[:depth]
                key = stage_key(prefix)
                if key in RESERVED:
                    raise InputError(f"stage map name {'/'.join(prefix)!r} is reserved "
                                     f"({', '.join(sorted(RESERVED))}): rename it in model.stage_map")
                if key in seen:
                    if seen[key] != prefix:
                        raise InputError(f"stage map names {'/'.join(seen[key])} and {'/'.join(prefix)} both become "
                                         f"stage {key!r}: rename one in model.stage_map")
                    if depth < len(path) and key in leaves:
                        raise InputError(f"stage map entry {'/'.join(prefix)} is both a module and a group: "
                                         "a sub-stage cannot contain another (rename one)")
                    continue
                seen[key] = prefix
                parent = stage_key(prefix[:-1]) if depth > 1 else PREFILL
                kind: StageKind = "measured" if depth == len(path) else "sum_of_children"
                stages.append(Stage(key, parent, _label(prefix), kind))
        stages.append(Stage(DECODE, E2E, _FIXED_LABELS[DECODE], time_quantity="tpot_ms", cost_prefix="step_"))
        return cls(tuple(stages))

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages)

    def __contains__(self, key: object) -> bool:
        return any(stage.key == key for stage in self.stages)

    def get(self, key: str) -> Stage:
        for stage in self.stages:
            if stage.key == key:
                return stage
        raise KeyError(f"no stage {key!r} (stages: {', '.join(self.keys())})")

    def keys(self) -> list[str]:
        return [stage.key for stage in self.stages]

    def children(self, key: str) -> list[Stage]:
        return [stage for stage in self.stages if stage.parent == key]

    def sub_stages(self) -> list[Stage]:
        """The measured stages nested in prefill (timed by hooks on their modules)."""
        return [s for s in self.stages if s.kind == "measured" and s.key not in (E2E, PREFILL, DECODE)]

    def groups(self) -> list[Stage]:
        return [s for s in self.stages if s.kind == "sum_of_children"]

    def ancestors(self, key: str) -> list[str]:
        chain, parent = [], self.get(key).parent
        while parent is not None:
            chain.append(parent)
            parent = self.get(parent).parent
        return chain

    def depth(self, key: str) -> int:
        return len(self.ancestors(key))

    def descendants(self, key: str) -> list[Stage]:
        return [s for s in self.stages if key in self.ancestors(s.key)]

    def bottom_up_groups(self) -> list[Stage]:
        """Groups deepest first, so that a group's children are summed before the group's own parent."""
        return sorted(self.groups(), key=lambda s: -self.depth(s.key))
