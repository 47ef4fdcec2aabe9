"""Ambient state: what a cell changes in the interpreter outside its variables.

A restored cell is not executed, so its side effects on the interpreter never happen in the new kernel.
Each *provider* below watches one such piece of state; the extension calls ``Ambient.snapshot()`` before
an executed cell and ``Ambient.changes(before)`` after it, records each change as a pseudo-variable whose
name starts with ``%``, and on restore calls ``Ambient.apply(name, value)``.

Covered (provider name: what is recorded):

- ``%sys.path``: the whole list. ``%cwd``: the working directory (``os.chdir``, ``%cd``).
- ``%os.environ``: set and unset keys; a change that sets a secret-named variable (``*_KEY``, ``*TOKEN*``,
  ``*SECRET*``, ``*PASSWORD*``, or the extension's rule) is ``Unrestorable``: the cell runs again.
- ``%sys.recursionlimit``. ``%warnings``: the whole ``warnings.filters`` list.
- ``%logging``: changed logger levels/propagate/disabled, added and removed handlers (StreamHandlers on
  stdout/stderr, FileHandlers; others ``Unrestorable``), ``logging.disable`` (see ``loggers.py`` for what
  its cheap change signal misses).
- ``%random``, ``%numpy.random`` (the legacy global ``RandomState``), ``%torch.random`` (CPU): the whole
  generator state after the cell, so a resumed run draws what the original run drew next.
- ``%numpy.printoptions``, ``%pandas.options``, ``%matplotlib.rcParams`` (``plt.style.use``, ``mpl.rc``,
  seaborn's ``set_theme``; not ``backend``): the changed keys.

Not covered: state inside objects the user holds (a ``np.random.default_rng()`` or ``torch.Generator`` in a
variable, a figure, an open file, a connection: those are variables, captured or not as such); C-library
globals (BLAS thread counts, ``torch.set_num_threads``, locale, signal handlers, resource limits);
``os.putenv``/``os.unsetenv`` (they bypass ``os.environ``); CUDA/MPS generators; ``sys.modules`` patches
and monkey-patched functions; ``matplotlib.use``; the ``logging`` changes listed in ``loggers.py``;
options of libraries without a provider (a library adds one through the ``nbdurable.ambient`` entry point
group: an object with ``name``, ``module``, ``fingerprint``, ``capture``, ``apply``, a class, or a
zero-argument factory).

Cost (the extension's whole budget is ≤ 0.3 ms per trivial cell): fingerprints are taken twice per cell,
so each must be ~1 µs. Medians of ``timeit`` on the 2-core reference machine (CPython 3.11, numpy 2.4,
pandas 3.1, matplotlib 3.11, torch 2.13 CPU), per fingerprint:

====================== =========== ==================================================================
provider               fingerprint what it reads (instead of)
====================== =========== ==================================================================
%sys.path              0.06 µs     ``tuple(sys.path)``
%cwd                   0.31 µs     ``os.getcwd()`` (a system call)
%os.environ            0.24 µs     ``os.environ._data.copy()``, encoded (+ ~0.5 µs to compare)
%sys.recursionlimit    0.04 µs     ``sys.getrecursionlimit()``
%warnings              0.07 µs     ``tuple(warnings.filters)``
%logging               0.34 µs     a token, whatever the number of loggers (a scan of all: O(n))
%random                0.65 µs     the generator's C struct (``random.getstate()``: 19 µs)
%numpy.random          1.3 µs      two C structs (``np.random.get_state()``: 70 µs)
%numpy.printoptions    0.13 µs     the options' dict in numpy's context variable (``get_printoptions``: 0.5)
%pandas.options        1.75 µs     copies of pandas' 25 option dicts (99 options)
%matplotlib.rcParams   2.1 µs      ``tuple(dict.values(rcParams))``, 339 keys (``dict.copy``: 93 µs)
%torch.random          1.7 µs      ``torch.get_rng_state()`` as bytes (3.2 µs when numpy is not imported)
====================== =========== ==================================================================

Per cell (``snapshot()`` + ``changes()``, nothing changed; ``python -m bench --only ambient``): 7.8 µs
with no third-party library imported (7 providers active) and 24 µs with numpy.random, pandas,
matplotlib.pyplot and logging (200 loggers) imported (11 active) on a quiet machine (an empty call:
0.022 µs); up to 20 µs and 60 µs while other jobs load its 2 cores. The fingerprints alone add up to
~7 µs per snapshot; the rest is the comparisons and the allocations of a fresh snapshot (a cold cache),
not the registry's loop.

Reproduce with ``python -m bench.ambient --per-provider`` (per provider) or ``python -m bench --only
ambient`` (snapshot + changes per cell, against an empty function call in the same run).

Layering: this is ``capture``; it imports the standard library, ``nbdurable.errors`` and nothing else of
nbdurable; a third-party library only when it is already in ``sys.modules`` (``apply`` imports the
provider's module first, since the cell that changed it had imported it).
"""

from nbdurable.capture.ambient.base import AmbientProvider, Unrestorable, default_is_secret
from nbdurable.capture.ambient.registry import ENTRY_POINT_GROUP, Ambient, Snapshot, builtin_providers

__all__ = ["Ambient", "AmbientProvider", "Snapshot", "Unrestorable", "ENTRY_POINT_GROUP", "builtin_providers",
           "default_is_secret"]
