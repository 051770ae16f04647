"""The code's shape: the router's modules import one way (no cycle), and none has grown past the point where it
is split along a seam."""

from __future__ import annotations

import ast
from pathlib import Path

# --- the code's shape ----------------------------------------------------------------------------------------

ROUTER = Path(__file__).resolve().parent.parent / "router"


def _router_imports() -> dict[str, set[str]]:
    """Each module of router/ and the router modules it imports at run time (not under TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for path in ROUTER.rglob("*.py"):
        module = ".".join(path.relative_to(ROUTER.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}
            for node in ast.walk(block)
        }
        imported = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("router"):
                imported.add(node.module)
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("router")}
        graph[module] = imported
    return {
        module: {name for name in imported if name in graph and name != module} for module, imported in graph.items()
    }


# A module that grows past this is split along a seam; it is never squeezed to fit (the bound says when to look
# for the seam, not how long a line may be).
MODULE_LINES_BEFORE_A_SPLIT = 600


def test_no_module_of_router_has_grown_past_the_point_of_a_split() -> None:
    sizes = {path.relative_to(ROUTER.parent): len(path.read_text().splitlines()) for path in ROUTER.rglob("*.py")}
    assert {path: lines for path, lines in sizes.items() if lines > MODULE_LINES_BEFORE_A_SPLIT} == {}


def test_router_modules_import_each_other_without_a_cycle() -> None:
    graph = _router_imports()
    assert graph["router.proxy.client"] >= {"router.proxy.exchange", "router.proxy.server"}  # the walk sees imports
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(module) :], module])
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
