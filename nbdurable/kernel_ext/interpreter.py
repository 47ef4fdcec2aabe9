"""Interpreter state outside variables, as pseudo-variables of a cell's state delta.

A restored cell is not executed, so whatever it did to the interpreter besides binding variables would be
lost. Three sources, each recorded as a pseudo-variable whose name starts with ``%`` (never a Python name),
stored and versioned like any variable (its content key is its version) and applied when the cell is
restored, in ``apply_order``: where imports look (``sys.path``, the working directory, the environment)
before the cell's variables, so a local module imports as it did; everything else after them, so what an
import configures (a library adding a logging handler or a warnings filter) is overridden as the cell left it:

- **ambient state** (``capture/ambient``): RNG states, warnings filters, rcParams, library options, the
  environment, ``sys.path``, the working directory, logging, the recursion limit — fingerprinted before the
  cell, compared after it, only what changed is captured (``%random``, ``%sys.path``, …);
- **module attributes** the cell assigned (``capture/module_attrs.py``): ``%setattr:<module>.<name>``;
- **state magics** the cell ran (``%matplotlib inline``, ``%config …``, ``%load_ext …``): ``%magic:<name>``,
  the argument lines in order, run again on restore.

A change that cannot be stored (a secret environment variable, a logging handler of an unknown kind) is
recorded as unrestorable: the cell then re-executes on resume, as for an unpicklable variable.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from nbdurable.capture import module_attrs
from nbdurable.capture.ambient import Ambient, Snapshot, Unrestorable
from nbdurable.capture.names import CellNames
from nbdurable.capture.namespace import Change
from nbdurable.errors import RestoreError
from nbdurable.serialization import Serialized, serialize

MAGIC_PREFIX = "%magic:"


_BEFORE_VARIABLES = frozenset({"%sys.path", "%cwd", "%os.environ"})


def is_pseudo(name: str) -> bool:
    """Whether a recorded name is interpreter state rather than a variable."""
    return name.startswith("%")


def apply_order(name: str) -> int:
    """Sort key of a step's recorded names when restoring: 0 before the variables, 1 variables, 2 after."""
    if not is_pseudo(name):
        return 1
    return 0 if name in _BEFORE_VARIABLES else 2


@dataclass
class Before:
    """What the interpreter looked like before an executed cell (only what its changes are compared with)."""

    ambient: Snapshot
    attributes: dict[tuple[str, ...], int | None]


class InterpreterState:
    """The pseudo-variables of one shell: taken around executed cells, applied for restored ones."""

    def __init__(self, shell: Any, ambient: Ambient) -> None:
        self.shell = shell
        self.ambient = ambient
        self._counter = itertools.count(1)

    def before(self, names: CellNames) -> Before:
        """Fingerprints before a cell runs (cheap: see ``capture/ambient`` for the figures)."""
        attrs = module_attrs.before(self.shell.user_ns, names.attribute_stores) if names.attribute_stores else {}
        return Before(self.ambient.snapshot(), attrs)

    def changes(self, before: Before, names: CellNames, instance_prefix: str) -> list[Change]:
        """The cell's changes to the interpreter, as state-delta entries (ambient, attributes, magics)."""
        # Recorded (and, after the variables, applied) in this order: magics first (``%matplotlib inline`` may
        # reset what a style set after it), then the ambient state they and the code left, then attributes.
        magics: dict[str, list[str]] = {}
        for magic, line in names.magics:
            magics.setdefault(magic, []).append(line)
        found: list[tuple[str, object]] = [(f"{MAGIC_PREFIX}{magic}", lines) for magic, lines in magics.items()]
        found += self.ambient.changes(before.ambient)
        if before.attributes:
            found += module_attrs.changes(self.shell.user_ns, before.attributes)
        return [self._change(name, value, instance_prefix) for name, value in found]

    def _change(self, name: str, value: object, instance_prefix: str) -> Change:
        serialized = (Serialized.unrestorable(value, value.reason) if isinstance(value, Unrestorable)
                      else serialize(value))
        instance = f"{instance_prefix}{name}:{next(self._counter)}"
        return Change(name, "set", serialized, instance, id(value), immutable=True)

    def apply(self, name: str, value: Any) -> None:
        """Re-create a recorded change in this interpreter. Raises RestoreError naming what failed."""
        try:
            if module_attrs.is_module_attr(name):
                module_attrs.apply(name, value)
            elif name.startswith(MAGIC_PREFIX):
                for line in value:
                    self.shell.run_line_magic(name[len(MAGIC_PREFIX):], line)
            else:
                self.ambient.apply(name, value)
        except RestoreError:
            raise
        except Exception as exc:
            raise RestoreError(
                f"could not restore {name} ({type(exc).__name__}: {exc})",
                hint="the cell that changed it runs its own code instead.",
            ) from exc
