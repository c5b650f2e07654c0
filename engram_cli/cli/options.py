"""Typer options that several command modules share (the only reason to import typer
here: the hot commands' own code, :mod:`.hot`, imports none of it)."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (the daemon's field names) instead of text.")
]
