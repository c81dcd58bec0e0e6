"""The chat history on the command line: `chats ...` and `generate --save-to-chat`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli import render
from cli.output import EXIT_OK
from core import chat as chat_mod
from core.chat import Chat, Turn
from core.errors import NibbleError
from core.store import conversations


def open_store() -> conversations.ConversationStore:
    """The user's history; a notice about a damaged file goes to stderr."""
    store = conversations.ConversationStore()
    if store.notice:
        print(f"warning: {store.notice}", file=sys.stderr)
    return store


def parse_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value < 2**63:  # SQLite's ids are positive 64-bit integers
        raise NibbleError(
            f"{text[:40]!r} is not a conversation id",
            "use the number `python main.py chats list` shows",
        )
    return value


def save_to_chat(target: str, system: str | None) -> Chat:
    """The conversation `generate --save-to-chat TARGET` continues ('new' or an id)."""
    store = open_store()
    try:
        return chat_mod.open_target(store, target, system)
    except BaseException:
        store.close()
        raise


def keep_answer(turn: Turn) -> None:
    """Store the answer of `turn` (an interrupted one marked stopped); close the store."""
    chat = turn._chat
    try:
        turn.finish()
        if turn.answer is not None:
            print(f"saved to conversation {turn.conversation_id}", file=sys.stderr)
    finally:
        if chat is not None and chat.store is not None:
            chat.store.close()


# -- chats ---------------------------------------------------------------------------


def cmd_chats_list(args: argparse.Namespace) -> int:
    with open_store() as store:
        items = store.list()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": c.id,
                        "title": c.title,
                        "created": conversations.iso(c.created),
                        "updated": conversations.iso(c.updated),
                    }
                    for c in items
                ],
                indent=2,
            )
        )
    elif items:
        print(render.chats_list(items))
    else:
        print("no conversations yet", file=sys.stderr)
    return EXIT_OK


def cmd_chats_show(args: argparse.Namespace) -> int:
    with open_store() as store:
        conversation = store.get(parse_id(args.id))
    if args.json:
        print(json.dumps(conversation.to_dict(), indent=2))
        return EXIT_OK
    print(f"# {conversation.display_title}  (conversation {conversation.id})")
    if conversation.system_prompt.strip():
        print(f"\n[system] {conversation.system_prompt}")
    for message in conversation.messages:
        if message.role == "assistant":
            provenance = message.provenance
            badge = f" [{provenance.badge()}]" if provenance else ""
            count = len(message.variants)
            which = f" (variant {message.active + 1} of {count})" if count > 1 else ""
            print(f"\nNibble{badge}{which}:\n{message.text}")
            if provenance and provenance.stats_line():
                print(f"  {provenance.stats_line()}")
        else:
            who = "You" if message.role == "user" else "System"
            print(f"\n{who}:\n{message.text}")
    return EXIT_OK


def cmd_chats_search(args: argparse.Namespace) -> int:
    with open_store() as store:
        hits = store.search(args.text)
    for hit in hits:
        print(f"{hit.conversation_id:>6}  {hit.title}  —  {hit.snippet}")
    if not hits:
        print(f"nothing found for {args.text!r}", file=sys.stderr)
    return EXIT_OK


def cmd_chats_export(args: argparse.Namespace) -> int:
    if not (args.md or args.json):
        raise NibbleError("pick a format", "add --md or --json")
    if args.out:
        check_export_target(Path(args.out), force=args.force)
    with open_store() as store:
        if args.id == "all":
            if args.md:
                raise NibbleError(
                    "all conversations export as one JSON file",
                    "use `chats export all --json`, or export one id with --md",
                )
            text = json.dumps(store.export_all_json(), indent=2, ensure_ascii=False)
        elif args.md:
            text = store.export_markdown(parse_id(args.id))
        else:
            text = json.dumps(
                store.export_json(parse_id(args.id)), indent=2, ensure_ascii=False
            )
    if not text.endswith("\n"):
        text += "\n"
    if args.out:
        write_export(Path(args.out), text, force=args.force)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def check_export_target(out: Path, force: bool) -> None:
    """Refuse the history's own files, a folder, or (without --force) a file."""
    history = conversations.database_path()
    own = {Path(f"{history}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")}
    target = out.resolve()
    if any(target == p.resolve() for p in own):
        raise NibbleError(
            f"{out} is the conversation history itself",
            "export to another file",
        )
    if target.is_dir():
        raise NibbleError(f"{out} is a folder", "name a file inside it")
    if target.exists() and not force:
        raise NibbleError(
            f"{out} already exists", "add --force to replace it, or pick another file"
        )


def write_export(out: Path, text: str, force: bool) -> None:
    """Write `text` to `out` whole or not at all: a temporary file, then a rename.

    A full disk mid-write leaves the old file as it was and no temporary behind.
    A symlink at `out` is replaced by the file, never written through.
    """
    import os
    import tempfile

    from core.errors import write_error

    check_export_target(out, force)
    folder = out.parent
    old = out.stat().st_mode & 0o777 if out.is_file() else None

    def failed(exc: OSError) -> NibbleError:
        mapped = write_error(exc, folder) or NibbleError(str(exc))
        kept = f"; {out} was left as it was" if old is not None else ""
        return NibbleError(mapped.message + kept, mapped.hint)

    try:
        fd, temp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise failed(exc) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if old is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)
        else:
            os.chmod(temp, old)
        os.replace(temp, out)
    except BaseException as exc:
        Path(temp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise failed(exc) from exc
        raise


def add_chats_parser(sub: Any) -> None:
    """The `chats` command and its list / show / search / export subcommands."""
    p = sub.add_parser("chats", help="the chat history: list, show, search, export")
    chats = p.add_subparsers(dest="chats_command", metavar="ACTION", required=True)

    q = chats.add_parser("list", help="every conversation, the latest first")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_chats_list)

    q = chats.add_parser("show", help="print one conversation with each answer's badge")
    q.add_argument("id")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_chats_show)

    q = chats.add_parser("search", help="conversations that contain some text")
    q.add_argument("text")
    q.set_defaults(func=cmd_chats_search)

    q = chats.add_parser(
        "export", help="a conversation as Markdown or JSON; 'all' as one JSON file"
    )
    q.add_argument("id", help="a conversation id, or 'all'")
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="Markdown with provenance")
    fmt.add_argument("--json", action="store_true", help="JSON with every field")
    q.add_argument("--out", "-o", default=None, metavar="FILE")
    q.add_argument(
        "--force", action="store_true", help="replace FILE if it already exists"
    )
    q.set_defaults(func=cmd_chats_export)
