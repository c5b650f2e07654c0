"""What a harness's hook input says: the files an edit is about to change and the
directory it runs in. No import at the start (``re`` only for a patch): the fast start of
``engram hook pre-edit`` reads them before it knows whether it needs anything else."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_PATCHED = r"^[ \t]*\*\*\* (?:(?:Update|Add|Delete) File|Move to): (.+)$"
"""The lines of an ``apply_patch`` (Codex) that name a file it writes."""


def edited_paths(hook_input: dict[str, Any]) -> list[str]:
    """The files a PreToolUse input is about to change: ``file_path``/``path``/
    ``notebook_path`` of the tool input, or the files an ``apply_patch`` names (a
    ``*** Move to:`` target too: a move writes it)."""
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
                import re

                paths += re.findall(_PATCHED, text, flags=re.MULTILINE)
    return list(dict.fromkeys(path.strip() for path in paths))


def working_dir(hook_input: dict[str, Any], default: str) -> str:
    """The directory a hook input is about: its ``cwd``, else (Cursor) the first of its
    ``workspace_roots``, else *default*."""
    cwd = hook_input.get("cwd")
    if isinstance(cwd, str) and cwd:
        return cwd
    roots = hook_input.get("workspace_roots")
    if isinstance(roots, list) and roots and isinstance(roots[0], str) and roots[0]:
        return roots[0]
    return default
