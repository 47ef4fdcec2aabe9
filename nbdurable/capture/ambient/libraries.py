"""Providers of third-party libraries' global state: numpy's global generator and print options, pandas
options, matplotlib's rcParams, torch's CPU generator. Each is active only while its library is in
``sys.modules``; none imports its library (``apply`` excepted: the registry imports it first)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

from nbdurable.capture.ambient.base import reads_state, same, struct_reader


def _diff(before: dict[str, Any], after: dict[str, Any], default: Callable[[str], Any]) -> dict[str, Any]:
    """The keys of ``after`` whose value is not the one of ``before`` (or ``default(key)`` when absent)."""
    return {k: v for k, v in after.items() if not same(before[k] if k in before else default(k), v)}


_ABSENT = object()


class NumpyRandomProvider:
    """numpy's global generator, behind ``np.random.seed``/``rand``/…: ``np.random.get_state(legacy=False)``
    (the bit generator's state plus the legacy cached Gaussian), applied with ``set_state`` (after
    ``set_bit_generator`` when the recorded bit generator is another kind).

    ``get_state`` costs ~70 µs: the fingerprint reads the C structs of the ``RandomState`` (holds
    ``has_gauss``/``gauss``) and of its bit generator (holds the state inline: MT19937's 624 words), two
    memcpys, once that read is checked on a private instance of the same bit generator; else ``get_state``.
    Generators from ``np.random.default_rng()`` are objects in variables: captured as variables."""

    name = "%numpy.random"
    module: str | None = "numpy.random"

    def __init__(self) -> None:
        self._read = struct_reader()
        self._checked: dict[type, bool] = {}

    @staticmethod
    def _global() -> Any:
        return sys.modules["numpy.random"].mtrand._rand

    def _fast(self, rs: Any) -> tuple[Any, bytes, bytes]:
        read, bitgen = self._read, rs._bit_generator
        assert read is not None
        return (bitgen, read(rs, type(rs).__basicsize__), read(bitgen, type(bitgen).__basicsize__))

    def _trusted(self, kind: type) -> bool:
        ok = self._checked.get(kind)
        if ok is None:
            ok = False
            try:
                probe = type(self._global())(kind(12345)) if self._read is not None else None
            except Exception:  # a bit generator of the user's that takes no seed
                probe = None
            if probe is not None:
                ok = reads_state(lambda: self._fast(probe)[1:], probe.standard_normal,
                                 lambda: probe.get_state(legacy=False), probe.set_state)
            self._checked[kind] = ok
        return ok

    def fingerprint(self) -> object:
        rs = self._global()
        if self._trusted(type(rs._bit_generator)):
            return self._fast(rs)
        import pickle

        return pickle.dumps(rs.get_state(legacy=False))

    def capture(self, before: object | None) -> object | None:
        state: dict[str, Any] = self._global().get_state(legacy=False)
        return state

    def apply(self, value: Any) -> None:
        rs = self._global()
        kind = value["bit_generator"] if isinstance(value, dict) else "MT19937"
        if type(rs._bit_generator).__name__ != kind:
            numpy_random = sys.modules["numpy.random"]
            numpy_random.set_bit_generator(getattr(numpy_random, kind)())
        rs.set_state(value)


class NumpyPrintOptionsProvider:
    """``np.set_printoptions`` (and ``np.printoptions`` left open), as a diff of ``np.get_printoptions()``.

    numpy ≥ 2 keeps the options in a context variable holding a dict that is replaced, never changed in
    place: the fingerprint is that dict (an identity check); older numpy: ``np.get_printoptions()``."""

    name = "%numpy.printoptions"
    module: str | None = "numpy"

    @staticmethod
    def _var() -> Any:
        options = sys.modules.get("numpy._core.printoptions")
        return getattr(options, "format_options", None)

    def fingerprint(self) -> object:
        var = self._var()
        return var.get() if var is not None else sys.modules["numpy"].get_printoptions()

    def capture(self, before: object | None) -> object | None:
        now = sys.modules["numpy"].get_printoptions()
        var = self._var()
        if var is not None:
            internal = var.get()  # changed keys found on the internal dicts, values in get_printoptions' form
            base = before if isinstance(before, dict) else sys.modules["numpy._core.printoptions"].__dict__.get(
                "default_format_options_dict", {})
            changed = _diff(base, internal, lambda k: _ABSENT)
            diff = {k: now[k] for k in changed if k in now}
        elif isinstance(before, dict):
            diff = _diff(before, now, lambda k: _ABSENT)
        else:
            diff = now  # became active, no known defaults: the whole (small) set
        return diff or None

    def apply(self, value: Any) -> None:
        sys.modules["numpy"].set_printoptions(**value)


class PandasOptionsProvider:
    """``pd.set_option`` / ``pd.options.x.y = …``, as a diff ``{"display.max_rows": 5}`` applied with
    ``pd.set_option``. Reads pandas' private ``pandas._config.config._global_config`` (nested dicts, one per
    option prefix): the fingerprint is a copy of each of those dicts (the list of dicts is refreshed when
    the number of registered options changes). A provider that became active (pandas imported by the
    cell) compares with the registered defaults."""

    name = "%pandas.options"
    module: str | None = "pandas"

    def __init__(self) -> None:
        self._count = -1
        self._paths: tuple[str, ...] = ()
        self._dicts: tuple[dict[str, Any], ...] = ()

    @staticmethod
    def _config() -> Any:
        return sys.modules["pandas._config.config"]

    def _collect(self, config: Any) -> None:
        paths: list[str] = []
        dicts: list[dict[str, Any]] = []

        def walk(prefix: str, d: dict[str, Any]) -> None:
            paths.append(prefix)
            dicts.append(d)
            for key, val in d.items():
                if type(val) is dict:
                    walk(f"{prefix}{key}.", val)

        walk("", config._global_config)
        self._paths, self._dicts, self._count = tuple(paths), tuple(dicts), len(config._registered_options)

    def fingerprint(self) -> object:
        config = self._config()
        if len(config._registered_options) != self._count:
            self._collect(config)
        return (self._paths, tuple(map(dict.copy, self._dicts)))

    @staticmethod
    def _flat(fingerprint: Any) -> dict[str, Any]:
        return {prefix + k: v for prefix, d in zip(*fingerprint, strict=True) for k, v in d.items()
                if type(v) is not dict}

    def capture(self, before: object | None) -> object | None:
        registered = self._config()._registered_options
        flat_before = self._flat(before) if before is not None else {}

        def default(key: str) -> Any:
            option = registered.get(key)
            return option.defval if option is not None else _ABSENT

        return _diff(flat_before, self._flat(self.fingerprint()), default) or None

    def apply(self, value: Any) -> None:
        pandas = sys.modules["pandas"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a deprecated option warned when the cell ran; not again
            for key, val in value.items():
                pandas.set_option(key, val)


class RcParamsProvider:
    """matplotlib's ``rcParams`` (``mpl.rc``, ``plt.style.use``, ``sns.set_theme``/``sns.set``, item
    assignment), as a diff of the changed keys, applied by item assignment (validated again).

    ``dict.copy(rcParams)`` costs ~90 µs (RcParams iterates sorted): the fingerprint is the tuple of the
    values (``dict.values``, ~2.7 µs for 339 keys, compared by identity first) with the tuple of the keys
    kept from the previous call while their number is the same. ``backend`` is left out (IPython's
    matplotlib integration picks it; ``matplotlib.use`` in a restored cell is not re-applied). A provider
    that became active (matplotlib imported by the cell) compares with ``matplotlib.rcParamsOrig``, the
    rcParams read from the matplotlibrc files at import."""

    name = "%matplotlib.rcParams"
    module: str | None = "matplotlib"
    excluded = frozenset({"backend"})

    def __init__(self) -> None:
        self._keys: tuple[str, ...] = ()

    def _state(self) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        rc = sys.modules["matplotlib"].rcParams
        values = tuple(dict.values(rc))
        if len(values) != len(self._keys):
            self._keys = tuple(dict.keys(rc))
        return (self._keys, values)

    def fingerprint(self) -> object:
        return self._state()

    def capture(self, before: object | None) -> object | None:
        keys, values = self._state()
        if isinstance(before, tuple):
            old: dict[str, Any] = dict(zip(before[0], before[1], strict=True))
        else:
            orig = getattr(sys.modules["matplotlib"], "rcParamsOrig", {})
            old = {k: dict.__getitem__(orig, k) for k in dict.keys(orig)}
        after = {k: v for k, v in zip(keys, values, strict=True) if k not in self.excluded}
        return _diff(old, after, lambda k: _ABSENT) or None

    def apply(self, value: Any) -> None:
        rc = sys.modules["matplotlib"].rcParams
        for key, val in value.items():
            rc[key] = val


class TorchRandomProvider:
    """torch's default CPU generator (``torch.manual_seed``, and every CPU draw): ``get_rng_state()`` (a
    5056-byte tensor, ~0.7 µs) as bytes, applied with ``torch.set_rng_state``. CUDA/MPS generators and
    generators held in variables are not covered."""

    name = "%torch.random"
    module: str | None = "torch"

    def __init__(self) -> None:
        self._string_at: Callable[[int, int], bytes] | None = None

    def fingerprint(self) -> object:
        state = sys.modules["torch"].get_rng_state()
        if "numpy" in sys.modules:  # torch imports it when it is installed: 1.7 µs in all
            return state.numpy().tobytes()
        if self._string_at is None:
            import ctypes

            self._string_at = ctypes.string_at
        return self._string_at(state.data_ptr(), state.numel() * state.element_size())  # 3.2 µs in all

    def capture(self, before: object | None) -> object | None:
        return self.fingerprint()

    def apply(self, value: Any) -> None:
        torch = sys.modules["torch"]
        torch.set_rng_state(torch.frombuffer(bytearray(value), dtype=torch.uint8))
