"""NVML sampler (with a fake pynvml), energy maths (counter delta, power trapezoid), stage attribution,
and the energy metric names of the run record."""

from __future__ import annotations

import sys
import time
import types
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from llm_perf_opt.analysis.energy import counter_update_period_ms, energy_between, energy_per_stage
from llm_perf_opt.assembly import RunParts, build_record
from llm_perf_opt.passes.energy import TIMELINE_COLUMNS, NvmlSampler
from llm_perf_opt.record import RunInfo, WorkloadInfo
from llm_perf_opt.schema import StageTree

MS = 1_000_000  # ns


class FakeNvmlError(Exception):
    pass


def fake_nvml(power_w: float = 250.0, instant: bool = True, counter: bool = True) -> types.ModuleType:
    """A pynvml stand-in: constant power; the energy counter integrates it since nvmlInit."""
    nvml = types.ModuleType("pynvml")
    nvml.NVML_SUCCESS, nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM = 0, 1, 2
    nvml.NVML_TEMPERATURE_GPU, nvml.NVML_FI_DEV_POWER_INSTANT = 0, 186
    nvml.NVMLError = FakeNvmlError
    nvml.calls = {"init": 0, "shutdown": 0}

    def init():
        nvml.calls["init"] += 1
        nvml.start_ns = time.perf_counter_ns()

    def field_values(handle, ids):
        if not instant:
            raise FakeNvmlError("field not supported")
        return [types.SimpleNamespace(nvmlReturn=0, valueType=1, value=types.SimpleNamespace(uiVal=int(power_w * 1e3)))]

    def energy(handle):
        if not counter:
            raise FakeNvmlError("not supported")
        return int(power_w * (time.perf_counter_ns() - nvml.start_ns) / 1e6)  # W x ms = mJ

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: nvml.calls.__setitem__("shutdown", nvml.calls["shutdown"] + 1)
    nvml.nvmlDeviceGetHandleByIndex = lambda index: ("handle", index)
    nvml.nvmlDeviceGetName = lambda handle: b"NVIDIA Fake"
    nvml.nvmlDeviceGetFieldValues = field_values
    nvml.nvmlDeviceGetPowerUsage = lambda handle: int(power_w * 1e3)  # mW
    nvml.nvmlDeviceGetTotalEnergyConsumption = energy
    nvml.nvmlDeviceGetClockInfo = lambda handle, clock: {1: 1980, 2: 2619}[clock]
    nvml.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=97, memory=40)
    nvml.nvmlDeviceGetTemperature = lambda handle, sensor: 61
    return nvml


def test_sampler_thread_records_a_timeline(monkeypatch):
    nvml = fake_nvml(power_w=250.0)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with NvmlSampler(device_index=0, interval_ms=5) as sampler:
            time.sleep(0.15)
    timeline = sampler.timeline
    assert sampler.available and sampler.power_source == "instant" and sampler.has_energy_counter
    assert sampler.device_name == "NVIDIA Fake" and not sampler._thread.is_alive()
    assert nvml.calls == {"init": 1, "shutdown": 1}
    assert list(timeline.columns) == TIMELINE_COLUMNS
    assert len(timeline) >= 10  # 150 ms at 5 ms, plus the rows taken on entry and exit
    assert timeline["t_ns"].is_monotonic_increasing
    assert (timeline["power_w"] == 250.0).all() and (timeline["sm_clock_mhz"] == 1980).all()
    assert (timeline["gpu_util_pct"] == 97).all() and (timeline["temp_c"] == 61).all()
    assert timeline["energy_mj"].is_monotonic_increasing
    # known power x known time = known energy, by either method
    t0, t1 = timeline["t_ns"].iloc[0], timeline["t_ns"].iloc[-1]
    measured = energy_between(timeline, t0, t1)
    assert measured["energy_j"] == pytest.approx(250.0 * (t1 - t0) / 1e9, rel=2e-2)


def test_sampler_falls_back_to_average_power_and_no_counter(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(power_w=100.0, instant=False, counter=False))
    with NvmlSampler(interval_ms=5) as sampler:
        time.sleep(0.03)
    timeline = sampler.timeline
    assert sampler.power_source == "average" and not sampler.has_energy_counter
    assert timeline["energy_mj"].isna().all() and (timeline["power_w"] == 100.0).all()
    t0, t1 = timeline["t_ns"].iloc[0], timeline["t_ns"].iloc[-1]
    assert energy_between(timeline, t0, t1) == {"energy_j": pytest.approx(100.0 * (t1 - t0) / 1e9, rel=1e-9),
                                                "method": "power_trapezoid"}


def test_without_nvml_one_warning_and_no_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.warns(UserWarning, match="NVML unavailable") as caught:
        with NvmlSampler(interval_ms=5) as sampler:
            time.sleep(0.01)
    assert len(caught) == 1
    assert not sampler.available and sampler.timeline.empty
    assert list(sampler.timeline.columns) == TIMELINE_COLUMNS
    report = energy_per_stage(sampler.timeline, pd.DataFrame({"wall_start_ns": [0], "wall_end_ns": [1],
                                                                "prefill_ms": [0.0], "decode_ms": [0.0],
                                                                "new_tokens": [1]}))
    # absent, not zeros
    assert report.stage_energy_j == {} and report.device == {} and report.methods == {}
    assert report.per_sample.empty
    metrics = _record_of(report).metrics
    assert not [k for k in metrics if "energy" in k or k.startswith("gpu/")]


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_nvml_works(), reason="this machine has NVML")
def test_real_pynvml_without_a_driver_warns_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with NvmlSampler() as sampler:
            pass
    assert len(caught) == 1 and "NVML unavailable" in str(caught[0].message)
    assert sampler.timeline.empty


# -- energy maths on synthetic timelines ------------------------------------------------------------
def timeline_of(power_w, times_ns, energy_mj=None) -> pd.DataFrame:
    frame = pd.DataFrame({"t_ns": np.asarray(times_ns, dtype="int64"), "power_w": power_w})
    frame["energy_mj"] = np.nan if energy_mj is None else energy_mj
    for column in ("sm_clock_mhz", "mem_clock_mhz", "gpu_util_pct", "temp_c"):
        frame[column] = 1.0
    return frame[TIMELINE_COLUMNS]


def test_trapezoid_integrates_a_power_ramp_exactly():
    times = np.arange(0, 2001) * MS  # 1 ms samples over 2 s
    seconds = times / 1e9
    timeline = timeline_of(100.0 + 50.0 * seconds, times)
    t0, t1 = 0.25e9 + 0.4 * MS, 1.5e9  # a window edge between two samples
    a, b = t0 / 1e9, t1 / 1e9
    measured = energy_between(timeline, t0, t1)
    assert measured["method"] == "power_trapezoid"
    assert measured["energy_j"] == pytest.approx(100.0 * (b - a) + 25.0 * (b**2 - a**2), rel=1e-12)


def stepped_counter_timeline(power_w=200.0, update_ms=100, sample_ms=10, total_ms=5000) -> pd.DataFrame:
    """The counter holds power x (last update time) and moves every `update_ms`; power is sampled too."""
    times = np.arange(0, total_ms + 1, sample_ms) * MS
    updated_at_ms = (times // (update_ms * MS)) * update_ms
    return timeline_of(power_w, times, energy_mj=power_w * updated_at_ms)


def test_counter_update_period_is_read_off_the_timeline():
    assert counter_update_period_ms(stepped_counter_timeline(update_ms=100)) == pytest.approx(100.0)
    assert counter_update_period_ms(timeline_of(1.0, [0, MS, 2 * MS])) is None  # no counter


def test_counter_delta_for_long_windows_trapezoid_for_short_ones():
    timeline = stepped_counter_timeline(power_w=200.0, update_ms=100)
    long = energy_between(timeline, 1000 * MS, 3500 * MS)  # 2.5 s >= 20 x 100 ms
    assert long == {"energy_j": pytest.approx(200.0 * 2.5, rel=1e-12), "method": "counter"}
    short = energy_between(timeline, 1000 * MS, 1034 * MS)  # 34 ms: the counter may not even move
    assert short == {"energy_j": pytest.approx(200.0 * 0.034, rel=1e-12), "method": "power_trapezoid"}
    # the threshold is a parameter: 2.5 s is less than 30 updates of 100 ms
    assert energy_between(timeline, 1000 * MS, 3500 * MS, min_counter_periods=30)["method"] == "power_trapezoid"


def test_windows_outside_the_timeline_get_no_energy():
    timeline = stepped_counter_timeline(total_ms=1000)
    assert energy_between(timeline, 500 * MS, 1200 * MS) is None
    assert energy_between(timeline.iloc[:0], 0, 1) is None
    with pytest.raises(ValueError):
        energy_between(timeline, 20 * MS, 10 * MS)


def test_energy_per_stage_attributes_prefill_and_decode_from_the_closing_sync():
    times = np.arange(0, 3001) * MS
    timeline = timeline_of(100.0 + 50.0 * times / 1e9, times)  # linear: the trapezoid is exact
    timeline["sm_clock_mhz"] = 1500.0 + (times >= 2000 * MS) * 400.0  # only the idle tail clocks higher

    def ramp_j(a_ns: float, b_ns: float) -> float:
        a, b = a_ns / 1e9, b_ns / 1e9
        return 100.0 * (b - a) + 25.0 * (b**2 - a**2)

    samples = pd.DataFrame({"repeat": [0, 1], "input_index": [0, 0],
                            "wall_start_ns": [100 * MS, 600 * MS], "wall_end_ns": [500 * MS, 1100 * MS],
                            "prefill_ms": [150.0, 200.0], "decode_ms": [240.0, 280.0], "new_tokens": [5, 8]})
    report = energy_per_stage(timeline, samples)
    # Windows anchored at the closing sync: decode = [end - decode_ms, end], prefill just before it.
    pages = [ramp_j(100 * MS, 500 * MS), ramp_j(600 * MS, 1100 * MS)]
    decodes = [ramp_j(260 * MS, 500 * MS), ramp_j(820 * MS, 1100 * MS)]
    prefills = [ramp_j(110 * MS, 260 * MS), ramp_j(620 * MS, 820 * MS)]
    per = report.per_sample  # energy_samples.csv, columns column(stage, "energy_j")
    assert per["e2e_energy_j"].tolist() == pytest.approx(pages)
    assert per["decode_energy_j"].tolist() == pytest.approx(decodes)
    assert per["prefill_energy_j"].tolist() == pytest.approx(prefills)
    assert per["decode_tokens"].tolist() == [4, 7]
    assert report.stage_energy_j["e2e"] == {"mean": pytest.approx(sum(pages) / 2)}
    assert report.stage_energy_j["prefill"] == {"mean": pytest.approx(sum(prefills) / 2)}
    assert report.stage_energy_j["decode"] == {"mean": pytest.approx(sum(decodes) / 2),
                                               "per_token": pytest.approx(sum(decodes) / (4 + 7))}
    assert report.methods == {"e2e": "power_trapezoid", "prefill": "power_trapezoid", "decode": "power_trapezoid"}
    # The metric names the run record logs (<stage>/energy_j_<kind>, gpu/<quantity>).
    metrics = _record_of(report).metrics
    assert metrics["e2e/energy_j_mean"] == pytest.approx(sum(pages) / 2)
    assert metrics["prefill/energy_j_mean"] == pytest.approx(sum(prefills) / 2)
    assert metrics["decode/energy_j_mean"] == pytest.approx(sum(decodes) / 2)
    assert metrics["decode/energy_j_per_token"] == pytest.approx(sum(decodes) / (4 + 7))
    assert metrics["gpu/power_w_mean"] == pytest.approx(sum(pages) / 0.9)  # time-weighted over 0.4 s + 0.5 s
    assert metrics["gpu/power_w_max"] == pytest.approx(100.0 + 50.0 * 1.1)  # last row inside a window
    assert metrics["gpu/sm_clock_mhz_mean"] == 1500.0  # rows outside the sample windows are not averaged
    assert not [k for k in metrics if k.startswith(("energy/", "power/", "clock/"))], "the old spelling is gone"


def test_energy_per_stage_switches_to_the_counter_for_long_windows():
    """Stepped counter (100 ms updates) at constant power: a 2.5 s page by counter, its 40 ms prefill by power."""
    timeline = stepped_counter_timeline(power_w=200.0, update_ms=100, total_ms=5000)
    samples = pd.DataFrame({"wall_start_ns": [1000 * MS], "wall_end_ns": [3500 * MS], "prefill_ms": [40.0],
                            "decode_ms": [2400.0], "new_tokens": [9]})
    report = energy_per_stage(timeline, samples)
    assert report.counter_period_ms == pytest.approx(100.0)
    assert report.methods == {"e2e": "counter", "prefill": "power_trapezoid", "decode": "counter"}
    assert report.stage_energy_j["e2e"]["mean"] == pytest.approx(200.0 * 2.5, rel=1e-12)
    assert report.stage_energy_j["prefill"]["mean"] == pytest.approx(200.0 * 0.040, rel=1e-12)
    assert report.stage_energy_j["decode"]["per_token"] == pytest.approx(200.0 * 2.4 / 8, rel=1e-12)
    record = _record_of(report)
    assert record.energy.methods == report.methods and record.energy.counter_period_ms == pytest.approx(100.0)


def _record_of(report):
    """The run record holding only this energy report (no samples, no costs)."""
    workload = WorkloadInfo(family="test", dtype="bf16", device="cuda", new_tokens=5, warmup=0, repeats=2, inputs=[])
    return build_record(RunParts(tree=StageTree.from_paths([]), run=RunInfo(
        run_dir="run", run_uid="test-run", started_at="t0"),
                                 workload=workload, env={}, energy=report))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_sampler_on_a_busy_gpu():
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    with NvmlSampler(torch.cuda.current_device(), interval_ms=10) as sampler:
        start = time.perf_counter_ns()
        for _ in range(200):
            a @ a
        torch.cuda.synchronize()
        end = time.perf_counter_ns()
    timeline = sampler.timeline
    assert sampler.available and len(timeline) > 3
    assert (timeline["power_w"] > 0).all()
    measured = energy_between(timeline, start, end)
    assert measured is not None and measured["energy_j"] > 0
