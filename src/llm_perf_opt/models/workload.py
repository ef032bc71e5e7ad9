"""What a profiling pass needs: a model on its device, prepared inputs, and the stage map."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_perf_opt.errors import InputError
from llm_perf_opt.models.decoding import Decoding
from llm_perf_opt.models.generation import CallConvention, decode_n_tokens, decode_phase
from llm_perf_opt.schema import StageTree, stage_key


@dataclass
class PreparedInput:
    """One prompt, already on the device: `model_inputs` go straight into the first forward pass.

    A batch (models.batching) is a PreparedInput too: its `model_inputs` hold `batch_size` equal-shape
    prompts along dim 0, `members` their input ids, `input_id` those ids joined with "+";
    `prompt_tokens` and `image_tokens` stay per prompt.
    """

    input_id: str
    model_inputs: dict[str, Any]
    prompt_tokens: int
    image_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    members: tuple[str, ...] = ()


@dataclass
class Workload:
    """A model, its inputs and its stage map.

    `stages` is the run's stage tree (llm_perf_opt.schema); `stage_modules` maps each measured
    sub-stage's key ("vision_sam", ...) to the module whose forward calls delimit it. Sub-stages are
    timed inside prefill (the vision encoder runs only there) and nest within it; they must not
    contain one another.

    `batches` is what the passes run, one forward per entry: the inputs themselves at `batch_size` 1,
    else equal-shape batches of them (models.batching.batch_workload).
    """

    family: str
    model: nn.Module
    inputs: list[PreparedInput]
    stages: StageTree
    stage_modules: dict[str, nn.Module]
    device: torch.device
    dtype: torch.dtype
    eos_token_id: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # Known work per execution, declared by a `_target_` factory when no analytic model covers the
    # module: {"prefill": {"flops": F, "bytes": B}, "decode": {...}} (decode: one step).
    declared_costs: dict[str, dict[str, float]] | None = None
    # The experts implementation for decode steps (generation.decode_experts_plan), None: unchanged.
    decode_experts: dict[str, str] | None = None
    batch_size: int = 1
    batches: list[PreparedInput] = field(default_factory=list)
    convention: CallConvention = field(init=False)
    # How the timed and profiled passes prefill and decode (models.decoding): eager over a dynamic cache
    # unless model.cache / model.compile say otherwise. The counted pass always runs eager.
    decoding: Decoding = field(init=False)

    def __post_init__(self) -> None:
        self.convention = CallConvention.detect(self.model)
        self.decoding = Decoding(self.model, self.convention, self.device)
        if not self.inputs:
            raise InputError(f"workload '{self.family}' has no inputs: "
                             "check the dataset settings (num_pages, limit, subset)")
        self.batches = self.batches or list(self.inputs)

    def decode_phase(self):
        """Context for the decode steps of every pass (timed, profiled, counted, benchmarks)."""
        return decode_phase(self.model, self.decode_experts)

    def prefill(self, prepared: PreparedInput) -> tuple[torch.Tensor, Any]:
        """The first forward pass of `prepared` as configured (models.decoding): (first token, cache)."""
        return self.decoding.prefill(prepared.model_inputs, prepared.batch_size)

    def decode_step(self, token: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """One decode step as configured (eager, or the compiled step over a static cache)."""
        return self.decoding.step(token, cache)

    def greedy_tokens(self, prepared: PreparedInput, new_tokens: int) -> torch.Tensor:
        """The (batch, new_tokens) greedy tokens of prefill + decode steps as the passes run them, without
        marks (tests, benchmarks); call under torch.inference_mode() as the passes do."""
        first, cache = self.prefill(prepared)
        with self.decode_phase():
            rest = decode_n_tokens(self.model, self.convention, first, cache, new_tokens - 1, step=self.decode_step)
        return torch.cat([first, *rest], dim=1)


def stage_map_paths(stage_map: Mapping[str, Any] | None, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """{"vision": {"sam": path}} or {"vision/sam": path} -> {("vision", "sam"): path}: nesting names the group."""
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in (stage_map or {}).items():
        path = prefix + tuple(part for part in str(key).split("/") if part)
        if isinstance(value, Mapping):
            flat.update(stage_map_paths(value, path))
        else:
            flat[path] = value
    return flat


def resolve_stage_map(model: nn.Module, stage_map: Mapping[str, Any] | None) -> tuple[StageTree, dict[str, nn.Module]]:
    """The stage tree of a stage map ({name: dotted submodule path or module}, nested or "group/name"
    keys) and {stage key: module} for its measured sub-stages."""
    paths = stage_map_paths(stage_map)
    tree = StageTree.from_paths(paths)
    resolved: dict[str, nn.Module] = {}
    for path, target in paths.items():
        key = stage_key(path)
        if isinstance(target, nn.Module):
            resolved[key] = target
            continue
        try:
            resolved[key] = model.get_submodule(str(target))
        except AttributeError:
            children = ", ".join(name for name, _ in model.named_children())
            raise InputError(
                f"stage map entry {'/'.join(path)}={target} names no submodule of {type(model).__name__} "
                f"(its top-level children: {children}): fix model.stage_map"
            ) from None
    return tree, resolved


def resolve_device(requested: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit CUDA request without CUDA is an input error."""
    requested = str(requested or "auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)  # config.validate admits cpu, cuda and cuda:N only
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise InputError(
                f"device={requested} but no CUDA device is usable (torch {torch.__version__}, {build}): "
                "use device=auto or device=cpu, or install a CUDA build of torch (see README)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device={requested} but only {torch.cuda.device_count()} CUDA device(s) are visible: pick cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    return device


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on CUDA (what the model ships in) and fp32 on CPU (bf16 matmuls are slow there)."""
    requested = str(requested or "auto")  # auto | bf16 | fp16 | fp32 (the config's DType enum)
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[requested]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def load_kwargs(cfg: Any, dtype: torch.dtype) -> dict[str, Any]:
    """from_pretrained/_from_config keyword arguments shared by the transformers families."""
    # Plain strings, not the config's StrEnum members: transformers keeps these on the model config, and
    # torch.compile cannot trace string methods of a str subclass (`attn_implementation.startswith`).
    kwargs: dict[str, Any] = dict(dtype=dtype, attn_implementation=str(cfg.attn_implementation))
    if cfg.get("experts_implementation"):
        kwargs["experts_implementation"] = str(cfg.experts_implementation)
    return kwargs


def checkpoint_dir(path: str, what: str) -> Path:
    """A local checkpoint directory (one with config.json), or an InputError saying how to fix it."""
    resolved = Path(path).expanduser().resolve()
    if not (resolved / "config.json").is_file():
        raise InputError(
            f"model.path={path} is not a checkpoint directory (no config.json at {resolved}): "
            f"point it at a local {what} directory, or unset it to build from model.preset"
        )
    return resolved


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
