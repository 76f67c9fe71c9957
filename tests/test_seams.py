"""The seams between the product's parts are typed, and the Bitbucket adapter depends on nothing
of the product around it (issue 11, "Typed seams").

Both tests read the source (``ast``), so they see what an import at run time would hide: imports
under ``TYPE_CHECKING`` and inside functions count as much as the ones at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"

# What app/bitbucket may import from the rest of the product: the error tree, logging and the pure
# value types. Everything it needs of the product beyond that (OAuth's stored tokens) it names as a
# protocol of its own (app/bitbucket/oauth.py ``TokenStore``) that the product implements.
BITBUCKET_MAY_IMPORT = {"app.errors", "app.logs", "app.models"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(APP.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in APP.rglob("*.py")}


def _owner(name: str) -> str | None:
    """The module of the product that ``name`` (a module, or a module's attribute) belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Every module of ``app`` that ``module`` imports, wherever the import statement stands."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {_owner(a.name) for a in node.names if a.name.split(".")[0] == "app"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base.split(".")[0] == "app":
                found |= {_owner(f"{base}.{a.name}") for a in node.names}
    return {m for m in found if m is not None and m != module}


def import_graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_every_kind_of_import() -> None:
    """The reader itself: top-level, relative, ``TYPE_CHECKING`` and function-level imports count."""
    assert "app.service" in imports_of("app.worker") or "app.service" in imports_of("app.webhook_registration")
    assert "app.errors" in imports_of("app.bitbucket.client")
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_bitbucket_adapter_imports_nothing_of_the_product_around_it() -> None:
    graph = import_graph()
    outside = {
        module: sorted(m for m in imported if not m.startswith("app.bitbucket") and m not in BITBUCKET_MAY_IMPORT)
        for module, imported in graph.items()
        if module.startswith("app.bitbucket")
    }
    assert {m: found for m, found in outside.items() if found} == {}
    assert "app.bitbucket.oauth" in graph and "app.service" in graph


def test_no_import_cycle_between_modules_of_the_product() -> None:
    assert cycles(import_graph()) == []
