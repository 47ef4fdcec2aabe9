"""The approval widget of ``nbd.wait_for_event``: its logic through a recording comm, and a real kernel whose
waiting cell is released by a click sent the way JupyterLab sends it (a comm message on a kernel subshell,
while the main thread is blocked by the wait)."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path
from typing import Any

import pytest

from nbdurable.store import Store
from nbdurable.widgets.approval import ApprovalWidget

from conftest import run_session
from kernels import Kernel
from widget_comm import recording_comms

HERE = Path(__file__).parent


def _events(store: Store, name: str) -> list[dict[str, Any]]:
    found = [store.read_event(i) for i in store.event_ids(after=None)]
    return [e for e in found if e is not None and e.get("name") == name]


def test_approve_sends_the_event_with_match_and_payload(store_dir: Path) -> None:
    store = Store.open(store_dir)
    with recording_comms():
        widget = ApprovalWidget(store, "deploy", {"week": 47}, None)
    widget.comm.click({"action": "approve", "payload": '{"comment": "ship it"}'})
    sent = _events(store, "deploy")
    assert [e["data"] for e in sent] == [{"week": 47, "comment": "ship it", "approved": True}]
    assert widget.state == "sent" and "approved" in widget.message
    # The frontend saw the state change (one update per trait change at most).
    assert any(u.get("state") == "sent" for u in widget.comm.updates())
    widget.finish(sent[0])
    assert widget.state == "received" and "approved" in widget.message
    widget.comm.click({"action": "reject", "payload": ""})
    assert len(_events(store, "deploy")) == 1, "a click after the wait ended sends nothing"
    assert "already ended" in widget.message


def test_reject_and_bad_payloads(store_dir: Path) -> None:
    store = Store.open(store_dir)
    with recording_comms():
        widget = ApprovalWidget(store, "review", None, time.time() + 60)
    widget.comm.click({"action": "reject", "payload": "{not json"})
    assert _events(store, "review") == [] and "not valid JSON" in widget.message
    widget.comm.click({"action": "reject", "payload": "[1, 2]"})
    assert _events(store, "review") == [] and "JSON object" in widget.message
    widget.comm.click({"action": "dance"})  # unknown actions are ignored
    widget.comm.click({"action": "reject", "payload": ""})
    assert [e["data"] for e in _events(store, "review")] == [{"approved": False}]
    widget.finish(None)
    assert widget.state == "timeout"


def test_wait_for_event_shows_the_widget_and_a_click_releases_it(store_dir: Path) -> None:
    """In a real IPython shell: the extension's approval hook shows a widget; a click (from another thread,
    as a kernel subshell delivers it) releases the waiting cell, which gets the event's data."""
    setup = (
        f"import sys, threading; sys.path.insert(0, {str(HERE)!r})\n"
        "import anywidget, ipywidgets\n"
        "from widget_comm import recording_comms\n"
        "_recording = recording_comms(); _recording.__enter__()\n"
        "from nbdurable.runtime import session as nbd_session\n"
        "from nbdurable.widgets.approval import ApprovalWidget\n"
        "_shown = []\n"
        "def _factory(store, name, match, timeout_at):\n"
        "    w = ApprovalWidget(store, name, match, timeout_at)\n"
        "    _shown.append(w)\n"
        "    threading.Timer(0.5, lambda: w.comm.click({'action': 'approve', 'payload': '{\"by\": \"ana\"}'}))"
        ".start()\n"
        "    return w\n"
    )
    session = run_session(store_dir, [
        "nbd_session.use_approval_ui(_factory)",
        "import nbdurable as nbd\nanswer = nbd.wait_for_event('approval', match={'model': 'v2'}, timeout='30s')",
        "print(answer)",
    ], setup=setup, probes={"answer": "answer", "state": "_shown[0].state", "shown": "len(_shown)"})
    assert all(c["success"] for c in session.cells), session.cells
    assert ast.literal_eval(session.probes["answer"]) == {"model": "v2", "by": "ana", "approved": True}
    assert session.probes["state"] == "'received'" and session.probes["shown"] == "1"


@pytest.mark.kernel
def test_real_kernel_click_on_a_subshell_releases_a_blocked_wait(tmp_path: Path) -> None:
    """What JupyterLab (>= 4.4) does with ipykernel (>= 7): widget messages travel on a kernel subshell,
    so a click is handled while the cell blocks the main thread."""
    store = tmp_path / "store"
    kernel = Kernel({"NBDURABLE_STORE": str(store), "NBDURABLE_NOTEBOOK": str(tmp_path / "approve.ipynb")}, tmp_path)
    try:
        reply, _ = kernel.execute("%load_ext nbdurable")
        assert reply["status"] == "ok", reply
        kc = kernel.kc
        info = kc.kernel_info(reply=True)["content"]
        assert "kernel subshells" in info.get("supported_features", []), info
        kc.control_channel.send(kc.session.msg("create_subshell_request", {}))
        subshell = kc.control_channel.get_msg(timeout=30)["content"]["subshell_id"]
        cell = kc.execute("import nbdurable as nbd\nanswer = nbd.wait_for_event('deploy', timeout='60s')\n"
                          "print('GOT', answer)")
        model_id, outputs = None, []
        deadline = time.time() + 60
        while time.time() < deadline:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") != cell:
                continue
            content = msg["content"]
            if msg["msg_type"] == "display_data":
                view = content["data"].get("application/vnd.jupyter.widget-view+json")
                if view:
                    model_id = view["model_id"]
                    assert content["metadata"].get("nbdurable", {}).get("notice") == "approval"
                    # The click: a widget custom message, on the subshell the frontend uses for comms.
                    click = kc.session.msg("comm_msg", {"comm_id": model_id, "data": {
                        "method": "custom", "content": {"action": "approve", "payload": '{"by": "lab"}'}}})
                    click["header"]["subshell_id"] = subshell
                    kc.shell_channel.send(click)
            elif msg["msg_type"] == "stream":
                outputs.append(content["text"])
            elif msg["msg_type"] == "status" and content["execution_state"] == "idle":
                break
        assert model_id is not None, "no approval widget was displayed"
        assert "GOT {'by': 'lab', 'approved': True}" in "".join(outputs), outputs
        reply = kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != cell:
            reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "ok"
        sent = _events(Store.open(store), "deploy")
        assert [e["data"] for e in sent] == [{"by": "lab", "approved": True}]
        json.dumps(sent)
    finally:
        kernel.close()
