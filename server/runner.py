"""Where the server listens and how it runs: the bind rules, uvicorn on a background
thread (the window, tests) or on the main thread until Ctrl+C (`serve`), and the
snippets that tell a user how to reach it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import NibbleError, SettingsError

if TYPE_CHECKING:
    from server.app import Server

DEFAULT_PORT = 8000
MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_TOKENS = 1024
MAX_CONNECTIONS = 64
HEADER_TIMEOUT_S = 10.0
"""A connection must send a whole request this soon after it opens (or after its
last answer); trickled headers and idle sockets are closed then."""


@dataclass
class ServerConfig:
    """How the server listens and whom it answers."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    served_model_name: str | None = None
    """Another name the model answers to, besides its hub id or folder name."""
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = MAX_BODY_BYTES
    log_prompts: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    """Host names a keyless server on 127.0.0.1 also answers to (besides localhost)."""
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    """The answer's length when a request names none (OpenAI's clients often don't)."""
    max_connections: int = MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise SettingsError(
                f"port {self.port} is out of range", "use a port from 1024 to 65535"
            )
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None
        self.host = self.host.strip()
        if self.host.startswith("[") and self.host.endswith("]"):
            self.host = self.host[1:-1]  # [::1], as URLs write it
        if int(self.default_max_tokens) < 1:
            raise SettingsError(
                f"a default of {self.default_max_tokens} answer tokens is not valid",
                "use a whole number of 1 or more",
            )
        check_bind(self.host, self.api_key)

    @property
    def base_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"


def lan_address() -> str | None:
    """This machine's address on its local network, as other machines reach it."""
    import socket

    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.connect(("10.255.255.255", 1))  # UDP: picks a route, sends nothing
        address = sock.getsockname()[0]
        if not address.startswith("127."):
            return address
    return None


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without a key.

    Raises
    ------
    SettingsError
        `host` is not a loopback address and no key is set.
    """
    if not is_loopback(host) and not api_key:
        raise SettingsError(
            f"serving on {host} lets other machines use the model, and no API key is set",
            "pass --api-key KEY (clients send it as a Bearer token), "
            "or serve on 127.0.0.1",
        )


def check_can_listen(host: str, port: int) -> None:
    """Bind `host`:`port` for a moment, so a failure is said before a model loads.

    Raises
    ------
    NibbleError
        What the system said, in words: the port is taken, the address is not
        this machine's (or IPv6 is off), the port needs root.
    """
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NibbleError(
            f"cannot listen on {host}: no such address or host name ({exc.strerror})",
            "use 127.0.0.1, ::1 or an address of this machine",
        ) from None
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            why, hint = "the port is in use", "stop what uses it, or pick --port"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = "this machine has no such address"
            hint = "use 127.0.0.1, or ::1 where IPv6 is on"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            why, hint = "permission denied", "use a port from 1024 up"
        elif exc.errno == errno.EAFNOSUPPORT:
            why, hint = "IPv6 is off on this machine", "use 127.0.0.1"
        else:
            why, hint = exc.strerror or str(exc), "pick another --host or --port"
        raise NibbleError(f"cannot listen on {where}: {why}", hint) from None


class ServerThread:
    """uvicorn on a background thread: start(), url, stop(). For the window and tests."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Listen; returns once the socket accepts connections.

        Raises
        ------
        NibbleError
            The port is taken or the address cannot be bound.
        """
        import uvicorn

        config = self.server.config
        self._uvicorn = uvicorn.Server(_uvicorn_config(self.server))
        self._uvicorn.install_signal_handlers = lambda: None  # only the main thread may

        def run() -> None:
            try:
                self._uvicorn.run()
            except BaseException as exc:  # SystemExit on a bind failure
                self.error = exc

        self._thread = threading.Thread(target=run, name="nibble-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                check_can_listen(config.host, config.port)
                raise NibbleError(
                    f"cannot listen on {config.host}:{config.port}",
                    "the port may be in use; pick another with --port",
                )
            time.sleep(0.02)

    @property
    def port(self) -> int:
        """The port it listens on (the real one when the config asked for 0)."""
        servers = getattr(self._uvicorn, "servers", None) or []
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.server.config.port

    @property
    def url(self) -> str:
        config = self.server.config
        return ServerConfig(config.host, self.port, config.api_key).base_url

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop listening; running answers are cancelled. False if it outlived timeout."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        self.server.cancel_jobs()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._uvicorn.force_exit = True
                thread.join(1.0)
            return not thread.is_alive()
        return True


def _uvicorn_config(server: Server) -> Any:
    import uvicorn

    return uvicorn.Config(
        server.app,
        host=server.config.host,
        port=server.config.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        http=_protocol(),
        timeout_keep_alive=5,
        limit_concurrency=server.config.max_connections,
    )


def _protocol() -> Any:
    """uvicorn's h11 protocol, closing a connection that sends no whole request in
    HEADER_TIMEOUT_S after it opens or after its last answer (uvicorn itself waits
    for trickled headers for ever)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class _Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            self._armed = getattr(self, "_armed", 0) + 1
            self.loop.call_later(HEADER_TIMEOUT_S, self._too_slow, self._armed)

        def _too_slow(self, armed: int) -> None:
            # Still waiting, since this timer was set, for a request's headers?
            if armed == self._armed and self.conn.their_state is h11.IDLE:
                if not self.transport.is_closing():
                    self.transport.close()

    return _Protocol


def serve_forever(server: Server, ready: Callable[[str], Any] | None = None) -> None:
    """Serve on this (main) thread until Ctrl+C; answers in flight are stopped.

    Raises
    ------
    NibbleError
        The address cannot be bound (e.g. the port is in use).
    """
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and ready is not None:
                ready(server.config.base_url)

        async def shutdown(self, sockets: Any = None) -> None:
            server.cancel_jobs()  # streams end within a token, not at max_tokens
            await super().shutdown(sockets)

    runner = _Server(_uvicorn_config(server))
    try:
        runner.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled
        pass
    except SystemExit:
        runner.started = False
    if not runner.started:
        check_can_listen(server.config.host, server.config.port)
        raise NibbleError(
            f"cannot listen on {server.config.host}:{server.config.port}",
            "the port may be in use; pick another with --port",
        )


# -- how to reach it ----------------------------------------------------------------


def curl_line(base_url: str, model: str, api_key: str | None = None) -> str:
    """One line a user can paste to check the server."""
    key = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Hello!"}]}
    )
    return (
        f"curl {base_url}/chat/completions -H 'Content-Type: application/json'{key} "
        f"-d '{body}'"
    )


def python_snippet(base_url: str, model: str, api_key: str | None = None) -> str:
    """The same request through the official openai package."""
    return (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}", api_key="{api_key or "none"}")\n'
        "answer = client.chat.completions.create(\n"
        f'    model="{model}",\n'
        '    messages=[{"role": "user", "content": "Hello!"}],\n'
        ")\n"
        "print(answer.choices[0].message.content)\n"
    )


def env_snippet(base_url: str, api_key: str | None = None) -> str:
    """The variables many OpenAI-speaking tools read."""
    return f"export OPENAI_BASE_URL={base_url}\nexport OPENAI_API_KEY={api_key or 'none'}\n"
