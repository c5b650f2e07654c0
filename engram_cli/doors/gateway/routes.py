"""The HTTP endpoints: each reads its request, makes one or two daemon requests as
the caller, and answers in engram's JSON forms (SPECS §6.3).

Errors leave every handler the same way: an :class:`EngramError` becomes the status
of its code (:mod:`.policy`) with ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import trio
from starlette.requests import Request
from starlette.responses import Response

from engram_cli.client import paths
from engram_cli.doors.gateway import query, ui, views
from engram_cli.doors.gateway.forms import (
    ClaimProof,
    DraftForm,
    LockForm,
    MessageForm,
    RenewForm,
    decode,
    decode_request,
)
from engram_cli.doors.gateway.query import (
    ContextsQuery,
    InboxQuery,
    LockHistoryQuery,
    LocksQuery,
    ReleaseQuery,
    TasksQuery,
    UnitsQuery,
)
from engram_cli.doors.gateway.replies import json_response, plain
from engram_cli.doors.gateway.state import TICKET_TTL, Gateway, Handler
from engramd.protocol import (
    AckMessage,
    AddTask,
    BadRequest,
    BreakLock,
    ClaimTask,
    CountUnread,
    CreateContext,
    CreateUnits,
    EngramError,
    FinishTask,
    Forbidden,
    GetContext,
    GetLock,
    GetStats,
    GetStatus,
    GetTask,
    GetUnits,
    ListAgents,
    ListContexts,
    ListLocks,
    ListTasks,
    ListUnits,
    LockHistory,
    NotFound,
    Ping,
    ReadInbox,
    RelatedUnits,
    ReleaseLock,
    ReleaseTask,
    Search,
    UpdateContext,
)


async def healthz(gw: Gateway, request: Request) -> Response:
    return json_response(views.Health("ok"))


async def readyz(gw: Gateway, request: Request) -> Response:
    try:
        with trio.fail_after(1.0):
            status = await gw.link.request(GetStatus())
    except (EngramError, trio.TooSlowError, OSError) as exc:
        return json_response(views.Readiness(status="unavailable",
                                             reason=str(exc) or "no answer"), 503)
    body = views.Readiness(status=status.state, daemon_version=status.daemon_version,
                           instance_id=status.instance_id)
    return json_response(body, 200 if status.state == "ready" else 503)


async def metrics(gw: Gateway, request: Request) -> Response:
    from engram_cli.formats.prometheus import prometheus_text

    if gw.auth.mode != "none":
        # Checked, not only read: an agent token is the daemon's to check.
        await gw.call(request, Ping())
    try:
        with trio.fail_after(2.0):
            daemon = prometheus_text(await gw.link.request(GetStats()))
        up = 1
    except (EngramError, trio.TooSlowError, OSError):
        daemon, up = "", 0
    text = daemon + gw.tally.prometheus_text(daemon_up=up,
                                              stream_bytes=gw.link.budget.used,
                                              stream_capacity=gw.link.stream_capacity)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def create_units(gw: Gateway, request: Request) -> Response:
    forms: Any = decode(await gw.body(request), list[DraftForm] | DraftForm)  # type: ignore[arg-type]
    drafts = [form.draft() for form in (forms if isinstance(forms, list) else [forms])]
    if not drafts:
        raise BadRequest("no units to write")
    created = await gw.call(request, CreateUnits(units=drafts))
    return json_response(views.UnitsWritten(views.units(created.units), created.reused), 201)


async def get_unit(gw: Gateway, request: Request) -> Response:
    unit_id = request.path_params["unit_id"]
    found = await gw.call(request, GetUnits(ids=[unit_id]))
    if not found.units:
        raise NotFound(f"no unit {unit_id}")
    return json_response(views.UnitView.of(found.units[0]))


async def list_units(gw: Gateway, request: Request) -> Response:
    q = query.read(request, UnitsQuery)
    before = q.before
    if q.cursor is not None:  # the seed's name for following next_cursor
        if before is not None:
            raise BadRequest("give cursor or before, not both (cursor is before)")
        before = q.cursor
    page = await gw.call(request, ListUnits(
        context_id=request.path_params["context_id"], limit=q.limit, before=before,
        after=q.after, reverse=q.reverse, since=q.since, until=q.until, agents=q.agent,
        types=list(q.type)))
    return json_response(views.UnitsPage(views.units(page.units), page.next_cursor))


async def list_contexts(gw: Gateway, request: Request) -> Response:
    q = query.read(request, ContextsQuery)
    if q.after is not None and q.cursor is not None:
        raise BadRequest("give after or cursor, not both (cursor is after)")
    return json_response(plain(await gw.call(request, ListContexts(
        limit=q.limit, after=q.after or q.cursor, prefix=q.prefix))))


async def create_context(gw: Gateway, request: Request) -> Response:
    found = await gw.call(request, decode_request(await gw.body(request), CreateContext))
    return json_response(plain(found), 201 if found.created else 200)


async def get_context(gw: Gateway, request: Request) -> Response:
    return json_response(plain(await gw.call(
        request, GetContext(context_id=request.path_params["context_id"]))))


async def update_context(gw: Gateway, request: Request) -> Response:
    return json_response(plain(await gw.call(request, decode_request(
        await gw.body(request), UpdateContext,
        context_id=request.path_params["context_id"]))))


def _absolute(given: list[str]) -> list[str]:
    try:
        return paths.resources(given, absolute_only=True)
    except ValueError as exc:
        raise BadRequest(f"paths: {exc}") from None


async def acquire_locks(gw: Gateway, request: Request) -> Response:
    form = decode(await gw.body(request), LockForm)
    acquire = await trio.to_thread.run_sync(form.request, _absolute)  # (git is asked)
    # A session of its own (each request made for an agent is): two HTTP callers of one
    # agent wait for each other, and the lease lives until released, or its ttl.
    granted = await gw.call(request, acquire, form.wait)
    return json_response(views.LeasesGranted(granted.leases), 201)


async def renew_lock(gw: Gateway, request: Request) -> Response:
    form = decode(await gw.body(request), RenewForm)
    renewed = await gw.call(request, form.request())
    return json_response(views.LeaseView(renewed.lease))


async def list_locks(gw: Gateway, request: Request) -> Response:
    q = query.read(request, LocksQuery)
    page = await gw.call(request, ListLocks(agent=q.agent, prefix=q.prefix))
    return json_response(views.LockList(page.locks))


async def lock_history(gw: Gateway, request: Request) -> Response:
    q = query.read(request, LockHistoryQuery)
    page = await gw.call(request, LockHistory(since=q.since, until=q.until, after=q.after,
                                              limit=q.limit))
    return json_response(views.LockHistoryView(page.events, page.next_cursor))


async def get_lock(gw: Gateway, request: Request) -> Response:
    found = await gw.call(request, GetLock(resource=request.path_params["resource"]))
    return json_response(plain(found.state))


async def release_lock(gw: Gateway, request: Request) -> Response:
    lock_id = query.read(request, ReleaseQuery).lock_id if "lock_id" in request.query_params \
        else ""
    if not lock_id:
        raise BadRequest("lock_id is required: DELETE /locks/RESOURCE?lock_id=ID")
    resource = request.path_params["resource"]
    await gw.call(request, ReleaseLock(lock_id=lock_id, resource=resource))
    return json_response(views.Released(lock_id, resource))


async def break_lock(gw: Gateway, request: Request) -> Response:
    """End another's lease (an admin's act: the daemon checks it, and journals who broke
    it and why).

    Only through a gateway without authentication (``--auth none``: on loopback, the
    machine's own user, who may break with ``engram lock break`` as well). A gateway with
    tokens or JWTs lets in agents, none of them an admin: the daemon, which trusts its
    own user's connections, would break for any of them."""
    if gw.auth.mode != "none":
        raise Forbidden("breaking a lease is an admin's act, and this gateway's callers "
                        "are agents (--auth " + gw.auth.mode + "): use 'engram lock break' "
                        "on the machine")
    form = decode_request(await gw.body(request), BreakLock)
    await gw.call(request, form)
    return json_response(views.Broken(form.resource, form.reason))


async def list_agents(gw: Gateway, request: Request) -> Response:
    return json_response(plain(await gw.call(request, ListAgents())))


async def stream_ticket(gw: Gateway, request: Request) -> Response:
    """A single-use ticket for a browser's stream (EventSource and WebSocket cannot send
    ``Authorization``): ``/stream-sse?ticket=…``, ``/stream?ticket=…``."""
    credentials = await gw.accepted_credentials(request)
    ticket = gw.tickets.issue(credentials)
    # A ticket opens nothing once its credentials expire: a JWT's exp may come sooner.
    lasts = TICKET_TTL if credentials.expires is None \
        else max(0.0, min(TICKET_TTL, credentials.expires - time.time()))
    return json_response(views.Ticket(ticket, lasts), 201, {"Cache-Control": "no-store"})


async def search(gw: Gateway, request: Request) -> Response:
    return await _search(gw, request, decode_request(await gw.body(request), Search))


async def _search(gw: Gateway, request: Request, query: Search) -> Response:
    results = await gw.call(request, query)
    found = await gw.call(request, GetUnits(ids=[hit.unit_id for hit in results.hits]))
    units = {unit.id: unit for unit in found.units}
    ranked = bool(query.query.split())
    return json_response(views.SearchPage(results.total, [
        views.hit(hit, ranked, units.get(hit.unit_id)) for hit in results.hits]))


async def search_vector(gw: Gateway, request: Request) -> Response:
    """Upstream's ``POST /search/vector``: ``POST /search`` in semantic mode."""
    return await _search(gw, request, decode_request(await gw.body(request), Search,
                                                     mode="semantic"))


async def search_relationships(gw: Gateway, request: Request) -> Response:
    found = await gw.call(request, decode_request(await gw.body(request), RelatedUnits))
    return json_response(views.Related.of(found))


async def send_message(gw: Gateway, request: Request) -> Response:
    form = decode(await gw.body(request), MessageForm)
    created = await gw.call(request, form.request())
    return json_response(views.UnitView.of(created.units[0]), 201)


async def read_inbox(gw: Gateway, request: Request) -> Response:
    q = query.read(request, InboxQuery)
    page = await gw.call(request, ReadInbox(limit=q.limit, peek=q.peek, wait=q.wait,
                                            pending=q.pending), wait=q.wait)
    return json_response(views.InboxPage(views.units(page.messages), page.unread))


async def count_inbox(gw: Gateway, request: Request) -> Response:
    return json_response(plain(await gw.call(request, CountUnread())))


async def ack_message(gw: Gateway, request: Request) -> Response:
    created = await gw.call(request, AckMessage(message_id=request.path_params["unit_id"]))
    return json_response(views.UnitView.of(created.units[0]), 201)


async def list_tasks(gw: Gateway, request: Request) -> Response:
    q = query.read(request, TasksQuery)
    return json_response(plain(await gw.call(request, ListTasks(
        states=list(q.state), ready=q.ready, contexts=q.context, limit=q.limit))))


async def add_task(gw: Gateway, request: Request) -> Response:
    return json_response(plain(await gw.call(
        request, decode_request(await gw.body(request), AddTask))), 201)


async def get_task(gw: Gateway, request: Request) -> Response:
    return json_response(plain(await gw.call(
        request, GetTask(task_id=request.path_params["task_id"]))))


async def claim_task(gw: Gateway, request: Request) -> Response:
    fields = {"task_id": request.path_params["task_id"]} \
        if "task_id" in request.path_params else {}
    claim = decode_request(await gw.body(request), ClaimTask, **fields)
    # A session of its own, bound to no connection: done or release (with the claim's
    # token) or its ttl end it; POST /locks/renew with its lock id extends it.
    return json_response(plain(await gw.call(request, claim)), 201)


async def finish_task(gw: Gateway, request: Request) -> Response:
    proof = decode(await gw.body(request), ClaimProof)
    return json_response(plain(await gw.call(request, FinishTask(
        task_id=request.path_params["task_id"], token=proof.token))))


async def release_task(gw: Gateway, request: Request) -> Response:
    proof = decode(await gw.body(request), ClaimProof)
    return json_response(plain(await gw.call(request, ReleaseTask(
        task_id=request.path_params["task_id"], token=proof.token))))


ROUTES: list[tuple[str, list[str], Handler]] = [
    ("/healthz", ["GET"], healthz),
    ("/readyz", ["GET"], readyz),
    ("/metrics", ["GET"], metrics),
    ("/workunit", ["POST"], create_units),
    ("/workunit/{unit_id}", ["GET"], get_unit),
    ("/workunits/{context_id:path}", ["GET"], list_units),
    ("/contexts", ["GET"], list_contexts),
    ("/contexts", ["POST"], create_context),
    ("/contexts/{context_id:path}", ["GET"], get_context),
    ("/contexts/{context_id:path}", ["PATCH"], update_context),
    ("/locks", ["GET"], list_locks),
    ("/locks", ["POST"], acquire_locks),
    ("/locks/renew", ["POST"], renew_lock),
    ("/locks/break", ["POST"], break_lock),
    ("/lock-history", ["GET"], lock_history),
    ("/locks/{resource:path}", ["GET"], get_lock),
    ("/locks/{resource:path}", ["DELETE"], release_lock),
    ("/stream/ticket", ["POST"], stream_ticket),
    ("/search", ["POST"], search),
    ("/search/vector", ["POST"], search_vector),
    ("/search/relationships", ["POST"], search_relationships),
    ("/messages", ["POST"], send_message),
    ("/inbox", ["GET"], read_inbox),
    ("/inbox/count", ["GET"], count_inbox),
    ("/inbox/{unit_id}/ack", ["POST"], ack_message),
    ("/tasks", ["GET"], list_tasks),
    ("/tasks", ["POST"], add_task),
    ("/tasks/claim", ["POST"], claim_task),
    ("/tasks/{task_id}", ["GET"], get_task),
    ("/tasks/{task_id}/claim", ["POST"], claim_task),
    ("/tasks/{task_id}/done", ["POST"], finish_task),
    ("/tasks/{task_id}/release", ["POST"], release_task),
    ("/agents", ["GET"], list_agents),
    ("/", ["GET"], ui.console_redirect),
    ("/ui", ["GET"], ui.console_page),
    ("/ui/", ["GET"], ui.console_redirect),
    ("/ui/{asset}", ["GET"], ui.console_asset),
]
"""Every HTTP endpoint but ``/openapi.json`` (:mod:`.openapi`, which reads this list) and
the two streams (:mod:`.streams`); :mod:`.serve` puts them together."""

QUERY: dict[str, type[msgspec.Struct]] = {
    "list_units": UnitsQuery,
    "list_contexts": ContextsQuery,
    "list_locks": LocksQuery,
    "lock_history": LockHistoryQuery,
    "release_lock": ReleaseQuery,
    "read_inbox": InboxQuery,
    "list_tasks": TasksQuery,
}
"""The query parameters each endpoint takes, as the Struct it reads them as (any other
parameter is refused, 400); the rest take none."""
