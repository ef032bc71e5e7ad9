"""DeepSeek-OCR (v1) workloads through the model's published remote code (`trust_remote_code`).

DeepSeek-OCR v1 ships its model as Python files beside config.json (modeling_deepseekocr.py,
deepencoder.py, modeling_deepseekv2.py): SAM ViT-B -> CLIP-L (over SAM's features) -> a linear
projector -> a 12-layer DeepSeek-V2-style MoE decoder (first layer dense, 64 routed experts, top-6, 2
shared). `model.path` names that directory; its code runs only with `model.trust_remote_code=true`
given explicitly (config.validate refuses otherwise, before anything is built). The code was written
for transformers 4.46.3 and breaks on 5.x: it runs in the v1 environment (docs/models.md).

Weights: from the directory when it holds a checkpoint, else random weights built from its config.json
with a preset: `full` (the config as released) or `tiny` (2 decoder layers, 8 experts, top-2, 1 shared,
a 1024-token vocabulary: for CPU tests). The vision tower cannot shrink: `build_sam_vit_b()`,
`build_clip_l()` and the projector take no config (their sizes are constants in deepencoder.py), so
`tiny` keeps SAM ViT-B and CLIP-L (about 400M parameters) and its decoder width (1280, the projector's
hard-coded output). Random weights route MoE tokens uniformly (models.moe_routing, `MoEGate`).

Image modes (infer()'s arguments, the model card's names in brackets): `crop` (Gundam: a 1024 px padded
global view plus 640 px tiles, 2..9 of them chosen by `dynamic_preprocess`, none for a page within
640 x 640), and the single views `global512` (Tiny), `global640` (Small), `global1024` (Base),
`global1280` (Large): up to 640 px the page is resized to the square, above it is padded. Inputs are
built as infer() builds them, without the tokenizer: the code's own `dynamic_preprocess` and
`BasicImageTransform` (normalise to [-1, 1]), the prompt `[bos] + image tokens + text tokens`, where
the image tokens are (q + 1) * q + 1 for the global view (q = side / 64, a newline token ends each row,
one view separator) plus (q_t * w + 1) * (q_t * h) for w x h tiles, `images_seq_mask` marking them, and
`images_spatial_crop = [[w, h]]`. The text tokens stand in for the instruction (12 by default, seeded
ids). The image token id is the preset's (`full`: 128815, the `<image>` entry of the released
tokenizer_config.json, which infer() also hard-codes); the forward never reads it (it scatters the
vision features where `images_seq_mask` is true).

Running on the CPU without editing the remote files. `DeepseekOCRModel.forward` calls
`images_seq_mask[idx].unsqueeze(-1).cuda()` (and infer() `.cuda()` everywhere; we never call infer()).
Three ways round it were possible: patch the remote class's forward at load time, call its sub-modules
ourselves the way forward does, or make the one `.cuda()` call harmless from the input side. We take
the third: off CUDA, `images_seq_mask` is a `DeviceMask`, a bool tensor whose `.cuda()` returns it as
a plain tensor on the device it already is on. The model's own forward, untouched, is what every pass
times, counts and profiles; on a CUDA device the mask is a plain tensor. The one load-time change is
`print` inside modeling_deepseekocr.py: its forward prints the feature shapes on every prefill (4
lines, unconditional); the family points that module's `print` at a no-op so the profiler's output
stays readable (no file is touched; `remote_prints: silenced` in the run's workload info).

Stage map: vision/sam (`model.sam_model`), vision/clip (`model.vision_model`, called with the SAM
features), vision/projector (`model.projector`), nested in prefill. In crop mode each fires twice per
page (the tiles as one batch, then the global view): the passes sum the calls. The forward computes
logits for every prompt position (it has no `logits_to_keep`), and takes the KV cache as
`past_key_values` (a legacy tuple), which the generation loop detects from its signature.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from PIL import ImageOps

from llm_perf_opt.config import require_trust_remote_code
from llm_perf_opt.data.pages import Page
from llm_perf_opt.errors import InputError
from llm_perf_opt.models.moe_routing import apply_routing_choice
from llm_perf_opt.models.workload import (
    PreparedInput,
    Workload,
    checkpoint_dir,
    count_parameters,
    dtype_name,
    resolve_dtype,
    resolve_stage_map,
)

# The release the remote code was written for (its config.json and the upstream requirements.txt).
TRANSFORMERS_VERSION = "4.46.3"
MODEL_CLASS = "DeepseekOCRForCausalLM"
# `<image>` in the released tokenizer_config.json; infer() hard-codes the same id.
RELEASED_IMAGE_TOKEN_ID = 128815

PRESETS: dict[str, dict[str, Any]] = {
    "full": {"config": {}, "image_token_id": RELEASED_IMAGE_TOKEN_ID},
    "tiny": {
        # The decoder width stays 1280: the projector's output and image_newline are hard-coded to it.
        "config": dict(num_hidden_layers=2, first_k_dense_replace=1, intermediate_size=512, n_routed_experts=8,
                       num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=128, vocab_size=1024),
        "image_token_id": 1000,
    },
}

# Files whose presence means the directory holds weights (from_pretrained loads them).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ImageMode:
    """infer()'s (base_size, image_size, crop_mode): the global view's side, the tile (or single view) side."""

    base_size: int
    image_size: int
    crop_mode: bool


IMAGE_MODES: dict[str, ImageMode] = {
    "crop": ImageMode(base_size=1024, image_size=640, crop_mode=True),  # "Gundam", infer()'s default
    "global512": ImageMode(base_size=512, image_size=512, crop_mode=False),  # "Tiny"
    "global640": ImageMode(base_size=640, image_size=640, crop_mode=False),  # "Small"
    "global1024": ImageMode(base_size=1024, image_size=1024, crop_mode=False),  # "Base"
    "global1280": ImageMode(base_size=1280, image_size=1280, crop_mode=False),  # "Large"
}

# infer(): patch_size 16, downsample_ratio 4 -> one token per 64 px of a view's side.
PATCH_SIZE, DOWNSAMPLE_RATIO = 16, 4


class DeviceMask(torch.Tensor):
    """A bool mask whose `.cuda()` keeps it where it is: the remote forward's `.cuda()` on a CPU run."""

    def cuda(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.as_subclass(torch.Tensor)


def view_queries(side_px: int) -> int:
    """Tokens per row (and rows) of one view: ceil((side // 16) / 4), as infer() computes num_queries."""
    return math.ceil((side_px // PATCH_SIZE) / DOWNSAMPLE_RATIO)


def image_token_count(mode: ImageMode, crop: tuple[int, int]) -> int:
    """Image tokens of one page: the global view's rows with a newline each and the view separator, plus
    the tiles' rows (w * q_t tokens and a newline, h * q_t rows) when the page was cut into tiles."""
    q = view_queries(mode.base_size if mode.crop_mode else mode.image_size)
    tokens = (q + 1) * q + 1
    width, height = crop
    if mode.crop_mode and (width > 1 or height > 1):
        q_tile = view_queries(mode.image_size)
        tokens += (q_tile * width + 1) * (q_tile * height)
    return tokens


def require_remote_transformers() -> None:
    """The remote code needs transformers 4.46.x: one line saying so on any other release."""
    import transformers

    if not transformers.__version__.startswith("4.46."):
        raise InputError(
            f"model=deepseek_ocr runs DeepSeek-OCR v1's remote code, written for transformers {TRANSFORMERS_VERSION} "
            f"(this environment has {transformers.__version__}): run it in the v1 environment (docs/models.md: "
            f"transformers=={TRANSFORMERS_VERSION} tokenizers==0.20.3 torchvision einops easydict addict)"
        )


def model_directory(path: str | None) -> Path:
    if not path:
        raise InputError("model.path=null: model=deepseek_ocr loads its code and config from a local DeepSeek-OCR "
                         "directory: add model.path=/path/to/DeepSeek-OCR")
    return checkpoint_dir(path, "DeepSeek-OCR (v1)")


def has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES)


def load_config(directory: Path, preset: str, overrides: dict[str, Any] | None = None):
    """config.json through its own config class (remote code), with the preset and overrides applied."""
    from transformers import AutoConfig

    if preset not in PRESETS:
        raise InputError(f"model.preset={preset} is unknown for deepseek_ocr: choose one of {', '.join(PRESETS)}")
    config = AutoConfig.from_pretrained(str(directory), trust_remote_code=True)
    if MODEL_CLASS not in (getattr(config, "architectures", None) or []):
        raise InputError(f"model.path={directory} holds {getattr(config, 'architectures', None)}, not {MODEL_CLASS}: "
                         "point it at a DeepSeek-OCR (v1) directory")
    spec = copy.deepcopy(PRESETS[preset]["config"])
    spec.update(overrides or {})
    for key, value in spec.items():
        setattr(config, key, value)
    return config


def remote_class(directory: Path):
    """The directory's modeling_deepseekocr.DeepseekOCRForCausalLM (what config.json's auto_map names AutoModel)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    return get_class_from_dynamic_module(f"modeling_deepseekocr.{MODEL_CLASS}", str(directory))


def silence_remote_prints(model_class) -> None:
    """modeling_deepseekocr.py prints feature shapes on every prefill: point its module's `print` at a no-op."""
    module = sys.modules.get(model_class.__module__) or importlib.import_module(model_class.__module__)
    module.print = lambda *args, **kwargs: None


def build_model(cfg: Any, device: torch.device, dtype: torch.dtype):
    """(model, weights: "checkpoint" | "random") from `model.path`, on `device` in `dtype`."""
    require_remote_transformers()
    directory = model_directory(cfg.path)
    attn = str(cfg.attn_implementation)
    model_class = remote_class(directory)
    silence_remote_prints(model_class)
    if has_weights(directory):
        try:
            model = model_class.from_pretrained(str(directory), trust_remote_code=True, torch_dtype=dtype,
                                                attn_implementation=attn)
        except OSError as exc:
            raise InputError(f"model.path={cfg.path}: its weights do not load ({exc}): complete the checkpoint "
                             "or remove its weight index to build random weights") from None
        return model.to(device), "checkpoint"
    overrides = OmegaConf.to_container(cfg.architecture_overrides, resolve=True) or {}
    config = load_config(directory, str(cfg.preset), overrides)
    config._attn_implementation = attn
    # Built directly on the device in the target dtype: the full preset has 3.3B parameters.
    with torch.device(device):
        model = model_class._from_config(config, torch_dtype=dtype, attn_implementation=attn)
    return model, "random"


def image_token_id(cfg: Any, weights: str, vocab_size: int) -> int:
    """The preset's `<image>` id for random weights; a checkpoint's from its tokenizer_config.json (else infer()'s)."""
    if weights == "checkpoint":
        token = released_image_token_id(Path(cfg.path).expanduser()) or RELEASED_IMAGE_TOKEN_ID
    else:
        token = int(PRESETS[str(cfg.preset)]["image_token_id"])  # load_config checked the preset
    if token >= vocab_size:
        raise InputError(f"model.path={cfg.path}: the image token id {token} is outside the model's vocabulary "
                         f"({vocab_size}): fix <image> in its tokenizer_config.json or the vocabulary size")
    return token


def remote_module(model):
    return sys.modules[type(model).__module__]


def page_views(page: Page, mode: ImageMode, code) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(tiles [N,3,s,s] or zeros [1,3,B,B], global view [1,3,S,S], (w, h)) as infer() builds them (float32)."""
    transform = code.BasicImageTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), normalize=True)
    fill = tuple(int(x * 255) for x in transform.mean)
    image = page.image.convert("RGB")
    if mode.crop_mode:
        tiles: list = []
        crop = (1, 1)
        if image.size[0] > mode.image_size or image.size[1] > mode.image_size:
            tiles, crop = code.dynamic_preprocess(image, image_size=mode.image_size)
        global_view = ImageOps.pad(image, (mode.base_size, mode.base_size), color=fill)
        crop = (int(crop[0]), int(crop[1]))
        if crop[0] > 1 or crop[1] > 1:
            crops = torch.stack([transform(tile) for tile in tiles])
        else:
            crops = torch.zeros((1, 3, mode.base_size, mode.base_size))
        return crops, transform(global_view).unsqueeze(0), crop
    if mode.image_size <= 640:  # infer(): "directly resize" small single views, pad larger ones
        image = image.resize((mode.image_size, mode.image_size))
    global_view = ImageOps.pad(image, (mode.image_size, mode.image_size), color=fill)
    return (torch.zeros((1, 3, mode.base_size, mode.base_size)), transform(global_view).unsqueeze(0), (1, 1))


def prepare_inputs(pages: list[Page], model, mode: ImageMode, image_token: int, prompt_text_tokens: int,
                   device: torch.device, dtype: torch.dtype, seed: int = 0) -> list[PreparedInput]:
    code = remote_module(model)
    config = model.config
    bos = config.bos_token_id if config.bos_token_id is not None else 0
    special = {image_token, bos, config.eos_token_id, getattr(config, "pad_token_id", None)}
    prepared = []
    for index, page in enumerate(pages):
        crops, global_view, crop = page_views(page, mode, code)
        image_tokens = image_token_count(mode, crop)
        rng = random.Random(seed * 100_003 + index)
        text_ids: list[int] = []
        while len(text_ids) < prompt_text_tokens:
            token = rng.randrange(2, config.vocab_size)
            if token not in special:
                text_ids.append(token)
        ids = [bos] + [image_token] * image_tokens + text_ids
        mask = torch.tensor([[False] + [True] * image_tokens + [False] * len(text_ids)], device=device)
        if device.type != "cuda":
            mask = mask.as_subclass(DeviceMask)
        tiles = int(crops.shape[0]) if crop != (1, 1) else 0
        model_inputs = {
            "input_ids": torch.tensor([ids], device=device),
            "images": [(crops.to(device=device, dtype=dtype), global_view.to(device=device, dtype=dtype))],
            "images_seq_mask": mask,
            "images_spatial_crop": [list(crop)],
        }
        prepared.append(PreparedInput(
            input_id=page.page_id, model_inputs=model_inputs, prompt_tokens=len(ids), image_tokens=image_tokens,
            meta={"tiles": tiles, "crop": list(crop), "width": page.image.width, "height": page.image.height,
                  "source": page.source},
        ))
    return prepared


def released_image_token_id(directory: Path) -> int | None:
    """The `<image>` id in a directory's tokenizer_config.json (None without one)."""
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return None
    added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
    return next((int(key) for key, token in added.items() if token.get("content") == "<image>"), None)


def build_workload(cfg: Any, pages: list[Page], device: torch.device, seed: int = 0) -> Workload:
    """Build the DeepSeek-OCR (v1) workload described by the `model` config group."""
    require_trust_remote_code(cfg)
    mode = IMAGE_MODES[str(cfg.image_mode)]  # the config's enum admits only these keys
    dtype = resolve_dtype(cfg.dtype, device)
    model, weights = build_model(cfg, device, dtype)
    model.eval()
    routing, routers = apply_routing_choice(model, cfg.moe_routing, weights, seed)
    token = image_token_id(cfg, weights, model.config.vocab_size)
    inputs = prepare_inputs(pages, model, mode, token, int(cfg.prompt_text_tokens), device, dtype, seed)
    config = model.config
    info = {
        "family": "deepseek_ocr",
        "preset": str(cfg.preset) if weights == "random" else "checkpoint",
        "weights": weights,
        "dtype": dtype_name(dtype),
        "attn_implementation": config._attn_implementation,
        "moe_routing": routing,
        "moe_routers_switched": routers,
        "image_mode": str(cfg.image_mode),
        "image_mode_spec": asdict(mode),
        "prompt_source": "config",
        "image_token_id": token,
        "remote_code": str(Path(cfg.path).expanduser().resolve()),
        "remote_prints": "silenced",
        "parameters": count_parameters(model),
        "text_layers": config.num_hidden_layers,
        "text_hidden_size": config.hidden_size,
        "num_experts": config.n_routed_experts,
        "experts_per_token": config.num_experts_per_tok,
    }
    stages, stage_modules = resolve_stage_map(model, dict(cfg.stage_map or {}))
    return Workload(
        family="deepseek_ocr",
        model=model,
        inputs=inputs,
        stages=stages,
        stage_modules=stage_modules,
        device=device,
        dtype=dtype,
        eos_token_id=config.eos_token_id,
        info=info,
    )
