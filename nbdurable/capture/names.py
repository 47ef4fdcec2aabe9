"""Which global names a cell can touch, read from its code.

The cost of a step must scale with what the cell touches, not with the namespace, so the candidates
for a state change come from the cell's (IPython-transformed) code rather than from a namespace scan:

- names the cell binds or deletes at module level (assignments, imports, defs, for/with targets, ``global``),
- names it loads anywhere (a loaded object may be mutated in place: ``df.drop(..., inplace=True)``),
- the source strings of magics (``%time x = 1`` becomes a string argument that we parse too).

Functions defined earlier reach globals the cell never names (``add(3)`` mutating ``data``); the
``reachable_globals`` closure follows the global names of notebook functions and classes the cell loads.
Code that reaches the namespace dynamically (``from m import *``, ``%run``, ``globals()``, ``exec``)
makes ``needs_full_scan`` true: the caller then diffs the namespace keys for that cell only.
"""

from __future__ import annotations

import ast
import types
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

_DYNAMIC_CALLS = frozenset({"globals", "exec", "eval", "vars", "locals"})
_FULL_SCAN_MAGICS = frozenset({"run", "load", "store", "reset", "reset_selective", "autoreload", "aimport"})
_MAGIC_RUNNERS = frozenset({"run_line_magic", "run_cell_magic"})


@dataclass(frozen=True)
class CellNames:
    """The global names a cell may have changed (``stored``) or looked at (``loaded``)."""

    stored: frozenset[str] = field(default_factory=frozenset)
    loaded: frozenset[str] = field(default_factory=frozenset)
    needs_full_scan: bool = False


class _Collector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.stored: set[str] = set()
        self.loaded: set[str] = set()
        self.full_scan = False
        self._depth = 0  # >0 inside a function body: its stores are local unless declared global
        self._globals: set[str] = set()

    def _store(self, name: str) -> None:
        if self._depth == 0 or name in self._globals:
            self.stored.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.loaded.add(node.id)
        else:
            self._store(node.id)

    def visit_Global(self, node: ast.Global) -> None:
        self._globals.update(node.names)
        self.stored.update(node.names)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        if not isinstance(node, ast.Lambda):
            self._store(node.name)
            for deco in node.decorator_list:
                self.visit(deco)
            if node.returns:
                self.visit(node.returns)
        self.visit(node.args)
        saved = self._globals
        self._globals = set()
        self._depth += 1
        body = node.body if isinstance(node.body, list) else [node.body]
        for stmt in body:
            self.visit(stmt)
        self._depth -= 1
        self._globals = saved

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function
    visit_Lambda = _visit_function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._store(node.name)
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        self._depth += 1
        for stmt in node.body:
            self.visit(stmt)
        self._depth -= 1

    def _visit_import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self.full_scan = True
            else:
                self._store(alias.asname or alias.name.split(".")[0])

    visit_Import = _visit_import
    visit_ImportFrom = _visit_import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self._store(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self._store(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self._store(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self._store(node.rest)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in _DYNAMIC_CALLS:
            self.full_scan = True
        if isinstance(func, ast.Attribute) and func.attr in _MAGIC_RUNNERS:
            self._visit_magic_call(node)
        self.generic_visit(node)

    def _visit_magic_call(self, node: ast.Call) -> None:
        """``get_ipython().run_line_magic('time', 'x = 1')``: the magic's text may be Python code."""
        literals = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if literals and literals[0] in _FULL_SCAN_MAGICS:
            self.full_scan = True
        for text in literals[1:]:
            inner = analyze_code(text)
            self.stored |= inner.stored
            self.loaded |= inner.loaded
            self.full_scan |= inner.needs_full_scan


@lru_cache(maxsize=512)
def analyze_code(code: str) -> CellNames:
    """The names a piece of Python code binds, deletes and loads at module level.

    Code that does not parse touches nothing (IPython will report the syntax error itself)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return CellNames()
    collector = _Collector()
    collector.visit(tree)
    return CellNames(frozenset(collector.stored), frozenset(collector.loaded), collector.full_scan)


def reachable_globals(names: frozenset[str], namespace: dict[str, Any]) -> set[str]:
    """Global names reachable through notebook-defined functions and classes among ``names``.

    A function defined in an earlier cell that does ``data.append(x)`` or ``global total`` touches
    globals the calling cell never names; its code object lists them in ``co_names``."""
    found: set[str] = set()
    seen_code: set[int] = set()
    pending = [namespace[n] for n in names if n in namespace]
    while pending:
        for code in _notebook_code_objects(pending.pop(), namespace):
            if id(code) in seen_code:
                continue
            seen_code.add(id(code))
            for name in code.co_names:
                if name in namespace and name not in found:
                    found.add(name)
                    pending.append(namespace[name])
    return found


def _notebook_code_objects(obj: Any, namespace: dict[str, Any]) -> list[types.CodeType]:
    """Code objects of a notebook function, or of the methods of a notebook class or its instance."""
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, types.FunctionType):
        return _nested_code(obj.__code__) if obj.__globals__ is namespace else []
    cls = obj if isinstance(obj, type) else type(obj)
    if getattr(cls, "__module__", None) != namespace.get("__name__", "__main__"):
        return []
    codes: list[types.CodeType] = []
    for member in vars(cls).values():
        func = getattr(member, "__func__", member)  # staticmethod / classmethod
        if isinstance(func, types.FunctionType) and func.__globals__ is namespace:
            codes.extend(_nested_code(func.__code__))
    return codes


def _nested_code(code: types.CodeType) -> list[types.CodeType]:
    """A code object and the code of functions, lambdas and comprehensions nested in it."""
    out = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out.extend(_nested_code(const))
    return out
