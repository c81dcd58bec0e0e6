"""--fit auto under a real memory limit: a child process under RLIMIT_DATA.

A child process runs `python main.py generate default --fit auto` under RLIMIT_DATA
(set with resource.setrlimit before it starts), with the limit between what the
estimate says full precision and nf4 + double quant need on top of what the process
already holds. The fit check judges against that limit (core.model.fit reads the
process's own limits), refuses fp32 and applies nf4 + double quant, naming it.

That rung cannot then load under this limit, and the test says so: RLIMIT_DATA (and
RLIMIT_AS) count the checkpoint's private copy-on-write mapping, and a quantizing
load maps the whole full-precision checkpoint too, so under a process limit nf4
needs more than fp32 (docs/facts.md, "A process memory limit"). What the test
proves is that the out-of-memory that follows is caught and named, with what was
needed and what was free, and never kills the process with a traceback.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20

# What the process holds at the fit check, and what the estimate says each needs,
# measured by a child that starts as `main.py generate` does up to that check.
PROBE = """
import json
from pathlib import Path
from core.model import catalog
from core.model.estimate import estimate
from core.model.fit import probe_device
from core.settings import PRESETS, LoadOptions

ref = catalog.resolve("default")
cpu = LoadOptions(device_map="cpu")
device = probe_device()
full = estimate(ref, None, cpu, device=device).judged_bytes
dq = PRESETS["nf4-dq"]
small = estimate(ref, dq.quant, dq.load_options(cpu), device=device).judged_bytes
status = Path("/proc/self/status").read_text()
used = {
    line.split(":")[0]: int(line.split()[1]) * 1024
    for line in status.splitlines()
    if line.startswith(("VmData", "VmSize"))
}
print(json.dumps({"full": full, "small": small, **used}))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["NIBBLE_CONFIG_DIR"] = str(tmp_path / "config")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _limited(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return apply


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA and /proc are Linux")
def test_under_a_memory_limit_fit_auto_names_the_rung_and_an_out_of_memory(
    default_dir: Path, tmp_path: Path
) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    full, small, held = seen["full"], seen["small"], seen["VmData"]
    assert small < full
    # The limit leaves room for nf4 + double quant and not for full precision,
    # half way between the two.
    limit = held + (small + full) // 2
    command = [
        sys.executable, "main.py", "generate", "default", "--fit", "auto",
        "--device-map", "cpu", "--greedy", "--max-new-tokens", "8",
        "-p", "What is the capital of France?", "--json",
    ]  # fmt: skip
    run = subprocess.run(
        command,
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limited(limit),
    )
    report = (
        f"limit {limit / MiB:.0f} MiB (held {held / MiB:.0f}, nf4-dq "
        f"{small / MiB:.0f}, fp32 {full / MiB:.0f}); stderr:\n{run.stderr[-3000:]}"
    )
    assert "under this process's RLIMIT_DATA" in run.stderr, report
    assert "applying nf4 + double quant" in run.stderr, report
    if run.returncode == 0:  # a stack that maps the checkpoint read-only
        data = json.loads(run.stdout)
        assert data["settings"]["bnb_4bit_use_double_quant"] is True
        assert data["text"].strip(), report
        return
    # The load crossed the limit: named, with the numbers, exit 2, no traceback.
    assert run.returncode == 2, report
    assert "ran out of CPU memory: needs" in run.stderr, report
    assert "was free" in run.stderr, report
    assert "Traceback" not in run.stderr, report


def test_the_fit_check_reads_the_process_memory_limit(tmp_path: Path) -> None:
    """Under RLIMIT_DATA, what the process may still allocate is what is available."""
    code = (
        "import json; from core.model.fit import probe_device, limit_headroom; "
        "d = probe_device(); "
        "print(json.dumps([d.ram_available_bytes, d.ram_limit, limit_headroom()]))"
    )
    limit = 3 * 2**30
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited(limit),
        check=True,
    )
    available, name, (room, which) = json.loads(run.stdout)
    assert which == "RLIMIT_DATA"
    assert 0 < room < limit
    assert available <= room
    if name:  # unless the machine has less free RAM than the limit leaves
        assert name == "RLIMIT_DATA" and available == room
