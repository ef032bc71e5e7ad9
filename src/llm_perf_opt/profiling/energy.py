"""Power, energy and clocks from NVML, sampled by a background thread alongside the timed pass.

Timeline (one row per sample, `nvml_timeline.csv`): t_ns (time.perf_counter_ns, the host clock of
the timed pass), power_w, energy_mj (the board's total-energy counter, nvmlDeviceGetTotalEnergyConsumption,
NaN where unsupported), sm_clock_mhz, mem_clock_mhz, gpu_util_pct, temp_c.
Power is the instantaneous reading (field NVML_FI_DEV_POWER_INSTANT) where the driver has it: on
Ampere and newer, nvmlDeviceGetPowerUsage returns a 1-second average, which smears short windows. The
sampler records which one it used (`power_source`: "instant" | "average").

Energy over a window [t0, t1] (`energy_between`):
- "counter": counter(t1) - counter(t0), each read by linear interpolation between the samples at which
  the counter changed. The counter moves in steps (on an H200 it did not move over a 34 ms window), so
  each end is uncertain by up to one update period P; the counter is used only when the window is at
  least `min_counter_periods` (default 20) x P long, i.e. a worst-case error of 2/20 = 10 %, typically
  far less. P is read off the timeline (median time between counter changes).
- "power_trapezoid": integral of sampled power over time (trapezoid rule on the samples inside the
  window plus power interpolated at t0 and t1). Used for shorter windows or without a counter.
A window not covered by the timeline gives None: energy is never extrapolated.

Attribution to stages (`energy_per_stage`): each timed sample carries its host wall-clock window
(wall_start_ns, wall_end_ns: perf_counter_ns at the two device synchronisations that bracket it). The
sample ends when its last decode step ends on the device, so its decode ran over
[wall_end - decode_ms, wall_end] and its prefill over [wall_end - decode_ms - prefill_ms, wall_end - decode_ms]
(device times from the CUDA events, anchored at the closing synchronisation). Then
  energy/j_per_page  = mean over samples of the energy of [wall_start, wall_end] (prefill + decode of
                       one input, the loop's host gaps included: the board draws power through them)
  energy/j_per_token = sum of decode energies / sum of decode tokens (new_tokens - 1 per sample)
  power/w_mean       = sum of page energies / sum of page window durations (time-weighted mean)
  power/w_max, clock/sm_mhz_mean, clock/mem_mhz_mean, gpu/util_pct_mean, gpu/temp_c_max: over the
                       timeline rows inside the sample windows.
Without NVML the sampler gives one warning and no rows; every energy metric is then absent, never 0.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.integrate import trapezoid

TIMELINE_COLUMNS = ["t_ns", "power_w", "energy_mj", "sm_clock_mhz", "mem_clock_mhz", "gpu_util_pct", "temp_c"]
DEFAULT_MIN_COUNTER_PERIODS = 20.0
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


# -- energy maths -------------------------------------------------------------------------------
def _counter_steps(timeline: pd.DataFrame) -> pd.DataFrame:
    """Rows at which the energy counter took a new value (the first row included)."""
    rows = timeline[["t_ns", "energy_mj"]].dropna()
    return rows[rows["energy_mj"].ne(rows["energy_mj"].shift())]


def counter_update_period_ms(timeline: pd.DataFrame) -> float | None:
    """Median time between counter changes (an upper bound when sampling is slower than the counter)."""
    if "energy_mj" not in timeline or timeline["energy_mj"].isna().all():
        return None
    steps = _counter_steps(timeline)
    if len(steps) < 3:  # need two intervals between changes to call it a period
        return None
    return float(np.median(np.diff(steps["t_ns"].to_numpy(dtype=float)))) / 1e6


def energy_between(
    timeline: pd.DataFrame,
    t0_ns: float,
    t1_ns: float,
    min_counter_periods: float = DEFAULT_MIN_COUNTER_PERIODS,
) -> dict[str, Any] | None:
    """Energy (J) drawn in [t0_ns, t1_ns] (perf_counter_ns), by counter delta or power integration.

    Returns {"energy_j", "method": "counter" | "power_trapezoid"}, or None when the timeline does not
    cover the window (or has no power readings).
    """
    if t1_ns < t0_ns:
        raise ValueError("energy window ends before it starts")
    if timeline.empty or t0_ns < timeline["t_ns"].iloc[0] or t1_ns > timeline["t_ns"].iloc[-1]:
        return None
    period_ms = counter_update_period_ms(timeline)
    if period_ms is not None and (t1_ns - t0_ns) / 1e6 >= min_counter_periods * period_ms:
        steps = _counter_steps(timeline)
        times = steps["t_ns"].to_numpy(dtype=float)
        counter = steps["energy_mj"].to_numpy(dtype=float)
        delta_mj = np.interp(t1_ns, times, counter) - np.interp(t0_ns, times, counter)
        return {"energy_j": float(delta_mj) / 1e3, "method": "counter"}
    rows = timeline[["t_ns", "power_w"]].dropna()
    if rows.empty:
        return None
    times = rows["t_ns"].to_numpy(dtype=float)
    power = rows["power_w"].to_numpy(dtype=float)
    inside = (times > t0_ns) & (times < t1_ns)
    grid = np.concatenate([[t0_ns], times[inside], [t1_ns]])
    return {"energy_j": float(trapezoid(np.interp(grid, times, power), grid / 1e9)), "method": "power_trapezoid"}


@dataclass
class EnergyReport:
    """Per-sample energies, the flat metrics, and which method produced each stage's numbers."""

    per_sample: pd.DataFrame
    metrics: dict[str, float] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    counter_period_ms: float | None = None
    power_source: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {"methods": self.methods, "counter_period_ms": self.counter_period_ms,
                "power_source": self.power_source, "metrics": self.metrics}


def _method_summary(methods: pd.Series) -> str | None:
    values = sorted(set(methods.dropna()))
    return None if not values else values[0] if len(values) == 1 else "mixed"


def energy_per_stage(
    timeline: pd.DataFrame,
    samples: pd.DataFrame | None,
    min_counter_periods: float = DEFAULT_MIN_COUNTER_PERIODS,
) -> EnergyReport:
    """Energy per page and per decode token from the timeline and the timed samples (module docstring).

    `samples` needs wall_start_ns, wall_end_ns, prefill_ms, decode_ms and new_tokens (samples.csv).
    """
    report = EnergyReport(per_sample=pd.DataFrame(), power_source=timeline.attrs.get("power_source"))
    if timeline.empty:
        return report
    report.counter_period_ms = counter_update_period_ms(timeline)
    t = timeline["t_ns"].to_numpy(dtype=float)
    in_windows = np.ones(len(timeline), dtype=bool)
    if samples is not None and len(samples):
        rows = []
        in_windows[:] = False
        for sample in samples.itertuples(index=False):
            start, end = float(sample.wall_start_ns), float(sample.wall_end_ns)
            decode_start = end - float(sample.decode_ms) * 1e6
            prefill_start = decode_start - float(sample.prefill_ms) * 1e6
            in_windows |= (t >= start) & (t <= end)
            row = {"repeat": getattr(sample, "repeat", None), "input_index": getattr(sample, "input_index", None),
                   "window_s": (end - start) / 1e9, "decode_tokens": int(sample.new_tokens) - 1}
            for stage, (a, b) in {"page": (start, end), "prefill": (prefill_start, decode_start),
                                  "decode": (decode_start, end)}.items():
                measured = energy_between(timeline, a, b, min_counter_periods) if b > a else None
                row[f"{stage}_energy_j"] = measured["energy_j"] if measured else np.nan
                row[f"{stage}_method"] = measured["method"] if measured else None
            rows.append(row)
        per_sample = pd.DataFrame(rows)
        report.per_sample = per_sample
        report.methods = {stage: m for stage in ("page", "prefill", "decode")
                          if (m := _method_summary(per_sample[f"{stage}_method"])) is not None}
        pages = per_sample.dropna(subset=["page_energy_j"])
        if len(pages):
            report.metrics["energy/j_per_page"] = float(pages["page_energy_j"].mean())
            report.metrics["power/w_mean"] = float(pages["page_energy_j"].sum() / pages["window_s"].sum())
        prefills = per_sample["prefill_energy_j"].dropna()
        if len(prefills):
            report.metrics["energy/prefill_j_mean"] = float(prefills.mean())
        decodes = per_sample.dropna(subset=["decode_energy_j"])
        if len(decodes) and decodes["decode_tokens"].sum() > 0:
            report.metrics["energy/j_per_token"] = float(decodes["decode_energy_j"].sum()
                                                         / decodes["decode_tokens"].sum())
    else:
        power = timeline["power_w"].dropna()
        if len(power):
            report.metrics["power/w_mean"] = float(power.mean())
    inside = timeline[in_windows]
    for column, name, how in (("power_w", "power/w_max", "max"), ("sm_clock_mhz", "clock/sm_mhz_mean", "mean"),
                              ("mem_clock_mhz", "clock/mem_mhz_mean", "mean"),
                              ("gpu_util_pct", "gpu/util_pct_mean", "mean"), ("temp_c", "gpu/temp_c_max", "max")):
        values = inside[column].dropna()
        if len(values):
            report.metrics[name] = float(getattr(values, how)())
    return report
