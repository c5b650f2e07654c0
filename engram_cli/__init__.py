"""engram: the command line and the Python client library of engramd.

Use :class:`engram_cli.client.Client` from Python::

    from engram_cli.client import Client

    with Client() as engram:
        print(engram.ping().uptime)
"""

from engramd import __version__ as __version__
