"""The fit check's available RAM respects the process's memory cgroup (v1 and v2),
read from fake cgroup trees: a container's limit that psutil does not see."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.model import fit
from core.model.fit import CGROUP, DeviceInfo, cgroup_headroom

MiB = 2**20
V1_NO_LIMIT = "9223372036854771712"


def _own(tmp_path: Path, text: str) -> Path:
    own = tmp_path / "self-cgroup"
    own.write_text(text)
    return own


def _group(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text + "\n")


def _v1(tmp_path: Path, limit: str, usage: int, inactive: int = 0) -> Path:
    root = tmp_path / "fs"
    _group(root / "memory", {"memory.limit_in_bytes": V1_NO_LIMIT})
    _group(
        root / "memory" / "docker" / "abc",
        {
            "memory.limit_in_bytes": limit,
            "memory.usage_in_bytes": str(usage),
            "memory.stat": f"cache 5\ninactive_file 1\ntotal_inactive_file {inactive}",
        },
    )
    return root


V1_SELF = "5:cpu:/\n4:memory:/docker/abc\n0::/\n"
V2_SELF = "0::/user.slice/app.scope\n"


def test_v1_limit_minus_usage_with_inactive_cache_as_free(tmp_path: Path) -> None:
    root = _v1(tmp_path, str(450 * MiB), 300 * MiB, inactive=100 * MiB)
    own = _own(tmp_path, V1_SELF)
    assert cgroup_headroom(root, own) == (250 * MiB, CGROUP)


def test_v1_without_a_limit_is_none(tmp_path: Path) -> None:
    root = _v1(tmp_path, V1_NO_LIMIT, 300 * MiB)
    assert cgroup_headroom(root, _own(tmp_path, V1_SELF)) is None


def test_v1_a_parent_group_with_the_tighter_limit(tmp_path: Path) -> None:
    root = _v1(tmp_path, V1_NO_LIMIT, 300 * MiB)
    _group(
        root / "memory" / "docker",
        {
            "memory.limit_in_bytes": str(1024 * MiB),
            "memory.usage_in_bytes": str(900 * MiB),
        },
    )
    assert cgroup_headroom(root, _own(tmp_path, V1_SELF)) == (124 * MiB, CGROUP)


def test_v1_inside_a_container_the_mount_top_is_the_group(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    _group(
        root / "memory",
        {
            "memory.limit_in_bytes": str(512 * MiB),
            "memory.usage_in_bytes": str(12 * MiB),
        },
    )
    assert cgroup_headroom(root, _own(tmp_path, V1_SELF)) == (500 * MiB, CGROUP)


def test_v2_max_minus_current(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    _group(root, {"cgroup.controllers": "cpu memory"})
    _group(root / "user.slice", {"memory.max": "max", "memory.current": "1"})
    _group(
        root / "user.slice" / "app.scope",
        {
            "memory.max": str(450 * MiB),
            "memory.current": str(200 * MiB),
            "memory.stat": f"anon 1\ninactive_file {50 * MiB}",
        },
    )
    assert cgroup_headroom(root, _own(tmp_path, V2_SELF)) == (300 * MiB, CGROUP)


def test_v2_max_is_none_and_over_the_limit_is_zero(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    scope = root / "user.slice" / "app.scope"
    _group(scope, {"memory.max": "max", "memory.current": str(200 * MiB)})
    assert cgroup_headroom(root, _own(tmp_path, V2_SELF)) is None
    _group(scope, {"memory.max": str(100 * MiB), "memory.current": str(200 * MiB)})
    assert cgroup_headroom(root, _own(tmp_path, V2_SELF)) == (0, CGROUP)


def test_unreadable_or_missing_files_are_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    assert cgroup_headroom(root, tmp_path / "no-such-file") is None
    assert cgroup_headroom(root, _own(tmp_path, V1_SELF)) is None
    assert cgroup_headroom(root, _own(tmp_path, V2_SELF)) is None
    scope = root / "user.slice" / "app.scope"
    _group(scope, {"memory.max": "garbage", "memory.current": "1"})
    assert cgroup_headroom(root, _own(tmp_path, V2_SELF)) is None
    _group(scope, {"memory.max": str(100 * MiB)})
    (scope / "memory.current").unlink()
    (scope / "memory.current").mkdir()  # present but not readable as a file
    assert cgroup_headroom(root, _own(tmp_path, V2_SELF)) is None


def test_the_fit_check_judges_against_the_cgroup_and_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fit, "cgroup_headroom", lambda: (450 * MiB, CGROUP))
    monkeypatch.setattr(fit, "limit_headroom", lambda: None)
    monkeypatch.setattr(fit, "_nvml_gpus", lambda: [])
    device = fit.probe_device()
    assert device.ram_available_bytes == 450 * MiB
    assert device.ram_limit == CGROUP
    assert "450.0 MiB RAM available (under the memory cgroup's limit)" in (
        device.describe()
    )
    # The tighter of an rlimit and the cgroup wins, and is the one named.
    monkeypatch.setattr(fit, "limit_headroom", lambda: (300 * MiB, "RLIMIT_DATA"))
    device = fit.probe_device()
    assert device.ram_available_bytes == 300 * MiB
    assert "under this process's RLIMIT_DATA" in device.describe()


def test_no_cgroup_limit_leaves_psutil_available(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fit, "cgroup_headroom", lambda: None)
    monkeypatch.setattr(fit, "limit_headroom", lambda: None)
    monkeypatch.setattr(fit, "_nvml_gpus", lambda: [])
    device = fit.probe_device()
    assert isinstance(device, DeviceInfo) and device.ram_limit == ""
