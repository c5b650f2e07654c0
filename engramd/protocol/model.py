"""The data model: work units, contexts and the events that change them.

These Structs travel on the wire and are also what the daemon stores: the
journal (WAL) holds events in exactly this encoding, and the store keeps each
unit's encoded bytes so that a read can send them on without decoding. A change
here is therefore a change of both formats (see SPECS.md and tests/data/).
"""

# msgspec Struct options are inherited; see the note in messages.py.
# mypy: disable-error-code="misc"

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated

import msgspec

UNIT_ID_LENGTH = 36
"""Unit ids are UUIDv7 text; anything shorter that a client passes is a prefix."""
MIN_UNIT_ID_PREFIX = 8
"""The shortest prefix ``unit.resolve`` takes."""
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""A UUID's text as engramd writes it: the only id an imported unit may keep."""

UNIT_TYPES = (
    "MESSAGE", "REASONING", "TOOL_CALL", "TOOL_RESULT", "FILE_CHANGE", "TASK_STATUS",
    "ERROR", "SYSTEM",
)
RELATIONSHIP_TYPES = (
    "SEQUENTIAL", "CAUSES", "DEPENDS_ON", "REFERENCES", "RESPONDS_TO", "MODIFIES", "REPLACES",
)
CONTEXT_CHANGES = (
    "agent_joined", "agent_left", "unit_pinned", "unit_unpinned", "renamed", "meta_set",
    "meta_unset",
)


MAX_MAP_ENTRIES = 1_024
"""Most entries in a map (metadata) or relationship list of a request."""


class Relationship(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    """One of :data:`RELATIONSHIP_TYPES`."""
    target: str
    """The id of an existing unit."""
    meta: Annotated[dict[str, str], msgspec.Meta(max_length=MAX_MAP_ENTRIES)] = {}


class Unit(msgspec.Struct, frozen=True, kw_only=True):
    """An immutable record of one step of work."""

    id: str
    """UUIDv7 text, time-ordered."""
    seq: int
    """Global sequence number, strictly increasing, assigned by the daemon."""
    context_id: str
    agent_id: str
    type: str
    ts: dt.datetime
    """UTC, microseconds, assigned by the daemon."""
    meta: dict[str, str]
    payload: bytes
    relationships: list[Relationship]
    uid: int
    """The writer's uid, from the socket."""
    pid: int
    """The writer's pid, from the socket."""

    @property
    def text(self) -> str | None:
        """The payload as text: ``None`` when it is not UTF-8 (binary data)."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError:
            return None


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """A group of units (a task, a branch, a session) and the agents taking part."""

    id: str
    display_name: str
    agent_ids: list[str]
    pinned_units: list[str]
    meta: dict[str, str]
    created_at: dt.datetime
    updated_at: dt.datetime


class ContextChange(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    """One of :data:`CONTEXT_CHANGES`."""
    value: str
    """The agent, unit id, new name, or meta key concerned."""


# -- events: every change, in sequence order --------------------------------


class Event(msgspec.Struct, tag_field="kind", frozen=True, kw_only=True):
    seq: int
    ts: dt.datetime
    context_id: str


class UnitCreated(Event, tag="unit.created"):
    unit: Unit


class ContextCreated(Event, tag="context.created"):
    context: Context


class ContextUpdated(Event, tag="context.updated"):
    context: Context
    """The context after the change."""
    changes: list[ContextChange]


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A time-boxed hold on one resource (a plain name, or a file, directory or glob:
    :mod:`engramd.protocol.resources`) by one session of an agent: exclusive, or
    shared with other shared leases."""

    resource: str
    holder: str
    """The agent holding it (who: attribution, tokens, the per-agent limit)."""
    lock_id: str
    """Random and unguessable: the holder's proof of ownership."""
    fencing_token: int
    """Strictly greater than every token handed out before (the seq of the grant)."""
    acquired_at: dt.datetime
    expires_at: dt.datetime
    ttl: float
    boot_id: str = ""
    """The machine's boot id at the grant (``/proc/sys/kernel/random/boot_id``)."""
    deadline_boottime: float = 0.0
    """Expiry on CLOCK_BOOTTIME, so a daemon restart keeps the remaining time exactly."""
    pid: int | None = None
    """Released as soon as this process is gone."""
    bound_to_connection: bool = False
    session: str = ""
    """Which running instance of the holder holds it: ``pid:N`` when bound to
    process N, else ``conn:N@I``, connection N of daemon start I. Asking again
    is a conflict only for the same session; other sessions of the same agent
    wait in line like anyone. Empty in leases granted before sessions existed."""
    holder_pid: int = 0
    """The session's process: the bound pid, else the process that connected."""
    machine: str = ""
    """Cluster mode: the machine whose engramd granted it and watches its holder (empty
    on one machine)."""
    pgid: int | None = None
    """The process group that works under it (``lock run``'s CMD): the lease does not
    end while a process of that group runs; the granting daemon stops the group first."""
    while_alive: bool = False
    """Bound to ``pid`` and asked without a ttl: held while that process lives (the
    granting daemon renews it, ``ttl`` at a time) and ended the moment it exits."""
    shared: bool = False
    """A shared (reader's) lease: it coexists with other shared leases on what it
    overlaps, and conflicts only with exclusive ones."""


GRACE_SECONDS = 5.0
"""How long a lease's process group may take to stop after SIGTERM, at most."""
MARGIN_SECONDS = 1.0
"""How long before a lease's expiry its process group is gone, at most."""


@dataclass(frozen=True)
class LeaseTiming:
    """When the holder of a lease of *ttl* seconds renews it, and when the processes
    working under it are stopped instead: the one rule of ``lock run`` and the daemon.

    The holder stops a lease's process group (SIGTERM, then SIGKILL ``grace`` later)
    so that it is gone ``margin`` before the expiry it last had confirmed. The daemon
    is the backstop, for a holder that cannot act (stopped, hung): it does the same
    half a margin later by its own expiry (never earlier than the holder's), so the
    holder acts first and the group is still gone before the lease ends.
    """

    ttl: float

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    @property
    def grace(self) -> float:
        return min(GRACE_SECONDS, self.ttl / 4)

    @property
    def margin(self) -> float:
        return min(MARGIN_SECONDS, self.ttl / 10)

    def kill_at(self, expiry: float) -> float:
        """When SIGKILL goes to what is left, at the latest."""
        return expiry - self.margin

    def stop_at(self, expiry: float) -> float:
        """The last moment to send SIGTERM and still give the grace before ``kill_at``."""
        return self.kill_at(expiry) - self.grace

    def backstop(self, expiry: float) -> tuple[float, float]:
        """When the daemon sends SIGTERM and SIGKILL to the group of a lease that was
        not renewed: half a margin after the holder would have."""
        late = self.margin / 2
        return self.stop_at(expiry) + late, self.kill_at(expiry) + late


TASK_STATES = ("open", "claimed", "done")
TASK_PRIORITIES = range(5)
"""0 is the most urgent, 4 the least (as beads and most trackers number them)."""


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """A task: a TASK_STATUS unit (its id is the task's) and its state now, kept by the
    daemon from the task's later TASK_STATUS units and the lease on ``task:<id>``."""

    id: str
    context_id: str
    title: str
    priority: int
    state: str
    """One of :data:`TASK_STATES`: ``claimed`` while a lease on ``task:<id>`` is held."""
    depends_on: list[str]
    """Tasks that must be done before this one is ready."""
    open_dependencies: list[str]
    """Those of them not done yet: the task is ready when this is empty and it is open."""
    created_by: str
    created_at: dt.datetime
    claim: Lease | None = None
    """The claim while the task is claimed: a lease on ``task:<id>``."""
    done_by: str = ""


class LockAcquired(Event, tag="lock.acquired"):
    lease: Lease


class LockRenewed(Event, tag="lock.renewed"):
    lease: Lease
    """The lease with its new expiry."""


class LockReleased(Event, tag="lock.released"):
    lease: Lease
    reason: str
    """``released`` by its holder, ``disconnected``, ``process exited``, or ``broken``."""
    by: str
    """The agent that ended it."""


class LockExpired(Event, tag="lock.expired"):
    lease: Lease


LockEvent = LockAcquired | LockRenewed | LockReleased | LockExpired


class UnitsRemoved(Event, tag="units.removed"):
    """Retention took units of one context out of the store and the indexes, once they
    were archived (SPECS §3.4, *Retention*): the journal's record of a removal, so that a
    replay, a subscriber and the search indexes all see it."""

    unit_ids: list[str]
    seqs: list[int]
    """The removed units' seqs, in the order of :attr:`unit_ids` (the indexes key by seq)."""
    archive: str
    """The archive file that holds them (JSON lines, gzip)."""
    policy: str
    """The policy's ``context`` pattern that chose them."""


AnyEvent = (
    UnitCreated | ContextCreated | ContextUpdated | LockAcquired | LockRenewed | LockReleased
    | LockExpired | UnitsRemoved
)

EVENT_KINDS = tuple(
    str(event.__struct_config__.tag)
    for event in (UnitCreated, ContextCreated, ContextUpdated, LockAcquired, LockRenewed,
                  LockReleased, LockExpired, UnitsRemoved))
"""Every event kind a subscription may ask for (``kinds``), in the order above."""


__all__ = [
    "AnyEvent", "Context", "CONTEXT_CHANGES", "ContextChange", "ContextCreated",
    "ContextUpdated", "Event", "EVENT_KINDS", "GRACE_SECONDS", "Lease", "LeaseTiming",
    "LockAcquired", "LockEvent", "LockExpired", "LockReleased", "LockRenewed",
    "MARGIN_SECONDS", "MIN_UNIT_ID_PREFIX", "Relationship", "RELATIONSHIP_TYPES", "Task",
    "Unit", "UNIT_ID_LENGTH", "UNIT_TYPES", "UnitCreated", "UnitsRemoved", "UUID_TEXT",
]
