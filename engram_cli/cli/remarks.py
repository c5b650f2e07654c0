"""engram's own lines on stderr in English (an error, a note), without what
:mod:`.output` imports (rich, msgspec, the protocol): :mod:`.output` says them with
these, and so does ``lock run`` on the fast start, which says them while CMD runs."""

from __future__ import annotations

import os
import sys


def printable(text: str) -> str:
    """:func:`engram_cli.formats.text.printable`, imported only for text that has
    something to escape."""
    if text.isascii() and text.isprintable():
        return text
    from engram_cli.formats.text import printable as escaped

    return escaped(text)


def error(message: str) -> None:
    """The CLI's one line on stderr for a failure, in English (see
    :func:`engram_cli.cli.output.error`, which adds the JSON form)."""
    stream = sys.stderr
    # A file name given in bytes that are not UTF-8 is named by those bytes, escaped.
    message = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    line = printable(message).replace("\n", "\\n")
    if stream.isatty() and not os.environ.get("NO_COLOR"):
        stream.write(f"\x1b[1;31mengram: error:\x1b[0m {line}\n")
    else:
        stream.write(f"engram: error: {line}\n")
    stream.flush()


def note(message: str) -> None:
    """A side remark on stderr (progress, hints); never mixed into stdout."""
    sys.stderr.write(f"engram: {printable(message)}\n")
    sys.stderr.flush()
