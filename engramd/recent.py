"""The newest units of the contexts read lately, in memory: ``unit.list`` without filters
(the last N of a context, what agents and watchers ask most) is answered from here.

Reading them from RocksDB means a reverse iteration, which costs most where it matters
(over the memtable the newest writes are in). A context is loaded from the store when it
is first asked for, then follows the writes as they are applied (the commit path's
followers), so what is kept is exactly what the store holds; the least recently read
context goes when there are too many, or when their units' bytes pass the budget (units
are up to a MiB each: a count alone would bound nothing).
"""

from __future__ import annotations

import collections
import itertools

import msgspec

from engramd.protocol.model import UnitCreated, UnitsRemoved
from engramd.storage import Store, seq_from
from engramd.wal.record import Entry

PER_CONTEXT = 128
"""Units kept per context by default (``cache.recent_units``): a list of up to
``PER_CONTEXT - 1`` is answered from memory."""
CONTEXTS = 256
"""Contexts kept by default (``cache.recent_contexts``)."""
BUDGET = 64 * 1024 * 1024
"""Stored bytes of the units kept, by default (``cache.recent_bytes``)."""
_encoder = msgspec.msgpack.Encoder()


class RecentUnits:
    def __init__(self, store: Store, per_context: int = PER_CONTEXT,
                 contexts: int = CONTEXTS, budget: int = BUDGET) -> None:
        self.store = store
        self.per_context = per_context
        self.contexts = contexts
        self.budget = budget
        self._kept: collections.OrderedDict[str, collections.deque[tuple[int, bytes]]] = \
            collections.OrderedDict()
        self._bytes = 0
        """The stored bytes of every unit kept."""

    def applied(self, entries: list[Entry]) -> None:
        kept = self._kept
        for entry in entries:
            for event in entry.events:
                if isinstance(event, UnitCreated):
                    units = kept.get(event.unit.context_id)
                    # A context loaded while this batch was being applied (the journal
                    # thread writes the store) may hold its units already.
                    if units is not None and (not units or units[-1][0] < event.seq):
                        if len(units) == units.maxlen:  # the oldest goes as this one comes
                            self._bytes -= len(units[0][1])
                        raw = _encoder.encode(event.unit)
                        units.append((event.seq, raw))
                        self._bytes += len(raw)
                elif isinstance(event, UnitsRemoved):
                    # Loaded again from the store at its next read (removals are rare).
                    dropped = kept.pop(event.context_id, None)
                    if dropped is not None:
                        self._bytes -= sum(len(raw) for _, raw in dropped)
        self._within_budget(keep=0)

    def held(self) -> tuple[int, int, int]:
        """Contexts, units and stored bytes kept now (``engram stats``)."""
        units = sum(len(kept) for kept in self._kept.values())
        return len(self._kept), units, self._bytes

    def _within_budget(self, keep: int) -> None:
        """Let the least recently read contexts go, all but the *keep* most recent ones,
        until the units kept are within the count of contexts and the byte budget."""
        kept = self._kept
        while len(kept) > keep and (len(kept) > self.contexts or self._bytes > self.budget):
            _, units = kept.popitem(last=False)
            self._bytes -= sum(len(raw) for _, raw in units)

    def holds(self, context_id: str) -> bool:
        return context_id in self._kept

    def newest(self, context_id: str, limit: int) -> tuple[list[bytes], int | None] | None:
        """The newest *limit* units of the context, oldest first, and the seq to page back
        from when there are older ones; None when *limit* is more than is kept."""
        if limit >= self.per_context:
            return None
        units = self._kept.get(context_id)
        if units is None:
            units = self._load(context_id)
        else:
            self._kept.move_to_end(context_id)
        # Not full, the deque holds the whole context: there is more only beyond it.
        more = len(units) > limit
        picked = list(itertools.islice(units, len(units) - limit, None)) if more \
            else list(units)
        return [raw for _, raw in picked], (picked[0][0] if more and picked else None)

    def _load(self, context_id: str) -> collections.deque[tuple[int, bytes]]:
        rows = []
        for key, raw in self.store.scan_context(context_id, newest_first=True):
            rows.append((seq_from(key), raw))
            if len(rows) == self.per_context:
                break
        rows.reverse()
        units = collections.deque(rows, maxlen=self.per_context)
        self._kept[context_id] = units
        self._bytes += sum(len(raw) for _, raw in rows)
        # (The context just read stays, even alone past the budget: it answers now.)
        self._within_budget(keep=1)
        return units
