"""The import graph of the jaxgrid package, read from its source (AST): every import
statement counts, also the lazy ones inside functions (only ``if TYPE_CHECKING:``
blocks are skipped), so the layering and the absence of cycles hold for what the
code can execute, not only for what runs at import time.

An import of ``jaxgrid.a.b`` depends on ``jaxgrid.a.b`` and on the package
``jaxgrid.a`` (Python runs its ``__init__``) — except packages that contain the
importing module, which are already being imported. ``jaxgrid`` itself is left
out (every module lives in it).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

#: jaxgrid packages the device world may import, per layer.
LAYERS = {
    "jaxgrid.core": ("jaxgrid.core", "jaxgrid.prob"),
    "jaxgrid.prob": ("jaxgrid.core", "jaxgrid.prob"),
}
#: third-party packages the core may import (besides the standard library).
CORE_THIRD_PARTY = frozenset({"jax", "jaxlib", "equinox", "numpy", "jaxtyping"})


def module_names(root: Path) -> dict[str, Path]:
    """``{dotted name: file}`` of every module under ``root`` (the ``jaxgrid`` folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``[(imported module, line)]`` of one module: jaxgrid modules and the top-level
    names of third-party ones."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = []
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        found.append((target, node.lineno))
        for a in node.names:  # ``from pkg import submodule``
            if f"{target}.{a.name}" in modules:
                found.append((f"{target}.{a.name}", node.lineno))
    return found


def graph(root: Path) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """``(edges between jaxgrid modules, every import of each module)``."""
    modules = module_names(root)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    raw = {}
    for name, path in modules.items():
        raw[name] = imports_of(name, path, modules)
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        for target, _ in raw[name]:
            if not target.startswith("jaxgrid.") or target not in modules:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in modules and dep != name and (dep == target or dep not in own):
                    edges[name].add(dep)
    return edges, raw


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def boundary_violations(root: Path) -> list[str]:
    """Imports that break `LAYERS` or `CORE_THIRD_PARTY`, as readable lines."""
    modules = module_names(root)
    _, raw = graph(root)
    bad = []
    for name, found in raw.items():
        layer = next((lay for lay in LAYERS if _inside(name, lay)), None)
        if layer is None:
            continue
        for target, line in found:
            where = f"{modules[name].relative_to(root.parent)}:{line}"
            top = target.split(".")[0]
            if top == "jaxgrid":
                if target == "jaxgrid" or not any(_inside(target, ok) for ok in LAYERS[layer]):
                    bad.append(f"{where}: {name} imports {target} (outside {LAYERS[layer]})")
            elif (
                layer == "jaxgrid.core"
                and top not in CORE_THIRD_PARTY
                and top not in sys.stdlib_module_names
            ):
                bad.append(f"{where}: {name} imports third-party {target}")
    return bad


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    edges, _ = graph(root)
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)
