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

Two kinds of interpreter state a cell can change without binding a variable are read from the code too:
attributes it assigns or deletes through dotted names (``np.foo = 1``, ``mod.sub.flag += 1``: candidates
for module attributes, ``capture/module_attrs.py``) and the magics that set interpreter state
(``%matplotlib inline``, ``%config …``, ``%load_ext …``: replayed when the cell is restored).
"""

from __future__ import annotations

import ast
import types
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

_DYNAMIC_CALLS = frozenset({"globals", "exec", "eval", "vars", "locals"})
_FULL_SCAN_MAGICS = frozenset({"run", "load", "store", "reset", "reset_selective", "autoreload", "aimport"})
_DYNAMIC_MAGICS = frozenset({"run"})  # `%run -i` sees the whole namespace
_MAGIC_RUNNERS = frozenset({"run_line_magic", "run_cell_magic"})
_SHELL_RUNNERS = frozenset({"system", "getoutput"})  # `!cmd`, `x = !cmd`
# Line magics whose effect is interpreter state (not a variable, not the environment or the working
# directory, which are captured as such): replayed, with the same arguments, when their cell is restored.
STATE_MAGICS = frozenset({
    "matplotlib", "config", "load_ext", "reload_ext", "unload_ext", "autoreload", "aimport", "colors", "xmode",
    "precision", "alias", "unalias", "autocall", "automagic", "doctest_mode", "pdb", "pylab",
})


@dataclass(frozen=True)
class CellNames:
    """The global names a cell may have changed (``stored``) or looked at (``loaded``)."""

    stored: frozenset[str] = field(default_factory=frozenset)
    loaded: frozenset[str] = field(default_factory=frozenset)
    needs_full_scan: bool = False
    # Dotted assignment/deletion targets rooted at a global name (``np.foo = 1`` → ("np", "foo")).
    attribute_stores: frozenset[tuple[str, ...]] = field(default_factory=frozenset)
    # State magics the cell runs, in order: (magic, its argument line), literal arguments only.
    magics: tuple[tuple[str, str], ...] = ()
    # The global names whose value *before* the cell it may read: loaded names, minus those the cell
    # definitely assigns before it first loads them (``f = open(...)`` then ``f.write``): see ``_Reads``.
    reads: frozenset[str] = field(default_factory=frozenset)
    # The cell can read globals no analysis sees (``globals()``, ``exec``, ``eval``, ``vars()``, ``locals()``,
    # ``%run``, a shell command expanding ``{name}``): what it read cannot be known (``runtime/dataflow.py``).
    dynamic_reads: bool = False


class _Collector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.stored: set[str] = set()
        self.loaded: set[str] = set()
        self.full_scan = False
        self._depth = 0  # >0 inside a function body: its stores are local unless declared global
        self._globals: set[str] = set()
        self.attribute_stores: set[tuple[str, ...]] = set()
        self.magics: list[tuple[str, str]] = []
        self.magic_reads: set[str] = set()  # what the Python code inside magic arguments reads
        self.dynamic_reads = False

    def _store(self, name: str) -> None:
        if self._depth == 0 or name in self._globals:
            self.stored.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.loaded.add(node.id)
        else:
            self._store(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            chain = _dotted(node)
            if chain is not None:
                self.attribute_stores.add(chain)
        self.generic_visit(node)

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
            self.full_scan = self.dynamic_reads = True
        if isinstance(func, ast.Attribute) and func.attr in _SHELL_RUNNERS and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str) and ("{" in a.value or "$" in a.value)
                for a in node.args):
            self.dynamic_reads = True  # `!ls {path}` expands globals when it runs
        if isinstance(func, ast.Attribute) and func.attr in _MAGIC_RUNNERS:
            self._visit_magic_call(node)
        self.generic_visit(node)

    def _visit_magic_call(self, node: ast.Call) -> None:
        """``get_ipython().run_line_magic('time', 'x = 1')``: the magic's text may be Python code."""
        literals = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if literals and literals[0] in _FULL_SCAN_MAGICS:
            self.full_scan = True
            self.dynamic_reads |= literals[0] in _DYNAMIC_MAGICS
        if len(literals) >= 2 and literals[0] in STATE_MAGICS and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "run_line_magic":
            self.magics.append((literals[0], literals[1]))
        for text in literals[1:]:
            inner = analyze_code(text)
            self.stored |= inner.stored
            self.loaded |= inner.loaded
            self.full_scan |= inner.needs_full_scan
            self.magic_reads |= inner.reads
            self.dynamic_reads |= inner.dynamic_reads
            self.attribute_stores |= inner.attribute_stores
            self.magics.extend(inner.magics)


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
    reads = _Reads()
    reads.block(tree.body, set())
    return CellNames(frozenset(collector.stored), frozenset(collector.loaded), collector.full_scan,
                     frozenset(collector.attribute_stores), tuple(collector.magics),
                     frozenset(reads.found | collector.magic_reads), collector.dynamic_reads)


class _Reads:
    """Which global names a cell reads before assigning them, in statement order (a simple definite-assignment
    analysis: conservative, never misses a read; a name assigned only in a branch or a loop still counts)."""

    def __init__(self) -> None:
        self.found: set[str] = set()

    def block(self, body: list[ast.stmt], defined: set[str]) -> set[str]:
        """Walk statements in order; returns the names definitely assigned after them."""
        for stmt in body:
            defined = self.statement(stmt, defined)
        return defined

    def statement(self, stmt: ast.stmt, defined: set[str]) -> set[str]:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            self.found |= _loads(stmt.value) - defined if stmt.value is not None else set()
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                self.found |= _target_loads(target) - defined
            return defined | {n for t in targets for n in _target_names(t)}
        if isinstance(stmt, ast.AugAssign):
            self.found |= (_loads(stmt.value) | _loads(stmt.target) | _target_names(stmt.target)) - defined
            return defined | _target_names(stmt.target)
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            return defined | {(a.asname or a.name.split(".")[0]) for a in stmt.names if a.name != "*"}
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.found |= _loads(stmt) - defined  # decorators, defaults, bases and the body's free names
            return defined | {stmt.name}
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            inner = set(defined)
            for item in stmt.items:
                self.found |= _loads(item.context_expr) - inner
                if item.optional_vars is not None:
                    self.found |= _target_loads(item.optional_vars) - inner
                    inner |= _target_names(item.optional_vars)
            return self.block(stmt.body, inner)
        if isinstance(stmt, (ast.For, ast.AsyncFor)):
            self.found |= _loads(stmt.iter) - defined
            self.block(stmt.body, defined | _target_names(stmt.target))
            self.block(stmt.orelse, defined)
            return defined
        if isinstance(stmt, ast.If):
            self.found |= _loads(stmt.test) - defined
            return self.block(stmt.body, set(defined)) & self.block(stmt.orelse, set(defined))
        self.found |= _loads(stmt) - defined  # anything else: every name it loads may be read
        return defined


def _target_names(target: ast.expr) -> set[str]:
    """Names a plain assignment target binds (``a``, ``a, (b, *c)``)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return {n for elt in target.elts for n in _target_names(elt)}
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return set()


def _target_loads(target: ast.expr) -> set[str]:
    """Names an assignment target reads: ``a[i] = v`` reads ``a`` and ``i``, ``a.b = v`` reads ``a``."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return {n for elt in target.elts for n in _target_loads(elt)}
    if isinstance(target, ast.Starred):
        return _target_loads(target.value)
    if isinstance(target, (ast.Attribute, ast.Subscript)):
        return _loads(target)
    return set()


def _loads(node: ast.AST) -> set[str]:
    """Global names loaded anywhere in ``node``: names bound inside functions, lambdas and comprehensions
    (their parameters and locals) are theirs, not reads; the code of magics counts (``%time x = y``)."""
    found: set[str] = set()

    def visit(n: ast.AST, local: frozenset[str]) -> None:
        if isinstance(n, ast.Name):
            if isinstance(n.ctx, ast.Load) and n.id not in local:
                found.add(n.id)
            return
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for sub in [*getattr(n, "decorator_list", []), *n.args.defaults, *n.args.kw_defaults]:
                if sub is not None:
                    visit(sub, local)
            args = n.args
            params = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
            params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
            body: list[ast.AST] = list(n.body) if isinstance(n.body, list) else [n.body]
            inner = local | params | _locals(body)
            for stmt in body:
                visit(stmt, frozenset(inner))
            return
        if isinstance(n, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            bound = {name for gen in n.generators for name in _target_names(gen.target)}
            inner = frozenset(local | bound)
            for gen in n.generators:
                visit(gen.iter, local if gen is n.generators[0] else inner)
                for cond in gen.ifs:
                    visit(cond, inner)
            for part in ([n.key, n.value] if isinstance(n, ast.DictComp) else [n.elt]):
                visit(part, inner)
            return
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _MAGIC_RUNNERS:
            for arg in n.args[1:]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.update(analyze_code(arg.value).reads - local)
        for child in ast.iter_child_nodes(n):
            visit(child, local)

    visit(node, frozenset())
    return found


def _locals(body: list[ast.AST]) -> set[str]:
    """Names a function body binds (its locals), unless declared global."""
    bound: set[str] = set()
    declared: set[str] = set()
    for stmt in body:
        for n in ast.walk(stmt):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                bound.add(n.id)
            elif isinstance(n, ast.Global):
                declared.update(n.names)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(n.name)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                bound.update(a.asname or a.name.split(".")[0] for a in n.names)
    return bound - declared


def _dotted(node: ast.Attribute) -> tuple[str, ...] | None:
    """``a.b.c`` as ("a", "b", "c"); None when the chain does not start at a plain name (``f().x``)."""
    parts = [node.attr]
    value = node.value
    while isinstance(value, ast.Attribute):
        parts.append(value.attr)
        value = value.value
    if not isinstance(value, ast.Name):
        return None
    parts.append(value.id)
    return tuple(reversed(parts))


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
