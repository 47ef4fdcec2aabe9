"""Runs cells in a real IPython shell in a fresh process, for tests that restore in a new process.

Reads a JSON spec from the file named by argv[1] and writes the results to argv[2]:
spec = {"cells": [...], "probes": {"label": "python expression", ...}, "load": true, "setup": "python code"}
(``setup`` runs in the user namespace before the cells, outside any cell: it is never a step)
results = {"cells": [{"success": bool, "error": "repr"}], "probes": {"label": repr-or-error}, "stdout": "..."}
A cell that kills the process (os.kill(os.getpid(), 9)) leaves a partial results file: results are
rewritten after every cell.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    out_path = sys.argv[2]
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    shell = InteractiveShell.instance(config=Config(spec.get("config", {})))
    results: dict = {"cells": [], "probes": {}, "stdout": ""}
    buffer = io.StringIO()

    def save() -> None:
        results["stdout"] = buffer.getvalue()
        with open(out_path, "w") as f:
            json.dump(results, f)

    if spec.get("setup"):
        exec(spec["setup"], shell.user_ns)
    cells = list(spec["cells"])
    if spec.get("load", True):
        cells.insert(0, "%load_ext nbdurable")
    for cell in cells:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            result = shell.run_cell(cell, store_history=True)
        err = result.error_before_exec or result.error_in_exec
        results["cells"].append({"success": result.success,
                                 "error": None if err is None else f"{type(err).__name__}: {err}"})
        save()
    for label, expr in spec.get("probes", {}).items():
        try:
            results["probes"][label] = repr(shell.ev(expr))
        except Exception as exc:  # the probe's failure is the result
            results["probes"][label] = f"!{type(exc).__name__}: {exc}"
    save()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        from nbdurable.kernel_ext import unload_ipython_extension

        unload_ipython_extension(shell)
    save()


if __name__ == "__main__":
    main()
