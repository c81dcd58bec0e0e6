"""The chat history: every field kept, migrations, damaged files, search, export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from core.settings import GenerationSettings, LoadOptions, QuantSettings, preset
from core.store import conversations as conv
from core.store.conversations import ConversationStore
from core.store.provenance import Provenance, with_seed


def full_provenance(**changes: object) -> Provenance:
    """A provenance with every field set to something other than its default."""
    values: dict[str, object] = {
        "model_name": "SmolLM2-135M-Instruct",
        "model_kind": "cache",
        "model_path": "/hf/models--x--y/snapshots/abc123",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "revision": "abc123",
        "quant": QuantSettings(
            mode="4bit",
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype="bfloat16",
            llm_int8_skip_modules=["lm_head", "mlp.down_proj"],
        ).to_dict(),
        "options": LoadOptions(
            device_map="cpu", max_memory={"cpu": "3GiB"}, dtype="bfloat16"
        ).to_dict(),
        "generation": GenerationSettings(
            max_new_tokens=64, temperature=0.3, top_p=0.8, top_k=20, seed=1234
        ).to_dict(),
        "seed": 1234,
        "raw": True,
        "stats": {
            "prompt_tokens": 12,
            "new_tokens": 30,
            "ttft_s": 0.25,
            "tokens_per_s": 24.5,
            "total_s": 1.5,
            "stop_reason": "eos",
            "error": None,
        },
        "true_bytes": 166_000_123,
        "device": "cpu",
        "load_s": 2.25,
        "versions": {"python": "3.11.7", "torch": "2.13.0", "bitsandbytes": "0.50.2"},
    }
    values.update(changes)
    return Provenance(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path):
    with ConversationStore(tmp_path / "conversations.db") as s:
        yield s


def test_every_field_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    first = full_provenance()
    second = full_provenance(
        quant=preset("int8").quant.to_dict(), true_bytes=220_000_000, revision=None
    )
    with ConversationStore(path) as store:
        cid = store.create(system_prompt="Be brief.")
        store.add_message(cid, "user", "What is the capital of France?\nThanks")
        answer = store.add_answer(cid, "Paris.", first)
        store.add_variant(answer.id, "Paris, of course.", second)
        store.add_message(cid, "user", "And Germany?")
        before = store.get(cid)
    with ConversationStore(path) as store:
        after = store.get(cid)
        assert store.notice is None
    assert after == before
    assert after.title == "What is the capital of France?"
    assert after.system_prompt == "Be brief."
    assert [m.role for m in after.messages] == ["user", "assistant", "user"]
    message = after.messages[1]
    assert message.text == "Paris, of course."
    assert message.active == 1
    assert [v.text for v in message.variants] == ["Paris.", "Paris, of course."]
    assert message.variants[0].provenance == first
    assert message.variants[1].provenance == second
    assert Provenance.from_dict(first.to_dict()) == first
    assert first.quant_settings().bnb_4bit_compute_dtype == "bfloat16"
    assert first.load_options().max_memory == {"cpu": "3GiB"}
    assert first.generation_settings().seed == 1234
    assert after.history() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?\nThanks"},
        {"role": "assistant", "content": "Paris, of course."},
        {"role": "user", "content": "And Germany?"},
    ]


def test_list_edit_delete_undo_and_last_open(store: ConversationStore) -> None:
    a = store.create()
    b = store.create("Named")
    store.add_message(a, "user", "first question")
    assert [c.id for c in store.list()] == [a, b]  # the latest change first
    store.rename(a, "  Renamed  ")
    assert store.info(a).title == "Renamed"
    q = store.add_message(b, "user", "q1")
    store.add_answer(b, "a1", None)
    store.add_message(b, "user", "q2")
    store.edit_message(q.id, "q1 edited", drop_following=True)
    assert [m.text for m in store.get(b).messages] == ["q1 edited"]
    assert (
        store.info(b).title == "Named"
    )  # a title is set once, from the first question
    store.set_last_open(b)
    store.delete(b)
    assert [c.id for c in store.list()] == [a]
    assert store.last_open() is None
    store.undelete(b)
    assert store.last_open() == b
    answer = store.add_answer(b, "a1", None)
    store.delete_message(answer.id)
    assert [m.role for m in store.get(b).messages] == ["user"]
    with pytest.raises(conv.ConversationNotFoundError, match="no conversation 999"):
        store.get(999)


def test_set_active_variant_changes_the_history(store: ConversationStore) -> None:
    cid = store.create()
    store.add_message(cid, "user", "hi")
    answer = store.add_answer(cid, "one", full_provenance())
    store.add_variant(answer.id, "two", full_provenance(seed=5))
    store.set_active_variant(answer.id, 0)
    got = store.get(cid)
    assert got.messages[1].text == "one"
    assert got.messages[1].provenance == full_provenance()
    assert got.history()[-1] == {"role": "assistant", "content": "one"}


def test_title_comes_from_the_first_question() -> None:
    assert conv.title_from("\n  Hello there \nmore") == "Hello there"
    long = "word " * 40
    title = conv.title_from(long)
    assert title.endswith("…")
    assert len(title) <= conv.TITLE_CHARS + 1


def test_search_finds_titles_and_messages(store: ConversationStore) -> None:
    a = store.create()
    store.add_message(a, "user", "Tell me about NF4 quantization")
    b = store.create()
    store.add_message(b, "user", "hello")
    store.add_answer(b, "The capital of France is Paris.", full_provenance())
    c = store.create()
    store.add_message(c, "user", "100% sure_thing")
    hits = store.search("nf4")
    assert [h.conversation_id for h in hits] == [a]
    assert hits[0].message_id is None  # found in the title
    hits = store.search("PARIS")
    assert [h.conversation_id for h in hits] == [b]
    assert "Paris" in hits[0].snippet
    assert store.search("0% s")[0].conversation_id == c
    assert [h.conversation_id for h in store.search("%")] == [c]  # literal, no wildcard
    assert store.search("x_y") == []
    store.delete(b)
    assert store.search("paris") == []
    assert store.search("   ") == []


def test_older_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    old = sqlite3.connect(path)
    old.executescript(conv.SCHEMA_V1)
    old.execute("INSERT INTO conversations VALUES (1, 'Old chat', 'sys', 100.0, 200.0)")
    old.execute("INSERT INTO messages VALUES (1, 1, 'user', 'hi', 101.0, NULL)")
    old.execute(
        "INSERT INTO messages VALUES (2, 1, 'assistant', 'hello', 102.0, ?)",
        (json.dumps(full_provenance().to_dict()),),
    )
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    with ConversationStore(path) as store:
        assert store.notice is None
        got = store.get(1)
        version = store._conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == conv.SCHEMA_VERSION
    assert (got.title, got.system_prompt, got.updated) == ("Old chat", "sys", 200.0)
    assert [m.text for m in got.messages] == ["hi", "hello"]
    assert got.messages[1].variants[0].text == "hello"
    assert got.messages[1].provenance == full_provenance()


def test_garbage_file_is_set_aside_with_a_notice(tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with ConversationStore(path) as store:
        assert store.notice is not None
        assert "could not be read" in store.notice
        assert store.list() == []
        cid = store.create()
        store.add_message(cid, "user", "still works")
    kept = [p for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert len(kept) == 1
    assert kept[0].name in store.notice
    assert kept[0].read_bytes().startswith(b"this is not a database")
    with ConversationStore(path) as store:  # the fresh one is a good database
        assert store.notice is None
        assert [c.title for c in store.list()] == ["still works"]


def test_damaged_pages_are_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    with ConversationStore(path) as store:
        for i in range(200):
            cid = store.create()
            store.add_message(cid, "user", f"question {i} " + "x" * 500)
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(3 * page, len(data) - page, 7 * page):
        data[offset : offset + 64] = b"\xff" * 64  # scribble on page headers
    path.write_bytes(bytes(data))
    with ConversationStore(path) as store:
        assert store.notice is not None
        assert "kept as" in store.notice
        assert store.list() == []


def test_newer_schema_is_kept_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    future = sqlite3.connect(path)
    future.execute("CREATE TABLE later (x)")
    future.execute(f"PRAGMA user_version = {conv.SCHEMA_VERSION + 1}")
    future.commit()
    future.close()
    with ConversationStore(path) as store:
        assert "newer Nibble" in (store.notice or "")
    kept = next(p for p in tmp_path.iterdir() if ".damaged-" in p.name)
    check = sqlite3.connect(kept)
    assert check.execute("PRAGMA user_version").fetchone()[0] == conv.SCHEMA_VERSION + 1
    check.close()


def test_markdown_and_json_export_carry_the_badges(store: ConversationStore) -> None:
    cid = store.create(system_prompt="Answer briefly.")
    store.add_message(cid, "user", "Capital of France?")
    nf4 = full_provenance(
        quant=preset("nf4").quant.to_dict(), options=LoadOptions().to_dict()
    )
    int8 = full_provenance(
        quant=preset("int8").quant.to_dict(), options=LoadOptions().to_dict()
    )
    answer = store.add_answer(cid, "Paris.", nf4)
    store.add_variant(answer.id, "It is Paris.", int8)
    markdown = store.export_markdown(cid)
    assert markdown.startswith("# Capital of France?\n")
    assert "## Answer · `nf4 · SmolLM2-135M` · variant 1 of 2" in markdown
    assert "## Answer · `int8 · SmolLM2-135M` · variant 2 of 2 (shown)" in markdown
    assert "Hub id: HuggingFaceTB/SmolLM2-135M-Instruct" in markdown
    assert "Revision: abc123" in markdown
    assert "bnb_4bit_quant_type='nf4'" in markdown
    assert "seed=1234" in markdown
    assert "24.5 tok/s" in markdown
    assert "> Answer briefly." in markdown
    data = store.export_json(cid)
    variants = data["conversation"]["messages"][1]["variants"]
    assert [v["provenance"]["quant"]["mode"] for v in variants] == ["4bit", "8bit"]
    store.create()
    everything = store.export_all_json()
    assert [c["id"] for c in everything["conversations"]] == [cid, cid + 1]
    json.dumps(everything)  # all of it is JSON


def test_badges_name_the_quantization() -> None:
    def badge(name: str, dtype: str = "auto", **quant: object) -> str:
        q = preset(name).quant.replace(**quant) if quant else preset(name).quant
        return full_provenance(
            quant=q.to_dict(), options=LoadOptions(dtype=dtype).to_dict()
        ).badge()

    assert badge("nf4") == "nf4 · SmolLM2-135M"
    assert badge("nf4-dq", "auto") == "nf4-dq · SmolLM2-135M"
    assert badge("int8") == "int8 · SmolLM2-135M"
    assert badge("fp32", "float32") == "fp32 · SmolLM2-135M"
    assert badge("bf16", "bfloat16") == "bf16 · SmolLM2-135M"
    assert badge("nf4", bnb_4bit_compute_dtype="bfloat16") == "nf4* · SmolLM2-135M"


def test_with_seed_keeps_a_chosen_seed_and_picks_one_otherwise() -> None:
    assert with_seed(GenerationSettings(seed=7)).seed == 7
    picked = with_seed(GenerationSettings(top_k=3))
    assert picked.seed is not None
    assert picked.top_k == 3


@pytest.mark.slow
def test_regenerate_with_int8_and_back_keeps_two_variants(
    tmp_path: Path, default_dir: Path
) -> None:
    from core.generation import decode
    from core.model import catalog, loader

    ref = catalog.default_ref()
    gen = GenerationSettings(max_new_tokens=12, temperature=0.8)
    with ConversationStore(tmp_path / "conversations.db") as store:
        cid = store.create()
        store.add_message(cid, "user", "What is the capital of France?")
        loaded = loader.load(ref, preset("nf4").quant, LoadOptions())
        try:
            used = with_seed(gen)
            text, stats = decode.generate_text(loaded, store.get(cid).history(), used)
            first = store.add_answer(
                cid, text, Provenance.from_loaded(loaded, used, stats)
            )
        finally:
            loader.unload(loaded)
        message = store.get(cid).messages[-1]
        again = conv.sampling_of(message, GenerationSettings())
        assert again == used  # the same seed and sampling
        loaded = loader.load(ref, preset("int8").quant, LoadOptions())
        try:
            text, stats = decode.generate_text(
                loaded, store.get(cid).history(upto=first.id), again
            )
            store.add_variant(
                first.id, text, Provenance.from_loaded(loaded, again, stats)
            )
        finally:
            loader.unload(loaded)
        back = loader.load(ref, preset("nf4").quant, LoadOptions())
        loader.unload(back)
        answer = store.get(cid).messages[-1]
    nf4, int8 = (v.provenance for v in answer.variants)
    assert nf4 is not None and int8 is not None
    assert [nf4.badge(), int8.badge()] == ["nf4 · SmolLM2-135M", "int8 · SmolLM2-135M"]
    assert nf4.quant != int8.quant
    assert nf4.true_bytes < int8.true_bytes
    assert nf4.seed == int8.seed == used.seed
    assert nf4.generation == int8.generation
    assert nf4.hub_id == int8.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert answer.active == 1


def test_a_refused_write_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "conversations.db"
    with ConversationStore(path) as store:
        cid = store.create()
        blocker = sqlite3.connect(path, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        store._conn.execute("PRAGMA busy_timeout=50")
        with pytest.raises(conv.HistoryBusyError, match=r"busy \(another Nibble\?\)"):
            store.add_message(cid, "user", "hi")
        blocker.execute("ROLLBACK")
        blocker.close()
        store.add_message(cid, "user", "hi")
        assert [m.text for m in store.get(cid).messages] == ["hi"]
