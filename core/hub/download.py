"""Downloads that resume: a hub Plan's files into the standard HF cache.

huggingface_hub's `hf_hub_download` deletes its partial file when a download stops; to
resume after a pause, a crash or a restart, each file is fetched with huggingface_hub's
`http_get(resume_size=...)` into `blobs/<etag>.incomplete` of the cache (under
huggingface_hub's lock for that blob), checked against its sha256, moved to
`blobs/<etag>`, and `hf_hub_download` then links it into the snapshot (it finds the blob
and downloads nothing). Every file is fetched at the commit the plan saw.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import CancelledError, NibbleError
from core.hub import api as hub
from core.hub.api import (
    DiskFullError,
    HubError,
    Plan,
    PlanFile,
    explain,
    storage_folder,
)
from core.units import format_bytes, format_seconds

Cancel = threading.Event | Callable[[], bool] | None
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HASH_BLOCK = 8 * 2**20


@dataclass
class Progress:
    """Where a download stands: bytes, speed and time left."""

    done_bytes: int
    total_bytes: int
    speed_bps: float | None
    eta_s: float | None
    file: str
    files_done: int
    files_total: int

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0

    def text(self) -> str:
        speed = f"{format_bytes(self.speed_bps)}/s" if self.speed_bps else "—/s"
        left = format_seconds(self.eta_s) if self.eta_s is not None else "—"
        return (
            f"{format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)} "
            f"({self.fraction:.0%}) · {speed} · {left} left · "
            f"file {min(self.files_done + 1, self.files_total)}/{self.files_total} {self.file}"
        )


ProgressFn = Callable[[Progress], None]


class _Tracker:
    """Counts bytes on disk and turns them into speed and time left."""

    def __init__(
        self, plan_: Plan, progress: ProgressFn | None, cancel: Cancel
    ) -> None:
        self.repo_id = plan_.repo_id
        self.total = plan_.total_bytes
        self.done = 0  # cached files are counted as the loop passes them
        self.files_total = len(plan_.files)
        self.files_done = 0
        self.file = ""
        self.fetched = 0  # bytes that came over the network in this run
        self.started = time.monotonic()
        self.progress = progress
        self.cancel = cancel

    def check(self) -> None:
        if is_cancelled(self.cancel):
            raise CancelledError(
                "download paused; what arrived is kept",
                "download again to continue where it stopped",
            )

    def add(self, n: int, fetched: bool = True) -> None:
        self.done += n
        if fetched:
            self.fetched += n
        self.emit()

    def emit(self) -> None:
        if self.progress is None:
            return
        elapsed = time.monotonic() - self.started
        speed = self.fetched / elapsed if self.fetched and elapsed > 0 else None
        eta = (self.total - self.done) / speed if speed else None
        self.progress(
            Progress(
                self.done,
                self.total,
                speed,
                eta,
                self.file,
                self.files_done,
                self.files_total,
            )
        )


class _ProgressFile:
    """The partial file `http_get` writes to: counts each chunk once it is on disk and
    stops between chunks when cancelled, so no written byte is fetched again."""

    def __init__(self, fh: Any, tracker: _Tracker, resumed: int) -> None:
        self._fh = fh
        self._tracker = tracker
        self._resumed = resumed

    def write(self, data: bytes) -> int:
        written = self._fh.write(data)
        self._fh.flush()
        self._tracker.add(len(data))
        self._tracker.check()
        return written

    def seek(self, *args: Any) -> int:
        return self._fh.seek(*args)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, *args: Any) -> int:
        # The server ignored the range and sends the whole file again.
        size = self._fh.truncate(*args)
        self._tracker.add(-self._resumed, fetched=False)
        self._resumed = 0
        return size


def is_cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def download(
    plan_: Plan,
    progress: ProgressFn | None = None,
    cancel: Cancel = None,
) -> Path:
    """Fetch the plan's missing files into the HF cache at the plan's commit.

    Partial files are kept when cancelled or cut off and continued by the next call.
    Returns the snapshot folder, ready for `catalog.folder_ref`.
    """
    if not all(_cached(plan_, f) for f in plan_.files):
        hub.check_online()
    free = hub.free_disk_bytes(plan_.cache_dir)
    need = sum(
        f.size - _partial_size(plan_, f) for f in plan_.files if not _cached(plan_, f)
    )
    if free is not None and need > free:
        raise DiskFullError(
            f"not enough disk space: {plan_.repo_id} needs {format_bytes(need)} more, "
            f"{format_bytes(free)} free in {plan_.cache_dir}",
            "free some space, or point HF_HUB_CACHE at a larger disk",
        )
    tracker = _Tracker(plan_, progress, cancel)
    tracker.emit()
    for entry in plan_.files:
        tracker.file = entry.name
        tracker.check()
        if _cached(plan_, entry):
            tracker.add(entry.size, fetched=False)
        else:
            _fetch(plan_, entry, tracker)
        _link(plan_, entry)
        entry.cached, entry.partial_bytes = True, 0
        tracker.files_done += 1
        tracker.emit()
    _write_ref(plan_)
    return plan_.snapshot


def _cached(plan_: Plan, entry: PlanFile) -> bool:
    blobs = storage_folder(plan_.repo_id, plan_.cache_dir) / "blobs"
    return bool(entry.blob) and (blobs / str(entry.blob)).is_file()


def _partial_size(plan_: Plan, entry: PlanFile) -> int:
    if not entry.blob:
        return 0
    blobs = storage_folder(plan_.repo_id, plan_.cache_dir) / "blobs"
    partial = blobs / f"{entry.blob}.incomplete"
    return partial.stat().st_size if partial.is_file() else 0


def _fetch(plan_: Plan, entry: PlanFile, tracker: _Tracker) -> None:
    """Continue (or start) one file with huggingface_hub's http_get, then check it."""
    from filelock import Timeout
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    url = hf_hub_url(plan_.repo_id, entry.name, revision=plan_.commit)
    try:
        meta = get_hf_file_metadata(url)
    except Exception as exc:
        raise explain(exc, plan_.repo_id) from None
    etag = meta.etag or entry.blob
    if not etag:
        raise HubError(
            f"the hub gave no version tag for {entry.name}", "try again later"
        )
    blobs = storage_folder(plan_.repo_id, plan_.cache_dir) / "blobs"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise explain(exc, plan_.repo_id) from None
    blob = blobs / etag
    if blob.is_file():
        tracker.add(entry.size, fetched=False)
        return
    partial = blobs / f"{etag}.incomplete"
    size = meta.size if meta.size is not None else entry.size
    headers = build_hf_headers()
    location = meta.location or url
    if _host(location) != _host(url):
        headers.pop("authorization", None)  # a signed CDN url: the token stays home
    # huggingface_hub's own lock for this blob: two writers would garble the partial.
    lock = plan_.cache_dir / ".locks" / blobs.parent.name / f"{etag}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock, timeout=1):
            _fetch_locked(location, headers, partial, blob, etag, size, entry, tracker)
    except Timeout:
        raise HubError(
            f"{entry.name} of {plan_.repo_id} is being downloaded by another "
            "program or window",
            "wait for that download to end, or stop it, then try again",
        ) from None
    except OSError as exc:  # a read-only cache: the lock or the partial file
        raise explain(exc, plan_.repo_id) from None


def _fetch_locked(
    location: str,
    headers: dict[str, str],
    partial: Path,
    blob: Path,
    etag: str,
    size: int,
    entry: PlanFile,
    tracker: _Tracker,
) -> None:
    """Append to the partial file from where it ends, verify, move it into blobs/."""
    from huggingface_hub.file_download import http_get

    with partial.open("ab") as fh:
        resume = fh.tell()
        if resume > size:
            fh.truncate(0)
            resume = 0
        tracker.add(resume, fetched=False)
        # huggingface_hub resumes a broken body itself, five times afresh after
        # every chunk: a hub stuck mid-file would hold the download for minutes.
        # Here a try that brings new bytes is followed by another; one that brings
        # nothing ends the download, and what arrived stays for the next pull.
        while True:
            start = fh.tell()
            try:
                http_get(
                    location,
                    _ProgressFile(fh, tracker, start),
                    resume_size=start,
                    headers=headers,
                    expected_size=size,
                    displayed_filename=entry.name,
                    tqdm_class=hub.QuietBar,  # type: ignore[arg-type]
                    _nb_retries=0,
                )
                break
            except NibbleError:
                raise
            except Exception as exc:
                if _is_transient(exc) and fh.tell() > start:
                    continue
                if _is_stall(exc):
                    raise HubError(
                        f"the download of {entry.name} stalled: the hub sent nothing "
                        f"for {_stall_s():.0f} s; {format_bytes(fh.tell())} of "
                        f"{format_bytes(size)} arrived and are kept",
                        "run the same pull again to continue where it stopped",
                    ) from None
                raise explain(exc, tracker.repo_id) from None
    if _SHA256.match(etag) and not _sha256_matches(partial, etag, tracker):
        partial.unlink(missing_ok=True)
        raise HubError(
            f"{entry.name} arrived damaged (its sha256 does not match); the partial "
            "file was removed",
            "download again",
        )
    os.replace(partial, blob)


def _is_transient(exc: BaseException) -> bool:
    """A broken or silent body that a resume may mend."""
    import httpx2

    return isinstance(
        exc, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
    )


def _is_stall(exc: BaseException) -> bool:
    """A read that timed out: the hub went silent mid-file (not: cannot connect)."""
    import httpx2

    return isinstance(exc, httpx2.ReadTimeout)


def _stall_s() -> float:
    from huggingface_hub import constants

    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _sha256_matches(path: Path, expected: str, tracker: _Tracker) -> bool:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
            tracker.check()
    return digest.hexdigest() == expected


def _link(plan_: Plan, entry: PlanFile) -> None:
    """Let huggingface_hub put the blob into the snapshot (it finds it and downloads nothing)."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(
            plan_.repo_id, entry.name, revision=plan_.commit, tqdm_class=hub.QuietBar
        )
    except Exception as exc:
        raise explain(exc, plan_.repo_id) from None


def _write_ref(plan_: Plan) -> None:
    """refs/<branch> → commit, so `ORG/NAME` resolves to this snapshot offline."""
    if _COMMIT.match(plan_.revision):
        return
    ref = storage_folder(plan_.repo_id, plan_.cache_dir) / "refs" / plan_.revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(plan_.commit)


def refresh(plan_: Plan) -> Plan:
    """Update the plan's cached / partial state from the disk (after a pause)."""
    for entry in plan_.files:
        entry.cached = _cached(plan_, entry)
        entry.partial_bytes = 0 if entry.cached else _partial_size(plan_, entry)
    return plan_


def discard(plan_: Plan) -> int:
    """Delete the plan's partial files (Cancel, not Pause); returns the bytes freed."""
    freed = 0
    blobs = storage_folder(plan_.repo_id, plan_.cache_dir) / "blobs"
    for entry in plan_.files:
        partial = blobs / f"{entry.blob}.incomplete"
        if entry.blob and partial.is_file():
            freed += partial.stat().st_size
            partial.unlink()
            entry.partial_bytes = 0
    return freed


def _host(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).netloc
