"""The Server tab: serve the loaded model over the OpenAI API, with a live request log.

The server submits to the same generation queue as the chat, so the chat keeps
working while it serves; loading another model switches what is served and no
model answers 503. A client that names another servable model switches the window's
model to it: the tab shows which model serves and the load in progress. Each request
shows in the log while it waits and decodes (with its tokens so far), and is filled
in when it ends; the ended request is announced with `request_logged`, which the
window turns into a Monitor marker.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.errors import NibbleError
from core.generation.queue import JOB_RUNNING, Job
from gui import workers

if TYPE_CHECKING:
    from gui.controller import Controller
from server.handlers import RequestRecord
from server.runner import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_PORT,
    ServerConfig,
    curl_line,
    env_snippet,
    lan_address,
    python_snippet,
)

logger = logging.getLogger(__name__)

LOG_COLUMNS = (
    "Time",
    "Client",
    "Endpoint",
    "Prompt",
    "Completion",
    "TTFT",
    "tok/s",
    "Status",
)
MAX_LOG_ROWS = 500
STATUS_TEXT = {200: "200 OK", 499: "499 client left"}
MAX_TOKENS_LIMIT = 1_048_576
JOB_ROLE = Qt.ItemDataRole.UserRole  # a running request's job id, on its first cell


def model_name(loaded: Any) -> str | None:
    """The name clients use for `loaded`: its hub id or folder name."""
    if loaded is None:
        return None
    return loaded.ref.repo_id or loaded.ref.name


def model_text(loaded: Any, loading: str | None = None) -> str:
    """The live model line, e.g. 'Model: SmolLM2-135M-Instruct (nf4) · loading
    tiny-llama for a client…'."""
    name = model_name(loaded)
    if name is None:
        text = "Model: none loaded"
    else:
        text = f"Model: {name} ({loaded.quant.label()})"
    if loading:
        text += f" · loading {loading} for a client…"
    return text


def batch_text(running: int, waiting: int, max_batch: int, note: str | None) -> str:
    """The live batch line, e.g. 'Batch: 3 answers decoding together, 1 waiting
    (up to 8)'."""
    if note is not None:
        head = f"One answer at a time ({note})"
        if running:
            head += ": 1 decoding"
    else:
        noun = "answer" if running == 1 else "answers"
        head = f"Batch: {running} {noun} decoding together (up to {max_batch})"
    return head + (f", {waiting} waiting" if waiting else "")


def marker_label(record: RequestRecord) -> str:
    """The Monitor marker of one request, e.g. 'API 200 chat 12+64 tok'."""
    endpoint = record.endpoint.rsplit("/", 1)[-1].replace("completions", "")
    kind = "chat" if "chat" in record.endpoint else (endpoint or "completion")
    if record.status != 200:
        return f"API {record.status} {kind}"
    return f"API {kind} {record.prompt_tokens}+{record.completion_tokens} tok"


class ServerView(QWidget):
    """Start/Stop, address, key, snippets to copy, and the request log.

    Parameters
    ----------
    queue
        The generation queue the chat uses; the server submits to it too.
    loaded
        The model the queue answers with now (or None); later changes come
        through `set_model`.
    """

    serving_changed = Signal(bool)
    batch_changed = Signal(int, int)  # answers decoding together, waiting
    request_logged = Signal(object)  # RequestRecord, on the UI thread
    _record_arrived = Signal(object)  # from the server's thread

    def __init__(self, controller: Controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.queue = controller.generation_queue
        self.loaded = controller.loaded
        controller.model_changed.connect(self.set_model)
        controller.model_switched.connect(self._on_switched)
        self.loading: str | None = controller.app.switching
        """The model a client's switch loads now, by name."""
        self.server_thread: Any = None
        self.worker: workers.Worker | None = None
        self.error_text: str | None = None  # why the last start failed
        self._record_arrived.connect(self._add_record)
        self._build()
        self._refresh()
        self._batch_shown: tuple[int, int, int, str | None] | None = None
        self.batch_timer = QTimer(self)
        self.batch_timer.setInterval(250)
        self.batch_timer.timeout.connect(self.refresh_batch)
        self.batch_timer.start()
        self.refresh_batch()

    # -- layout --

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
        )
        layout.addWidget(self.status_label)
        self.model_label = QLabel()
        self.model_label.setToolTip(
            "The model requests are answered with. A request that names another "
            "model Nibble knows (GET /v1/models lists them) loads it in its place, "
            "for the chat too."
        )
        self.model_label.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
        )
        layout.addWidget(self.model_label)
        self.batch_label = QLabel()
        self.batch_label.setToolTip(
            "Requests and the chat's answers decode together in one batch; more "
            "than the limit wait. The limit is what fits beside the model (serve "
            "--max-batch sets it)."
        )
        layout.addWidget(self.batch_label)

        form = QFormLayout()
        self.port_spin = QSpinBox()
        self.port_spin.setRange(1, 65535)
        self.port_spin.setValue(DEFAULT_PORT)
        form.addRow("Port", self.port_spin)
        key_row = QHBoxLayout()
        self.key_edit = QLineEdit()
        self.key_edit.setPlaceholderText("none: any program on this machine may call")
        self.key_edit.setEchoMode(QLineEdit.EchoMode.PasswordEchoOnEdit)
        self.key_edit.textChanged.connect(self._refresh)
        key_row.addWidget(self.key_edit, 1)
        self.new_key_button = QPushButton("New key")
        self.new_key_button.setToolTip("Fill in a random key")
        self.new_key_button.clicked.connect(self.new_key)
        key_row.addWidget(self.new_key_button)
        form.addRow("API key", key_row)
        self.remote_check = QCheckBox("Allow other machines (needs a key)")
        self.remote_check.setToolTip(
            "Listen on every network interface (0.0.0.0) instead of 127.0.0.1"
        )
        self.remote_check.toggled.connect(self._refresh)
        form.addRow("", self.remote_check)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("optional: another name clients may use")
        self.name_edit.textChanged.connect(self._refresh)
        form.addRow("Also serve as", self.name_edit)
        self.max_tokens_spin = QSpinBox()
        self.max_tokens_spin.setRange(1, MAX_TOKENS_LIMIT)
        self.max_tokens_spin.setValue(DEFAULT_MAX_TOKENS)
        self.max_tokens_spin.setGroupSeparatorShown(True)
        self.max_tokens_spin.setSuffix(" tokens")
        self.max_tokens_spin.setToolTip(
            "How long a chat answer may grow when the request sets no max_tokens "
            "(text completions keep OpenAI's 16): without a bound, one request "
            "could ramble through the whole context while the chat waits."
        )
        self.max_tokens_spin.valueChanged.connect(self._refresh)
        form.addRow("Default max tokens", self.max_tokens_spin)
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start serving")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        self.url_edit = QLineEdit()
        self.url_edit.setReadOnly(True)
        buttons.addWidget(self.url_edit, 1)
        layout.addLayout(buttons)

        self.snippets = QTabWidget()
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.snippet_edits: dict[str, QPlainTextEdit] = {}
        for title in ("curl", "Python (openai)", "Environment"):
            page = QWidget()
            box = QVBoxLayout(page)
            box.setContentsMargins(0, 0, 0, 0)
            edit = QPlainTextEdit()
            edit.setReadOnly(True)
            edit.setFont(mono)
            edit.setMaximumHeight(110)
            box.addWidget(edit)
            copy = QPushButton("Copy")
            copy.clicked.connect(lambda _=False, e=edit: self._copy(e))
            box.addWidget(copy, 0, Qt.AlignmentFlag.AlignRight)
            self.snippets.addTab(page, title)
            self.snippet_edits[title] = edit
        layout.addWidget(self.snippets)

        layout.addWidget(QLabel("Requests"))
        self.log_table = QTableWidget(0, len(LOG_COLUMNS))
        self.log_table.setTabKeyNavigation(False)
        self.log_table.setHorizontalHeaderLabels(LOG_COLUMNS)
        self.log_table.verticalHeader().setVisible(False)
        self.log_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.log_table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.log_table.horizontalHeader().setStretchLastSection(True)
        layout.addWidget(self.log_table, 1)
        self._live: dict[int, QTableWidgetItem] = {}
        """Requests shown while they wait or decode: job id -> their row's first cell."""
        self._ended: deque[int] = deque(maxlen=256)  # jobs whose record arrived

    # -- state --

    @property
    def serving(self) -> bool:
        return self.server_thread is not None

    def config(self) -> ServerConfig:
        """The settings from the form (raises SettingsError when they are refused)."""
        return ServerConfig(
            host="0.0.0.0" if self.remote_check.isChecked() else "127.0.0.1",
            port=self.port_spin.value(),
            api_key=self.key_edit.text().strip() or None,
            served_model_name=self.name_edit.text().strip() or None,
            default_max_tokens=self.max_tokens_spin.value(),
        )

    def url(self) -> str:
        if self.server_thread is not None:
            return self.server_thread.url
        host = "127.0.0.1"
        return f"http://{host}:{self.port_spin.value()}/v1"

    def set_model(self, loaded: Any) -> None:
        """The queue now answers with `loaded` (None: requests get 503)."""
        self.loaded = loaded
        self._refresh()

    def _on_switched(self, state: str, name: str) -> None:
        self.loading = name if state == "loading" else None
        self._refresh()

    def _refresh(self) -> None:
        self.model_label.setText(model_text(self.loaded, self.loading))
        busy = self.worker is not None
        for widget in (
            self.port_spin,
            self.key_edit,
            self.new_key_button,
            self.remote_check,
            self.name_edit,
            self.max_tokens_spin,
        ):
            widget.setEnabled(not self.serving and not busy)
        self.start_button.setEnabled(not self.serving and not busy)
        self.stop_button.setEnabled(self.serving and not busy)
        name = model_name(self.loaded)
        url = self.url()
        self.url_edit.setText(url if self.serving else "")
        if busy:
            text = "Stopping…" if self.serving else "Starting…"
        elif not self.serving and self.error_text:
            text = self.error_text
        elif not self.serving:
            text = "Not serving. Start to answer OpenAI API requests with the loaded model."
        elif name is None:
            text = f"Serving at {url}; no model is loaded, so requests get 503."
        else:
            text = f"Serving {name} at {url}; the chat shares the model."
        if self.serving and not busy:
            limit = self.server_thread.server.config.default_max_tokens
            text += (
                f" Chat answers stop at {limit:,} tokens unless a request sets "
                "max_tokens."
            )
        remote = self.serving and self.server_thread.server.config.host == "0.0.0.0"
        if remote and not busy:
            address = lan_address()
            if address:
                port = self.server_thread.port
                text += f" Other machines: http://{address}:{port}/v1 with the key."
        self.status_label.setText(text)
        key = self.key_edit.text().strip() or None
        shown = self.name_edit.text().strip() or name or "MODEL"
        self.snippet_edits["curl"].setPlainText(curl_line(url, shown, key))
        self.snippet_edits["Python (openai)"].setPlainText(
            python_snippet(url, shown, key)
        )
        self.snippet_edits["Environment"].setPlainText(env_snippet(url, key))

    def refresh_batch(self) -> None:
        """Show the queue's batch size and the server's requests now; emits
        batch_changed when the batch size moved."""
        self.refresh_running()
        queue = self.queue
        shown = (queue.batch_size, queue.waiting, queue.max_batch, queue.batching_note)
        if shown == self._batch_shown:
            return
        before = self._batch_shown
        self._batch_shown = shown
        self.batch_label.setText(batch_text(*shown))
        self.batch_label.setToolTip(
            f"Answers decoded together: {queue.batch_reason}"
            if queue.batch_reason
            else self.batch_label.toolTip()
        )
        if before is not None and before[:2] != shown[:2]:
            self.batch_changed.emit(shown[0], shown[1])

    def new_key(self) -> None:
        self.key_edit.setText(f"nb-{secrets.token_urlsafe(24)}")

    def _copy(self, edit: QPlainTextEdit) -> None:
        QGuiApplication.clipboard().setText(edit.toPlainText())

    # -- start / stop --

    def start(self) -> None:
        """Start serving; refusals (no key for other machines, port taken) show here."""
        if self.serving or self.worker is not None:
            return
        self.error_text = None
        try:
            config = self.config()
        except NibbleError as exc:
            self._show_error(exc)
            return
        worker = self.controller.start_server(config, self._record_arrived.emit)
        worker.returned.connect(self._on_started)
        worker.errored.connect(self._show_error)
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        self._refresh()

    def stop(self) -> None:
        """Stop serving; answers in flight are cancelled, the chat's are not."""
        if not self.serving or self.worker is not None:
            return
        worker = self.controller.stop_server(self.server_thread)
        worker.finished.connect(self._on_stopped)
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        self._refresh()

    def shutdown(self, timeout_s: float = 2.0) -> bool:
        """Stop now, on this thread (the window is closing); True if it ended."""
        ok = True
        worker = self.worker
        if worker is not None:
            ok = workers.stop_all([worker], int(timeout_s * 1000))
            # A start that finished meanwhile has not delivered its thread yet.
            self.server_thread = self.server_thread or getattr(
                worker, "server_thread", None
            )
        thread, self.server_thread = self.server_thread, None
        if thread is not None:
            ok = thread.stop(timeout_s) and ok
        return ok

    def _on_started(self, thread: Any) -> None:
        self.server_thread = thread
        self.worker = None  # its job is done; the view is ready before the signal
        self._refresh()
        self.serving_changed.emit(True)

    def _on_stopped(self) -> None:
        self.server_thread = None
        self.worker = None
        self._end_live("stopped")
        self._refresh()
        self.serving_changed.emit(False)

    def _on_worker_finished(self) -> None:
        self.worker = None
        self._refresh()

    def _show_error(self, exc: Any) -> None:
        if isinstance(exc, NibbleError):
            text = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
        else:
            text = f"could not start: {exc}"
        self.error_text = f"Not serving: {text}."
        self._refresh()

    # -- the log --

    def refresh_running(self) -> None:
        """Show the server's requests that wait or decode now, with their tokens so
        far; each one's row is filled in when its record arrives."""
        now_wall, now = time.time(), time.perf_counter()
        for job in self.queue.jobs():
            if job.request.source != "server" or job.id in self._ended:
                continue
            first = self._live.get(job.id)
            if first is None:
                first = self._add_row(
                    self._live_cells(job, now_wall - (now - job.submitted_at))
                )
                first.setData(JOB_ROLE, job.id)
                self._live[job.id] = first
            else:
                self._set_row(self.log_table.row(first), self._live_cells(job))

    @staticmethod
    def _live_cells(job: Job, at: float | None = None) -> tuple[str | None, ...]:
        """A running or waiting request's cells (None: leave the cell as it is)."""
        running = job.state == JOB_RUNNING and job.started_at is not None
        speed = ""
        if running and job.tokens:
            elapsed = time.perf_counter() - (job.started_at or 0.0)
            speed = f"{job.tokens / elapsed:.1f}" if elapsed > 0 else ""
        return (
            time.strftime("%H:%M:%S", time.localtime(at)) if at is not None else None,
            job.request.client,
            job.request.endpoint,
            "",
            str(job.tokens) if job.tokens else "",
            "",
            speed,
            "running" if running else "waiting",
        )

    def _end_live(self, status: str) -> None:
        """Rows of requests that will get no record (the server stopped) say so."""
        for first in self._live.values():
            row = self.log_table.row(first)
            if row >= 0:
                column = LOG_COLUMNS.index("Status")
                self.log_table.item(row, column).setText(status)
        self._live.clear()

    def _add_row(
        self, cells: tuple[str | None, ...], tip: str | None = None
    ) -> QTableWidgetItem:
        """Append a row (the oldest goes past MAX_LOG_ROWS); its first cell."""
        table = self.log_table
        if table.rowCount() >= MAX_LOG_ROWS:
            self._live.pop(table.item(0, 0).data(JOB_ROLE), None)
            table.removeRow(0)
        row = table.rowCount()
        table.insertRow(row)
        self._set_row(row, cells, tip)
        table.scrollToBottom()
        return table.item(row, 0)

    def _set_row(
        self, row: int, cells: tuple[str | None, ...], tip: str | None = None
    ) -> None:
        table = self.log_table
        for column, text in enumerate(cells):
            item = table.item(row, column)
            if item is None:
                item = QTableWidgetItem()
                table.setItem(row, column, item)
            if text is not None and item.text() != text:
                item.setText(text)
            if tip is not None:
                item.setToolTip(tip)

    def _add_record(self, record: RequestRecord) -> None:
        cells = (
            time.strftime("%H:%M:%S", time.localtime(record.time)),
            record.client,
            record.endpoint,
            str(record.prompt_tokens) if record.prompt_tokens else "",
            str(record.completion_tokens) if record.completion_tokens else "",
            f"{record.ttft_s * 1000:.0f} ms" if record.ttft_s is not None else "",
            f"{record.tokens_per_s:.1f}" if record.tokens_per_s else "",
            STATUS_TEXT.get(record.status, str(record.status)),
        )
        first = None
        if record.job_id is not None:
            first = self._live.pop(record.job_id, None)
            self._ended.append(record.job_id)
        row = self.log_table.row(first) if first is not None else -1
        if row >= 0:
            # The row it had while running keeps its place and its start time.
            self._set_row(row, (None, *cells[1:]), record.error or "")
        else:
            self._add_row(cells, record.error)
        self.request_logged.emit(record)
