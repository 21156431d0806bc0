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


def _imports_run(
    tree: ast.Module, module: str, is_package: bool, files: dict[str, Path]
) -> set[str]:
    """The modules of `files` that `tree` imports when it runs (TYPE_CHECKING blocks left out;
    their ``else:`` runs)."""
    edges: set[str] = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                todo.append(ast.Module(body=child.orelse, type_ignores=[]))
            elif isinstance(child, ast.Import | ast.ImportFrom):
                edges.update(_imported(child, module, is_package, files))
            else:
                todo.append(child)
    edges.discard(module)
    return edges


def import_graph(files: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the package modules it imports when it runs (TYPE_CHECKING blocks left out)."""
    files = module_files() if files is None else files
    return {
        module: _imports_run(
            ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py", files
        )
        for module, path in files.items()
    }


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
    assert "trio_rt._manager" in graph  # the walk found the package
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
