"""Power, energy and clocks from NVML, sampled by a background thread alongside the timed pass.

Timeline (one row per sample, `nvml_timeline.csv`): t_ns (time.perf_counter_ns, the host clock of
the timed pass), power_w, energy_mj (the board's total-energy counter, nvmlDeviceGetTotalEnergyConsumption,
NaN where unsupported), sm_clock_mhz, mem_clock_mhz, gpu_util_pct, temp_c.
Power is the instantaneous reading (field NVML_FI_DEV_POWER_INSTANT) where the driver has it: on
Ampere and newer, nvmlDeviceGetPowerUsage returns a 1-second average, which smears short windows. The
sampler records which one it used (`power_source`: "instant" | "average").
Energy is computed from the timeline by llm_perf_opt.analysis.energy.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

TIMELINE_COLUMNS = ["t_ns", "power_w", "energy_mj", "sm_clock_mhz", "mem_clock_mhz", "gpu_util_pct", "temp_c"]
_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def empty_timeline() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype="float64") for column in TIMELINE_COLUMNS})


class NvmlSampler:
    """Context manager: samples one GPU every `interval_ms` on a background thread.

    `device_index` is NVML's index (equal to torch's when CUDA_VISIBLE_DEVICES is unset). After the
    block, `timeline` holds the rows; `available` is False (and one warning was given) without NVML.
    """

    def __init__(self, device_index: int = 0, interval_ms: float = 20.0):
        if not interval_ms > 0:
            raise ValueError("interval_ms must be > 0")
        self.device_index = int(device_index)
        self.interval_s = float(interval_ms) / 1e3
        self.available = False
        self.power_source: str | None = None
        self.has_energy_counter = False
        self.device_name: str | None = None
        self.error: str | None = None
        self._rows: list[tuple] = []
        self._readers: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        self._timeline: pd.DataFrame | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def _probe(self, nvml, handle) -> None:
        def instant_power() -> float:
            value = nvml.nvmlDeviceGetFieldValues(handle, [nvml.NVML_FI_DEV_POWER_INSTANT])[0]
            if value.nvmlReturn != nvml.NVML_SUCCESS:
                raise nvml.NVMLError(value.nvmlReturn)
            return getattr(value.value, _VALUE_FIELDS[int(value.valueType)]) / 1e3  # mW -> W

        candidates = {
            "power_w": [("instant", instant_power),
                        ("average", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1e3)],
            "energy_mj": [("counter", lambda: float(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))],
            "sm_clock_mhz": [("", lambda: float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)))],
            "mem_clock_mhz": [("", lambda: float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)))],
            "gpu_util_pct": [("", lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))],
            "temp_c": [("", lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))],
        }
        unsupported = []
        for column, options in candidates.items():
            for label, reader in options:
                try:
                    reader()
                except Exception:  # NVMLError_NotSupported & co, or a binding without the call/field
                    continue
                self._readers[column] = reader
                if column == "power_w":
                    self.power_source = label
                break
            else:
                unsupported.append(column)
        self.has_energy_counter = "energy_mj" in self._readers
        missing = [c for c in unsupported if c != "energy_mj"]  # no counter: power integration covers it
        if missing:
            warnings.warn(f"NVML on device {self.device_index} does not report {', '.join(missing)}: "
                          "those columns (and what derives from them) are absent", stacklevel=3)

    def __enter__(self) -> NvmlSampler:
        try:
            import pynvml as nvml

            nvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver not loaded, ...
            warnings.warn(f"NVML unavailable ({type(exc).__name__}: {exc}): no power, energy or clock "
                          "metrics for this run", stacklevel=2)
            return self
        self._nvml = nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(self.device_index)
            name = nvml.nvmlDeviceGetName(handle)
            self.device_name = name.decode() if isinstance(name, bytes) else str(name)
            self._probe(nvml, handle)
        except Exception as exc:
            nvml.nvmlShutdown()
            self._nvml = None
            warnings.warn(f"NVML cannot read device {self.device_index} ({type(exc).__name__}: {exc}): "
                          "no power, energy or clock metrics for this run", stacklevel=2)
            return self
        self.available = True
        self._sample()  # a first row before the measured work, so every window inside is covered
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    # -- sampling -------------------------------------------------------------------------------
    def _sample(self) -> None:
        t_ns = time.perf_counter_ns()
        values = {column: reader() for column, reader in self._readers.items()}
        self._rows.append((t_ns, *(values.get(c, np.nan) for c in TIMELINE_COLUMNS[1:])))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception as exc:  # keep what was sampled; say why it stopped (on exit)
                self.error = f"{type(exc).__name__}: {exc}"
                return

    def __exit__(self, *exc_info) -> None:
        if not self.available:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.error is None:
                self._sample()  # a last row after the measured work
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._nvml.nvmlShutdown()
        if self.error is not None:
            warnings.warn(f"NVML sampling stopped early after {len(self._rows)} rows ({self.error}): windows "
                          "past the last row get no energy", stacklevel=2)

    @property
    def timeline(self) -> pd.DataFrame:
        """The samples so far, one row each (TIMELINE_COLUMNS); empty without NVML."""
        if not self._rows:
            return empty_timeline()
        frame = pd.DataFrame(list(self._rows), columns=TIMELINE_COLUMNS)
        frame["t_ns"] = frame["t_ns"].astype("int64")
        frame.attrs.update(power_source=self.power_source, device_name=self.device_name,
                           interval_ms=self.interval_s * 1e3)
        return frame
