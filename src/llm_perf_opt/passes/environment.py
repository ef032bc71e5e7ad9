"""What the numbers were measured on: device, driver, library versions, code revision."""

from __future__ import annotations

import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch


def _git_sha(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _git_dirty(repo: Path) -> bool | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def nvml_details(device_index: int) -> dict[str, Any]:
    """Driver and board details from NVML; empty (with one warning) when NVML is not usable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises its own NVMLError subclasses or ImportError
        warnings.warn(f"NVML unavailable ({exc}): driver version and power limit are not recorded", stacklevel=2)
        return {}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        name = pynvml.nvmlDeviceGetName(handle)
        details = {
            "nvml_device_name": name.decode() if isinstance(name, bytes) else name,
            "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
            "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0,
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "max_mem_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        }
    finally:
        pynvml.nvmlShutdown()
    return details


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) ..."), not just its architecture: Linux's
    /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine()


def capture_environment(device: torch.device, project_root: Path, workload_info: dict[str, Any]) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "device_type": device.type,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_arch": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "git_sha": _git_sha(project_root),
        "git_dirty": _git_dirty(project_root),
        "argv": sys.argv,
    }
    for key in ("dtype", "attn_implementation", "experts_implementation", "moe_routing"):
        env[key] = workload_info.get(key)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        env.update(
            device_name=torch.cuda.get_device_name(index),
            device_index=index,
            device_uuid=f"GPU-{props.uuid}" if getattr(props, "uuid", None) else None,  # as nvidia-smi -L prints it
            device_memory_gib=round(props.total_memory / 2**30, 2),
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
        env.update(nvml_details(index))
    else:
        env["device_name"] = env["cpu"]
    return env
