"""Fence marks: which leases have fenced writes, carried in the journal itself.

A fenced write is checked against the leases bucket (one stream) and written to the
journal (another): no JetStream condition spans two streams, so a lease can end
between the check and the write. What closes that window is the journal's own
order. Every message of a fenced write carries, in its ``Engram-Fences`` header, a
*mark* per lease that fenced it: the lease's resource, token and session. Every
machine applies the marks with the message, in stream order, and the store keeps
them (``f/`` keys) in the batch that applies it; so a machine's marks are exactly
those of the messages its view has applied, no more, no less.

A fenced write with the lease (R, t, S) is refused (``conflict``) when the marks
hold (R', t', S') with R' overlapping R, t' > t and S' another session: two
conflicting leases of different sessions are never held at once (§9.1), and tokens
only grow, so the lease t' was granted after the lease t had ended, and t fences
nothing any more. The check is made while the batch is built on the view at stream
position p, and the batch is published with ``Nats-Expected-Last-Sequence: p``: it
is stored only if nothing was written after p. So the check and the write are one
step as every machine sees it: once a write fenced by a newer conflicting lease is
in the journal, no write fenced by an older one is stored after it. A holder paused
between its check and its write (or whose machine has not yet heard that its lease
ended) finds, when it resumes, the stream moved on under it (if the newer holder
wrote: the batch is built again and the mark refuses it), or the stream as it was
(nobody wrote: its write goes in before any write of a newer holder, as a write
made just before its lease ended would).

A session's own leases never stand in its way (it may hold ``src/`` and
``src/app.py``, and write with either), so marks of the same session refuse nothing.
"""

from __future__ import annotations

import base64

import msgspec

from engramd.claims import Claim, ClaimIndex
from engramd.protocol import Conflict, Lease
from engramd.protocol.resources import overlaps, parse


class Mark(msgspec.Struct, frozen=True, array_like=True):
    """A lease that fenced a write: its resource, token and session."""

    resource: str
    token: int
    agent: str
    session: str

    @property
    def key(self) -> bytes:
        """Its store key's part after ``f/``: one per session and resource."""
        return "\0".join((self.resource, self.agent, self.session)).encode()


_encode_marks = msgspec.msgpack.Encoder().encode
_decode_marks = msgspec.msgpack.Decoder(list[Mark]).decode
decode_mark = msgspec.msgpack.Decoder(Mark).decode
encode_mark = msgspec.msgpack.Encoder().encode


def header_value(marks: list[Mark]) -> str:
    """The marks as a header value (unpadded base64url of their msgpack)."""
    return base64.urlsafe_b64encode(_encode_marks(marks)).decode().rstrip("=")


def from_header(value: str | None) -> list[Mark]:
    """The marks a header value holds (none for a message without the header)."""
    if not value:
        return []
    return _decode_marks(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


def mark_of(lease: Lease) -> Mark:
    return Mark(resource=lease.resource, token=lease.fencing_token, agent=lease.holder,
                session=lease.session)


class FenceMarks:
    """The marks of the journal as this machine's view has applied it, and those of the
    batch being built (in the trio thread: the view adds a message's marks right
    after its journal thread applied it, before its position moves)."""

    def __init__(self) -> None:
        self.tokens: dict[bytes, int] = {}
        """Mark key -> the largest token marked under it."""
        self._claims: dict[bytes, Claim] = {}
        self.index = ClaimIndex()
        self.pending: list[Mark] = []
        """The marks of the batch being built (published with it)."""

    def load(self, marks: list[Mark]) -> None:
        """The store's marks, at start."""
        self.applied(marks)

    def applied(self, marks: list[Mark]) -> None:
        """*marks* are in the journal, as applied here."""
        for mark in marks:
            key = mark.key
            if key in self.tokens:
                self.tokens[key] = max(self.tokens[key], mark.token)
                continue
            self.tokens[key] = mark.token
            claim = self._claims[key] = Claim(parse(mark.resource), False, key,
                                              (mark.agent, mark.session))
            self.index.add(claim)

    def check(self, lease: Lease) -> None:
        """Refuse a write fenced by *lease* when a conflicting lease of another session
        with a larger token has fenced a write before it (see the module); else note
        its mark for the batch being built."""
        session = (lease.holder, lease.session)
        token = lease.fencing_token
        for claim in self.index.conflicting(parse(lease.resource), False):
            newer = self.tokens[claim.owner]  # type: ignore[index]
            if claim.session != session and newer > token:
                raise Conflict(self._stale(lease, claim.resource.text, newer))
        for mark in self.pending:
            if ((mark.agent, mark.session) != session and mark.token > token
                    and overlaps(mark.resource, lease.resource)):
                raise Conflict(self._stale(lease, mark.resource, mark.token))
        self.pending.append(mark_of(lease))

    @staticmethod
    def _stale(lease: Lease, resource: str, newer: int) -> str:
        return (f"stale fence: token {lease.fencing_token} on {lease.resource} has ended: "
                f"a newer lease on {resource} (token {newer}) has fenced a write since")

    def take(self) -> list[Mark]:
        """The marks of the batch built, to publish with it (then none pending)."""
        taken, self.pending = self.pending, []
        return list(dict.fromkeys(taken))
