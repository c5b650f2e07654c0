"""``engram search`` and ``engram trace`` at the command-line boundary."""

from __future__ import annotations

import json

import pytest

from engram_cli.client import Client
from tests.conftest import DaemonProcess, run_cli, wait_until

pytestmark = pytest.mark.slow  # every test here runs processes


def test_search_rows_json_and_exit_status(engramd: DaemonProcess) -> None:
    with Client(engramd.socket, agent_id="tester", autostart=False) as engram:
        cause = engram.create_unit("s", "ERROR", "disk quota exceeded on /var/log")
        effect = engram.create_unit("s", "REASONING", "rotate the logs; quota again",
                                    relationships=[("CAUSES", cause.id)])
        wait_until(lambda: engram.search("quota").total == 2, "indexed")
    out = run_cli(engramd.env, "search", "quota").stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert {row[5] for row in rows} == {cause.id, effect.id}
    assert all("**quota**" in row[6] for row in rows)
    found = [json.loads(line) for line in
             run_cli(engramd.env, "search", "disk", "--json").stdout.splitlines()]
    assert found[0]["unit_id"] == cause.id and found[0]["unit"]["payload"].startswith("disk")
    nothing = run_cli(engramd.env, "search", "nonexistentword")
    assert nothing.returncode == 3 and nothing.stderr.strip() == "engram: error: nothing matched"
    for wordless in ("", "🚀", "***", "   "):
        empty = run_cli(engramd.env, "search", wordless)
        assert empty.returncode == 3 and empty.stdout == "", wordless
        assert empty.stderr.startswith("engram: error: nothing to search for: ")
        assert empty.stderr.count("\n") == 1
    assert run_cli(engramd.env, "search", "-t", "ERROR").stdout.count("\n") == 1
    bad = run_cli(engramd.env, "search", "--advanced", '"open')
    assert bad.returncode == 2 and "cannot read the query" in bad.stderr
    traced = run_cli(engramd.env, "trace", cause.id).stdout.splitlines()
    assert traced[0].startswith(f"{cause.id} ERROR tester@s: disk quota")  # whole ids piped
    assert traced[1].strip() == (f"← CAUSES from {effect.id} REASONING tester@s: rotate the "
                                 "logs; quota again")
    tree = json.loads(run_cli(engramd.env, "trace", effect.id, "--json").stdout)
    assert tree["edges"] == [{"source": effect.id, "type": "CAUSES", "target": cause.id,
                              "depth": 1}]
