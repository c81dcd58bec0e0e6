"""--fit auto under a real memory limit: a child process under RLIMIT_DATA, and one
in a memory cgroup of its own.

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

A memory cgroup counts resident pages, and the checkpoint's clean mapped pages are
page cache it can reclaim, so there the applied rung loads: the cgroup test (root
and a writable v1 or v2 memory controller, else skipped) proves that under a limit
the estimate says full precision does not fit, `--fit auto` applies nf4 + double
quant, names it and the cgroup's limit, and answers.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _run(
    args: list[str],
    tmp_path: Path,
    before: Callable[[], None] | None,
    timeout: int,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """A child process in the repository, with a config of its own; `before` runs
    in the child between fork and exec (a memory limit, a cgroup to join)."""
    return subprocess.run(
        args,
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=before,
        check=check,
    )


def _generate_auto(prompt_flag: str, *extra: str) -> list[str]:
    """`main.py generate default --fit auto` on the CPU: 8 greedy tokens."""
    return [
        sys.executable, "main.py", "generate", "default", "--fit", "auto",
        "--device-map", "cpu", "--greedy", "--max-new-tokens", "8",
        prompt_flag, "What is the capital of France?", *extra,
    ]  # fmt: skip


def _report(limit: int, held: int, small: int, full: int, stderr: str) -> str:
    return (
        f"limit {limit / MiB:.0f} MiB (held {held / MiB:.0f}, nf4-dq "
        f"{small / MiB:.0f}, fp32 {full / MiB:.0f}); stderr:\n{stderr[-3000:]}"
    )


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA and /proc are Linux")
def test_under_a_memory_limit_fit_auto_names_the_rung_and_an_out_of_memory(
    default_dir: Path, tmp_path: Path
) -> None:
    probe = _run([sys.executable, "-c", PROBE], tmp_path, None, 300, check=True)
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    full, small, held = seen["full"], seen["small"], seen["VmData"]
    assert small < full
    # The limit leaves room for nf4 + double quant and not for full precision,
    # half way between the two.
    limit = held + (small + full) // 2
    run = _run(_generate_auto("-p", "--json"), tmp_path, _limited(limit), 600)
    report = _report(limit, held, small, full, run.stderr)
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
    # Not "use --fit auto", which it did: the limit counts the mapped checkpoint.
    assert "hint: the fit check judged this to fit under RLIMIT_DATA" in run.stderr
    assert "Traceback" not in run.stderr, report


def test_the_fit_check_reads_the_process_memory_limit(tmp_path: Path) -> None:
    """Under RLIMIT_DATA, what the process may still allocate is what is available."""
    code = (
        "import json; from core.model.fit import probe_device, limit_headroom; "
        "d = probe_device(); "
        "print(json.dumps([d.ram_available_bytes, d.ram_limit, limit_headroom()]))"
    )
    limit = 3 * 2**30
    run = _run([sys.executable, "-c", code], tmp_path, _limited(limit), 120, True)
    available, name, (room, which) = json.loads(run.stdout)
    assert which == "RLIMIT_DATA"
    assert 0 < room < limit
    assert available <= room
    if name:  # unless the machine has less free RAM than the limit leaves
        assert name == "RLIMIT_DATA" and available == room


# What the process may still charge to its memory cgroup at the fit check, taken
# where `generate` takes it (the command runs as it would, and stops before the
# load), and what the estimate says full precision and nf4 + double quant need.
CGROUP_PROBE = """
import json
import main
import core.model.fit as fit
from core.model import catalog, loader
from core.model.estimate import estimate
from core.settings import PRESETS, LoadOptions

seen = {}
probe_device = fit.probe_device


def probe():
    device = probe_device()
    room = fit.cgroup_headroom()
    seen["room"] = room and room[0]
    seen["device"] = device
    return device


def stop(*args, **kwargs):
    ref = catalog.resolve("default")
    cpu = LoadOptions(device_map="cpu")
    device = seen.pop("device")
    seen["full"] = estimate(ref, None, cpu, device=device).judged_bytes
    dq = PRESETS["nf4-dq"]
    seen["small"] = estimate(
        ref, dq.quant, dq.load_options(cpu), device=device
    ).judged_bytes
    print(json.dumps(seen))
    raise SystemExit(0)


fit.probe_device = probe
loader.load = stop
main.main(["generate", "default", "--fit", "check", "--device-map", "cpu", "-p", "Hi"])
"""


class _Cgroup:
    """A memory cgroup of the test's own, v1 or v2; a child joins it by pid."""

    def __init__(self, folder: Path, limit_file: str) -> None:
        self.dir, self.limit_file = folder, limit_file

    def limit(self, nbytes: int) -> None:
        (self.dir / self.limit_file).write_text(str(nbytes))

    def enter(self) -> None:  # in the child, between fork and exec
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))


def _controller() -> tuple[Path, str] | str:
    """Where to make a memory cgroup, and its limit file; or why it cannot be."""
    if sys.platform != "linux":
        return "memory cgroups are Linux"
    if os.geteuid() != 0:
        return "making a memory cgroup needs root"
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        return v1, "memory.limit_in_bytes"
    v2 = Path("/sys/fs/cgroup")
    try:
        enabled = (v2 / "cgroup.subtree_control").read_text().split()
    except OSError:
        return "no cgroup v1 memory controller and no cgroup v2 here"
    if "memory" not in enabled:
        return "cgroup v2 without the memory controller enabled for its children"
    return v2, "memory.max"


@contextmanager
def _cgroup(name: str) -> Iterator[_Cgroup]:
    where = _controller()
    if isinstance(where, str):
        pytest.skip(where)
    base, limit_file = where
    folder = base / f"{name}-{os.getpid()}"
    try:
        folder.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup under {base}: {e}")
    try:
        if not (folder / limit_file).exists():
            pytest.skip(f"{folder} has no {limit_file}")
        yield _Cgroup(folder, limit_file)
    finally:
        for _ in range(100):  # its last process may take a moment to leave
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@pytest.mark.slow
def test_in_a_memory_cgroup_fit_auto_applies_a_rung_that_loads_and_answers(
    default_dir: Path, tmp_path: Path
) -> None:
    import psutil

    probe_limit = 4 * 2**30
    with _cgroup("nibble-test-probe") as group:
        group.limit(probe_limit)
        probe = _run(
            [sys.executable, "-c", CGROUP_PROBE], tmp_path, group.enter, 300, True
        )
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    full, small = seen["full"], seen["small"]
    assert seen["room"] is not None, "the fit check did not see the cgroup's limit"
    held = probe_limit - seen["room"]
    assert small < full
    # Half way between what the estimate says nf4 + double quant and full precision
    # need, on top of what the process holds at the fit check. nf4 + double quant
    # loaded and answered with a peak of 481 MiB charged (docs/facts.md).
    limit = held + (small + full) // 2
    if psutil.virtual_memory().available < limit + 256 * MiB:
        pytest.skip(f"this machine has less than {(limit / MiB):.0f} MiB free")
    with _cgroup("nibble-test-run") as group:
        group.limit(limit)
        run = _run(_generate_auto("--prompt"), tmp_path, group.enter, 600)
    report = _report(limit, held, small, full, run.stderr)
    assert run.returncode == 0, report
    assert "Paris" in run.stdout, report
    assert "RAM available (under the memory cgroup's limit)" in run.stderr, report
    assert "applying nf4 + double quant" in run.stderr, report
    assert "· nf4-dq ·" in run.stderr, report
