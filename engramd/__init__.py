"""engramd: the engram daemon.

The daemon owns every piece of state; clients reach it only through the
protocol in :mod:`engramd.protocol`.
"""

__version__ = "0.1.0"
