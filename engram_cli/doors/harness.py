"""What ``engram setup`` writes into a coding agent's harness, and what ``engram hook``
answers it: pure functions over JSON data and text (the commands do the I/O).

Both harnesses read hooks in one shape (event -> matcher groups -> command
handlers) and take context from a hook as ``hookSpecificOutput.additionalContext``
(see ``../shared/reference/agents.md``). engram's handlers are recognised by
their command, ``engram hook ...`` (or an absolute path to engram), so that
installing twice changes nothing and removing leaves every other hook alone.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import msgspec

GUARDS = ("off", "warn", "block")
EDIT_TOOLS = {"claude-code": "Edit|Write|MultiEdit|NotebookEdit", "codex": "apply_patch|Edit|Write"}
"""PreToolUse matchers for the tools that change files."""
MAX_CONTEXT = 9_500
"""Claude Code keeps at most 10,000 characters of a hook's additional context."""
TOML_BEGIN = "# >>> engram: written by 'engram setup codex' >>>"
TOML_END = "# <<< engram <<<"
_OURS = r"(^|[/\s])engram(_cli)? hook "
"""A command of ours (compiled on first use: a hook answering a harness never needs it)."""


class HookSpec(msgspec.Struct, frozen=True):
    event: str
    command: str
    matcher: str | None = None
    timeout: int | None = None
    background: bool = False
    """Claude Code's ``async`` + ``asyncRewake``: run in the background, wake on exit 2."""

    def group(self) -> dict[str, Any]:
        handler: dict[str, Any] = {"type": "command", "command": self.command}
        if self.timeout is not None:
            handler["timeout"] = self.timeout
        if self.background:
            handler["async"] = True
            handler["asyncRewake"] = True
        group: dict[str, Any] = {"hooks": [handler]}
        if self.matcher is not None:
            group = {"matcher": self.matcher, **group}
        return group


def hook_specs(harness: str, engram: list[str], guard: str) -> list[HookSpec]:
    """The hooks engram installs in *harness*, running engram as *engram* (an argv)."""
    import shlex

    run = shlex.join([*engram, "hook"])
    flag = f"--harness {harness}"
    specs = [
        HookSpec("SessionStart", f"{run} session-start {flag}", timeout=10),
        HookSpec("UserPromptSubmit", f"{run} prompt {flag}", timeout=5),
    ]
    if guard != "off":
        specs.append(HookSpec("PreToolUse", f"{run} pre-edit {flag} --guard {guard}",
                              matcher=EDIT_TOOLS[harness], timeout=5))
    if harness == "claude-code":
        specs.append(HookSpec("Stop", f"{run} stop {flag} --wait 3600", background=True))
    else:
        specs.append(HookSpec("Stop", f"{run} stop {flag}", timeout=10))
    return specs


def is_ours(handler: Any) -> bool:
    return isinstance(handler, dict) and bool(re.search(_OURS, str(handler.get("command", ""))))


def _without_ours(groups: list[Any]) -> list[Any]:
    kept = []
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("hooks"), list):
            kept.append(group)
            continue
        handlers = [handler for handler in group["hooks"] if not is_ours(handler)]
        if handlers:
            kept.append({**group, "hooks": handlers})
        elif not group["hooks"]:
            kept.append(group)
    return kept


def remove_hooks(config: dict[str, Any]) -> dict[str, Any]:
    """*config* without engram's hook handlers (and without what that leaves empty)."""
    result = copy.deepcopy(config)
    hooks = result.get("hooks")
    if not isinstance(hooks, dict):
        return result
    for event in list(hooks):
        if isinstance(hooks[event], list):
            before = hooks[event]
            hooks[event] = _without_ours(before)
            if not hooks[event] and before:
                del hooks[event]
    if not hooks:
        del result["hooks"]
    return result


def install_hooks(config: dict[str, Any], specs: list[HookSpec]) -> dict[str, Any]:
    """*config* with exactly engram's hooks *specs* (others' hooks kept, in place)."""
    result = remove_hooks(config)
    hooks = result.setdefault("hooks", {})
    for spec in specs:
        hooks.setdefault(spec.event, []).append(spec.group())
    return result


def mcp_argv(engram: list[str], harness: str) -> list[str]:
    """How the harness starts the MCP server: naming itself, so that the server's agent
    name is the hooks' (``<harness>-<pid>``)."""
    return [*engram, "mcp", "--harness", harness]


def install_mcp(config: dict[str, Any], engram: list[str]) -> dict[str, Any]:
    """Claude Code's ``.mcp.json`` (or ``~/.claude.json``) with the engram server."""
    result = copy.deepcopy(config)
    servers = result.setdefault("mcpServers", {})
    argv = mcp_argv(engram, "claude-code")
    servers["engram"] = {"type": "stdio", "command": argv[0], "args": argv[1:]}
    return result


def remove_mcp(config: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(config)
    servers = result.get("mcpServers")
    if isinstance(servers, dict) and "engram" in servers:
        del servers["engram"]
        if not servers:
            del result["mcpServers"]
    return result


def dump_json(config: dict[str, Any]) -> str:
    import json  # setup's only: the hooks answer through msgspec, which is loaded anyway

    return json.dumps(config, indent=2) + "\n"


def toml_block(engram: list[str]) -> str:
    # JSON strings are valid TOML basic strings for the paths and words used here.
    import json

    argv = mcp_argv(engram, "codex")
    return (f"{TOML_BEGIN}\n[mcp_servers.engram]\ncommand = {json.dumps(argv[0])}\n"
            f"args = {json.dumps(argv[1:])}\n{TOML_END}\n")


def install_toml(text: str, engram: list[str]) -> str:
    """Codex's ``config.toml`` with engram's marked block (replacing an older one)."""
    base = remove_toml(text)
    separator = "" if not base or base.endswith("\n\n") else ("\n" if base.endswith("\n")
                                                             else "\n\n")
    return base + separator + toml_block(engram)


def remove_toml(text: str) -> str:
    start = text.find(TOML_BEGIN)
    if start < 0:
        return text
    end = text.find(TOML_END, start)
    end = len(text) if end < 0 else end + len(TOML_END)
    if text[end:end + 1] == "\n":
        end += 1
    before = text[:start]
    if before.endswith("\n\n"):
        before = before[:-1]
    return before + text[end:]


# -- what the hooks answer ------------------------------------------------------------


def additional_context(event: str, text: str) -> dict[str, Any]:
    """The answer that adds *text* to the model's context at *event*."""
    if len(text) > MAX_CONTEXT:
        text = text[:MAX_CONTEXT - 1] + "…"
    return {"hookSpecificOutput": {"hookEventName": event, "additionalContext": text}}


def deny_edit(reason: str) -> dict[str, Any]:
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse",
                                   "permissionDecision": "deny",
                                   "permissionDecisionReason": reason}}


def edited_paths(hook_input: dict[str, Any]) -> list[str]:
    """The files a PreToolUse input is about to change: ``file_path``/``path``/
    ``notebook_path`` of the tool input, or the files an ``apply_patch`` names."""
    tool_input = hook_input.get("tool_input") or {}
    if not isinstance(tool_input, dict):
        return []
    paths = [value for key in ("file_path", "path", "notebook_path")
             if isinstance(value := tool_input.get(key), str) and value]
    for key in ("command", "input", "patch"):
        value = tool_input.get(key)
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if isinstance(text, str):
                paths += re.findall(r"^\*\*\* (?:Update|Add|Delete) File: (.+)$", text,
                                    flags=re.MULTILINE)
    return list(dict.fromkeys(path.strip() for path in paths))
