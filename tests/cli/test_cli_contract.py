"""What a script or an agent may rely on from ``engram``: one error shape and exit status
for each kind of failure, ids it can pass back, output it can split, as SPECS §6 says.

Every case runs the real program against the real daemon, as a process, with stderr
piped (as a script has it).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engram_cli.client import Client
from tests.conftest import DaemonProcess, on_a_terminal, run_cli, start_engramd

pytestmark = pytest.mark.slow  # every test here runs processes


def one_error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The one line a failure may print, after checking its exit status."""
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("engram: error: "), lines[0]
    assert "\x1b[" not in result.stderr and "╭" not in result.stderr
    return lines[0].removeprefix("engram: error: ")


@pytest.mark.parametrize(("args", "hint"), [
    (["unit", "create", "-c"], "engram unit create"),           # an option without its value
    (["unit", "create", "--bogus"], "engram unit create"),      # an unknown option
    (["ping", "-n", "0"], "engram ping"),                       # out of range
    (["wait", "--timeout", "abc"], "engram wait"),              # not a number
    (["lock", "release", "res"], "engram lock release"),        # a required option missing
    (["no-such-command"], "engram"),
    (["unit", "no-such-command"], "engram unit"),
    # The commands' own checks, on the fast start and in the Typer app alike.
    (["lock", "acquire", "res", "--ttl", "1e-300"], "engram lock acquire"),
    (["lock", "acquire", "--shared"], "engram lock acquire"),       # no resource
    (["lock", "run", "res", "--wait", "--", "true"], "engram lock run"),
    (["lock", "run", "res", "--bogus", "--", "true"], "engram lock run"),
    (["lock", "release", "--lock-id", "x"], "engram lock release"),
    (["--agent", "a", "task", "claim"], "engram task claim"),
    (["agent", "token", "revoke"], "engram agent token revoke"),
    (["wait", "--since", "soon"], "engram wait"),
])
@pytest.mark.parametrize("no_color", [False, True])
def test_every_usage_error_is_one_line_with_a_hint(env: dict[str, str], args: list[str],
                                                   hint: str, no_color: bool) -> None:
    env["ENGRAM_NO_AUTOSTART"] = "1"
    if no_color:
        env["NO_COLOR"] = "1"
    message = one_error_line(run_cli(env, *args), 2)
    assert message.endswith(f"(try '{hint} --help')"), message


def test_the_installed_program_tells_usage_errors_in_one_line(env: dict[str, str]) -> None:
    """The console script itself (what `make setup` puts on PATH), not only `python -m`."""
    program = Path(sys.executable).with_name("engram")
    assert program.exists(), f"{program} is not installed: run make setup"
    result = subprocess.run([str(program), "lock", "acquire", "res", "--ttl"], env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert one_error_line(result, 2) == ("Option '--ttl' requires an argument. "
                                         "(try 'engram lock acquire --help')")


def test_an_invalid_value_is_a_usage_error_wherever_it_is_caught(
        engramd: DaemonProcess) -> None:
    with Client(engramd.socket, autostart=False) as engram:
        unit = engram.create_unit("v", "MESSAGE", b"one")
    cases = {  # the daemon's bad_request and the CLI's own checks alike
        ("unit", "create", "-c", "v", "-p", "x", "-t", "bogus"): "unknown unit type 'bogus'",
        ("unit", "create", "-c", "v", "-p", "x", "-r", f"BOGUS:{unit.id}"):
            "unknown relationship type 'BOGUS'",
        ("unit", "create", "-c", "bad slug!", "-p", "x"): "bad context id 'bad slug!'",
        ("unit", "related", unit.id, "-d", "sideways"): "direction must be out, in or both",
        ("watch", "-k", "not.a.kind"): "unknown event kind not.a.kind",
        ("lock", "acquire", ""): "a resource is 1 to 1024 bytes",
        ("search", "--since", "yesterday"): "cannot read time 'yesterday'",
    }
    for args, reason in cases.items():
        message = one_error_line(run_cli(engramd.env, *args), 2)
        assert reason in message, args
        command = " ".join(word for word in args[:2] if not word.startswith("-"))
        assert message.endswith(f"(try 'engram {command} --help')"), message


def test_lock_run_says_which_option_lacks_its_value(env: dict[str, str]) -> None:
    """``--wait`` as the last word before ``--`` said "expects seconds, got None"."""
    env["ENGRAM_NO_AUTOSTART"] = "1"
    for option, said in (("--wait", "--wait expects seconds, e.g. --wait 30"),
                         ("-w", "-w expects seconds, e.g. -w 30"),
                         ("--ttl", "--ttl expects seconds, e.g. --ttl 30"),
                         ("--path", "--path expects a path")):
        message = one_error_line(run_cli(env, "lock", "run", "res", option, "--", "true"), 2)
        assert message == f"{said} (try 'engram lock run --help')"


def test_with_json_an_error_is_one_json_object(engramd: DaemonProcess) -> None:
    missing = run_cli(engramd.env, "--json", "unit", "list", "-c", "bulid-42")
    assert missing.returncode == 3 and missing.stdout == ""
    assert [json.loads(line) for line in missing.stderr.splitlines()] == [
        {"error": {"code": "not_found", "message": "no context bulid-42", "exit": 3}}]
    usage = run_cli(engramd.env, "unit", "create", "-c", "x", "--bogus", "--json")
    assert json.loads(usage.stderr) == {"error": {
        "code": "bad_request", "exit": 2,
        "message": "No such option: --bogus (try 'engram unit create --help')"}}
    assert usage.returncode == 2
    # After `--` the word belongs to CMD: the error stays English.
    held = run_cli(engramd.env, "lock", "run", "r", "--", "/no/such/program", "--json")
    assert held.returncode == 127 and held.stderr.startswith("engram: error: ")


def test_no_daemon_with_json_is_an_unavailable_object(env: dict[str, str]) -> None:
    env["ENGRAM_NO_AUTOSTART"] = "1"
    result = run_cli(env, "ping", "--json")
    assert result.returncode == 69
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "unavailable" and error["exit"] == 69


def test_payload_limits_name_the_setting_that_raises_them(engramd: DaemonProcess,
                                                          tmp_path: Path) -> None:
    # Over a limit is an invalid value: exit 2, as bad_request.
    setting = "limits.max_payload_bytes in engramd's configuration raises it"
    over_payload = tmp_path / "1MiB+1"
    over_payload.write_bytes(b"a" * (1024 * 1024 + 1))
    message = one_error_line(run_cli(engramd.env, "unit", "create", "-c", "big", "-f",
                                     str(over_payload)),2)
    assert message == (f"payload of 1048577 bytes exceeds the limit of 1048576 bytes "
                       f"({setting})")
    over_frame = tmp_path / "20MiB"
    over_frame.write_bytes(b"a" * (20 * 1024 * 1024))
    message = one_error_line(run_cli(engramd.env, "unit", "create", "-c", "big", "-f",
                                     str(over_frame)),2)
    assert "exceeds the limit of 16777216 bytes" in message
    assert f"a unit's payload may be at most 1048576 bytes ({setting})" in message
    with Client(engramd.socket, autostart=False) as engram:  # still serving, nothing written
        assert engram.ping()
        assert engram.status().journal.units == 0  # type: ignore[union-attr]


def test_an_empty_payload_needs_empty(engramd: DaemonProcess) -> None:
    refusal = ("no payload: give -p, --file or pipe stdin (or --empty) "
               "(try 'engram unit create --help')")
    for args, stdin in ((["-p", ""], None), ([], b""), (["-f", "/dev/null"], None)):
        result = run_cli(engramd.env, "unit", "create", "-c", "e", *args, input=stdin)
        assert one_error_line(result, 2) == refusal, args
    assert "give one of" in one_error_line(
        run_cli(engramd.env, "unit", "create", "-c", "e", "-p", "x", "--empty"), 2)
    made = run_cli(engramd.env, "unit", "create", "-c", "e", "--empty", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["payload"] == ""
    listed = run_cli(engramd.env, "unit", "list", "-c", "e").stdout.splitlines()
    assert len(listed) == 1  # the refused ones wrote nothing


def test_an_unknown_context_is_not_found_and_waiting_for_one_warns(
        engramd: DaemonProcess) -> None:
    for command in ("list", "export"):
        result = run_cli(engramd.env, "unit", command, "-c", "nope")
        assert one_error_line(result, 3) == "no context nope"
        assert result.stdout == ""
    waited = run_cli(engramd.env, "wait", "-c", "nope", "--timeout", "0.1")
    assert waited.returncode == 5
    assert waited.stderr.splitlines()[0] == (
        "engram: no context nope yet; waiting for it to appear")


def _units_sharing_a_prefix(engram: Client) -> tuple[str, str]:
    """Two unit ids with the same first 8 characters (a UUIDv7's first 8 span 65 s)."""
    for _ in range(3):
        first, second = (engram.create_unit("ids", "MESSAGE", text.encode()).id
                         for text in ("first", "second"))
        if first[:8] == second[:8]:
            return first, second
    raise AssertionError("three pairs of units straddled a 65 s boundary")


def test_a_unit_id_may_be_a_unique_prefix_everywhere(engramd: DaemonProcess) -> None:
    with Client(engramd.socket, autostart=False) as engram:
        first, second = _units_sharing_a_prefix(engram)
    # Up to the millisecond and the counter after it: unique in one daemon's journal.
    prefix = first[:18]
    got = run_cli(engramd.env, "unit", "get", prefix, "--json")
    assert json.loads(got.stdout)["id"] == first
    effect = run_cli(engramd.env, "unit", "create", "-c", "ids", "-p", "effect",
                     "-r", f"CAUSES:{prefix.upper()}")
    effect_id = effect.stdout.strip()
    assert effect.returncode == 0, effect.stderr
    related = json.loads(run_cli(engramd.env, "unit", "related", prefix, "--json").stdout)
    assert related["edges"] == [{"source": effect_id, "type": "CAUSES", "target": first,
                                 "depth": 1}]
    traced = json.loads(run_cli(engramd.env, "trace", effect_id[:18], "--json").stdout)
    assert traced["root"] == effect_id
    hits = run_cli(engramd.env, "search", "--related-to", prefix, "--json")
    assert [json.loads(line)["unit_id"] for line in hits.stdout.splitlines()] == [effect_id]
    pinned = run_cli(engramd.env, "context", "pin", "ids", prefix, "--json")
    assert json.loads(pinned.stdout)["pinned_units"] == [first]

    ambiguous = one_error_line(run_cli(engramd.env, "unit", "get", first[:8]), 2)
    assert ambiguous.startswith(f"unit id prefix {first[:8]} is ambiguous: ")
    assert first in ambiguous and second in ambiguous
    short = one_error_line(run_cli(engramd.env, "unit", "get", first[:7]), 2)
    assert short == (f"a unit id prefix needs at least 8 characters, got '{first[:7]}' "
                     "(try 'engram unit get --help')")
    unknown = "ffffffff-ffff"
    assert one_error_line(run_cli(engramd.env, "trace", unknown), 3) == (
        f"no unit id begins with {unknown}")


def tsv_field(text: str) -> str:
    """A field of a piped row as it was before escaping (SPECS §6)."""
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r"}.get(m[1], m[1]), text)


def test_piped_rows_escape_tabs_newlines_and_backslashes(engramd: DaemonProcess) -> None:
    made = run_cli(engramd.env, "unit", "create", "-c", "tsv", "-p", "line one\nline\ttwo \\",
                   "-m", "note=a b\tc", "-m", "path=C:\\x")
    assert made.returncode == 0, made.stderr
    rows = run_cli(engramd.env, "unit", "list", "-c", "tsv").stdout
    assert rows.count("\n") == 1
    _seq, ts, context, agent, type_, unit_id, payload, meta = rows.rstrip("\n").split("\t")
    assert payload == "line one line two \\\\"  # the payload's whitespace flattened to one line
    assert json.loads(tsv_field(meta)) == {
        "note": "a b\tc", "path": "C:\\x"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ts), ts
    assert unit_id == made.stdout.strip() and (context, agent, type_) == (
        "tsv", "tester", "MESSAGE")
    context = json.loads(run_cli(engramd.env, "context", "get", "tsv", "--json").stdout)
    assert context["created_at"].endswith("Z")


def test_search_scores_mean_something_and_stats_count_in_integers(
        engramd: DaemonProcess) -> None:
    with Client(engramd.socket, autostart=False) as engram:  # a corpus where words rank
        for text in ("disk quota", "build passed", "tests passed", "lint passed"):
            engram.create_unit("s", "ERROR" if "quota" in text else "MESSAGE", text.encode())
    filtered = [json.loads(line) for line in
                run_cli(engramd.env, "search", "-t", "ERROR", "--json").stdout.splitlines()]
    assert [hit["score"] for hit in filtered] == [None]  # no words: no rank (was -0.0)
    piped = run_cli(engramd.env, "search", "-t", "ERROR").stdout.split("\t")
    assert piped[0] == "-"
    ranked = run_cli(engramd.env, "search", "quota").stdout.split("\t")
    assert float(ranked[0]) > 0
    stats = json.loads(run_cli(engramd.env, "stats", "--json").stdout)
    assert isinstance(stats["gauges"]["connections"], int)
    piped = run_cli(engramd.env, "stats").stdout.splitlines()
    gauges = dict(line.split("\t") for line in piped if line.split("\t")[0] in stats["gauges"])
    assert gauges["connections"] == str(stats["gauges"]["connections"])  # 1, not 1.0
    header = piped.index("histogram\tcount\tmean_seconds\tp50_seconds\tp99_seconds")
    fsync = next(line.split("\t") for line in piped[header:] if line.startswith("fsync_seconds"))
    histogram = stats["histograms"]["fsync_seconds"]
    assert int(fsync[1]) == histogram["count"] > 0
    mean = histogram["sum"] / histogram["count"]  # seconds, under a name in seconds
    assert float(fsync[2]) == pytest.approx(mean, abs=1e-6)


def test_trace_draws_each_unit_once_at_its_shortest_distance(engramd: DaemonProcess) -> None:
    with Client(engramd.socket, agent_id="tester", autostart=False) as engram:
        root = engram.create_unit("t", "ERROR", b"root cause")
        middle = engram.create_unit("t", "MESSAGE", b"middle",
                                    relationships=[("CAUSES", root.id)])
        leaf = engram.create_unit("t", "MESSAGE", b"leaf",
                                  relationships=[("CAUSES", middle.id),
                                                 ("RESPONDS_TO", root.id)])
    lines = run_cli(engramd.env, "trace", root.id).stdout.splitlines()
    assert lines == [
        f"{root.id} ERROR tester@t: root cause",
        f"  ← CAUSES from {middle.id} MESSAGE tester@t: middle",
        f"    ← CAUSES from {leaf.id} (elsewhere in this tree)",
        f"  ← RESPONDS_TO from {leaf.id} MESSAGE tester@t: leaf",
    ]


def test_version_help_and_ping_summary(engramd: DaemonProcess) -> None:
    version = run_cli(engramd.env, "--version")
    assert re.fullmatch(r"engram \S+ \(protocol \d+\)\n", version.stdout), version.stdout
    helped = run_cli(engramd.env, "help", "unit", "create")
    assert helped.returncode == 0 and "engram unit create" in helped.stdout
    assert helped.stdout == run_cli(engramd.env, "unit", "create", "--help").stdout
    assert "engram help" not in one_error_line(run_cli(engramd.env, "help", "nope"), 2)
    watch_help = run_cli(engramd.env, "watch", "--help").stdout
    assert "lock.expired" in " ".join(watch_help.split())
    pings = run_cli(engramd.env, "ping", "-n", "3").stdout.splitlines()
    assert len(pings) == 4 and pings[0].startswith("pong from engramd")
    summary = re.fullmatch(r"3 pings, rtt min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms",
                           pings[-1])
    assert summary, pings[-1]
    low, mean, high = (float(value) for value in summary.groups())
    assert low <= mean <= high


def test_install_hints_keep_the_extras_brackets(env: dict[str, str]) -> None:
    """Rich reads ``[mcp]`` as markup and drops it: a hint must escape it, and name the
    distribution (``engram`` on the package index is another project)."""
    wide = {**env, "COLUMNS": "200"}
    for command, extra in (("mcp", "mcp"), ("gateway", "http")):
        shown = " ".join(run_cli(wide, command, "--help").stdout.split())
        assert f"pip install 'engram-journal[{extra}]'" in shown, shown
    page = (Path(__file__).parents[2] / "man" / "engram.1").read_text()
    assert "pip install 'engram\\-journal[mcp]'" in page
    assert "engram\\-journal[http]" in page and "\\e[" not in page


def test_terminal_tables_show_short_ids_and_keep_the_spaces_of_matches(
        engramd: DaemonProcess) -> None:
    with Client(engramd.socket, agent_id="tester", autostart=False) as engram:
        units = [engram.create_unit("term", "MESSAGE", text.encode())
                 for text in ("retry after quota refresh", "tests pass; safe to merge")]
    table = on_a_terminal(engramd.env, "unit", "list", "-c", "term")
    for unit in units:  # 13 characters at least: the id up to its millisecond
        assert re.search(rf"\b{re.escape(unit.id[:13])}[0-9a-f-]*\s", table), table
        assert unit.id not in table
    found = on_a_terminal(engramd.env, "search", "quota")
    assert "retry after quota refresh" in found, found
    assert units[0].id[:13] in found and units[0].id not in found
    found = on_a_terminal(engramd.env, "search", "pass")
    assert "tests pass; safe to merge" in found, found


def test_terminal_times_name_the_day_unless_it_is_today() -> None:
    from engram_cli.cli.output import _local_time

    now = dt.datetime.now(dt.UTC)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", _local_time(now))
    last_week = now - dt.timedelta(days=7)
    assert _local_time(last_week) == last_week.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def completions(env: dict[str, str], line: str) -> list[str]:
    """What bash would offer on <TAB> after *line* (through completions/engram.bash's
    protocol: the words, the index of the one being completed)."""
    words = line.split(" ")
    result = subprocess.run(
        [sys.executable, "-m", "engram_cli"], capture_output=True, text=True, timeout=30,
        check=False, env={**env, "_ENGRAM_COMPLETE": "complete_bash",
                          "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout.split()


def test_tab_completes_vocabularies_and_existing_contexts(env: dict[str, str]) -> None:
    assert completions(env, "engram unit create -t TO") == ["TOOL_CALL", "TOOL_RESULT"]
    assert completions(env, "engram search -t er") == ["error"]
    assert completions(env, "engram unit create -r CA") == ["CAUSES:"]
    assert completions(env, "engram watch -k lock.re") == ["lock.renewed", "lock.released"]
    # No daemon: nothing to offer, and a <TAB> never starts one.
    assert completions(env, "engram unit list -c ") == []
    assert not Path(env["ENGRAM_SOCKET"]).exists()
    daemon = DaemonProcess(start_engramd(env), env["ENGRAM_SOCKET"], env)
    try:
        with Client(daemon.socket, autostart=False) as engram:
            for name in ("build-41", "build-42", "docs"):
                engram.create_context(name)
        assert completions(env, "engram unit list -c bui") == ["build-41", "build-42"]
        assert completions(env, "engram context get d") == ["docs"]
        assert completions(env, "engram wait -c ") == ["build-41", "build-42", "docs"]
    finally:
        daemon.stop()


def test_release_and_reindex_say_what_they_did(engramd: DaemonProcess) -> None:
    lock_id = run_cli(engramd.env, "lock", "acquire", "res").stdout.strip()
    released = run_cli(engramd.env, "lock", "release", "res", "--lock-id", lock_id)
    assert re.fullmatch(rf"released res \(lock id {lock_id}, fencing token \d+, held \d+s\)\n",
                        released.stdout), released.stdout
    lock_id = run_cli(engramd.env, "lock", "acquire", "res").stdout.strip()
    lease = json.loads(run_cli(engramd.env, "lock", "release", "res", "--lock-id", lock_id,
                               "--json").stdout)
    assert (lease["resource"], lease["lock_id"], lease["holder"]) == ("res", lock_id, "tester")
    assert one_error_line(run_cli(engramd.env, "lock", "release", "res", "--lock-id",
                                  lock_id), 3).startswith(f"no lease with lock id {lock_id}")

    lock_id = run_cli(engramd.env, "lock", "acquire", "res").stdout.strip()
    broken = run_cli({**engramd.env, "ENGRAM_AGENT": "ops"}, "lock", "break", "res",
                     "--reason", "stuck")
    assert re.fullmatch(rf"broke res: the lease of tester \(lock id {lock_id}, fencing token "
                        r"\d+\)\n", broken.stdout), broken.stdout
    assert one_error_line(run_cli(engramd.env, "lock", "break", "res", "--reason", "x"),
                          3) == "res is not held"

    with Client(engramd.socket, autostart=False) as engram:
        for number in range(30):
            engram.create_unit("idx", "MESSAGE", f"note {number}".encode())
        head = engram.status().journal.last_seq  # type: ignore[union-attr]
    rebuilt = json.loads(run_cli(engramd.env, "daemon", "reindex", "--json").stdout)
    assert rebuilt["done"] and rebuilt["indexed_seq"] >= head and rebuilt["units"] == 30
    said = run_cli(engramd.env, "daemon", "reindex").stdout
    assert said.startswith("search index rebuilt: 30 units, events up to seq "), said
    assert run_cli(engramd.env, "search", "note", "--json").stdout.count("\n") == 20
