"""The headless CLI: what a user types and what they read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


def nibble(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
        cwd=ROOT,
    )


def run_here(
    capsys: pytest.CaptureFixture[str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`nibble(*args)` in this process: the same parser, command and exit code."""
    capsys.readouterr()
    try:
        code = cli.run(list(args))
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["nibble", *args], code, out, err)


def test_generate_json(tiny_dir: Path) -> None:
    result = nibble(
        "generate", str(tiny_dir), "--quant", "nf4", "--greedy", "--device-map",
        "cpu", "--max-new-tokens", "8", "--prompt", "Hi", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["stats"]) >= {
        "prompt_tokens",
        "new_tokens",
        "ttft_s",
        "tokens_per_s",
    }
    assert data["stats"]["new_tokens"] == 8
    assert data["stats"]["stop_reason"] == "max tokens"
    report = data["report"]
    assert report["quantized_linear_modules"] == {"Linear4bit": 14, "Linear8bitLt": 0}
    assert report["device_map"] == {"(all)": "cpu"}
    assert report["true_bytes"] > report["footprint_bytes"] > 0
    assert data["settings"]["mode"] == "4bit"
    assert data["settings"]["bnb_4bit_quant_type"] == "nf4"
    assert isinstance(data["text"], str)


def test_generate_streams_text_and_stats_to_stderr(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process: the subprocess above already checks what only a fresh one can.
    code = cli.run([
        "generate", str(tiny_dir), "--set", "mode=8bit", "--set", "llm_int8_threshold=6",
        "--greedy", "--max-new-tokens", "4", "--prompt", "Hi",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "tokens · max tokens" in err
    assert "int8" in err


@pytest.mark.slow
def test_generate_default_answers_paris() -> None:
    result = nibble(
        "generate", "default", "--quant", "nf4", "--greedy", "--max-new-tokens", "16",
        "--prompt", "What is the capital of France?",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "/no/such/folder", "--prompt", "hi"], "error: folder not found"),
        (["generate", "default", "--quant", "nf5", "--prompt", "hi"], "unknown preset"),
        (
            ["generate", "default", "--set", "mode=4bit", "--set",
             "bnb_4bit_quant_type=NF4", "--prompt", "hi"],
            "must be 'nf4' or 'fp4'",
        ),
        (["snippet", "--set", "bnb_8bit_compute_dtype=float16"], "not a BitsAndBytesConfig"),
        (["snippet", "--set", "threshold"], "has no '='"),
        (["generate", "default", "--prompt", "  "], "the prompt is empty"),
        (["generate", "default", "--device-map", "gpu", "--prompt", "hi"], "device map"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_message_and_hint(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_here(capsys, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "hint: " in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_input_in_a_fresh_process_exits_2() -> None:
    result = nibble("generate", "/no/such/folder", "--prompt", "hi")
    assert result.returncode == 2
    assert "error: folder not found" in result.stderr
    assert "hint: " in result.stderr
    assert "Traceback" not in result.stderr


def test_snippet_prints_runnable_code() -> None:
    result = nibble("snippet", "org/model", "--quant", "nf4-dq")
    assert result.returncode == 0
    assert "bnb_4bit_use_double_quant=True," in result.stdout
    compile(result.stdout, "snippet", "exec")


def test_models_lists_the_default(default_dir: Path) -> None:
    result = nibble("models", "--json")
    assert result.returncode == 0
    models = json.loads(result.stdout)
    assert models[0]["kind"] == "default"
    assert models[0]["name"] == "SmolLM2-135M-Instruct"


def test_generate_json_schema_answer_matches_and_is_recorded(
    tmp_path: Path,
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from core.store import conversations
    from core.store.conversations import ConversationStore

    monkeypatch.setattr(
        conversations, "database_path", lambda: tmp_path / "conversations.db"
    )
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    (tmp_path / "answer.json").write_text(json.dumps(schema))
    code = cli.run([
        "generate", str(tiny_dir), "--quant", "nf4", "--temperature", "0.8",
        "--max-new-tokens", "40", "--prompt", "Hi", "--json-schema",
        str(tmp_path / "answer.json"), "--save-to-chat", "--json",
    ])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    answer = json.loads(data["text"])  # a random model, held to the schema
    assert isinstance(answer["ok"], bool) and answer["n"] in (1, 2, 3)
    assert data["constraint"] == {
        "kind": "json_schema",
        "name": "answer",
        "schema": schema,
    }
    with ConversationStore(tmp_path / "conversations.db") as store:
        chat = store.get(data["conversation_id"])
    provenance = chat.messages[-1].provenance
    assert provenance.constraint == data["constraint"]
    assert any(
        line.startswith("Reply as: JSON schema") for line in provenance.describe()
    )


def test_a_json_answer_cut_by_max_tokens_is_said_and_lookup_off_before_the_load(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cut JSON answer exited 0 with no word; prompt lookup under a grammar was
    only said after the answer."""
    code = cli.run([
        "generate", str(tiny_dir), "--quant", "nf4", "--greedy", "--json-object",
        "--prompt-lookup", "--max-new-tokens", "3", "--prompt", "Hi",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    lookup = "note: prompt lookup is off for answers held to a grammar"
    assert err.count(lookup) == 1
    assert err.index(lookup) < err.index("Loading")
    assert out.startswith("{")
    assert (
        "note: the answer was cut at 3 tokens, before the JSON object was complete: "
        "raise --max-new-tokens" in err
    )


def test_generate_refuses_a_schema_it_cannot_enforce_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s.json").write_text('{"type": "object", "if": {}, "then": {}}')
    code = cli.run(["generate", "no-such-model", "--json-schema", str(tmp_path / "s.json"),
                    "--prompt", "Hi"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert 'Unimplemented keys: ["if", "then"]' in err
    assert "Traceback" not in err
