"""No import cycle inside trio_rt.

Every module of the package is parsed with `ast` (nothing is imported); an edge A -> B is an
import of B by A that runs: at module level or inside a function, a class or a try block.
Imports under ``if TYPE_CHECKING:`` are left out: they never run (annotations only). A cycle
is reported with its modules in import order. A package's ``__init__`` counts as the package
(``from .. import x`` is an edge to it), but ``from . import name`` is an edge to the
submodule `name` when there is one (a package is always imported before its submodules).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "trio_rt"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    files: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, files: dict[str, Path]
) -> list[str]:
    """The modules of `files` that `node`, in `module`, imports. ``from x import name`` is an
    edge to the submodule ``x.name`` when there is one, else to ``x`` itself."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in files]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    found = []
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        found.append(submodule if submodule in files else target)
    return [name for name in found if name in files]


def _import_nodes(tree: ast.Module, type_checking: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of `tree` that run: at module level or in a function, a class or
    a try block; under ``if TYPE_CHECKING:`` only when `type_checking` (their ``else:`` always
    runs)."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                todo.append(ast.Module(body=child.orelse, type_ignores=[]))
                if type_checking:
                    todo.append(ast.Module(body=child.body, type_ignores=[]))
            elif isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            else:
                todo.append(child)
    return found


def _imports_run(
    tree: ast.Module,
    module: str,
    is_package: bool,
    files: dict[str, Path],
    type_checking: bool = False,
) -> set[str]:
    """The modules of `files` that `tree` imports when it runs (TYPE_CHECKING blocks left out
    unless `type_checking`; their ``else:`` runs)."""
    edges: set[str] = set()
    for node in _import_nodes(tree, type_checking):
        edges.update(_imported(node, module, is_package, files))
    edges.discard(module)
    return edges


def import_graph(
    files: dict[str, Path] | None = None, type_checking: bool = False
) -> dict[str, set[str]]:
    """Module -> the package modules it imports when it runs (TYPE_CHECKING blocks left out,
    unless `type_checking`: then every module it names, for annotations too)."""
    files = module_files() if files is None else files
    return {
        module: _imports_run(
            ast.parse(path.read_text(), str(path)),
            module,
            path.name == "__init__.py",
            files,
            type_checking,
        )
        for module, path in files.items()
    }


# Pure submodules of a refused standard-library package, named whole so ring 1 may use them.
PURE_SUBMODULES = {"urllib.parse"}


def _top(name: str) -> str:
    """The name recorded for an import: its top-level package, or a `PURE_SUBMODULES` entry."""
    return next((p for p in PURE_SUBMODULES if name == p), name.split(".")[0])


def outside_imports(files: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the top-level names of what it imports from outside the package when it runs
    (``import trio.lowlevel`` -> ``trio``; TYPE_CHECKING blocks left out)."""
    files = module_files() if files is None else files
    package = next(iter(files)).split(".")[0]
    found: dict[str, set[str]] = {}
    for module, path in files.items():
        names = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path)), False):
            if isinstance(node, ast.Import):
                names.update(_top(alias.name) for alias in node.names)
            elif not node.level and node.module:
                names.add(_top(node.module))
        names.discard(package)
        found[module] = names
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (in import order, first module repeated at the end) per strongly connected
    component of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError("a strongly connected component without a cycle")


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "trio_rt._engine.manager" in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles inside trio_rt:\n" + "\n".join(
        "  " + " -> ".join(cycle) for cycle in cycles
    )


def test_the_walk_sees_imports_in_functions_and_skips_type_checking(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from .c import C\n"
        "class A:\n"
        "    def f(self):\n"
        "        from .b import B\n"
    )
    (package / "b.py").write_text("from . import a\nfrom .. import pkg\n")
    (package / "c.py").write_text("from .a import A\n")
    (package / "d.py").write_text(
        "import json\nif TYPE_CHECKING:\n    pass\nelse:\n    from . import c\n"
    )
    graph = import_graph(module_files(package))
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},  # in a function: counted; under TYPE_CHECKING (c): not
        "pkg.b": {"pkg.a"},  # `from .. import pkg` leaves the package: not ours
        "pkg.c": {"pkg.a"},
        "pkg.d": {"pkg.c"},  # the `else:` of a TYPE_CHECKING test runs; json is not ours
    }
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    (package / "e.py").write_text("from . import helper\n")  # a name of pkg: an edge to pkg
    (package / "__init__.py").write_text("from .e import E\nhelper = 1\n")
    graph = import_graph(module_files(package))
    assert graph["pkg.e"] == {"pkg"}
    assert ["pkg", "pkg.e", "pkg"] in find_cycles(graph)


# -- the rings (docs/architecture.md) ---------------------------------------------------------
# Ring 1, `_core`: sans-IO rules, the standard library only (and no I/O from it). Ring 2,
# `_engine`: the Trio engine. Ring 3: `_transport` (the websockets/socket edge) and the
# backends (`redis`, `cassandra`). Imports point inwards; the engine reaches the transport
# through the protocols of `_engine/sockets.py`, except where it starts the server:
ENGINE_TO_TRANSPORT = {
    # WebSocketManager.serve starts websockets' server with trio_rt's connection class: the
    # one place the engine must name the transport (what the server is built from).
    ("trio_rt._engine.manager", "trio_rt._transport.ws_connection"),
    # ... and, with reuse_port (workers), opens the SO_REUSEPORT listeners it serves on.
    ("trio_rt._engine.manager", "trio_rt._transport.reuseport"),
}
# What ring 1 may never import, directly or through another module of the package: the I/O
# libraries and the standard library's I/O modules. Anything else outside the standard
# library is refused too (`sys.stdlib_module_names`).
CORE_REFUSED = {
    "trio",
    "websockets",
    "redis",
    "hiredis",
    "cassandra",
    "jwt",
    "prometheus_client",
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "subprocess",
    "urllib",  # but urllib.parse (PURE_SUBMODULES): string functions, no I/O
}


def _ring(module: str, package: str) -> str | None:
    """`_core`, `_engine` or `_transport` for a module of that ring, else None."""
    parts = module.split(".")
    if len(parts) > 1 and parts[0] == package and parts[1] in ("_core", "_engine", "_transport"):
        return parts[1]
    return None


def ring_violations(files: dict[str, Path] | None = None) -> list[str]:
    """Every broken ring rule, one line each (empty: the layout holds):

    - a `_core` module imports, when it runs, something of `CORE_REFUSED` or outside the
      standard library, itself or through the package modules it imports (the chain named);
    - a `_core` module names (TYPE_CHECKING included) a package module outside `_core`;
    - an `_engine` module names (TYPE_CHECKING included) a `_transport` module, other than
      the edges of `ENGINE_TO_TRANSPORT`;
    - a ring's ``__init__`` imports anything (the public names are re-exported by `trio_rt`).
    """
    files = module_files() if files is None else files
    package = next(iter(files)).split(".")[0]
    runs = import_graph(files)
    named = import_graph(files, type_checking=True)
    outside = outside_imports(files)
    found: list[str] = []
    for module in sorted(files):
        ring = _ring(module, package)
        if ring is None:
            continue
        if module == f"{package}.{ring}" and (named[module] or outside[module]):
            found.append(f"{module} (a ring's __init__) imports {sorted(named[module])}")
        if ring == "_core":
            # breadth-first over what runs: the shortest chain to each module reached
            chains = {module: [module]}
            frontier = [module]
            while frontier:
                following = []
                for node in frontier:
                    for child in sorted(runs[node]):
                        if child not in chains:
                            chains[child] = [*chains[node], child]
                            following.append(child)
                frontier = following
            for reached, chain in chains.items():
                bad = sorted(
                    name
                    for name in outside[reached]
                    if name in CORE_REFUSED
                    or (name not in sys.stdlib_module_names and name not in PURE_SUBMODULES)
                )
                if bad:
                    found.append(f"{' -> '.join(chain)} imports {', '.join(bad)}")
            for target in sorted(named[module]):
                if _ring(target, package) != "_core":
                    found.append(f"{module} (ring 1) imports {target}")
        elif ring == "_engine":
            for target in sorted(named[module]):
                if (
                    _ring(target, package) == "_transport"
                    and (module, target) not in ENGINE_TO_TRANSPORT
                ):
                    found.append(f"{module} (ring 2) imports {target} (not a named seam)")
    return found


def test_the_rings_import_inwards_only() -> None:
    files = module_files()
    assert "trio_rt._core.protocol" in files and "trio_rt._engine.manager" in files
    problems = ring_violations(files)
    assert not problems, "ring rules broken (docs/architecture.md):\n" + "\n".join(
        "  " + line for line in problems
    )
    graph = import_graph(files)
    for edge in ENGINE_TO_TRANSPORT:  # an allowed edge that is gone: drop it from the list
        assert edge[1] in graph[edge[0]], edge


def test_the_ring_rules_catch_each_kind_of_break(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    for ring in ("_core", "_engine", "_transport"):
        (package / ring).mkdir(parents=True)
        (package / ring / "__init__.py").write_text("")
    (package / "__init__.py").write_text("import trio\n")
    (package / "_core" / "pure.py").write_text("import json\nfrom . import rules\n")
    (package / "_core" / "rules.py").write_text("from dataclasses import dataclass\n")
    (package / "_engine" / "x.py").write_text("import trio\nfrom .._core import pure\n")
    (package / "_transport" / "y.py").write_text("import websockets\nfrom .._engine import x\n")
    files = module_files(package)
    assert ring_violations(files) == []  # the package's own __init__ is no ring
    (package / "_core" / "rules.py").write_text(
        "def later():\n    import trio.lowlevel\n"  # in a function: it runs
    )
    (package / "_core" / "third.py").write_text("import attr\n")  # not the standard library
    (package / "_core" / "up.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .._engine.x import X\n"
    )
    (package / "_core" / "top.py").write_text("from .. import something\n")
    (package / "_engine" / "z.py").write_text("from .._transport.y import Y\n")
    (package / "_engine" / "__init__.py").write_text("from .x import X\n")
    files = module_files(package)
    assert ring_violations(files) == [
        "pkg._core.pure -> pkg._core.rules imports trio",  # through another module
        "pkg._core.rules imports trio",
        "pkg._core.third imports attr",
        "pkg._core.top -> pkg imports trio",  # the package's __init__ is a module too
        "pkg._core.top (ring 1) imports pkg",
        "pkg._core.up (ring 1) imports pkg._engine.x",
        "pkg._engine (a ring's __init__) imports ['pkg._engine.x']",
        "pkg._engine.z (ring 2) imports pkg._transport.y (not a named seam)",
    ]
