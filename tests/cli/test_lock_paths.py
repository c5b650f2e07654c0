"""Leases on files through the real ``engram`` and ``engramd``: one canonical name per path,
directories, globs and shared leases, as people and scripts use them.

Two repositories with ``src/app.py`` each do not collide; a directory's lease is in
the way of the files in it and the reverse; a glob of the files it matches and of
no other; shared readers coexist, and a writer that comes waits for them while a
reader that comes after the writer waits behind it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engram_cli.client import paths
from tests.conftest import WAIT, DaemonProcess, connect, wait_until

pytestmark = pytest.mark.slow  # every test here runs processes


def engram(env: dict[str, str], cwd: Path, *args: str,
           agent: str = "alice") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engram_cli", *args], cwd=cwd,
                          env={**env, "ENGRAM_AGENT": agent}, capture_output=True,
                          text=True, timeout=60, check=False)


def repository(where: Path, remote: str | None = None) -> Path:
    where.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(where)], check=True)
    if remote:
        subprocess.run(["git", "-C", str(where), "remote", "add", "origin", remote], check=True)
    (where / "src").mkdir()
    (where / "src" / "app.py").write_text("print(1)\n")
    return where


def test_two_repositories_with_the_same_file_do_not_collide(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    env = engramd.env
    seven = repository(tmp_path / "repo7")
    eight = repository(tmp_path / "repo8", remote="git@github.com:bob/eight.git")
    held = engram(env, seven, "lock", "acquire", "--path", "src/app.py", "--ttl", "60")
    assert held.returncode == 0, held.stderr
    taken = engram(env, eight, "lock", "acquire", "-n", "--path", "src/app.py", agent="bob")
    assert taken.returncode == 0, taken.stderr
    listing = engram(env, eight, "lock", "list", "--json").stdout
    assert f'"file:{seven}/src/app.py"' in listing  # no remote: where it is
    assert '"file:github.com/bob/eight:src/app.py"' in listing
    # Each is shown as a path where it is, the other as its name.
    shown = engram(env, eight / "src", "lock", "list").stdout.splitlines()
    assert any(row.startswith("app.py\tbob\t") for row in shown)
    assert any(row.startswith(f"{seven}/src/app.py\talice\t") for row in shown)
    # A clone of the same remote elsewhere agrees with repo8 on the name.
    clone = repository(tmp_path / "clone", remote="https://github.com/bob/eight")
    refused = engram(env, clone, "lock", "acquire", "-n", "--path", "src/app.py")
    assert refused.returncode == 4 and "bob" in refused.stderr
    # A symlink to the file is the file.
    os.symlink(seven / "src" / "app.py", tmp_path / "link.py")
    through = engram(env, tmp_path, "lock", "acquire", "-n", "--path", "link.py", agent="carol")
    assert through.returncode == 4 and "alice" in through.stderr


def test_a_directory_and_the_files_in_it_exclude_each_other(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    env = engramd.env
    repo = repository(tmp_path / "repo")
    (directory,) = engram(env, repo, "lock", "acquire", "--path", "src", "--ttl",
                          "60").stdout.split()
    inside = engram(env, repo / "src", "lock", "acquire", "-n", "--path", "app.py", agent="bob")
    assert inside.returncode == 4 and "alice" in inside.stderr
    assert f"file:{repo}/src/" in inside.stderr  # the directory's lease is the one in the way
    beside = engram(env, repo, "lock", "acquire", "-n", "--path", "README.md", agent="bob")
    assert beside.returncode == 0, beside.stderr
    shown = engram(env, repo / "src", "lock", "show", "--path", "app.py").stdout
    assert "overlapping\t./ by alice" in shown
    assert engram(env, repo, "lock", "release", "--path", "src/", "--lock-id",
                  directory).returncode == 0
    (file_lease,) = engram(env, repo, "lock", "acquire", "--path", "src/app.py",
                           agent="bob").stdout.split()
    around = engram(env, repo, "lock", "acquire", "-n", "--path", "src/")
    assert around.returncode == 4 and "bob" in around.stderr  # and the reverse
    assert engram(env, repo, "lock", "list", "--path", "src").stdout.count("\tbob\t") == 1
    assert engram(env, repo, "lock", "release", "--path", "src/app.py", "--lock-id",
                  file_lease, agent="bob").returncode == 0


def test_a_glob_excludes_the_files_it_matches_and_no_others(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    env = engramd.env
    repo = repository(tmp_path / "repo")
    glob = engram(env, repo, "lock", "acquire", "--path", "src/**/*.py", "--ttl", "60")
    assert glob.returncode == 0, glob.stderr
    for path in ("src/app.py", "src/lib/deep/x.py"):
        refused = engram(env, repo, "lock", "acquire", "-n", "--path", path, agent="bob")
        assert refused.returncode == 4, path
    for path in ("src/app.c", "docs/index.md", "setup.py"):
        free = engram(env, repo, "lock", "acquire", "-n", "--path", path, agent="bob")
        assert free.returncode == 0, (path, free.stderr)
    other = engram(env, repo, "lock", "acquire", "-n", "--path", "docs/*.md", agent="carol")
    assert other.returncode == 4  # docs/index.md is held: the glob meets it
    assert engram(env, repo, "lock", "acquire", "-n", "--path", "tests/*.py",
                  agent="carol").returncode == 0  # apart from src/**/*.py


def test_shared_readers_coexist_and_a_waiting_writer_is_not_starved(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    env = engramd.env
    repo = repository(tmp_path / "repo")
    data = paths.resource(str(repo / "src") + "/")
    readers = [engram(env, repo, "lock", "acquire", "--shared", "--path", "src/", "--ttl",
                      "60", agent=name) for name in ("r1", "r2")]
    assert all(r.returncode == 0 for r in readers), [r.stderr for r in readers]
    writer = subprocess.Popen(
        [sys.executable, "-m", "engram_cli", "lock", "run", "--path", "src/app.py", "--",
         "sh", "-c", "date +%s.%N"], cwd=repo, env={**env, "ENGRAM_AGENT": "w"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with connect(engramd.socket, "observer") as observer:
        wait_until(lambda: len(observer.get_lock(paths.resource(str(repo / "src" / "app.py")))
                               .waiters) == 1, "the writer to be in line")
        late = engram(env, repo, "lock", "acquire", "-n", "--shared", "--path", "src/",
                      agent="r3")
        assert late.returncode == 4  # behind the waiting writer
        assert "waiting ahead" in late.stderr
        state = observer.get_lock(data)
        assert sorted(lease.holder for lease in state.leases) == ["r1", "r2"]
        assert all(lease.shared for lease in state.leases)
        for reader in ("r1", "r2"):
            lock_id = next(lease.lock_id for lease in state.leases if lease.holder == reader)
            ended = time.time()
            assert engram(env, repo, "lock", "release", "--path", "src/", "--lock-id", lock_id,
                          agent=reader).returncode == 0
    out, err = writer.communicate(timeout=WAIT)
    assert writer.returncode == 0, err
    assert float(out) >= ended  # it ran once both readers had gone


def test_lock_run_takes_paths_before_the_command_and_leaves_its_arguments_alone(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    env = engramd.env
    repo = repository(tmp_path / "repo")
    script = 'echo "$@"; echo "$ENGRAM_FENCE"'
    for words in (["--path", "src/"], ["-p", "src/", "--ttl", "5"], ["ci:job", "--path", "src/"]):
        done = engram(env, repo, "lock", "run", *words, "--", "sh", "-c", script, "x", "--", "y")
        assert done.returncode == 0, (words, done.stderr)
        said, fence = done.stdout.splitlines()
        assert said == "-- y"
        assert f"file:{os.path.realpath(repo)}/src/:" in fence
    nothing = engram(env, repo, "lock", "run", "--shared", "--", "true")
    assert nothing.returncode == 2 and "usage" in nothing.stderr


def test_a_file_named_with_wildcard_characters_is_leased_as_itself(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    env = engramd.env
    repo = repository(tmp_path / "repo")
    (repo / "pages").mkdir()
    (repo / "pages" / "[id].js").write_text("")
    held = engram(env, repo, "lock", "acquire", "--path", "pages/[id].js", "--ttl", "60")
    assert held.returncode == 0, held.stderr
    apart = engram(env, repo, "lock", "acquire", "-n", "--path", "pages/i.js", agent="bob")
    assert apart.returncode == 0, apart.stderr  # not a pattern: i.js is another file
    same = engram(env, repo, "lock", "acquire", "-n", "--path", "pages/[[]id].js",
                  agent="carol")
    assert same.returncode == 4 and "alice" in same.stderr  # escaped: the same file
    shown = engram(env, repo, "lock", "list").stdout.splitlines()
    # shown as its name writes it: never as the glob pages/[id].js, which matches pages/i.js
    assert any(row.startswith("pages/[[]id].js\talice\t") for row in shown), shown
    to_be = engram(env, repo, "lock", "acquire", "-n", "--path", "new[*].txt", agent="bob")
    assert to_be.returncode == 0, to_be.stderr
    listing = engram(env, repo, "lock", "list", "--json").stdout
    assert f'"file:{repo}/new[*].txt"' in listing  # the file new*.txt, not a glob


def test_a_name_with_newlines_and_controls_is_shown_on_one_line(
        engramd: DaemonProcess, tmp_path: Path) -> None:
    from tests.conftest import on_a_terminal

    evil = "deploy\nfake\tholder\r\x1b[2Jx"
    with connect(engramd.socket, "mallory") as mallory:
        mallory.acquire_lock(evil, ttl=60)
        shown = on_a_terminal(engramd.env, "lock", "list")
        assert "deploy\\nfake\\tholder\\r\\x1b[2Jx" in shown, shown
        assert not any(line.lstrip().startswith("fake") for line in shown.splitlines())
        piped = engram(engramd.env, tmp_path, "lock", "list").stdout  # escaped once
        assert piped.startswith("deploy\\nfake\\tholder\\r\\x1b[2Jx\tmallory\t"), piped
        show = engram(engramd.env, tmp_path, "lock", "show", evil).stdout
        assert show.startswith("resource\tdeploy\\nfake\\tholder\\r\\x1b[2Jx\n"), show
        held = engram(engramd.env, tmp_path, "lock", "acquire", "-n", evil, agent="bob")
        assert held.returncode == 4
        assert held.stderr.count("\n") == 1 and "deploy\\nfake" in held.stderr, held.stderr
