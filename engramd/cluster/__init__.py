"""Cluster mode: the journal on a NATS JetStream stream shared by every machine.

May import: what the daemon may, and nats-py. Imported only when ``cluster.servers``
is set: nats-py is the optional extra ``engram-journal[cluster]``.
"""
