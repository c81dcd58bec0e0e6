"""`search`, `pull` and `estimate ORG/NAME` as a user runs them, against a local hub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_hub import REPO, FakeHub

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_cliTOKENdoNotPrint0987654321"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # HF_ENDPOINT and HF_HUB_CACHE come from the fixture
    env.pop("HF_TOKEN", None)
    env["HF_HOME"] = str(Path(env["HF_HUB_CACHE"]).parent / "hf-home")
    env.update(extra)
    return env


def _main(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_search_text_and_json(fake: FakeHub) -> None:
    result = _main("search", "tiny")
    assert result.returncode == 0, result.stderr
    assert REPO in result.stdout and "500 downloads" in result.stdout

    result = _main("search", "tiny", "--json")
    assert json.loads(result.stdout)[0]["repo_id"] == REPO


def test_pull_plans_then_downloads_and_a_second_pull_has_nothing_to_fetch(
    fake: FakeHub,
) -> None:
    result = _main("pull", REPO)
    assert result.returncode == 0, result.stderr
    assert "model.safetensors" in result.stdout and "to fetch" in result.stdout
    assert "nf4" in result.stdout and "Recommended:" in result.stdout
    assert "100%" in result.stderr and "left" in result.stderr
    assert f"downloaded {REPO}" in result.stderr

    served = fake.served["model.safetensors"]
    again = _main("pull", REPO, "--json")
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["plan"]["missing_bytes"] == 0
    assert Path(data["snapshot"], "model.safetensors").is_file()
    assert fake.served["model.safetensors"] == served


def test_ctrl_c_leaves_a_partial_that_the_next_pull_continues(fake: FakeHub) -> None:
    # huggingface_hub writes 10 MiB chunks: the first arrives at once, the rest slowly.
    fake.delay_from, fake.delay_s = 10 * 2**20, 0.05
    blobs = (
        Path(os.environ["HF_HUB_CACHE"]) / "models--nibble-test--tiny-llama" / "blobs"
    )
    proc = subprocess.Popen(
        [sys.executable, "main.py", "pull", REPO],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        partial: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [p for p in blobs.glob("*.incomplete") if p.stat().st_size]
            if partial:
                break
            time.sleep(0.05)
        assert partial, "no partial file appeared"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 130, err
    assert "paused:" in err and "run the same pull again" in err
    kept = partial[0].stat().st_size
    assert 0 < kept < fake.repos[REPO].files["model.safetensors"].size

    fake.delay_s = 0
    result = _main("pull", REPO)
    assert result.returncode == 0, result.stderr
    assert fake.ranges("model.safetensors")[-1] == f"bytes={kept}-"


def test_estimate_hub_id_uses_the_plan(fake: FakeHub) -> None:
    result = _main("estimate", REPO, "--quant", "nf4")
    assert result.returncode == 0, result.stderr
    assert "to fetch" in result.stderr  # the plan, before the table
    assert "nf4" in result.stdout and "Current:" in result.stdout
    assert fake.served["model.safetensors"] == 0


def test_offline_gated_and_missing_say_so_in_one_line(
    fake: FakeHub, repo_dir: Path
) -> None:
    result = _main("search", "tiny", HF_HUB_OFFLINE="1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: the hub is switched off (HF_HUB_OFFLINE is set)",
        "hint: unset HF_HUB_OFFLINE to search and download; models in your cache "
        "still load",
    ]

    fake.add_repo("nibble-test/gated", repo_dir, gated="auto")
    result = _main("pull", "nibble-test/gated", HF_TOKEN=TOKEN)
    assert result.returncode == 2
    assert "is gated: accept its terms on" in result.stderr
    assert TOKEN not in result.stdout + result.stderr

    result = _main("pull", "nibble-test/nope")
    assert result.returncode == 2
    assert "error: nibble-test/nope was not found on the hub" in result.stderr


@pytest.mark.parametrize("command", ["search", "pull"])
def test_unreachable_hub(fake: FakeHub, command: str) -> None:
    fake.stop()
    result = _main(command, REPO)
    assert result.returncode == 2
    assert result.stderr.startswith("error: the hub cannot be reached")


def test_estimate_hub_id_offline_reads_the_cached_config(
    fake: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import constants

    from cli import main as cli
    from core.hub import api as hub

    hub.plan(REPO)  # fetches config.json into the cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fake.stop()
    assert cli.run(["estimate", REPO, "--quant", "nf4"]) == 0
    out = capsys.readouterr()
    assert "Current:" in out.out and "to fetch" not in out.err
