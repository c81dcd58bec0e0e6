import time
from core.model import catalog
from core.settings import GenerationSettings, LoadOptions, preset
from core.store import session as session_mod

def test_dbg(qtbot, tiny_dir, config_dir):
    from gui.main_window import MainWindow
    win = MainWindow(session_mod.Session(), auto_start=False, auto_load=False)
    qtbot.addWidget(win)
    win.show()
    win.start_background()
    c = win.controller
    qtbot.waitUntil(lambda: c.ready and win.history is not None, timeout=120_000)
    with qtbot.waitSignal(c.model_loaded, timeout=120_000):
        c.load(catalog.folder_ref(tiny_dir))
    chat = win.chat
    chat.greedy.setChecked(True)
    chat.max_tokens.setValue(5)
    chat.input.setPlainText("Hi")
    t = time.monotonic()
    with qtbot.waitSignal(c.answer_finished, timeout=60_000) as done:
        chat.send()
    print("took", time.monotonic() - t, done.args[0].stats, [w.text for w in chat.messages_widgets])
    win.close()
