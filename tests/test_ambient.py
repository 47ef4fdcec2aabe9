"""Ambient state (``nbdurable.capture.ambient``): a change a cell makes outside its variables, captured in
one real interpreter, is re-applied in a fresh one and gives the same state.

The "original kernel" and the "restored kernel" are two fresh processes (``sys.executable -c``), so the
test process's own warnings, environment, cwd, logging and rcParams are never touched: the original runs
two cells (the first imports numpy, pandas, matplotlib and seaborn and changes their state in the same
cell, so those providers become active during it; the second changes every kind of state), records
``Ambient.changes`` with cloudpickle and what it observes after each cell; the restored one applies the
recorded changes cell by cell and observes the same. No library is mocked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from nbdurable.capture.ambient import Ambient, Unrestorable
from nbdurable.errors import NbdurableError, RestoreError

pytestmark = pytest.mark.xdist_group("ambient")  # its tests share a module fixture: one xdist worker

ROOT = Path(__file__).resolve().parent.parent
HAS_SEABORN = importlib.util.find_spec("seaborn") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

# Shared by both processes: what the next cells would see (draws are taken and the generators put back).
OBSERVE = r"""
import json, logging, os, sys, warnings

def observe():
    out = {"cwd": os.getcwd(), "sys.path": list(sys.path), "recursionlimit": sys.getrecursionlimit(),
           "env": {k: os.environ.get(k) for k in ("NBD_AMBIENT_SET", "NBD_AMBIENT_GONE")},
           "warnings": [(a, getattr(m, "pattern", m), getattr(m, "flags", None), c.__qualname__,
                         getattr(mod, "pattern", mod), n) for a, m, c, mod, n in warnings.filters]}
    loggers = {"": logging.getLogger()}
    loggers.update((k, v) for k, v in logging.Logger.manager.loggerDict.items() if k.startswith("nbd."))
    out["logging"] = {name: [lg.level, lg.propagate, lg.disabled,
                             [(type(h).__name__, h.level, getattr(h, "baseFilename", None),
                               getattr(getattr(h, "stream", None), "name", None),
                               h.formatter._fmt if h.formatter else None) for h in lg.handlers]]
                      for name, lg in sorted(loggers.items()) if isinstance(lg, logging.Logger)}
    import random
    state = random.getstate()
    out["random"] = [random.random(), random.gauss(0, 1)]
    random.setstate(state)
    if "numpy.random" in sys.modules:
        import numpy as np
        state = np.random.get_state()
        out["numpy.random"] = [float(np.random.randn()), float(np.random.randn()), float(np.random.rand())]
        np.random.set_state(state)
        out["numpy.printoptions"] = repr(np.get_printoptions())
    if "pandas" in sys.modules:
        config = sys.modules["pandas._config.config"]
        def flat(d, prefix=""):
            for k, v in d.items():
                yield from flat(v, prefix + k + ".") if isinstance(v, dict) else [(prefix + k, repr(v))]
        out["pandas.options"] = dict(flat(config._global_config))
    if "matplotlib" in sys.modules:
        rc = sys.modules["matplotlib"].rcParams
        out["matplotlib.rcParams"] = {k: repr(v) for k, v in dict.items(rc) if k != "backend"}
    return out
"""

ORIGINAL = OBSERVE + r"""
import cloudpickle
from nbdurable.capture.ambient import Ambient
out_path, work = sys.argv[1], sys.argv[2]
ambient = Ambient()
cells, seen = [], []

before = ambient.snapshot()  # cell 1: imports, and changes the state of what it imported
import random
import numpy as np, pandas as pd, matplotlib
import matplotlib.pyplot as plt
np.random.seed(3)
pd.set_option("display.max_columns", 11)
if HAS_SEABORN:
    import seaborn as sns
    sns.set_theme(style="darkgrid")
else:
    matplotlib.rcParams["axes.facecolor"] = "#EAEAF2"
cells.append(ambient.changes(before)); seen.append(observe())

before = ambient.snapshot()  # cell 2: everything else
random.seed(7); random.random(); random.gauss(0, 1)
np.random.randn()  # leaves a cached Gaussian: the state is more than the bit generator's
warnings.filterwarnings("ignore", message="spam.*", category=UserWarning)
warnings.simplefilter("error", DeprecationWarning)
plt.style.use("ggplot")
matplotlib.rcParams["axes.facecolor"] = "#123456"
pd.set_option("display.max_rows", 7)
pd.options.display.precision = 3
np.set_printoptions(precision=2, suppress=True)
os.environ["NBD_AMBIENT_SET"] = "yes"
del os.environ["NBD_AMBIENT_GONE"]
sys.path.insert(0, os.path.join(work, "extra"))
os.chdir(work)
sys.setrecursionlimit(4321)
logging.getLogger("nbd.quiet").setLevel(logging.ERROR)
app = logging.getLogger("nbd.app")
app.setLevel(logging.INFO)
app.propagate = False
handler = logging.StreamHandler()  # sys.stderr
handler.setLevel(logging.WARNING)
handler.setFormatter(logging.Formatter("AMB %(name)s: %(message)s"))
app.addHandler(handler)
app.addHandler(logging.FileHandler(os.path.join(work, "app.log"), encoding="utf-8"))
cells.append(ambient.changes(before)); seen.append(observe())

before = ambient.snapshot()  # cell 3: nothing ambient
x = np.arange(3) + 1
df = pd.DataFrame({"a": x})
repr(df)
logging.getLogger("nbd.app").info("original info")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
with np.printoptions(precision=5), pd.option_context("display.max_rows", 3), plt.rc_context({"lines.linewidth": 9}):
    repr(df)
cells.append(ambient.changes(before))

with open(out_path, "wb") as f:
    cloudpickle.dump({"cells": cells, "seen": json.loads(json.dumps(seen))}, f)
"""

RESTORED = OBSERVE + r"""
import cloudpickle
from nbdurable.capture.ambient import Ambient
with open(sys.argv[1], "rb") as f:
    recorded = cloudpickle.load(f)
import numpy, pandas, matplotlib.pyplot  # a restored kernel imports them with the variables holding them
if HAS_SEABORN:
    import seaborn
ambient = Ambient()
seen = []
for changes in recorded["cells"][:2]:
    for name, value in changes:
        ambient.apply(name, value)
    seen.append(observe())
app = logging.getLogger("nbd.app")
app.warning("restored warning")
app.info("restored info")
for h in app.handlers:
    h.flush()
print(json.dumps(seen))
"""


def _python(code: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The original run's recorded changes and observations, and the restored process's."""
    if not HAS_MATPLOTLIB:
        pytest.skip("matplotlib is not installed: pip install matplotlib seaborn")
    base = tmp_path_factory.mktemp("ambient")
    work, elsewhere, record = base / "work", base / "elsewhere", base / "record.pkl"
    work.mkdir()
    elsewhere.mkdir()
    flags = f"HAS_SEABORN = {HAS_SEABORN}\n"
    env = {"NBD_AMBIENT_GONE": "1"}
    _python(flags + ORIGINAL, str(record), str(work), cwd=elsewhere, env=env)
    import cloudpickle

    with open(record, "rb") as f:
        original = cloudpickle.load(f)
    proc = _python(flags + RESTORED, str(record), cwd=elsewhere, env=env)
    return {"work": work, "cells": original["cells"], "original": original["seen"],
            "restored": json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def _names(changes: list[tuple[str, object]]) -> list[str]:
    return [name for name, _ in changes]


def test_records_only_what_each_cell_changed(restored: dict[str, Any]) -> None:
    cell1, cell2, cell3 = restored["cells"]
    assert {"%numpy.random", "%pandas.options", "%matplotlib.rcParams"} <= set(_names(cell1))
    assert "%cwd" not in _names(cell1) and "%os.environ" not in _names(cell1)  # imports may change others
    assert _names(cell2) == ["%sys.path", "%cwd", "%os.environ", "%sys.recursionlimit", "%warnings", "%logging",
                             "%random", "%numpy.random", "%numpy.printoptions", "%pandas.options",
                             "%matplotlib.rcParams"]  # registry order
    assert cell3 == []  # computing, printing, logging, and every context manager undone: nothing
    assert not any(isinstance(value, Unrestorable) for _, value in cell1 + cell2)


def test_diffs_hold_only_changed_keys(restored: dict[str, Any]) -> None:
    cell1, cell2 = (dict(cell) for cell in restored["cells"][:2])
    assert cell1["%pandas.options"] == {"display.max_columns": 11}  # became active: against the defaults
    assert cell2["%pandas.options"] == {"display.max_rows": 7, "display.precision": 3}
    assert cell2["%os.environ"] == {"set": {"NBD_AMBIENT_SET": "yes"}, "unset": ["NBD_AMBIENT_GONE"]}
    assert cell2["%numpy.printoptions"] == {"precision": 2, "suppress": True}
    assert cell2["%matplotlib.rcParams"]["axes.facecolor"] == "#123456"
    assert len(cell2["%matplotlib.rcParams"]) < 100 and "backend" not in cell2["%matplotlib.rcParams"]


@pytest.mark.parametrize("key", ["random", "numpy.random"])
def test_generators_continue_where_the_original_run_was(restored: dict[str, Any], key: str) -> None:
    """After cell 2 (which seeded and drew from both). After cell 1, numpy.random too: it became active
    then, so its whole (seeded) state was recorded; random, unseeded and untouched by cell 1, is not."""
    cells = [1] if key == "random" else [0, 1]
    for cell in cells:
        assert restored["restored"][cell][key] == restored["original"][cell][key]
    assert restored["restored"][0][key] != restored["restored"][1][key]


@pytest.mark.parametrize("key", ["warnings", "matplotlib.rcParams", "pandas.options", "numpy.printoptions",
                                 "env", "cwd", "sys.path", "recursionlimit", "logging"])
def test_state_after_each_restored_cell_equals_the_original(restored: dict[str, Any], key: str) -> None:
    for original, again in zip(restored["original"], restored["restored"], strict=True):
        assert again[key] == original[key]


def test_the_changes_are_the_ones_made(restored: dict[str, Any]) -> None:
    after1, after2 = restored["restored"]
    work = restored["work"]
    assert after1["matplotlib.rcParams"]["axes.facecolor"] == repr("#EAEAF2")  # seaborn's darkgrid
    assert after1["pandas.options"]["display.max_columns"] == "11"
    assert after2["matplotlib.rcParams"]["axes.facecolor"] == repr("#123456")
    assert after2["matplotlib.rcParams"]["patch.facecolor"] == repr("#348ABD")  # ggplot
    assert after2["pandas.options"]["display.max_rows"] == "7"
    assert after2["cwd"] == str(work) and after2["sys.path"][0] == str(work / "extra")
    assert after2["env"] == {"NBD_AMBIENT_SET": "yes", "NBD_AMBIENT_GONE": None}
    assert after2["recursionlimit"] == 4321
    assert after2["warnings"][:2] == [["error", None, None, "DeprecationWarning", None, 0],
                                      ["ignore", "spam.*", int(re.IGNORECASE | re.UNICODE), "UserWarning", None, 0]]
    assert after2["logging"]["nbd.quiet"][0] == 40
    level, propagate, _, handlers = after2["logging"]["nbd.app"]
    assert (level, propagate) == (20, False)
    assert handlers == [["StreamHandler", 30, None, "<stderr>", "AMB %(name)s: %(message)s"],
                        ["FileHandler", 0, str(work / "app.log"), str(work / "app.log"), None]]


def test_recreated_handlers_write_where_the_original_ones_did(restored: dict[str, Any]) -> None:
    assert "AMB nbd.app: restored warning" in restored["stderr"]
    assert "restored info" not in restored["stderr"]  # below the stream handler's level
    log = (restored["work"] / "app.log").read_text(encoding="utf-8")
    assert log == "original info\nrestored warning\nrestored info\n"  # appended to, not truncated


# ----- in this process: reads only (monkeypatch undoes the environment) ---------------------------------


def test_nothing_changed_records_nothing() -> None:
    import numpy.random  # noqa: F401
    import pandas as pd

    ambient = Ambient()
    before = ambient.snapshot()
    pd.DataFrame({"a": [1, 2]}).describe()
    assert ambient.changes(before) == []
    assert ambient.changes(ambient.snapshot()) == []


def test_a_secret_environment_variable_is_never_captured(monkeypatch: pytest.MonkeyPatch) -> None:
    ambient = Ambient()
    before = ambient.snapshot()
    monkeypatch.setenv("NBD_PLAIN", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-store")
    changes = dict(ambient.changes(before))
    assert changes["%os.environ"] == Unrestorable("sets the secret environment variable OPENAI_API_KEY")
    assert "sk-do-not-store" not in repr(changes)
    monkeypatch.delenv("OPENAI_API_KEY")
    assert dict(ambient.changes(before))["%os.environ"] == {"set": {"NBD_PLAIN": "1"}, "unset": []}
    custom = Ambient(is_secret=lambda name: name == "NBD_PLAIN")
    before = custom.snapshot()
    monkeypatch.setenv("NBD_PLAIN", "2")
    assert dict(custom.changes(before))["%os.environ"] == Unrestorable("sets the secret environment variable NBD_PLAIN")
    with pytest.raises(RestoreError, match="secret environment variable NBD_PLAIN"):
        custom.apply("%os.environ", Unrestorable("sets the secret environment variable NBD_PLAIN"))


class _Counting:
    """A provider of a module nobody imported."""

    name = "%never"
    module = "nbd_ambient_never_imported"

    def __init__(self) -> None:
        self.calls = 0

    def fingerprint(self) -> object:
        self.calls += 1
        return self.calls

    def capture(self, before: object | None) -> object | None:
        self.calls += 1
        return self.calls

    def apply(self, value: object) -> None:
        raise AssertionError("never")


def test_a_provider_whose_module_is_not_imported_costs_nothing() -> None:
    provider = _Counting()
    ambient = Ambient([provider])
    for _ in range(3):
        assert ambient.changes(ambient.snapshot()) == []
    assert provider.calls == 0
    with pytest.raises(RestoreError, match="%never cannot be re-applied: importing nbd_ambient_never_imported"):
        ambient.apply("%never", 1)


def test_apply_errors_name_the_provider() -> None:
    ambient = Ambient()
    with pytest.raises(RestoreError, match="no ambient state provider is named %nope") as info:
        ambient.apply("%nope", 1)
    assert isinstance(info.value, NbdurableError) and info.value.hint
    with pytest.raises(RestoreError, match=r"%cwd cannot be re-applied: FileNotFoundError"):
        ambient.apply("%cwd", "/nonexistent/nbdurable/ambient")
    assert Ambient.is_ambient("%cwd") and not Ambient.is_ambient("cwd")


def test_a_kernel_without_the_libraries_does_not_import_them(tmp_path: Path) -> None:
    """Nothing imported: no library is imported to look at it, and a change is applied by importing it."""
    code = textwrap.dedent("""
        import sys
        from nbdurable.capture.ambient import Ambient
        ambient = Ambient()
        assert ambient.changes(ambient.snapshot()) == []
        heavy = ("numpy", "pandas", "matplotlib", "torch", "seaborn")
        assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
        ambient.apply("%pandas.options", {"display.max_rows": 9})
        import pandas
        assert pandas.get_option("display.max_rows") == 9
        print("ok")
    """)
    assert _python(code, cwd=tmp_path).stdout.strip() == "ok"


ENTRY_POINTS = """
[nbdurable.ambient]
broken = nbd_ambient_no_such_module:provider
misnamed = nbd_ambient_plugin:Misnamed
counter = nbd_ambient_plugin:make_counter
"""

PLUGIN = """
class Counter:
    name, module, value = "%plugin.counter", None, 0
    def fingerprint(self): return Counter.value
    def capture(self, before): return Counter.value
    def apply(self, value): Counter.value = value

class Misnamed(Counter):
    name = "plugin.counter"

def make_counter():
    return Counter()
"""


def test_entry_point_providers_load_once_and_broken_ones_are_skipped(tmp_path: Path) -> None:
    dist = tmp_path / "nbd_ambient_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nbd-ambient-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (tmp_path / "nbd_ambient_plugin.py").write_text(PLUGIN)
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from nbdurable.capture.ambient import Ambient
        import nbd_ambient_plugin
        ambient = Ambient()
        before = ambient.snapshot()
        nbd_ambient_plugin.Counter.value = 5
        print(ambient.changes(before))
        ambient.apply("%plugin.counter", 8)
        print(nbd_ambient_plugin.Counter.value)
        ambient.changes(ambient.snapshot())
    """)
    proc = _python(code, str(tmp_path), cwd=tmp_path)
    assert proc.stdout.split("\n")[:2] == ["[('%plugin.counter', 5)]", "8"]
    lines = sorted(proc.stderr.strip().splitlines())  # one line each, once
    assert len(lines) == 2, proc.stderr
    assert "entry point broken = nbd_ambient_no_such_module:provider" in lines[0]
    assert "ModuleNotFoundError" in lines[0]
    assert "entry point misnamed = nbd_ambient_plugin:Misnamed" in lines[1] and "starting with '%'" in lines[1]


def test_a_distribution_found_twice_on_sys_path_provides_once(tmp_path: Path) -> None:
    """As importlib.metadata.entry_points: the first copy on sys.path counts, the second is not a duplicate."""
    for copy in ("first", "second"):
        dist = tmp_path / copy / "nbd_ambient_plugin-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nbd_ambient.Plugin\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text("[nbdurable.ambient]\ncounter = nbd_ambient_plugin:make_counter\n")
    (tmp_path / "nbd_ambient_plugin.py").write_text(PLUGIN)
    code = textwrap.dedent("""
        import sys
        sys.path[:0] = sys.argv[1:]
        from nbdurable.capture.ambient import Ambient
        print([p.name for p in Ambient().providers if p.name.startswith("%plugin")])
    """)
    proc = _python(code, str(tmp_path / "first"), str(tmp_path / "second"), str(tmp_path), cwd=tmp_path)
    assert proc.stdout.strip() == "['%plugin.counter']"
    assert proc.stderr.strip() == ""


TORCH_SKIP = ("torch is not installed: `pip install torch==2.13.0` installs the CPU build from this machine's disk")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason=TORCH_SKIP)
def test_torch_generator_continues_where_the_original_run_was(tmp_path: Path) -> None:
    record = tmp_path / "torch.pkl"
    original = textwrap.dedent("""
        import sys, cloudpickle, torch
        from nbdurable.capture.ambient import Ambient
        ambient = Ambient()
        before = ambient.snapshot()
        torch.manual_seed(5)
        torch.rand(2)
        changes = ambient.changes(before)
        with open(sys.argv[1], "wb") as f:
            cloudpickle.dump({"changes": changes, "next": torch.rand(3).tolist()}, f)
    """)
    restored = textwrap.dedent("""
        import sys, cloudpickle, torch
        from nbdurable.capture.ambient import Ambient
        with open(sys.argv[1], "rb") as f:
            recorded = cloudpickle.load(f)
        assert [name for name, _ in recorded["changes"]] == ["%torch.random"], recorded["changes"]
        for name, value in recorded["changes"]:
            Ambient().apply(name, value)
        assert torch.rand(3).tolist() == recorded["next"]
        print("ok")
    """)
    _python(original, str(record), cwd=tmp_path)
    assert _python(restored, str(record), cwd=tmp_path).stdout.strip() == "ok"


def test_a_handler_on_a_tee_in_front_of_stderr_is_a_stderr_handler() -> None:
    """The extension's plain-shell output capture puts a tee (holding the stream as ``_stream``) in front
    of sys.stdout/sys.stderr while a cell runs: a StreamHandler created then writes to sys.stderr."""
    import io

    from nbdurable.capture.ambient.loggers import _stream_name

    class Tee:
        def __init__(self, stream: object) -> None:
            self._stream = stream

        def __getattr__(self, attr: str) -> object:
            return getattr(self._stream, attr)

    assert _stream_name(Tee(sys.stderr)) == "stderr" and _stream_name(Tee(Tee(sys.stdout))) == "stdout"
    assert _stream_name(io.StringIO()) is None and _stream_name(Tee(io.StringIO())) is None
