"""Parameters of a headless run, injected the papermill way (a cell after the one tagged ``parameters``)."""

from __future__ import annotations

import keyword
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, cast

import nbformat
import yaml
from papermill.iorw import load_notebook_node, papermill_io
from papermill.parameterize import parameterize_notebook

from nbdurable.errors import OptionsError


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value, typed as papermill types it: True/False, None, int, float, else str."""
    special = {"True": True, "False": False, "None": None}
    if text in special:
        return special[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_parameters(pairs: tuple[tuple[str, str], ...], files: tuple[str, ...]) -> dict[str, Any]:
    """Parameters from ``-f params.yaml`` files (in order), then ``-p NAME VALUE`` pairs."""
    params: dict[str, Any] = {}
    for file in files:
        try:
            loaded = yaml.safe_load(Path(file).read_text())
        except Exception as exc:  # OSError, UnicodeDecodeError, YAMLError, and what PyYAML's constructors raise
            # for a bad tagged scalar (`!!int ''`: IndexError, `!!timestamp x`: AttributeError, `!!bool x`: KeyError)
            raise OptionsError(f"cannot read parameters file {file}: {exc}",
                               hint="pass a YAML mapping, e.g. `lr: 0.01`") from exc
        if not isinstance(loaded, dict):
            raise OptionsError(f"parameters file {file} is not a mapping", hint="write NAME: VALUE lines")
        for name in loaded:
            if not _is_name(name):
                raise OptionsError(f"parameters file {file}: {name!r} is not a valid parameter name",
                                   hint="names are Python identifiers (not keywords), e.g. `learning_rate: 0.1`")
        params.update(loaded)
    for name, value in pairs:
        if not _is_name(name):
            raise OptionsError(f"-p {name}: not a valid parameter name",
                               hint="names are Python identifiers (not keywords), e.g. -p learning_rate 0.1")
        params[name] = parse_value(value)
    return params


def _is_name(name: object) -> bool:
    """True if ``name = value`` in the injected cell assigns a variable (`class` or `1` would be a SyntaxError)."""
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def load_notebook(path: Path, params: dict[str, Any], kernel_name: str | None) -> nbformat.NotebookNode:
    """Read a notebook and inject the parameters (papermill's rules, so papermill users get the same cells).

    A file that is no notebook is one OptionsError (papermill's loader would also warn, with its own source
    path, about a name not ending in .ipynb). Parameters for a notebook without a cell tagged ``parameters``
    are injected as papermill injects them, in a new first cell, with a warning of ours on stderr instead of
    papermill's bare log line: a cell of the notebook that assigns the same name later overrides them."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The specified file", UserWarning)  # the error below says more
            nb = load_notebook_node(str(path))  # papermill's loader: the metadata its parameterizer expects
    except FileNotFoundError:
        raise OptionsError(f"no notebook at {path}", hint="check the path") from None
    except Exception as exc:  # nbformat raises many kinds for a file that is not a notebook
        raise OptionsError(f"{path} is not a Jupyter notebook: {_unreadable(exc)}",
                           hint="pass an .ipynb file (a Markdown or script notebook converts with "
                           "`jupytext --to ipynb FILE`)") from exc
    if params:
        # A notebook that names no kernel (written by a script) runs on python3, as nbclient would run it.
        language = None
        if kernel_name is None and not (nb.metadata.get("kernelspec") or {}).get("name"):
            kernel_name = DEFAULT_KERNEL
        if (not (nb.metadata.get("kernelspec") or {}).get("language")
                and not (nb.metadata.get("language_info") or {}).get("name")):
            language = "python"
        if not any(PARAMETERS_TAG in (cell.get("metadata", {}).get("tags") or []) for cell in nb.cells):
            print(no_parameters_cell(path, params), file=sys.stderr)
        papermill_log = logging.getLogger("papermill")
        quiet = papermill_log.disabled
        papermill_log.disabled = True  # its "does not contain a cell with tag 'parameters'": ours says more
        try:
            nb = parameterize_notebook(nb, params, kernel_name=kernel_name, language=language)
        finally:
            papermill_log.disabled = quiet
    return cast(nbformat.NotebookNode, nb)


PARAMETERS_TAG = "parameters"  # the tag of the cell papermill injects parameters after


def no_parameters_cell(path: Path, params: dict[str, Any]) -> str:
    """The warning for parameters given to a notebook that has no cell tagged ``parameters``."""
    names = ", ".join(f"-p {name}" for name in params)
    return (f"Warning: {path} has no cell tagged `parameters`: {names} went into a new first cell, as papermill "
            "does, so a cell of the notebook that assigns the same name overrides it.\n"
            "  What to do: tag the cell that sets the defaults `parameters` (JupyterLab: the property inspector's "
            "Cell Tags); parameters are then injected right after it.")


def _unreadable(exc: Exception) -> str:
    """Why nbformat could not read a file, in a few words (its message quotes the start of the file)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "does not appear to be JSON" in text or isinstance(exc, ValueError) and "JSON" in text:
        return "it is not JSON (an .ipynb file is)"
    return text if len(text) <= 120 else text[:117] + "..."


DEFAULT_KERNEL = "python3"

INJECTED_TAG = "injected-parameters"  # the cell papermill writes its parameters into


def injected_parameters(nb: nbformat.NotebookNode, input_path: str | None) -> dict[str, Any]:
    """The parameters papermill injected into ``nb`` in this invocation (for the papermill engine).

    papermill sets ``metadata.papermill.parameters`` (and writes a fresh ``injected-parameters`` cell) only
    when it is given parameters; otherwise both are whatever the input file holds, say an earlier papermill
    output run again. So when the parameters and the injected cell are those of the input file itself,
    nothing was injected now: ``{}``. An injected cell is compared by id and source (papermill's new cell
    has a new id); a file whose cells have no ids (nbformat < 4.5) is compared by source only. An input
    that cannot be read again (stdin) leaves the metadata's parameters."""
    params = dict((nb.metadata.get("papermill") or {}).get("parameters") or {})
    if not params or not input_path or input_path == "-":
        return params
    try:
        original = nbformat.reads(papermill_io.read(input_path), as_version=4)  # as read, before papermill's upgrade
    except Exception:  # gone, unreadable, remote and unreachable: trust the metadata
        return params
    if dict((original.metadata.get("papermill") or {}).get("parameters") or {}) != params:
        return params
    mine, theirs = _injected_cell(nb), _injected_cell(original)
    if mine is None and theirs is None:
        return {}
    if mine is None or theirs is None:
        return params
    same_id = theirs.get("id") is None or theirs.get("id") == mine.get("id")
    return {} if same_id and theirs.source == mine.source else params


def _injected_cell(nb: nbformat.NotebookNode) -> Any:
    return next((c for c in nb.cells if INJECTED_TAG in (c.get("metadata", {}).get("tags") or [])), None)


SECRET_MARK = "<secret "  # a recorded secret parameter: "<secret 1a2b…>", a keyed digest of its value


def recorded_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters as a run records them: a parameter whose name looks like a secret (the secret
    patterns: ``*_KEY``, ``*TOKEN*``…) is replaced by a keyed digest of its value, so runs with the same
    secret still match for resuming, and the secret never reaches the store."""
    from nbdurable.capture.namespace import SecretRules

    rules = SecretRules()
    return {name: _mark(value) if rules.is_secret(name) else value for name, value in params.items()}


def _mark(value: Any) -> str:
    import json

    from nbdurable.store.auth import object_tag

    return f"{SECRET_MARK}{object_tag(json.dumps(value, sort_keys=True, default=str).encode())[:16]}>"


def secrets_from_environment(params: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Recorded parameters with each secret taken back from the environment variable of the same name
    (a resume cannot get it from the store); OptionsError if one is missing or differs."""
    restored = dict(params)
    for name, value in params.items():
        if not (isinstance(value, str) and value.startswith(SECRET_MARK)):
            continue
        import os

        supplied = os.environ.get(name)
        if supplied is None or _mark(parse_value(supplied)) != value:
            raise OptionsError(
                f"run {run_id} was given the secret parameter {name}, which is not stored",
                hint=f"set the environment variable {name} to the same value to resume it (or run the notebook "
                "again with `nbdurable run … -p`)",
            )
        restored[name] = parse_value(supplied)
    return restored
