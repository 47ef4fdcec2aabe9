"""Parameters of a headless run, injected the papermill way (a cell after the one tagged ``parameters``)."""

from __future__ import annotations

import keyword
from pathlib import Path
from typing import Any, cast

import nbformat
import yaml
from papermill.iorw import load_notebook_node
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
            raise OptionsError(f"cannot read parameters file {file}: {exc}", hint="pass a YAML mapping, e.g. `lr: 0.01`") from exc
        if not isinstance(loaded, dict):
            raise OptionsError(f"parameters file {file} is not a mapping", hint="write NAME: VALUE lines")
        for name in loaded:
            if not _is_name(name):
                raise OptionsError(f"parameters file {file}: {name!r} is not a valid parameter name",
                                   hint="names are Python identifiers (not keywords), e.g. `learning_rate: 0.1`")
        params.update(loaded)
    for name, value in pairs:
        if not _is_name(name):
            raise OptionsError(f"-p {name}: not a valid parameter name", hint="names are Python identifiers (not keywords), e.g. -p learning_rate 0.1")
        params[name] = parse_value(value)
    return params


def _is_name(name: object) -> bool:
    """True if ``name = value`` in the injected cell assigns a variable (`class` or `1` would be a SyntaxError)."""
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def load_notebook(path: Path, params: dict[str, Any], kernel_name: str | None) -> nbformat.NotebookNode:
    """Read a notebook and inject the parameters (papermill's rules, so papermill users get the same cells)."""
    try:
        nb = load_notebook_node(str(path))  # papermill's loader: the metadata its parameterizer expects
    except FileNotFoundError:
        raise OptionsError(f"no notebook at {path}", hint="check the path") from None
    except Exception as exc:  # nbformat raises many kinds for a file that is not a notebook
        raise OptionsError(f"{path} is not a readable notebook: {exc}", hint="open it in Jupyter to check it") from exc
    if params:
        nb = parameterize_notebook(nb, params, kernel_name=kernel_name)
    return cast(nbformat.NotebookNode, nb)
