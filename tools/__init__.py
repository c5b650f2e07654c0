"""Build tooling: not part of the installed package (see pyproject.toml)."""
