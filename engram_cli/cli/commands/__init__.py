"""The command groups, one Typer sub-app (or command module) each, loaded only when
its command runs (:data:`engram_cli.cli.app.COMMANDS`).

May import: what the command line may (:mod:`engram_cli.cli`); the bench tools only
from :mod:`.bench`, and a door's optional extra only inside the command that opens it.
"""
