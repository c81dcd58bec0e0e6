"""History faults: a lock, a read-only file, a folder or read-only disk, bad ids, export.

| fault                                              | expected                              |
|----------------------------------------------------|---------------------------------------|
| another process holds the history locked           | reads go on; a write waits, then      |
|                                                    | "the history is busy (another Nibble?)" |
| the file is read-only (chmod 444, or immutable)    | opened read-only, a notice; nothing   |
|                                                    | set aside; --save-to-chat refused     |
| the file is a folder; on a read-only mount         | exit 2 with a hint, nothing left      |
| two answers written at once in one conversation    | each under its own question           |
| "école" searched, "École" stored                   | found (all of Unicode folds)          |
| chats show 99999999999999999999999                 | exit 2                                |
| chats export -o an existing file / the history     | refused (--force replaces the first)  |
| a full disk while exporting over an old file       | the old file intact, no temporary     |
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import main as cli
from core.store import conversations as conv
from core.store.conversations import ConversationStore
from tests.unwritable import read_only

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's history (two conversations), where the CLI in this process finds it."""
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / conv.FILE_NAME
    with ConversationStore(path) as store:
        first = store.create()
        store.add_message(first, "user", "Où est l'École polytechnique ?")
        store.add_answer(first, "À Palaiseau.", None)
        second = store.create()
        store.add_message(second, "user", "Wie schreibt man STRAẞE?")
    monkeypatch.setattr(conv, "database_path", lambda: path)
    monkeypatch.setattr(conv, "BUSY_WAIT_S", 0.5, raising=False)
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.run(args)
    out, err = capsys.readouterr()
    return code, out, err


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- a lock is not damage --


def test_a_locked_history_is_read_and_a_write_says_busy(
    history: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = files(history.parent)
    other = sqlite3.connect(history, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another Nibble in the middle of a write
    try:
        code, out, err = run(["chats", "list"], capsys)
        assert code == 0, err
        assert "polytechnique" in out and "STRAẞE" in out
        code, out, err = run(
            ["generate", str(tiny_dir), "--prompt", "hi", "--save-to-chat", "1"],
            capsys,
        )
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert code == 2
    assert "error: the history is busy (another Nibble?)" in err
    assert "Loading" not in err  # refused before the model loads
    assert not [n for n in files(history.parent) if ".damaged-" in n]
    assert [n for n in files(history.parent) if n in before] == before
    with ConversationStore(history) as store:
        assert store.notice is None
        assert len(store.list()) == 2


# -- read-only, a folder, a read-only disk --


def test_a_read_only_history_is_opened_read_only(
    history: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ConversationStore(history) as store:
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    content = history.read_bytes()
    with read_only(history):
        code, out, err = run(["chats", "list"], capsys)
        assert code == 0, err
        assert "polytechnique" in out
        assert "read-only" in err and "new answers won't be saved" in err
        code, out, err = run(["chats", "show", "1"], capsys)
        assert code == 0 and "À Palaiseau." in out
        code, out, err = run(
            ["generate", str(tiny_dir), "--prompt", "hi", "--save-to-chat", "1"],
            capsys,
        )
        assert code == 2
        assert "error: the conversation history is read-only" in err
        assert "Loading" not in err
    assert history.read_bytes() == content
    assert not [n for n in files(history.parent) if ".damaged-" in n]


def test_a_history_that_is_a_folder_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "conversations.db"
    path.mkdir()
    monkeypatch.setattr(conv, "database_path", lambda: path)
    code, _out, err = run(["chats", "list"], capsys)
    assert code == 2
    assert f"error: cannot open the conversation history: {path} is a folder" in err
    assert "hint:" in err
    assert files(tmp_path) == ["conversations.db"]
    assert list(path.iterdir()) == []


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs holding a history, remounted read-only (root only)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
            capture_output=True,
        ).returncode
    ):
        pytest.skip("mounting a file system is not allowed here")
    try:
        with ConversationStore(mount / conv.FILE_NAME) as store:
            store.add_message(store.create(), "user", "kept")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_history_on_a_read_only_disk_is_exit_2(
    read_only_mount: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = read_only_mount / conv.FILE_NAME
    monkeypatch.setattr(conv, "database_path", lambda: path)
    code, _out, err = run(["chats", "list"], capsys)
    assert code == 2
    assert f"error: cannot open the conversation history {path}" in err
    assert "read-only disk" in err and "hint:" in err
    assert files(read_only_mount) == [conv.FILE_NAME]


def test_the_window_starts_with_a_history_it_cannot_open(tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    path.mkdir()
    store = conv.open_or_in_memory(path)
    assert "is a folder" in (store.notice or "")
    assert "won't be kept" in (store.notice or "")
    store.add_message(store.create(), "user", "still answered")
    store.close()


# -- answers tied to their questions --


def test_answers_written_at_once_stay_under_their_questions(history: Path) -> None:
    with ConversationStore(history) as one, ConversationStore(history) as two:
        cid = one.create()
        first = one.add_message(cid, "user", "first question")
        second = two.add_message(cid, "user", "second question")
        two.add_answer(cid, "second answer", None, reply_to=second.id)
        one.add_answer(cid, "first answer", None, reply_to=first.id)
        chat = one.get(cid)
    assert [m.text for m in chat.messages] == [
        "first question",
        "first answer",
        "second question",
        "second answer",
    ]
    assert chat.messages[1].reply_to == first.id
    assert chat.messages[1].to_dict()["reply_to"] == first.id


def test_two_generate_runs_in_one_chat_pair_their_answers(
    history: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two `generate --save-to-chat 1` at once: each answer under its own question."""
    from cli.chats import keep_answer, save_to_chat
    from core.generation.decode import GenerationStats
    from core.model import catalog, loader
    from core.settings import GenerationSettings, LoadOptions, QuantSettings

    loaded = loader.load(
        catalog.resolve(str(tiny_dir)), QuantSettings(), LoadOptions(device_map="cpu")
    )
    try:
        gen = GenerationSettings(seed=1)
        one = save_to_chat("1", None).ask("Q one", gen, loaded=loaded)
        two = save_to_chat("1", None).ask("Q two", gen, loaded=loaded)
        for turn, text in ((two, "A two"), (one, "A one")):
            turn.add(text)
            turn.finish(GenerationStats())
            keep_answer(turn)
    finally:
        loader.unload(loaded)
    code, out, err = run(["chats", "show", "1", "--json"], capsys)
    assert code == 0, err
    texts = [m["text"] for m in json.loads(out)["messages"]]
    assert texts[-4:] == ["Q one", "A one", "Q two", "A two"]


def test_a_history_of_version_2_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    with ConversationStore(path) as store:
        cid = store.create()
        store.add_message(cid, "user", "hi")
        store.add_answer(cid, "hello", None)
    old = sqlite3.connect(path)
    old.execute("ALTER TABLE messages DROP COLUMN reply_to")
    old.execute("PRAGMA user_version = 2")
    old.commit()
    old.close()
    with ConversationStore(path) as store:
        assert store.notice is None
        assert [m.text for m in store.get(cid).messages] == ["hi", "hello"]
        version = store._conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == conv.SCHEMA_VERSION


# -- search and ids --


@pytest.mark.parametrize(
    ("needle", "found"),
    [("école", 1), ("ÉCOLE", 1), ("strasse", 2), ("straße", 2), ("palaiseau", 1)],
)
def test_search_folds_case_for_all_of_unicode(
    history: Path, needle: str, found: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["chats", "search", needle], capsys)
    assert code == 0, err
    assert [int(line.split()[0]) for line in out.splitlines()] == [found]


def test_snippet_maps_a_folded_match_back() -> None:
    text = "x" * 100 + " Die STRAẞE ist lang, sehr lang."
    assert "STRAẞE ist lang" in conv.snippet(text, "strasse")


@pytest.mark.parametrize("ident", ["99999999999999999999999", "-1", "0", "1e3"])
def test_chats_show_with_an_impossible_id_is_exit_2(
    history: Path, ident: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(["chats", "show", ident], capsys)
    assert code == 2
    assert "is not a conversation id" in err
    assert "unexpected" not in err


# -- export --


def test_export_refuses_to_replace_a_file_without_force(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "chat.md"
    out_file.write_text("my notes\n")
    code, _out, err = run(["chats", "export", "1", "--md", "-o", str(out_file)], capsys)
    assert code == 2
    assert "already exists" in err and "--force" in err
    assert out_file.read_text() == "my notes\n"
    code, _out, err = run(
        ["chats", "export", "1", "--md", "-o", str(out_file), "--force"], capsys
    )
    assert code == 0, err
    assert "À Palaiseau." in out_file.read_text()
    assert files(tmp_path) == ["chat.md", "data"]


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_export_refuses_the_history_itself(
    history: Path, suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "innocent.json"
    link.symlink_to(f"{history}{suffix}")
    for target in (f"{history}{suffix}", str(link)):
        code, _out, err = run(
            ["chats", "export", "all", "--json", "-o", target, "--force"], capsys
        )
        assert code == 2
        assert "is the conversation history itself" in err
    with ConversationStore(history) as store:
        assert store.notice is None
        assert len(store.list()) == 2


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only), to fill for real."""
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
            capture_output=True,
        ).returncode
    ):
        pytest.skip("mounting a file system is not allowed here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_exporting_keeps_the_old_file(
    history: Path, tiny_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ConversationStore(history) as store:
        cid = store.create()
        store.add_message(cid, "user", "long " * 80_000)  # 400 KB, on a 256 KiB disk
    old = tiny_disk / "all.json"
    old.write_text('{"old": true}\n')
    code, _out, err = run(
        ["chats", "export", "all", "--json", "-o", str(old), "--force"], capsys
    )
    assert code == 2
    assert "ran out of space" in err and "was left as it was" in err
    assert old.read_text() == '{"old": true}\n'
    assert files(tiny_disk) == ["all.json"]


def test_export_in_a_subprocess_says_nothing_unexpected(history: Path) -> None:
    """The same refusal from the real command line (no in-process patching of argv)."""
    env = {**os.environ, "NIBBLE_CONVERSATIONS_DB": str(history)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "chats", "export", "1", "--json",
         "-o", str(history)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert "is the conversation history itself" in done.stderr
