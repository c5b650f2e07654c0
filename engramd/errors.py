"""The daemon's own error: it cannot start.

The errors it reports to clients are the protocol's (:mod:`engramd.protocol.errors`),
shared with the clients; :mod:`engramd.dispatch` is the one place where they
become error frames, and anything else raised while serving a request is a bug
reported as ``internal``.
"""

from __future__ import annotations


class StartupError(Exception):
    """engramd cannot start; the message is printed as is and the exit status is 1."""
