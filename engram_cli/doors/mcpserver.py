"""``engram mcp``: engram as an MCP server on stdio, over the trio client library.

Built on the official MCP Python SDK (the optional extra ``engram[mcp]``), which
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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import trio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field, ValidationError

from engram_cli import __version__
from engram_cli.client.asynchronous import AsyncClient, open_client
from engram_cli.client.errors import EngramError
from engram_cli.formats import briefview
from engram_cli.formats.text import preview, timestamp
from engramd.protocol import Unit, agentwork

MAX_WAIT = 60.0
"""The longest a tool waits (inbox, lock): a tool call must come back to the model."""
READ_ONLY = ToolAnnotations(read_only_hint=True)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False)
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


def unit_line(unit: Unit, width: int = 400) -> str:
    flags = " (asks for an ack)" if agentwork.wants_ack(unit.meta) else ""
    return (f"{unit.id} {timestamp(unit.ts)} {unit.agent_id} {unit.type} "
            f"[{unit.context_id}]{flags}: {preview(unit, width)}")


def _units(units: list[Unit], empty: str) -> str:
    return "\n".join(unit_line(unit) for unit in units) or empty


def _wait(seconds: float) -> float:
    if not 0 <= seconds <= MAX_WAIT:
        raise ToolError(f"wait must be 0 to {MAX_WAIT:g} seconds")
    return seconds


def invalid_arguments(error: ValidationError) -> str:
    """Pydantic's report of arguments that do not fit a tool's schema, as one line."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'arguments'}: {problem['msg']}"
        for problem in error.errors(include_url=False)) + " (see the tool's input schema)"


class EngramMCPServer(MCPServer):
    """The SDK's server, telling arguments that fail the schema in one line (the SDK
    passes pydantic's whole report, with its links, to the model)."""

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
                                   client_name="engram-mcp", connect_timeout=5.0) as client:
                text = await operation(client)
                unread = (await client.unread()).unread if footer else 0
        except EngramError as exc:
            raise ToolError(f"engram: {exc}") from None
        except OSError as exc:
            raise ToolError(f"engram: {exc.strerror or exc}") from None
        except trio.TooSlowError:
            raise ToolError("engram: engramd did not answer within 5 s; 'engram doctor' "
                            "says why") from None
        if unread:
            text += f"\n\n[{unread} unread message(s): call inbox]"
        return text

    def tool(description: str, annotations: ToolAnnotations = WRITES
             ) -> Callable[[Callable[..., Awaitable[str]]], Callable[..., Awaitable[str]]]:
        return server.tool(description=description, annotations=annotations,
                           structured_output=False)

    # -- the session ----------------------------------------------------------------

    @tool("Your session brief: unread messages, your tasks and leases, ready tasks, "
          "what happened since your last brief.")
    async def brief(max_chars: int = 6000) -> str:
        async def run(client: AsyncClient) -> str:
            found = await client.brief()
            return briefview.markdown(found, max(500, max_chars))
        return await call(run, footer=False)

    # -- messages ---------------------------------------------------------------------

    @tool("Send a message to agents ('*' for all). Returns its id.")
    async def send(to: list[str], text: str, reply_to: str | None = None,
                   thread: str | None = None, ack_required: bool = False,
                   context: str | None = None) -> str:
        async def run(client: AsyncClient) -> str:
            message = await client.send_message(to, text, reply_to=reply_to, thread=thread,
                                                ack_required=ack_required, context_id=context)
            return f"sent {message.id}"
        return await call(run)

    @tool("Your unread messages, oldest first (marked read unless peek); wait up to "
          f"{MAX_WAIT:g} s for one when none is unread.")
    async def inbox(wait: float = 0, limit: Annotated[int, Field(ge=1, le=100)] = 10,
                    peek: bool = False) -> str:
        wait = _wait(wait)

        async def run(client: AsyncClient) -> str:
            page = await client.inbox(limit=limit, wait=wait, peek=peek)
            more = f"\n({page.unread} more unread)" if page.unread else ""
            return _units(page.messages, "no unread messages") + more
        return await call(run, footer=False)

    @tool("Acknowledge a message that asked for it.")
    async def ack(message_id: str) -> str:
        async def run(client: AsyncClient) -> str:
            return f"acknowledged with {(await client.ack_message(message_id)).id}"
        return await call(run)

    # -- the journal ------------------------------------------------------------------

    @tool("Write a unit to a context (a note, result, decision). Returns its id.")
    async def post(context: str, text: str, type: str = "REASONING",
                   reply_to: str | None = None, references: list[str] | None = None,
                   meta: dict[str, str] | None = None) -> str:
        relationships = ([("RESPONDS_TO", reply_to)] if reply_to else []) + [
            ("REFERENCES", target) for target in references or []]

        async def run(client: AsyncClient) -> str:
            unit = await client.create_unit(context, type, text, meta=meta or {},
                                            relationships=relationships)
            return f"posted {unit.id}"
        return await call(run)

    @tool("The newest units of a context, oldest first.", READ_ONLY)
    async def recent(context: str, limit: Annotated[int, Field(ge=1, le=100)] = 20) -> str:
        async def run(client: AsyncClient) -> str:
            page = await client.list_units(context, limit=limit)
            return _units(page.units, f"no units in {context}")
        return await call(run)

    @tool("Units by id, in full.", READ_ONLY)
    async def get(ids: list[str]) -> str:
        async def run(client: AsyncClient) -> str:
            found = await client.get_units(ids)
            text = "\n\n".join(f"{unit_line(unit, 0)}\n{unit.text or '<binary>'}"
                               for unit in found.units)
            missing = f"\nnot found: {', '.join(found.missing)}" if found.missing else ""
            return (text or "no such units") + missing
        return await call(run)

    @tool("Search the journal: keyword (words), semantic (meaning), or hybrid.", READ_ONLY)
    async def search(query: str, context: str | None = None,
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

    @tool("What led to a unit and what followed (its relationships).", READ_ONLY)
    async def trace(unit_id: str, depth: Annotated[int, Field(ge=1, le=8)] = 3) -> str:
        async def run(client: AsyncClient) -> str:
            found = await client.related_units(unit_id, depth=depth)
            lines = [f"{edge.source} {edge.type} {edge.target}" for edge in found.edges]
            return "\n".join([*lines, *(unit_line(unit, 160) for unit in found.units)])
        return await call(run)

    # -- leases -------------------------------------------------------------------------

    @tool("Lease resources (file paths, names) before changing them; all or none. "
          "Held until unlock, the ttl, or your session's end.")
    async def lock(resources: list[str], ttl: Annotated[float, Field(gt=0)] = 600,
                   wait: float = 0) -> str:
        wait = _wait(wait)

        async def run(client: AsyncClient) -> str:
            leases = await client.acquire_lock(resources, ttl=ttl, wait=wait,
                                               pid=identity.session_pid)
            return "\n".join(f"{lease.resource}: lock_id {lease.lock_id}, fencing token "
                             f"{lease.fencing_token}" for lease in leases)
        return await call(run)

    @tool("Release a lease.")
    async def unlock(resource: str, lock_id: str) -> str:
        async def run(client: AsyncClient) -> str:
            await client.release_lock(lock_id, resource=resource)
            return f"released {resource}"
        return await call(run)

    @tool("Leases held now, and who waits.", READ_ONLY)
    async def locks(prefix: str = "") -> str:
        async def run(client: AsyncClient) -> str:
            states = await client.list_locks(prefix=prefix)
            return "\n".join(
                f"{state.resource}: {state.lease.holder if state.lease else 'free'}"
                + (f", until {timestamp(state.lease.expires_at)}" if state.lease else "")
                + (f", {len(state.waiters)} waiting" if state.waiters else "")
                for state in states) or "no leases"
        return await call(run)

    # -- tasks ------------------------------------------------------------------------

    @tool("Tasks ready to claim, most urgent first.", READ_ONLY)
    async def task_ready(context: str | None = None) -> str:
        async def run(client: AsyncClient) -> str:
            tasks = await client.list_tasks(ready=True, contexts=[context] if context else [],
                                            limit=20)
            return "\n".join(f"{task.id} P{task.priority} {task.title} [{task.context_id}]"
                             for task in tasks) or "no task is ready"
        return await call(run)

    @tool("Claim a task (or the most urgent ready one); no one else can while you hold it.")
    async def task_claim(task_id: str | None = None) -> str:
        async def run(client: AsyncClient) -> str:
            task = await client.claim_task(task_id, pid=identity.session_pid)
            return f"claimed {task.id}: {task.title}"
        return await call(run)

    @tool("Mark a task you claimed done.")
    async def task_done(task_id: str) -> str:
        async def run(client: AsyncClient) -> str:
            task = await client.finish_task(task_id, pid=identity.session_pid)
            return f"done {task.id}: {task.title}"
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
            return briefview.markdown(await client.brief(advance=False), 6000)
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
                                   client_name="engram-mcp", connect_timeout=2.0) as client:
                await client.announce_session(pid=identity.session_pid,
                                              harness=identity.harness)
    except (EngramError, OSError):
        pass  # the tools say so when they are called
    await build_server(identity).run_stdio_async()
