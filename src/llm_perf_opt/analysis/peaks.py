"""Hardware peaks: the denominators of MFU and MBU.

Units: `peak_tflops` is 1e12 FLOP/s (a multiply-add counts as two FLOPs), `peak_bandwidth_gbps` is
1e9 bytes/s of device-memory (DRAM/HBM) bandwidth.

Every compute figure in `PEAK_TABLE` is the **dense** rate: vendor datasheets print the 2:4
structured-sparsity rate with an asterisk, and it is exactly twice the dense one (H100 SXM bf16: 989.4
dense vs 1978.9 sparse). "fp32" is the plain FP32 (CUDA-core) rate, which is what an fp32 matmul gets
under PyTorch's default `torch.get_float32_matmul_precision() == "highest"`; "tf32" is the TF32
tensor-core rate (see `matmul_dtype`). GeForce cards run fp16/bf16 tensor ops at half rate with an
fp32 accumulator, the accumulator PyTorch uses: their fp16/bf16 entries are that rate.
Keys are the exact names NVML and `torch.cuda.get_device_name()` report. docs/hardware.md lists every
entry with its source.

Resolution order (`lookup_peaks`): the config's `peak_tflops` / `peak_bandwidth_gbps` win over the
table; `hardware.name` other than "auto" picks a table key instead of the detected device name. An
unknown device without overrides gives one warning and `None`: MFU/MBU are then absent, never computed
against a made-up peak.

Calibration (`calibrate`, CUDA only) measures what this device reaches: a large GEMM
(2*M*N*K FLOPs per product) and a large device-to-device copy (2 x size bytes moved per copy: read +
write), each timed per repetition with the project's one clock (`StageClock`, CUDA events) and
summarised by the median.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llm_perf_opt.errors import InputError

DTYPES = ("bf16", "fp16", "tf32", "fp32")
_DTYPE_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "tf32": "tf32",
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
}


@dataclass(frozen=True)
class DeviceSpec:
    """One table entry: dense TFLOP/s per dtype, memory bandwidth (GB/s) and where they come from."""

    tflops: dict[str, float]
    bandwidth_gbps: float
    source: str
    note: str = ""


_HOPPER_WP = ("NVIDIA H100 Tensor Core GPU Architecture whitepaper, table 'NVIDIA H100 SXM5 / PCIe' "
              "(dense figures), https://resources.nvidia.com/en-us-tensor-core/gtc22-whitepaper-hopper")
_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h200/"
_A100_DS = ("NVIDIA A100 Tensor Core GPU datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/"
            "Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")
_ADA_WP = ("NVIDIA Ada Lovelace GPU Architecture whitepaper, Appendix A (GeForce RTX 4090), "
           "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf")
_HALVED = "datasheet prints only sparse tensor figures: dense = sparse / 2"

# fmt: off
PEAK_TABLE: dict[str, DeviceSpec] = {
    "NVIDIA H100 80GB HBM3": DeviceSpec(   # H100 SXM5
        {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}, 3352.0,
        f"{_HOPPER_WP}; {_H100_DS} (3.35 TB/s)"),
    "NVIDIA H100 PCIe": DeviceSpec(
        {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}, 2000.0,
        f"{_HOPPER_WP}; {_H100_DS} (2 TB/s)"),
    "NVIDIA H100 NVL": DeviceSpec(         # one GPU of the NVL pair, 94 GB HBM3
        {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}, 3900.0,
        f"{_H100_DS}, column 'H100 NVL' (BF16 1,671*, TF32 835*, FP32 60 TFLOPS, 3.9 TB/s)", _HALVED),
    "NVIDIA H200": DeviceSpec(             # H200 SXM: GH100 compute of the H100 SXM5, HBM3e
        {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}, 4800.0,
        f"{_H200_DS}, column 'H200 SXM' (BF16 1,979*, TF32 989*, FP32 67 TFLOPS, 4.8 TB/s); "
        f"dense values from {_HOPPER_WP}"),
    "NVIDIA H200 NVL": DeviceSpec(
        {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}, 4800.0,
        f"{_H200_DS}, column 'H200 NVL' (BF16 1,671*, TF32 835*, FP32 60 TFLOPS, 4.8 TB/s)", _HALVED),
    "NVIDIA A100-SXM4-80GB": DeviceSpec(
        {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}, 2039.0, f"{_A100_DS} (A100 80GB SXM)"),
    "NVIDIA A100-SXM4-40GB": DeviceSpec(
        {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}, 1555.0, f"{_A100_DS} (A100 40GB SXM)"),
    "NVIDIA A100-PCIE-40GB": DeviceSpec(
        {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}, 1555.0, f"{_A100_DS} (A100 40GB PCIe)"),
    "NVIDIA A100 80GB PCIe": DeviceSpec(
        {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}, 1935.0, f"{_A100_DS} (A100 80GB PCIe)"),
    "NVIDIA L40S": DeviceSpec(
        {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}, 864.0,
        "NVIDIA L40S GPU datasheet (BF16 362.05 | 733*, TF32 183 | 366*, FP32 91.6 TFLOPS, 864 GB/s), "
        "https://www.nvidia.com/en-us/data-center/l40s/"),
    "NVIDIA L4": DeviceSpec(
        {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}, 300.0,
        "NVIDIA L4 Tensor Core GPU datasheet (BF16 242*, TF32 120*, FP32 30.3 TFLOPS, 300 GB/s), "
        "https://www.nvidia.com/en-us/data-center/l4/", _HALVED),
    "NVIDIA GeForce RTX 4090": DeviceSpec(
        {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}, 1008.0, _ADA_WP,
        "fp16/bf16 with fp32 accumulate (PyTorch's); fp16 with fp16 accumulate is 330.3"),
    "NVIDIA GeForce RTX 5090": DeviceSpec(
        {"bf16": 209.5, "fp16": 209.5, "tf32": 104.8, "fp32": 104.8}, 1792.0,
        "NVIDIA RTX Blackwell GPU Architecture whitepaper, Appendix (GeForce RTX 5090), "
        "https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/nvidia-rtx-blackwell-gpu-architecture.pdf",
        "fp16/bf16 with fp32 accumulate = half the fp16-accumulate dense 419 (838 sparse); to re-verify"),
    "NVIDIA B200": DeviceSpec(
        {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0, "fp32": 75.0}, 7700.0,
        "NVIDIA HGX platform specifications, 'HGX B200' per-GPU column (FP16/BF16 4.5 PFLOPS*, "
        "TF32 2.2 PFLOPS*, FP32 75 TFLOPS, 180 GB HBM3e at 7.7 TB/s), https://www.nvidia.com/en-us/data-center/hgx/",
        f"{_HALVED}; to re-verify against the B200 datasheet"),
}
# fmt: on


@dataclass(frozen=True)
class HardwarePeaks:
    """The peaks one run is measured against. Any figure may be None (absent, not zero)."""

    name: str
    dtype: str
    peak_tflops: float | None
    peak_bandwidth_gbps: float | None
    source: str
    achievable_tflops: float | None = None  # measured by `calibrate` on this device
    achievable_bandwidth_gbps: float | None = None
    note: str = field(default="")

    @property
    def ridge_flop_per_byte(self) -> float | None:
        """Arithmetic intensity where the memory roof meets the compute roof (spec peaks)."""
        return ridge_point(self.peak_tflops, self.peak_bandwidth_gbps)

    @property
    def achievable_ridge_flop_per_byte(self) -> float | None:
        return ridge_point(self.achievable_tflops, self.achievable_bandwidth_gbps)

    def as_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["ridge_flop_per_byte"] = self.ridge_flop_per_byte
        record["achievable_ridge_flop_per_byte"] = self.achievable_ridge_flop_per_byte
        return record


def ridge_point(tflops: float | None, bandwidth_gbps: float | None) -> float | None:
    """peak FLOP/s / peak bytes/s = tflops*1e12 / (gbps*1e9), in FLOP/byte."""
    if tflops is None or not bandwidth_gbps:
        return None
    return tflops * 1e12 / (bandwidth_gbps * 1e9)


def normalize_dtype(dtype: str) -> str:
    key = str(dtype).lower()
    if key not in _DTYPE_ALIASES:
        raise InputError(f"dtype {dtype} has no peak column: use one of {', '.join(DTYPES)}")
    return _DTYPE_ALIASES[key]


def _find_spec(device_name: str) -> tuple[str, DeviceSpec] | None:
    name = device_name.strip()
    if name in PEAK_TABLE:
        return name, PEAK_TABLE[name]
    folded = {key.lower(): key for key in PEAK_TABLE}
    if name.lower() in folded:  # exact name, other case
        key = folded[name.lower()]
        return key, PEAK_TABLE[key]
    return None


def _override(overrides: Mapping[str, Any] | None, key: str) -> float | None:
    if not overrides or overrides.get(key) is None:
        return None
    value = float(overrides[key])
    if not value > 0:
        raise InputError(f"hardware.{key}={overrides[key]} must be a positive number (or null to use the table)")
    return value


def lookup_peaks(
    device_name: str, dtype: str, overrides: Mapping[str, Any] | None = None, warn_unknown: bool = True
) -> HardwarePeaks | None:
    """Peaks for `device_name` at `dtype`: config overrides win over the table; unknown -> warn once, None.

    `overrides` is the `hardware` config group (or any mapping) with optional `name` (a table key,
    "auto" = use `device_name`), `peak_tflops` and `peak_bandwidth_gbps`.
    """
    dtype_key = normalize_dtype(dtype)
    requested = (overrides or {}).get("name")
    table_name = device_name if requested in (None, "", "auto") else str(requested)
    found = _find_spec(table_name)
    if found is None and requested not in (None, "", "auto"):
        raise InputError(f"hardware.name={requested} is not in the peak table: use auto or one of "
                         f"{', '.join(PEAK_TABLE)} (or set hardware.peak_tflops / hardware.peak_bandwidth_gbps)")
    tflops_override = _override(overrides, "peak_tflops")
    bandwidth_override = _override(overrides, "peak_bandwidth_gbps")

    if found is None and tflops_override is None and bandwidth_override is None:
        if not warn_unknown:  # the caller measures the device instead
            return None
        warnings.warn(
            f"no peak figures for device '{device_name}' ({dtype_key}): MFU, MBU and the roofline's roofs are "
            "not computed. Set hardware.peak_tflops and hardware.peak_bandwidth_gbps (or hardware.name=<a key "
            "of the peak table, docs/hardware.md>) to enable them",
            stacklevel=2,
        )
        return None

    key, spec = found if found is not None else (device_name, None)
    sources = []
    if tflops_override is not None:
        sources.append("config hardware.peak_tflops")
    if bandwidth_override is not None:
        sources.append("config hardware.peak_bandwidth_gbps")
    table_tflops = spec.tflops.get(dtype_key) if spec else None
    table_bandwidth = spec.bandwidth_gbps if spec else None
    if spec and (tflops_override is None or bandwidth_override is None):
        sources.append(f"table '{key}': {spec.source}")
    peak_tflops = tflops_override if tflops_override is not None else table_tflops
    peak_bandwidth = bandwidth_override if bandwidth_override is not None else table_bandwidth
    missing = [n for n, v in (("peak_tflops", peak_tflops), ("peak_bandwidth_gbps", peak_bandwidth)) if v is None]
    if missing:
        warnings.warn(
            f"device '{device_name}' ({dtype_key}) has no {' or '.join(missing)}: the metrics that need it "
            f"({'MFU' if 'peak_tflops' in missing else 'MBU'}, roofline ridge) are absent; set hardware.{missing[0]}",
            stacklevel=2,
        )
    return HardwarePeaks(
        name=key,
        dtype=dtype_key,
        peak_tflops=peak_tflops,
        peak_bandwidth_gbps=peak_bandwidth,
        source="; ".join(sources),
        note=spec.note if spec else "",
    )


def with_calibration(
    peaks: HardwarePeaks | None, measured: Mapping[str, float] | None, device_name: str = "", dtype: str = ""
) -> HardwarePeaks | None:
    """Attach `calibrate`'s achievable peaks; with no spec peaks, a peaks record holding only those."""
    if not measured:
        return peaks
    if peaks is None:
        return HardwarePeaks(name=device_name, dtype=normalize_dtype(dtype), peak_tflops=None,
                             peak_bandwidth_gbps=None, source="calibration only (device not in the peak table)",
                             achievable_tflops=measured["achievable_tflops"],
                             achievable_bandwidth_gbps=measured["achievable_bandwidth_gbps"])
    return dataclasses.replace(peaks, achievable_tflops=measured["achievable_tflops"],
                               achievable_bandwidth_gbps=measured["achievable_bandwidth_gbps"])


def measured_peaks(device_name: str, dtype: str, measured: Mapping[str, float]) -> HardwarePeaks:
    """Peaks for a device the table lacks (a CPU, an unknown GPU): what `calibrate` measured on it, used as
    the peak (MFU = achieved / measured GEMM rate), and labelled as measured, not specified."""
    size = int(measured.get("gemm_size", 0))
    moved_mib = measured.get("copy_bytes_moved", 0.0) / 2 / 2**20
    return HardwarePeaks(
        name=device_name, dtype=normalize_dtype(dtype), peak_tflops=measured["achievable_tflops"],
        peak_bandwidth_gbps=measured["achievable_bandwidth_gbps"],
        source=(f"measured on this device (no spec peak for '{device_name}' in the table): {size}x{size} GEMM "
                f"in {normalize_dtype(dtype)}, {moved_mib:.0f} MiB copy"),
        achievable_tflops=measured["achievable_tflops"],
        achievable_bandwidth_gbps=measured["achievable_bandwidth_gbps"],
    )
