"""The newest units of the contexts read lately, in memory: ``unit.list`` without filters
(the last N of a context, what agents and watchers ask most) is answered from here.

Reading them from RocksDB means a reverse iteration, which costs most where it matters
(over the memtable the newest writes are in). A context is loaded from the store when it
is first asked for, then follows the writes as they are applied (the commit path's
followers), so what is kept is exactly what the store holds; the least recently read
context goes when there are too many.
"""

from __future__ import annotations

import collections
import itertools

import msgspec

from engramd.protocol.model import UnitCreated, UnitsRemoved
from engramd.storage import Store, seq_from
from engramd.wal.record import Entry

PER_CONTEXT = 128
"""Units kept per context: a list of up to ``PER_CONTEXT - 1`` is answered from memory."""
CONTEXTS = 256
_encoder = msgspec.msgpack.Encoder()


class RecentUnits:
    def __init__(self, store: Store, per_context: int = PER_CONTEXT,
                 contexts: int = CONTEXTS) -> None:
        self.store = store
        self.per_context = per_context
        self.contexts = contexts
        self._kept: collections.OrderedDict[str, collections.deque[tuple[int, bytes]]] = \
            collections.OrderedDict()

    def applied(self, entries: list[Entry]) -> None:
        kept = self._kept
        for entry in entries:
            for event in entry.events:
                if isinstance(event, UnitCreated):
                    units = kept.get(event.unit.context_id)
                    # A context loaded while this batch was being applied (the journal
                    # thread writes the store) may hold its units already.
                    if units is not None and (not units or units[-1][0] < event.seq):
                        units.append((event.seq, _encoder.encode(event.unit)))
                elif isinstance(event, UnitsRemoved):
                    # Loaded again from the store at its next read (removals are rare).
                    kept.pop(event.context_id, None)

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
        if len(self._kept) > self.contexts:
            self._kept.popitem(last=False)
        return units
