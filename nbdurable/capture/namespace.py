"""The state delta of a step: which variables a cell bound, rebound, mutated or deleted.

The tracker remembers, for every variable it has recorded, the identity of its object (``id``), the
object's content key (the serializer's hash, which doubles as the mutation fingerprint) and its
*instance* label: variables that share one object share an instance, so ``b = a`` restores as
``b is a``. After a cell, only the candidate names (see ``names.py``) are examined:

- a name no longer in the namespace that was recorded: deleted;
- an object with a new identity: rebound (checked for aliasing with other recorded names);
- the same identity: unchanged if immutable and not assigned by the cell, otherwise the content key
  is recomputed (buffers are hashed directly) and a new key means an in-place mutation, which is
  recorded for every name that shares the object.

Nothing here writes anything: ``compute_delta`` returns the changes, the runtime persists them, and
``accept`` makes them the new reference once they are durable.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import itertools
import pickle
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from nbdurable.capture.names import CellNames, reachable_globals
from nbdurable.capture.reach import reach
from nbdurable.capture.secrets import SecretRules as _WordRules
from nbdurable.serialization import Serialized, deserialize, deserialize_parts, serialize
from nbdurable.store.auth import object_tag

ABSENT = ""  # the version of a name that is not defined (``runtime/dataflow.py``)
UNKNOWN = "?"  # the version of a value the session cannot vouch for: equal to nothing recorded


# IPython's own history and shell variables: never state of the user's.
_IPYTHON_NAMES = frozenset({"In", "Out", "_oh", "_ih", "_dh", "exit", "quit", "get_ipython", "_sh"})
_HISTORY_NAME = re.compile(r"^(_+|_i+|_i\d+|_\d+)$")

# Objects of these types cannot change without being rebound: identity alone tells if they changed.
_IMMUTABLE_TYPES: tuple[type, ...] = (
    int, float, complex, str, bytes, bool, type(None), range, types.ModuleType,
    types.FunctionType, types.BuiltinFunctionType,
)  # fmt: skip


# Libraries that act on an implicit current object: a cell using the module may change the variables holding
# objects of these modules (``NamespaceTracker._implicit``).
_IMPLICIT_CURRENT = {"matplotlib.pyplot": "matplotlib.", "pylab": "matplotlib."}


@dataclass
class Binding:
    """What the tracker last recorded for one variable."""

    obj_id: int
    key: str
    instance: str
    immutable: bool
    volatile: bool = False  # the key names this object in this process only (an unstorable, non-secret value)
    settled: bool = True  # False for a restored object until its own key is known (see ``settle``)
    alt_key: str | None = None  # the restored object's own key, when its stored form keys differently


class Bindings(dict[str, Binding]):
    """The tracker's bindings by variable name, with the names bound to each object id (``by_object``), so
    that finding another variable recorded for the same object costs a lookup, not a pass over every
    variable of the notebook (which made each new variable cost more than the last). Change it only with
    ``[]=``, ``del``, ``pop`` and ``clear``."""

    def __init__(self) -> None:
        super().__init__()
        self.by_object: dict[int, dict[str, None]] = {}  # names in the order they were bound

    def __setitem__(self, name: str, binding: Binding) -> None:
        old = self.get(name)
        if old is not None and old.obj_id != binding.obj_id:
            self._unindex(name, old.obj_id)
        super().__setitem__(name, binding)
        self.by_object.setdefault(binding.obj_id, {})[name] = None

    def __delitem__(self, name: str) -> None:
        self._unindex(name, self[name].obj_id)
        super().__delitem__(name)

    def pop(self, name: str, *default: Any) -> Any:
        if name in self:
            self._unindex(name, self[name].obj_id)
        return super().pop(name, *default)

    def clear(self) -> None:
        super().clear()
        self.by_object.clear()

    def _unindex(self, name: str, obj_id: int) -> None:
        names = self.by_object.get(obj_id)
        if names is not None:
            names.pop(name, None)
            if not names:
                del self.by_object[obj_id]


@dataclass
class Change:
    """One entry of a step's state delta."""

    name: str
    op: str  # "set" | "del"
    serialized: Serialized | None = None
    instance: str | None = None
    obj_id: int = 0
    immutable: bool = False
    inert: bool = False  # nothing worth restoring (a closed file): resume neither loads nor rebuilds it


class SecretRules(_WordRules):
    """Names whose values are never written to disk (``capture/secrets.py``), and literals assigned to them
    blanked in the source the journal keeps."""

    def redact_source(self, text: str) -> str:
        """A cell's source as journaled: a secret assigned a literal (``API_KEY = "sk-…"``, papermill's
        injected parameters) is replaced by ``REDACTED``; the cell's identity (its hash) uses the real text."""
        if "=" not in text:
            return text
        lines = text.split("\n")
        for i, line in enumerate(lines):
            match = _LITERAL_ASSIGNMENT.match(line)
            if match is None or not self.is_secret(match.group(2)):
                continue
            try:
                ast.literal_eval(match.group(4))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue  # an expression (os.environ[...]): nothing secret in the text itself
            lines[i] = f"{match.group(1)}{match.group(2)}{match.group(3)}{REDACTED!r}"
        return "\n".join(lines)


REDACTED = "<secret: not stored>"
_LITERAL_ASSIGNMENT = re.compile(r"^(\s*)([A-Za-z_]\w*)(\s*(?::[^=]*)?=\s*)(\S.*?)\s*$")


def is_shell_name(name: str) -> bool:
    """IPython history/shell variables and dunders: never recorded."""
    return name in _IPYTHON_NAMES or bool(_HISTORY_NAME.match(name)) or (name.startswith("__") and name.endswith("__"))


class NamespaceTracker:
    """Computes state deltas of a namespace, looking only at what each cell touched."""

    def __init__(
        self,
        namespace: dict[str, Any],
        *,
        secrets: SecretRules | None = None,
        hidden: Callable[[str], bool] = lambda name: False,
        instance_prefix: str = "i",
    ) -> None:
        self.namespace = namespace
        self.secrets = secrets or SecretRules()
        self._hidden = hidden
        self.bindings = Bindings()
        self.instance_prefix = instance_prefix
        self._counter = itertools.count(1)
        self._shared: dict[int, tuple[str, str, Any]] | None = None  # this cell's, see ``_shared_map``
        self._cell_objs: dict[int, tuple[str, str, Any]] = {}  # objects this cell changed: (instance, key, obj)
        self._groups: dict[str, tuple[str, ...]] = {}  # this cell's groups of mutually reaching variables
        self._cell_reach: dict[int, set[int]] = {}  # this cell's reach of each candidate's object, by identity
        self._group_cache: dict[tuple[str, ...], Serialized] = {}
        self._live: dict[tuple[str, str], Any] = {}  # (instance, key) -> object, for a check's trial load
        self._reach: dict[str, set[int]] = {}  # recorded name -> identities its object reaches (``reach.py``)
        self._holders: dict[int, set[str]] = {}  # identity -> recorded names whose objects reach it

    def ignored(self, name: str) -> bool:
        """Names that are not user state."""
        return is_shell_name(name) or self._hidden(name)

    def snapshot_keys(self) -> set[str]:
        """The namespace's names, for the rare cell that needs a full scan (``import *``, ``%run``)."""
        return set(self.namespace)

    def candidates(self, names: CellNames, before: set[str] | None = None) -> tuple[set[str], set[str]]:
        """(names the cell may have assigned or deleted, names it only read)."""
        stored = set(names.stored) | reachable_globals(names.loaded, self.namespace)
        if names.needs_full_scan and before is not None:
            after = set(self.namespace)
            stored |= after - before
            stored |= {n for n in before - after if n in self.bindings}
        loaded = set(names.loaded) - stored
        return stored, loaded | (self.related(stored | loaded) - stored) | (self._implicit(names.loaded) - stored)

    def _implicit(self, loaded: Iterable[str]) -> set[str]:
        """Recorded variables a library changes through its own current object: a cell calling pyplot
        (``plt.title(...)`` draws on the current axes) may change any figure or axes a variable holds."""
        prefixes = {_IMPLICIT_CURRENT[m.__name__] for n in loaded
                    if isinstance(m := self.namespace.get(n), types.ModuleType) and m.__name__ in _IMPLICIT_CURRENT}
        if not prefixes:
            return set()
        return {name for name in self.bindings if name in self.namespace
                and type(self.namespace[name]).__module__.startswith(tuple(prefixes))}

    def related(self, names: set[str]) -> set[str]:
        """Recorded variables whose objects share mutable state with these names' objects (a view's base, a
        wrapper's or a container's member, reached either way): a cell may change them without naming them."""
        if not self._holders:
            return set()
        touched: set[int] = set()
        for name in names:
            if name in self.namespace and not self.ignored(name):
                touched |= reach(self.namespace[name])
            touched |= self._reach.get(name, set())
        found: set[str] = set()
        for ident in touched:
            found |= self._holders.get(ident, set())
        return found - names

    def _note_reach(self, name: str, obj: Any = None, *, gone: bool = False) -> None:
        for ident in self._reach.pop(name, ()):
            holders = self._holders.get(ident)
            if holders is not None:
                holders.discard(name)
                if not holders:
                    del self._holders[ident]
        if gone or isinstance(obj, _IMMUTABLE_TYPES):
            return
        idents = reach(obj)
        self._reach[name] = idents
        for ident in idents:
            self._holders.setdefault(ident, set()).add(name)

    def compute_delta(self, names: CellNames, *, before: set[str] | None = None,
                      no_state: bool = False) -> list[Change]:
        """The changes a cell made to the namespace, by the rules in the module docstring."""
        stored, loaded = self.candidates(names, before)
        changes: dict[str, Change] = {}
        by_instance: dict[str, Serialized] = {}
        seen: dict[int, str] = {}  # id -> instance of objects examined in this cell (`a = []; b = a`)
        self._shared, self._cell_objs, self._live, self._group_cache = None, {}, {}, {}
        # What others contain or view is examined first, so their new keys are known when they are referenced.
        reaches = {n: reach(self.namespace[n]) if n in self.namespace else set() for n in stored | loaded}
        self._cell_reach = {id(self.namespace[n]): r for n, r in reaches.items() if n in self.namespace}
        self._groups = self._mutual_groups(reaches, no_state)
        for name in sorted(stored | loaded, key=lambda n: (len(reaches[n]), n)):
            if self.ignored(name) or name in changes:
                continue
            change = self._examine(name, assigned=name in stored, no_state=no_state, by_instance=by_instance, seen=seen)
            if change is not None:
                changes[name] = change
                s = change.serialized
                if change.op == "set" and s is not None and s.format != "unrestorable":
                    self._cell_objs[change.obj_id] = (change.instance or "", s.key, self.namespace[name])
                if change.op == "set" and name in self.bindings and change.obj_id == self.bindings[name].obj_id:
                    self._propagate_mutation(change, changes)
        return [changes[name] for name in sorted(changes)]  # recorded (and restored) in name order, as ever

    def _mutual_groups(self, reaches: dict[str, set[int]], no_state: bool) -> dict[str, tuple[str, ...]]:
        """Variables whose objects reach each other (a figure and its axes, two lists holding each other):
        stored together, as one pickle, so that each comes back holding the other's very object."""
        if no_state:
            return {}
        ns = self.namespace
        names = [n for n in reaches if n in ns and len(reaches[n]) > 1 and not self.ignored(n)
                 and not self.secrets.is_secret(n) and not isinstance(ns[n], _IMMUTABLE_TYPES)]
        parent = {n: n for n in names}

        def find(n: str) -> str:
            while parent[n] != n:
                n = parent[n]
            return n

        for i, x in enumerate(names):
            for y in names[i + 1:]:
                if id(ns[x]) != id(ns[y]) and id(ns[y]) in reaches[x] and id(ns[x]) in reaches[y]:
                    parent[find(x)] = find(y)
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(find(n), []).append(n)
        return {n: tuple(sorted(g)) for g in groups.values() if len(g) > 1 for n in g}

    def _shared_map(self) -> dict[int, tuple[str, str, Any]]:
        """id -> (instance, key, object) of the recorded variables' objects as they are now (built once a cell,
        when an object that reaches others is serialized)."""
        if self._shared is None:
            self._shared = {}
            for name, binding in self.bindings.items():
                obj = self.namespace.get(name)
                if obj is not None and id(obj) == binding.obj_id and not binding.volatile and not binding.immutable \
                        and not name.startswith("%"):
                    self._shared[binding.obj_id] = (binding.instance, binding.key, obj)
        return self._shared

    def _examine(
        self, name: str, *, assigned: bool, no_state: bool, by_instance: dict[str, Serialized], seen: dict[int, str]
    ) -> Change | None:
        binding = self.bindings.get(name)
        if name not in self.namespace:
            return Change(name, "del") if binding is not None else None
        obj = self.namespace[name]
        immutable = isinstance(obj, _IMMUTABLE_TYPES)
        same_object = binding is not None and binding.obj_id == id(obj)
        if same_object and immutable and not assigned:
            return None
        if same_object and binding is not None:
            instance = binding.instance
        else:
            instance = seen.get(id(obj)) or self._alias_instance(name, obj)
        seen[id(obj)] = instance
        serialized = self._serialize(name, obj, no_state=no_state, instance=instance, by_instance=by_instance)
        if same_object and binding is not None and serialized.key in (binding.key, binding.alt_key):
            return None
        return Change(name, "set", serialized, instance, id(obj), immutable, inert=_is_inert(obj))

    def _serialize(self, name: str, obj: Any, *, no_state: bool, instance: str,
                   by_instance: dict[str, Serialized]) -> Serialized:
        if instance in by_instance:
            return by_instance[instance]
        if _is_inert(obj):
            result = Serialized.unrestorable(obj, "a closed file: nothing to restore")
        elif self.secrets.is_secret(name):
            result = secret_marker(obj)
        elif no_state:
            result = Serialized.unrestorable(obj, "not stored: the cell is marked %%durable --no-state")
        elif name in self._groups:
            result = self._serialize_group(name, obj)
        else:
            shared = self._shared_for(obj, instance)
            result = _verified(obj, serialize(obj, namespace=self.namespace, shared=shared), self.namespace, self._live)
        by_instance[instance] = result
        return result

    def _serialize_group(self, name: str, obj: Any) -> Serialized:
        """A member of a group of variables reaching each other: the group pickled once, as ``{name: obj}``;
        each member's record names itself (``member``) and carries its own type."""
        members = self._groups[name]
        group = self._group_cache.get(members)
        if group is None:
            objects = {n: self.namespace[n] for n in members}
            shared = {}
            for n in members:
                shared.update(self._shared_for(self.namespace[n], "") or {})
            for n in members:  # the members themselves are stored in the group, not referenced
                shared.pop(id(self.namespace[n]), None)
            group = _verified(objects, serialize(objects, namespace=self.namespace, shared=shared or None),
                              self.namespace, self._live)
            self._group_cache[members] = group
        if group.format == "unrestorable":
            return Serialized.unrestorable(obj, group.reason or "it cannot be pickled")
        member = copy.copy(group)
        member.member = name
        member.type_name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        return member

    def _shared_for(self, obj: Any, instance: str) -> dict[int, tuple[str, str]] | None:
        """The other variables' objects ``obj`` reaches (its members, what it views), as references; None when
        it reaches nothing (an int, a plain array)."""
        reached = self._cell_reach.get(id(obj)) or reach(obj)  # computed once a cell (compute_delta)
        if len(reached) <= 1:
            return None
        recorded, changed = self._shared_map(), self._cell_objs  # changed in this cell: their new keys
        shared: dict[int, tuple[str, str]] = {}
        for i in reached:
            entry = changed.get(i) or recorded.get(i)
            if entry is not None and i != id(obj) and entry[0] != instance:
                shared[i] = (entry[0], entry[1])
                self._live[shared[i]] = entry[2]
        return shared or None

    def _alias_instance(self, name: str, obj: Any) -> str:
        """The instance label of another recorded variable bound to this very object, else a new one."""
        for other in self.bindings.by_object.get(id(obj), ()):
            if other != name and self.namespace.get(other) is obj:
                return self.bindings[other].instance
        return f"{self.instance_prefix}{next(self._counter)}"

    def _propagate_mutation(self, change: Change, changes: dict[str, Change]) -> None:
        """An object mutated in place changes every variable that shares it."""
        for other, binding in self.bindings.items():
            if other in changes or binding.instance != change.instance:
                continue
            if self.namespace.get(other) is not None and id(self.namespace[other]) == change.obj_id:
                changes[other] = Change(
                    other, "set", change.serialized, change.instance, change.obj_id, change.immutable, change.inert
                )

    def accept(self, changes: Iterable[Change]) -> None:
        """Make durable changes the new reference for later comparisons."""
        for change in changes:
            if change.name.startswith("%"):
                continue  # interpreter state (kernel_ext/interpreter.py): no variable to compare later
            if change.op == "del":
                self.bindings.pop(change.name, None)
                self._note_reach(change.name, gone=True)
            elif change.serialized is not None and change.instance is not None:
                s = change.serialized
                volatile = s.format == "unrestorable" and not (s.reason or "").startswith("secret")
                self.bindings[change.name] = Binding(change.obj_id, s.key, change.instance, change.immutable, volatile)
                obj = self.namespace.get(change.name)
                self._note_reach(change.name, obj, gone=obj is None or id(obj) != change.obj_id)

    def adopt(self, name: str, obj: Any, *, key: str, instance: str) -> None:
        """Record a restored variable as known, so an untouched restored object is never re-stored."""
        immutable = isinstance(obj, _IMMUTABLE_TYPES)
        self.bindings[name] = Binding(id(obj), key, instance, immutable, settled=immutable)
        self._note_reach(name, obj)

    def settle(self, names: Iterable[str], *, everything: bool = False) -> None:
        """Before a cell that may change these variables runs: learn the key of each restored object among them
        as it is now. A restored object does not always serialize to the bytes it was stored from (a pickle
        round trip can reorder a dict, a DataFrame's index can come back as another type): its own key is then
        an alternative key of the same value, so a cell that only reads it does not record it as changed (and
        the cells reading it after that are not taken for readers of a changed value). Costs one
        serialization of each restored object, the first time an executing cell may touch it."""
        pending = [n for n, b in self.bindings.items() if not b.settled] if everything else names
        for name in pending:
            binding = self.bindings.get(name)
            if binding is None or binding.settled:
                continue
            binding.settled = True
            obj = self.namespace.get(name)
            if obj is None or id(obj) != binding.obj_id:
                continue
            try:
                key = serialize(obj, namespace=self.namespace).key
            except Exception:  # it will be examined (and reported) after the cell like any object
                continue
            if key != binding.key:
                binding.alt_key = key

    def version(self, name: str) -> str:
        """The version of a variable's value as this session knows it (``runtime/dataflow.py``): the content
        key recorded when a cell last changed or restored it, ``ABSENT`` if it is not defined, ``UNKNOWN`` if
        the name holds another object than the one recorded (bound outside any recorded cell) or one whose
        key is only valid in this process. Never hashes anything."""
        if name not in self.namespace:
            return ABSENT
        binding = self.bindings.get(name)
        if binding is None or binding.volatile or id(self.namespace[name]) != binding.obj_id:
            return UNKNOWN
        return binding.key

    def forget(self, name: str) -> None:
        """Drop a variable from the reference (it was deleted by a restore)."""
        self.bindings.pop(name, None)
        self._note_reach(name, gone=True)

    def reset(self) -> None:
        """Forget everything: the next touch of each variable records it again (a fresh run)."""
        self.bindings.clear()
        self._reach.clear()
        self._holders.clear()


SECRET_REASON = "secret: never written to disk (matches the secret patterns or %durable exclude)"


def secret_marker(obj: Any) -> Serialized:
    """A secret's record: never its value, but a key that is a keyed digest (HMAC under the user's key) of its
    pickled value when it has one, so an equal secret bound again is no change and a re-executed cell that
    yields the same secret is known to (what a cell reading it computed still holds)."""
    marker = Serialized.unrestorable(obj, SECRET_REASON)
    try:
        data = pickle.dumps(obj, protocol=5)
    except Exception:  # whatever pickling raises: keyed by identity, as any unrestorable object
        return marker
    if len(data) <= _SECRET_DIGEST_MAX:
        marker.key = object_tag(data)[:32]
    return marker


_SECRET_DIGEST_MAX = 1 << 20


# Pickles of up to this many bytes (besides their big out-of-band buffers, given as views of the live memory)
# are loaded back once when stored: an object that pickles but does not unpickle
# (bokeh figures, objects whose __setstate__ expects what __getstate__ did not give) is then recorded as not
# stored, with the real reason, and its cell runs again on resume instead of failing the restore.
VERIFY_MAX_BYTES = 256 * 1024
_PLAIN = (int, float, complex, str, bytes, bool, type(None))


def _verified(obj: Any, result: Serialized, namespace: dict[str, Any],
              live: dict[tuple[str, str], Any] | None = None) -> Serialized:
    """``result``, or an unrestorable marker when the stored pickle of ``obj`` does not load back. What is
    loaded is the pickle's own bytes, up to VERIFY_MAX_BYTES of them; its big buffers (an estimator's arrays)
    are given as views of the live memory, so a 1 GB model with a small pickle is checked as cheaply."""
    chunked = result.chunked() if result.format == "pickle" else None
    head = chunked.head() if chunked is not None else None
    if result.format != "pickle" or isinstance(obj, _PLAIN) or \
            (len(head) if head is not None else result.size) > VERIFY_MAX_BYTES:
        return result
    try:
        refs = list(result.refs)
        resolve = (lambda i: (live or {})[refs[i]]) if refs else None
        with _pyplot_untouched():
            if chunked is not None and head is not None:
                buffers = [memoryview(chunked.chunks[i]).cast("B") for i in chunked.buffers]
                deserialize_parts("pickle", head, buffers, format_version=result.format_version,
                                  namespace=dict(namespace), resolve=resolve)
            else:
                deserialize("pickle", bytearray(result.to_bytes()), format_version=result.format_version,
                            namespace=dict(namespace), resolve=resolve)
    except Exception as exc:  # whatever unpickling raises: the object cannot come back from its pickle
        return Serialized.unrestorable(obj, f"it pickles, but the pickle does not load back ({_cause(exc)})")
    return result


@contextlib.contextmanager
def _pyplot_untouched() -> Iterator[None]:
    """Loading a matplotlib figure back registers it with pyplot and makes it the current figure (its
    ``__setstate__`` does): the trial load of a check must leave pyplot's figures, and which is current, as
    the cell left them (``plt.title`` in the next cell must still draw on the cell's own axes)."""
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    figures = getattr(getattr(helpers, "Gcf", None), "figs", None)
    saved = list(figures.items()) if figures is not None else None
    try:
        yield
    finally:
        if figures is not None and saved is not None and list(figures.items()) != saved:
            figures.clear()
            figures.update(saved)  # the same managers in the same order: the last one is current again


def _cause(exc: BaseException) -> str:
    """The original error under nbdurable's RestoreError wrapping."""
    inner = exc.__cause__ or exc
    return f"{type(inner).__name__}: {str(inner)[:300]}"


def _is_inert(obj: Any) -> bool:
    """Objects with no state worth restoring or rebuilding: a closed file (``with open(...) as f``)."""
    return isinstance(obj, io.IOBase) and obj.closed
