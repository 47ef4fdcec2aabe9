"""Objects of the common data libraries, declared in one cell and changed in place in the next (directly, or
through a view, a wrapper, a container or a library's hidden current object), then a crash (SIGKILL) and a
resume in a new process: every object must come back with the content a clean run gives it (0 missed
changes), no restore may fail, and no ordinary name may be taken for a secret.

One session per library; each case is (setup, change, digest): the digest is an expression whose ``repr`` is
compared between the resumed run and a clean run of the same cells. Libraries that are not installed skip
with the command that installs them (they are in the ``test`` extra).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import run_session
from helpers import KILL, journal_records

pytestmark = [pytest.mark.slow]

Case = tuple[str, str, str]  # setup, change, digest

MATRIX: dict[str, tuple[str, dict[str, Case]]] = {
    "builtins": ("", {
        "list in another name's dict": ("lst = [1, 2]\nholder = {'l': lst}", "holder['l'].append(3)", "lst"),
        "deque": ("import collections\ndq = collections.deque([1])", "dq.appendleft(0)", "list(dq)"),
        "Counter": ("import collections\ncnt = collections.Counter('aab')", "cnt.update('bbc')", "sorted(cnt.items())"),
        "bytearray": ("buf = bytearray(b'abc')", "buf[0] = 122", "bytes(buf)"),
        "array.array": ("import array\narr_a = array.array('d', [1.0])", "arr_a.append(2.5)", "arr_a.tolist()"),
        "set": ("st = {1}", "st.add(2)", "sorted(st)"),
        "hashlib (unpicklable)": ("import hashlib\nhsh = hashlib.sha256()", "hsh.update(b'abc')", "hsh.hexdigest()"),
        "dict with a lock (unpicklable)": ("import threading\nlocked = {'lock': threading.Lock(), 'n': 0}",
                                           "locked['n'] += 1", "locked['n']"),
        "tokenizer is no secret": ("tokenizer = {'vocab': ['a', 'b']}", "tokenizer['vocab'].append('c')",
                                   "tokenizer"),
    }),
    "numpy": ("import numpy as np", {
        "ndarray": ("a1 = np.arange(6.0)", "a1[2] = -1", "a1.tolist()"),
        "through a view": ("base = np.zeros(8)\nview = base[2:6]", "view[1] = 5", "base.tolist()"),
        "view in a container": ("b2 = np.zeros(4)\nbox = [b2[1:]]", "box[0][0] = 9", "b2.tolist()"),
        "structured": ("rec = np.zeros(3, dtype=[('x', 'i4'), ('y', 'f8')])", "rec['y'][1] = 2.5", "rec.tolist()"),
        "masked": ("ma = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])", "ma[0] = 7", "(ma.tolist(),)"),
        "Generator state": ("gen = np.random.default_rng(3)", "gen.random(5)", "gen.random()"),
    }),
    "pandas": ("import pandas as pd\nimport numpy as np", {
        "DataFrame .loc": ("df = pd.DataFrame({'a': range(5), 'b': list('abcde')})", "df.loc[df.a > 2, 'b'] = 'z'",
                           "df.to_dict('list')"),
        "Series iloc": ("ser = pd.Series([1.0, 2.0, 3.0])", "ser.iloc[1] = 9.0", "ser.tolist()"),
        "frame inplace sort": ("sdf = pd.DataFrame({'k': [3, 1, 2]})", "sdf.sort_values('k', inplace=True)",
                               "(sdf.index.tolist(), sdf.k.tolist())"),
        "big frame new column": ("big = pd.DataFrame({'x': np.arange(300_000.0)})", "big['y'] = big.x * 2",
                                 "float(big.y.sum())"),
        "categorical": ("cat = pd.DataFrame({'c': pd.Categorical(['a', 'b'])})", "cat.loc[0, 'c'] = 'b'",
                        "cat.c.tolist()"),
    }),
    "scipy": ("import scipy.sparse as sp\nimport numpy as np", {
        "csr data": ("csr = sp.csr_matrix(np.eye(3))", "csr.data[0] = 5", "csr.toarray().tolist()"),
        "lil setitem": ("lil = sp.lil_matrix((3, 3))", "lil[0, 1] = 3", "lil.toarray().tolist()"),
    }),
    "sklearn": ("import numpy as np\nfrom sklearn.linear_model import SGDRegressor\n"
                "from sklearn.preprocessing import StandardScaler\nfrom sklearn.pipeline import make_pipeline\n"
                "rng = np.random.default_rng(0)\nX = rng.random((50, 3))\ny = X @ [1.0, 2.0, 3.0]", {
        "partial_fit": ("scaler = StandardScaler().fit(X[:10])", "scaler.partial_fit(X[10:])",
                        "scaler.mean_.round(6).tolist()"),
        "set_params": ("sgd = SGDRegressor(random_state=0)", "sgd.set_params(alpha=0.01)", "sgd.alpha"),
        "pipeline step": ("pipe = make_pipeline(StandardScaler(), SGDRegressor(random_state=0))",
                          "pipe.fit(X, y)", "pipe.predict(X[:2]).round(4).tolist()"),
    }),
    "matplotlib": ("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt", {
        "axes title": ("fig, ax = plt.subplots()", "ax.set_title('direct')", "ax.get_title()"),
        "pyplot current axes": ("fig2, ax2 = plt.subplots()", "plt.title('current')", "ax2.get_title()"),
        "lines added": ("fig3, ax3 = plt.subplots()", "ax3.plot([1, 2], [3, 4])", "len(ax3.lines)"),
    }),
    "networkx": ("import networkx as nx", {
        "add_edge": ("g = nx.Graph()", "g.add_edge(1, 2)", "sorted(g.edges())"),
        "node attribute": ("dg = nx.DiGraph([(1, 2)])", "dg.nodes[1]['w'] = 5", "dict(dg.nodes(data=True))"),
    }),
    "statsmodels": ("import numpy as np\nimport pandas as pd\nimport statsmodels.api as sm", {
        "ols on a frame": ("data = pd.DataFrame({'x': np.arange(20.0), 'y': np.arange(20.0) * 2 + 1})\n"
                           "ols = sm.OLS(data.y, sm.add_constant(data.x)).fit()", "data.loc[0, 'y'] = 100.0",
                           "(data.y.tolist(), ols.params.round(6).tolist())"),
    }),
    "polars": ("import polars as pl", {
        "setitem": ("pdf = pl.DataFrame({'a': [1, 2, 3]})", "pdf[0, 'a'] = 10", "pdf['a'].to_list()"),
        "insert column": ("pdf2 = pl.DataFrame({'a': [1, 2]})", "pdf2.insert_column(1, pl.Series('b', [3, 4]))",
                          "pdf2.columns"),
    }),
    "astropy": ("import numpy as np\nimport astropy.units as u\nfrom astropy.table import Table\n"
                "from astropy.nddata import NDData", {
        "Table column": ("t = Table({'a': [1, 2, 3]})", "t['a'][0] = 9", "list(t['a'])"),
        "Quantity": ("q = np.arange(3.0) * u.m", "q[1] = 5 * u.m", "q.value.tolist()"),
        "NDData wrapping an array": ("cube = np.zeros((2, 2, 2))\nnd = NDData(cube)", "nd.data[0, 0, 0] = 49",
                                     "(float(cube.sum()), float(nd.data.sum()))"),
    }),
    "skimage": ("import numpy as np\nfrom skimage import measure", {
        "label image": ("img = np.zeros((6, 6), dtype=int)\nimg[1:3, 1:3] = 1\nlabels = measure.label(img)",
                        "labels[labels == 1] = 7", "labels.sum().item()"),
    }),
    "plotly": ("import plotly.graph_objects as go", {
        "update_layout": ("pfig = go.Figure()", "pfig.update_layout(title_text='t')", "pfig.layout.title.text"),
        "add_trace": ("pfig2 = go.Figure()", "pfig2.add_trace(go.Scatter(y=[1, 2]))", "len(pfig2.data)"),
    }),
    "bokeh": ("from bokeh.plotting import figure", {
        "title (pickle does not load)": ("bfig = figure()", "bfig.title.text = 'b'", "bfig.title.text"),
    }),
    "lightgbm": ("import numpy as np\nimport lightgbm as lgb\nrng = np.random.default_rng(1)\n"
                 "Xl = rng.random((60, 2))\nyl = Xl[:, 0] * 3", {
        "set_params": ("lgbm = lgb.LGBMRegressor(n_estimators=3, verbose=-1)", "lgbm.set_params(learning_rate=0.3)",
                       "lgbm.learning_rate"),
        "fit in place": ("lgbm2 = lgb.LGBMRegressor(n_estimators=3, verbose=-1)", "lgbm2.fit(Xl, yl)",
                         "lgbm2.predict(Xl[:2]).round(5).tolist()"),
    }),
    "xgboost": ("import numpy as np\nimport xgboost as xgb\nrng = np.random.default_rng(2)\n"
                "Xx = rng.random((60, 2))\nyx = Xx[:, 1] * 2", {
        "set_params": ("xgbm = xgb.XGBRegressor(n_estimators=3)", "xgbm.set_params(max_depth=2)",
                       "xgbm.get_params()['max_depth']"),
        "fit in place": ("xgbm2 = xgb.XGBRegressor(n_estimators=3)", "xgbm2.fit(Xx, yx)",
                         "xgbm2.predict(Xx[:2]).round(5).tolist()"),
        "booster trained on (DMatrix)": ("dtrain = xgb.DMatrix(Xx, label=yx)\n"
                                         "booster = xgb.train({'max_depth': 2}, dtrain, num_boost_round=2)",
                                         "booster = xgb.train({'max_depth': 2}, dtrain, num_boost_round=2, "
                                         "xgb_model=booster)",
                                         "booster.predict(xgb.DMatrix(Xx[:2])).round(5).tolist()"),
    }),
}
_MODULES = {"sklearn": "sklearn", "skimage": "skimage", "builtins": "collections"}


@pytest.mark.parametrize("library", list(MATRIX))
def test_library_objects_changed_in_place_resume_as_a_clean_run(library: str, tmp_path: Path) -> None:
    module = _MODULES.get(library, library)
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{library} is not installed: python3 -m pip install -e '.[test]' installs it")
    header, cases = MATRIX[library]
    cells = [c for c in [header] if c]
    for setup, change, _ in cases.values():
        cells += [setup, change]
    probes = {name: digest for name, (_, _, digest) in cases.items()}
    clean = run_session(tmp_path / "clean", cells, probes=probes)
    assert clean.returncode == 0 and all(c["success"] for c in clean.cells), clean.stdout
    store = tmp_path / "store"
    crashed = run_session(store, [*cells, KILL])
    assert crashed.killed, crashed.stdout
    resumed = run_session(store, cells, probes=probes)
    assert resumed.returncode == 0 and all(c["success"] for c in resumed.cells), resumed.stdout
    missed = {name: (resumed.probes.get(name), clean.probes[name]) for name in cases
              if resumed.probes.get(name) != clean.probes[name]}
    assert not missed, f"changes missed after resume (resumed, clean): {missed}\n{resumed.stdout}"
    assert "Cannot restore" not in resumed.stdout, resumed.stdout
    secrets = [ref["name"] for record in journal_records(store, "step_end") for ref in record["variables"]
               if str(ref.get("reason") or "").startswith("secret")]
    assert not secrets, f"ordinary names taken for secrets: {secrets}"
