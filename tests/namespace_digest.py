"""The last cell of every notebook the dataflow sweep runs (``dataflow_sweep.DIGEST_CELL``): this function's
source followed by a call on ``globals()``, run in the notebook's kernel (so: no imports at module level, no
annotations). It prints one line per user variable, ``name<TAB>type<TAB>digest<TAB>preview``: modules, functions,
private names, IPython's own and closed files (inert by design: ARCHITECTURE, "Closed files are inert") left out;
then the final states of ``random`` and ``numpy.random`` and the working directory.

The digest is of the value's structure, not of its pickle's bytes (pickle memoization changes those after a mere
round trip): numbers by ``repr``, containers element by element, arrays by dtype, shape and bytes, pandas objects by
dtypes and CSV text, other objects by their ``__reduce_ex__`` structure (depth-limited, cycles cut, a ``_cache``
entry left out: pandas and statsmodels memoize there, filled by whichever later cell asked), matplotlib objects by
type only; the run directory (the notebook's, ``$NBDURABLE_NOTEBOOK``) and memory addresses blanked.

**Nested aliases of other variables are not compared (known limitation, issue 14).** A value can hold *the same
object as* another variable: ``ols = smf.ols(..., data=data).fit()`` keeps ``data`` itself in
``ols.model.data.frame``, and a later ``data["x"] = ...`` changes both. A restore stores each variable on its own
and keeps aliasing between variables, not between an object nested in one variable and another variable, so the
restored ``ols`` holds a copy of ``data`` as it was (scheduled as issue 14). So that this limitation does not hide
anything else, the exclusion is by identity only, and symmetric: in each run, a member of a variable's value (at any
depth, not the value itself) whose type is the type of some user variable (a mutable type: not a number, a string,
bytes, ``None``, a class or a function) is digested *apart*, as a line ``~<TAB>name<TAB>path<TAB>digest<TAB>alias``
(``path`` like ``._results.model.data.frame``; ``alias`` the name of the other variable it *is* in this run,
``id``-identical, else empty), and the variable's own digest has a placeholder in its place. Both runs print the
same paths (the rule depends on types, not on identity), so the sweep compares every such member by its own digest,
and leaves out only a path that is an alias in either run, with everything under it (the restored copy is identical
to nothing: the alias shows in the fresh run only). Nothing else is left out. A trial lists the paths it left out:
"nested aliases of other variables not compared (known limitation, issue 14): `ols`._results.model.data.frame is
`data` (fresh only)". Members of sets and the objects ``__reduce_ex__`` builds (the arguments tuple, an object's
state, its list or dict items) are not members of their own; their members are.
"""


def _nbd_sweep_digest(namespace):
    import hashlib
    import os
    import random
    import re
    import sys
    import types

    rundir = os.path.dirname(os.environ.get("NBDURABLE_NOTEBOOK", "")) or os.getcwd()
    roots = sorted({rundir, os.path.realpath(rundir)}, key=len, reverse=True)
    np = sys.modules.get("numpy")

    def clean(text):
        for root in roots:
            text = text.replace(root, "<RUNDIR>")
        return re.sub(r"0x[0-9a-fA-F]+", "0x?", text)

    def digest(data):
        return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()[:16]

    def label(key):
        return re.sub(r"\s", " ", clean(repr(key)))[:80]

    skip = {"In", "Out", "get_ipython", "exit", "quit"}
    plain = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    variables = {}
    for name, value in sorted(namespace.items()):
        closed = getattr(value, "closed", False) is True and hasattr(value, "readable")  # inert by design
        if not (name.startswith("_") or name in skip or isinstance(value, plain) or closed):
            variables[name] = value
    immutable = (type(None), bool, int, float, complex, str, bytes, type)
    shared = {type(v) for v in variables.values()  # the types a nested alias can have
              if not isinstance(v, immutable) and not (np is not None and isinstance(v, np.generic))}
    identity = {}
    for name, value in variables.items():
        identity.setdefault(id(value), name)
    nested = []  # (path, digest, alias) of the members digested apart, for the variable being digested

    def canon(value, depth=0, seen=(), path=None, apart=True):
        # The canonical text of `value`; `path` (None: in a set) names it inside the variable; `apart`: a member
        # of a mutable shared type is digested apart (the module docstring).
        kind = type(value)
        if value is None or isinstance(value, (bool, int, float, complex)):
            return repr(value)
        if isinstance(value, str):
            return "str " + digest(clean(value))
        if isinstance(value, bytes):
            return "bytes " + digest(value)
        if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
            return "named " + str(getattr(value, "__module__", "")) + "." + value.__qualname__
        if depth > 10 or id(value) in seen:
            return "deep " + kind.__qualname__
        if depth and apart and path is not None and kind in shared:
            alias = identity.get(id(value), "")
            nested.append((path, digest(structure(value, depth, seen, path)), alias))
            return "apart " + kind.__qualname__
        return structure(value, depth, seen, path)

    def structure(value, depth, seen, path):
        kind, module = type(value), type(value).__module__ or ""
        seen, depth = seen + (id(value),), depth + 1

        def sub(part):
            return None if path is None else path + part

        if isinstance(value, (list, tuple)):
            items = (canon(v, depth, seen, sub(f"[{i}]")) for i, v in enumerate(value))
            return kind.__name__ + "[" + ",".join(items) + "]"
        if isinstance(value, (set, frozenset)):
            return kind.__name__ + "{" + ",".join(sorted(canon(v, depth, seen) for v in value)) + "}"
        if isinstance(value, dict):  # an object's "_cache" (pandas, statsmodels) memoizes: left out
            items = (canon(k, depth, seen) + ":" + canon(v, depth, seen, sub(f"[{label(k)}]"))
                     for k, v in value.items() if k != "_cache")
            return kind.__name__ + "{" + ",".join(items) + "}"
        if np is not None and isinstance(value, np.generic):
            return repr(value)
        if np is not None and isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                return f"ndarray {value.shape} " + canon(value.tolist(), depth, seen, path, apart=False)
            return f"ndarray {value.dtype} {value.shape} " + digest(np.ascontiguousarray(value).tobytes())
        if module.startswith("pandas") and hasattr(value, "to_csv"):
            dtypes = getattr(value, "dtypes", getattr(value, "dtype", ""))
            return f"{kind.__name__} {value.shape} {digest(str(dtypes))} " + digest(clean(value.to_csv()))
        if module.startswith("matplotlib"):
            return "matplotlib " + kind.__qualname__
        try:  # the object's pickle structure, not its bytes (memoization changes them after a round trip)
            reduced = value.__reduce_ex__(4)
        except Exception:
            return kind.__qualname__ + " repr " + digest(clean(repr(value)))
        if isinstance(reduced, str):
            return kind.__qualname__ + " global " + reduced
        parts = [canon(reduced[0], depth, seen, sub("<0>"), apart=False),
                 canon(reduced[1], depth, seen, sub("<1>"), apart=False)]
        if len(reduced) > 2 and isinstance(reduced[2], dict):  # the state: its keys are attributes
            items = (canon(k, depth + 1, seen) + ":"
                     + canon(v, depth + 1, seen, sub(f".{k}" if isinstance(k, str) else f"[{label(k)}]"))
                     for k, v in reduced[2].items() if k != "_cache")
            parts.append("dict{" + ",".join(items) + "}")
        elif len(reduced) > 2:
            parts.append(canon(reduced[2], depth, seen, sub("<2>"), apart=False))
        parts += [canon(list(r) if r is not None else r, depth, seen, sub(f"<{i}>"), apart=False)
                  for i, r in enumerate(reduced[3:], 3)]
        return kind.__qualname__ + " reduce(" + ",".join(parts) + ")"

    def line(name, value):
        try:
            preview = clean(repr(value)).replace("\n", " ")[:100]
        except Exception as exc:
            preview = f"<repr failed: {type(exc).__name__}>"
        nested.clear()
        print(name, type(value).__qualname__, digest(canon(value, path="")), preview, sep="\t")
        for path, member, alias in nested:
            print("~", name, path, member, alias, sep="\t")

    for name, value in variables.items():
        line(name, value)
    line("%random", random.getstate())
    if "numpy" in sys.modules:
        line("%numpy.random", sys.modules["numpy"].random.get_state())
    line("%cwd", clean(os.getcwd()))
