"""engramd: the engram daemon.

The daemon owns every piece of state; clients reach it only through the
protocol in :mod:`engramd.protocol`.

May import: the standard library, trio, msgspec and rocksdict; the optional extras
(numpy and the embedding model, nats-py) only where they are on. Never engram_cli,
typer or rich.
"""

__version__ = "0.1.0"
