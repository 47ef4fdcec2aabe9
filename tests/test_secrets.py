"""No secret on disk: variables whose names look like secrets (or that `%durable exclude` lists) are never
written to the store, in any form, by an interactive session or a headless run; a resume rebuilds them by
executing their cells again.

The secret reaches the notebook from the environment, as a real one would, or as a papermill-style
parameter (`-p OPENAI_API_KEY …`): a secret assigned a literal is redacted from the source the journal
records, and a secret parameter is recorded as a keyed digest. It is never printed: a printed secret
is an output, and outputs are recorded. What is checked is every byte of every file under the store
(journals, objects, catalog, leases, events, temporary files) against the secret's raw bytes and the
encodings a serializer could give it: UTF-16, UTF-32 (numpy's str arrays), hex, and base64 at every
alignment (inline payloads are base64 inside the journal).
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import nbformat
import pytest

from conftest import run_session
from helpers import KILL, CliResult, counting_cell, executions, run_cli, variable_refs


def new_secret() -> str:
    return "sk-live-" + secrets.token_hex(16)


def encodings(secret: str) -> dict[str, bytes]:
    """Byte strings that must not occur in the store if ``secret`` was never written."""
    raw = secret.encode()
    forms = {"utf-8": raw, "utf-16-le": secret.encode("utf-16-le"), "utf-16-be": secret.encode("utf-16-be"),
             "utf-32-le": secret.encode("utf-32-le"), "hex": raw.hex().encode()}
    for shift in range(3):  # base64 of the secret inside a longer payload, at each of the 3 alignments
        encoded = base64.b64encode(b"\0" * shift + raw)
        start, end = -(-8 * shift // 6), 8 * (shift + len(raw)) // 6  # the characters made of secret bits only
        forms[f"base64+{shift}"] = encoded[start:end]
    return forms


def build_catalog(store: Path) -> None:
    """Have the catalog ingest every journal (a session only writes journals), so it is scanned too."""
    proc = run_cli("runs", "--store", str(store))
    assert proc.returncode == 0, proc.stderr


def assert_nowhere_in(store: Path, *values: str) -> None:
    build_catalog(store)
    files = [p for p in store.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" for p in files) and any(p.name == "catalog.duckdb" for p in files), files
    for value in values:
        for form, needle in encodings(value).items():
            for path in files:
                assert needle not in path.read_bytes(), f"{value!r} ({form}) found in {path}"


def assert_detects(store: Path, value: str) -> None:
    """The scan is not blind: a value stored under an ordinary name is found (in its base64 form)."""
    found = {form for form, needle in encodings(value).items() for p in store.rglob("*")
             if p.is_file() and needle in p.read_bytes()}
    assert found, f"{value!r} was stored but the scan found no form of it"


def cells_for(counter: str) -> list[str]:
    """A notebook holding the secret in secret-named variables (flat, nested, bytes) and in an excluded
    one, and using it through a notebook function; plus ordinary variables that must be restored."""
    return [
        counting_cell(counter, "key", "import os\nOPENAI_API_KEY = os.environ['NBD_TEST_SECRET']"),
        counting_cell(counter, "pw", "db_password = os.environ['NBD_TEST_SECRET2'].encode()"),
        counting_cell(counter, "nested",
                      "SERVICE_TOKEN_MAP = {'prod': {'bearer': OPENAI_API_KEY, 'scopes': ['read']}, 'n': 1}"),
        "%durable exclude session_blob",
        counting_cell(counter, "excluded", "session_blob = {'cookie': OPENAI_API_KEY[::-1], 'user': 'ann'}"),
        counting_cell(counter, "func", "def auth_header():\n    return {'Authorization': 'Bearer ' + OPENAI_API_KEY}"),
        counting_cell(counter, "plain",
                      "public = 'visible-' + str(len(OPENAI_API_KEY))\nmarker = os.environ['NBD_TEST_MARKER']"),
    ]


def test_interactive_session_never_writes_secrets(tmp_path: Path) -> None:
    store = tmp_path / "store"
    counter = str(tmp_path / "count.txt")
    secret, secret2, marker = new_secret(), new_secret(), "marker-" + secrets.token_hex(12)
    env = {"NBD_TEST_SECRET": secret, "NBD_TEST_SECRET2": secret2, "NBD_TEST_MARKER": marker}
    cells = cells_for(counter)
    assert run_session(store, [*cells, KILL], env=env).killed

    probes = {"key": "OPENAI_API_KEY", "pw": "db_password.decode()", "nested": "SERVICE_TOKEN_MAP['prod']['bearer']",
              "excluded": "session_blob['cookie'][::-1]", "header": "auth_header()['Authorization']",
              "public": "public"}
    second = run_session(store, cells, env=env, probes=probes)
    assert all(c["success"] for c in second.cells), second.cells
    assert second.probes == {"key": repr(secret), "pw": repr(secret2), "nested": repr(secret), "excluded": repr(secret),
                             "header": repr("Bearer " + secret), "public": repr(f"visible-{len(secret)}")}
    runs = executions(counter)
    labels = ["key", "pw", "nested", "excluded", "func", "plain"]
    assert runs == labels + ["key", "pw", "nested", "excluded"], "secret cells re-execute; the others are restored"
    assert second.stdout.count("nbdurable: restored from step") == 2
    refs = variable_refs(store)
    for name in ("OPENAI_API_KEY", "db_password", "SERVICE_TOKEN_MAP", "session_blob"):
        assert refs[name]["format"] == "unrestorable" and refs[name]["reason"].startswith("secret:"), refs[name]
    assert refs["auth_header"]["format"] == "pickle" and refs["public"]["format"] == "pickle"

    assert_nowhere_in(store, secret, secret2, secret[::-1])
    assert_detects(store, marker)


@pytest.mark.slow
def test_exclude_applies_from_the_magic_on(tmp_path: Path) -> None:
    """`%durable exclude NAME` (several names at once): those variables are not stored from then on,
    ordinary ones still are; `c.Durable.exclude` does the same from the configuration."""
    store = tmp_path / "store"
    value, configured = "v-" + secrets.token_hex(16), "c-" + secrets.token_hex(16)
    env = {"NBD_VALUE": value, "NBD_CONFIGURED": configured}
    cells = ["import os", "%durable exclude conn_info raw_rows", "conn_info = os.environ['NBD_VALUE']",
             "raw_rows = [os.environ['NBD_VALUE']] * 3", "rows_n = 3", "cfg = os.environ['NBD_CONFIGURED']"]
    session = run_session(store, [*cells, KILL], env=env, config={"Durable": {"exclude": ["cfg"]}})
    assert session.killed and "never stored from now on: conn_info, raw_rows" in session.stdout
    refs = variable_refs(store)
    assert {n: refs[n]["format"] for n in ("conn_info", "raw_rows", "rows_n", "cfg")} == {
        "conn_info": "unrestorable", "raw_rows": "unrestorable", "rows_n": "pickle", "cfg": "unrestorable"}
    assert_nowhere_in(store, value, configured)
    second = run_session(store, cells, env=env, config={"Durable": {"exclude": ["cfg"]}},
                         probes={"c": "conn_info == os.environ['NBD_VALUE']", "r": "len(raw_rows)", "cfg": "cfg[:2]"})
    assert second.probes == {"c": "True", "r": "3", "cfg": "'c-'"}
    assert second.stdout.count("re-executing this cell") == 3
    assert_nowhere_in(store, value, configured)


@pytest.mark.kernel
@pytest.mark.slow
def test_headless_run_never_writes_secrets(tmp_path: Path) -> None:
    """`nbdurable run`: the run crashes at its last cell, the second run resumes; the secret cells execute
    again, the rest is restored; the store holds no form of the secrets."""
    secret, secret2, marker = new_secret(), new_secret(), "marker-" + secrets.token_hex(12)
    cells = cells_for("counter.txt")
    check = ("import pathlib\n"
             "if not pathlib.Path('crashed-once').exists():\n"
             "    pathlib.Path('crashed-once').touch()\n"
             "    os.kill(os.getpid(), 9)\n"
             "ok = (auth_header()['Authorization'] == 'Bearer ' + os.environ['NBD_TEST_SECRET']\n"
             "      and SERVICE_TOKEN_MAP['prod']['bearer'] == OPENAI_API_KEY "
             "and db_password.decode() == os.environ['NBD_TEST_SECRET2']\n"
             "      and session_blob['cookie'][::-1] == OPENAI_API_KEY and marker == os.environ['NBD_TEST_MARKER'])\n"
             "pathlib.Path('verdict.txt').write_text(str(ok))")
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(source) for source in [*cells, check]]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    env = {"NBD_TEST_SECRET": secret, "NBD_TEST_SECRET2": secret2, "NBD_TEST_MARKER": marker}

    def run() -> CliResult:
        return run_cli("run", "nb.ipynb", "out.ipynb", "--no-progress", cwd=tmp_path, env=env)

    first = run()
    assert first.returncode == 1 and "crashed" in first.stdout, first.stdout + first.stderr
    second = run()
    assert second.returncode == 0, second.stdout + second.stderr
    assert (tmp_path / "verdict.txt").read_text() == "True"
    labels = ["key", "pw", "nested", "excluded", "func", "plain"]
    assert executions(tmp_path / "counter.txt") == labels + ["key", "pw", "nested", "excluded"]
    statuses = [c.metadata.nbdurable["status"] for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells]
    assert statuses == ["executed"] * 3 + ["control", "executed", "restored", "restored", "executed"]

    store = tmp_path / ".nbdurable"
    assert_nowhere_in(store, secret, secret2, secret[::-1])
    assert_detects(store, marker)


@pytest.mark.kernel
@pytest.mark.slow
def test_secret_parameters_are_recorded_as_digests_and_resume_from_the_environment(tmp_path: Path) -> None:
    """`-p OPENAI_API_KEY sk-…`: the run still resumes (same secret, same digest), yet neither the injected
    parameters cell nor the run record stores the secret; `nbdurable resume` takes it from the environment."""
    secret = new_secret()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("OPENAI_API_KEY = ''\nweek = 0"),
                nbformat.v4.new_code_cell("length = len(OPENAI_API_KEY)"),
                nbformat.v4.new_code_cell("import pathlib\nif not pathlib.Path('failed-once').exists():\n"
                                          "    pathlib.Path('failed-once').touch()\n    raise RuntimeError('flaky')")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, tmp_path / "params.ipynb")

    def nbd(*args: str, extra: dict[str, str] | None = None) -> CliResult:
        env = {"OPENAI_API_KEY": None, **(extra or {})}  # never this process's own key: the test decides
        return run_cli(*args, "--no-progress", "--store", "store", cwd=tmp_path, env=env)

    first = nbd("run", "params.ipynb", "-p", "OPENAI_API_KEY", secret, "-p", "week", "47")
    assert first.returncode == 1 and "flaky" in first.stderr, first.stderr
    run_id = first.stdout.split("run ")[1].split(":")[0]
    refused = nbd("resume", run_id)
    assert refused.returncode == 2 and "set the environment variable OPENAI_API_KEY" in refused.stderr, refused.stderr
    resumed = nbd("resume", run_id, extra={"OPENAI_API_KEY": secret})
    # the secret cells re-run
    assert resumed.returncode == 0 and "1 restored" in resumed.stdout, resumed.stdout + resumed.stderr
    again = nbd("run", "params.ipynb", "-p", "OPENAI_API_KEY", secret, "-p", "week", "47", "--fresh")
    assert again.returncode == 0, again.stderr
    assert_nowhere_in(tmp_path / "store", secret)


@pytest.mark.parametrize(("name", "secret"), [
    ("api_token", True), ("GITHUB_TOKEN", True), ("apiKey", True), ("TOKEN", True), ("ACCESS_TOKEN", True),
    ("OPENAI_API_KEY", True), ("db_password", True), ("SECRET_KEY", True), ("client_secret", True),
    ("HTTPToken", True), ("_private_key", True), ("access_token_v2", True), ("aws_credentials", True),
    ("tokenizer", False), ("Tokenizer", False), ("keyboard", False), ("monkey", False), ("key", False),
    ("tokens", False), ("max_tokens", False), ("token_count", False), ("secretary", False), ("key_size", False),
])
def test_secret_names_are_matched_by_word_not_by_letters(name: str, secret: bool) -> None:
    from nbdurable.capture.secrets import default_is_secret

    assert default_is_secret(name) is secret


def test_configured_patterns_use_the_same_words_and_old_patterns_still_work() -> None:
    from nbdurable.capture.namespace import SecretRules

    rules = SecretRules(["*_PIN", "*TOKEN*"], excluded=["session"])
    assert rules.is_secret("cardPin") and rules.is_secret("tokenizer") and rules.is_secret("session")
    assert not rules.is_secret("api_key") and not rules.is_secret("pinned")
