"""Outputs recorded as the notebook shows them, and restored the same way.

Unit tests of ``nbdurable.runtime.output_fold`` (the folding rules; ``\\r``/``\\b`` also checked against
JupyterLab's own output-area code, run with node, when JupyterLab and node are installed), then real
kernels: a cell with ``clear_output(wait=True)`` in a loop, a display updated by its cell and by later
cells, an ``ipywidgets.Output`` capture, output written to file descriptor 1 below Python, a tqdm-like
``\\r`` progress line. Each is recorded, the kernel killed, and a new kernel resuming must show what a
clean run showed:

- interactive: the IOPub messages the frontend gets, folded as the frontend folds them (notices dropped,
  widget model ids and execution counts normalized), for the resumed kernel's Run All and the clean one;
  and each step's recorded outputs are what the clean run's frontend showed for its cell;
- headless: ``nbdurable run`` killed at a cell, run again, its output notebook equal to a clean
  ``nbdurable run --fresh`` one (execution counts, notice metadata, widget model ids normalized).

ipykernel does not watch file descriptors 1 and 2 when ``PYTEST_CURRENT_TEST`` is in its environment:
every kernel here is started without it.
"""

from __future__ import annotations

import copy
import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbdurable.runtime.output_fold import (
    OutputFold,
    OutputWidgets,
    StreamText,
    fold_messages,
    fold_outputs,
    fold_stream_text,
    join_streams,
    settle,
)
from nbdurable.runtime.session import NOTICE_METADATA_KEY

from helpers import journal_records, run_cli
from kernels import Kernel

NOTICE = {NOTICE_METADATA_KEY: {"notice": "restored"}}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
NO_FD_WATCH = {"PYTEST_CURRENT_TEST": None}  # ipykernel watches fds 1 and 2 only without it


def fold(*messages: tuple[str, dict[str, Any]], request: str | None = "req",
         widgets: OutputWidgets | None = None) -> list[dict[str, Any]]:
    return fold_messages(messages, notice_key=NOTICE_METADATA_KEY, request_msg_id=request, widgets=widgets)


def stream(text: str, name: str = "stdout") -> tuple[str, dict[str, Any]]:
    return "stream", {"name": name, "text": text}


def display(text: str, display_id: str | None = None, *, update: bool = False,
            metadata: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    content: dict[str, Any] = {"data": {"text/plain": text}, "metadata": metadata or {}}
    content["transient"] = {"display_id": display_id} if display_id else {}
    return ("update_display_data" if update else "display_data"), content


def clear(wait: bool) -> tuple[str, dict[str, Any]]:
    return "clear_output", {"wait": wait}


def out_stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def out_display(text: str, display_id: str | None = None) -> dict[str, Any]:
    output: dict[str, Any] = {"output_type": "display_data", "data": {"text/plain": text}, "metadata": {}}
    if display_id:
        output["transient"] = {"display_id": display_id}
    return output


def pending(text: str, display_id: str) -> dict[str, Any]:
    return {"output_type": "update_display_data", "data": {"text/plain": text}, "metadata": {},
            "transient": {"display_id": display_id}}


# ----------------------------------------------------------------------------------- clear_output


def test_clear_output_wait_clears_before_the_next_output() -> None:
    messages = []
    for i in range(10):
        messages += [clear(True), stream(f"line {i}\n")]
    assert fold(*messages) == [out_stream("line 9\n")]
    # nothing follows the clear: the outputs stay
    assert fold(stream("a\n"), clear(True)) == [out_stream("a\n")]
    # an update is not an output: it does not trigger the clear, and it still updates
    assert fold(display("v1", "d"), clear(True), display("v2", "d", update=True)) == [out_display("v2", "d")]
    assert fold(display("v1", "d"), clear(True), display("x")) == [out_display("x")]
    # after a wait clear the next stream starts a new output, even of the same name
    assert fold(stream("a"), clear(True), stream("b")) == [out_stream("b")]


def test_clear_output_now_clears_at_once() -> None:
    assert fold(stream("a\n"), display("x"), clear(False)) == []
    assert fold(stream("a\n"), clear(False), stream("b\n")) == [out_stream("b\n")]
    # a pending update is for an earlier cell: a clear of this cell keeps it
    assert fold(display("u", "other", update=True), stream("a"), clear(False)) == [pending("u", "other")]
    # a cleared display is no longer this cell's: an update of its id is for earlier cells now
    assert fold(display("v1", "d"), clear(False), display("v2", "d", update=True)) == [pending("v2", "d")]


# ------------------------------------------------------------------------------- display updates


def test_update_display_data_replaces_every_output_with_its_id() -> None:
    assert fold(display("v1", "d"), stream("x\n"), display("w", "e"), display("v2", "d", update=True)) == [
        out_display("v2", "d"), out_stream("x\n"), out_display("w", "e")]
    # metadata too; other display ids untouched; no display id: nothing to update
    got = fold(display("v1", "d"), display("v2", "d", update=True, metadata={"m": 1}),
               display("ignored", None, update=True))
    assert got == [{**out_display("v2", "d"), "metadata": {"m": 1}}]


def test_a_display_reusing_a_display_id_updates_the_earlier_ones() -> None:
    assert fold(display("a", "d"), display("b", "d")) == [out_display("b", "d"), out_display("b", "d")]


def test_an_update_for_an_earlier_cell_is_a_pending_update_in_send_order() -> None:
    got = fold(stream("before\n"), display("u1", "old", update=True), display("x"),
               display("u2", "old", update=True), display("v", "other", update=True))
    # only the last update of a display id is kept (each replaces the whole display); order otherwise kept
    assert got == [out_stream("before\n"), out_display("x"), pending("u2", "old"), pending("v", "other")]
    # a stream goes on across an update of another cell's display (JupyterLab appends to it)
    assert fold(stream("a"), display("u", "old", update=True), stream("b")) == [out_stream("ab"), pending("u", "old")]


def test_settle_applies_pending_updates_and_reused_ids_to_earlier_cells_in_order() -> None:
    cells = [
        [out_display("first", "d"), out_stream("one\n")],
        [pending("second", "d"), out_stream("two\n")],
        [out_display("x", "e")],
        [pending("third", "d"), pending("y", "e")],
        [out_display("fourth", "d")],  # a display reusing the id updates the earlier ones too
    ]
    assert settle(cells) == [
        [out_display("fourth", "d"), out_stream("one\n")],
        [out_stream("two\n")],
        [out_display("y", "e")],
        [],
        [out_display("fourth", "d")],
    ]


# ----------------------------------------------------------------------- results, errors, notices


def test_execute_result_error_and_display_forms() -> None:
    got = fold(("execute_result", {"execution_count": 3, "data": {"text/plain": "42"}, "metadata": {}}),
               ("error", {"ename": "ValueError", "evalue": "bad", "traceback": ["tb1", "tb2"]}),
               display("plain"))
    assert got == [
        {"output_type": "execute_result", "execution_count": 3, "data": {"text/plain": "42"}, "metadata": {}},
        {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": ["tb1", "tb2"]},
        out_display("plain"),  # no display id: no transient at all
    ]
    # other message types (status, execute_input, ...) are not outputs
    assert fold(("status", {"execution_state": "busy"}), ("execute_input", {"code": "1"})) == []


def test_notices_are_dropped() -> None:
    got = fold(stream("a"), display("↻ restored", metadata=NOTICE), stream("b"),
               display("wait", "w", metadata=NOTICE), display("wait 2", "w", update=True, metadata=NOTICE))
    assert got == [out_stream("ab")]


# ------------------------------------------------------------------------------------------ streams


def test_streams_of_one_name_are_joined_as_jupyterlab_shows_them() -> None:
    assert fold(stream("a"), stream("b\n"), stream("c\n")) == [out_stream("ab\nc\n")]
    assert fold(stream("a\n"), stream("e\n", "stderr"), stream("b\n")) == [
        out_stream("a\n"), out_stream("e\n", "stderr"), out_stream("b\n")]
    assert fold(stream("a\n"), display("x"), stream("b\n")) == [out_stream("a\n"), out_display("x"), out_stream("b\n")]


# What JupyterLab 4 shows for a stream output that received these writes (its output area's processText:
# ``\r`` moves the cursor to the start of the line, later text overwrites, ``\n`` appends a line, ``\b``
# deletes the character before the cursor and the one under it). Checked against JupyterLab's own code below.
JUPYTERLAB_CASES = [
    (["0%\r10%\r100%\n"], "100%\n"),
    (["abcdef\rXY"], "XYcdef"),  # a shorter line overwrites, it does not erase
    (["abcdef\rXY\nZ"], "XYcdef\nZ"),
    (["abc\r", "X"], "Xbc"),  # the cursor survives from one message to the next
    (["a\r\nb"], "a\nb"),
    (["abc\bd"], "abd"),
    (["abcd\rab\bX"], "aX"),  # JupyterLab's \b removes two characters when the cursor is inside the line
    (["ab\n\bc"], "ab\nc"),  # \b never crosses a line
    (["\b\bx"], "x"),
    (["ab\b", "\bz"], "z"),
    ([" 10%|#         |\r", " 20%|##        |\r", "100%|##########|\n"], "100%|##########|\n"),
    (["|\b/\b-\b\\\bdone\n"], "done\n"),
]


@pytest.mark.parametrize(("writes", "shown"), JUPYTERLAB_CASES)
def test_carriage_returns_and_backspaces_fold_as_in_jupyterlab(writes: list[str], shown: str) -> None:
    assert fold(*(stream(w) for w in writes)) == [out_stream(shown)]
    assert fold_stream_text("".join(writes)) == shown  # the same in one message as in several


def _jupyterlab_process_text() -> str | None:
    """JupyterLab's output-area text processing (``processText``), cut from the installed JupyterLab
    bundle: the minified function that defines it, or None when there is no such bundle."""
    roots = {Path(sys.prefix) / "share" / "jupyter" / "lab" / "static"}
    try:
        from jupyter_core.paths import jupyter_path

        roots.update(Path(p) / "static" for p in jupyter_path("lab"))
    except ImportError:
        pass
    for root in roots:
        for path in sorted(glob.glob(str(root / "*.js"))):
            source = Path(path).read_text(encoding="utf-8", errors="replace")
            at = source.find(".processText=")
            if at < 0 or '"\\b"===' not in source:
                continue
            start = at
            while (start := source.rfind("function(", 0, start)) >= 0:
                end = _matching_brace(source, source.index("{", start))
                if end > at:
                    return source[start:end + 1]
    return None


def _matching_brace(source: str, opening: int) -> int:
    depth, quote, i = 0, "", opening
    while i < len(source):
        char = source[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


NODE_RUNNER = """
const fs = require("fs");
const ns = {};
(eval("(" + fs.readFileSync(process.argv[2], "utf8") + ")"))(ns);
const cases = JSON.parse(fs.readFileSync(0, "utf8"));
console.log(JSON.stringify(cases.map((writes) => {
  let text = "", index = 0;
  for (const w of writes) ({text, index} = ns.processText(index, w, text));
  return text;
})));
"""


def test_stream_folding_equals_jupyterlabs_own_code(tmp_path: Path) -> None:
    node = shutil.which("node")
    function = _jupyterlab_process_text()
    if node is None or function is None:
        pytest.skip("needs node and an installed JupyterLab")
    (tmp_path / "process_text.js").write_text(function)
    (tmp_path / "runner.js").write_text(NODE_RUNNER)
    import random

    rng = random.Random(7)
    cases = [writes for writes, _ in JUPYTERLAB_CASES]
    cases += [["".join(rng.choice("ab \n\r\b") for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(1, 4))]
              for _ in range(2000)]
    done = subprocess.run([node, str(tmp_path / "runner.js"), str(tmp_path / "process_text.js")],
                          input=json.dumps(cases), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = json.loads(done.stdout)
    assert [shown for _, shown in JUPYTERLAB_CASES] == expected[:len(JUPYTERLAB_CASES)]
    for writes, lab in zip(cases, expected, strict=True):
        text = StreamText()
        for w in writes:
            text.write(w)
        assert text.text == lab, writes


def test_long_outputs_fold_in_linear_time() -> None:
    text = StreamText()
    for i in range(200_000):
        text.write(f"\r{i:>8}")
    text.write("\n" + "x\n" * 200_000)
    assert text.text.startswith("  199999\nx\n") and len(text.text) == 9 + 400_000


def test_folding_folded_outputs_changes_nothing() -> None:
    once = fold(stream("a\r"), stream("bc\n"), stream("e", "stderr"), display("x", "d"), stream("\rzz"))
    assert fold_outputs(once, notice_key=NOTICE_METADATA_KEY) == once
    # nbformat's multi-line text
    assert fold_outputs([{"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]}],
                        notice_key=None) == [out_stream("a\nb\n")]


def test_join_streams_says_where_each_output_went() -> None:
    outputs = [out_stream("a\r"), out_stream("b\n"), out_display("x"), out_stream("c"), out_stream("d", "stderr"),
               out_stream("e", "stderr")]
    joined, moved = join_streams(outputs)
    assert joined == [out_stream("b\n"), out_display("x"), out_stream("c"), out_stream("de", "stderr")]
    assert moved == [0, 0, 1, 2, 3, 3]
    assert outputs[0]["text"] == "a\r" and joined[1] is outputs[2]  # copies of joined streams only


# ---------------------------------------------------------------------------------- Output widgets


def widget_open(comm_id: str, model: str = "OutputModel", msg_id: str = "") -> tuple[str, dict[str, Any]]:
    return "comm_open", {"comm_id": comm_id, "target_name": "jupyter.widget",
                         "data": {"state": {"_model_name": model, "msg_id": msg_id}, "buffer_paths": []}}


def widget_msg_id(comm_id: str, msg_id: str) -> tuple[str, dict[str, Any]]:
    return "comm_msg", {"comm_id": comm_id, "data": {"method": "update", "state": {"msg_id": msg_id},
                                                     "buffer_paths": []}}


def test_output_widget_captures_are_left_out_of_the_cell() -> None:
    got = fold(widget_open("w1"), stream("before\n"), widget_msg_id("w1", "req"), stream("inside\n"),
               display("in widget"), clear(False), ("error", {"ename": "E", "evalue": "", "traceback": []}),
               widget_msg_id("w1", ""), stream("after\n"))
    assert got == [out_stream("before\nafter\n")]  # a capture does not end the cell's stream output
    # a widget capturing another request (an earlier cell's) takes nothing of this one
    assert fold(widget_open("w1", msg_id="older"), stream("mine\n")) == [out_stream("mine\n")]
    # other widgets' msg_id-like state means nothing; a closed widget captures nothing
    slider = fold(widget_open("s", model="IntSliderModel"), widget_msg_id("s", "req"), stream("x\n"))
    assert slider == [out_stream("x\n")]
    assert fold(widget_open("w1"), widget_msg_id("w1", "req"), ("comm_close", {"comm_id": "w1"}),
                stream("y\n")) == [out_stream("y\n")]
    # updates still apply (nbclient applies them whoever captures)
    assert fold(display("v1", "d"), widget_open("w1"), widget_msg_id("w1", "req"),
                display("v2", "d", update=True)) == [out_display("v2", "d")]


def test_output_widgets_outlive_a_cell() -> None:
    widgets = OutputWidgets()
    assert fold(widget_open("w1"), display("Output()"), request="cell-1", widgets=widgets) == [out_display("Output()")]
    assert fold(widget_msg_id("w1", "cell-2"), stream("inside\n"), widget_msg_id("w1", ""), stream("outside\n"),
                request="cell-2", widgets=widgets) == [out_stream("outside\n")]
    known = OutputWidgets()
    known.track("w9")  # opened before anyone followed the messages
    assert fold(widget_msg_id("w9", "r"), stream("x\n"), request="r", widgets=known) == []


def test_fold_is_incremental() -> None:
    fold_ = OutputFold(notice_key=NOTICE_METADATA_KEY)
    fold_.feed(*stream("a\r"))
    assert fold_.outputs() == [out_stream("a")]
    fold_.feed(*stream("b"))
    assert fold_.outputs() == [out_stream("b")]


def test_replay_shows_display_ids_and_pending_updates() -> None:
    from nbdurable.kernel_ext.outputs import replay_outputs

    calls: list[tuple[dict[str, Any], dict[str, Any]]] = []

    class Pub:
        def publish(self, data: dict[str, Any], metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
            calls.append((data, kwargs))

    class Shell:
        display_pub = Pub()

    replay_outputs(Shell(), [out_display("x", "d"), out_display("plain"), pending("u", "e")])
    assert calls == [({"text/plain": "x"}, {"transient": {"display_id": "d"}}), ({"text/plain": "plain"}, {}),
                     ({"text/plain": "u"}, {"transient": {"display_id": "e"}, "update": True})]


# ------------------------------------------------------------------------------------- real kernels

LOAD = "%load_ext nbdurable"
SCENARIOS: dict[str, list[str]] = {
    "clear_output": [
        "from IPython.display import clear_output\nimport time\n"
        "for i in range(10):\n    clear_output(wait=True)\n    print('line', i)\n    time.sleep(0.03)",
    ],
    "display_update": [
        "from IPython.display import display, update_display\n"
        "handle = display('first', display_id=True)\nhandle.update('second')\nhid = handle.display_id",
        "update_display('third', display_id=hid)\nprint('updated from a later cell')",
    ],
    # (The pause: nbclient's Output widget mimic answers a capture with a comm message on the shell channel;
    # one that crosses the execute reply can leave nbclient waiting forever. An nbclient/ipykernel race,
    # without nbdurable too: plain nbclient on these two cells hung 3 runs in 80.)
    "output_widget": [
        "import ipywidgets\nout = ipywidgets.Output()\ndisplay(out)",
        "import time\nwith out:\n    print('inside the widget')\ntime.sleep(0.3)\nprint('outside the widget')",
    ],
    "fd_output": [  # (the cell ends with them: Python output after them could overtake them)
        "import os, subprocess\nprint('before')\nos.system('echo fd-out')\n"
        "run = subprocess.run(['echo', 'subprocess-out'])",
    ],
    "progress": [  # one stream message a write (each flushed, as tqdm does); "done" overwrites "100%" only
        "import sys, time\nfor i in range(11):\n    sys.stdout.write(f'\\r{i * 10:3d}% ' + '#' * i)\n"
        "    sys.stdout.flush()\n    time.sleep(0.05)\nsys.stdout.write('\\rdone\\n')\nsys.stdout.flush()\n"
        "for c in '|/-\\\\':\n    sys.stderr.write(c + '\\b')\n    sys.stderr.flush()\n    time.sleep(0.05)\n"
        "print('ok', file=sys.stderr)",
    ],
}


def normalize(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What legitimately differs between runs: execution counts, widget model ids, display ids."""
    result = []
    for output in copy.deepcopy(outputs):
        output.pop("execution_count", None)
        output.pop("transient", None)
        view = output.get("data", {}).get(WIDGET_VIEW)
        if isinstance(view, dict):
            view["model_id"] = "<model>"
        result.append(output)
    return result


def run_cells(kernel: Kernel, cells: list[str]) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """Each cell's request msg_id and the IOPub messages the frontend got for it (type, content)."""
    runs = []
    for cell in cells:
        messages: list[tuple[str, dict[str, Any]]] = []
        reply = kernel.kc.execute_interactive(
            cell, timeout=60, output_hook=lambda msg, got=messages: got.append((msg["msg_type"], msg["content"])))
        assert reply["content"]["status"] == "ok", reply["content"]
        runs.append((reply["parent_header"]["msg_id"], messages))
    return runs


def shown(runs: list[tuple[str, list[tuple[str, dict[str, Any]]]]]) -> list[list[dict[str, Any]]]:
    """What the frontend shows for each cell once all ran (notices dropped)."""
    widgets = OutputWidgets()
    recorded = [fold(*messages, request=request, widgets=widgets) for request, messages in runs]
    return [normalize(cell) for cell in settle(recorded)]


def notices(messages: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [content["metadata"][NOTICE_METADATA_KEY]["notice"] for kind, content in messages
            if kind == "display_data" and NOTICE_METADATA_KEY in content.get("metadata", {})]


@pytest.mark.slow
@pytest.mark.kernel
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_interactive_resume_shows_what_a_clean_run_showed(scenario: str, tmp_path: Path) -> None:
    cells = [LOAD, *SCENARIOS[scenario]]
    env = {"NBDURABLE_STORE": str(tmp_path / "store"), "NBDURABLE_NOTEBOOK": str(tmp_path / "nb.ipynb"),
           **NO_FD_WATCH}
    kernel = Kernel(env, tmp_path)
    try:
        clean = run_cells(kernel, cells)
    finally:
        kernel.kill()
    kernel = Kernel(env, tmp_path)
    try:
        resumed = run_cells(kernel, cells)
    finally:
        kernel.close()

    # the point is a restored cell; one reading the Output widget (not storable, rebuilt by re-executing its
    # cell) executes again, so that what it captured is in the new widget, as in a clean run
    assert (REEXECUTED.get(scenario) or "restored") in notices(resumed[-1][1]), resumed[-1][1]
    assert shown(resumed)[1:] == shown(clean)[1:]
    # each step recorded what the clean run's frontend showed for its cell (pending updates included)
    widgets = OutputWidgets()
    expected = [normalize(fold(*messages, request=request, widgets=widgets)) for request, messages in clean]
    recorded = [normalize(r["outputs"]) for r in journal_records(tmp_path / "store", "step_end")
                if r["status"] == "completed"][:len(cells) - 1]
    assert recorded == expected[1:]
    for kind, content in (m for _, messages in resumed for m in messages):
        assert not (kind == "stream" and ("\r" in content["text"] or "\b" in content["text"])), content


# ------------------------------------------------------------------------------------ headless runs

REEXECUTED = {"output_widget": "reexecuted"}  # scenarios whose last cell reads a rebuilt (unstorable) object

KILL_ONCE = ("import os, pathlib\nif not pathlib.Path('killed-once').exists():\n"
             "    pathlib.Path('killed-once').touch()\n    os.kill(os.getpid(), 9)")
AFTER_KILL: dict[str, list[str]] = {  # cells executed by the resumed run, after the kill
    "display_update": ["update_display('fourth', display_id=hid)"],  # reaches a display filled from the journal
}


SHOWN: dict[str, list[list[dict[str, Any]]]] = {  # what the output notebook shows for the scenario's cells
    "clear_output": [[out_stream("line 9\n")]],
    "display_update": [[{"output_type": "display_data", "data": {"text/plain": "'fourth'"}, "metadata": {}}],
                       [out_stream("updated from a later cell\n")]],
    "output_widget": [[{"output_type": "display_data", "metadata": {},
                        "data": {"text/plain": "Output()", WIDGET_VIEW: {"version_major": 2, "version_minor": 0,
                                                                         "model_id": "<model>"}}}],
                      [out_stream("outside the widget\n")]],
    "fd_output": [[out_stream("before\nfd-out\nsubprocess-out\n")]],
    "progress": [[out_stream("done ##########\n"), out_stream("ok\n", "stderr")]],
}


def write_notebook(directory: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "scenario.ipynb"
    nbformat.write(nb, path)
    return path


def notebook_outputs(path: Path) -> list[list[dict[str, Any]]]:
    nb = nbformat.read(path, as_version=4)
    return [normalize([dict(o) for o in cell.outputs]) for cell in nb.cells]


def statuses(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [cell.metadata.get(NOTICE_METADATA_KEY, {}).get("status") for cell in nb.cells]


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_headless_resume_equals_a_clean_run(scenario: str, tmp_path: Path) -> None:
    cells = [*SCENARIOS[scenario], KILL_ONCE, *AFTER_KILL.get(scenario, []), "print('the end')"]
    run = ["run", "scenario.ipynb", "out.ipynb", "--no-progress"]
    clean_dir, dir_ = tmp_path / "clean", tmp_path / "resumed"
    write_notebook(clean_dir, cells)
    (clean_dir / "killed-once").touch()
    clean = run_cli(*run, "--fresh", cwd=clean_dir, env=NO_FD_WATCH)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    write_notebook(dir_, cells)
    killed = run_cli(*run, cwd=dir_, env=NO_FD_WATCH)
    assert killed.returncode != 0 and (dir_ / "killed-once").exists(), killed.stdout + killed.stderr
    resumed = run_cli(*run, cwd=dir_, env=NO_FD_WATCH)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    assert statuses(dir_ / "out.ipynb")[len(SCENARIOS[scenario]) - 1] == ("executed" if scenario in REEXECUTED
                                                                           else "restored")
    assert notebook_outputs(dir_ / "out.ipynb") == notebook_outputs(clean_dir / "out.ipynb")
    assert notebook_outputs(dir_ / "out.ipynb")[:len(SCENARIOS[scenario])] == SHOWN[scenario]

