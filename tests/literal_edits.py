"""One literal of a notebook cell changed, for the dataflow sweep (``dataflow_sweep``): the edits a user makes.

``literal_sites(source)`` lists the literals an edit may change, found with ``ast`` (what a literal is and where it
stands) and checked against ``tokenize`` (its exact text and columns, one token on one line): ints and floats (not
complex), strings and f-strings that look like data or text; not in a cell-magic cell (``%%``), on a ``%``/``!``
line, inside ``sys.exit``/``exit``/``os._exit``, in a file call (``open``, ``read_csv``...) or looking like a file
name, nor a docstring, a subscript key (``df["col"]``), a dict key, an option or keyword name (a string argument or
keyword value without whitespace, but for ``print``-like calls). ``apply_edit(source, site)`` changes exactly that
literal: an int ``+ 1``, a float ``* 1.1`` (``0.0`` becomes ``0.1``), a string gets the suffix ``_x`` (before its
closing quote, so f-strings and raw strings stay valid).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

SUFFIX = "_x"


@dataclass(frozen=True)
class Site:
    """One editable literal of a cell's source: its token's position (1-based line, 0-based column) and text."""

    line: int
    col: int
    end_col: int
    text: str
    kind: str  # "int" | "float" | "str"


_EXIT_CALLS = {"exit", "quit", "_exit", "abort"}  # sys.exit, os._exit, exit(): the notebook's control flow
_FILE_CALLS = {"open", "Path", "read_csv", "to_csv", "read_json", "to_json", "read_parquet", "to_parquet",
               "read_excel", "savefig", "load", "dump", "chdir", "listdir", "exists", "remove", "mkdir"}
_TEXT_CALLS = {"print", "info", "warning", "debug", "error", "critical", "warn", "write", "set_title", "suptitle",
               "set_xlabel", "set_ylabel", "title", "xlabel", "ylabel", "append", "join", "format"}
_FILENAME = re.compile(r"^[\w.-]*\.(csv|tsv|txt|json|jsonl|py|png|jpg|svg|ipynb|parquet|html|pkl|xlsx|log|ya?ml)$")


def _masked(source: str) -> str:
    """``source`` with IPython magic and shell lines commented out, every column kept (so positions hold)."""
    return "\n".join(re.sub(r"^(\s*)[%!]", r"\1#", line) for line in source.split("\n"))


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _string_allowed(node: ast.AST, value: str, parents: dict[ast.AST, ast.AST]) -> bool:
    """A string literal worth editing: data or text, not a key, a file name, an option or an API keyword."""
    if "/" in value or _FILENAME.match(value.strip()):
        return False
    parent = parents.get(node)
    if isinstance(parent, ast.Expr):  # a docstring or a bare string statement
        return False
    child = node
    while isinstance(parent, (ast.List, ast.Tuple)):  # df[["a", "b"]]: still a subscript
        child, parent = parent, parents.get(parent)
    if isinstance(parent, ast.Subscript) and parent.slice is child:
        return False
    if isinstance(parent, ast.Dict) and any(k is child for k in parent.keys):
        return False
    spaced = any(c.isspace() for c in value)
    if isinstance(parent, ast.keyword):
        return spaced
    if isinstance(parent, ast.Call) and child is not parent.func:
        name = _call_name(parent)
        return name not in _FILE_CALLS and (spaced or name in _TEXT_CALLS)
    return True


def literal_sites(source: str) -> list[Site]:
    """The literals of a cell that an edit may change: numbers (not complex) and strings (``_string_allowed``),
    none in a cell magic's cell, a magic or shell line, an exit call, a file call or inside an f-string."""
    if source.lstrip().startswith("%%"):
        return []
    masked = _masked(source)
    try:
        tree = ast.parse(masked)
        tokens = list(tokenize.generate_tokens(io.StringIO(masked).readline))
    except (SyntaxError, tokenize.TokenError, IndentationError):
        return []
    lines = masked.split("\n")
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    by_start = {tok.start: tok for tok in tokens if tok.type in (tokenize.NUMBER, tokenize.STRING)}
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                continue
        elif not isinstance(node, ast.JoinedStr):
            continue
        ancestors, up = [], parents.get(node)
        while up is not None:
            ancestors.append(up)
            up = parents.get(up)
        if any(isinstance(a, ast.JoinedStr) for a in ancestors):
            continue  # a part of an f-string: the f-string itself is the site
        if any(isinstance(a, ast.Call) and _call_name(a) in _EXIT_CALLS for a in ancestors):
            continue
        col = len(lines[node.lineno - 1].encode()[:node.col_offset].decode(errors="replace"))
        tok = by_start.get((node.lineno, col))
        end_col = len(lines[node.end_lineno - 1].encode()[:node.end_col_offset].decode(errors="replace")) \
            if node.end_lineno is not None and node.end_col_offset is not None else -1
        if tok is None or tok.end != (node.end_lineno, end_col) or tok.start[0] != tok.end[0]:
            continue  # implicit concatenation, a multi-line string: not one token on one line
        if isinstance(node, ast.JoinedStr) or isinstance(node.value, str):
            text = "".join(v.value for v in getattr(node, "values", []) if isinstance(v, ast.Constant)) \
                if isinstance(node, ast.JoinedStr) else node.value
            if tok.string.lstrip("rRuUfF")[:1] not in "'\"" or not _string_allowed(node, str(text), parents):
                continue
            kind = "str"
        else:
            if tok.string[-1:] in "jJ":
                continue
            kind = "float" if isinstance(node.value, float) else "int"
        sites.append(Site(node.lineno, col, end_col, tok.string, kind))
    return sorted(sites, key=lambda s: (s.line, s.col))


def edited_text(site: Site) -> str:
    """The literal after the edit: an int + 1, a float * 1.1 (0.0 becomes 0.1), a string with ``SUFFIX``."""
    if site.kind == "int":
        return str(int(site.text.replace("_", ""), 0) + 1)
    if site.kind == "float":
        value = float(site.text.replace("_", ""))
        new = value * 1.1 if value else 0.1
        text = format(new, ".6g")
        if float(text) == value:
            text = repr(new)
        return text if any(c in text for c in ".eEn") else text + ".0"
    quote = site.text[-3:] if site.text[-3:] in ('"""', "'''") else site.text[-1]
    return site.text[:-len(quote)] + SUFFIX + quote


def apply_edit(source: str, site: Site) -> tuple[str, str]:
    """``source`` with the literal at ``site`` changed, and a description (``line 3: 314 -> 315``)."""
    lines = source.split("\n")
    line = lines[site.line - 1]
    assert line[site.col:site.end_col] == site.text, (line, site)
    new = edited_text(site)
    lines[site.line - 1] = line[:site.col] + new + line[site.end_col:]
    return "\n".join(lines), f"line {site.line}: {site.text} -> {new}"
