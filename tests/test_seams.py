"""The seams between the product's parts are typed, and the Bitbucket adapter depends on nothing
of the product around it (issue 11, "Typed seams").

Both tests read the source (``ast``), so they see what an import at run time would hide: imports
under ``TYPE_CHECKING`` and inside functions count as much as the ones at the top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"

# What app/bitbucket may import from the rest of the product: the error tree, logging and the pure
# value types. Everything it needs of the product beyond that (OAuth's stored tokens) it names as a
# protocol of its own (app/bitbucket/oauth.py ``TokenStore``) that the product implements.
BITBUCKET_MAY_IMPORT = {"app.errors", "app.logs", "app.models"}

# The modules whose public functions, methods and class attributes form the seams between the
# service, the background tasks and the pipeline.
SEAM_MODULES = (
    "service.py",
    "scheduler.py",
    "worker.py",
    "tiers.py",
    "main.py",
    "services.py",
    "fetch.py",
    "evaluate.py",
    "reconcile.py",
    "planner.py",
    "supervise.py",
    "bitbucket/oauth.py",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(APP.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in APP.rglob("*.py")}


def _owner(name: str) -> str | None:
    """The module of the product that ``name`` (a module, or a module's attribute) belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_in(source: str, module: str, package: str) -> set[str]:
    """Every module of ``app`` that ``source`` (the text of ``module``, in ``package``) imports,
    wherever the import statement stands."""
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(source)):
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


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(), module, package)


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
    """The reader itself: plain, relative, ``TYPE_CHECKING`` and function-level imports all count,
    and an imported name is charged to the module that defines it."""
    source = """
from typing import TYPE_CHECKING
import app.logs
from app import errors
from . import paths
from .models import Repository
if TYPE_CHECKING:
    from app.service import Service
def later() -> None:
    from app.store.events import EventRow
import aiohttp
"""
    assert imports_in(source, "app.bitbucket.client", "app.bitbucket") == {
        "app.logs",
        "app.errors",
        "app.bitbucket.paths",
        "app.bitbucket.models",
        "app.service",
        "app.store.events",
    }
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


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


def _any_aliases(tree: ast.Module) -> set[str]:
    """Module-level names whose value mentions ``Any`` (``Row = tuple[str, Any]``): using one in a
    signature is ``Any`` by another name."""
    names: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if value is not None and _mentions(value, {"Any"}):
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _mentions(annotation: ast.expr, names: set[str]) -> bool:
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id in names:
            return True
        if isinstance(node, ast.Attribute) and node.attr == "Any":
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                inner = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                continue
            if _mentions(inner, names):
                return True
    return False


def _public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _signatures(tree: ast.Module) -> Iterator[tuple[str, ast.expr]]:
    """(where, annotation) for every annotation of a public function, a public method of a public
    class, and a public attribute of a public class."""

    def of_function(where: str, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[str, ast.expr]]:
        a = fn.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x)]:
            if arg.annotation is not None:
                yield f"{where}({arg.arg})", arg.annotation
        if fn.returns is not None:
            yield f"{where} -> ", fn.returns

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _public(node.name):
            yield from of_function(node.name, node)
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _public(item.name):
                    yield from of_function(f"{node.name}.{item.name}", item)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and _public(item.target.id):
                    yield f"{node.name}.{item.target.id}", item.annotation
                for sub in ast.walk(item) if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) else ():
                    # self.x: T = ... in a method declares a public attribute too
                    if (
                        isinstance(sub, ast.AnnAssign)
                        and isinstance(sub.target, ast.Attribute)
                        and isinstance(sub.target.value, ast.Name)
                        and sub.target.value.id == "self"
                        and _public(sub.target.attr)
                    ):
                        yield f"{node.name}.{sub.target.attr}", sub.annotation


def any_in_signatures(source: str) -> list[str]:
    tree = ast.parse(source)
    tainted = {"Any"} | _any_aliases(tree)
    return [where for where, annotation in _signatures(tree) if _mentions(annotation, tainted)]


def test_the_signature_reader_finds_any_however_it_is_spelled() -> None:
    source = """
from typing import Any
import typing
Row = tuple[str, Any]
def a(x: Any) -> None: ...
async def b(*args: int, **kw: "dict[str, Any]") -> None: ...
def c() -> list[Row]: ...
def d(x: typing.Any) -> None: ...
def _private(x: Any) -> Any: ...
class C:
    field: Any
    _hidden: Any
    def __init__(self, service: Any = None) -> None:
        self.store: Any = service
    async def on(self) -> Callable[[str], Awaitable[Any]]: ...
    def _private(self, x: Any) -> None: ...
class _Private:
    def f(self, x: Any) -> None: ...
def fine(x: object, y: dict[str, object]) -> Mapping[str, int]: ...
"""
    assert any_in_signatures(source) == [
        "a(x)",
        "b(kw)",
        "c -> ",
        "d(x)",
        "C.field",
        "C.__init__(service)",
        "C.store",
        "C.on -> ",
    ]


def test_no_any_in_the_public_signatures_of_the_seams() -> None:
    found = {m: any_in_signatures((APP / m).read_text()) for m in SEAM_MODULES}
    assert {m: where for m, where in found.items() if where} == {}
