"""An estimate that learns this machine: load records and the calibration from them."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.model import calibration, catalog, estimate, loader
from core.model.calibration import MIN_LOADS, LoadRecord
from core.model.fit import DeviceInfo
from core.settings import LoadOptions, preset
from core.store import calibration as store
from core.store import conversations as conv
from tests.load_records import DEFAULT_MODEL_LOADS, records
from tests.unwritable import read_only

GiB = 2**30
NO_GPU = DeviceInfo([], 64 * GiB, 32 * GiB, cuda=False)
ON_CPU = LoadOptions(device_map="cpu")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[store.LoadJournal]:
    """Loads in this test are recorded in a history database of its own."""
    kept = store.LoadJournal(tmp_path / conv.FILE_NAME)
    previous = calibration.use_journal(kept)
    try:
        yield kept
    finally:
        calibration.use_journal(previous)


def load_tiny(folder: Path, name: str = "nf4") -> loader.LoadedModel:
    chosen = preset(name)
    return loader.load(
        catalog.resolve(str(folder)), chosen.quant, chosen.load_options(ON_CPU)
    )


# -- the history database --


def test_a_version_3_history_gains_load_records_and_keeps_its_chats(
    tmp_path: Path,
) -> None:
    path = tmp_path / conv.FILE_NAME
    old = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2, 3):  # the schema as the previous release made it
        conv._migrate(old, version)
    old.execute(
        "INSERT INTO conversations (title, system_prompt, created, updated) "
        "VALUES ('Capitals', '', 1, 1)"
    )
    old.execute(
        "INSERT INTO messages (conversation_id, role, text, created) "
        "VALUES (1, 'user', 'What is the capital of France?', 1)"
    )
    old.close()

    with conv.ConversationStore(path) as history:
        assert history.schema_version == conv.SCHEMA_VERSION == 4
        chat = history.get(1)
    assert chat.title == "Capitals"
    assert [m.text for m in chat.messages] == ["What is the capital of France?"]

    kept = store.LoadJournal(path)
    kept.add(records(1)[0])
    [back] = kept.records("cpu")
    assert (back.label, back.peak_ram_bytes) == ("float32", DEFAULT_MODEL_LOADS[0][4])
    assert back.id == 1


def test_a_load_records_its_estimate_and_what_it_cost(
    tiny_dir: Path, journal: store.LoadJournal
) -> None:
    loaded = load_tiny(tiny_dir, "nf4")
    try:
        [record] = journal.records()
        report = loaded.report
    finally:
        loader.unload(loaded)
    chosen = preset("nf4")
    row = estimate.estimate(
        str(tiny_dir), chosen.quant, chosen.load_options(ON_CPU), device=NO_GPU
    )
    assert (record.device, record.placement, record.label) == ("cpu", "cpu", "nf4")
    assert record.settings == chosen.quant.to_dict()
    assert record.options["device_map"] == "cpu"
    assert record.shape == {
        "architecture": "LlamaForCausalLM",
        "params": row.parameters,
        "layers": 2,
        "hidden": 64,
    }
    assert record.versions["torch"] and record.versions["bitsandbytes"]
    assert record.estimated_steady_bytes == row.model_bytes
    assert record.estimated_peak_bytes == row.formula_peak_bytes
    assert record.true_bytes == report.true_bytes
    # What the load holds once settled covers at least the unquantized embedding it
    # keeps in the checkpoint's pages; the peak is never below it.
    assert record.steady_ram_bytes >= report.mapped_bytes > 0
    assert record.peak_ram_bytes >= record.steady_ram_bytes
    assert record.steady_vram_bytes is None and record.peak_vram_bytes is None


def test_without_a_journal_nothing_is_measured_or_kept(tiny_dir: Path) -> None:
    previous = calibration.use_journal(None)
    try:
        loaded = load_tiny(tiny_dir, "fp32")
        loader.unload(loaded)
        assert calibration.records() == []
    finally:
        calibration.use_journal(previous)


# -- the calibration --


def test_three_loads_predict_the_fourth_peak_within_5_percent() -> None:
    cal = calibration.calibrate("cpu", list(reversed(records(3))), versions={})
    assert cal.calibrated and cal.loads == MIN_LOADS
    label, _, formula, _, actual = DEFAULT_MODEL_LOADS[3]
    predicted = cal.peak(formula)
    assert abs(predicted - actual) <= 0.05 * actual, (label, predicted, actual)
    assert cal.spread_pct is not None and cal.spread_pct <= 5.0
    assert cal.line() == (
        f"calibrated on this machine from 3 loads (±{cal.spread_pct:.1f}%)"
    )


def test_two_loads_are_not_enough_and_other_devices_do_not_count() -> None:
    two = calibration.calibrate("cpu", records(2), versions={})
    assert not two.calibrated
    assert two.peak(1000) == 1000
    assert two.line() == "not calibrated yet (2 of 3 loads on cpu)"
    gpu = calibration.calibrate("cuda:0 NVIDIA H100", records(3), versions={})
    assert gpu.loads == 0


def test_records_of_other_library_versions_do_not_count() -> None:
    old = records(3)
    for record in old:
        record.versions = {"torch": "2.0.0"}
    assert calibration.calibrate("cpu", old, versions={"torch": "2.13.0"}).loads == 0
    assert calibration.calibrate("cpu", old, versions={"torch": "2.0.0"}).loads == 3


def test_the_estimate_says_whether_it_is_calibrated(
    tiny_dir: Path, journal: store.LoadJournal
) -> None:
    chosen = preset("nf4")

    def row() -> estimate.Estimate:
        return estimate.estimate(
            str(tiny_dir), chosen.quant, chosen.load_options(ON_CPU), device=NO_GPU
        )

    first = row()
    assert first.calibration_text == "not calibrated yet (0 of 3 loads on cpu)"
    assert first.load_peak_bytes == first.formula_peak_bytes
    for record in records(3):
        journal.add(record)
    calibrated = row()
    cal = calibration.calibrate("cpu", journal.records("cpu"))
    assert calibrated.calibration_text.startswith(
        "calibrated on this machine from 3 loads (±"
    )
    assert calibrated.formula_peak_bytes == first.formula_peak_bytes
    assert calibrated.load_peak_bytes == max(
        calibrated.model_bytes, first.formula_peak_bytes + cal.peak_offset_bytes
    )
    assert calibrated.peak_terms[estimate.CALIBRATION_TERM] == (
        calibrated.load_peak_bytes - first.formula_peak_bytes
    )
    assert calibrated.to_dict()["calibration"] == calibrated.calibration_text


# -- a history that cannot take the record never fails the load --


def test_a_read_only_history_still_loads(
    tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / conv.FILE_NAME
    conv.ConversationStore(path).close()
    kept = store.LoadJournal(path)
    previous = calibration.use_journal(kept)
    try:
        with read_only(path), caplog.at_level(logging.WARNING):
            loaded = load_tiny(tiny_dir, "nf4")
            loader.unload(loaded)
            assert kept.records() == []
    finally:
        calibration.use_journal(previous)
    assert loaded.report.true_bytes > 0
    assert "the load record was not kept" in caplog.text
    assert "read-only" in caplog.text


def test_a_busy_or_unusable_history_still_loads(
    tiny_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store, "WRITE_WAIT_S", 0.2)
    path = tmp_path / conv.FILE_NAME
    conv.ConversationStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    folder = tmp_path / "folder.db"
    folder.mkdir()
    try:
        for target, why in ((path, "busy"), (folder, "is a folder")):
            previous = calibration.use_journal(store.LoadJournal(target))
            try:
                with caplog.at_level(logging.WARNING):
                    loaded = load_tiny(tiny_dir, "fp32")
                    loader.unload(loaded)
                    assert calibration.records() == []
            finally:
                calibration.use_journal(previous)
            assert loaded.report.true_bytes > 0
            assert why in caplog.text
            caplog.clear()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_record_round_trips_through_json() -> None:
    record = records(1)[0]
    assert LoadRecord.from_dict({**record.to_dict(), "later": 1}) == record


def test_the_peak_sampler_keeps_its_peak_across_a_pause() -> None:
    from core import memory

    size = 64 * 2**20
    with memory.PeakSampler() as sampler:
        block = b"x" * size  # written, so anonymous and resident
    assert sampler.rise is not None and sampler.rise >= size * 0.9
    peak = sampler.peak
    sampler.resume()
    del block
    sampler.pause()
    assert sampler.peak >= peak  # what the load held at its highest stays
