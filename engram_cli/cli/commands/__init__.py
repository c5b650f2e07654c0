"""The command groups, one Typer sub-app (or command module) each."""
