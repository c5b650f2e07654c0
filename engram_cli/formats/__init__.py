"""engram's data as JSON and as text, the same for every face.

Pure functions over the protocol's structs: the JSON forms (:mod:`.jsonforms`,
what ``--json``, exports, the gateway and the MCP server write, and what imports
read), short text (:mod:`.text`: times, durations, previews), times read from the
command line or a query string (:mod:`.timeparse`), the session brief an agent
reads (:mod:`.briefview`) and the daemon's statistics as Prometheus text
(:mod:`.prometheus`).

May import: the standard library, msgspec and :mod:`engramd.protocol`; nothing
else of engram_cli (the command line and the doors both build on it).
"""
