"""``engram gateway``: engram over HTTP, Server-Sent Events and WebSocket.

The gateway is a client of engramd like any other (the trio client library on
the daemon's socket); the daemon stays socket-only. Each HTTP caller's identity
goes to the daemon with each request (``as``), on a few connections the gateway
shares, so that the daemon, not the gateway, checks rights and attributes writes.

* :mod:`.policy`: pure rules: the listen address, ``Host``/``Origin`` checks,
  error codes to HTTP statuses.
* :mod:`.auth`: who an HTTP request is (an engram agent token, a JWT, or
  ``X-Agent-ID`` when authentication is off).
* :mod:`.link`: the few connections to engramd, shared by every caller and
  stream (streams held to a window each).
* :mod:`.forms`: the JSON bodies that are not protocol messages as they stand;
  :mod:`.query`: the query strings, a Struct per endpoint; :mod:`.views`: the answers
  that are not protocol replies as they stand.
* :mod:`.state`: what every endpoint shares (:class:`~.state.Gateway`).
* :mod:`.routes`, :mod:`.streams`: the endpoints; :mod:`.openapi` describes them from
  the types above and the table of :mod:`.catalog`.
* :mod:`.serve`: the app built from all of them, run by hypercorn's trio worker;
  :mod:`.framing`: the requests hypercorn answers itself, in the JSON error shape.

May import: what a door may (:mod:`engram_cli.doors`), and the HTTP stack (starlette,
hypercorn, sse-starlette, PyJWT). Only ``engram gateway`` imports this package (it
needs the ``engram-journal[http]`` extra).
"""
