"""Static layering checker for the packages ``mpsl_flwr``, ``strategies`` and ``clients``.

It reads every module with :mod:`ast` (nothing is imported), turns each ``import`` and
``from ... import`` statement into module-to-module edges and checks four rules:

* ``core-imports-app``: the core of ``mpsl_flwr`` (every module that is not a leaf)
  imports neither ``strategies`` nor ``clients``;
* ``clients-imports-strategies``: ``clients`` does not import ``strategies``;
* ``imports-leaf``: only leaves import leaves (leaves themselves may import anything);
* ``cycle``: no import cycle between modules.

Every import counts, at any depth (function-level imports included), except those in the
body of ``if TYPE_CHECKING:``, which never run. ``from pkg import name`` is an edge to
``pkg.name`` when that is a module and to ``pkg`` otherwise; relative imports are
resolved against the importing module. Imports outside the checked packages are ignored,
and so are dynamic imports (``importlib.import_module(variable)``).

Modules are discovered from the files, so moving them needs no change here; only
:data:`LEAVES` (edit it as the layout changes) names modules. Run it as a script to print
the violations of a tree: ``python tests/layering.py [ROOT]`` (exit status 1 if any).
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Packages whose modules are checked (directories under the repository root).
PACKAGES: tuple[str, ...] = ("mpsl_flwr", "strategies", "clients")

#: Leaf packages or modules (a name covers everything under it): operations (launcher,
#: deployment, processes, certificates, Flower patches, warm ClientApp executor), tools
#: (compare, cost table, traffic sweep, partition plot) and the argparse entry points.
#: Leaves may import anything; only leaves may import them. Names that do not exist yet
#: are fine.
LEAVES: tuple[str, ...] = ("mpsl_flwr.ops", "mpsl_flwr.tools", "mpsl_flwr.cli")

#: The package whose non-leaf modules form the core.
CORE = "mpsl_flwr"
#: Packages the core must not import.
APP_PACKAGES: tuple[str, ...] = ("strategies", "clients")


@dataclass(frozen=True)
class Import:
    """One module-to-module edge: ``importer`` imports ``imported`` at ``path:line``."""

    importer: str
    imported: str
    path: Path
    line: int

    def where(self, root: Path) -> str:
        """``path:line`` relative to ``root`` when possible (for messages)."""
        try:
            shown = self.path.relative_to(root)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"


@dataclass(frozen=True)
class Violation:
    """A broken rule: its name, the edges that break it and a one-line explanation."""

    rule: str
    message: str
    edges: tuple[Import, ...] = field(default=())

    def format(self, root: Path) -> str:
        """The message followed by one indented line per edge."""
        lines = [f"[{self.rule}] {self.message}"]
        lines += [f"    {e.where(root)}: {e.importer} -> {e.imported}" for e in self.edges]
        return "\n".join(lines)


def within(module: str, prefix: str) -> bool:
    """Whether ``module`` is ``prefix`` or a submodule of it (``a.b`` is within ``a``)."""
    return module == prefix or module.startswith(prefix + ".")


def discover_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Map every module name under ``root/<package>`` to its file (``__init__`` -> package)."""
    modules: dict[str, Path] = {}
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def entry_point_modules(pyproject: Path) -> frozenset[str]:
    """Modules named in ``[tool.flwr.app.components]`` (ServerApp/ClientApp); never leaves."""
    if not pyproject.is_file():
        return frozenset()
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    components = data.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    return frozenset(str(ref).split(":", 1)[0] for ref in components.values())


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``<anything>.TYPE_CHECKING`` (e.g. ``typing.TYPE_CHECKING``)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` at any depth, except under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is a known module, or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module ``node`` imports from (relative levels resolved); None if invalid."""
    if node.level == 0:
        return node.module
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 >= len(package):
        return None  # beyond the top-level package
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])]) or None


def module_imports(module: str, path: Path, modules: Mapping[str, Path]) -> list[Import]:
    """The edges from ``module`` (file ``path``) to other modules in ``modules``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: list[tuple[str, int]] = []
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets += [(alias.name, node.lineno) for alias in node.names]
            continue
        base = _resolve_base(module, is_package, node)
        if base is None:
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.append((sub if alias.name != "*" and sub in modules else base, node.lineno))
    edges: list[Import] = []
    for name, line in sorted(targets, key=lambda target: target[1]):
        imported = _known(name, modules)
        if imported is not None and imported != module:
            edges.append(Import(module, imported, path, line))
    return edges


def import_graph(modules: Mapping[str, Path]) -> list[Import]:
    """Every edge between the given modules, in a stable order (module, then line)."""
    edges: list[Import] = []
    for module in sorted(modules):
        edges += module_imports(module, modules[module], modules)
    return edges


def _strongly_connected(nodes: Iterable[str], succ: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative, so deep graphs are fine)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(succ.get(start, [])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(succ.get(child, []))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _cycle_in(component: list[str], first_edge: Mapping[tuple[str, str], Import]) -> list[Import]:
    """One concrete cycle through the component's first module (breadth-first, shortest)."""
    members = set(component)
    start = component[0]
    parent: dict[str, Import] = {}
    queue = [start]
    for node in queue:
        for (src, dst), edge in first_edge.items():
            if src != node or dst not in members:
                continue
            if dst == start:
                path = [edge]
                while path[0].importer != start:
                    path.insert(0, parent[path[0].importer])
                return path
            if dst not in parent:
                parent[dst] = edge
                queue.append(dst)
    return []  # unreachable for a real component of two or more modules


def find_cycles(edges: Iterable[Import]) -> list[Violation]:
    """One violation per group of mutually importing modules, showing one cycle of it."""
    first_edge: dict[tuple[str, str], Import] = {}
    for edge in edges:
        first_edge.setdefault((edge.importer, edge.imported), edge)
    succ: dict[str, list[str]] = {}
    for src, dst in first_edge:
        succ.setdefault(src, []).append(dst)
    violations = []
    for component in _strongly_connected(sorted(succ), succ):
        if len(component) < 2:
            continue
        cycle = _cycle_in(component, first_edge)
        chain = " -> ".join([e.importer for e in cycle] + [cycle[0].importer])
        message = f"import cycle among {len(component)} modules ({', '.join(component)}): {chain}"
        violations.append(Violation("cycle", message, tuple(cycle)))
    return violations


@dataclass(frozen=True)
class Layout:
    """Which modules are leaves: ``leaves`` prefixes, minus the Flower entry-point modules."""

    leaves: tuple[str, ...] = LEAVES
    entry_points: frozenset[str] = frozenset()

    def is_leaf(self, module: str) -> bool:
        """Whether ``module`` is (under) a leaf and not a ServerApp/ClientApp module."""
        return module not in self.entry_points and any(within(module, p) for p in self.leaves)

    def is_core(self, module: str) -> bool:
        """Whether ``module`` belongs to the core of ``mpsl_flwr`` (non-leaf)."""
        return within(module, CORE) and not self.is_leaf(module)


def check_edges(edges: Iterable[Import], layout: Layout) -> list[Violation]:
    """The violations of the direction rules (one per edge) and of the no-cycle rule."""
    edges = list(edges)
    violations: list[Violation] = []
    for e in edges:
        app = next((p for p in APP_PACKAGES if within(e.imported, p)), None)
        if layout.is_core(e.importer) and app is not None:
            message = f"core module {e.importer} imports {app}"
            violations.append(Violation("core-imports-app", message, (e,)))
        if within(e.importer, "clients") and within(e.imported, "strategies"):
            message = f"{e.importer} (clients) imports strategies"
            violations.append(Violation("clients-imports-strategies", message, (e,)))
        if layout.is_leaf(e.imported) and not layout.is_leaf(e.importer):
            message = f"non-leaf {e.importer} imports leaf {e.imported}"
            violations.append(Violation("imports-leaf", message, (e,)))
    return violations + find_cycles(edges)


def check_tree(
    root: Path, packages: Iterable[str] = PACKAGES, leaves: Iterable[str] = LEAVES
) -> list[Violation]:
    """Check the packages under ``root``; entry points come from ``root/pyproject.toml``."""
    modules = discover_modules(root, packages)
    layout = Layout(tuple(leaves), entry_point_modules(root / "pyproject.toml"))
    return check_edges(import_graph(modules), layout)


def report(violations: Iterable[Violation], root: Path) -> str:
    """All violations, one block each, for a test failure or the command line."""
    violations = list(violations)
    blocks = [v.format(root) for v in violations]
    return f"{len(blocks)} layering violation(s):\n" + "\n".join(blocks) if blocks else "clean"


def main(argv: list[str] | None = None) -> int:
    """``python tests/layering.py [ROOT]``: print the violations; 1 if any, else 0."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else Path(__file__).resolve().parents[1]).resolve()
    violations = check_tree(root)
    print(report(violations, root))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
