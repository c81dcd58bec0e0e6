"""Chats that last: conversations, messages and each answer's provenance in SQLite.

The database is ``core.paths.data_dir()/conversations.db`` (WAL mode). Every assistant
message keeps one or more *variants* (the first answer, then each "Regenerate with…"),
and each variant its `Provenance`: the model (name, folder or hub id, revision), the
full QuantSettings and LoadOptions, the generation settings and the seed, the stats of
the run, the true size of the model and the library versions.

Writes are single transactions: a user message is stored when it is sent, an answer
when it ends, so a process killed mid-answer loses at most that partial answer. Each
answer names the question it replies to, so two processes answering in the same
conversation at once still show each answer under its own question.

Only a damaged database (not a database, damaged pages) or one of a newer schema is set
aside under a new name, and a fresh one used; `ConversationStore.notice` says so. A
history another process holds locked is waited for, then reported busy; a read-only
file is opened read-only (`notice` says answers won't be saved); one that cannot be
opened at all (a folder, a read-only disk) is a `HistoryUnavailableError`, and nothing
is left beside it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.paths import data_dir
from core.settings import GenerationSettings
from core.store import faults
from core.store.faults import (
    ConversationNotFoundError,
    HistoryBusyError,
    HistoryReadOnlyError,
    HistoryUnavailableError,
    HistoryWriteError,
)
from core.store.provenance import Provenance, with_seed

logger = logging.getLogger(__name__)

FILE_NAME = "conversations.db"
SCHEMA_VERSION = 4
TITLE_CHARS = 60
UNDO_S = 60.0
BUSY_WAIT_S = 10.0
"""How long a write waits for another process's lock before the history is busy."""

# Version 1 kept one answer per assistant message, its provenance in a column.
SCHEMA_V1 = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    system_prompt TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    created REAL NOT NULL,
    provenance TEXT
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
"""

# Version 2: answers have variants; what loaded the model (a "setup": model, settings,
# size, versions) is stored once and shared by every answer it gave; deleted
# conversations wait for undo.
MIGRATE_V1_TO_V2 = """
ALTER TABLE conversations ADD COLUMN deleted REAL;
ALTER TABLE messages ADD COLUMN active_variant INTEGER NOT NULL DEFAULT 0;
CREATE TABLE setups (
    id INTEGER PRIMARY KEY,
    data TEXT NOT NULL UNIQUE
);
CREATE TABLE variants (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    created REAL NOT NULL,
    setup_id INTEGER REFERENCES setups(id),
    run TEXT,
    UNIQUE (message_id, position)
);
CREATE INDEX conversations_by_updated ON conversations(deleted, updated);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""


def _v1_answers_to_variants(conn: sqlite3.Connection) -> None:
    """Each v1 answer becomes variant 0, its provenance split into setup and run."""
    rows = conn.execute(
        "SELECT id, text, created, provenance FROM messages WHERE role = 'assistant'"
    ).fetchall()
    for message_id, text, created, blob in rows:
        provenance = Provenance.from_dict(json.loads(blob)) if blob else None
        _insert_variant(conn, message_id, 0, text, created, provenance)
    conn.execute("ALTER TABLE messages DROP COLUMN provenance")


# Version 3: an answer names the question it replies to; messages show in the order
# of their questions, so answers written at once by two processes stay paired.
MIGRATE_V2_TO_V3 = """
ALTER TABLE messages ADD COLUMN reply_to INTEGER
    REFERENCES messages(id) ON DELETE SET NULL;
"""

# Version 4: what each load was estimated at and what it cost, on this machine
# (core.store.calibration reads and writes them; the record itself is JSON).
MIGRATE_V3_TO_V4 = """
CREATE TABLE IF NOT EXISTS load_records (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    device TEXT NOT NULL,
    model TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS load_records_by_device ON load_records(device, id);
"""

MIGRATIONS: dict[int, tuple[str, Any]] = {
    1: (SCHEMA_V1, None),
    2: (MIGRATE_V1_TO_V2, _v1_answers_to_variants),
    3: (MIGRATE_V2_TO_V3, None),
    4: (MIGRATE_V3_TO_V4, None),
}

# Where a message shows: an answer right after its question, others by their own id.
ORDER_KEY = "COALESCE(reply_to, id)"


def sampling_of(message: Message, fallback: GenerationSettings) -> GenerationSettings:
    """The sampling (seed included) that wrote an answer, to write it again alike."""
    provenance = message.provenance
    if provenance is None or not provenance.generation:
        return with_seed(fallback)
    settings = provenance.generation_settings()
    if settings.seed is None and provenance.seed is not None:
        settings.seed = provenance.seed
    return with_seed(settings)


# -- records -------------------------------------------------------------------------


@dataclass
class Variant:
    """One answer to an assistant message; the first, or one regenerated."""

    id: int
    position: int
    text: str
    created: float
    provenance: Provenance | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "text": self.text,
            "created": iso(self.created),
            "provenance": self.provenance.to_dict() if self.provenance else None,
        }


@dataclass
class Message:
    """A message of a conversation; an assistant's shows its active variant."""

    id: int
    conversation_id: int
    role: str
    text: str
    created: float
    variants: list[Variant] = field(default_factory=list)
    active: int = 0
    reply_to: int | None = None
    """The question an answer replies to (None: the message before it)."""

    @property
    def variant(self) -> Variant | None:
        if not self.variants:
            return None
        return self.variants[min(self.active, len(self.variants) - 1)]

    @property
    def provenance(self) -> Provenance | None:
        variant = self.variant
        return variant.provenance if variant else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "text": self.text,
            "created": iso(self.created),
        }
        if self.role == "assistant":
            data["reply_to"] = self.reply_to
            data["active_variant"] = self.active
            data["variants"] = [v.to_dict() for v in self.variants]
        return data


@dataclass
class ConversationInfo:
    """What the conversation list shows."""

    id: int
    title: str
    created: float
    updated: float
    system_prompt: str = ""

    @property
    def display_title(self) -> str:
        return self.title or "New conversation"


@dataclass
class Conversation(ConversationInfo):
    """A conversation with its messages, oldest first."""

    messages: list[Message] = field(default_factory=list)

    def history(self, upto: int | None = None) -> list[dict[str, str]]:
        """Chat messages for the model: system prompt, then each message's text.

        `upto` stops before the message with that id (to regenerate it).
        """
        out: list[dict[str, str]] = []
        if self.system_prompt.strip():
            out.append({"role": "system", "content": self.system_prompt})
        for message in self.messages:
            if message.id == upto:
                break
            out.append({"role": message.role, "content": message.text})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "system_prompt": self.system_prompt,
            "created": iso(self.created),
            "updated": iso(self.updated),
            "messages": [m.to_dict() for m in self.messages],
        }


@dataclass
class SearchHit:
    """A conversation that contains the searched text, with where."""

    conversation_id: int
    title: str
    message_id: int | None
    snippet: str


def iso(timestamp: float) -> str:
    """Local time as '2026-11-27T14:05:09'."""
    return dt.datetime.fromtimestamp(timestamp).isoformat(timespec="seconds")


def title_from(text: str) -> str:
    """A title from a first question: its first line, cut at a word near 60 chars."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[:TITLE_CHARS].rsplit(" ", 1)[0]
    return (cut if len(cut) > TITLE_CHARS // 2 else line[:TITLE_CHARS]).rstrip() + "…"


# -- the store -----------------------------------------------------------------------


def database_path() -> Path:
    """The history file; NIBBLE_CONVERSATIONS_DB overrides it (the self-test's window)."""
    override = os.environ.get("NIBBLE_CONVERSATIONS_DB")
    return Path(override) if override else data_dir() / FILE_NAME


class ConversationStore:
    """Conversations in one SQLite file; every method is one transaction.

    Parameters
    ----------
    path
        The database file (default: `database_path()`); ":memory:" for a throwaway.

    Attributes
    ----------
    notice
        A sentence for the user when the file was set aside or opened read-only.
    read_only
        True when the file could only be opened for reading: writes raise
        `HistoryReadOnlyError`.

    Raises
    ------
    HistoryUnavailableError
        The file cannot be opened at all; nothing was changed or left behind.
    HistoryBusyError
        A new or older history had to be set up while another process held it.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path not in (None, ":memory:") else None
        if path is None:
            self.path = database_path()
        self.notice: str | None = None
        self.read_only = False
        self._order = ORDER_KEY
        self._conn = self._open()

    # -- opening -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        wait = BUSY_WAIT_S
        if self.path is None:
            conn = sqlite3.connect(":memory:", isolation_level=None)
        elif self.read_only:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=wait)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=wait)
        conn.row_factory = sqlite3.Row
        conn.create_function("nibble_fold", 1, _fold, deterministic=True)
        return conn

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            conn = self._connect()
            self._prepare(conn)
            return conn
        path = self.path
        if path.exists() and not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file"
            raise HistoryUnavailableError(
                f"cannot open the conversation history: {path} is {what}",
                "move it away, or set NIBBLE_CONVERSATIONS_DB to another file",
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.read_only = path.exists() and not faults.writable(path)
        except OSError as exc:
            raise faults.unavailable(self.path, exc) from exc
        companions = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")]
        before = {p for p in companions if p.exists()}
        try:
            return self._open_and_prepare()
        except HistoryUnavailableError:
            faults.remove_new(companions, before)
            raise
        except (_NewerSchemaError, faults.DamagedError) as exc:
            damaged: BaseException = exc
        except sqlite3.DatabaseError as exc:
            code = faults.sqlite_code(exc)
            if code in faults.BUSY:
                raise HistoryBusyError() from exc
            if code not in faults.DAMAGED:
                faults.remove_new(companions, before)
                raise faults.unavailable(self.path, exc) from exc
            damaged = exc
        if self.read_only:
            raise HistoryUnavailableError(
                f"the conversation history {path} is damaged and read-only",
                "make it writable so that it can be set aside, or move it away",
            ) from damaged
        self.notice = self._set_aside(damaged)
        faults.remove_new(companions, set())
        try:
            return self._open_and_prepare()
        except sqlite3.DatabaseError as exc:
            if faults.sqlite_code(exc) in faults.BUSY:
                raise HistoryBusyError() from exc
            raise faults.unavailable(self.path, exc) from exc

    def _open_and_prepare(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        if self.read_only:
            self.notice = (
                f"The conversation history {self.path} is read-only: it can be read, "
                "but new answers won't be saved."
            )
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise _NewerSchemaError(version)
        if version:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise faults.DamagedError(f"damaged: {check}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_WAIT_S * 1000)}")
        if self.read_only:
            if version < 2:
                raise HistoryUnavailableError(
                    f"the conversation history {self.path} is read-only and was "
                    "written by an older Nibble",
                    "make it writable once, so that it can be brought up to date",
                )
            if version < 3:
                self._order = "id"
            return
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            _migrate(conn, target)
        # Deletions older than a minute come from an earlier run: final now. Newer
        # ones may still be undone by another process (the window beside the CLI).
        # Tidying is no reason to wait for another process's lock.
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute(
                "DELETE FROM conversations WHERE deleted < ?", (time.time() - UNDO_S,)
            )
        except sqlite3.OperationalError as exc:
            if faults.sqlite_code(exc) not in faults.BUSY:
                raise
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_WAIT_S * 1000)}")

    def _set_aside(self, exc: BaseException) -> str:
        assert self.path is not None
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        kept = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                try:
                    os.replace(source, Path(str(kept) + suffix))
                except OSError:
                    logger.warning("could not set aside %s", source)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("conversation history %s unusable: %s", self.path, reason)
        return (
            f"The conversation history could not be read ({reason}); it was kept "
            f"as {kept} and a new history started."
        )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of one read, for the store's other tables (core.store.calibration)."""
        return self._conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def transaction(self, wait_s: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction for the store's other tables; `wait_s` bounds how
        long it waits for another process's lock (default BUSY_WAIT_S)."""
        if wait_s is None:
            with self._write() as conn:
                yield conn
            return
        self._conn.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
        try:
            with self._write() as conn:
                yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute(f"PRAGMA busy_timeout={int(BUSY_WAIT_S * 1000)}")

    def check_writable(self) -> None:
        """Raise now, before a long job, if its answer could not be saved."""
        with self._write():
            pass

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a full disk or a lock held too long is a NibbleError."""
        if self.read_only:
            raise HistoryReadOnlyError(
                "the conversation history is read-only: nothing can be saved to it",
                f"make {self.path} writable, then try again",
            )
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            code = faults.sqlite_code(exc)
            if code in faults.BUSY:
                raise HistoryBusyError() from exc
            if code == faults.READ_ONLY:
                raise HistoryReadOnlyError(
                    "the conversation history is read-only: nothing can be saved to it",
                    f"make {self.path} writable, then try again",
                ) from exc
            raise HistoryWriteError(
                f"the conversation history could not be saved: {exc}",
                f"check free space and permissions in {self.path.parent}"
                if self.path
                else "",
            ) from exc

    # -- conversations -----------------------------------------------------------

    def create(self, title: str = "", system_prompt: str = "") -> int:
        """A new, empty conversation; its id."""
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO conversations (title, system_prompt, created, updated) "
                "VALUES (?, ?, ?, ?)",
                (title, system_prompt, now, now),
            )
        return int(cur.lastrowid or 0)

    def list(self) -> list[ConversationInfo]:
        """Every conversation, the most recently changed first."""
        rows = self._conn.execute(
            "SELECT id, title, created, updated, system_prompt FROM conversations "
            "WHERE deleted IS NULL ORDER BY updated DESC, id DESC"
        ).fetchall()
        return [ConversationInfo(*row) for row in rows]

    def info(self, conversation_id: int) -> ConversationInfo:
        row = self._conn.execute(
            "SELECT id, title, created, updated, system_prompt FROM conversations "
            "WHERE id = ? AND deleted IS NULL",
            (conversation_id,),
        ).fetchone()
        if row is None:
            raise ConversationNotFoundError(
                f"no conversation {conversation_id}",
                "list them with `python main.py chats list`",
            )
        return ConversationInfo(*row)

    def get(self, conversation_id: int) -> Conversation:
        """A conversation with all its messages and variants."""
        info = self.info(conversation_id)
        conn = self._conn
        reply_to = "reply_to" if self._order == ORDER_KEY else "NULL"
        messages = [
            Message(
                row[0],
                conversation_id,
                row[1],
                row[2],
                row[3],
                active=row[4],
                reply_to=row[5],
            )
            for row in conn.execute(
                "SELECT id, role, text, created, active_variant, "
                f"{reply_to} FROM messages "
                f"WHERE conversation_id = ? ORDER BY {self._order}, id",
                (conversation_id,),
            )
        ]
        by_id = {m.id: m for m in messages}
        setups: dict[int, dict[str, Any]] = {}
        for row in conn.execute(
            "SELECT v.id, v.message_id, v.position, v.text, v.created, v.run, "
            "v.setup_id, s.data FROM variants v "
            "JOIN messages m ON m.id = v.message_id "
            "LEFT JOIN setups s ON s.id = v.setup_id "
            "WHERE m.conversation_id = ? ORDER BY v.message_id, v.position",
            (conversation_id,),
        ):
            provenance = None
            if row[6] is not None:
                if row[6] not in setups:
                    setups[row[6]] = json.loads(row[7])
                run = json.loads(row[5]) if row[5] else {}
                provenance = Provenance.from_dict({**setups[row[6]], **run})
            by_id[row[1]].variants.append(
                Variant(row[0], row[2], row[3], row[4], provenance)
            )
        return Conversation(
            info.id,
            info.title,
            info.created,
            info.updated,
            info.system_prompt,
            messages=messages,
        )

    def rename(self, conversation_id: int, title: str) -> None:
        with self._write() as conn:
            self._check(
                conn.execute(
                    "UPDATE conversations SET title = ? WHERE id = ?",
                    (title.strip(), conversation_id),
                ),
                conversation_id,
            )

    def set_system_prompt(self, conversation_id: int, text: str) -> None:
        with self._write() as conn:
            self._check(
                conn.execute(
                    "UPDATE conversations SET system_prompt = ? WHERE id = ?",
                    (text, conversation_id),
                ),
                conversation_id,
            )

    def delete(self, conversation_id: int) -> None:
        """Hide a conversation; `undelete` brings it back until the store reopens."""
        with self._write() as conn:
            self._check(
                conn.execute(
                    "UPDATE conversations SET deleted = ? WHERE id = ?",
                    (time.time(), conversation_id),
                ),
                conversation_id,
            )

    def undelete(self, conversation_id: int) -> None:
        with self._write() as conn:
            self._check(
                conn.execute(
                    "UPDATE conversations SET deleted = NULL WHERE id = ?",
                    (conversation_id,),
                ),
                conversation_id,
            )

    def purge_deleted(self) -> int:
        """Remove hidden conversations for good; how many."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE deleted IS NOT NULL")
        return cur.rowcount

    @staticmethod
    def _check(cursor: sqlite3.Cursor, ident: int, what: str = "conversation") -> None:
        if cursor.rowcount == 0:
            raise ConversationNotFoundError(
                f"no {what} {ident}", "it may have been deleted"
            )

    # -- messages ----------------------------------------------------------------

    def add_message(self, conversation_id: int, role: str, text: str) -> Message:
        """Append a system or user message (a first question also sets the title)."""
        if role not in ("system", "user"):
            raise ValueError("answers are added with add_answer")
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO messages (conversation_id, role, text, created) "
                "VALUES (?, ?, ?, ?)",
                (conversation_id, role, text, now),
            )
            if role == "user":
                conn.execute(
                    "UPDATE conversations SET title = ? WHERE id = ? AND title = ''",
                    (title_from(text), conversation_id),
                )
            self._touch(conn, conversation_id, now)
        return Message(int(cur.lastrowid or 0), conversation_id, role, text, now)

    def add_answer(
        self,
        conversation_id: int,
        text: str,
        provenance: Provenance | None,
        reply_to: int | None = None,
    ) -> Message:
        """Append an assistant message with its first variant.

        `reply_to` is the id of the question it answers: the answer then shows right
        after it, even if another question was asked in between (another process
        answering in the same conversation). A question deleted meanwhile is
        forgotten, and the answer shows last.
        """
        now = time.time()
        with self._write() as conn:
            if (
                reply_to is not None
                and not conn.execute(
                    "SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?",
                    (reply_to, conversation_id),
                ).fetchone()
            ):
                reply_to = None
            cur = conn.execute(
                "INSERT INTO messages (conversation_id, role, text, created, reply_to) "
                "VALUES (?, 'assistant', ?, ?, ?)",
                (conversation_id, text, now, reply_to),
            )
            message_id = int(cur.lastrowid or 0)
            variant = _insert_variant(conn, message_id, 0, text, now, provenance)
            self._touch(conn, conversation_id, now)
        return Message(
            message_id,
            conversation_id,
            "assistant",
            text,
            now,
            variants=[variant],
            reply_to=reply_to,
        )

    def add_variant(
        self, message_id: int, text: str, provenance: Provenance | None
    ) -> Variant:
        """Keep another answer on an assistant message and show it."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                "SELECT m.conversation_id, m.role, COALESCE(MAX(v.position), -1) "
                "FROM messages m LEFT JOIN variants v ON v.message_id = m.id "
                "WHERE m.id = ? GROUP BY m.id",
                (message_id,),
            ).fetchone()
            if row is None or row[1] != "assistant":
                raise ConversationNotFoundError(
                    f"no answer {message_id}", "it may have been deleted"
                )
            position = row[2] + 1
            variant = _insert_variant(conn, message_id, position, text, now, provenance)
            conn.execute(
                "UPDATE messages SET text = ?, active_variant = ? WHERE id = ?",
                (text, position, message_id),
            )
            self._touch(conn, row[0], now)
        return variant

    def set_active_variant(self, message_id: int, position: int) -> None:
        """Show variant `position` of an answer (the one the history uses)."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT text FROM variants WHERE message_id = ? AND position = ?",
                (message_id, position),
            ).fetchone()
            if row is None:
                raise ConversationNotFoundError(
                    f"no variant {position} on answer {message_id}", ""
                )
            conn.execute(
                "UPDATE messages SET text = ?, active_variant = ? WHERE id = ?",
                (row[0], position, message_id),
            )

    def edit_message(
        self, message_id: int, text: str, drop_following: bool = False
    ) -> None:
        """Change a message's text; `drop_following` removes every later message."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT conversation_id, role FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                raise ConversationNotFoundError(f"no message {message_id}", "")
            conn.execute(
                "UPDATE messages SET text = ? WHERE id = ?", (text, message_id)
            )
            if row[1] == "assistant":
                conn.execute(
                    "UPDATE variants SET text = ? WHERE message_id = ? AND position = "
                    "(SELECT active_variant FROM messages WHERE id = ?)",
                    (text, message_id, message_id),
                )
            if drop_following:
                # "Following" as shown: by question, then by id.
                conn.execute(
                    f"DELETE FROM messages WHERE conversation_id = :c AND "
                    f"({ORDER_KEY} > (SELECT {ORDER_KEY} FROM messages WHERE id = :m) "
                    f"OR ({ORDER_KEY} = (SELECT {ORDER_KEY} FROM messages "
                    "WHERE id = :m) AND id > :m))",
                    {"c": row[0], "m": message_id},
                )
            self._touch(conn, row[0], time.time())

    def delete_message(self, message_id: int) -> None:
        with self._write() as conn:
            row = conn.execute(
                "SELECT conversation_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise ConversationNotFoundError(f"no message {message_id}", "")
            conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            self._touch(conn, row[0], time.time())

    @staticmethod
    def _touch(conn: sqlite3.Connection, conversation_id: int, when: float) -> None:
        cur = conn.execute(
            "UPDATE conversations SET updated = ? WHERE id = ?", (when, conversation_id)
        )
        if cur.rowcount == 0:
            raise ConversationNotFoundError(
                f"no conversation {conversation_id}", "it may have been deleted"
            )

    # -- search, last open -------------------------------------------------------

    def search(self, text: str, limit: int = 200) -> list[SearchHit]:
        """Conversations whose title or any message contains `text`.

        Case is folded for all of Unicode ("école" finds "École", "strasse" finds
        "STRAẞE"), not only for ASCII as SQL's LIKE does.
        """
        needle = _fold(text.strip())
        if not needle:
            return []
        hits: list[SearchHit] = []
        seen: set[int] = set()
        for row in self._conn.execute(
            "SELECT id, title FROM conversations WHERE deleted IS NULL AND "
            "instr(nibble_fold(title), ?) ORDER BY updated DESC",
            (needle,),
        ):
            seen.add(row[0])
            hits.append(SearchHit(row[0], row[1], None, row[1]))
        for row in self._conn.execute(
            "SELECT c.id, c.title, m.id, m.text FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.deleted IS NULL AND instr(nibble_fold(m.text), ?) "
            "ORDER BY c.updated DESC, m.id",
            (needle,),
        ):
            if row[0] in seen:
                continue
            seen.add(row[0])
            hits.append(
                SearchHit(row[0], row[1], row[2], snippet(row[3], text.strip()))
            )
            if len(hits) >= limit:
                break
        return hits[:limit]

    def set_last_open(self, conversation_id: int | None) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_open', ?)",
                (None if conversation_id is None else str(conversation_id),),
            )

    def last_open(self) -> int | None:
        """The conversation shown when the window closed, if it still exists."""
        row = self._conn.execute(
            "SELECT c.id FROM meta JOIN conversations c "
            "ON c.id = CAST(meta.value AS INTEGER) "
            "WHERE meta.key = 'last_open' AND c.deleted IS NULL"
        ).fetchone()
        return int(row[0]) if row else None

    # -- export ------------------------------------------------------------------

    def export_json(self, conversation_id: int) -> dict[str, Any]:
        return {
            "format": "nibble-conversation",
            "version": SCHEMA_VERSION,
            "conversation": self.get(conversation_id).to_dict(),
        }

    def export_all_json(self) -> dict[str, Any]:
        return {
            "format": "nibble-conversations",
            "version": SCHEMA_VERSION,
            "exported": iso(time.time()),
            "conversations": [
                self.get(info.id).to_dict() for info in reversed(self.list())
            ],
        }

    def export_markdown(self, conversation_id: int) -> str:
        return to_markdown(self.get(conversation_id))


def _insert_variant(
    conn: sqlite3.Connection,
    message_id: int,
    position: int,
    text: str,
    created: float,
    provenance: Provenance | None,
) -> Variant:
    setup_id = run = None
    if provenance is not None:
        setup, run_data = provenance.split()
        blob = json.dumps(setup, sort_keys=True)
        conn.execute("INSERT OR IGNORE INTO setups (data) VALUES (?)", (blob,))
        setup_id = conn.execute(
            "SELECT id FROM setups WHERE data = ?", (blob,)
        ).fetchone()[0]
        run = json.dumps(run_data)
    cur = conn.execute(
        "INSERT INTO variants (message_id, position, text, created, setup_id, run) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (message_id, position, text, created, setup_id, run),
    )
    return Variant(int(cur.lastrowid or 0), position, text, created, provenance)


class _NewerSchemaError(Exception):
    def __init__(self, version: int) -> None:
        super().__init__(f"written by a newer Nibble, schema {version}")


def _migrate(conn: sqlite3.Connection, target: int) -> None:
    """Bring the schema to version `target` in one transaction."""
    script, then = MIGRATIONS[target]
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
        if then is not None:
            then(conn)
        conn.execute(f"PRAGMA user_version = {int(target)}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    logger.info("conversation history schema now at version %d", target)


def _fold(text: str | None) -> str:
    """`text` with its case folded for all of Unicode (the search's comparison)."""
    return text.casefold() if text else ""


def _find_folded(text: str, needle: str) -> int:
    """Where `needle` starts in `text`, both case-folded; -1 if it is absent.

    Folding may change lengths ("ß" → "ss"), so the index is mapped back.
    """
    folded_needle = _fold(needle)
    starts: list[int] = []
    folded = []
    for index, char in enumerate(text):
        piece = char.casefold()
        starts.extend([index] * len(piece))
        folded.append(piece)
    at = "".join(folded).find(folded_needle)
    return starts[at] if at >= 0 else -1


def snippet(text: str, needle: str, width: int = 80) -> str:
    """The part of `text` around the first `needle` (any case), on one line."""
    flat = " ".join(text.split())
    at = _find_folded(flat, needle)
    if at < 0:
        return flat[:width]
    start = max(0, at - width // 3)
    end = min(len(flat), start + width)
    return ("…" if start else "") + flat[start:end] + ("…" if end < len(flat) else "")


# -- markdown ------------------------------------------------------------------------


def to_markdown(conversation: Conversation) -> str:
    """The conversation as Markdown, each answer with its badge and provenance."""
    lines = [f"# {conversation.display_title}", ""]
    lines.append(
        f"*Nibble conversation · started {iso(conversation.created)} · "
        f"{len(conversation.messages)} messages*"
    )
    lines.append("")
    if conversation.system_prompt.strip():
        lines += ["**System prompt:**", "", _quote(conversation.system_prompt), ""]
    for message in conversation.messages:
        if message.role != "assistant":
            who = "You" if message.role == "user" else "System"
            lines += [f"## {who}", "", message.text, ""]
            continue
        variants = message.variants or [
            Variant(0, 0, message.text, message.created, None)
        ]
        for variant in variants:
            shown = variant.position == (
                message.variant.position if message.variant else 0
            )
            head = "## Answer"
            if variant.provenance:
                head += f" · `{variant.provenance.badge()}`"
            if len(variants) > 1:
                head += f" · variant {variant.position + 1} of {len(variants)}"
                if shown:
                    head += " (shown)"
            lines += [head, "", variant.text, ""]
            if variant.provenance:
                lines += _provenance_block(variant.provenance)
    return "\n".join(lines).rstrip() + "\n"


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines())


def _provenance_block(provenance: Provenance) -> list[str]:
    lines = ["<details><summary>Provenance</summary>", ""]
    lines += [f"- {line}" for line in provenance.describe()]
    lines += ["", "</details>", ""]
    return lines


def open_or_in_memory(path: Path | str | None = None) -> ConversationStore:
    """The history at `path`; one in memory when it cannot be opened or is busy.

    For the window, which must start even so: the `notice` says why, and that this
    session's chats won't be kept.
    """
    try:
        return ConversationStore(path)
    except (HistoryUnavailableError, HistoryBusyError) as exc:
        store = ConversationStore(":memory:")
        store.notice = f"{exc}. This session's chats won't be kept."
        return store
