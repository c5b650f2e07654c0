"""Identifiers the daemon hands out."""

from __future__ import annotations

import os
import random
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_random = random.Random(os.urandom(32))
"""The random bits make ids unique, not secret: a generator seeded from the OS once
is enough, and saves a getrandom call per id."""


def uuid7() -> str:
    """A UUIDv7 (RFC 9562) as text: 48 bits of Unix milliseconds, then randomness.

    Within one millisecond a 12-bit counter in ``rand_a`` keeps ids in creation
    order, so sorting ids sorts by time.
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        counter = _counter
        tail = _random.getrandbits(62)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | tail
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def context_slug() -> str:
    """A generated context id, for contexts created without one."""
    return f"ctx-{os.urandom(5).hex()}"
