"""The memory sampler: the real no-driver path, GPU arithmetic on a fake NVML, the
ring buffer, marker deltas and the monitor command."""

from __future__ import annotations

import json
import os
import sys
import types
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from cli import main as cli
from cli import render
from core import monitor
from core.errors import SettingsError
from core.monitor import GpuSample, History, HostSample, Marker, Sample, Sampler

GIB, MIB = 2**30, 2**20


def _nvml_works() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


class FakeNvml:
    """nvidia-ml-py's surface as the sampler uses it, with two GPUs.

    GPU 0 (a new driver) answers everything; GPU 1 lacks the power sensor and the
    newer temperature call, and returns its name as bytes.
    """

    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(f"NVML error {value}")
            self.value = value

    def __init__(self, pid: int, init_error: int | None = None, count: int = 2) -> None:
        self.pid = pid
        self.init_error = init_error
        self.count = count
        self.shutdowns = 0
        self.calls: list[str] = []

    def _fail(self, code: int) -> None:
        raise self.NVMLError(code)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            self._fail(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"h{index}"

    def nvmlDeviceGetName(self, handle: str) -> str | bytes:
        return "NVIDIA H100 80GB HBM3" if handle == "h0" else b"Tesla T4"

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return {"h0": "GPU-aaaa-0000", "h1": "GPU-bbbb-1111"}[handle]

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        if handle == "h0":
            return SimpleNamespace(total=80 * GIB, used=3 * GIB // 2, free=0)
        return SimpleNamespace(total=16 * GIB, used=256 * MIB, free=0)

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=35 if handle == "h0" else 0, memory=10)

    def nvmlDeviceGetTemperatureV(self, handle: str, sensor: int) -> int:
        self.calls.append(f"V {handle}")
        if handle == "h1":
            self._fail(self.NVML_ERROR_FUNCTION_NOT_FOUND)
        return 45

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        self.calls.append(f"old {handle}")
        return 38

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        if handle == "h1":
            self._fail(self.NVML_ERROR_NOT_SUPPORTED)
        return 120_500

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: str) -> int:
        if handle == "h1":
            self._fail(self.NVML_ERROR_NOT_SUPPORTED)
        return 700_000

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list:
        if handle == "h0":
            return [
                SimpleNamespace(pid=self.pid, usedGpuMemory=900 * MIB),
                SimpleNamespace(pid=self.pid + 1, usedGpuMemory=512 * MIB),
            ]
        return [SimpleNamespace(pid=self.pid + 1, usedGpuMemory=256 * MIB)]


# -- the real library on a machine without a driver --


def test_real_nvml_without_driver_is_a_state_not_an_error() -> None:
    if _nvml_works():
        pytest.skip("this machine has a working NVIDIA driver")
    with Sampler() as sampler:
        sample = sampler.sample()
        again = sampler.sample()
    assert sample.gpus == () and again.gpus == ()
    assert sample.gpu_reason == "No NVIDIA driver found"
    total = psutil.virtual_memory().total
    assert sample.host.ram_total == total
    assert 0 < sample.host.ram_used <= total
    rss = psutil.Process().memory_info().rss
    assert 0.5 * rss < sample.host.process_rss < 2 * rss
    assert "GPU: No NVIDIA driver found" in render.monitor_line(sample)
    data = json.loads(json.dumps(sample.to_dict()))
    assert data["gpus"] == [] and data["gpu_reason"] == "No NVIDIA driver found"


def test_cpu_percent_is_none_until_a_window_has_passed() -> None:
    sampler = Sampler(nvml=FakeNvml(os.getpid(), count=0))
    sampler._cpu_since = float("inf")  # as if the previous reading were just now
    assert sampler.sample().host.cpu_percent is None
    sampler._cpu_since = 0.0
    host = sampler.sample().host
    assert host.cpu_percent is not None and 0 <= host.cpu_percent <= 100
    assert host.process_cpu_percent is not None and host.process_cpu_percent >= 0


# -- GPU arithmetic through a fake NVML --


def test_fake_gpus_fields_units_and_unsupported_sensors() -> None:
    nvml = FakeNvml(os.getpid())
    with Sampler(nvml=nvml) as sampler:
        sample = sampler.sample()
        second = sampler.sample()
    assert sample.gpu_reason is None
    h100, t4 = sample.gpus
    assert (h100.index, h100.name, t4.name) == (0, "NVIDIA H100 80GB HBM3", "Tesla T4")
    assert (h100.memory_used, h100.memory_total) == (3 * GIB // 2, 80 * GIB)
    assert h100.process_memory == 900 * MIB  # only our PID, not the other process
    assert t4.process_memory == 0  # we hold nothing there
    assert h100.utilization == 35.0 and h100.temperature == 45.0
    assert h100.power_w == 120.5 and h100.power_limit_w == 700.0
    assert t4.power_w is None and t4.power_limit_w is None
    assert t4.temperature == 38.0  # fell back to the older call
    assert h100.torch_allocated is None  # this test never started CUDA
    assert h100.memory_fraction == pytest.approx(1.5 / 80)
    # The fallback is remembered: the second sample asks the old call directly.
    assert nvml.calls.count("V h1") == 1 and nvml.calls.count("old h1") == 2
    assert second.gpus[1].temperature == 38.0
    assert nvml.shutdowns == 1
    assert h100.summary() == (
        "GPU0 NVIDIA H100 80GB HBM3 · VRAM 1.5 GiB / 80.0 GiB (ours 900.0 MiB)"
        " · 35% · 45 °C · 120/700 W"
    )
    assert (
        t4.summary()
        == "GPU1 Tesla T4 · VRAM 256.0 MiB / 16.0 GiB (ours 0 B) · 0% · 38 °C"
    )
    columns = sample.columns()
    assert columns["gpu0.process_memory"] == 900 * MIB
    assert np.isnan(columns["gpu1.power_w"])
    row = json.loads(json.dumps(sample.to_dict()))
    assert row["gpus"][1]["power_w"] is None
    assert row["gpus"][0]["memory_total"] == 80 * GIB


@pytest.mark.parametrize(
    ("code", "count", "reason"),
    [
        (12, 2, "No NVIDIA driver found"),
        (9, 2, "The NVIDIA driver is not loaded"),
        (4, 2, "No permission to read the NVIDIA driver"),
        (999, 2, "The NVIDIA driver cannot be read: NVML error 999"),
        (None, 0, "No NVIDIA GPU found"),
    ],
)
def test_no_gpu_reasons(code: int | None, count: int, reason: str) -> None:
    sampler = Sampler(nvml=FakeNvml(os.getpid(), init_error=code, count=count))
    sample = sampler.sample()
    assert sample.gpus == () and sample.gpu_reason == reason
    assert sample.host.process_rss > 0
    sampler.close()


class _FakeCuda:
    """torch.cuda with two devices enumerated in the opposite order to NVML."""

    def __init__(self, initialized: bool) -> None:
        self.initialized = initialized

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return 2

    def get_device_properties(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(uuid=["bbbb-1111", "aaaa-0000"][i])

    def memory_allocated(self, i: int) -> int:
        return [100 * MIB, 700 * MIB][i]

    def memory_reserved(self, i: int) -> int:
        return [128 * MIB, 768 * MIB][i]


def test_torch_counters_matched_by_uuid_only_once_cuda_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_torch = types.ModuleType("torch")
    fake_torch.cuda = _FakeCuda(initialized=False)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    sampler = Sampler(nvml=FakeNvml(os.getpid()))
    assert sampler.sample().gpus[0].torch_reserved is None
    fake_torch.cuda.initialized = True  # type: ignore[attr-defined]
    h100, t4 = sampler.sample().gpus
    assert (h100.torch_allocated, h100.torch_reserved) == (700 * MIB, 768 * MIB)
    assert (t4.torch_allocated, t4.torch_reserved) == (100 * MIB, 128 * MIB)
    # Holding CUDA memory on the T4 yet absent from its process list: another PID
    # namespace, so our share there is unknown rather than zero.
    assert t4.process_memory is None
    assert h100.process_memory == 900 * MIB


# -- history, markers, deltas --


def _sample(t: float, rss: int, ram: int, vram: int | None = None) -> Sample:
    gpus = ()
    if vram is not None:
        gpus = (
            GpuSample(0, "GPU", memory_used=vram + GIB, memory_total=8 * GIB,
                      process_memory=vram),
        )  # fmt: skip
    host = HostSample(ram, 16 * GIB, 10.0, rss, 50.0)
    return Sample(t, gpus, host, None if gpus else "No NVIDIA GPU found")


def test_history_is_a_ring_oldest_first() -> None:
    history = History(capacity=4)
    for i in range(6):
        history.append(
            _sample(100.0 + i, rss=i * MIB, ram=GIB, vram=i * MIB if i > 3 else None)
        )
    assert len(history) == 4
    assert history.times().tolist() == [102.0, 103.0, 104.0, 105.0]
    assert (history.column("process_rss") / MIB).tolist() == [2, 3, 4, 5]
    vram = history.column("gpu0.process_memory") / MIB
    assert np.isnan(vram[:2]).all() and vram[2:].tolist() == [4, 5]
    assert np.isnan(history.column("no.such")).all()
    assert history.last is not None and history.last.time == 105.0
    history.clear()
    assert len(history) == 0 and history.times().size == 0


def test_memory_delta_and_its_words() -> None:
    before = _sample(10.0, rss=100 * MIB, ram=4 * GIB, vram=0)
    after = _sample(12.5, rss=612 * MIB, ram=4 * GIB - 50 * MIB, vram=GIB + GIB // 2)
    delta = monitor.memory_delta(before, after)
    assert delta.seconds == 2.5
    assert delta.process_rss == 512 * MIB and delta.ram_used == -50 * MIB
    assert delta.gpus[0]["process_memory"] == 3 * GIB // 2
    assert delta.lines() == [
        "GPU0 VRAM (ours) +1.5 GiB",
        "GPU0 VRAM (all) +1.5 GiB",
        "Process RSS +512.0 MiB",
        "Host RAM used −50.0 MiB",
    ]
    assert monitor.format_delta(0) == "±0 B"
    assert Marker(1.0, "Load started").label == "Load started"


# -- timing of the sample stream, validation --


def test_samples_one_per_interval_for_the_given_seconds() -> None:
    slept: list[float] = []
    sampler = Sampler(nvml=FakeNvml(os.getpid(), count=0))
    got = list(monitor.samples(sampler, 0.25, seconds=1.0, sleep=slept.append))
    assert len(got) == 4 and len(slept) == 4
    assert all(0 < s <= 1.0 + 1e-6 for s in slept)
    assert (
        len(list(monitor.samples(sampler, 0.5, seconds=0.5, sleep=lambda s: None))) == 1
    )


@pytest.mark.parametrize("seconds", [0.1, 5.5, -1])
def test_interval_out_of_range(seconds: float) -> None:
    with pytest.raises(SettingsError, match="out of range"):
        monitor.check_interval(seconds)


# -- the monitor command --


def test_cli_monitor_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(["monitor", "--seconds", "0.5", "--interval", "0.25", "--json"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 2
    rows = [json.loads(line) for line in out]
    assert rows[1]["time"] > rows[0]["time"]
    assert rows[0]["host"]["ram_total"] == psutil.virtual_memory().total
    assert rows[0]["host"]["process_rss"] > 0
    if sys.platform.startswith("linux"):  # the RSS split comes from /proc
        host = rows[0]["host"]
        assert host["process_anon"] > 0 and host["process_file"] > 0
        assert host["process_anon"] + host["process_file"] == host["process_rss"]
    if not _nvml_works():
        assert (
            rows[0]["gpus"] == [] and rows[0]["gpu_reason"] == "No NVIDIA driver found"
        )


def test_cli_monitor_text_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["monitor", "--seconds", "0.25", "--interval", "0.25"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "RAM " in out[0] and " / " in out[0]
    assert cli.run(["monitor", "--interval", "10"]) == 2
    err = capsys.readouterr().err
    assert "error: sampling interval 10 s is out of range" in err
    assert "hint: pick an interval from 0.25 to 5 seconds" in err
    assert cli.run(["monitor", "--seconds", "0.1", "--interval", "0.5"]) == 2
    assert "shorter than one interval" in capsys.readouterr().err
    gone = psutil.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert cli.run(["monitor", "--pid", str(gone.pid), "--seconds", "1"]) == 2
    assert f"error: no process with PID {gone.pid}" in capsys.readouterr().err
