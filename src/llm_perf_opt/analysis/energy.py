"""Energy from an NVML timeline (passes/energy.py samples it): per window, per stage, per token.

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
  e2e/energy_j_mean        = mean over samples of the energy of [wall_start, wall_end] (prefill + decode
                             of one input, the loop's host gaps included: the board draws power through them)
  prefill/energy_j_mean    = mean energy of the prefill windows
  decode/energy_j_per_token = sum of decode energies / sum of decode tokens (new_tokens - 1 per request)
  e2e/energy_j_per_page    = with batches (a `batch_size` column) only: sum of sample energies / sum of
                             batch sizes (e2e/energy_j_mean is then the energy of one batch)
  gpu/power_w_mean         = sum of page energies / sum of page window durations (time-weighted mean)
  gpu/power_w_max, gpu/sm_clock_mhz_mean, gpu/mem_clock_mhz_mean, gpu/util_pct_mean, gpu/temp_c_max: over the
                       timeline rows inside the sample windows.
Without NVML the sampler gives one warning and no rows; every energy metric is then absent, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.integrate import trapezoid

from llm_perf_opt.schema import DECODE, E2E, PREFILL, column

DEFAULT_MIN_COUNTER_PERIODS = 20.0


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
    """Per-sample energies (energy_samples.csv), energy per stage, device-wide readings, methods used.

    `stage_energy_j`: {stage: {"mean": J per execution} (e2e = one page, prefill), decode also
    {"per_token": J}}; `device`: {quantity: value} for the `gpu` metric group (power_w_mean, ...).
    """

    per_sample: pd.DataFrame
    stage_energy_j: dict[str, dict[str, float]] = field(default_factory=dict)
    device: dict[str, float] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    counter_period_ms: float | None = None
    power_source: str | None = None


def _method_summary(methods: pd.Series) -> str | None:
    values = sorted(set(methods.dropna()))
    return None if not values else values[0] if len(values) == 1 else "mixed"


_DEVICE_READINGS = (("power_w", "power_w_max", "max"), ("sm_clock_mhz", "sm_clock_mhz_mean", "mean"),
                    ("mem_clock_mhz", "mem_clock_mhz_mean", "mean"), ("gpu_util_pct", "util_pct_mean", "mean"),
                    ("temp_c", "temp_c_max", "max"))


def _sample_windows(sample: Any) -> dict[str, tuple[float, float]]:
    """Host-clock windows of one sample's stages (module docstring): e2e, prefill, decode."""
    start, end = float(sample.wall_start_ns), float(sample.wall_end_ns)
    decode_start = end - float(getattr(sample, column(DECODE, "ms"))) * 1e6
    prefill_start = decode_start - float(getattr(sample, column(PREFILL, "ms"))) * 1e6
    return {E2E: (start, end), PREFILL: (prefill_start, decode_start), DECODE: (decode_start, end)}


def energy_per_stage(
    timeline: pd.DataFrame,
    samples: pd.DataFrame | None,
    min_counter_periods: float = DEFAULT_MIN_COUNTER_PERIODS,
) -> EnergyReport:
    """Energy per page, per prefill and per decode token from the timeline and the timed samples.

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
        batched = "batch_size" in samples.columns
        for sample in samples.itertuples(index=False):
            windows = _sample_windows(sample)
            in_windows |= (t >= windows[E2E][0]) & (t <= windows[E2E][1])
            batch = int(getattr(sample, "batch_size", 1))  # requests in the sample (profiling.batch_size)
            row = {"repeat": getattr(sample, "repeat", None), "input_index": getattr(sample, "input_index", None),
                   "window_s": (windows[E2E][1] - windows[E2E][0]) / 1e9,
                   "decode_tokens": (int(sample.new_tokens) - 1) * batch, **({"pages": batch} if batched else {})}
            for stage, (a, b) in windows.items():
                measured = energy_between(timeline, a, b, min_counter_periods) if b > a else None
                row[column(stage, "energy_j")] = measured["energy_j"] if measured else np.nan
                row[column(stage, "energy_method")] = measured["method"] if measured else None
            rows.append(row)
        per_sample = pd.DataFrame(rows)
        report.per_sample = per_sample
        report.methods = {stage: m for stage in (E2E, PREFILL, DECODE)
                          if (m := _method_summary(per_sample[column(stage, "energy_method")])) is not None}
        pages = per_sample.dropna(subset=[column(E2E, "energy_j")])
        if len(pages):
            report.stage_energy_j[E2E] = {"mean": float(pages[column(E2E, "energy_j")].mean())}
            if batched:
                report.stage_energy_j[E2E]["per_page"] = float(pages[column(E2E, "energy_j")].sum()
                                                               / pages["pages"].sum())
            report.device["power_w_mean"] = float(pages[column(E2E, "energy_j")].sum() / pages["window_s"].sum())
        prefills = per_sample[column(PREFILL, "energy_j")].dropna()
        if len(prefills):
            report.stage_energy_j[PREFILL] = {"mean": float(prefills.mean())}
        decodes = per_sample.dropna(subset=[column(DECODE, "energy_j")])
        if len(decodes) and decodes["decode_tokens"].sum() > 0:
            report.stage_energy_j[DECODE] = {
                "mean": float(decodes[column(DECODE, "energy_j")].mean()),
                "per_token": float(decodes[column(DECODE, "energy_j")].sum() / decodes["decode_tokens"].sum())}
    else:
        power = timeline["power_w"].dropna()
        if len(power):
            report.device["power_w_mean"] = float(power.mean())
    inside = timeline[in_windows]
    for source, quantity, how in _DEVICE_READINGS:
        values = inside[source].dropna()
        if len(values):
            report.device[quantity] = float(getattr(values, how)())
    return report
