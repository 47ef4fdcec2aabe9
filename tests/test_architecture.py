"""The shape of the code, checked: layers point one way, no import cycles, modules stay small, ruff passes.

The import graph is read from the source (``ast``), function-level imports included; imports under
``if TYPE_CHECKING:`` are left out (they never run). The layers, highest first, are listed in
``LAYERS``: a module may import its own package and any package of a lower layer, never a package of its
own layer or of a higher one. ARCHITECTURE.md states the same rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nbdurable"
MAX_LINES = 600

# Highest first. Each entry is a top-level component of the package (``nbdurable.<component>``);
# "" is the facade, ``nbdurable/__init__.py``.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"", "cli"},
    {"server"},
    {"headless", "kernel_ext", "demo"},
    {"report"},
    {"widgets", "run_history", "kernelspec", "testing"},
    {"runtime"},
    {"capture"},
    {"serialization"},
    {"store"},
    {"errors", "_version", "startup"},
]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                skipped.update(id(inner) for inner in ast.walk(statement))
    return skipped


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The nbdurable modules an import statement loads (``from pkg import name``: the submodule when
    ``name`` is one, else ``pkg``)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            names.add(full if full in MODULES else base)
    resolved = set()
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != module:
            resolved.add(name)
    return resolved


def import_graph() -> dict[str, set[str]]:
    """module -> the nbdurable modules it imports anywhere in its code."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped:
                graph[module] |= _imported(module, node)
    return graph


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(component: str) -> int:
    for index, layer in enumerate(LAYERS):
        if component in layer:
            return index
    raise AssertionError(f"nbdurable.{component} is in no layer: add it to LAYERS in {__file__}")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_no_import_cycles() -> None:
    assert _cycles(import_graph()) == []


def test_layers_point_one_way() -> None:
    breaks = []
    for module, imports in sorted(import_graph().items()):
        mine = _component(module)
        for target in sorted(imports):
            theirs = _component(target)
            if theirs == mine:
                continue
            if _layer(theirs) <= _layer(mine):
                breaks.append(f"{module} imports {target}")
    assert breaks == [], "layer breaks (see LAYERS):\n" + "\n".join(breaks)


def test_widgets_never_import_the_extension() -> None:
    graph = import_graph()
    assert not [(m, t) for m in graph if m.startswith("nbdurable.widgets") for t in graph[m] if "kernel_ext" in t]


def test_checker_sees_function_level_imports_and_skips_type_checking() -> None:
    """The graph is not vacuous: a function-level import is an edge; a TYPE_CHECKING one is not."""
    graph = import_graph()
    assert "nbdurable.widgets.approval" in graph["nbdurable.kernel_ext.extension"]  # inside _show_approval
    assert "nbdurable.kernel_ext.extension" not in graph["nbdurable.kernel_ext.restore"]  # TYPE_CHECKING only
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: split them by concept"


def test_star_import_keeps_builtins() -> None:
    namespace: dict[str, object] = {}
    exec("from nbdurable import *", namespace)
    assert "map" not in namespace and "nbdurable" not in namespace
    assert {"step", "run_step", "sleep", "history"} <= set(namespace)
    import nbdurable

    assert callable(nbdurable.map)


def test_ruff_passes() -> None:
    """ruff with the project's configuration (pyproject.toml) over the package, tests and benchmarks."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "nbdurable", "tests", "bench"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_facade_exports_every_error() -> None:
    import nbdurable
    from nbdurable import errors

    assert set(errors.__all__) <= set(nbdurable.__all__)
    assert all(getattr(nbdurable, name) is getattr(errors, name) for name in errors.__all__)
