"""Retention's archives: the units it removes, written whole before they are removed.

One file per context and run, ``<context, %-quoted>.<UTC time>.<first seq>.jsonl.gz``:
gzip of JSON lines, each unit as ``engram unit export`` writes it (so ``engram unit
import`` reads it back), in seq order; written as ``….partial``, fsynced, renamed, and
its directory fsynced (SPECS §3.4, *Retention*). Synchronous: run in a worker thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import os
import urllib.parse

import msgspec

from engramd.protocol.model import Unit
from engramd.storage import Store

READ_AT_ONCE = 1000
"""Units read from the store at a time while an archive is written."""
_unit = msgspec.msgpack.Decoder(Unit)
_json = msgspec.json.Encoder()


def archive_name(context_id: str, now: dt.datetime, first_seq: int) -> str:
    """``<context, %-quoted>.<UTC time>.<first seq>.jsonl.gz``: one file per context and
    run, sorting by context and then time."""
    quoted = urllib.parse.quote(context_id, safe="._:@+-")
    return f"{quoted}.{now.strftime('%Y%m%dT%H%M%SZ')}.{first_seq}.jsonl.gz"


def unit_json(unit: Unit) -> bytes:
    """A unit as ``engram unit export`` writes it: a UTF-8 payload as the string
    ``payload``, any other as base64 under ``payload_base64``."""
    data = msgspec.to_builtins(unit)
    payload = data.pop("payload")
    try:
        data["payload"] = unit.payload.decode("utf-8")
    except UnicodeDecodeError:
        data["payload_base64"] = payload
    return _json.encode(data) + b"\n"


def write_archive(store: Store, directory: str, context_id: str, unit_ids: list[str],
                  first_seq: int, now: dt.datetime) -> str:
    """The units *unit_ids* (oldest first, the first at *first_seq*) written to a new
    archive in *directory*, fsynced with the directory before this returns (nothing is
    removed before); its path. A unit the store no longer has is passed over."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = archive_name(context_id, now, first_seq)
    path, again = os.path.join(directory, name), 1
    while os.path.exists(path):  # (a run in the same second whose removal did not happen)
        again += 1
        path = os.path.join(directory, name.replace(".jsonl.gz", f"-{again}.jsonl.gz"))
    partial = path + ".partial"
    try:
        with open(partial, "wb") as raw_file:
            with gzip.GzipFile(fileobj=raw_file, mode="wb", mtime=0) as packed:
                for start in range(0, len(unit_ids), READ_AT_ONCE):
                    for encoded in store.units_by_id(unit_ids[start:start + READ_AT_ONCE]):
                        if encoded is not None:
                            packed.write(unit_json(_unit.decode(encoded)))
            raw_file.flush()
            os.fsync(raw_file.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)  # (a full disk: leave no half archive behind)
        raise
    os.replace(partial, path)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return path
