"""The import boundaries of the code, checked from the source with `ast` (no imports, no JVM).

- The core (`lambda_arch/` except `lambda_arch/definitions.py` and `lambda_arch/cli/`) imports
  no Dagster (CONTRACT section 1): it runs under the CLI, the HTTP API and benchmarks alike.
- No import cycles between the project's modules (lambda_arch/, assets/, sensors/, resources/).
  Imports inside functions count: a local import only defers a cycle to call time, it does not
  remove the two modules' dependence on each other. Imports under `if TYPE_CHECKING:` do not
  count for cycles (they never run), but they do count for the Dagster rule.

Run by `make lint` as well as by the suite.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lambda_arch", "assets", "sensors", "resources", "defs")
# The two places of the core that may import Dagster (CONTRACT section 1).
DAGSTER_ALLOWED = ("lambda_arch.definitions", "lambda_arch.cli")


@dataclass(frozen=True)
class Import:
    target: str  # dotted name as written (absolute)
    names: tuple[str, ...]  # for `from target import a, b`; empty for `import target`
    type_checking: bool
    line: int


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the project's packages."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """Every import statement of a module, at any depth (functions, methods, branches)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, type_checking: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from visit_stmt(stmt, True)
                for stmt in child.orelse:
                    yield from visit_stmt(stmt, type_checking)
            else:
                yield from visit_stmt(child, type_checking)

    def visit_stmt(node: ast.AST, type_checking: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, (), type_checking, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield Import(base, tuple(a.name for a in node.names), type_checking, node.lineno)
        if not isinstance(node, ast.Import | ast.ImportFrom):
            yield from visit(node, type_checking)

    yield from visit(ast.parse(path.read_text(), filename=str(path)), False)


def targets(imp: Import, modules: dict[str, Path]) -> set[str]:
    """The project modules an import loads: `from a.b import c` is module a.b.c when that exists,
    else a.b; importing a module also runs its parent packages' __init__."""
    named = {f"{imp.target}.{name}" for name in imp.names if f"{imp.target}.{name}" in modules}
    loaded = named | ({imp.target} if len(named) < len(imp.names) or not imp.names else set())
    result: set[str] = set()
    for target in loaded:
        parts = target.split(".")
        result |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()
    return result


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports at run time (TYPE_CHECKING imports left out)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges: set[str] = set()
        for imp in imports_of(module, path):
            if not imp.type_checking:
                edges |= targets(imp, modules)
        # A package's own parents are already imported when it runs: no edge back to them.
        graph[module] = edges - ancestors - {module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle
    path through it, so a failure names the modules to untangle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_through(graph, set(c)) for c in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component: start -> ... -> start."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth-first, so the reported cycle is a shortest one through `start`
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    nxt.append(succ)
        frontier = nxt
    return sorted(component)  # unreachable for a real component


def test_core_imports_no_dagster() -> None:
    offenders = []
    for module, path in module_files().items():
        if not module.startswith("lambda_arch") or module.startswith(DAGSTER_ALLOWED):
            continue
        for imp in imports_of(module, path):
            top = imp.target.split(".")[0]
            if top == "dagster" or top.startswith("dagster_"):
                offenders.append(f"{path.relative_to(REPO)}:{imp.line} imports {imp.target}")
    assert not offenders, "the core imports Dagster (CONTRACT section 1):\n" + "\n".join(offenders)


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (function-local imports count):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )


def test_the_checker_sees_local_imports_and_cycles() -> None:
    """The checker itself: a cycle closed by a function-local import is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    source = import_graph()
    assert "lambda_arch.common.config" in source["lambda_arch.runtime.spark"]
