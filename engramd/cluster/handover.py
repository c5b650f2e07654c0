"""A release that hands its resource over to the next in line in the same write.

Without it a handover in cluster mode is two writes and a wait between them: the
release's ``ended`` record, then, once the waiter's machine's watch shows it, the
waiter's own acquire (its write and its check). With it the release writes one
JetStream atomic batch (:meth:`.bucket.LeaseBucket.write_batch`) on the leases
bucket's stream, all of it stored or none of it:

* its own key's ``ended`` record, expecting the revision it holds;
* each lease of each waiter whose turn the end makes (:meth:`.leaseview.LeaseView.
  next_in_line`: the line's order, unchanged), ``held`` by the waiter's session and
  naming the waiter (``Held.waiter``), with the TTL of its ttl and
  :data:`.bucket.HANDOVER_SLACK`, expecting as the last revision under its root
  (``l.<root>.>``) the last one this machine's watch delivered there
  (:meth:`.leaseview.LeaseView.root_last`): so no lease under the root was written
  since this machine's view, which saw every lease that might conflict, and the
  handed-over lease needs no check of its own (a lease written after it finds it, with
  a smaller token, in its check, and gives way); its token is its revision, larger than
  every one before;
* each such waiter's ticket consumed (empty, expiring at once), expecting the revision
  this machine saw of it: the batch is stored after that revision was sent, which
  bounds the deadline the waiter's machine promises (:data:`.bucket.HANDOVER_SLACK`),
  and a waiter that withdrew or wrote its ticket again since makes the batch fail.

Only waiters whose ticket carries the terms of their leases (``Ticket.terms``) and
was seen written within :attr:`.tickets.Tickets.FRESH` (their machine is up) are
handed over to; a waiter passed over so takes its leases itself, as before. When an
expectation fails nothing is stored, and the release is written alone (the waiter
takes its leases itself). The waiter's machine learns of its grant from its watch
and answers with no write of its own (:mod:`.leases`).
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from dataclasses import dataclass, field

from engramd.cluster.bucket import (
    ENDED_TTL,
    HANDOVER_SLACK,
    LEASE,
    BatchWrite,
    Ended,
    Held,
    encode_record,
    handed_leases,
    root_of_key,
    ticket_key,
)
from engramd.cluster.leaseview import LeaseView
from engramd.locks import Holding
from engramd.protocol import Lease

MOST_WRITES = 256
"""A batch's messages at most (the servers take 1000 by default): waiters beyond are
not handed over to (they take their leases themselves)."""


@dataclass
class Handover:
    """One release's batch: its end, then the waiters' leases, then their tickets."""

    lease: Lease
    """The lease it ends."""
    ended: Ended
    writes: list[BatchWrite] = field(default_factory=list)
    grants: list[tuple[str, Held]] = field(default_factory=list)
    """(key, record) of each lease it hands over, in the order written."""
    waiters: list[str] = field(default_factory=list)

    @property
    def own_key(self) -> str:
        return self.writes[0].key


def plan(view: LeaseView, holding: Holding, ended: Ended, *, now: float, ts: dt.datetime,
         fresh: float) -> Handover | None:
    """The batch that ends *holding* with *ended* and grants whoever's turn that makes
    (*now*: trio's clock; *ts*: the wall clock the grants are dated; *fresh*: how
    recently a ticket must have been seen written), as this machine's view has it;
    None when there is no one to hand over to."""
    lease = holding.lease
    own_key = view.key_of(lease)
    own_last = view.revisions.get(own_key, 0)
    if view.holding_at(own_key) is not holding or not own_last:
        return None
    handover = Handover(lease, ended, [BatchWrite(
        own_key, encode_record(ended), last=own_last, ttl=ENDED_TTL,
        msg_id=secrets.token_hex(12))])
    tickets: list[BatchWrite] = []
    keys = {own_key}
    for waiter, ticket in view.next_in_line(holding):
        terms = ticket.terms
        ticket_last = view.revisions.get(ticket_key(waiter), 0)
        if (terms is None or not ticket_last or len(terms.lock_ids) != len(ticket.resources)
                or now - view.ticket_seen.get(waiter, -math.inf) > fresh):
            continue  # an older engramd's ticket, or of a machine that may have gone
        leases = handed_leases(ticket, terms, ts)
        wanted = [view.key_of(handed) for handed in leases]
        if (keys.intersection(wanted) or len(set(wanted)) != len(wanted)
                or any(view.holding_at(key) is not None for key in wanted)):
            continue  # (a key already written in this batch, or holding a lease)
        if len(handover.writes) + len(tickets) + len(leases) + 1 > MOST_WRITES:
            break
        keys.update(wanted)
        for key, handed in zip(wanted, leases, strict=True):
            root = root_of_key(key)
            record = Held(handed, waiter=waiter)
            handover.writes.append(BatchWrite(
                key, encode_record(record), last=view.root_last(root),
                under=f"{LEASE}.{root}.", ttl=terms.ttl + HANDOVER_SLACK,
                msg_id=secrets.token_hex(12)))
            handover.grants.append((key, record))
        tickets.append(BatchWrite(ticket_key(waiter), b"", last=ticket_last, ttl=1.0,
                                  msg_id=secrets.token_hex(12)))
        handover.waiters.append(waiter)
    if not handover.grants:
        return None
    handover.writes.extend(tickets)
    return handover
