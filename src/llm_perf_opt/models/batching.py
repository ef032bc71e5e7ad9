"""Batches of inputs (`profiling.batch_size`): equal-shape inputs concatenated along dim 0, never padded.

Inputs batch only with inputs of the same shapes ("equal-shape groups", recorded as
`workload.batching`): the same tensor names, shapes, dtypes and devices, lists of the same length and
equal other values. A group is cut, in dataset order, into batches of `batch_size`; its last batch
may be smaller (each timed row says its `batch_size`). Within a batch every tensor of `model_inputs`
is concatenated along dim 0 and every list is concatenated (DeepSeek-OCR-2: `input_ids` [B, L],
`pixel_values` [B, 3, S, S], `pixel_values_local` [B * tiles, 3, s, s], `num_local_patches`
[tiles] * B, the layout transformers' processor gives a batch). Nothing is padded: prompts of other
lengths, pages of other tile counts land in other groups, so the loop needs no attention mask.

Checked on the tiny DeepSeek-OCR-2 in fp32 with the model's own routers (`moe_routing=model`): the
batched logits of global768, global1024 and tiled pages (6 tiles each) equal the per-page logits
exactly, and greedy tokens match (tests/test_batches.py). Uniform routing (the default for random
weights) draws its expert choice from a random stream, so its tokens differ between any two calls,
batched or not. A custom factory's module is probed with one forward of the first full batch: one
that returns logits for fewer sequences than it was given fails here, before any run exists.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from llm_perf_opt.errors import InputError
from llm_perf_opt.models.generation import prefill
from llm_perf_opt.models.workload import PreparedInput, Workload

BATCHING = "equal-shape groups"
BATCH_ID_SEPARATOR = "+"
log = logging.getLogger(__name__)


def shape_key(model_inputs: Mapping[str, Any]) -> tuple:
    """What two inputs must share to be concatenated: tensor shapes/dtypes, list lengths, other values."""
    key = []
    for name, value in model_inputs.items():
        if isinstance(value, torch.Tensor):
            key.append((name, "tensor", tuple(value.shape), str(value.dtype), str(value.device)))
        elif isinstance(value, (list, tuple)):
            key.append((name, "list", len(value)))
        else:
            key.append((name, "value", repr(value)))
    return tuple(sorted(key))


def concat_inputs(items: list[PreparedInput]) -> PreparedInput:
    """One batch of equal-shape inputs: tensors concatenated along dim 0, lists concatenated."""
    first = items[0]
    merged: dict[str, Any] = {}
    for name, value in first.model_inputs.items():
        values = [item.model_inputs[name] for item in items]
        if isinstance(value, torch.Tensor):
            merged[name] = torch.cat(values, dim=0)
        elif isinstance(value, (list, tuple)):
            merged[name] = [element for part in values for element in part]
        else:
            merged[name] = value  # equal across the batch: part of the shape key
    ids = tuple(item.input_id for item in items)
    common = {k: v for k, v in first.meta.items() if all(item.meta.get(k) == v for item in items)}
    return PreparedInput(BATCH_ID_SEPARATOR.join(ids), merged, first.prompt_tokens, first.image_tokens, common,
                         batch_size=len(items), members=ids)


def make_batches(inputs: list[PreparedInput], batch_size: int) -> list[PreparedInput]:
    """Equal-shape groups (in order of first appearance), each cut in dataset order into batches."""
    groups: dict[tuple, list[PreparedInput]] = {}
    for item in inputs:
        groups.setdefault(shape_key(item.model_inputs), []).append(item)
    return [concat_inputs(group[start:start + batch_size])
            for group in groups.values() for start in range(0, len(group), batch_size)]


def _check_batched_forward(workload: Workload, batch: PreparedInput) -> None:
    """One forward of a full batch: the next tokens must have one row per prompt of the batch."""
    with torch.inference_mode():
        token, _ = prefill(workload.model, workload.convention, batch.model_inputs)
    if token.shape[0] != batch.batch_size:
        shapes = {k: tuple(v.shape) for k, v in batch.model_inputs.items() if isinstance(v, torch.Tensor)}
        raise InputError(
            f"profiling.batch_size={batch.batch_size}: {workload.info.get('preset')} returned logits for "
            f"{token.shape[0]} sequence(s) given a batch of {batch.batch_size} (inputs {shapes}): its forward "
            "does not batch; return logits of shape (batch, sequence, vocab), or set profiling.batch_size=1")


def batch_workload(workload: Workload, batch_size: int) -> Workload:
    """Set `workload.batches` to equal-shape batches of `batch_size` inputs and record how they were made.

    batch_size 1 leaves the workload as it is (`batches` are the inputs themselves). Raises InputError
    when no batch reaches `batch_size` (too few inputs of one shape) or a custom module does not batch.
    """
    if batch_size == 1:
        return workload
    batches = make_batches(workload.inputs, batch_size)
    full = [batch for batch in batches if batch.batch_size == batch_size]
    if not full:
        largest = max(batch.batch_size for batch in batches)
        raise InputError(
            f"profiling.batch_size={batch_size} but no {batch_size} inputs share one shape (inputs: "
            f"{len(workload.inputs)}, the largest equal-shape group: {largest}; batches are never padded): "
            "add inputs of one shape (dataset.num_pages, one page size or tile count) or lower profiling.batch_size")
    partial = [batch for batch in batches if batch.batch_size < batch_size]
    if partial:
        log.warning("profiling.batch_size=%d: %d of %d batches hold fewer inputs (%s): their shapes have too few "
                    "inputs; each timed row says its batch_size", batch_size, len(partial), len(batches),
                    ", ".join(f"{batch.input_id} ({batch.batch_size})" for batch in partial))
    if workload.family == "custom":
        _check_batched_forward(workload, full[0])
    workload.batches, workload.batch_size = batches, batch_size
    workload.info.update(batch_size=batch_size, batching=BATCHING,
                         batches=[list(batch.members) for batch in batches])
    return workload
