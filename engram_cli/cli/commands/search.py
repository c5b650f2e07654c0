"""``engram search`` (ranked full-text search with filters) and ``engram trace`` (causal story)."""

from __future__ import annotations

from typing import Annotated

import typer

from engram_cli.cli import completion, context, output
from engram_cli.cli.hot.unit import parse_pairs, whole_id
from engram_cli.cli.options import JsonOption
from engram_cli.client.errors import NotFound, UsageProblem
from engram_cli.formats.jsonforms import related_json, to_plain_data, unit_to_json
from engram_cli.formats.text import preview
from engram_cli.formats.timeparse import parse_time
from engramd.protocol import Unit


def search(
    ctx: typer.Context,
    query: Annotated[str | None, typer.Argument(
        metavar="[QUERY]", help="Words to find (all of them); none: filters alone.")] = None,
    contexts: Annotated[list[str] | None, typer.Option(
        "--context", "-c", metavar="CTX", autocompletion=completion.contexts,
        help="Only this context (repeatable).")] = None,
    agents: Annotated[list[str] | None, typer.Option(
        "--agent", metavar="AGENT", help="Only units of this agent (repeatable).")] = None,
    types: Annotated[list[str] | None, typer.Option(
        "--type", "-t", metavar="TYPE", autocompletion=completion.unit_types,
        help="Only units of this type (repeatable).")] = None,
    meta: Annotated[list[str] | None, typer.Option(
        "--meta", "-m", metavar="KEY=VALUE", help="Only units with this metadata.")] = None,
    since: Annotated[str | None, typer.Option("--since", metavar="TIME",
                                              help="From TIME on (10m, 2h, ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--until", metavar="TIME",
                                              help="Up to TIME.")] = None,
    related_to: Annotated[str | None, typer.Option(
        "--related-to", metavar="ID", help="Only units related to this unit.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    advanced: Annotated[bool, typer.Option(
        "--advanced", help="QUERY is FTS5 syntax: \"phrases\", prefix*, NEAR(a b), AND/OR/NOT."
    )] = False,
    mode: Annotated[str, typer.Option(
        "--mode", metavar="MODE", autocompletion=lambda: ["keyword", "semantic", "hybrid"],
        help="keyword (BM25), semantic (by meaning; needs the semantic extra) or hybrid "
        "(both ranks fused).")] = "keyword",
    min_similarity: Annotated[float | None, typer.Option(
        "--min-similarity", metavar="X", min=-1.0, max=1.0,
        help="Semantic and hybrid: leave out units less similar than X (cosine).")] = None,
    json: JsonOption = False,
) -> None:
    """Find units by words (ranked by relevance, then newest) and filters; exit 3 if none.

    Without QUERY the filters alone select units, newest first, with no score; a
    QUERY with no words in it (letters or digits: "", "***") finds nothing. With
    --mode semantic, units are ranked by what they mean (an "storage full" query finds
    "disk quota exceeded"); --mode hybrid fuses both rankings.

    Examples:

      engram search "disk quota"
      engram search -t ERROR --since 1h --json | jq -r .unit_id
      engram search retry -c build-42 -n 5
      engram search --mode hybrid "storage full" --min-similarity 0.1
    """
    cli = context.get(ctx)
    out = cli.output(json)
    if query is not None and not advanced and mode == "keyword" and not any(
            char.isalnum() for char in query):
        raise NotFound(f"nothing to search for: {query!r} has no words (letters or digits); "
                       "leave QUERY out to select by filters alone")
    query = query or ""
    client = cli.client()
    try:
        since_ts = parse_time(since) if since else None
        until_ts = parse_time(until) if until else None
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    results = client.search(query, advanced=advanced, contexts=contexts or [],
                            agents=agents or [], types=types or [], meta=parse_pairs(meta),
                            since=since_ts, until=until_ts,
                            related_to=whole_id(client, related_to) if related_to else None,
                            limit=limit, offset=offset, mode=mode,
                            min_similarity=min_similarity)
    units = {unit.id: unit for unit in client.get_units([h.unit_id for h in results.hits]).units}
    ranked = bool(query.split())  # filters alone rank nothing: no score
    if out.json:
        for hit in results.hits:
            unit = units.get(hit.unit_id)
            out.json_line({**to_plain_data(hit), "score": hit.score if ranked else None,
                           "unit": unit_to_json(unit) if unit else None})
    else:
        output.search_hits(out, results.hits, units, ranked=ranked)
        if out.is_terminal:
            output.note(f"{results.total} match(es)" + (
                f", showing {offset + 1}-{offset + len(results.hits)}"
                if results.total > len(results.hits) else ""))
    if not results.hits:
        raise NotFound("nothing matched")


def trace(
    ctx: typer.Context,
    unit_id: Annotated[str, typer.Argument(metavar="ID", help="The unit whose story to tell.")],
    depth: Annotated[int, typer.Option("--depth", min=1, max=16,
                                       help="How many relationship hops.")] = 4,
    json: JsonOption = False,
) -> None:
    """The causal story of a unit: what led to it and what followed, across agents."""
    cli = context.get(ctx)
    out = cli.output(json)
    client = cli.client()
    found = client.related_units(whole_id(client, unit_id), depth=depth)
    if out.json:
        out.json_line(related_json(found))
        return
    output.trace_tree(out, found, _label)


def _label(unit: Unit) -> str:
    return f"{unit.type} {unit.agent_id}@{unit.context_id}: {preview(unit, 80)}"

