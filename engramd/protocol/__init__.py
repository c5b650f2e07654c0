"""The contract between engramd and its clients: pure data and pure functions.

May import: only the standard library and msgspec: no sockets, no files, no trio.
This package is the only part of :mod:`engramd` that :mod:`engram_cli` uses.
What it offers, module by module (each module's ``__all__`` names it exactly):

* :mod:`.model`: the journal's records: ``Unit`` and ``UnitDraft`` with their
  ``Relationship``\\ s, ``Context``, ``Lease``, ``Task``, the events (``UnitCreated``,
  ``ContextCreated``, ``ContextUpdated``, ``LockAcquired`` ... ``LockExpired``) and the
  vocabularies (``UNIT_TYPES``, ``RELATIONSHIP_TYPES``, ``EVENT_KINDS``, id rules).
* :mod:`.messages`: every request (a tagged ``ClientMessage``: ``Hello``,
  ``CreateUnits``, ``AcquireLock``, ``Subscribe``, ...), every reply and push (a tagged
  ``ServerMessage``), ``reply_type`` and the limits they are checked against.
* :mod:`.errors`: ``ErrorCode`` and ``EngramError`` with one subclass per code, the
  same exceptions on both sides of the socket (``ErrorReply`` carries them).
* :mod:`.framing`: the length prefix: ``encode_frame``, ``FrameDecoder``, ``DEFAULT_MAX_FRAME``.
* :mod:`.connection`: a connection's server side, sans-IO (``ServerConnection``,
  ``State``, ``encode_message``); :mod:`.client`: its client side
  (``ClientConnection``, ``result``).
* :mod:`.address`: where the socket, the data and the log live, and their rules.
* :mod:`.agentwork` (import the module): the metadata keys of messages, tasks and
  sessions; :mod:`.resources` (import the module): what a lease's resource names
  (canonical file paths, directories, globs, plain names) and the one rule that says
  when two leases conflict; :mod:`.logline`: the daemon's log line format.
* :mod:`.bounds` (import the module): the bounds the daemon holds requests to (id
  patterns, page sizes, the defaults of the configurable limits), and the same as
  constrained msgspec types for the gateway's ``/openapi.json``.
"""

from engramd.protocol.address import *
from engramd.protocol.client import *
from engramd.protocol.connection import *
from engramd.protocol.errors import *
from engramd.protocol.framing import *
from engramd.protocol.messages import *
from engramd.protocol.model import *
