"""Codex's ``config.toml``: engram's MCP server as a marked block of text.

The file is the user's, comments and all, so engram never rewrites it from parsed data:
it adds, replaces or takes out one block between two marker lines::

    # >>> engram: written by 'engram setup codex' >>>
    [mcp_servers.engram]
    command = "engram"
    args = ["mcp", "--harness", "codex"]
    # <<< engram <<<

A ``[mcp_servers.engram]`` table written by someone else (``codex mcp add engram ...``)
is taken into the block where it stood, its other keys (``env``, timeouts) kept, so
the file never defines the server twice. Every result is parsed (Python's tomllib)
and compared with what was meant before it is returned; what does not parse, before or
after, is a :class:`~engram_cli.doors.harness.ConfigProblem`.
"""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from typing import Any

from engram_cli.doors.harness import ConfigProblem, mcp_command_line, merge_entry

BEGIN = "# >>> engram: written by 'engram setup codex' >>>"
END = "# <<< engram <<<"
TABLE = ("mcp_servers", "engram")
_HEADER = re.compile(r"^[ \t]*\[(\[)?(?P<key>[^\[\]\n]+?)\]\]?[ \t]*(#.*)?$", re.MULTILINE)
_BARE = re.compile(r"[A-Za-z0-9_-]+")
_KEY_PART = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*(\.|$)')


def parse(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigProblem(f"cannot read it as TOML ({exc})") from None


def _split(text: str) -> tuple[str, str, str]:
    """The text before engram's block, the block (with its line end), and after it."""
    start = text.find(BEGIN)
    if start < 0:
        return text, "", ""
    end = text.find(END, start)
    end = len(text) if end < 0 else end + len(END)
    if text[end:end + 1] == "\n":
        end += 1
    return text[:start], text[start:end], text[end:]


def remove_toml(text: str) -> str:
    """*text* without engram's block (and the blank line that set it apart)."""
    before, block, after = _split(text)
    if not block:
        return text
    if before.endswith("\n\n"):
        before = before[:-1]
    return before + after


def _key_parts(key: str) -> tuple[str, ...] | None:
    """A table header's dotted key as its parts (None: not a key this reads)."""
    parts: list[str] = []
    position = 0
    while position < len(key):
        found = _KEY_PART.match(key, position)
        if found is None:
            return None
        part = found.group(1)
        if part[0] in "\"'":
            try:
                part = tomllib.loads(f"k = {part}")["k"]
            except tomllib.TOMLDecodeError:
                return None
        parts.append(part)
        position = found.end()
        if not found.group(2):
            break
    return tuple(parts) if position >= len(key.rstrip()) else None


def _cut_table(text: str) -> tuple[str, int | None]:
    """*text* without its ``[mcp_servers.engram]`` tables (the server's and its
    sub-tables'), and where the first of them began (None: there was none)."""
    headers = [(match.start(), _key_parts(match.group("key")))
               for match in _HEADER.finditer(text)]
    kept: list[str] = []
    first: int | None = None
    position = 0
    for index, (start, parts) in enumerate(headers):
        if parts is None or parts[:2] != TABLE:
            continue
        end = headers[index + 1][0] if index + 1 < len(headers) else len(text)
        kept.append(text[position:start])
        first = sum(len(piece) for piece in kept) if first is None else first
        position = end
    kept.append(text[position:])
    return "".join(kept), first


def _string(value: str) -> str:
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char,
                                                                       f"\\u{ord(char):04x}"))
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else _string(key)


def value(item: Any) -> str:
    """*item* as a TOML value (tables inline)."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, str):
        return _string(item)
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        return ("inf" if item > 0 else "-inf") if math.isinf(item) else repr(item)
    if isinstance(item, datetime.date | datetime.time):
        return item.isoformat()
    if isinstance(item, list):
        return "[" + ", ".join(value(element) for element in item) + "]"
    if isinstance(item, dict):
        return "{" + ", ".join(f"{_key(k)} = {value(v)}" for k, v in item.items()) + "}" \
            if not item else "{ " + ", ".join(f"{_key(k)} = {value(v)}"
                                              for k, v in item.items()) + " }"
    raise ConfigProblem(f"cannot write {type(item).__name__} as TOML")


def block(entry: dict[str, Any]) -> str:
    lines = [BEGIN, "[mcp_servers.engram]"]
    lines += [f"{_key(key)} = {value(item)}" for key, item in entry.items()]
    return "\n".join([*lines, END]) + "\n"


def _servers(data: dict[str, Any]) -> dict[str, Any]:
    servers = data.get("mcp_servers", {})
    if not isinstance(servers, dict):
        raise ConfigProblem("mcp_servers is not a table as expected")
    engram = servers.get("engram", {})
    if not isinstance(engram, dict):
        raise ConfigProblem("mcp_servers.engram is not a table as expected")
    return engram


def install_toml(text: str, entry: dict[str, Any]) -> str:
    """*text* with engram's block holding *entry*, merged with the server's entry there
    already (the keys of it that *entry* has not), in the place of that entry or of
    engram's older block, else at the end."""
    before, old_block, after = _split(text)
    try:
        whole: dict[str, Any] | None = parse(text)
    except ConfigProblem:
        whole = None  # two definitions of the server, as an older engram left them
    if whole is None or old_block:
        whole = parse(before + after)
    old = _servers(parse(old_block)) if old_block else {}
    theirs = _servers(whole)
    rest, at = _cut_table(remove_toml(text))
    remaining = parse(rest)
    if _servers(remaining):
        raise ConfigProblem("mcp_servers.engram is an inline table or dotted keys, which "
                            "setup cannot merge: write it as a [mcp_servers.engram] "
                            "table, or take it out")
    merged = merge_entry(entry, {**old, **theirs})
    if at is None and old_block:  # where the older block stood
        at = len(before) - 1 if before.endswith("\n\n") else len(before)
    elif at is not None and rest[at:] and not rest[at:].startswith("\n"):
        rest = rest[:at] + "\n" + rest[at:]  # a blank line before the next table
    head, tail = (rest, "") if at is None else (rest[:at], rest[at:])
    if head and not head.endswith("\n\n"):
        head += "\n" if head.endswith("\n") else "\n\n"
    result = head + block(merged) + tail
    if result == text:
        return text
    expected = dict(remaining)
    expected["mcp_servers"] = {**expected.get("mcp_servers", {}), "engram": merged}
    if parse_or_none(result) != expected:
        raise ConfigProblem("mcp_servers.engram: the file would not read back as written; "
                            "add the server by hand (SPECS.md §6.2)")
    return result


def command_lines(text: str) -> list[list[str]]:
    """The engram server's command line in *text*: engram's block, else a table someone
    else wrote (none when absent or unreadable)."""
    _, block_text, _ = _split(text)
    data = parse_or_none(block_text or text) or {}
    servers = data.get("mcp_servers")
    line = mcp_command_line(servers.get("engram") if isinstance(servers, dict) else None)
    return [] if line is None else [line]


def parse_or_none(text: str) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
