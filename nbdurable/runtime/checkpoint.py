"""Turning state deltas into durable variable references, and references back into objects.

Small payloads are inlined in the step's journal record (one fdatasync commits them with the step);
larger ones become content-addressed object files written before the record that refers to them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import xxhash

from nbdurable.capture.namespace import Change
from nbdurable.errors import AuthenticationError, ChangedDuringWriteError, NbdurableError, RestoreError, StoreError
from nbdurable.runtime import deltas, frames
from nbdurable.serialization import deserialize
from nbdurable.store import Store
from nbdurable.store.records import VarRef

DEFAULT_INLINE_MAX = 32 * 1024
MISSING = object()  # what ObjectLoader.lookup returns when the namespace holds no such object
OUTPUT_INLINE_MAX = 256 * 1024
PAYLOAD_FORMATS = ("pickle", "ndarray", "parquet")


def persist_changes(store: Store, changes: Iterable[Change], *, inline_max: int = DEFAULT_INLINE_MAX) -> list[VarRef]:
    """Write the payloads of a delta (objects first) and return the variable references to journal."""
    refs: list[VarRef] = []
    inlined: dict[str, str] = {}
    for change in changes:
        if change.op == "del" or change.serialized is None:
            refs.append({"name": change.name, "op": "del"})
            continue
        s = change.serialized
        ref: VarRef = {
            "name": change.name,
            "op": "set",
            "object": s.key,
            "format": s.format,
            "format_version": s.format_version,
            "type": s.type_name,
            "size": s.size,
            "instance": change.instance,
            "module": s.module,
            "reason": s.reason,
        }
        if change.inert:
            ref["inert"] = True
        if s.origin:
            ref["origin"] = s.origin
        if s.refs:
            ref["refs"] = [list(r) for r in s.refs]  # other variables it holds or views: (instance, key)
        if s.member:
            ref["member"] = s.member  # stored with the variables it reaches and that reach it: {name: obj}
        if s.has_payload:
            if s.size <= inline_max:
                if s.key not in inlined:
                    inlined[s.key] = base64.b64encode(s.to_bytes()).decode("ascii")
                ref["inline"] = inlined[s.key]
            else:
                try:
                    fields = frames.write(store, s) or deltas.write(store, change.name, s)
                    if fields is None:
                        ref["size"], ref["tag"] = store.write_object(s.key, s.write)
                    else:
                        ref.update(fields)  # type: ignore[typeddict-item]  # size, tag, pieces or delta
                except StoreError as exc:
                    if isinstance(exc, ChangedDuringWriteError):
                        raise  # the committer records that step as not durable itself
                    # The store's message names the object file; the user knows the variable.
                    raise type(exc)(f"variable `{change.name}` ({s.type_name}, {s.size} bytes) was not saved: "
                                    f"{exc.message}", hint=exc.hint) from exc
        refs.append(ref)
    return refs


class ObjectLoader:
    """Loads variable references, giving one Python object per (instance, content) so aliases stay aliases."""

    def __init__(self, store: Store, namespace: dict[str, Any],
                 lookup: Callable[[str, str], Any] | None = None) -> None:
        self.store = store
        self.namespace = namespace
        self._cache: dict[tuple[str | None, str | None], Any] = {}
        self._pending: dict[tuple[str, str], VarRef] = {}
        # (instance, key) -> the object the namespace holds with that content, or MISSING (``refs``)
        self.lookup = lookup

    def expect(self, refs: Iterable[VarRef]) -> None:
        """The references about to be loaded together (one step's delta): an object referring to another
        variable's object (``refs``) is given the one loaded for it, whichever is loaded first."""
        self._pending = {(str(r.get("instance")), str(r.get("object"))): r for r in refs if r.get("op") == "set"}

    def load(self, ref: VarRef, *, step_label: str) -> Any:
        """The object a reference describes. Raises RestoreError naming the variable and its step."""
        if ref.get("format") == "unrestorable":
            raise RestoreError(
                f"Variable `{ref['name']}` ({ref.get('type')}) from {step_label} was not stored: {ref.get('reason')}.",
                hint="its cell is re-executed on resume; mark that cell `%%durable --always` if it must always run.",
            )
        cache_key = (ref.get("instance"), ref.get("object") or ref.get("module"))
        if cache_key in self._cache:
            return self._cache[cache_key]
        group_key = ("group", ref.get("object")) if ref.get("member") else None
        if group_key in self._cache:  # another member of its group was loaded: the group's objects are shared
            obj = self._cache[group_key][ref["member"]]
            self._cache[cache_key] = obj
            return obj
        try:
            resolve = self._resolver(ref, step_label) if ref.get("refs") else None
            if ref.get("frame"):
                obj = frames.load(self.store, dict(ref))
            elif ref.get("delta"):
                obj = deltas.load(self.store, dict(ref), self.namespace, resolve)
            else:
                obj = deserialize(
                    str(ref.get("format")),
                    self._payload(ref),
                    format_version=int(ref.get("format_version") or 1),
                    module=ref.get("module"),
                    namespace=self.namespace,
                    resolve=resolve,
                )
        except NbdurableError as exc:
            key = getattr(exc, "object_key", None) or (  # a delta names the part that failed
                str(ref["object"]) if ref.get("inline") is None and ref.get("format") in PAYLOAD_FORMATS else None)
            what = exc.message if key is None or key in exc.message else f"object {key}: {exc.message}"
            err = type(exc)(
                f"Cannot restore variable `{ref['name']}` ({ref.get('type')}) from {step_label}: {what}",
                hint=exc.hint or "run `nbdurable check` on the store; `%durable new` starts a fresh run.",
            )
            err.object_key = key  # type: ignore[attr-defined]  # the object file that failed to load, if any
            raise err from exc
        if group_key is not None:
            if not isinstance(obj, dict) or ref["member"] not in obj:
                raise RestoreError(f"Cannot restore variable `{ref['name']}` from {step_label}: its group of "
                                   "variables stored together does not hold it",
                                   hint="its cell runs its own code instead.")
            self._cache[group_key], obj = obj, obj[ref["member"]]
        self._cache[cache_key] = obj
        deltas.remember(self.store, str(ref["name"]), dict(ref))  # the next version of it is compared with this
        return obj

    def _resolver(self, ref: VarRef, step_label: str) -> Callable[[int], Any]:
        """How a pickle's references to other variables' objects are found: the object the namespace already
        holds with that content, else the one loaded (or about to be) for that variable in this restore."""
        targets = [(str(instance), str(key)) for instance, key in ref.get("refs") or []]

        def resolve(index: int) -> Any:
            instance, key = targets[index]
            if (instance, key) in self._cache:
                return self._cache[(instance, key)]
            if self.lookup is not None and (found := self.lookup(instance, key)) is not MISSING:
                return found
            if (pending := self._pending.get((instance, key))) is not None:
                return self.load(pending, step_label=step_label)
            raise RestoreError(
                f"`{ref['name']}` holds another variable's object (instance {instance}), which is not restored here",
                hint="its cell runs its own code instead.",
            )

        return resolve

    def _payload(self, ref: VarRef) -> bytearray | memoryview | None:
        if ref.get("inline") is not None:
            return bytearray(base64.b64decode(str(ref["inline"])))
        if ref.get("object") and ref.get("format") in PAYLOAD_FORMATS:
            return self.store.read_object(str(ref["object"]), _tag(ref))
        return None


def persist_outputs(store: Store, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outputs as journaled: small ones inline, big ones (images, large HTML) as object files."""
    kept: list[dict[str, Any]] = []
    for output in outputs:
        if output.get("output_type") == "object":
            kept.append(output)
            continue
        data = json.dumps(output, separators=(",", ":")).encode()
        if len(data) <= OUTPUT_INLINE_MAX:
            kept.append(output)
            continue
        key = xxhash.xxh3_128_hexdigest(b"output:" + data)
        _, tag = store.write_object(key, _writer(data))
        kept.append({"output_type": "object", "object": key, "tag": tag})
    return kept


def _tag(ref: Any) -> str:
    """The authentication tag a record keeps for an object file (AuthenticationError if it has none)."""
    tag = ref.get("tag")
    if not isinstance(tag, str):
        raise AuthenticationError(
            f"the record referring to object {ref.get('object')} carries no authentication tag: it is not loaded",
            hint="the store was written by another tool or damaged; run `nbdurable check`",
        )
    return tag


def _writer(data: bytes) -> Callable[[BinaryIO], int | None]:
    return lambda f: f.write(data)


def load_outputs(store: Store, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outputs as nbformat dicts, with big ones read back from their object files."""
    loaded: list[dict[str, Any]] = []
    for output in outputs:
        if output.get("output_type") == "object":
            output = json.loads(bytes(store.read_object(str(output["object"]), _tag(output))))
        loaded.append(output)
    return loaded
