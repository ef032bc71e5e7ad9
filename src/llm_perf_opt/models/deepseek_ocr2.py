"""DeepSeek-OCR-2 workloads: transformers' native classes, from a local checkpoint or from a config.

Presets (random weights, nothing downloaded):
- `tiny`: a few hundred thousand parameters with the real structure (SAM -> Qwen2-style encoder with
  learned queries -> projector -> MoE decoder with a dense first layer); for tests and CPU runs.
- `full`: the released DeepSeek-OCR-2 dimensions (SAM ViT-B, a 24-layer Qwen2-0.5B-shaped vision
  encoder, a 12-layer DeepSeek-3B-MoE decoder: 64 routed experts, top-6, 2 shared, first layer
  dense), for representative GPU timing without the weights.

Inputs are built without the hub. The image goes through `DeepseekOcr2ImageProcessorPil` (pure
Pillow, no files needed). The prompt is `[bos] + [<image>] * image_tokens + text tokens`, where
image_tokens = q(global) + tiles * q(tile) + 1 (view separator), q(s) = 256 for s > 768 px else 144
(the encoder's learned query sets), and the text tokens stand in for the instruction (default 12
ids, the length of "<|grounding|>Convert the document to markdown."). With a checkpoint that ships
its processor, the processor builds the real prompt instead.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from llm_perf_opt.data.pages import Page
from llm_perf_opt.errors import InputError
from llm_perf_opt.models.generation import decode_experts_plan
from llm_perf_opt.models.moe_routing import apply_routing_choice
from llm_perf_opt.models.workload import (
    PreparedInput,
    Workload,
    checkpoint_dir,
    count_parameters,
    dtype_name,
    load_kwargs,
    resolve_dtype,
    resolve_stage_map,
)

_SAM_FULL = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11],
                 output_channels=256, downsample_channels=[512, 896])
_ENCODER_FULL = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, max_position_embeddings=32768, vocab_size=151936,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
_TEXT_FULL = dict(vocab_size=129280, hidden_size=1280, intermediate_size=6848, num_hidden_layers=12,
                  num_attention_heads=10, num_key_value_heads=10, max_position_embeddings=8192,
                  n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, moe_intermediate_size=896,
                  topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0,
                  mlp_layer_types=["dense"] + ["sparse"] * 11, bos_token_id=0, eos_token_id=1,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision_config": {
            "sam_config": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                               output_channels=32, downsample_channels=[32, 64], mlp_dim=64),
            "encoder_config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096),
        },
        "text_config": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                            n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32,
                            mlp_layer_types=["dense", "sparse"], bos_token_id=0, eos_token_id=1),
        "image_token_id": 1000,
    },
    "full": {
        "vision_config": {"sam_config": _SAM_FULL, "encoder_config": _ENCODER_FULL},
        "text_config": _TEXT_FULL,
        "image_token_id": 128815,
    },
}


@dataclass(frozen=True)
class ImageMode:
    """How a page becomes pixels: a padded square global view, plus optional 768 px tiles."""

    global_size: int
    tiles: bool
    tile_size: int = 768
    min_tiles: int = 2
    max_tiles: int = 6


IMAGE_MODES: dict[str, ImageMode] = {
    # The HF processor's default for DeepSeek-OCR-2: 1024 px global view + 2..6 tiles of 768 px
    # when the page's longer side exceeds 768 px.
    "tiled": ImageMode(global_size=1024, tiles=True),
    "global1024": ImageMode(global_size=1024, tiles=False),
    "global768": ImageMode(global_size=768, tiles=False),
}


def _queries(view_px: int) -> int:
    # SAM (patch 16) + two stride-2 convs -> (px / 64)^2 patches; the encoder then emits its 144-query
    # set for <= 144 patches (768 px) and its 256-query set above (1024 px).
    return 144 if (math.ceil(view_px / 64) ** 2) <= 144 else 256


def image_token_count(mode: ImageMode, num_tiles: int) -> int:
    return _queries(mode.global_size) + num_tiles * _queries(mode.tile_size) + 1


MIN_TRANSFORMERS = "5.17"


def require_native_classes() -> None:
    """transformers' native DeepSeek-OCR-2 classes arrived in 5.17: one line saying so on an older release."""
    import transformers

    try:
        from transformers import DeepseekOcr2Config  # noqa: F401
    except ImportError:
        raise InputError(
            f"model=deepseek_ocr2 needs transformers >= {MIN_TRANSFORMERS} (its native DeepSeek-OCR-2 classes); this "
            f"environment has {transformers.__version__} (the DeepSeek-OCR v1 environment?): "
            f"pip install 'transformers>={MIN_TRANSFORMERS},<6', or use model=deepseek_ocr here"
        ) from None


def build_config(preset: str, overrides: dict[str, Any] | None = None):
    require_native_classes()
    from transformers import DeepseekOcr2Config

    if preset not in PRESETS:
        raise InputError(f"model.preset={preset} is unknown for deepseek_ocr2: choose one of {', '.join(PRESETS)}")
    spec = copy.deepcopy(PRESETS[preset])
    for key, value in (overrides or {}).items():
        _set_dotted(spec, key, value)
    return DeepseekOcr2Config(**spec)


def _set_dotted(spec: dict[str, Any], dotted: str, value: Any) -> None:
    """architecture_overrides use dotted keys (text_config.num_hidden_layers: 4) or nested mappings."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _set_dotted(spec, f"{dotted}.{key}", inner)
        return
    node = spec
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _load_model(cfg: Any, device: torch.device, dtype: torch.dtype):
    from transformers import DeepseekOcr2ForConditionalGeneration

    common = load_kwargs(cfg, dtype)
    if cfg.path:
        path = checkpoint_dir(cfg.path, "DeepSeek-OCR-2")
        model = DeepseekOcr2ForConditionalGeneration.from_pretrained(str(path), **common)
        return model.to(device), "checkpoint"
    config = build_config(cfg.preset, OmegaConf.to_container(cfg.architecture_overrides, resolve=True) or {})
    # Build directly on the device in the target dtype: the full preset has ~3B parameters.
    with torch.device(device):
        model = DeepseekOcr2ForConditionalGeneration._from_config(config, **common)
    return model, "random"


def _load_processor(path: str | None):
    """The checkpoint's own processor when it ships one (tokenizer + image processor), else None."""
    if not path:
        return None
    try:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(Path(path).expanduser().resolve()))
    except (OSError, ValueError, KeyError, TypeError):
        # No tokenizer/processor files in the directory: fall back to config-built inputs (logged).
        return None


def _image_processor(mode: ImageMode):
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

    # Without tiles the processor sizes the global view by `tile_size`: pass the global size there.
    return DeepseekOcr2ImageProcessorPil(
        size={"height": mode.global_size, "width": mode.global_size},
        crop_to_patches=mode.tiles,
        tile_size=mode.tile_size if mode.tiles else mode.global_size,
        min_patches=mode.min_tiles,
        max_patches=mode.max_tiles,
    )


def prepare_inputs(
    pages: list[Page],
    model_config: Any,
    mode: ImageMode,
    prompt_text_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
) -> list[PreparedInput]:
    text_config = model_config.text_config
    processor = _image_processor(mode)
    image_token_id = int(model_config.image_token_id)
    bos = text_config.bos_token_id if text_config.bos_token_id is not None else 0
    special = {image_token_id, bos, text_config.eos_token_id, text_config.pad_token_id}
    prepared = []
    for index, page in enumerate(pages):
        features = processor(images=[page.image], return_tensors="pt")
        num_tiles = int(features["num_local_patches"][0])
        image_tokens = image_token_count(mode, num_tiles)
        rng = random.Random(seed * 100_003 + index)
        text_ids = []
        while len(text_ids) < prompt_text_tokens:
            token = rng.randrange(2, text_config.vocab_size)
            if token not in special:
                text_ids.append(token)
        input_ids = torch.tensor([[bos] + [image_token_id] * image_tokens + text_ids], device=device)
        model_inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "pixel_values": features["pixel_values"].to(device=device, dtype=dtype),
            "num_local_patches": [num_tiles],
        }
        if num_tiles:
            model_inputs["pixel_values_local"] = features["pixel_values_local"].to(device=device, dtype=dtype)
        prepared.append(
            PreparedInput(
                input_id=page.page_id,
                model_inputs=model_inputs,
                prompt_tokens=int(input_ids.shape[1]),
                image_tokens=image_tokens,
                meta={"tiles": num_tiles, "width": page.image.width, "height": page.image.height,
                      "source": page.source},
            )
        )
    return prepared


def _prepare_with_processor(processor, pages: list[Page], device, dtype) -> list[PreparedInput]:
    prompt = "<image>\n<|grounding|>Convert the document to markdown."
    prepared = []
    for page in pages:
        batch = processor(images=[page.image], text=prompt, return_tensors="pt")
        model_inputs = {k: (v.to(device=device, dtype=dtype) if k.startswith("pixel_values") else v.to(device))
                        for k, v in batch.items() if isinstance(v, torch.Tensor)}
        model_inputs.pop("attention_mask", None)
        model_inputs["num_local_patches"] = [int(x) for x in batch["num_local_patches"]]
        image_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
        prepared.append(PreparedInput(page.page_id, model_inputs, int(batch["input_ids"].shape[1]), image_tokens,
                                      {"tiles": model_inputs["num_local_patches"][0], "source": page.source}))
    return prepared


def build_workload(cfg: Any, pages: list[Page], device: torch.device, seed: int = 0) -> Workload:
    """Build the DeepSeek-OCR-2 workload described by the `model` config group."""
    require_native_classes()
    mode = IMAGE_MODES[str(cfg.image_mode)]  # the config's ImageMode enum admits only these keys
    dtype = resolve_dtype(cfg.dtype, device)
    model, weights = _load_model(cfg, device, dtype)
    model.eval()

    routing, routers = apply_routing_choice(model, cfg.moe_routing, weights, seed)

    processor = _load_processor(cfg.path)
    if processor is not None:
        inputs = _prepare_with_processor(processor, pages, device, dtype)
        prompt_source = "processor"
    else:
        inputs = prepare_inputs(pages, model.config, mode, int(cfg.prompt_text_tokens), device, dtype, seed)
        prompt_source = "config"

    text_config = model.config.text_config
    decode_experts = decode_experts_plan(model, cfg.get("decode_experts_implementation", "auto"), device)
    info = {
        "family": "deepseek_ocr2",
        "preset": cfg.preset if weights == "random" else "checkpoint",
        "weights": weights,
        "dtype": dtype_name(dtype),
        "attn_implementation": model.config._attn_implementation,
        "experts_implementation": (model.get_experts_implementation().get("text_config")
                                   if hasattr(model, "get_experts_implementation") else None),
        "decode_experts_implementation": (decode_experts or {}).get("text_config", "same"),
        "moe_routing": routing,
        "moe_routers_switched": routers,
        "image_mode": cfg.image_mode,
        "image_mode_spec": asdict(mode),
        "prompt_source": prompt_source,
        "parameters": count_parameters(model),
        "text_layers": text_config.num_hidden_layers,
        "text_hidden_size": text_config.hidden_size,
        "num_experts": getattr(text_config, "n_routed_experts", None),
        "experts_per_token": getattr(text_config, "num_experts_per_tok", None),
    }
    stages, stage_modules = resolve_stage_map(model, dict(cfg.stage_map or {}))
    return Workload(
        family="deepseek_ocr2",
        model=model,
        inputs=inputs,
        stages=stages,
        stage_modules=stage_modules,
        device=device,
        dtype=dtype,
        eos_token_id=text_config.eos_token_id,
        info=info,
        decode_experts=decode_experts,
    )
