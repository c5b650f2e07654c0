"""The web console (``/ui``): a page, its script and its style, shipped in the package
(``static/``, no build step, nothing fetched at run time) and served with a strict
Content-Security-Policy: scripts and styles from this gateway only (no inline ones),
no frames, no forms posted elsewhere, connections to this gateway only.

The page holds no data of its own: it asks the gateway's API as any client does, with
the bearer token a person gives it (kept in the tab's ``sessionStorage``), and opens the
live stream with a single-use ticket (``POST /stream/ticket``). Everything it shows is
set as text (``textContent``), never as markup.
"""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from engram_cli.doors.gateway.state import Gateway
from engramd.protocol import NotFound

ASSETS = {"console.js": "text/javascript; charset=utf-8",
          "console.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
"""What ``/ui/ASSET`` serves, by name (anything else is 404)."""

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""The page's Content-Security-Policy: a payload that slips markup into it could neither
run a script (no inline script, no eval) nor load or send anything elsewhere."""

HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("engram_cli.doors.gateway").joinpath("static", name).read_bytes()


async def console_page(gw: Gateway, request: Request) -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8",
                    headers=HEADERS)


async def console_redirect(gw: Gateway, request: Request) -> Response:
    """``/`` and ``/ui/``: where a person typing the gateway's address lands (temporary:
    ``/`` may serve something of its own one day)."""
    return RedirectResponse("/ui", 307, headers={"Cache-Control": "no-cache"})


async def console_asset(gw: Gateway, request: Request) -> Response:
    name = request.path_params["asset"]
    if name not in ASSETS:
        raise NotFound(f"no console file {name!r:.80}")
    return Response(_read(name), media_type=ASSETS[name], headers=HEADERS)
