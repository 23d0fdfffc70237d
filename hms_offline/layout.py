"""The package's layout as its imports draw it: which folder imports which, read from the source
(the AST: nothing is imported or run), and the rules the layout keeps.

    python -m hms_offline.layout      # the graph and the rules; exit 1 naming each import that breaks one

The nodes are the package's folders (features, models, serving, training, synthetic, bundle, bench),
`core` (the flat modules every side uses), `cli` (the command line, which reaches every side)
and, in a checkout, the two scripts beside the package: `kernel` (kernel/inference.py) and
`build_bundle` (build_bundle.py). An import inside a function counts as much as one at the
top: the rules hold for every code path, not only for what an import loads at once.

Here rather than in a tools/ folder: the repository's top level is fixed (DESIGN.md), and the
rules describe this package, so they live in it; standard library only, like `bundle/`.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "hms_offline"
PACKAGE_DIR = Path(__file__).resolve().parent
SCRIPTS = {"kernel": Path("kernel") / "inference.py", "build_bundle": Path("build_bundle.py")}
COMMAND_LINE = {f"{PACKAGE}.cli", f"{PACKAGE}.__main__"}

# What each node may import of the package besides itself: nodes, or single modules (bundle/
# may import one module of the core, not the core).
MAY_IMPORT = {
    "core": set(),
    "features": {"core"},
    "models": {"core", "features"},
    "serving": {"core", "features", "models"},  # never training/: the kernel does not load it
    "training": {"core", "features", "models", "serving"},
    "synthetic": {"core", "features"},
    "bundle": {f"{PACKAGE}.digests"},
    "bench": {"core", "features", "models", "serving", "training", "synthetic"},  # measures every side
    "cli": {"core", "features", "models", "serving", "training", "synthetic", "bench"},
    "kernel": {"serving"},  # and hms_offline itself, by name, from the bundle's wheel
    "build_bundle": {"bundle"},
}
# Nodes that import nothing outside the standard library: bundle/ runs before any venv exists
# (the Makefile) and in the training venv without importing numpy; the kernel is one script.
STANDARD_LIBRARY_ONLY = ("bundle", "kernel", "build_bundle")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. hms_offline.serving.inference (or kernel/inference.py)
    line: int
    target: str  # the imported module, e.g. hms_offline.models.manifest, or numpy


@dataclass
class Graph:
    """Per node: the package modules it imports (by node) and the outside packages it imports."""

    imports: list[Import] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)  # module (or script) -> node

    def edges(self) -> dict[str, dict[str, set[str]]]:
        """node -> {imported node: the imported modules}, without a node's imports of itself."""
        edges = {node: {} for node in self.node_names()}
        for item in self.imports:
            if item.target.split(".")[0] == PACKAGE:
                source, target = self.nodes[item.source], node_of(item.target)
                if source != target:
                    edges[source].setdefault(target, set()).add(item.target)
        return edges

    def outside(self) -> dict[str, set[str]]:
        """node -> the top-level names it imports from outside the package and the standard library."""
        found = {node: set() for node in self.node_names()}
        for item in self.imports:
            top = item.target.split(".")[0]
            if top != PACKAGE and top not in sys.stdlib_module_names:
                found[self.nodes[item.source]].add(top)
        return found

    def node_names(self) -> list[str]:
        """The nodes present, in MAY_IMPORT's order, then any without a rule."""
        present = set(self.nodes.values())
        return [node for node in MAY_IMPORT if node in present] + sorted(present - set(MAY_IMPORT))

    def problems(self) -> list[str]:
        """Every import that breaks a rule, and every folder without a rule, one line each."""
        problems = [f"{node}: a folder of the package without a rule in MAY_IMPORT"
                    for node in self.node_names() if node not in MAY_IMPORT]
        for item in self.imports:
            source = self.nodes[item.source]
            top = item.target.split(".")[0]
            where = f"{item.source} line {item.line} imports {item.target}"
            if top == PACKAGE and source in MAY_IMPORT:
                target, allowed = node_of(item.target), MAY_IMPORT[source]
                if target != source and target not in allowed and item.target not in allowed:
                    problems.append(f"{where}: {source} may import only {', '.join(sorted(allowed)) or 'itself'}"
                                    + (" and itself" if allowed else ""))
            elif top != PACKAGE and top not in sys.stdlib_module_names and source in STANDARD_LIBRARY_ONLY:
                problems.append(f"{where}: {source} imports only the standard library")
        return problems


def node_of(module: str) -> str:
    """hms_offline.serving.inference -> serving; hms_offline.constants -> core; hms_offline.cli -> cli."""
    parts = module.split(".")
    if module in COMMAND_LINE:
        return "cli"
    if len(parts) > 1 and (PACKAGE_DIR / parts[1]).is_dir():
        return parts[1]
    return "core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> list[Import]:
    """Every import statement of a file, its target resolved to a module name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:  # `from package import module` names a module
                candidate = f"{base}.{alias.name}"
                is_module = candidate.split(".")[0] == PACKAGE and _module_path(candidate) is not None
                found.append(Import(module, node.lineno, candidate if is_module else base))
    return found


def _module_path(module: str) -> Path | None:
    relative = Path(*module.split(".")[1:])
    for path in (PACKAGE_DIR / relative.with_suffix(".py"), PACKAGE_DIR / relative / "__init__.py"):
        if path.is_file():
            return path
    return None


def read_graph(repo: Path | None = None) -> Graph:
    """The graph of the package's modules and, when `repo` holds them, the scripts beside it."""
    graph = Graph()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        module = module_name(path)
        graph.nodes[module] = node_of(module)
        graph.imports += imports_of(path, module)
    repo = PACKAGE_DIR.parent if repo is None else Path(repo)
    for node, relative in SCRIPTS.items():
        if (repo / relative).is_file():
            graph.nodes[relative.as_posix()] = node
            graph.imports += imports_of(repo / relative, relative.as_posix())
    return graph


def describe(graph: Graph) -> str:
    """The graph, one line per node: the nodes it imports (for the standard-library-only ones,
    the very modules, when few) and what it imports from outside the standard library; then the rules."""
    edges, outside = graph.edges(), graph.outside()
    present = graph.node_names()
    width = max(map(len, present))
    lines = [f"{PACKAGE}: which node imports which ({len(graph.nodes)} files read, imports inside functions "
             "included) | what else it imports beyond the standard library"]
    for node in present:
        targets = [f"{target} ({', '.join(sorted(modules))})" if node in STANDARD_LIBRARY_ONLY and len(modules) <= 2
                   else target for target, modules in sorted(edges[node].items(), key=lambda e: present.index(e[0]))]
        beyond = ", ".join(sorted(outside[node])) or "-"
        lines.append(f"  {node:<{width}} -> {', '.join(targets) or '-':<48} | {beyond}")
    problems = graph.problems()
    lines.append("rules (MAY_IMPORT, STANDARD_LIBRARY_ONLY): " + (
        "kept" if not problems else f"broken by {len(problems)} import(s):"))
    lines += [f"  {problem}" for problem in problems]
    return "\n".join(lines)


def main() -> int:
    graph = read_graph()
    print(describe(graph))
    return 1 if graph.problems() else 0


if __name__ == "__main__":
    raise SystemExit(main())
