"""engram for other programs: the doors through which they reach engramd.

* :mod:`.mcpserver`: ``engram mcp``, the MCP server coding agents call (extra ``mcp``);
* :mod:`.harness`: what Claude Code, Codex, Gemini CLI and Cursor send to ``engram hook``
  and what ``engram setup`` writes into their settings (:mod:`.tomlblock`: Codex's
  ``config.toml``);
* :mod:`.githooks`: the git hooks that record commits, checkouts, merges and rewrites;
* :mod:`.gateway`: ``engram gateway``, engram over HTTP, SSE and WebSocket (extra ``http``);
* :mod:`.files`: writing another program's file whole or not at all.

May import: the client library (:mod:`engram_cli.client`), :mod:`engram_cli.formats`
and :mod:`engramd.protocol`; an optional extra only inside the door that needs it.
Never the command line (:mod:`engram_cli.cli`) or the bench tools. The command
line's commands import a door, never the other way round.
"""
