"""The one conflict rule (engramd.protocol.resources), against brute force.

A glob's verdict against a path is exact: checked against every path of a small
universe deep enough to hold a witness. Two globs are judged apart only when no
paths they match can be one inside the other (conservative, never wrong the
other way).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramd.protocol import resources
from engramd.protocol.resources import (
    conflicts,
    contains,
    covers,
    file_resource,
    overlaps,
    parse,
    repo_resource,
)

NAMES = ("a", "b", "ab")
PATTERNS = ("a", "b", "ab", "*", "?", "a*", "*b", "[ab]", "[!a]*", "**")
ROOT = "file:github.com/ann/proj:"


def universe(depth: int) -> list[tuple[str, ...]]:
    """Every path of up to *depth* parts over NAMES (the root included)."""
    return [parts for size in range(depth + 1)
            for parts in itertools.product(NAMES, repeat=size)]


def related(one: tuple[str, ...], other: tuple[str, ...], other_is_directory: bool) -> bool:
    """Whether *one* (a path a glob matches: what is under it too) and *other* share a
    path: one is the other or in it (in *other* only when it is a directory)."""
    if other[:len(one)] == one:
        return True
    return other_is_directory and one[:len(other)] == other


paths = st.tuples(st.lists(st.sampled_from(NAMES), max_size=3).map(tuple), st.booleans())
globs = st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3).filter(
    lambda parts: any(any(c in p for c in "*?[") for p in parts)).map(tuple)


def name(parts: tuple[str, ...], directory: bool = False) -> str:
    return ROOT + "/".join(parts) + ("/" if directory and parts else "")


# -- names -----------------------------------------------------------------------------


def test_canonical_names_parse_and_others_are_refused() -> None:
    assert parse("deploy:prod").root == "deploy:prod"
    assert parse("file:/home/ann/x.py").parts == ("home", "ann", "x.py")
    assert not parse("file:/home/ann/x.py").directory
    assert parse("file:/home/ann/").directory
    assert parse("file:/").parts == () and parse("file:/").directory
    assert parse(ROOT + "src/app.py").root == ROOT
    assert parse(ROOT).parts == ()
    glob = parse(ROOT + "src/**/*.py")
    assert glob.glob and glob.anchor == 1 and glob.literal == "src/"
    for bad in ("file:", "file:src/app.py", "file:/a//", "file:/a//b", ROOT + "src/*/",
                "file:/a/./b", "file:/a/../b", "file://a", ROOT + "/src", ROOT + "src//",
                ROOT + "./a", ROOT + "../a", ROOT + "a/../b", "file:a%b/c:x",
                # a repository's key as the client never names it: no lease would meet
                "file:GitHub.com/o/r:a", "file:github.com/o/r/:a", "file:github.com/o/r.git:a",
                "file:github.com//o/r:a", "file:github.com:a"):
        with pytest.raises(ValueError):
            parse(bad)


def test_a_path_is_named_by_its_repository_or_where_it_is() -> None:
    assert repo_resource("github.com/ann/proj", "src/app.py") == ROOT + "src/app.py"
    assert repo_resource("github.com/ann/proj", "") == ROOT
    assert repo_resource("github.com/ann/proj", "src", directory=True) == ROOT + "src/"
    assert repo_resource("github.com/ann/proj", "./src/") == ROOT + "src/"
    assert repo_resource("host:2222/ann/proj", "a") == "file:host%3A2222/ann/proj:a"
    assert parse("file:host%3A2222/ann/proj:a").root == "file:host%3A2222/ann/proj:"
    assert resources.unescape_key("host%3A2222/ann%25s") == "host:2222/ann%s"
    assert repo_resource("/home/ann/proj", "src/app.py") == "file:/home/ann/proj/src/app.py"
    assert repo_resource("/home/ann/proj", ".") == "file:/home/ann/proj/"
    assert file_resource("/tmp//x/../y") == "file:/tmp/y"
    assert file_resource("/") == "file:/"
    with pytest.raises(ValueError):
        repo_resource("github.com/ann/proj", "../elsewhere")


# -- the rule ------------------------------------------------------------------------------


def test_paths_overlap_when_one_is_in_the_other() -> None:
    assert overlaps(ROOT + "src/", ROOT + "src/app.py")
    assert overlaps(ROOT + "src/app.py", ROOT + "src/")
    assert overlaps(ROOT + "src/", ROOT + "src/lib/")
    assert overlaps(ROOT + "src", ROOT + "src/")  # one name, file or directory
    assert not overlaps(ROOT + "src", ROOT + "src/app.py")  # nothing is in a file
    assert overlaps(ROOT, ROOT + "src/app.py")  # the whole repository
    assert not overlaps(ROOT + "src/app.py", ROOT + "src/app.pyc")
    assert not overlaps(ROOT + "src/", ROOT + "srcs/x")
    assert not overlaps(ROOT + "src/app.py", "file:github.com/bob/other:src/app.py")
    assert not overlaps("file:/r7/src/app.py", "file:/r8/src/app.py")
    assert overlaps("file:/", "file:/r8/src/app.py")
    assert overlaps("file:/r8/", "file:/r8/src/app.py")
    assert overlaps("deploy:prod", "deploy:prod") and not overlaps("deploy:prod", "deploy")
    assert not overlaps("src/app.py", ROOT + "src/app.py")  # a plain name is no path


def test_globs_against_paths_and_globs() -> None:
    assert overlaps(ROOT + "src/**/*.py", ROOT + "src/lib/x.py")
    assert overlaps(ROOT + "src/**/*.py", ROOT + "src/x.py")
    assert overlaps(ROOT + "src/**/*.py", ROOT + "src/lib/")  # something under it
    assert not overlaps(ROOT + "src/**/*.py", ROOT + "src/lib")  # a file: nothing under it
    assert overlaps(ROOT + "src/**/*.py", ROOT + "src/")
    assert overlaps(ROOT + "src/**/*.py", ROOT)
    assert not overlaps(ROOT + "src/**/*.py", ROOT + "src/x.c")
    assert not overlaps(ROOT + "src/*.py", ROOT + "src/lib/x.py")
    assert overlaps(ROOT + "src/*", ROOT + "src/lib/x.py")  # it matches src/lib
    assert overlaps(ROOT + "src/**", ROOT + "src")
    assert overlaps(ROOT + "src/**", ROOT + "src/a/b.c")
    assert not overlaps(ROOT + "src/**", ROOT + "docs/a.md")
    assert overlaps(ROOT + "src/**/*.py", ROOT + "src/*.md")  # conservative
    assert not overlaps(ROOT + "src/a*", ROOT + "src/b*")
    assert not overlaps(ROOT + "src/*.py", ROOT + "docs/*.md")
    assert overlaps(ROOT + "sr*", ROOT + "src/*.py")


def test_shared_leases_conflict_only_with_exclusive_ones() -> None:
    assert not conflicts(ROOT + "src/", ROOT + "src/a", a_shared=True, b_shared=True)
    assert conflicts(ROOT + "src/", ROOT + "src/a", a_shared=True)
    assert conflicts(ROOT + "src/", ROOT + "src/a", b_shared=True)
    assert covers(ROOT + "src/", ROOT + "src/a")  # an edit is exclusive


def test_a_lease_contains_what_is_under_it() -> None:
    assert contains(ROOT + "src/", ROOT + "src/lib/x.py")
    assert not contains(ROOT + "src", ROOT + "src/lib/x.py")
    assert contains(ROOT + "src/lib/x.py", ROOT + "src/lib/x.py")
    assert not contains(ROOT + "src/lib/x.py", ROOT + "src")
    assert contains(ROOT + "src/*", ROOT + "src/lib/x.py")
    assert not contains(ROOT + "src/*.py", ROOT + "src/lib/x.py")
    assert contains("deploy:prod", "deploy:prod")


@settings(max_examples=300, deadline=None)
@given(glob=globs, path=paths)
def test_a_glob_meets_a_path_exactly_when_a_match_is_in_it_or_around_it(
        glob: tuple[str, ...], path: tuple[tuple[str, ...], bool]) -> None:
    parts, directory = path
    directory = directory or not parts
    witnesses = universe(len(parts) + len(glob))
    expected = any(resources._matches(glob, q) and related(q, parts, directory)
                   for q in witnesses)
    assert overlaps(name(glob), name(parts, directory)) == expected
    assert overlaps(name(parts, directory), name(glob)) == expected


@settings(max_examples=300, deadline=None)
@given(one=globs, other=globs)
def test_two_globs_are_judged_apart_only_when_they_are(one: tuple[str, ...],
                                                        other: tuple[str, ...]) -> None:
    assert overlaps(name(one), name(other)) == overlaps(name(other), name(one))
    if overlaps(name(one), name(other)):
        return
    witnesses = universe(max(len(one), len(other)) + 1)
    assert not any(related(q1, q2, True) for q1 in witnesses if resources._matches(one, q1)
                   for q2 in witnesses if resources._matches(other, q2))


@settings(max_examples=300, deadline=None)
@given(one=paths, other=paths)
def test_two_paths_overlap_when_they_share_a_path(one: tuple[tuple[str, ...], bool],
                                                  other: tuple[tuple[str, ...], bool]) -> None:
    (a, a_dir), (b, b_dir) = one, other
    a_dir, b_dir = a_dir or not a, b_dir or not b
    expected = (a == b or (a_dir and b[:len(a)] == a) or (b_dir and a[:len(b)] == b))
    assert overlaps(name(a, a_dir), name(b, b_dir)) == expected


@settings(max_examples=200, deadline=None)
@given(outer=st.one_of(paths, globs.map(lambda g: (g, False))), inner=paths)
def test_what_a_lease_contains_it_overlaps_below(outer: tuple[tuple[str, ...], bool],
                                                 inner: tuple[tuple[str, ...], bool]) -> None:
    parts, directory = inner
    if not contains(name(*outer), name(parts, directory)):
        return
    assert overlaps(name(*outer), name(parts, directory))
    for below in universe(2)[1:] if directory else []:
        assert overlaps(name(*outer), name(parts + below))


@given(st.text(alphabet="ab*?[]!", min_size=1, max_size=8))
def test_a_literal_name_with_wildcard_characters_is_one_file(literal: str) -> None:
    escaped = resources.escape_path(literal)
    assert resources.unescape_path(escaped) == literal
    named = parse(ROOT + "d/" + escaped)
    assert not named.glob and named.literal_path == "d/" + literal
    assert overlaps(named, ROOT + "d/")  # in its directory
    assert overlaps(named, ROOT + "d/*")  # a glob matches it by what it is
    assert overlaps(named, ROOT + "d/" + escaped)
    assert not overlaps(named, ROOT + "d/" + escaped + "x")
