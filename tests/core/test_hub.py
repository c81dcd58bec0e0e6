"""core.hub.api against huggingface_hub's real client and a local hub on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import pytest

from core.errors import CancelledError
from core.hub import api as hub
from core.hub import download as hub_download
from tests.fake_hub import CHUNK, REPO, FakeHub

TOKEN = "hf_testTOKENdoNotPrint1234567890"


def _weights(fake: FakeHub) -> int:
    return fake.repos[REPO].files["model.safetensors"].size


def test_search_lists_causal_lms_by_downloads_with_flags(
    fake: FakeHub, repo_dir: Path, tmp_path: Path
) -> None:
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
    fake.add_repo("nibble-test/tiny-gguf", gguf, downloads=900, library_name="gguf")
    fake.add_repo("nibble-test/tiny-gptq", repo_dir, downloads=50, tags=["gptq"])
    fake.add_repo("other/unrelated", repo_dir, downloads=10_000)

    results = hub.search("tiny", limit=10)

    assert [r.repo_id for r in results] == [
        "nibble-test/tiny-gguf",
        REPO,
        "nibble-test/tiny-gptq",
    ]
    gguf_row, tiny, gptq = results
    assert (tiny.downloads, tiny.likes, tiny.last_modified) == (500, 7, "2026-01-02")
    assert tiny.dtype == "F32" and tiny.parameters and tiny.parameters > 3_000_000
    assert tiny.loadable and tiny.quantized is None
    assert (gguf_row.quantized, gguf_row.loadable) == ("GGUF only", False)
    assert (gptq.quantized, gptq.loadable) == ("GPTQ", False)
    assert "cannot load here" in gptq.note
    query = next(p for m, p, h in fake.requests if p == "/api/models")
    assert query == "/api/models"


def test_plan_picks_files_sizes_and_exact_estimate_before_weights(
    fake: FakeHub, repo_dir: Path
) -> None:
    from core.model import catalog, loader
    from core.settings import preset

    plan = hub.plan(REPO)

    names = [f.name for f in plan.files]
    assert names[0] == "model.safetensors"
    assert set(names) >= {"config.json", "tokenizer.json", "generation_config.json"}
    assert not {"model.gguf", "onnx/model.onnx", "tf_model.h5", "README.md"} & set(
        names
    )
    assert plan.commit == fake.repos[REPO].commit
    assert plan.total_bytes == sum((repo_dir / n).stat().st_size for n in names)
    assert plan.cached_bytes == (repo_dir / "config.json").stat().st_size
    assert plan.free_bytes and plan.fits_disk
    assert fake.served["model.safetensors"] == 0  # not one weight byte yet
    assert {r.preset for r in plan.table.rows} >= {"fp32", "nf4", "int8"}
    assert all(r.verdict != "unknown" for r in plan.table.rows)

    # The nf4 row equals what the loaded model really takes.
    nf4 = next(r for r in plan.table.rows if r.preset == "nf4")
    snapshot = hub_download.download(plan)
    chosen = preset("nf4")
    loaded = loader.load(
        catalog.folder_ref(snapshot), chosen.quant, chosen.load_options()
    )
    try:
        assert loaded.report.true_bytes == nf4.model_bytes
    finally:
        loader.unload(loaded)


def test_gguf_only_repo_is_refused_with_a_reason(fake: FakeHub, tmp_path: Path) -> None:
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
    fake.add_repo("nibble-test/gguf", folder, library_name="gguf")

    with pytest.raises(hub.ModelNotFoundError) as info:
        hub.plan("nibble-test/gguf")

    assert "has no config.json" in info.value.message
    assert "GGUF-only" in info.value.message


def test_bin_only_repo_warns_about_pickles(fake: FakeHub, tmp_path: Path) -> None:
    folder = tmp_path / "bin-only"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(fake.repos[REPO].files[name].path, folder / name)
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 1000)
    fake.add_repo("nibble-test/bin-only", folder)

    plan = hub.plan("nibble-test/bin-only")

    assert "pytorch_model.bin" in [f.name for f in plan.files]
    assert any("pickle" in w for w in plan.warnings)


def test_download_lands_in_the_hf_cache_and_loads_offline(fake: FakeHub) -> None:
    from core.model import catalog

    seen: list[hub_download.Progress] = []
    plan = hub.plan(REPO)
    snapshot = hub_download.download(plan, progress=seen.append)

    assert snapshot == (
        hub.cache_dir()
        / "models--nibble-test--tiny-llama"
        / "snapshots"
        / fake.repos[REPO].commit
    )
    assert (snapshot / "model.safetensors").is_symlink()
    assert not list((snapshot.parent.parent / "blobs").glob("*.incomplete"))
    last = seen[-1]
    assert last.done_bytes == last.total_bytes == hub.plan(REPO).total_bytes
    assert last.files_done == last.files_total
    assert any(p.speed_bps and p.eta_s is not None for p in seen)
    assert "left" in last.text() and "100%" in last.text()
    # The picker's HF cache section lists it, and the id resolves with no network.
    assert REPO in [r.name for r in catalog.scan_cache()]
    fake.stop()
    ref = catalog.resolve(REPO)
    assert ref.kind == "cache" and ref.path == snapshot
    assert hub_download.download(plan) == snapshot  # complete: no network needed


def test_cut_mid_file_resumes_without_refetching(fake: FakeHub) -> None:
    size = _weights(fake)
    fake.cut_after["model.safetensors"] = 3 * CHUNK + 12345

    hub_download.download(hub.plan(REPO))

    # huggingface_hub writes whole chunks: the three on disk are not fetched again,
    # only the 12345 bytes of the chunk that was cut off before it was written.
    assert fake.ranges("model.safetensors") == [None, f"bytes={3 * CHUNK}-"]
    assert fake.served["model.safetensors"] == size + 12345
    assert hub.plan(REPO).complete


def test_cancel_keeps_the_partial_and_the_next_download_continues(
    fake: FakeHub,
) -> None:
    size = _weights(fake)
    cancel = threading.Event()

    def stop_after_two_chunks(p: hub_download.Progress) -> None:
        if p.file == "model.safetensors" and p.done_bytes >= 2 * CHUNK:
            cancel.set()

    plan = hub.plan(REPO)
    with pytest.raises(CancelledError):
        hub_download.download(plan, progress=stop_after_two_chunks, cancel=cancel)

    again = hub.plan(REPO)  # as after a restart
    weights = next(f for f in again.files if f.name == "model.safetensors")
    assert not weights.cached and weights.partial_bytes == 2 * CHUNK
    assert again.missing_bytes == again.total_bytes - again.cached_bytes - 2 * CHUNK
    served_before = fake.served["model.safetensors"]

    hub_download.download(again)

    assert fake.ranges("model.safetensors")[-1] == f"bytes={2 * CHUNK}-"
    assert fake.served["model.safetensors"] - served_before == size - 2 * CHUNK
    assert hub.plan(REPO).complete


def test_a_second_writer_is_told_the_file_is_busy(fake: FakeHub) -> None:
    from huggingface_hub.utils import WeakFileLock

    plan = hub.plan(REPO)
    weights = next(f for f in plan.files if f.name == "model.safetensors")
    lock = plan.cache_dir / ".locks" / "models--nibble-test--tiny-llama"
    lock.mkdir(parents=True, exist_ok=True)
    with (
        WeakFileLock(lock / f"{weights.blob}.lock"),
        pytest.raises(hub.HubError) as info,
    ):
        hub_download.download(plan)
    assert "is being downloaded by another program" in info.value.message
    assert fake.served["model.safetensors"] == 0
    hub_download.download(plan)  # once the other one let go


def test_discard_removes_partials(fake: FakeHub) -> None:
    cancel = threading.Event()
    plan = hub.plan(REPO)
    with pytest.raises(CancelledError):
        hub_download.download(
            plan, lambda p: p.done_bytes > CHUNK and cancel.set(), cancel
        )
    assert hub_download.discard(plan) >= CHUNK
    assert hub.plan(REPO).partial_bytes == 0


def test_full_disk_is_refused_before_downloading(
    fake: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = hub.plan(REPO)
    monkeypatch.setattr(hub, "free_disk_bytes", lambda path: 1000)

    with pytest.raises(hub.DiskFullError) as info:
        hub_download.download(plan)

    assert "not enough disk space" in info.value.message
    assert "HF_HUB_CACHE" in info.value.hint
    assert fake.served["model.safetensors"] == 0
    assert hub.plan(REPO).fits_disk is False
    assert "NOT ENOUGH DISK SPACE" in hub.plan(REPO).disk_text()


def test_missing_repo_and_revision(fake: FakeHub) -> None:
    with pytest.raises(hub.HubError) as info:
        hub.plan("nibble-test/does-not-exist")
    assert info.value.message == (
        "nibble-test/does-not-exist was not found on the hub, or it is private"
    )
    assert "HF_TOKEN" in info.value.hint
    with pytest.raises(hub.HubError) as info:
        hub.plan(REPO, revision="v9")
    assert "no revision 'v9'" in info.value.message


def test_gated_repo_401_then_403_then_granted(
    fake: FakeHub,
    monkeypatch: pytest.MonkeyPatch,
    repo_dir: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.add_repo("nibble-test/gated", repo_dir, gated="manual")

    with pytest.raises(hub.HubError) as info:  # not logged in: 401
        hub.plan("nibble-test/gated")
    assert "is gated: accept its terms on" in info.value.message
    assert "/nibble-test/gated" in info.value.message
    assert "not logged in" in info.value.message
    assert "hf auth login" in info.value.hint and "HF_TOKEN" in info.value.hint

    monkeypatch.setenv("HF_TOKEN", TOKEN)  # a token without access: 403
    with pytest.raises(hub.HubError) as info:
        hub.plan("nibble-test/gated")
    assert "has not been granted access" in info.value.message
    sent = [h.get("authorization") for _, _, h in fake.requests]
    assert f"Bearer {TOKEN}" in sent

    fake.granted_tokens.add(TOKEN)
    hub_download.download(hub.plan("nibble-test/gated"))
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + caplog.text
    assert TOKEN not in str(info.value) and TOKEN not in info.value.hint


def test_offline_env_and_unreachable_hub(
    fake: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for call in (lambda: hub.search("tiny"), lambda: hub.plan(REPO)):
        with pytest.raises(hub.HubOfflineError) as info:
            call()
        assert info.value.message == "the hub is switched off (HF_HUB_OFFLINE is set)"
        assert "cache still load" in info.value.hint
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fake.stop()
    with pytest.raises(hub.HubOfflineError) as info:
        hub.search("tiny")
    assert info.value.message.startswith("the hub cannot be reached")


def test_downloaded_model_loads_in_nf4_and_answers(fake: FakeHub) -> None:
    from core.generation import decode
    from core.model import catalog, loader
    from core.settings import GenerationSettings, preset

    snapshot = hub_download.download(hub.plan(REPO))
    chosen = preset("nf4")
    loaded = loader.load(
        catalog.folder_ref(snapshot), chosen.quant, chosen.load_options()
    )
    try:
        assert loaded.report.quantized_count > 0
        text, stats = decode.generate_text(
            loaded, "Hello", GenerationSettings(max_new_tokens=8, greedy=True)
        )
    finally:
        loader.unload(loaded)
    assert stats.new_tokens > 0 and text


def test_plan_to_dict_is_json(fake: FakeHub) -> None:
    data = json.loads(json.dumps(hub.plan(REPO).to_dict()))
    assert data["repo_id"] == REPO and data["estimate"]["rows"]


@pytest.mark.slow
def test_default_model_through_the_hub_answers_paris_in_nf4(
    fake: FakeHub, default_dir: Path
) -> None:
    """The real 135M model, served by the local hub, downloaded, loaded in nf4."""
    from core.generation import decode
    from core.model import catalog, loader
    from core.settings import GenerationSettings, preset

    fake.add_repo("nibble-test/SmolLM2-135M-Instruct", default_dir)
    plan = hub.plan("nibble-test/SmolLM2-135M-Instruct")
    assert plan.total_bytes > 500 * 2**20
    nf4 = next(r for r in plan.table.rows if r.preset == "nf4")
    snapshot = hub_download.download(plan)
    chosen = preset("nf4")
    loaded = loader.load(
        catalog.folder_ref(snapshot), chosen.quant, chosen.load_options()
    )
    try:
        assert loaded.report.true_bytes == nf4.model_bytes
        text, _ = decode.generate_text(
            loaded,
            "What is the capital of France?",
            GenerationSettings(max_new_tokens=32, greedy=True),
        )
    finally:
        loader.unload(loaded)
    assert "paris" in text.lower()


def test_a_plan_that_does_not_fit_carries_the_ladder(fake: FakeHub) -> None:
    from core.model.fit import DeviceInfo

    roomy = hub.plan(REPO)
    assert roomy.ladder is None or roomy.table.current.verdict == "does not fit"
    full = roomy.table.current.judged_bytes
    tight = DeviceInfo([], 2**34, full // 2, cuda=False)
    plan = hub.plan(REPO, device=tight)
    assert plan.table.current.verdict == "does not fit"
    assert plan.ladder is not None
    assert plan.ladder.rungs[0].step == "nf4-dq"
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["ladder"]["rungs"][0]["step"] == "nf4-dq"
