"""How a headless run ended (``RunResult``), and the rules the runner applies to cells and their errors:
which cells nbclient sends, what papermill calls a cell's exception, what counts as a clean early exit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nbdurable.errors import LeaseHeldError
from nbdurable.runtime.replay import find_resumable
from nbdurable.runtime.session import NOTICE_METADATA_KEY
from nbdurable.store import Store

LEASE_WAIT_SECONDS = 15.0  # an orphaned kernel (its runner was killed) exits within ~1 s by itself
SKIP_TAG = "skip-execution"  # nbclient's default ``skip_cells_with_tag``: such cells are never sent
CLEAN_EXIT_VALUES = ("", "0", "None")  # a SystemExit with one of these values ends a notebook successfully


@dataclass
class RunResult:
    """How a headless run ended."""

    # The run's status as its journal has it once the kernel is gone: "completed", "failed", "crashed",
    # "interrupted" (the kernel stopped between cells), "cancelled" (on request: ``cancel`` says who, when,
    # why), "suspended"; the runner's own view when there is no
    # journal (the kernel died before the first cell). "running" only while it runs.
    status: str
    run_id: str | None = None
    resumed_from: str | None = None
    executed: int = 0
    restored: int = 0
    time_saved: float = 0.0
    seconds: float = 0.0
    error: str | None = None  # "ename: evalue" of the failing cell's first error output (as papermill reports it)
    cells: list[dict[str, Any]] = field(default_factory=list)
    wake_at: float | None = None  # a suspended run: when its timer is due
    waiting_for: dict[str, Any] | None = None  # a suspended run: the event it waits for
    # What stopped the run before its last cell: "error" (a cell raised), "timeout" (a cell ran longer than the
    # execution timeout), "kernel_died", "kernel_start" (the kernel did not start), "interrupted" (Ctrl-C),
    # "cancelled" (a cancel request: ``nbdurable cancel``);
    # None when it ran to its end, exited early or suspended itself.
    stopped_by: str | None = None
    stopped_at: int | None = None  # index (in the notebook) of the cell that failed, timed out or was running
    exited_at: int | None = None  # index of the cell whose sys.exit() / sys.exit(0) ended the notebook early
    cancel: dict[str, Any] | None = None  # a cancelled run: the request ({"by", "reason", "requested_at"})

    @property
    def interrupted(self) -> bool:
        return self.stopped_by == "interrupted"

    def describe_suspension(self) -> str:
        """What a suspended run waits for, in words."""
        from nbdurable.errors import describe_suspension

        return describe_suspension(self.wake_at, self.waiting_for)


def find_resumable_headless(store: Store, notebook: str, params: dict[str, Any]) -> str | None:
    """The newest run of ``notebook`` with these parameters, if it did not finish.

    A run still live in another process is waited for a little (its runner may have been killed and the
    orphaned kernel is about to exit); if it stays live, LeaseHeldError."""
    deadline = time.monotonic() + LEASE_WAIT_SECONDS
    while True:
        run_id, live = find_resumable(store, notebook, params)
        if live is None:
            return run_id
        if time.monotonic() >= deadline:
            raise LeaseHeldError(
                f"{live} ({notebook}, same parameters).",
                hint="wait for it to finish, or stop it; use --fresh to start an independent run now.",
            )
        time.sleep(0.25)


def notice_of(output: dict[str, Any]) -> dict[str, Any] | None:
    meta = output.get("metadata", {}).get(NOTICE_METADATA_KEY)
    return meta if isinstance(meta, dict) and "notice" in meta else None


def executes(cell: Any) -> bool:
    """True if nbclient sends ``cell`` to the kernel (a code cell with code, not tagged skip-execution)."""
    return bool(cell.cell_type == "code" and cell.source.strip() and SKIP_TAG not in cell.metadata.get("tags", []))


def first_exception(cell: Any, content: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """The exception a cell raised, as papermill names it: its first ``error`` output's (ename, evalue).

    Not the reply's traceback: ipykernel's reply carries the last traceback shown, which may be an error
    raised after the cell (matplotlib's figure flush, a ``post_execute`` callback). A cell without an error
    output (a line magic's UsageError is printed, not raised as an output) falls back to the reply
    ``content``'s."""
    first = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
    if first is not None:
        return str(first.get("ename", "")), str(first.get("evalue", ""))
    if content and (content.get("status") == "error" or content.get("ename")):
        return str(content.get("ename") or "Error"), str(content.get("evalue") or "")
    return None


def describe_exception(exc: tuple[str, str] | None) -> str:
    """``ename: evalue`` (``ename`` alone when the value is empty)."""
    if exc is None:
        return "a cell failed"
    ename, evalue = exc
    return f"{ename}: {evalue}" if evalue.strip() else ename


def is_clean_exit(exc: tuple[str, str] | None) -> bool:
    """True for ``sys.exit()``, ``sys.exit(0)``, ``sys.exit(None)``, ``raise SystemExit``: an early, successful end."""
    return exc is not None and exc[0] == "SystemExit" and exc[1].strip() in CLEAN_EXIT_VALUES


def interrupt_kernel(client: Any, wait: float) -> None:
    """Interrupt the kernel's running cell and wait (up to ``wait`` seconds) for its reply: its step ends
    `interrupted` and the kernel, idle, shuts down at once instead of being killed."""
    from jupyter_core.utils import ensure_async, run_sync

    async def interrupt() -> None:
        assert client.km is not None and client.kc is not None
        await ensure_async(client.km.interrupt_kernel())
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            msg = await ensure_async(client.kc.shell_channel.get_msg(timeout=left))
            if msg.get("msg_type") == "execute_reply":
                return

    try:
        run_sync(interrupt)()
    except Exception:  # no reply in time (queue.Empty), or the kernel is gone: it is shut down next anyway
        pass


def take_notices(cell: Any) -> dict[str, Any]:
    """Remove nbdurable's notices from a cell's outputs (they would make them differ from a clean run)."""
    found: dict[str, Any] = {}
    kept = []
    for output in cell.get("outputs", []):
        notice = notice_of(output)
        if notice is None:
            kept.append(output)
        elif notice.get("notice") == "restored" or not found:
            found = dict(notice)
    cell.outputs = kept
    return found


ALREADY_LOADED = "The nbdurable extension is already loaded."  # IPython's %load_ext, the extension loaded by --ext


def without_load_ext_echo(outputs: list[Any]) -> list[Any]:
    """A cell's outputs without IPython's "already loaded, use %reload_ext" lines: the runner's kernel loads
    the extension at start (``--ext nbdurable``), so the notebook's own ``%load_ext nbdurable`` always gets
    them, and they are no output of the notebook (a Jupyter kernel that loads it once shows none)."""
    return [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stdout"
                                       and "".join(o.get("text", "")).startswith(ALREADY_LOADED))]


def duration(value: float) -> str:
    """A duration as runs are reported (``nbdurable run``, ``show``, the papermill engine): ``850 ms``,
    ``2.0 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"
