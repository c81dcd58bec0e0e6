"""The session file: round trip, recent folders, corrupt files kept as .bak."""

from __future__ import annotations

import json

from core.settings import GenerationSettings, LoadOptions, QuantSettings, preset
from core.store import session as session_mod
from gui.main_window import MainWindow


def test_missing_file_gives_defaults_silently(tmp_path):
    session, notice = session_mod.load_session(tmp_path / "session.json")
    assert notice is None
    assert session.quant == preset("nf4").quant
    assert session.model is None


def test_round_trip(tmp_path):
    path = tmp_path / "session.json"
    session = session_mod.Session(
        model={"kind": "folder", "name": "m", "path": "/models/m", "repo_id": None},
        quant=QuantSettings(mode="8bit", llm_int8_threshold=4.0),
        options=LoadOptions(device_map="cpu", max_memory={"cpu": "3GiB"}),
        generation=GenerationSettings(max_new_tokens=64, seed=7, greedy=True),
        system_prompt="Be brief.",
        raw_mode=True,
    )
    for i in range(12):
        session.add_recent(f"/models/{i}")
    session.add_recent("/models/3")
    session_mod.save_session(session, path)
    loaded, notice = session_mod.load_session(path)
    assert notice is None
    assert loaded == session
    assert loaded.recent_folders[0] == "/models/3"
    assert len(loaded.recent_folders) == session_mod.MAX_RECENT
    assert json.loads(path.read_text())["schema_version"] == session_mod.SCHEMA_VERSION


def test_corrupt_file_gives_defaults_notice_and_backup(tmp_path):
    path = tmp_path / "session.json"
    path.write_text("{not json")
    session, notice = session_mod.load_session(path)
    assert session == session_mod.Session()
    assert "could not be read" in notice
    assert str(path) + ".bak" in notice
    assert (tmp_path / "session.json.bak").read_text() == "{not json"
    assert not path.exists()


def test_bad_values_and_newer_versions_are_corrupt(tmp_path):
    path = tmp_path / "session.json"
    cases = [
        {"schema_version": 1, "quant": {"bnb_4bit_quant_type": "int4"}},
        {"schema_version": 99},
        {"schema_version": 1, "recent_folders": "nope"},
        [1, 2, 3],
    ]
    for data in cases:
        path.write_text(json.dumps(data))
        session, notice = session_mod.load_session(path)
        assert session == session_mod.Session()
        assert notice and "started from defaults" in notice
        assert (tmp_path / "session.json.bak").exists()


def test_ref_from_dict():
    assert session_mod.ref_from_dict(None).kind == "default"
    ref = session_mod.ref_from_dict({"kind": "folder", "name": "x", "path": "/a/x"})
    assert (ref.kind, ref.name, str(ref.path)) == ("folder", "x", "/a/x")


def test_window_restores_session_and_shows_notice(qtbot, config_dir):
    session = session_mod.Session(
        quant=QuantSettings(mode="8bit", llm_int8_threshold=3.0),
        generation=GenerationSettings(max_new_tokens=99, top_k=7),
        system_prompt="Answer in French.",
        recent_folders=["/models/alpha"],
    )
    window = MainWindow(session, "The saved session could not be read", False, False)
    qtbot.addWidget(window)
    assert window.settings_panel.quant_settings() == session.quant
    assert window.chat.generation_settings().max_new_tokens == 99
    assert window.chat.generation_settings().top_k == 7
    assert window.chat.system_edit.toPlainText() == "Answer in French."
    assert "alpha" in [r.name for r in window.picker.refs()]
    qtbot.waitUntil(lambda: "could not be read" in window.statusBar().currentMessage())
    window.close()
    saved, notice = session_mod.load_session()
    assert notice is None
    assert saved.quant == session.quant
    assert saved.system_prompt == "Answer in French."
    assert (config_dir / "window.ini").exists()
