"""The fault matrix: what a user, a full disk or a signal can do, and what Nibble does.

| fault                                         | expected                            |
|-----------------------------------------------|-------------------------------------|
| damaged session.json (each kind below)        | defaults, notice, set aside as .bak |
| session.json → /dev/zero, a FIFO, > 1 MiB     | same, without blocking or filling RAM|
| Ctrl+C / SIGTERM in the first conversion      | exit 130, temporary folder removed  |
| Ctrl+C during a load                          | exit 130, no abort                  |
| SIGKILL in a conversion or an export          | leftover swept at the next run      |
| bytes flipped in the default model            | hash mismatch → rebuilt             |
| invalid UTF-8 on stdin or in --prompt         | replaced, answered, exit 0          |
| 20 MB prompt                                  | refused before loading, exit 2      |
| full disk / read-only while writing weights   | plain message, exit 2               |
| export --force onto the source, its parent,   | refused, exit 2                     |
|   the current folder, home; onto a symlink    | link replaced, nothing left behind  |
| Ctrl+C / SIGTERM during generate              | partial answer, "stopped", exit 130 |
| Ctrl+C during compare                         | finished rows printed + saved, 130  |
| compare / estimate: some rows fail, all fail  | last line counts them; exit 3 / 1   |
| monitor --pid -1 / of a process that exits    | exit 2 / a note and exit 0          |
| `| head` closing the pipe                     | quiet exit                          |
| unknown llm_int8_skip_modules, cpu cap on CPU | refused with the nearest names      |
| stderr not a terminal                         | a line per stage, no \\r           |

Signal tests run the real CLI in a subprocess and send the signal at a known phase
(a temporary folder appears, a stage line or the first token is printed). Those of
the first conversion are in tests/faults/test_conversion.py, those of a load, an
export, an answer and a comparison in tests/faults/test_interrupts.py: each file
runs whole on one pytest worker, and these hold minutes of loads.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cli import generate, output
from cli import main as cli
from core import interrupt
from core.errors import ExportError, NibbleError
from core.generation import decode
from core.lab import export
from core.model import default_model
from core.model.catalog import folder_ref
from core.settings import LoadOptions, preset
from core.store import session
from tests.faults.cli_process import nibble

ROOT = Path(__file__).resolve().parents[1]
TEMP = default_model.DEFAULT_NAME


# -- 1. a damaged session.json --

DAMAGED = {
    "wrong type": b'{"schema_version":1,"generation":"fast"}',
    "options list": b'{"schema_version":1,"options":[1,2]}',
    "bad utf-8": b'{"schema_version":1,"system_prompt":"hi \xff\xfe"}',
    "lone surrogate": b'{"schema_version":1,"system_prompt":"\\udc80"}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "path not text": b'{"schema_version":1,"model":{"kind":"folder","path":123}}',
    "raw_mode not a flag": b'{"schema_version":1,"raw_mode":"maybe"}',
    "too large": b'{"schema_version":1,"system_prompt":"' + b"x" * 2_000_000 + b'"}',
    "not json": b"\x00\x01",
}


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_session_is_set_aside(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "session.json"
    path.write_bytes(content)
    loaded, notice = session.load_session(path)
    assert loaded.to_dict() == session.Session().to_dict()
    assert notice is not None and "could not be read" in notice
    assert "\n" not in notice
    assert not path.exists()
    assert (tmp_path / "session.json.bak").read_bytes() == content


def _load_with_deadline(path: Path) -> tuple[session.Session, str | None]:
    result: list[tuple[session.Session, str | None]] = []
    thread = threading.Thread(
        target=lambda: result.append(session.load_session(path)), daemon=True
    )
    thread.start()
    thread.join(20)
    assert result, "reading the session blocked"
    return result[0]


def test_session_linked_to_dev_zero_is_not_read_to_the_end(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    path.symlink_to("/dev/zero")
    _, notice = _load_with_deadline(path)
    assert notice is not None and "not a regular file" in notice
    assert (tmp_path / "session.json.bak").is_symlink()
    assert not path.exists()


def test_session_that_is_a_fifo_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    os.mkfifo(path)
    loaded, notice = _load_with_deadline(path)
    assert notice is not None and "not a regular file" in notice
    assert loaded.raw_mode is False


@pytest.mark.parametrize(("text", "value"), [('"false"', False), ('"true"', True)])
def test_raw_mode_written_as_a_string(tmp_path: Path, text: str, value: bool) -> None:
    path = tmp_path / "session.json"
    path.write_text(f'{{"schema_version": 1, "raw_mode": {text}}}')
    loaded, notice = session.load_session(path)
    assert notice is None
    assert loaded.raw_mode is value


# -- 4. bit-level damage to the converted default model --


def _copy(default_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(default_dir, copy)
    assert default_model._damage(copy) == ""
    return copy


def _same_mtime_later(file: Path) -> None:
    """Make sure the edit shows as a new mtime even on a coarse clock."""
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_flipped_bytes_in_the_weights_are_found(
    default_dir: Path, tmp_path: Path
) -> None:
    copy = _copy(default_dir, tmp_path)
    weights = copy / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.seek(weights.stat().st_size // 2)
        chunk = fh.read(64)
        fh.seek(-64, os.SEEK_CUR)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    _same_mtime_later(weights)
    assert default_model.is_ready(copy)  # the cheap check cannot see it...
    assert default_model._damage(copy) == "model.safetensors does not match its hash"


def test_changed_config_of_the_same_size_is_found(
    default_dir: Path, tmp_path: Path
) -> None:
    copy = _copy(default_dir, tmp_path)
    config = copy / "config.json"
    text = config.read_text()
    assert '"num_hidden_layers": 30' in text
    config.write_text(
        text.replace('"num_hidden_layers": 30', '"num_hidden_layers": 31')
    )
    assert default_model._damage(copy) == "config.json does not match its hash"


def test_hashes_are_checked_once_per_change(
    default_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _copy(default_dir, tmp_path)
    monkeypatch.setattr(
        default_model, "sha256", lambda file: pytest.fail("hashed again")
    )
    assert default_model._damage(copy) == ""


def test_damaged_copy_is_rebuilt_on_load(
    default_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _copy(default_dir, tmp_path)
    (copy / "config.json").write_text(
        (copy / "config.json").read_text().replace("30", "31", 1)
    )
    rebuilt: list[Path] = []
    monkeypatch.setattr(default_model, "model_dir", lambda: copy)
    monkeypatch.setattr(
        default_model, "convert", lambda target, progress=None: rebuilt.append(target)
    )
    default_model.ensure()
    assert rebuilt == [copy]


def test_self_test_failure_offers_the_rebuild(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import selftest

    monkeypatch.setattr(selftest, "check", lambda: "loading the default model in nf4")
    assert cli.run(["self-test"]) == 1
    assert "python main.py --self-test --rebuild" in capsys.readouterr().err


# -- 5. invalid UTF-8, and big prompts --


def test_invalid_utf8_on_stdin_is_answered(tiny_dir: Path) -> None:
    done = nibble(
        "generate", str(tiny_dir), "--max-new-tokens", "2", "--greedy", "--json",
        stdin=b"Hi \xff\xfe there",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["stats"]["new_tokens"] >= 1


def test_invalid_utf8_in_prompt_argument_is_answered(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the interpreter makes of the bytes b"\xff" in argv (a lone surrogate),
    # handed to the command in this process; stdin above goes through a real one.
    prompt = os.fsdecode(b"Hi \xff there")
    code = cli.run(
        [
            "generate",
            str(tiny_dir),
            "--max-new-tokens",
            "2",
            "--greedy",
            "--prompt",
            prompt,
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "unexpected" not in err


def test_huge_prompt_on_stdin_is_refused_before_loading() -> None:
    done = nibble("generate", "/no/such/model", stdin=b"word " * 4_000_000)
    assert done.returncode == 2
    assert b"error: the prompt on stdin is larger than 8.0 MiB" in done.stderr


def test_long_prompt_is_measured_on_a_bounded_prefix() -> None:
    seen: list[int] = []

    def tokenizer(text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        seen.append(len(text))
        return {"input_ids": [0] * len(text.split())}

    with pytest.raises(NibbleError, match="longer than the model's context of 100"):
        decode.check_length(tokenizer, "word " * 1_000_000, 100)
    assert seen == [100 * decode.MAX_CHARS_PER_TOKEN]


def test_eval_file_is_read_bounded(tmp_path: Path) -> None:
    from cli import textio

    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(NibbleError, match=r"larger than 1\.0 KiB"):
        textio.read_file(big, limit=1024)
    assert textio.read_file(big, limit=4096) == "x" * 2048


# -- 6. a full disk or a read-only folder while writing weights --

STORAGE_FULL = (
    "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
    '"No space left on device" })'
)


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError

    def full(*args: object, **kwargs: object) -> None:
        raise SafetensorError(STORAGE_FULL)

    monkeypatch.setattr(mu, "safe_save_file", full)


def test_full_disk_during_export_is_a_plain_error(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _full_disk(monkeypatch)
    out = tmp_path / "out"
    assert cli.run(["export", str(tiny_dir), "--quant", "nf4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: the disk holding {tmp_path} ran full while saving" in err
    assert "unexpected" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_full_disk_during_conversion_is_a_plain_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _full_disk(monkeypatch)
    monkeypatch.setenv("NIBBLE_DATA_DIR", str(tmp_path))
    with pytest.raises(NibbleError, match="ran out of space while writing to") as info:
        default_model.ensure()
    assert "free some disk space" in info.value.hint
    assert list((tmp_path / "models").iterdir()) == []


def test_write_errors_are_named() -> None:
    from core.errors import write_error

    assert (
        "ran out of space" in write_error(OSError(errno.ENOSPC, "full"), "/x").message
    )
    assert "read-only" in write_error(OSError(errno.EROFS, "ro"), "/x").message
    assert "permission denied" in write_error(PermissionError(13, "no"), "/x").message
    assert write_error(ValueError("a bug"), "/x") is None


def test_read_only_data_dir_for_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "models" / TEMP

    def denied(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(target.parent))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(NibbleError, match="the file system is read-only"):
        default_model.convert(target)


# -- 7. export --force onto folders it must not replace --


@pytest.fixture
def source_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    parent = tmp_path / "models"
    parent.mkdir()
    return Path(shutil.copytree(tiny_dir, parent / "tiny"))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("source", "is the model's own folder"),
        ("parent", "holds the model being saved"),
        ("cwd", "is the current folder"),
        ("home", "is your home folder"),
        ("root", "is a filesystem root"),
    ],
)
def test_force_refuses_dangerous_targets(
    source_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    target: str, message: str,
) -> None:  # fmt: skip
    work, home = tmp_path / "work", tmp_path / "home"
    for folder in (work, home):
        folder.mkdir()
        (folder / "mine.txt").write_text("keep")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    out = {
        "source": source_copy,
        "parent": source_copy.parent,
        "cwd": Path("."),
        "home": Path("~"),
        "root": Path("/"),
    }[target]
    with pytest.raises(ExportError, match=message):
        export.check_target(out, force=True, source=source_copy)
    assert (work / "mine.txt").read_text() == "keep"


def test_cli_export_force_onto_the_source_is_refused(source_copy: Path) -> None:
    done = nibble(
        "export", str(source_copy), "--quant", "nf4", "--out",
        str(source_copy.parent), "--force",
    )  # fmt: skip
    assert done.returncode == 2
    assert b"holds the model being saved" in done.stderr
    assert sorted(p.name for p in source_copy.parent.iterdir()) == ["tiny"]


def test_force_onto_a_symlink_replaces_the_link_only(
    tiny_dir: Path, tmp_path: Path
) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(kept)
    export.export(folder_ref(tiny_dir), preset("nf4").quant, link, force=True)
    assert link.is_dir() and not link.is_symlink()
    assert (link / "config.json").is_file()
    assert (kept / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "link"]


def test_sweep_leaves_live_processes_and_other_folders(tmp_path: Path) -> None:
    dead, alive = 999_999_991, os.getppid()
    for name in (f".a.tmp-{dead}", f".b.nibble-tmp-{dead}", f".c.nibble-old-{dead}",
                 f".d.tmp-{alive}", "e.tmp-1", ".f.tmp-x"):  # fmt: skip
        (tmp_path / name).mkdir()
    removed = interrupt.sweep_stale(tmp_path, alive=lambda pid: pid == alive)
    assert sorted(p.name for p in removed) == [
        f".a.tmp-{dead}",
        f".b.nibble-tmp-{dead}",
        f".c.nibble-old-{dead}",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".d.tmp-{alive}",
        ".f.tmp-x",
        "e.tmp-1",
    ]


# -- several units of work: some fail, all fail --


def _loads_fail(monkeypatch: pytest.MonkeyPatch, *modes: str) -> None:
    """Loads in these modes fail as a model too large for this machine does."""
    from core.errors import LoadError
    from core.lab import compare

    real = compare.loader.load

    def load(ref, quant=None, options=None, progress=None, cancel=None):  # type: ignore[no-untyped-def]
        if quant is not None and quant.mode in modes:
            raise LoadError("the model does not fit", "pick a smaller preset")
        return real(ref, quant, options, progress, cancel)

    monkeypatch.setattr(compare.loader, "load", load)


def test_compare_where_every_row_fails_does_not_exit_0(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _loads_fail(monkeypatch, "4bit", "8bit")
    code = cli.run(["compare", str(tiny_dir), "--quant", "nf4,int8", "--tokens", "2"])
    assert code == output.EXIT_UNEXPECTED == 1
    err = capsys.readouterr().err.splitlines()
    assert "warning: row nf4 failed: the model does not fit" in err
    assert err[-2:] == ["error: all 2 rows failed", "hint: pick a smaller preset"]


@pytest.mark.parametrize("as_json", [False, True])
def test_compare_where_some_rows_fail_says_how_many(
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    as_json: bool,
) -> None:
    _loads_fail(monkeypatch, "8bit")
    args = ["compare", str(tiny_dir), "--quant", "fp32,int8", "--tokens", "2"]
    code = cli.run([*args, "--eval-tokens", "40", *(["--json"] if as_json else [])])
    assert code == output.EXIT_PARTIAL == 3
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == "1 of 2 rows failed"
    if as_json:
        rows = json.loads(out)["rows"]
        assert [r["status"] for r in rows] == ["ok", "failed"]
    else:
        assert "fp32: " in out and "failed: the model does not fit" in out


def test_estimate_that_counts_no_row_does_not_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {"model_type": "no-such-architecture", "hidden_size": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert cli.run(["estimate", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "weights not estimated" in out  # the table still says why
    assert err.splitlines()[0] == "error: all 8 rows have no estimate"


# -- 9. monitor --pid --


def test_monitor_negative_pid_is_refused() -> None:
    done = nibble("monitor", "--pid", "-1", "--seconds", "1")
    assert done.returncode == 2
    assert b"error: --pid -1 is not a process ID" in done.stderr


def test_monitor_of_a_process_that_ends() -> None:
    sleeper = subprocess.Popen(["sleep", "600"])
    reaper = threading.Thread(target=sleeper.wait)  # as its parent would, at once
    reaper.start()
    monitor = subprocess.Popen(
        [
            *(sys.executable, "main.py", "monitor", "--pid", str(sleeper.pid)),
            *("--seconds", "120", "--interval", "0.25"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert monitor.stdout is not None
        monitor.stdout.readline()  # it watches the process now ...
        sleeper.kill()  # ... which ends under its eyes
        _, err = monitor.communicate(timeout=120)
    finally:
        sleeper.kill()
        monitor.kill()
        reaper.join()
    assert monitor.returncode == 0, err.decode()
    assert f"process {sleeper.pid} has ended".encode() in err
    assert b"unexpected" not in err


# -- rough edges --


def test_hints_point_to_debug_not_a_details_button() -> None:
    assert (
        output.cli_hint("see Details for more")
        == "run again with --debug for the details"
    )
    assert output.cli_hint("see the log") == "run again with --debug for the details"
    assert output.cli_hint("pick nf4") == "pick nf4"


def test_generation_failure_hint_in_the_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(args: object) -> int:
        raise decode.GenerationError("generation failed: boom", "see Details")

    monkeypatch.setattr(generate, "cmd_snippet", fail)
    assert cli.run(["snippet"]) == 2
    err = capsys.readouterr().err
    assert "Details" not in err and "--debug" in err


def test_unknown_skip_module_is_refused_with_nearest_names(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.run([
        "generate", str(tiny_dir), "--quant", "nf4", "--prompt", "hi",
        "--set", "llm_int8_skip_modules=down_prj,lm_head",
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "error: Keep unquantized (llm_int8_skip_modules): 'down_prj' matches no "
        "module of this model" in err
    )
    assert "hint: did you mean down_proj" in err


def test_known_skip_modules_pass(tiny_dir: Path) -> None:
    from core.model import facts

    quant = preset("nf4").quant
    ok = quant.replace(
        llm_int8_skip_modules=["mlp.down_proj", "model.layers.0", "q_proj"]
    )
    assert facts.check_load(tiny_dir, ok, LoadOptions("cpu")) == []
    bad = quant.replace(llm_int8_skip_modules=["self_atn"])
    problems = facts.check_load(tiny_dir, bad, LoadOptions("cpu"))
    assert "'self_atn' matches no module" in problems[0].message


def test_cpu_cap_below_the_model_is_refused(
    tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.run([
        "generate", str(tiny_dir), "--quant", "nf4", "--prompt", "hi",
        "--device-map", "cpu", "--max-memory", "cpu=1KiB",
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "error: Max memory: caps the CPU at 1KiB, but the model needs" in err


def test_progress_is_a_line_per_stage_off_a_terminal(tiny_dir: Path) -> None:
    done = nibble(
        "generate", str(tiny_dir), "--quant", "nf4", "--prompt", "hi",
        "--max-new-tokens", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    err = done.stderr.decode()
    assert "\r" not in err and "\x1b[K" not in err
    lines = err.splitlines()
    assert "Loading tokenizer" in lines
    assert "Loaded" in lines
    assert len(lines) == len(set(lines))  # one line per stage, not per weight


@pytest.mark.parametrize(
    "command",
    [
        "generate {tiny} --greedy --max-new-tokens 200 --prompt hi | head -c 10",
        "monitor --json --interval 0.25 --seconds 20 | head -1",
    ],
    ids=["generate", "monitor"],
)
def test_closed_pipe_ends_quietly(tiny_dir: Path, command: str) -> None:
    line = f"{sys.executable} {ROOT / 'main.py'} " + command.format(tiny=tiny_dir)
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {line} >/dev/null"],
        capture_output=True,
        timeout=300,
        text=True,
    )
    assert "BrokenPipe" not in done.stderr
    assert "unexpected" not in done.stderr
    assert "Traceback" not in done.stderr
