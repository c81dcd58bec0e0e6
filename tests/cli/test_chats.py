"""`python main.py chats ...` and `generate --save-to-chat`, as a user types them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.settings import LoadOptions, preset
from core.store.conversations import ConversationStore
from core.store.provenance import Provenance

ROOT = Path(__file__).resolve().parents[2]


def nibble(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python main.py ARGS` in a fresh process, its history in `data`."""
    env = {**os.environ, "NIBBLE_DATA_DIR": str(data)}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture
def chats(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The same command run in this process (a fresh one costs a second or more
    each); `test_chats_list_show_search` runs one in a fresh process."""
    from cli import main as cli
    from core.store import conversations

    def run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(
            conversations, "database_path", lambda: data / conversations.FILE_NAME
        )
        capsys.readouterr()
        try:
            code = cli.run(list(args))
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["nibble", *args], code, out, err)

    return run


def provenance(name: str) -> Provenance:
    return Provenance(
        model_name="SmolLM2-135M-Instruct",
        model_kind="default",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        quant=preset(name).quant.to_dict(),
        options=LoadOptions().to_dict(),
        generation={"seed": 3},
        seed=3,
        stats={"new_tokens": 5, "tokens_per_s": 20.0, "stop_reason": "eos"},
        true_bytes=166_000_000,
    )


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """A data dir holding two conversations, one answered twice."""
    with ConversationStore(tmp_path / "conversations.db") as store:
        first = store.create()
        store.add_message(first, "user", "What is the capital of France?")
        answer = store.add_answer(first, "Paris.", provenance("nf4"))
        store.add_variant(answer.id, "It is Paris.", provenance("int8"))
        second = store.create(system_prompt="Be brief.")
        store.add_message(second, "user", "Name a colour")
    return tmp_path


def test_chats_list_show_search(history: Path, chats) -> None:
    listed = nibble(history, "chats", "list")  # a fresh process, as a user runs it
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[0] == "2" and lines[0].endswith("Name a colour")
    assert lines[1].endswith("What is the capital of France?")
    data = json.loads(chats(history, "chats", "list", "--json").stdout)
    assert [c["id"] for c in data] == [2, 1]

    shown = chats(history, "chats", "show", "1")
    assert shown.returncode == 0, shown.stderr
    assert (
        "Nibble [int8 · SmolLM2-135M] (variant 2 of 2):\nIt is Paris." in shown.stdout
    )
    assert "20.0 tok/s · 5 tokens · eos" in shown.stdout

    found = chats(history, "chats", "search", "colour")
    assert found.stdout.split()[0] == "2"


def test_chats_export_markdown_json_and_all(
    history: Path, tmp_path: Path, chats
) -> None:
    md = chats(history, "chats", "export", "1", "--md")
    assert md.returncode == 0, md.stderr
    assert "## Answer · `nf4 · SmolLM2-135M` · variant 1 of 2" in md.stdout
    assert "`int8 · SmolLM2-135M` · variant 2 of 2 (shown)" in md.stdout
    out = tmp_path / "one.json"
    done = chats(history, "chats", "export", "1", "--json", "-o", str(out))
    assert done.returncode == 0, done.stderr
    one = json.loads(out.read_text())
    assert one["conversation"]["messages"][1]["active_variant"] == 1
    every = json.loads(chats(history, "chats", "export", "all", "--json").stdout)
    assert [c["title"] for c in every["conversations"]] == [
        "What is the capital of France?",
        "Name a colour",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chats", "show", "9"], "error: no conversation 9"),
        (["chats", "show", "abc"], "is not a conversation id"),
        (["chats", "export", "1"], "error: pick a format"),
        (["chats", "export", "all", "--md"], "export as one JSON file"),
    ],
)
def test_chats_bad_input_says_why(
    history: Path, args: list[str], message: str, chats
) -> None:
    result = chats(history, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_saves_to_a_new_chat_then_continues_it(
    tmp_path: Path,
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli import main as cli
    from core.store import conversations

    # In this process (two loads cost a second, two fresh processes ten); the file
    # is the one `chats` reads in the tests above.
    monkeypatch.setattr(
        conversations, "database_path", lambda: tmp_path / "conversations.db"
    )
    common = ["--quant", "nf4", "--greedy", "--max-new-tokens", "4"]
    code = cli.run([
        "generate", str(tiny_dir), *common, "--prompt", "Hi",
        "--system", "Be brief.", "--save-to-chat", "--json",
    ])  # fmt: skip
    first = capsys.readouterr()
    assert code == 0, first.err
    cid = json.loads(first.out)["conversation_id"]
    code = cli.run([
        "generate", str(tiny_dir), *common, "--prompt", "Again",
        "--save-to-chat", str(cid), "--json",
    ])  # fmt: skip
    second = capsys.readouterr()
    assert code == 0, second.err
    assert f"saved to conversation {cid}" in second.err
    with ConversationStore(tmp_path / "conversations.db") as store:
        chat = store.get(cid)
    assert chat.system_prompt == "Be brief."
    assert chat.title == "Hi"
    assert [m.role for m in chat.messages] == ["user", "assistant"] * 2
    answer = chat.messages[3]
    assert answer.text == json.loads(second.out)["text"]
    prov = answer.provenance
    assert prov is not None
    assert prov.model_name == "tiny-llama"
    assert prov.model_path == str(tiny_dir)
    assert prov.quant_settings() == preset("nf4").quant
    assert prov.generation["greedy"] is True
    assert prov.seed is not None
    assert prov.stats["new_tokens"] == 4
    assert prov.versions["bitsandbytes"]
    # The second question was asked with the first exchange before it.
    first_prompt = json.loads(first.out)["stats"]["prompt_tokens"]
    assert prov.stats["prompt_tokens"] > first_prompt


@pytest.mark.slow
def test_killed_mid_answer_keeps_the_conversation(
    tmp_path: Path, default_dir: Path
) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / default_dir.name).symlink_to(default_dir)
    with ConversationStore(data / "conversations.db") as store:
        cid = store.create()
        store.add_message(cid, "user", "Hello")
        store.add_answer(cid, "Hi there.", provenance("nf4"))
    env = {**os.environ, "NIBBLE_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable, str(ROOT / "main.py"), "generate", "default",
            "--quant", "nf4", "--max-new-tokens", "2000", "--temperature", "1.0",
            "--prompt", "Write a very long story about a lighthouse.",
            "--save-to-chat", str(cid),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(1)  # the answer has started streaming
        assert first, "the answer never started"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with ConversationStore(data / "conversations.db") as store:
        assert store.notice is None
        chat = store.get(cid)
        check = store._conn.execute("PRAGMA integrity_check").fetchone()[0]
    assert check == "ok"
    assert [(m.role, m.text) for m in chat.messages] == [
        ("user", "Hello"),
        ("assistant", "Hi there."),
        ("user", "Write a very long story about a lighthouse."),
    ]  # the question is kept; the partial answer is absent
