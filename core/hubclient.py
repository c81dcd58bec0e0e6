"""How Nibble's calls to the Hugging Face hub behave when the hub does not.

huggingface_hub's own client has no timeout (it passes `timeout=None` to most calls) and
retries five times with back-off: a hub that accepts the connection and never answers
hangs search, plan and estimate for ever, and an unreachable one takes 23 s and two
dozen warnings to be reported. `configure()` (idempotent, called before each hub call)
gives every request a connect and a read timeout, allows one quick retry for what a
retry can mend (a refused connection, a 5xx) and none for a silent hub, and keeps the
client's retry chatter out of the user's terminal: the caller reports one line.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

CONNECT_S = 5.0
"""Seconds to open a connection to the hub."""
READ_S = 15.0
"""Seconds a hub may stay silent in the middle of an answer."""
RETRIES = 1
RETRY_WAIT_S = 0.5

_lock = threading.Lock()
_done = False


def configure() -> None:
    """Timeouts, one quick retry and quiet retries for huggingface_hub; once."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        _configure()
        _done = True


def _configure() -> None:
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    def client() -> Any:
        return httpx2.Client(
            event_hooks={"request": [_http.hf_request_event_hook, _bound]},
            follow_redirects=True,
            timeout=httpx2.Timeout(READ_S, connect=CONNECT_S),
        )

    set_client_factory(client)
    # After a failed HEAD, hf_hub_download asks again with a 60 s limit of its own.
    from huggingface_hub import file_download

    if hasattr(file_download, "_ETAG_RETRY_TIMEOUT"):
        file_download._ETAG_RETRY_TIMEOUT = READ_S
    # A refused connection or a 5xx may mend in a moment; a silent hub will not,
    # so a timeout is not retried.
    mendable = (httpx2.ConnectError, httpx2.RemoteProtocolError, httpx2.ReadError)
    for function in (_http.http_backoff, _http.http_stream_backoff):
        target = getattr(function, "__wrapped__", function)
        defaults = dict(target.__kwdefaults__ or {})
        defaults.update(
            max_retries=RETRIES,
            base_wait_time=RETRY_WAIT_S,
            max_wait_time=RETRY_WAIT_S,
            retry_on_exceptions=mendable,
        )
        target.__kwdefaults__ = defaults
    for name in ("huggingface_hub.utils._http", "huggingface_hub.file_download"):
        logging.getLogger(name).addFilter(_quiet_retries)
    # Nibble checks free space itself, before a download, and says so in words.
    warnings.filterwarnings(
        "ignore", message="Not enough free disk space", category=UserWarning
    )


def _bound(request: Any) -> None:
    """Fill in the timeouts a call left at None (no limit)."""
    wanted = {"connect": CONNECT_S, "read": READ_S, "write": READ_S, "pool": READ_S}
    timeout = dict(request.extensions.get("timeout") or {})
    for key, value in wanted.items():
        if timeout.get(key) is None:
            timeout[key] = value
    request.extensions["timeout"] = timeout


def _quiet_retries(record: logging.LogRecord) -> bool:
    """Retry warnings only with --debug; the failure itself is reported once."""
    if record.levelno > logging.WARNING:
        return True
    return logging.getLogger().isEnabledFor(logging.DEBUG)
