"""engram_cli.client.paths: a path made the one name its lease has, and back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engram_cli.client import paths
from engramd.protocol import resources as names


def repository(where: Path, remote: str | None = None) -> Path:
    where.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(where)], check=True)
    if remote:
        subprocess.run(["git", "-C", str(where), "remote", "add", "origin", remote], check=True)
    (where / "src" / "lib").mkdir(parents=True)
    (where / "src" / "app.py").write_text("")
    return where


def test_a_path_in_a_repository_is_named_by_its_remote(tmp_path: Path) -> None:
    repo = repository(tmp_path / "proj", "git@github.com:ann/proj.git")
    root = "file:github.com/ann/proj:"
    assert paths.resource("src/app.py", str(repo)) == root + "src/app.py"
    assert paths.resource("app.py", str(repo / "src")) == root + "src/app.py"
    assert paths.resource(str(repo / "src" / "app.py")) == root + "src/app.py"
    assert paths.resource("src", str(repo)) == root + "src/"  # a directory on disk
    assert paths.resource("new/", str(repo)) == root + "new/"  # one to be
    assert paths.resource("new", str(repo)) == root + "new"  # a file to be
    assert paths.resource(".", str(repo)) == root
    assert paths.resource("../proj/src/./lib/../app.py", str(repo)) == root + "src/app.py"
    assert paths.resource("src/**/*.py", str(repo)) == root + "src/**/*.py"
    assert paths.repo_key(str(repo)) == "github.com/ann/proj"


def test_symlinks_are_resolved_and_outside_a_repository_paths_are_absolute(
        tmp_path: Path) -> None:
    repo = repository(tmp_path / "proj")  # no remote: where it is
    real = os.path.realpath(repo)
    assert paths.resource("src/app.py", str(repo)) == f"file:{real}/src/app.py"
    os.symlink(repo / "src", tmp_path / "link")
    assert paths.resource(str(tmp_path / "link" / "app.py")) == f"file:{real}/src/app.py"
    assert paths.resource(str(tmp_path / "link") + "/*.py") == f"file:{real}/src/*.py"
    outside = tmp_path / "plain"
    outside.mkdir()
    assert paths.resource("x.txt", str(outside)) == \
        f"file:{os.path.realpath(outside)}/x.txt"
    with pytest.raises(paths.PathProblem):
        paths.resource("x.txt", str(outside), absolute_only=True)
    for name in (paths.resource("src/**/*.py", str(repo)), paths.resource(".", str(repo))):
        assert names.parse(name).text == name  # canonical: the daemon takes it


def test_names_are_shown_as_paths_from_where_one_is(tmp_path: Path) -> None:
    repo = repository(tmp_path / "proj", "https://github.com/ann/proj.git")
    here = str(repo / "src")
    root = "file:github.com/ann/proj:"
    assert paths.display(root + "src/app.py", here) == "app.py"
    assert paths.display(root + "docs/", here) == "../docs/"
    assert paths.display(root, str(repo)) == "./"
    assert paths.display("file:github.com/bob/x:a.py", here) == "file:github.com/bob/x:a.py"
    assert paths.display("deploy:prod", here) == "deploy:prod"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert paths.display(f"file:{os.path.realpath(plain)}/a/b", str(plain)) == "a/b"
    assert paths.display("file:/etc/hosts", str(plain)) == "/etc/hosts"
    for given in ("src/app.py", "src/", "src/*.py", "."):
        name = paths.resource(given, str(repo))
        assert paths.resource(paths.display(name, here), here) == name  # round trip


def test_the_guards_verdict_is_the_rule(tmp_path: Path) -> None:
    from tests.daemon.test_components import lease

    root = "file:github.com/ann/proj:"
    mine, theirs = lease(root + "src/", "ann", "s1"), lease(root + "src/", "bob", "s2")
    other = lease("file:github.com/bob/x:src/app.py", "bob", "s3")
    assert paths.in_the_way([mine, theirs, other], "ann", root + "src/app.py",
                            session=1) == [theirs]  # mine: taken by process 1, the editor
    # Another session of ann, whose process (1) runs: in the way, as the manager says.
    assert paths.in_the_way([mine, theirs], "ann", root + "src/app.py",
                            session=2) == [mine, theirs]
    assert paths.in_repository(str(tmp_path), ["a"]) == {}


def test_a_file_with_wildcard_characters_can_be_named_literally(tmp_path: Path) -> None:
    repo = repository(tmp_path / "proj", "git@github.com:ann/proj.git")
    root = "file:github.com/ann/proj:"
    (repo / "pages").mkdir()
    (repo / "pages" / "[id].js").write_text("")
    # There on disk: that file, whatever its characters (escaped in its name).
    assert paths.resource("pages/[id].js", str(repo)) == root + "pages/[[]id].js"
    assert not names.parse(root + "pages/[[]id].js").glob
    # Not there: a glob, unless its wildcards are escaped in brackets.
    assert paths.resource("pages/[id]x.js", str(repo)) == root + "pages/[id]x.js"
    assert names.parse(root + "pages/[id]x.js").glob
    assert paths.resource("a[*].txt", str(repo)) == root + "a[*].txt"
    assert paths.resource("a*.txt", str(repo)) == root + "a*.txt"
    assert paths.resource("a*.txt", str(repo), literal=True) == root + "a[*].txt"
    assert paths.resource("pages/[[]id]/*.js", str(repo)) == root + "pages/[[]id]/*.js"
    # The guards name an edited file literally; the rule tells it from a pattern's match.
    edited = paths.resource("pages/[id].js", str(repo), literal=True)
    assert names.covers(root + "pages/[[]id].js", edited)
    assert not names.covers(root + "pages/[[]id].js", root + "pages/i.js")
    assert names.covers(root + "pages/*.js", edited)
    assert paths.display(edited, str(repo)) == "pages/[[]id].js"  # never the glob's name
    assert paths.display(root + "pages/[id].js", str(repo)) == "pages/[id].js"
    assert paths.resource(paths.display(edited, str(repo)), str(repo)) == edited
    assert paths.in_repository(str(repo), ["a*.txt"]) == {"a*.txt": root + "a[*].txt"}
    outside = tmp_path / "q?.txt"
    outside.write_text("")
    assert paths.resource(str(outside)) == f"file:{tmp_path}/q[?].txt"


@pytest.mark.parametrize("name", ["..env", "...", "..a/b"])
def test_names_that_start_with_two_dots_are_names(tmp_path: Path, name: str) -> None:
    repo = repository(tmp_path / "proj", "git@github.com:ann/proj.git")
    root = "file:github.com/ann/proj:"
    assert paths.resource(name, str(repo)) == root + name
    assert paths.resource(name, str(repo), literal=True) == root + name
    assert paths.display(root + name, str(repo)) == name
    plain = tmp_path / "plain"
    plain.mkdir()
    assert paths.display(f"file:{plain}/{name}", str(plain)) == name


@pytest.mark.parametrize("url, key", [
    ("ssh://git@github.com:22/o/r.git", "github.com/o/r"),
    ("git@GitHub.com:o/r.git", "github.com/o/r"),
    ("https://github.com/o/r", "github.com/o/r"),
    ("https://GITHUB.com:443/o/r.git/", "github.com/o/r"),
    ("https://GITHUB.COM./o/r", "github.com/o/r"),  # the root's dot
    ("git@github.com.:o/r", "github.com/o/r"),
    ("git+ssh://ann@github.com/o/r", "github.com/o/r"),
    ("git://github.com:9418/o/r", "github.com/o/r"),
    ("http://user:secret@example.org:80/o/r", "example.org/o/r"),
    ("https://example.org:8443/o/r", "example.org:8443/o/r"),  # not the default: kept
    ("git@example.org:ann/proj.git", "example.org/ann/proj"),  # already normal: as before
    ("https://example.org/Ann/Proj", "example.org/Ann/Proj"),  # a path's case is its own
    ("file:///srv/git/proj.git", "/srv/git/proj"),
    ("../shared/proj.git", "/home/ann/shared/proj"),
])
def test_one_remote_has_one_key_however_its_url_is_written(url: str, key: str) -> None:
    assert paths.remote_key(url, "/home/ann/proj") == key
    assert names.parse(names.repo_resource(key, "a.py")).parts[-1] == "a.py"  # canonical


def test_clones_of_one_remote_by_different_urls_name_files_alike(tmp_path: Path) -> None:
    names_of = {paths.resource("src/app.py", str(repository(tmp_path / str(n), url)))
                for n, url in enumerate(["ssh://git@github.com:22/o/r.git",
                                         "git@GitHub.com:o/r.git", "https://github.com/o/r"])}
    assert names_of == {"file:github.com/o/r:src/app.py"}


def test_file_or_directory_is_what_the_disk_says_when_the_path_is_named(
        tmp_path: Path) -> None:
    repo = repository(tmp_path / "proj", "git@github.com:ann/proj.git")
    root = "file:github.com/ann/proj:"
    assert paths.resource("later/x", str(repo)) == root + "later/x"  # not there: a file
    assert paths.resource("later/x/", str(repo)) == root + "later/x/"  # unless it ends in /
    (repo / "build").mkdir()
    assert paths.resource("build", str(repo)) == root + "build/"  # there: a directory
    os.symlink(repo / "build", repo / "out")
    assert paths.resource("out", str(repo)) == root + "build/"  # through a symlink too
    (repo / "out").unlink()
    (repo / "build").rmdir()
    assert paths.resource("build", str(repo)) == root + "build"  # gone: a file again
    assert paths.resource("build/", str(repo)) == root + "build/"
