"""The stage schema: one spelling per stage, nesting from the stage map, and the key functions' round trip."""

from __future__ import annotations

import pytest

from llm_perf_opt.errors import InputError
from llm_perf_opt.schema import StageTree, column, metric_key, parse_metric_key, stage_key, tag_key


def test_deepseek_stage_map_gives_the_documented_tree():
    tree = StageTree.from_paths([("vision", "sam"), ("vision", "encoder"), ("vision", "projector")])
    assert [(s.key, s.parent, s.kind) for s in tree] == [
        ("e2e", None, "measured"), ("prefill", "e2e", "measured"), ("vision", "prefill", "sum_of_children"),
        ("vision_sam", "vision", "measured"), ("vision_encoder", "vision", "measured"),
        ("vision_projector", "vision", "measured"), ("decode", "e2e", "measured")]
    assert [s.key for s in tree.sub_stages()] == ["vision_sam", "vision_encoder", "vision_projector"]
    assert tree.ancestors("vision_sam") == ["vision", "prefill", "e2e"]
    assert tree.get("decode").time_quantity == "tpot_ms" and tree.get("decode").cost_prefix == "step_"


def test_deeper_groups_sum_bottom_up():
    tree = StageTree.from_paths([("a", "b", "c"), ("a", "b", "d"), ("a", "e")])
    assert [s.key for s in tree.groups()] == ["a", "a_b"]
    assert [s.key for s in tree.bottom_up_groups()] == ["a_b", "a"]  # a's child a_b is summed first
    assert tree.get("a_b_c").parent == "a_b" and tree.get("a_e").parent == "a"


@pytest.mark.parametrize(("paths", "message"), [
    ([("prefill",)], "reserved"),
    ([("vision", "sam"), ("vision_sam",)], "both become stage 'vision_sam'"),
    ([("vision",), ("vision", "sam")], "both a module and a group"),
    ([("vision", "sam-1")], "letters, digits"),
])
def test_bad_stage_maps_are_one_line_input_errors(paths, message):
    with pytest.raises(InputError, match=message) as caught:
        StageTree.from_paths(paths)
    assert "\n" not in str(caught.value)


def test_every_name_of_a_stage_is_made_from_its_key():
    key = stage_key(("vision", "sam"))
    assert key == "vision_sam"
    assert metric_key(key, "ms", "p50") == "vision_sam/ms_p50"
    assert metric_key(key, "mfu") == "vision_sam/mfu"
    assert column(key, "ms") == "vision_sam_ms"
    assert tag_key(key, "bound") == "vision_sam/bound"


@pytest.mark.parametrize(("stage", "quantity", "stat"), [
    ("vision_sam", "ms", "p50"), ("decode", "tpot_ms", "p99"), ("decode", "step_flops", None),
    ("e2e", "energy_j", "mean"), ("prefill", "peak_mem_mib", "max"), ("gpu", "power_w", "max"),
    ("decode", "energy_j_per_token", None),
])
def test_metric_keys_parse_back(stage, quantity, stat):
    assert parse_metric_key(metric_key(stage, quantity, stat)) == (stage, quantity, stat)


def test_a_key_ending_in_a_statistic_is_that_statistic():
    # energy per page is the mean of the per-sample energies, the device's max power a max: one reading each
    assert parse_metric_key("e2e/energy_j_mean") == ("e2e", "energy_j", "mean")
    assert parse_metric_key("gpu/power_w_max") == ("gpu", "power_w", "max")


def test_a_name_without_a_group_is_not_a_metric_key():
    with pytest.raises(ValueError, match="not a stage metric key"):
        parse_metric_key("prefill_ms")
