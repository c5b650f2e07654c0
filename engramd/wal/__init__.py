"""The write-ahead log: the source of truth for everything engramd stores.

:mod:`.record` is the bytes of one record; :mod:`.log` the segment files, appends,
fsync and replay. May import: the standard library, msgspec and the protocol's model
(the events it records); synchronous, it knows nothing of trio or of the wire.
"""
