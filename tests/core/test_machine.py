"""This machine in one place: NVML that answers "not available" instead of raising,
the host, and one set of versions for the report, Compare, provenance and About."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from core import machine
from core.lab import measure, report
from core.store import provenance
from tests.core.test_monitor import GIB, FakeNvml

ROOT = Path(__file__).resolve().parents[2]


class DriverNvml(FakeNvml):
    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54.15"


@pytest.mark.parametrize(
    ("code", "count", "reason"),
    [
        (12, 2, "No NVIDIA driver found"),
        (4, 2, "No permission to read the NVIDIA driver"),
        (None, 0, "No NVIDIA GPU found"),
    ],
)
def test_nvml_without_a_gpu_is_an_answer(code, count, reason) -> None:
    fake = FakeNvml(os.getpid(), init_error=code, count=count)
    with machine.Nvml(fake) as nvml:
        assert not nvml.available and nvml.reason == reason
        if code:  # never initialised: every query is "not available"
            assert nvml.call("nvmlDeviceGetMemoryInfo", "h0") is None
    # NVML is shut down exactly when it was initialised.
    assert fake.shutdowns == (0 if code else 1)


def test_nvml_queries_a_gpu_lacks_are_none_and_text_is_str() -> None:
    fake = FakeNvml(os.getpid())
    with machine.Nvml(fake) as nvml:
        assert nvml.available and nvml.handles == ["h0", "h1"]
        assert nvml.text("nvmlDeviceGetName", "h1") == "Tesla T4"
        assert nvml.call("nvmlDeviceGetPowerUsage", "h1") is None
        assert nvml.call("nvmlNoSuchCall") is None
    assert fake.shutdowns == 1 and nvml.binding is None


def test_gpus_and_driver_from_one_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", DriverNvml(os.getpid()))
    assert machine.driver_version() == "550.54.15"
    assert machine.gpus() == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total": 80 * GIB,
         "driver": "550.54.15"},
        {"index": 1, "name": "Tesla T4", "memory_total": 16 * GIB,
         "driver": "550.54.15"},
    ]  # fmt: skip
    # The report and the Compare lab read the same wrapper.
    assert report.hardware()["gpus"] == machine.gpus()
    assert measure.environment()["driver"] == "550.54.15"


def test_no_pynvml_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with machine.Nvml() as nvml:
        assert nvml.reason == "nvidia-ml-py is not installed"
    assert machine.gpus() == [] and machine.driver_version() is None


def test_one_answer_for_versions_and_host() -> None:
    versions = machine.versions()
    assert versions["torch"] == metadata.version("torch")
    assert versions["nibble"]  # metadata, else pyproject.toml
    data = report.build(None, *_settings())
    assert data["environment"]["packages"] == versions
    assert data["hardware"]["cpu"] == machine.cpu_name()
    env = measure.environment()
    assert env["cpu"] == machine.cpu_name()
    assert env["platform"] == data["environment"]["platform"] == machine.os_name()
    for name in ("nibble", "torch", "transformers", "bitsandbytes", "accelerate"):
        assert env[name] == versions[name]
        assert provenance.library_versions()[name] == versions[name]
    assert provenance.library_versions()["python"] == platform.python_version()


def _settings():
    from core.settings import LoadOptions, QuantSettings

    return QuantSettings(), LoadOptions()


def test_importing_the_monitor_and_report_loads_no_nvml() -> None:
    code = (
        "import sys, core.machine, core.monitor, core.lab.report, core.lab.measure; "
        "assert 'pynvml' not in sys.modules, 'pynvml imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
