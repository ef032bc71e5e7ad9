"""How a profile run names itself in MLflow: its run name, tags and params, from the record's data.

The pipeline (runners/profile.py) and `log-run` (runners/log_run.py) both use these, so a run logged
live and a run directory uploaded later look the same in the tracking store.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_perf_opt.record import WorkloadInfo
from llm_perf_opt.schema import KIND_TAG, RUN_UID_TAG
from llm_perf_opt.tracking.mlflow_tracker import flatten


def device_type(workload: WorkloadInfo) -> str:
    return str(workload.device).split(":", 1)[0]


def run_name(workload: WorkloadInfo) -> str:
    """family-preset[-image mode]-dtype-device type[-bN], e.g. deepseek_ocr2-tiny-global768-fp32-cpu (-b4: batches
    of 4 pages)."""
    batch = getattr(workload, "batch_size", None)
    parts = (workload.family, workload.preset, getattr(workload, "image_mode", None), workload.dtype,
             device_type(workload), f"b{batch}" if batch and batch > 1 else None)
    return "-".join(str(getattr(part, "value", part)) for part in parts if part)


def run_tags(workload: WorkloadInfo, env: Mapping[str, Any], run_dir: str | Path, run_uid: str) -> dict[str, str]:
    """The tags users filter profile runs on."""
    tags = {KIND_TAG: "profile", "model": workload.family, "preset": workload.preset,
            "device": env.get("device_name"), "dtype": workload.dtype, "torch": env.get("torch"),
            "driver_version": env.get("driver_version"), "git_sha": env.get("git_sha"), "run_dir": str(run_dir),
            RUN_UID_TAG: run_uid}
    return {key: str(value) for key, value in tags.items() if value is not None}


MEASURED = {"compile_s"}  # workload fields that are measurements (metric run/compile_s), not settings


def run_params(config: Mapping[str, Any], workload: WorkloadInfo) -> dict[str, Any]:
    """The resolved config flattened with dots, plus `workload.*` (every scalar of what ran)."""
    params = flatten(config)
    scalars = workload.model_dump(mode="json")
    params.update({f"workload.{k}": v for k, v in scalars.items()
                   if not isinstance(v, (dict, list)) and k not in MEASURED})
    params["workload.num_inputs"] = len(workload.inputs)
    return params
