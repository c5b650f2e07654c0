"""Git hooks against a real repository and a real daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engram_cli.client import Client, paths
from tests.conftest import WAIT, DaemonProcess, run_cli, socket_answers, spawn_engramd, wait_until

pytestmark = pytest.mark.slow  # every test here runs processes


def git(repo: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True,
                          text=True, timeout=60, check=True)


@pytest.fixture
def repo(tmp_path: Path, env: dict[str, str]) -> Path:
    path = tmp_path / "proj"
    path.mkdir()
    env.update(GIT_AUTHOR_NAME="Ann", GIT_AUTHOR_EMAIL="ann@example.org",
               GIT_COMMITTER_NAME="Ann", GIT_COMMITTER_EMAIL="ann@example.org",
               PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    git(path, "init", "-q", "-b", "main", env=env)
    return path


def commit(repo: Path, env: dict[str, str], name: str, text: str, message: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name, env=env)
    git(repo, "commit", "-q", "-m", message, env=env)
    return git(repo, "rev-parse", "HEAD", env=env).stdout.strip()


def units(socket: str, context: str) -> list:  # type: ignore[type-arg]
    with Client(socket, autostart=False) as engram:
        return engram.list_units(context).units


def test_commits_branches_merges_and_rebases_are_recorded(
        engramd: DaemonProcess, repo: Path, env: dict[str, str]) -> None:
    assert run_cli(env, "hooks", "install", "--repo", str(repo)).returncode == 0
    first = commit(repo, env, "a.txt", "one\ntwo\n", "first commit")
    second = commit(repo, env, "a.txt", "one\ntwo\nthree\n", "add a line")
    main = units(engramd.socket, f"git:{repo}/main")
    assert [u.meta["git.commit"] for u in main] == [first, second]
    assert main[1].meta["git.author"] == "Ann <ann@example.org>"
    assert main[1].meta["git.added"] == "1" and main[1].type == "FILE_CHANGE"
    assert main[1].payload.decode().startswith("add a line\n\n1\t0\ta.txt")
    assert [(r.type, r.target) for r in main[1].relationships] == [("SEQUENTIAL", main[0].id)]
    git(repo, "checkout", "-q", "-b", "feature", env=env)
    switched = units(engramd.socket, f"git:{repo}/feature")
    assert switched[0].type == "SYSTEM" and switched[0].meta["git.branch"] == "feature"
    feature = commit(repo, env, "b.txt", "b\n", "feature work")
    git(repo, "checkout", "-q", "main", env=env)
    commit(repo, env, "c.txt", "c\n", "main work")
    git(repo, "merge", "-q", "--no-ff", "feature", "-m", "merge feature", env=env)
    merged = units(engramd.socket, f"git:{repo}/main")[-1]
    assert merged.meta["git.hook"] == "post-merge" and merged.payload.startswith(b"merge feature")
    git(repo, "checkout", "-q", "feature", env=env)
    git(repo, "commit", "-q", "--amend", "-m", "feature work, amended", env=env)
    on_feature = units(engramd.socket, f"git:{repo}/feature")
    rewritten = on_feature[-1]
    assert rewritten.meta["git.rewritten-from"] == feature
    assert rewritten.meta["git.hook"] == "post-rewrite-amend"
    amended = git(repo, "rev-parse", "HEAD", env=env).stdout.strip()
    # Recorded once: post-commit, which also runs for an amend, leaves it to post-rewrite.
    assert [u.meta.get("git.commit") for u in on_feature].count(amended) == 1
    git(repo, "checkout", "-q", "-b", "topic", "main", env=env)
    topic = commit(repo, env, "d.txt", "d\n", "topic work")
    git(repo, "checkout", "-q", "main", env=env)
    commit(repo, env, "e.txt", "e\n", "more main work")
    git(repo, "checkout", "-q", "topic", env=env)
    git(repo, "rebase", "-q", "main", env=env)
    on_topic = units(engramd.socket, f"git:{repo}/topic")
    rebased = on_topic[-1]
    assert rebased.meta["git.hook"] == "post-rewrite-rebase"
    assert rebased.meta["git.rewritten-from"] == topic
    assert [u.meta.get("git.commit") for u in on_topic].count(rebased.meta["git.commit"]) == 1


def test_an_existing_hook_still_runs_and_uninstall_restores_it(
        engramd: DaemonProcess, repo: Path, env: dict[str, str]) -> None:
    hook = repo / ".git" / "hooks" / "post-commit"
    original = "#!/bin/sh\necho ran >> \"$(git rev-parse --git-dir)/original.log\"\nexit 0\n"
    hook.write_text(original)
    hook.chmod(0o755)
    for _ in range(2):  # installing twice changes nothing
        assert run_cli(env, "hooks", "install", "--repo", str(repo)).returncode == 0
    status = run_cli(env, "hooks", "status", "--repo", str(repo)).stdout
    assert "post-commit\tyes\tyes" in status
    commit(repo, env, "a.txt", "a\n", "one")
    assert (repo / ".git" / "original.log").read_text() == "ran\n"
    assert len(units(engramd.socket, f"git:{repo}/main")) == 1
    assert run_cli(env, "hooks", "uninstall", "--repo", str(repo)).returncode == 0
    assert hook.read_text() == original
    assert sorted(p.name for p in (repo / ".git" / "hooks").iterdir()
                  if not p.name.endswith(".sample")) == ["post-commit"]


def test_a_failing_pre_commit_hook_still_stops_the_commit(
        engramd: DaemonProcess, repo: Path, env: dict[str, str]) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho no >&2\nexit 3\n")
    hook.chmod(0o755)
    run_cli(env, "hooks", "install", "--repo", str(repo), "--guard", "warn")
    (repo / "x").write_text("x")
    git(repo, "add", "x", env=env)
    refused = subprocess.run(["git", "-C", str(repo), "commit", "-qm", "x"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0


def test_the_guard_names_the_holder(engramd: DaemonProcess, repo: Path,
                                    env: dict[str, str]) -> None:
    run_cli(env, "hooks", "install", "--repo", str(repo), "--guard", "block")
    elsewhere = repo.parent / "elsewhere"  # another repository with a file of that name
    git(repo.parent, "init", "-q", str(elsewhere), env=env)
    with Client(engramd.socket, agent_id="other-agent", autostart=False) as other:
        (mine,) = other.acquire_lock(paths.resource(str(elsewhere / "locked.txt")), ttl=600)
        (repo / "locked.txt").write_text("mine")
        git(repo, "add", "locked.txt", env=env)
        git(repo, "commit", "-qm", "a file of that name elsewhere is no matter", env=env)
        (lease,) = other.acquire_lock(paths.resource(str(repo)), ttl=600)  # the whole repo
        (repo / "locked.txt").write_text("again")
        git(repo, "add", "locked.txt", env=env)
        refused = subprocess.run(["git", "-C", str(repo), "commit", "-qm", "x"], env=env,
                                 capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 1
        assert "locked.txt is leased by other-agent as ./ until" in refused.stderr
        other.release_lock(lease.lock_id)
        other.release_lock(mine.lock_id)
    git(repo, "commit", "-qm", "now it may", env=env)


def test_with_the_daemon_down_a_commit_is_spooled_and_arrives_once(
        engramd: DaemonProcess, repo: Path, env: dict[str, str]) -> None:
    run_cli(env, "hooks", "install", "--repo", str(repo))
    engramd.process.send_signal(signal.SIGTERM)
    assert engramd.process.wait(WAIT) == 0
    sha = commit(repo, env, "a.txt", "offline\n", "made offline")
    spooled = list(Path(env["ENGRAM_DATA_DIR"], "spool").glob("*.json"))
    assert len(spooled) == 1
    # the same hook again (a retry): still one unit in the end
    subprocess.run([sys.executable, "-m", "engram_cli", "hooks", "run", "post-commit"],
                   cwd=repo, env={**env, "ENGRAM_NO_AUTOSTART": "1"}, check=True, timeout=60)
    restarted = spawn_engramd(env)
    try:
        wait_until(lambda: socket_answers(engramd.socket), "the daemon back")
        wait_until(lambda: not list(Path(env["ENGRAM_DATA_DIR"], "spool").glob("*.json")),
                   "the spool delivered")
        delivered = units(engramd.socket, f"git:{repo}/main")
        assert [u.meta["git.commit"] for u in delivered] == [sha]
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(WAIT)
        restarted.communicate()


def test_repositories_of_one_name_record_into_contexts_of_their_own(
        engramd: DaemonProcess, repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    twin = tmp_path / "elsewhere" / "proj"  # the same directory name, unrelated
    twin.mkdir(parents=True)
    git(twin, "init", "-q", "-b", "main", env=env)
    git(twin, "remote", "add", "origin", "git@example.org:ann/proj.git", env=env)
    for where in (repo, twin):
        installed = run_cli(env, "hooks", "install", "--repo", str(where), "--json")
        assert installed.returncode == 0, installed.stderr
        assert json.loads(installed.stdout)["installed"] == [
            "post-commit", "post-checkout", "post-merge", "post-rewrite"]
    here = commit(repo, env, "a.txt", "a\n", "here")
    there = commit(twin, env, "a.txt", "a\n", "there")
    (mine,) = units(engramd.socket, f"git:{repo}/main")  # no remote: its path
    (theirs,) = units(engramd.socket, "git:example.org/ann/proj/main")  # its remote
    assert (mine.meta["git.commit"], mine.meta["git.path"]) == (here, str(repo))
    assert (theirs.meta["git.commit"], theirs.meta["git.path"]) == (there, str(twin))
    assert theirs.meta["git.repo"] == "example.org/ann/proj"
    status = json.loads(run_cli(env, "hooks", "status", "--repo", str(twin), "--json").stdout)
    assert status["context"] == "git:example.org/ann/proj/main"
    removed = run_cli(env, "hooks", "uninstall", "--repo", str(twin), "--json")
    assert json.loads(removed.stdout) == {"repo": str(twin), "removed": [
        "post-commit", "post-checkout", "post-merge", "post-rewrite"]}


def _commit_refused(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), "commit", "-qm", "x"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_guard_sees_both_names_of_a_rename(engramd: DaemonProcess, repo: Path,
                                               env: dict[str, str]) -> None:
    commit(repo, env, "leased.py", "x\n", "a leased file")
    run_cli(env, "hooks", "install", "--repo", str(repo), "--guard", "block")
    with Client(engramd.socket, agent_id="other-agent", autostart=False) as other:
        (lease,) = other.acquire_lock(paths.resource(str(repo / "leased.py")), ttl=600)
        git(repo, "mv", "leased.py", "other.py", env=env)  # moving it away changes it
        refused = _commit_refused(repo, env)
        assert refused.returncode == 1, refused.stderr
        assert "leased.py is leased by other-agent" in refused.stderr
        other.release_lock(lease.lock_id)
    git(repo, "commit", "-qm", "now it may", env=env)


@pytest.mark.parametrize("name, shown", [
    ("naïve.py", "naïve.py"), ('say "hi".py', 'say "hi".py'), ("tab\there.py", "tab\\there.py"),
    (os.fsdecode(b"caf\xe9.py"), "caf\\xe9.py")])  # not UTF-8: shown as its bytes
def test_the_guard_sees_names_git_would_quote(engramd: DaemonProcess, repo: Path,
                                              env: dict[str, str], name: str,
                                              shown: str) -> None:
    run_cli(env, "hooks", "install", "--repo", str(repo), "--guard", "block")
    utf8 = name.isascii() or os.fsencode(name) == name.encode("utf-8", "replace")
    # (a lease names text: a name that is not UTF-8 is held by its directory's lease)
    leased = repo / name if utf8 else repo
    with Client(engramd.socket, agent_id="other-agent", autostart=False) as other:
        (lease,) = other.acquire_lock(paths.resource(str(leased)), ttl=600)
        (repo / name).write_text("x\n")
        git(repo, "add", name, env=env)
        refused = _commit_refused(repo, env)
        assert refused.returncode == 1, refused.stderr
        assert f"{shown} is leased by other-agent" in refused.stderr, refused.stderr
        other.release_lock(lease.lock_id)
    git(repo, "commit", "-qm", "now it may", env=env)


def test_a_remote_that_names_no_place_names_the_repository_by_where_it_is(
        engramd: DaemonProcess, repo: Path, env: dict[str, str]) -> None:
    git(repo, "remote", "add", "origin", "https://", env=env)
    run_cli(env, "hooks", "install", "--repo", str(repo), "--guard", "block")
    (repo / "locked.txt").write_text("x")
    taken = subprocess.run([sys.executable, "-m", "engram_cli", "lock", "acquire", "--path",
                            "locked.txt", "--ttl", "600", "--json"], cwd=repo,
                           env={**env, "ENGRAM_AGENT": "other-agent"}, capture_output=True,
                           text=True, timeout=60, check=False)
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["resource"] == f"file:{os.path.realpath(repo)}/locked.txt"
    git(repo, "add", "locked.txt", env=env)
    refused = _commit_refused(repo, env)
    assert refused.returncode == 1 and "locked.txt is leased by other-agent" in refused.stderr


def test_the_guard_refuses_a_commit_of_another_session_of_the_same_agent(
        engramd: DaemonProcess, repo: Path, env: dict[str, str]) -> None:
    run_cli(env, "hooks", "install", "--repo", str(repo), "--guard", "block")
    holder, committer = subprocess.Popen(["sleep", "300"]), subprocess.Popen(["sleep", "300"])
    try:
        with Client(engramd.socket, agent_id="ann", autostart=False) as ann:
            (lease,) = ann.acquire_lock(paths.resource(str(repo / "a.txt")), pid=holder.pid)
            (repo / "a.txt").write_text("a\n")
            git(repo, "add", "a.txt", env=env)
            for session, refused in ((committer.pid, True), (holder.pid, False)):
                done = subprocess.run(
                    ["git", "-C", str(repo), "commit", "-qm", "x"], capture_output=True,
                    env={**env, "ENGRAM_AGENT": "ann", "ENGRAM_SESSION_PID": str(session)},
                    text=True, timeout=60, check=False)
                assert (done.returncode == 1) == refused, done.stderr
            ann.release_lock(lease.lock_id)
    finally:
        for process in (holder, committer):
            process.kill()
            process.wait()


def test_the_committing_session_is_whoever_runs_git(
        engramd: DaemonProcess, repo: Path, env: dict[str, str]) -> None:
    """No ENGRAM_SESSION_PID: the session is the nearest process that is no shell or
    wrapper above the hook, git included: here the shell script's own interpreter's
    parent, this test, which holds the lease."""
    run_cli(env, "hooks", "install", "--repo", str(repo), "--guard", "block")
    with Client(engramd.socket, agent_id="ann", autostart=False) as ann:
        (lease,) = ann.acquire_lock(paths.resource(str(repo / "b.txt")), pid=os.getpid())
        (repo / "b.txt").write_text("b\n")
        git(repo, "add", "b.txt", env=env)
        done = subprocess.run(["git", "-C", str(repo), "commit", "-qm", "x"],
                              env={**env, "ENGRAM_AGENT": "ann"}, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        ann.release_lock(lease.lock_id)
