"""Import rules that keep the layers honest (see SPECS.md, Architecture)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


# Standard modules that do I/O or concurrency have no place in the pure protocol.
IMPURE = {"socket", "select", "selectors", "subprocess", "threading", "asyncio", "io"}


@pytest.mark.parametrize("path", modules("engramd/protocol"), ids=lambda p: p.name)
def test_protocol_is_pure(path: Path) -> None:
    for name in imports_of(path):
        top = name.split(".")[0]
        assert top in sys.stdlib_module_names or top == "msgspec" or \
            name.startswith("engramd.protocol"), f"{path.name} imports {name}"
        assert top not in IMPURE, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", modules("engramd"), ids=lambda p: str(p.relative_to(ROOT)))
def test_daemon_never_imports_the_cli_side(path: Path) -> None:
    for name in imports_of(path):
        assert name.split(".")[0] not in ("engram_cli", "typer", "rich"), f"{path} imports {name}"


@pytest.mark.parametrize("path", modules("engram_cli"), ids=lambda p: str(p.relative_to(ROOT)))
def test_cli_uses_only_the_protocol_of_the_daemon(path: Path) -> None:
    allowed = {"engramd", "engramd.protocol"}
    for name in imports_of(path):
        if name.split(".")[0] == "engramd":
            assert name in allowed or name.startswith("engramd.protocol"), f"{path} imports {name}"


# The rooms of engram_cli and what each may import of the others (each package's
# docstring says the same in words). The command line may open the bench tools from
# `engram bench` alone; nothing else imports them.
ROOMS = {
    "client": {"client"},
    "formats": {"formats"},
    "doors": {"client", "formats", "doors"},
    "cli": {"client", "formats", "doors", "cli"},
    "bench": {"client", "formats", "doors", "bench"},
}
BENCH_DOOR = ROOT / "engram_cli" / "cli" / "commands" / "bench.py"


def room_of(name: str) -> str | None:
    """The room of an engram_cli module name (None for the package's own face)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "engram_cli" and len(parts) > 1 else None


@pytest.mark.parametrize("path", modules("engram_cli"), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_room_imports_only_the_rooms_below_it(path: Path) -> None:
    relative = path.relative_to(ROOT / "engram_cli").parts
    if len(relative) == 1:  # __init__ and __main__: the package's face
        return
    room = relative[0]
    allowed = ROOMS[room] | ({"bench"} if path == BENCH_DOOR else set())
    for name in imports_of(path):
        other = room_of(name)
        if name.split(".")[0] == "engram_cli" and other is not None:  # None: __version__
            assert other in allowed, f"{path} ({room}) imports {name}"


def test_engram_cli_holds_only_its_rooms() -> None:
    top = ROOT / "engram_cli"
    assert sorted(p.name for p in top.glob("*.py")) == ["__init__.py", "__main__.py"]
    assert sorted(p.name for p in top.iterdir() if (p / "__init__.py").exists()) == \
        sorted(ROOMS)


@pytest.mark.parametrize("package", [p.parent for package in ("engram_cli", "engramd")
                                     for p in sorted((ROOT / package).rglob("__init__.py"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_each_room_says_what_it_may_import(package: Path) -> None:
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    assert "May import" in docstring, f"{package}'s docstring does not say what it may import"


def test_the_client_library_uses_trio_in_its_trio_flavour_only() -> None:
    importers = {path.name for path in modules("engram_cli/client")
                 if any(name.split(".")[0] == "trio" for name in imports_of(path))}
    assert importers == {"asynchronous.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of engram it imports (at any depth of its code)."""
    known = {module_name(path): path for package in ("engram_cli", "engramd")
             for path in modules(package)}
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in known)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in known:
                        edges.add(submodule)
                    elif node.module in known:
                        edges.add(node.module)
        graph[name] = edges - {name}
    return graph


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = import_graph()
    seen: set[str] = set()

    def circle_from(start: str) -> list[str] | None:
        path: list[str] = []
        on_path: set[str] = set()

        def walk(node: str) -> list[str] | None:
            if node in on_path:
                return [*path[path.index(node):], node]
            if node in seen:
                return None
            path.append(node)
            on_path.add(node)
            for nxt in sorted(graph[node]):
                found = walk(nxt)
                if found:
                    return found
            path.pop()
            on_path.discard(node)
            seen.add(node)
            return None

        return walk(start)

    for module in sorted(graph):
        circle = circle_from(module)
        assert circle is None, " -> ".join(circle)


@pytest.mark.parametrize("path", modules("engram_cli"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_cli_uses_only_typer_s_public_modules(path: Path) -> None:
    for name in imports_of(path):
        top, *rest = name.split(".")
        assert top != "typer" or not any(part.startswith("_") for part in rest), \
            f"{path} imports {name}"


def test_build_tooling_is_not_installed() -> None:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["packages"]["find"]["include"]
    assert not [pattern for pattern in include if pattern.startswith("tools")]
    assert not list((ROOT / "engram_cli").glob("docgen*"))


def test_only_output_imports_rich() -> None:
    for path in modules("engram_cli"):
        if any(name.split(".")[0] == "rich" for name in imports_of(path)):
            assert path == ROOT / "engram_cli" / "cli" / "output.py", path


@pytest.mark.slow
def test_a_command_loads_its_own_module_only() -> None:
    code = ("import sys, typer; from engram_cli.cli.app import app; "
            "before = sorted(m for m in sys.modules if m.startswith('engram_cli.cli.commands.')); "
            "root = typer.main.get_command(app); "
            "root.get_command(typer.Context(root), 'ping'); "
            "after = sorted(m for m in sys.modules if m.startswith('engram_cli.cli.commands.')); "
            "print(before, after)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=True)
    assert result.stdout.strip() == "[] ['engram_cli.cli.commands.info']"


def test_an_ordinary_command_loads_neither_trio_nor_rich() -> None:
    code = ("import sys; from engram_cli.cli import app; from engram_cli import client; "
            "print(sorted(m for m in ('trio', 'rich', 'mcp', 'pydantic') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=True)
    assert result.stdout.strip() == "[]"


def test_only_the_mcp_command_imports_the_mcp_sdk() -> None:
    """The SDK is an optional extra: one module imports it, and only `engram mcp` loads that."""
    importers = {path.name for path in modules("engram_cli")
                 if any(name.split(".")[0] in ("mcp", "mcp_types") for name in imports_of(path))}
    assert importers == {"mcpserver.py"}
    code = ("import sys; from engram_cli.cli import app; "
            "from engram_cli.cli.commands import mcp, prime, mail, task; "
            "print('mcp' in sys.modules, 'engram_cli.doors.mcpserver' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=True)
    assert result.stdout.strip() == "False False"


HTTP_STACK = ("starlette", "hypercorn", "sse_starlette", "jwt", "cryptography", "httpx2",
              "websockets")


def test_only_the_gateway_imports_the_http_stack() -> None:
    """The HTTP extra: the gateway package imports it, only `engram gateway` loads that."""
    gateway = ROOT / "engram_cli" / "doors" / "gateway"
    for path in modules("engram_cli"):
        names = imports_of(path)
        if any(name.split(".")[0] in HTTP_STACK for name in names):
            assert path.parent == gateway, path
        if any(name.startswith("engram_cli.doors.gateway") for name in names):
            assert path.parent == gateway or path.name == "gateway.py", path
    code = ("import sys; from engram_cli.cli import app; "
            "from engram_cli.cli.commands import gateway, mcp, prime, unit, watch; "
            f"print(sorted(m for m in {HTTP_STACK!r} if m in sys.modules), "
            "'engram_cli.doors.gateway' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=True)
    assert result.stdout.strip() == "[] False"


def test_only_the_vector_index_and_the_embedder_import_numpy_or_a_model() -> None:
    """The semantic extra: engramd imports it in three modules (the vector index, its
    approximate graph, the embedder), loaded only when it is installed and on
    (tests/test_semantic.py checks that importing the daemon loads none)."""
    importers = {str(path.relative_to(ROOT)) for package in ("engramd", "engram_cli")
                 for path in modules(package)
                 if any(name.split(".")[0] in ("numpy", "wordllama", "usearch")
                        for name in imports_of(path))}
    assert importers == {"engramd/vectors.py", "engramd/ann.py", "engramd/embedding.py"}


FAST_START = ["engram_cli/cli/fast.py", "engram_cli/cli/leanwire.py", "engram_cli/cli/exits.py",
              "engram_cli/cli/fasttable.py", "engram_cli/cli/fastcommands.py",
              "engram_cli/cli/context.py", "engram_cli/cli/waiting.py",
              "engram_cli/cli/lockrun.py", "engram_cli/cli/cmdgroup.py",
              "engram_cli/cli/consumer.py", "engram_cli/doors/hookinput.py",
              *(str(p.relative_to(ROOT))
                for p in sorted((ROOT / "engram_cli/cli/hot").glob("*.py")))]


@pytest.mark.parametrize("name", FAST_START)
def test_the_fast_start_never_imports_the_framework(name: str) -> None:
    """The hot commands' start (engram_cli.cli.fast) and the code it runs: no Typer, Click
    or rich anywhere in them (output.py imports rich only for a terminal's views, which
    the fast start leaves to the Typer app)."""
    for imported in imports_of(ROOT / name):
        assert imported.split(".")[0] not in ("typer", "click", "rich"), f"{name}: {imported}"
