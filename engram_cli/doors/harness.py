"""What ``engram setup`` writes into a coding agent's harness, and what ``engram hook``
answers it: pure functions over JSON data and text (the commands do the I/O).

Four harnesses, each checked against its own documentation (SPECS.md §6.2 names the
documents):

* Claude Code, Codex and Gemini CLI read hooks in one shape, event -> matcher groups
  -> command handlers, and take context from a hook as
  ``hookSpecificOutput.additionalContext``; Gemini CLI names its events differently
  (BeforeAgent, BeforeTool, AfterAgent) and counts timeouts in milliseconds.
* Cursor reads ``{"version": 1, "hooks": {event: [handler, ...]}}``: handlers right
  under the event, camelCase events, answers in its own fields (``additional_context``,
  ``followup_message``, ``permission``).

engram's handlers are recognised by their command, ``engram [--socket S] [--data-dir D]
hook ...`` (or an absolute path to engram), so that installing twice changes nothing,
installing again leaves engram's handlers where they are among the others' (order means
nothing to a harness), and removing leaves every other hook alone. Anything of a shape
these rules do not expect is refused as a :class:`ConfigProblem` naming its key, never
guessed at.

Where the daemon is goes on every command line (``--socket``, ``--data-dir``: what the
shell that ran setup resolves), never in the environment: each harness gives its hooks
and its MCP server an environment of its own (Codex passes MCP servers a short list of
variables), and the command line is the one thing all of them pass whole. Who the agent
is (``ENGRAM_AGENT``, ``ENGRAM_TOKEN``) stays in the environment, forwarded by name where
a harness filters it (:func:`mcp_entry`), so a token is never written into a file.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import msgspec

GUARDS = ("off", "warn", "block")
MAX_CONTEXT = 9_500
"""Claude Code keeps at most 10,000 characters of a hook's additional context."""
_WORD = r"""(?:'[^']*'|"(?:[^"\\]|\\.)*"|[^\s'"])+"""
_OURS = rf"(^|[/\s])engram(_cli)?(\s+--(socket|data-dir|agent)(=|\s+){_WORD})*\s+hook\s"
"""A command of ours: engram, its global options (a shell word each), ``hook`` (compiled
on first use: a hook answering a harness never needs it)."""
"""The lines of an ``apply_patch`` that name a file it writes (a move's target too);
Codex trims a line before it reads a header, so an indented header counts too."""
WHERE_OPTIONS = ("--socket", "--data-dir")
"""The global options that say where the daemon is, as setup writes them."""


class Harness(msgspec.Struct, frozen=True):
    """How one harness takes hooks: its event for each of engram's hooks (None: it has
    no such event, or none that can tell the agent anything), the tools that change
    files, and the shape of its hooks file."""

    name: str
    start: str
    prompt: str | None
    edit: str
    stop: str
    edit_tools: str
    """The matcher of the edit guard: the harness's tools that change files."""
    warn_after: str | None = None
    """The event that can add context about an edit (Gemini CLI's BeforeTool cannot)."""
    groups: bool = True
    """event -> matcher groups -> handlers; False: handlers right under the event."""
    milliseconds: bool = False


HARNESSES: dict[str, Harness] = {h.name: h for h in (
    Harness("claude-code", "SessionStart", "UserPromptSubmit", "PreToolUse", "Stop",
            "Edit|Write|MultiEdit|NotebookEdit"),
    Harness("codex", "SessionStart", "UserPromptSubmit", "PreToolUse", "Stop",
            "apply_patch|Edit|Write"),
    Harness("gemini", "SessionStart", "BeforeAgent", "BeforeTool", "AfterAgent",
            "write_file|replace", warn_after="AfterTool", milliseconds=True),
    Harness("cursor", "sessionStart", None, "preToolUse", "stop",
            "Write|StrReplace|Edit|Delete", groups=False),
)}


def harness_of(name: str) -> Harness:
    """The harness called *name* (Claude Code's rules for a name engram does not know)."""
    return HARNESSES.get(name, HARNESSES["claude-code"])


class ConfigProblem(ValueError):
    """A harness's file that setup cannot edit safely: it does not parse, or a key holds
    something of another shape than the harness documents. The message names the key;
    the caller adds the file."""


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def _expect(value: Any, kind: type, key: str) -> None:
    if not isinstance(value, kind):
        wanted = "an object" if kind is dict else "a list"
        raise ConfigProblem(f"{key} is {_kind(value)}, not {wanted} as expected")


# -- hooks ----------------------------------------------------------------------------


class HookSpec(msgspec.Struct, frozen=True):
    event: str
    command: str
    matcher: str | None = None
    timeout: int | None = None
    """Seconds."""
    background: bool = False
    """Claude Code's ``async`` + ``asyncRewake``: run in the background, wake on exit 2."""

    def entry(self, harness: Harness) -> dict[str, Any]:
        """The entry of this hook in *harness*'s list for its event."""
        if not harness.groups:  # Cursor: the handler itself, its matcher beside it
            flat: dict[str, Any] = {"command": self.command}
            if self.matcher is not None:
                flat["matcher"] = self.matcher
            return flat
        handler: dict[str, Any] = {"type": "command", "command": self.command}
        if self.timeout is not None:
            handler["timeout"] = self.timeout * (1000 if harness.milliseconds else 1)
        if self.background:
            handler["async"] = True
            handler["asyncRewake"] = True
        group: dict[str, Any] = {"hooks": [handler]}
        if self.matcher is not None:
            group = {"matcher": self.matcher, **group}
        return group


def hook_specs(name: str, engram: list[str], guard: str) -> list[HookSpec]:
    """The hooks engram installs in harness *name*, running engram as *engram* (an argv)."""
    import shlex

    harness = HARNESSES[name]
    run = shlex.join([*engram, "hook"])
    flag = f"--harness {name}"
    specs = [HookSpec(harness.start, f"{run} session-start {flag}", timeout=10)]
    if harness.prompt is not None:
        specs.append(HookSpec(harness.prompt, f"{run} prompt {flag}", timeout=5))
    if guard != "off":
        event = harness.warn_after if guard == "warn" and harness.warn_after else harness.edit
        specs.append(HookSpec(event, f"{run} pre-edit {flag} --guard {guard}",
                              matcher=harness.edit_tools, timeout=5))
    if name == "claude-code":
        specs.append(HookSpec(harness.stop, f"{run} stop {flag} --wait 3600", background=True))
    else:
        specs.append(HookSpec(harness.stop, f"{run} stop {flag}", timeout=10))
    return specs


def is_ours(handler: Any) -> bool:
    return isinstance(handler, dict) and bool(re.search(_OURS, str(handler.get("command", ""))))


def where(argv: list[str]) -> dict[str, str]:
    """The ``--socket`` and ``--data-dir`` an engram command line gives (before its
    command), by option."""
    found: dict[str, str] = {}
    for index, word in enumerate(argv):
        if word in ("hook", "mcp"):
            break
        name, equals, value = word.partition("=")
        if name in WHERE_OPTIONS:
            if equals:
                found[name] = value
            elif index + 1 < len(argv):
                found[name] = argv[index + 1]
    return found


def hook_command_lines(config: dict[str, Any], harness: Harness) -> list[list[str]]:
    """engram's hook commands in *config*, split into words (what cannot be split: none)."""
    import shlex

    lines = []
    hooks = config.get("hooks")
    for entries in hooks.values() if isinstance(hooks, dict) else ():
        for entry in entries if isinstance(entries, list) else ():
            handlers = [entry] if not harness.groups else (
                entry.get("hooks") if isinstance(entry, dict) else None)
            for handler in handlers if isinstance(handlers, list) else ():
                if is_ours(handler):
                    try:
                        lines.append(shlex.split(str(handler["command"])))
                    except ValueError:
                        continue
    return lines


def _check_hooks(config: dict[str, Any], harness: Harness) -> None:
    """Refuse a hooks object of another shape than *harness* documents."""
    if "hooks" not in config:
        return
    hooks = config["hooks"]
    _expect(hooks, dict, "hooks")
    for event, entries in hooks.items():
        _expect(entries, list, f"hooks.{event}")
        for index, entry in enumerate(entries):
            key = f"hooks.{event}[{index}]"
            _expect(entry, dict, key)
            if harness.groups and "hooks" in entry:
                _expect(entry["hooks"], list, f"{key}.hooks")
                for number, handler in enumerate(entry["hooks"]):
                    _expect(handler, dict, f"{key}.hooks[{number}]")


def _strip(entries: list[Any], harness: Harness) -> tuple[list[Any], list[Any], int | None]:
    """*entries* without engram's handlers, engram's own entries, and where the first of
    them stood in what is left (None: there was none)."""
    kept: list[Any] = []
    ours: list[Any] = []
    first: int | None = None
    for entry in entries:
        if not harness.groups:
            if is_ours(entry):
                ours.append(entry)
                first = len(kept) if first is None else first
            else:
                kept.append(entry)
            continue
        handlers = entry.get("hooks")
        if not isinstance(handlers, list) or not any(is_ours(h) for h in handlers):
            kept.append(entry)
            continue
        first = len(kept) if first is None else first
        others = [handler for handler in handlers if not is_ours(handler)]
        if others:  # someone put their handler beside ours: theirs stay, ours leave
            kept.append({**entry, "hooks": others})
            ours.append(None)  # never equal to a wanted entry: the event is rewritten
        else:
            ours.append(entry)
    return kept, ours, first


def remove_hooks(config: dict[str, Any], harness: Harness) -> dict[str, Any]:
    """*config* without engram's hook handlers (and without what that leaves empty)."""
    _check_hooks(config, harness)
    result = copy.deepcopy(config)
    hooks = result.get("hooks")
    if not hooks:
        return result
    removed = False
    for event in list(hooks):
        kept, ours, _ = _strip(hooks[event], harness)
        if ours:
            removed = True
            if kept:
                hooks[event] = kept
            else:
                del hooks[event]
    if not removed:
        return result
    if not hooks:
        del result["hooks"]
    if not harness.groups and set(result) == {"version"}:
        return {}  # Cursor's version alone is no configuration: the file was engram's
    return result


def install_hooks(config: dict[str, Any], specs: list[HookSpec],
                  harness: Harness) -> dict[str, Any]:
    """*config* with exactly engram's hooks *specs*, others' hooks kept in place.

    Where engram's entries of an event are already what *specs* want, the event is left
    as it is, wherever they stand; otherwise they are replaced where the first of them
    stood (or added at the end)."""
    _check_hooks(config, harness)
    result = copy.deepcopy(config)
    if not harness.groups:
        result.setdefault("version", 1)
    hooks = result.setdefault("hooks", {})
    wanted: dict[str, list[Any]] = {}
    for spec in specs:
        wanted.setdefault(spec.event, []).append(spec.entry(harness))
    for event in [*hooks, *(event for event in wanted if event not in hooks)]:
        kept, ours, first = _strip(hooks.get(event, []), harness)
        entries = wanted.get(event, [])
        if ours == entries:
            continue
        at = len(kept) if first is None else first
        if kept or entries:
            hooks[event] = kept[:at] + entries + kept[at:]
        else:
            del hooks[event]
    if not hooks:
        del result["hooks"]
    return result


# -- the MCP server entry ---------------------------------------------------------------


def mcp_argv(engram: list[str], harness: str) -> list[str]:
    """How the harness starts the MCP server: naming itself, so that the server's agent
    name is the hooks' (``<harness>-<pid>``)."""
    return [*engram, "mcp", "--harness", harness]


IDENTITY = ("ENGRAM_AGENT", "ENGRAM_TOKEN")
"""Who the agent is: forwarded to the MCP server by name, never written as a value."""


def mcp_entry(engram: list[str], harness: str) -> dict[str, Any]:
    """The server's entry in *harness*'s ``mcpServers`` (Codex: ``[mcp_servers.engram]``).

    Claude Code and Cursor start the server in their own environment; Codex passes it a
    short list of variables plus those named in ``env_vars``; Gemini CLI drops variables
    named like secrets (``*TOKEN*``) unless ``env`` names them, ``$NAME`` taking the value
    of its own environment (empty when unset, which engram reads as unset)."""
    argv = mcp_argv(engram, harness)
    if harness == "claude-code":
        return {"type": "stdio", "command": argv[0], "args": argv[1:]}
    entry: dict[str, Any] = {"command": argv[0], "args": argv[1:]}
    if harness == "codex":
        entry["env_vars"] = list(IDENTITY)
    elif harness == "gemini":
        entry["env"] = {name: f"${name}" for name in IDENTITY}
    return entry


def merge_entry(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """engram's server entry *ours* over the entry someone wrote (*theirs*, or an older
    setup): their other keys stay, a variable they set in ``env`` keeps their value, the
    names they forward in ``env_vars`` stay (first, engram's after)."""
    merged = dict(ours)
    for key, value in theirs.items():
        mine = ours.get(key)
        if key not in ours:
            merged[key] = value
        elif key == "env" and isinstance(mine, dict) and isinstance(value, dict):
            merged[key] = {**mine, **value}
        elif key == "env_vars" and isinstance(mine, list) and isinstance(value, list):
            merged[key] = [*value, *(name for name in mine if name not in value)]
    return merged


def mcp_command_line(server: Any) -> list[str] | None:
    """The command line of a server entry (None: not one of command and string args)."""
    if not isinstance(server, dict) or not isinstance(server.get("command"), str):
        return None
    args = server.get("args", [])
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        return None
    return [server["command"], *args]


SERVERS = ("mcpServers",)
"""Where the servers are in every JSON file setup writes but one: Claude Code's
``~/.claude.json`` keeps a project's own (its local scope) under
``("projects", PROJECT, "mcpServers")``."""


def _servers(config: dict[str, Any], where: tuple[str, ...]) -> dict[str, Any] | None:
    """The servers object at *where* in *config* (None: absent), its shape checked."""
    node: Any = config
    for depth, key in enumerate(where):
        if key not in node:
            return None
        node = node[key]
        _expect(node, dict, ".".join(where[:depth + 1]))
    if "engram" in node:
        _expect(node["engram"], dict, ".".join([*where, "engram"]))
    return dict(node)


def install_mcp(config: dict[str, Any], entry: dict[str, Any],
                where: tuple[str, ...] = SERVERS) -> dict[str, Any]:
    """*config* with the engram server *entry*, merged into one there already: its other
    keys (``env``, a timeout) stay."""
    _servers(config, where)
    result = copy.deepcopy(config)
    node = result
    for key in where:
        node = node.setdefault(key, {})
    node["engram"] = merge_entry(entry, node.get("engram", {}))
    return result


def mcp_command_lines(config: dict[str, Any], where: tuple[str, ...] = SERVERS
                      ) -> list[list[str]]:
    """The engram server's command line in *config* (none when absent or of another shape)."""
    node: Any = config
    for key in (*where, "engram"):
        node = node.get(key) if isinstance(node, dict) else None
    line = mcp_command_line(node)
    return [] if line is None else [line]


def remove_mcp(config: dict[str, Any], where: tuple[str, ...] = SERVERS) -> dict[str, Any]:
    """*config* without the engram server, and without the objects that leaves empty."""
    servers = _servers(config, where)
    if servers is None or "engram" not in servers:
        return config
    result = copy.deepcopy(config)
    chain = [result]
    for key in where:
        chain.append(chain[-1][key])
    del chain[-1]["engram"]
    for parent, key, child in zip(reversed(chain[:-1]), reversed(where), reversed(chain[1:]),
                                  strict=True):
        if child:
            break
        del parent[key]
    return result


def dump_json(config: dict[str, Any]) -> str:
    import json  # setup's only: the hooks answer through msgspec, which is loaded anyway

    return json.dumps(config, indent=2) + "\n"


# -- what the hooks answer ------------------------------------------------------------


def additional_context(event: str, text: str, harness: str = "claude-code") -> dict[str, Any]:
    """The answer that adds *text* to the model's context at *event*."""
    if len(text) > MAX_CONTEXT:
        text = text[:MAX_CONTEXT - 1] + "…"
    if harness == "cursor":
        return {"additional_context": text}
    return {"hookSpecificOutput": {"hookEventName": event, "additionalContext": text}}


def deny_edit(reason: str, harness: str = "claude-code") -> dict[str, Any]:
    """The answer that refuses a file edit, telling the agent *reason*."""
    if harness == "gemini":
        return {"decision": "deny", "reason": reason}
    if harness == "cursor":  # the fields of its preToolUse and of its older before* hooks
        return {"decision": "deny", "reason": reason, "permission": "deny",
                "agent_message": reason, "user_message": reason}
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse",
                                   "permissionDecision": "deny",
                                   "permissionDecisionReason": reason}}


def warn_edit(text: str, harness: str = "claude-code") -> dict[str, Any]:
    """The answer that lets a file edit go with a warning: context where the harness takes
    it at its edit hook (Gemini CLI: after the edit); Cursor takes none before a tool,
    and shows the messages of a hook that decides nothing where it shows them."""
    if harness == "cursor":
        return {"agent_message": text, "user_message": text}
    event = HARNESSES["gemini"].warn_after if harness == "gemini" else "PreToolUse"
    return additional_context(str(event), text, harness)


def go_on(reason: str, harness: str) -> dict[str, Any]:
    """The stop hook's answer that continues the turn with *reason* as the prompt."""
    if harness == "cursor":
        return {"followup_message": reason}
    return {"decision": "block", "reason": reason}
