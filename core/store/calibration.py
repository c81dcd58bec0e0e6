"""Load records in the local history database, for the estimate's calibration.

`LoadJournal` keeps `core.model.calibration.LoadRecord`s in the `load_records` table
of the conversation history (schema version 4; core.store.conversations owns the file,
its faults and its migrations). The records never leave this machine: only
`python main.py report --include-load-records` puts them in a report.

A history that is read-only, busy, damaged or cannot be opened never fails a load:
writing a record waits at most `WRITE_WAIT_S` for another process's lock and any
failure is logged by core.model.calibration, not raised.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from core.model import calibration
from core.model.calibration import LoadRecord
from core.store import conversations

logger = logging.getLogger(__name__)

WRITE_WAIT_S = 1.0
"""How long a record waits for another process's lock before it is given up."""
OFF_VARIABLE = "NIBBLE_LOAD_RECORDS"
"""Set to 'off', loads are not recorded (the test suite's child processes)."""


class LoadJournal:
    """Load records in the history database at `path` (default: the user's)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._cache: tuple[Any, dict[str | None, list[LoadRecord]]] | None = None

    @property
    def path(self) -> Path:
        if self._path is None:  # once: every later read and write uses the same file
            self._path = conversations.database_path()
        return self._path

    def _open(self) -> conversations.ConversationStore:
        return conversations.ConversationStore(self.path)

    def add(self, record: LoadRecord) -> None:
        data = record.to_dict()
        data.pop("id", None)
        with self._open() as store, store.transaction(WRITE_WAIT_S) as conn:
            cur = conn.execute(
                "INSERT INTO load_records (created, device, model, data) "
                "VALUES (?, ?, ?, ?)",
                (record.created, record.device, record.model, json.dumps(data)),
            )
        record.id = int(cur.lastrowid or 0)
        with self._lock:
            self._cache = None

    def _stamp(self) -> Any:
        """Changes whenever another process (or this one) writes the file."""
        stamp = []
        for suffix in ("", "-wal"):
            try:
                info = os.stat(f"{self.path}{suffix}")
            except OSError:
                stamp.append(None)
                continue
            stamp.append((info.st_mtime_ns, info.st_size))
        return tuple(stamp)

    def records(self, device: str | None = None) -> list[LoadRecord]:
        """Newest first; every device's when `device` is None."""
        stamp = self._stamp()
        if stamp[0] is None:
            return []  # no history yet: nothing to read, and nothing to create
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                if device in self._cache[1]:
                    return list(self._cache[1][device])
            else:
                self._cache = (stamp, {})
        found = self._read(device)
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                self._cache[1][device] = found
        return list(found)

    def _read(self, device: str | None) -> list[LoadRecord]:
        with self._open() as store:
            if store.schema_version < 4:  # read-only and older: no records yet
                return []
            where, params = ("WHERE device = ?", (device,)) if device else ("", ())
            rows = store.query(
                f"SELECT id, data FROM load_records {where} ORDER BY id DESC", params
            )
        out = []
        for row in rows:
            try:
                record = LoadRecord.from_dict(json.loads(row[1]))
            except (ValueError, TypeError) as exc:
                logger.debug("load record %s unreadable: %s", row[0], exc)
                continue
            record.id = int(row[0])
            out.append(record)
        return out


def install(path: Path | str | None = None) -> calibration.Journal | None:
    """Record every load of this process in the history database, unless
    NIBBLE_LOAD_RECORDS=off or a journal is already installed; returns the journal."""
    if os.environ.get(OFF_VARIABLE, "").lower() in ("off", "0", "no"):
        return None
    current = calibration.current_journal()
    if current is not None:
        return current
    journal = LoadJournal(path)
    calibration.use_journal(journal)
    return journal


def load_records(path: Path | str | None = None) -> list[dict[str, Any]]:
    """Every load record of the history at `path`, newest first, as dicts."""
    try:
        return [r.to_dict() for r in LoadJournal(path).records()]
    except (conversations.HistoryUnavailableError, conversations.HistoryBusyError):
        raise
    except (sqlite3.Error, OSError) as exc:
        logger.warning("the load records could not be read: %s", exc)
        return []
