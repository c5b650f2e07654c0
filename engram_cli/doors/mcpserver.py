"""``engram mcp``: engram as an MCP server on stdio, over the trio client library.

Built on the official MCP Python SDK (the optional extra ``engram-journal[mcp]``), which
runs under trio through anyio; only this module imports it. Each tool call opens
a connection of its own, so a daemon restart between calls costs nothing, and
every failure becomes a tool error (``isError``) of one line while the server
stays up. stdout carries JSON-RPC only: the SDK logs to stderr.

Identity: the agent is ``--agent``/``ENGRAM_AGENT`` when given, else
``<harness>-<pid>`` of the harness process that started the server, so two
sessions of a harness are two agents. Leases and task claims made here are bound
to that process, not to the MCP connection (which a client may restart), so an
agent that is killed frees them at once.

MCP notifications wake no idle agent in today's harnesses, so every tool result
ends with a line naming the unread messages when there are any; the wake paths
are the harness hooks (``engram hook``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import trio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from engram_cli import __version__
from engram_cli.client import paths as where
from engram_cli.client.asynchronous import AsyncClient, open_client
from engram_cli.client.errors import EngramError, NotFound
from engram_cli.formats import briefview
from engram_cli.formats.text import one_line, preview, printable, timestamp
from engramd.protocol import AgentInfo, Lease, Unit, agentwork
from engramd.protocol.bounds import MIN_TTL

MAX_WAIT = 60.0
"""The longest a tool waits (inbox, lock): a tool call must come back to the model."""
READ_ONLY = ToolAnnotations(read_only_hint=True)
WRITES = ToolAnnotations(destructive_hint=False)  # readOnlyHint is false by default
INSTRUCTIONS = (
    "engram coordinates the agents of this machine: messages (send, inbox), tasks that "
    "cannot be claimed twice (task_ready, task_claim, task_done), leases on files and "
    "resources before you change them (lock, unlock), and the shared journal (post, "
    "recent, search, trace). Call brief at the start of a session.")


@dataclass(frozen=True)
class Identity:
    socket: str | None
    agent: str
    session_pid: int
    harness: str
    env: Mapping[str, str] | None = None
    """The environment the clients resolve in (``--data-dir`` given as ENGRAM_DATA_DIR)."""


def unit_line(unit: Unit, width: int = 400) -> str:
    flags = " (asks for an ack)" if agentwork.wants_ack(unit.meta) else ""
    return (f"{unit.id} {timestamp(unit.ts)} {unit.agent_id} {unit.type} "
            f"[{unit.context_id}]{flags}: {preview(unit, width)}")


def _units(units: list[Unit], empty: str) -> str:
    return "\n".join(unit_line(unit) for unit in units) or empty


WHOLE_ID = 36
Id = Annotated[str, Field(description="unit id or unique prefix")]
Context = Annotated[str, Field(description="context id")]
Wait = Annotated[float, Field(ge=0, le=MAX_WAIT, description="seconds")]
UnitType = Literal["MESSAGE", "REASONING", "TOOL_CALL", "TOOL_RESULT", "FILE_CHANGE",
                   "TASK_STATUS", "ERROR", "SYSTEM"]


class Written(TypedDict):
    """What a write returns as structured content: the id it made or touched."""

    id: str


class LeaseIds(TypedDict):
    resource: str
    lock_id: str
    fencing_token: int


class Leased(TypedDict):
    leases: list[LeaseIds]


_ID_PREFIX = re.compile(r"[0-9a-f]{8}[0-9a-f-]{0,28}")
_FIRST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _short(text: str, limit: int = 500) -> str:
    """An error line within reason: a huge argument is not echoed back whole."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def written(text: str) -> CallToolResult:
    """*text* for the model, and the first id in it as structured content."""
    found = _FIRST_ID.search(text)
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content={"id": found.group(0) if found else ""})


def leased(text: str, leases: list[Lease]) -> CallToolResult:
    """*text* for the model (a lease per line, its resource as the agent would give it),
    and the leases (their canonical resources) as structured content."""
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content={
        "leases": [{"resource": lease.resource, "lock_id": lease.lock_id,
                    "fencing_token": lease.fencing_token} for lease in leases]})


def agent_line(agent: AgentInfo) -> str:
    live = [session for session in agent.sessions if session.gone_at is None]
    sessions = ", ".join(f"{session.harness or 'pid'} {session.pid}" for session in live)
    seen = timestamp(agent.last_seen) if agent.last_seen else "never"
    return (f"{agent.agent}: {sessions or 'no live session'}; last seen {seen}; "
            f"{agent.leases} lease(s), {agent.unread} unread")


async def pending_acks(client: AsyncClient, me: str) -> str:
    """The messages *me* sent that ask for acknowledgements some recipients owe."""
    asked = await client.search(agents=[me], meta={agentwork.ACK_REQUIRED: "true"},
                                types=["MESSAGE"], limit=50)
    lines = []
    for hit in asked.hits:
        acks = await client.search(meta={agentwork.ACK_OF: hit.unit_id}, limit=100)
        given = {unit.agent_id for unit in
                 (await client.get_units([ack.unit_id for ack in acks.hits])).units}
        (message,) = (await client.get_units([hit.unit_id])).units
        owed = [agent for agent in agentwork.recipients(message.meta)
                if agent != agentwork.BROADCAST and agent not in given]
        if owed:
            lines.append(f"{message.id} owed by {', '.join(owed)}: {preview(message, 80)}")
    return "\n".join(lines) or "no acknowledgement is owed to you"


async def replies(client: AsyncClient, message: Unit) -> str:
    """Where a message stands in its conversation: its thread, and the replies to it."""
    answered = await client.related_units(message.id, types=["RESPONDS_TO"],
                                          direction="in", depth=1)
    count = sum(1 for edge in answered.edges if edge.target == message.id)
    thread = message.meta.get(agentwork.THREAD)
    said = [f"thread {thread}"] if thread else []
    said += [f"{count} repl{'y' if count == 1 else 'ies'}"] if count else []
    return f" ({', '.join(said)})" if said else ""


async def thread_text(client: AsyncClient, name: str) -> str:
    """A thread's messages, oldest first (*name*: the thread, or one of its messages, by
    its id or a unique prefix of it)."""
    if _ID_PREFIX.fullmatch(name):
        with contextlib.suppress(NotFound):  # not a message's id: a thread's name
            (whole,) = await client.resolve_unit_ids([name])
            (message,) = (await client.get_units([whole])).units
            name = message.meta.get(agentwork.THREAD) or message.id
    found = await client.search(meta={agentwork.THREAD: name}, types=["MESSAGE"], limit=100)
    units = (await client.get_units([hit.unit_id for hit in found.hits])).units
    return _units(sorted(units, key=lambda unit: unit.seq),
                  f"no messages in thread {_short(name, 80)}")


def changed_files() -> list[str]:
    """The files ``git status`` shows changed in the project (the server's working
    directory), named as leases on them are: the brief lists others' leases on them."""
    from engram_cli.client import gitinfo

    here = os.getcwd()
    return list(where.in_repository(here, gitinfo.changed_files(here)).values())


def invalid_arguments(error: ValidationError) -> str:
    """Pydantic's report of arguments that do not fit a tool's schema, as one line."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'arguments'}: {problem['msg']}"
        for problem in error.errors(include_url=False)) + " (see the tool's input schema)"


def compact(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema without what costs a model's context and tells it nothing: the
    titles pydantic derives from names, and the ``null`` branch of an optional argument
    (leaving it out is how to say none)."""
    schema = {key: value for key, value in schema.items() if key != "title"}
    branches = schema.get("anyOf")
    if isinstance(branches, list) and {"type": "null"} in branches and len(branches) == 2:
        (kept,) = [branch for branch in branches if branch != {"type": "null"}]
        schema = {**{k: v for k, v in schema.items() if k not in ("anyOf", "default")},
                  **kept}
    for key in ("properties", "$defs"):
        if isinstance(schema.get(key), dict):
            schema[key] = {name: compact(value) for name, value in schema[key].items()}
    if isinstance(schema.get("items"), dict):
        schema["items"] = compact(schema["items"])
    return schema


class EngramMCPServer(MCPServer):
    """The SDK's server, telling arguments that fail the schema in one line (the SDK
    passes pydantic's whole report, with its links, to the model), and listing its
    tools with compact schemas (the list is read into every session's context)."""

    async def list_tools(self) -> Any:
        return [tool.model_copy(update={
            "input_schema": compact(tool.input_schema),
            "output_schema": tool.output_schema and {
                key: value for key, value in compact(tool.output_schema).items()
                if key != "description"}})
            for tool in await super().list_tools()]

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(f"Error executing tool {name}: "
                                f"{invalid_arguments(exc.__cause__)}") from exc.__cause__
            raise


def build_server(identity: Identity) -> MCPServer:
    """The MCP server with engram's tools and resources, acting as *identity*."""
    server = EngramMCPServer("engram", instructions=INSTRUCTIONS, version=__version__)

    async def call(operation: Callable[[AsyncClient], Awaitable[str]],
                   footer: bool = True) -> str:
        """Run *operation* on a fresh connection; any failure is one line of tool error
        that says what happened (the daemon's own words) and so what to do."""
        try:
            async with open_client(identity.socket, agent_id=identity.agent,
                                   client_name="engram-mcp", connect_timeout=5.0,
                                   env=identity.env) as client:
                text = await operation(client)
                unread = (await client.unread()).unread if footer else 0
        except EngramError as exc:
            raise ToolError(printable(f"engram: {_short(str(exc))}")) from None
        except OSError as exc:
            raise ToolError(f"engram: {exc.strerror or exc}") from None
        except trio.TooSlowError:
            raise ToolError("engram: engramd did not answer within 5 s; 'engram doctor' "
                            "says why") from None
        if unread:
            text += f"\n\n[{unread} unread message(s): call inbox]"
        # What the journal holds reaches the model's harness, whose screen obeys escapes.
        return printable(text)

    def tool(description: str, annotations: ToolAnnotations = WRITES, *,
             structured: bool = False
             ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """A tool; *structured*: its result carries ids as structured content too (its
        annotation says their schema), else it is text for the model alone."""
        return server.tool(description=description, annotations=annotations,
                           structured_output=None if structured else False)

    async def whole(client: AsyncClient, ids: list[str]) -> list[str]:
        """Unit ids as given, or from a unique prefix (8+ characters), as on the CLI."""
        short = [unit_id for unit_id in ids if len(unit_id) < WHOLE_ID]
        found = dict(zip(short, await client.resolve_unit_ids(short), strict=True)) \
            if short else {}
        return [found.get(unit_id, unit_id) for unit_id in ids]

    # -- the session ----------------------------------------------------------------

    @tool("Your session brief: unread mail, your tasks and leases, ready tasks, news.")
    async def brief(max_chars: Annotated[int, Field(ge=500, le=50_000)] = 6000) -> str:
        async def run(client: AsyncClient) -> str:
            files = await trio.to_thread.run_sync(changed_files)
            return briefview.markdown(await client.brief(files=files), max_chars,
                                      name=where.display)
        return await call(run, footer=False)

    @tool("Agents: their live sessions, last seen, leases, unread.", READ_ONLY)
    async def agents() -> str:
        async def run(client: AsyncClient) -> str:
            return "\n".join(agent_line(agent) for agent in await client.list_agents()) \
                or "no agents yet"
        return await call(run)

    # -- messages ---------------------------------------------------------------------

    @tool("Send a message; returns its id.", structured=True)
    async def send(to: Annotated[list[str], Field(description="agents; ['*']: all")],
                   text: str, reply_to: Id | None = None,
                   thread: Annotated[str | None, Field(description="a thread name")] = None,
                   ack_required: bool = False, context: Context | None = None,
                   new: Annotated[bool, Field(description="to agents not seen yet")] = False,
                   ) -> Annotated[CallToolResult, Written]:
        async def run(client: AsyncClient) -> str:
            answered = (await whole(client, [reply_to]))[0] if reply_to else None
            message = await client.send_message(to, text, reply_to=answered, thread=thread,
                                                ack_required=ack_required, context_id=context,
                                                new_recipients=new)
            return f"sent {message.id}"
        return written(await call(run))

    @tool("Unread messages, oldest first (marked read unless peek); can wait for one.")
    async def inbox(wait: Wait = 0, limit: Annotated[int, Field(ge=1, le=100)] = 10,
                    peek: bool = False) -> str:
        async def run(client: AsyncClient) -> str:
            page = await client.inbox(limit=limit, wait=wait, peek=peek)
            more = f"\n({page.unread} more unread)" if page.unread else ""
            lines = [unit_line(message) + await replies(client, message)
                     for message in page.messages]
            return "\n".join(lines or ["no unread messages"]) + more
        return await call(run, footer=False)

    @tool("Acknowledge a message that asked for it.", structured=True)
    async def ack(message_id: Id) -> Annotated[CallToolResult, Written]:
        async def run(client: AsyncClient) -> str:
            (message,) = await whole(client, [message_id])
            return f"acknowledged with {(await client.ack_message(message)).id}"
        return written(await call(run))

    @tool("Your messages still owed acknowledgements, and by whom.", READ_ONLY)
    async def pending() -> str:
        async def run(client: AsyncClient) -> str:
            return await pending_acks(client, identity.agent)
        return await call(run)

    @tool("A thread's messages, oldest first.", READ_ONLY)
    async def thread(name: Annotated[str, Field(description="thread name or a message id")]
                     ) -> str:
        async def run(client: AsyncClient) -> str:
            return await thread_text(client, name)
        return await call(run)

    # -- the journal ------------------------------------------------------------------

    @tool("Write a unit (a note, result, decision) to a context; returns its id.", structured=True)
    async def post(context: Context, text: str,
                   type: Annotated[UnitType, Field(description="unit type")] = "REASONING",
                   reply_to: Id | None = None, references: list[Id] | None = None,
                   meta: dict[str, str] | None = None) -> Annotated[CallToolResult, Written]:
        async def run(client: AsyncClient) -> str:
            targets = await whole(client, [*([reply_to] if reply_to else []),
                                           *(references or [])])
            kinds = ["RESPONDS_TO"] * bool(reply_to) + ["REFERENCES"] * len(references or [])
            unit = await client.create_unit(context, type, text, meta=meta or {},
                                            relationships=list(zip(kinds, targets,
                                                                   strict=True)))
            return f"posted {unit.id}"
        return written(await call(run))

    @tool("The newest units of a context, oldest first.", READ_ONLY)
    async def recent(context: Context, limit: Annotated[int, Field(ge=1, le=100)] = 20) -> str:
        async def run(client: AsyncClient) -> str:
            page = await client.list_units(context, limit=limit)
            return _units(page.units, f"no units in {context}")
        return await call(run)

    @tool("Units by id (or 8+ character prefix), in full.", READ_ONLY)
    async def get(ids: list[Id]) -> str:
        async def run(client: AsyncClient) -> str:
            found = await client.get_units(await whole(client, ids))
            text = "\n\n".join(f"{unit_line(unit, 0)}\n{unit.text or '<binary>'}"
                               for unit in found.units)
            missing = f"\nnot found: {', '.join(found.missing)}" if found.missing else ""
            return (text or "no such units") + missing
        return await call(run)

    @tool("Search the journal: by words, meaning (semantic) or both.", READ_ONLY)
    async def search(query: str, context: Context | None = None,
                     limit: Annotated[int, Field(ge=1, le=50)] = 10,
                     mode: Literal["keyword", "semantic", "hybrid"] = "keyword") -> str:
        async def run(client: AsyncClient) -> str:
            results = await client.search(query, contexts=[context] if context else [],
                                          limit=limit, mode=mode)
            if not results.hits:
                return "no match"
            if mode == "keyword":
                return "\n".join(f"{hit.unit_id} {hit.snippet}" for hit in results.hits)
            units = {unit.id: unit for unit in
                     (await client.get_units([hit.unit_id for hit in results.hits])).units}
            return "\n".join(unit_line(units[hit.unit_id], 160) for hit in results.hits
                             if hit.unit_id in units)
        return await call(run)

    @tool("What led to a unit and what followed.", READ_ONLY)
    async def trace(unit_id: Id, depth: Annotated[int, Field(ge=1, le=8)] = 3) -> str:
        async def run(client: AsyncClient) -> str:
            (root,) = await whole(client, [unit_id])
            found = await client.related_units(root, depth=depth)
            lines = [f"{edge.source} {edge.type} {edge.target}" for edge in found.edges]
            return "\n".join([*lines, *(unit_line(unit, 160) for unit in found.units)])
        return await call(run)

    # -- leases -------------------------------------------------------------------------

    @tool("Lease files, dirs, globs (src/**/*.py: paths, from the project) or names "
          "(resources) before changing them, all or none; shared: readers'. Held until "
          "unlock, the ttl if given, or your session's end.", structured=True)
    async def lock(resources: list[str] | None = None,
                   ttl: Annotated[float | None, Field(
                       ge=MIN_TTL, description="seconds; none: while your session lives")
                   ] = None,
                   wait: Wait = 0, paths: list[str] | None = None,
                   shared: bool = False) -> Annotated[CallToolResult, Leased]:
        leases: list[Lease] = []

        async def run(client: AsyncClient) -> str:
            wanted = [*(resources or []), *await resolved(paths or [])]
            leases.extend(await client.acquire_lock(wanted, ttl=ttl, wait=wait,
                                                    pid=identity.session_pid, shared=shared))
            shown = await displayed([lease.resource for lease in leases])
            return "\n".join(f"{name}: lock_id {lease.lock_id}, fencing token "
                             f"{lease.fencing_token}" + (" (shared)" if lease.shared else "")
                             for name, lease in zip(shown, leases, strict=True))
        text = await call(run)
        return leased(text, leases)

    async def resolved(given: list[str]) -> list[str]:
        """Paths as leases name them, relative to the project (git is asked: in a thread)."""
        try:
            return await trio.to_thread.run_sync(where.resources, given) if given else []
        except ValueError as exc:
            raise ToolError(f"engram: {exc}") from None

    async def displayed(names: list[str]) -> list[str]:
        """Names as paths from the project, as the agent gives them."""
        return await trio.to_thread.run_sync(
            lambda: [one_line(where.display(name)) for name in names])

    async def named(resource: str | None, path: str | None) -> str | None:
        return (await resolved([path]))[0] if path else resource

    @tool("Extend a lease by ttl seconds.")
    async def renew(lock_id: str, resource: str | None = None, path: str | None = None,
                    ttl: Annotated[float, Field(ge=MIN_TTL, description="seconds")] = 600
                    ) -> str:
        async def run(client: AsyncClient) -> str:
            lease = await client.renew_lock(lock_id, ttl=ttl,
                                            resource=await named(resource, path))
            (shown,) = await displayed([lease.resource])
            return f"{shown}: until {timestamp(lease.expires_at)}"
        return await call(run)

    @tool("Release a lease.")
    async def unlock(lock_id: str, resource: str | None = None, path: str | None = None
                     ) -> str:
        async def run(client: AsyncClient) -> str:
            await client.release_lock(lock_id, resource=await named(resource, path))
            return f"released {one_line(path or resource or lock_id)}"
        return await call(run)

    @tool("Leases held now, and who waits.", READ_ONLY)
    async def locks(prefix: str = "") -> str:
        async def run(client: AsyncClient) -> str:
            states = await client.list_locks(prefix=prefix)
            shown = await displayed([state.resource for state in states])
            return "\n".join(
                f"{name}: "
                + (", ".join(f"{one_line(lease.holder)}{' (shared)' if lease.shared else ''}"
                             for lease in held) if (held := state.leases or (
                                 [state.lease] if state.lease else [])) else "free")
                + (f", until {timestamp(held[0].expires_at)}" if held else "")
                + (f", {len(state.waiters)} waiting" if state.waiters else "")
                for name, state in zip(shown, states, strict=True)) or "no leases"
        return await call(run)

    # -- tasks ------------------------------------------------------------------------

    @tool("Add a task; returns its id.", structured=True)
    async def task_add(title: str, context: Context | None = None,
                       priority: Annotated[int, Field(ge=0, le=4, description="0 urgent")] = 2,
                       depends_on: list[Id] | None = None
                       ) -> Annotated[CallToolResult, Written]:
        async def run(client: AsyncClient) -> str:
            task = await client.add_task(title, context_id=context, priority=priority,
                                         depends_on=await whole(client, depends_on or []))
            return f"added {task.id}: {task.title}"
        return written(await call(run))

    @tool("Tasks ready to claim, most urgent first.", READ_ONLY)
    async def task_ready(context: Context | None = None) -> str:
        async def run(client: AsyncClient) -> str:
            tasks = await client.list_tasks(ready=True, contexts=[context] if context else [],
                                            limit=20)
            return "\n".join(f"{task.id} P{task.priority} {task.title} [{task.context_id}]"
                             for task in tasks) or "no task is ready"
        return await call(run)

    @tool("Claim a task (no id: the most urgent ready one) for you alone.", structured=True)
    async def task_claim(task_id: Id | None = None) -> Annotated[CallToolResult, Written]:
        async def run(client: AsyncClient) -> str:
            chosen = (await whole(client, [task_id]))[0] if task_id else None
            task = await client.claim_task(chosen, pid=identity.session_pid)
            return f"claimed {task.id}: {task.title}"
        return written(await call(run))

    @tool("Mark a task you claimed done.")
    async def task_done(task_id: Id) -> str:
        async def run(client: AsyncClient) -> str:
            (task_id_whole,) = await whole(client, [task_id])
            task = await client.finish_task(task_id_whole, pid=identity.session_pid)
            return f"done {task.id}: {task.title}"
        return await call(run)

    @tool("Give back a task you claimed.")
    async def task_release(task_id: Id) -> str:
        async def run(client: AsyncClient) -> str:
            (task_id_whole,) = await whole(client, [task_id])
            task = await client.release_task(task_id_whole, pid=identity.session_pid)
            return f"released {task.id}: {task.title}"
        return await call(run)

    # -- resources ----------------------------------------------------------------------

    async def read(text: Awaitable[str]) -> str:
        """A resource's text; a failure keeps its reason (the SDK tells a ResourceError's
        message, and only "Error reading resource" of anything else)."""
        try:
            return await text
        except ToolError as exc:
            raise ResourceError(str(exc)) from None

    @server.resource("engram://brief", description="Your session brief (reading it does not "
                     "move the mark the brief tool's 'since your last brief' starts from).")
    async def brief_resource() -> str:
        async def run(client: AsyncClient) -> str:
            files = await trio.to_thread.run_sync(changed_files)
            return briefview.markdown(await client.brief(advance=False, files=files), 6000,
                                      name=where.display)
        return await read(call(run, footer=False))

    @server.resource("engram://inbox", description="Your unread messages (not marked read).")
    async def inbox_resource() -> str:
        return await read(inbox(peek=True))

    @server.resource("engram://context/{context_id}", description="A context's newest units.")
    async def context_resource(context_id: str) -> str:
        return await read(recent(context_id))

    @server.resource("engram://unit/{unit_id}", description="A unit in full.")
    async def unit_resource(unit_id: str) -> str:
        return await read(get([unit_id]))

    return server


async def serve(identity: Identity) -> None:
    """Announce the session (best effort) and serve MCP on stdin/stdout until EOF."""
    try:
        with trio.move_on_after(2):
            async with open_client(identity.socket, agent_id=identity.agent,
                                   client_name="engram-mcp", connect_timeout=2.0,
                                   env=identity.env) as client:
                await client.announce_session(pid=identity.session_pid,
                                              harness=identity.harness)
    except (EngramError, OSError):
        pass  # the tools say so when they are called
    # The SDK logs every tool that fails at INFO, with the whole failure: the tool result
    # says it already.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    await build_server(identity).run_stdio_async()
