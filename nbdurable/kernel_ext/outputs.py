"""Capturing a cell's outputs as the notebook shows them, and showing recorded outputs again.

**In a Jupyter kernel** (ipykernel: ``shell.kernel`` is set) capture reads what the frontend reads: the
kernel's IOPub messages. The display publisher, the displayhook, the ``OutStream`` objects behind
``sys.stdout``/``sys.stderr`` (which also carry what subprocesses and C code write to file descriptors 1
and 2: ipykernel watches those through a pipe) and the comms all send through one ``Session`` object,
``shell.kernel.session``; its ``send`` is wrapped while the extension is loaded. The messages whose parent
is the executing cell's request (``shell.get_parent()`` at ``start``) are folded as they come by
``runtime.output_fold`` (clear_output, display updates, Output widgets, streams joined and ``\\r``/``\\b``
folded); comm messages of any parent keep track of the kernel's Output widgets. Streams come from the
IOPub thread: the fold is guarded by a lock. ``stop`` first waits (at most ``FD_DRAIN_SECONDS``) until the
OutStreams' fd pipes are read, then flushes the streams (``OutStream.flush`` waits for the IOPub thread).

What it cannot see: output of the cell's request sent after ``stop`` (a later ``post_run_cell`` handler, a
background thread or process writing after the cell ended, fd output still unread when the drain wait
runs out), messages sent without the session (none in ipykernel 7), and Output widgets opened before the
extension was loaded unless ipywidgets still knows them (``install`` looks them up).

**In a plain IPython shell** (no kernel, no IOPub) capture sits at IPython's output boundaries:
``display_pub.publish`` and ``clear_output``, the displayhook's ``write_format_data``, and tees on
``sys.stdout``/``sys.stderr``; what they see is fed to the same fold as the messages it stands for.

Either way the wrappers are instance attributes set on install and removed on uninstall (``%reload_ext``
safe).
"""

from __future__ import annotations

import linecache
import secrets
import select
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

from nbdurable.runtime.output_fold import (
    COMM_MESSAGES,
    OUTPUT_MESSAGES,
    PENDING_UPDATE,
    OutputFold,
    OutputWidgets,
    display_id_of,
)
from nbdurable.runtime.session import NOTICE_METADATA_KEY

FD_DRAIN_SECONDS = 0.5  # how long ``stop`` waits at most for fd output still in ipykernel's pipes


class _Tee:
    """A stream that records what is written and passes everything through (plain shells)."""

    def __init__(self, stream: TextIO, capture: OutputCapture, name: str) -> None:
        self._stream = stream
        self._capture = capture
        self._name = name

    def write(self, text: str) -> int:
        self._capture.record_stream(self._name, text)
        return self._stream.write(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._stream, attr)


class OutputCapture:
    """Collects the outputs of the step in progress, folded as the notebook shows them."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.outputs: list[dict[str, Any]] = []
        self.active = False
        self._saved_streams: tuple[Any, Any] | None = None
        self._displaying = 0  # a terminal shell prints displays to stdout: not a stream output
        self._lock = threading.Lock()
        self._widgets = OutputWidgets()  # the kernel's Output widgets: outlive a cell
        self._fold = OutputFold(notice_key=NOTICE_METADATA_KEY, widgets=self._widgets)
        self._request: str | None = None  # the executing cell's request msg_id (kernels)
        self._error: dict[str, Any] | None = None  # the last error output of the cell's request (kernels)
        self._session: Any = None  # the kernel's Session whose ``send`` is wrapped
        self._send: Any = None  # our wrapper of it
        self._outstreams: list[Any] = []  # the kernel's OutStreams (sys.stdout/sys.stderr at install)

    @property
    def in_kernel(self) -> bool:
        """Capturing from the kernel's IOPub messages (else at a plain shell's output boundaries)."""
        return self._session is not None

    def _display_call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        self._displaying += 1
        try:
            return func(*args, **kwargs)
        finally:
            self._displaying -= 1

    def _feed(self, msg_type: str, content: Mapping[str, Any]) -> None:
        with self._lock:
            if self.active:
                self._fold.feed(msg_type, content)

    # ----- install / uninstall ---------------------------------------------------------------

    def install(self) -> None:
        """In a kernel, wrap its session's ``send``; in a plain shell, the display publisher and displayhook."""
        kernel = getattr(self.shell, "kernel", None)
        session = getattr(kernel, "session", None) if kernel is not None else None
        if session is not None:
            self._install_session(session)
        else:
            self._install_shell()

    def _install_session(self, session: Any) -> None:
        original = session.send

        def send(*args: Any, **kwargs: Any) -> Any:
            if self._send is send:  # (a wrapper installed over ours keeps calling it after uninstall)
                self._see(args, kwargs)
            return original(*args, **kwargs)

        session.send = self._send = send
        self._session = session
        self._outstreams = [s for s in (sys.stdout, sys.stderr) if getattr(s, "session", None) is session]
        for comm_id in _open_output_widgets():
            self._widgets.track(comm_id)

    def _install_shell(self) -> None:
        pub = self.shell.display_pub
        original_publish = pub.publish
        original_clear = pub.clear_output

        def publish(data: dict[str, Any], metadata: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
            content = {"data": data, "metadata": metadata or {}, "transient": kwargs.get("transient") or {}}
            self._feed("update_display_data" if kwargs.get("update") else "display_data", content)
            return self._display_call(original_publish, data, metadata, *args, **kwargs)

        def clear_output(wait: bool = False) -> Any:
            self._feed("clear_output", {"wait": wait})
            return self._display_call(original_clear, wait)

        pub.publish, pub.clear_output = publish, clear_output
        hook = self.shell.displayhook
        original_write = hook.write_format_data

        def write_format_data(format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None) -> Any:
            self._feed("execute_result", {"execution_count": self.shell.execution_count, "data": format_dict,
                                          "metadata": md_dict or {}})
            return self._display_call(original_write, format_dict, md_dict)

        hook.write_format_data = write_format_data

    def uninstall(self) -> None:
        """Remove the wrappers (the class methods show through again)."""
        self.stop()
        session, self._session = self._session, None
        if session is not None and vars(session).get("send") is self._send:
            del session.send
        self._send, self._outstreams = None, []
        wrapped = ((self.shell.display_pub, "publish"), (self.shell.display_pub, "clear_output"),
                   (self.shell.displayhook, "write_format_data"))
        for obj, attr in wrapped:
            if attr in vars(obj):
                delattr(obj, attr)

    # ----- a kernel's messages ---------------------------------------------------------------

    def _see(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A message the kernel is sending (``Session.send``'s arguments): fold it if it is the cell's."""
        try:
            message = _message(args, kwargs)
        except Exception:  # never in the way of the kernel's own messages
            return
        if message is None:
            return
        msg_type, content, parent = message
        with self._lock:
            mine = self.active and parent is not None and parent == self._request
            if mine:
                self._fold.feed(msg_type, content)
                if msg_type == "error":
                    self._error = {"output_type": "error", **{k: content.get(k) for k in ("ename", "evalue",
                                                                                         "traceback")}}
            elif msg_type in COMM_MESSAGES:
                self._widgets.observe(msg_type, content)

    def _settle_streams(self) -> None:
        """Get the cell's stream output onto IOPub: fd output still in ipykernel's pipes read, then flushed."""
        _drain_fd_pipes(self._outstreams, FD_DRAIN_SECONDS)
        seen: list[Any] = []
        for stream in (sys.stdout, sys.stderr, *self._outstreams):
            if any(stream is s for s in seen):
                continue
            seen.append(stream)
            if _nothing_to_flush(stream):
                continue
            try:
                stream.flush()
            except Exception:  # a closed or odd stream replaced by the cell
                pass

    # ----- a step -------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin collecting a step's outputs."""
        request = _request_id(self.shell) if self.in_kernel else None
        with self._lock:
            self.outputs = []
            self._request, self._error = request, None
            self._fold = OutputFold(notice_key=NOTICE_METADATA_KEY, request_msg_id=request, widgets=self._widgets)
            self.active = True
        if not self.in_kernel:
            self._saved_streams = (sys.stdout, sys.stderr)
            sys.stdout = _Tee(sys.stdout, self, "stdout")
            sys.stderr = _Tee(sys.stderr, self, "stderr")

    def stop(self) -> list[dict[str, Any]]:
        """Stop collecting; returns the step's outputs (recorded form: see ``runtime.output_fold``)."""
        if self._saved_streams is not None:
            # Only undo our own tees: a cell may have replaced the streams itself.
            if isinstance(sys.stdout, _Tee) and sys.stdout._capture is self:
                sys.stdout = self._saved_streams[0]
            if isinstance(sys.stderr, _Tee) and sys.stderr._capture is self:
                sys.stderr = self._saved_streams[1]
            self._saved_streams = None
        if self.active and self.in_kernel:
            self._settle_streams()
        with self._lock:
            if self.active:
                self.outputs = self._fold.outputs()
            self.active = False
        return self.outputs

    def record_stream(self, name: str, text: str) -> None:
        """Stream text written during the step (joined with the previous output when it is the same stream)."""
        if not self.active or not text or self._displaying:
            return
        self._feed("stream", {"name": name, "text": text})

    def record_error(self, exc: BaseException) -> dict[str, Any]:
        """The error output of a failed step, with IPython's formatted traceback. In a kernel, IPython has
        published it on IOPub already (it is among the captured outputs): that one is returned, not added
        again."""
        with self._lock:
            published = self._error if self.in_kernel and self.active else None
        if published is not None:
            return dict(published)
        try:
            tb = self.shell.InteractiveTB.structured_traceback(type(exc), exc, exc.__traceback__)
        except Exception:  # formatting must never hide the real error
            tb = [f"{type(exc).__name__}: {exc}"]
        error = {"output_type": "error", "ename": type(exc).__name__, "evalue": str(exc), "traceback": list(tb)}
        self._feed("error", error)
        return error


def _message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, dict[str, Any], str | None] | None:
    """(msg_type, content, parent msg_id) of a ``Session.send(stream, msg_or_type, content, parent, ...)``
    call, for the output and comm messages only."""
    msg = args[1] if len(args) > 1 else kwargs.get("msg_or_type")
    if isinstance(msg, Mapping):  # a message built by Session.msg
        msg_type = msg.get("msg_type") or (msg.get("header") or {}).get("msg_type")
        content, parent = msg.get("content"), msg.get("parent_header")
    else:
        msg_type = msg
        content = args[2] if len(args) > 2 else kwargs.get("content")
        parent = args[3] if len(args) > 3 else kwargs.get("parent")
    if msg_type not in OUTPUT_MESSAGES and msg_type not in COMM_MESSAGES:
        return None
    return str(msg_type), dict(content or {}), _msg_id(parent)


def _msg_id(parent: Any) -> str | None:
    """The msg_id of a parent given as a message or as a header."""
    if not isinstance(parent, Mapping):
        return None
    header = parent.get("header", parent)
    msg_id = header.get("msg_id") if isinstance(header, Mapping) else None
    return str(msg_id) if msg_id else None


def _request_id(shell: Any) -> str | None:
    """The msg_id of the request the shell executes now."""
    for owner in (shell, getattr(shell, "kernel", None)):
        get_parent = getattr(owner, "get_parent", None)
        if get_parent is not None:
            try:
                msg_id = _msg_id(get_parent())
            except Exception:
                msg_id = None
            if msg_id:
                return msg_id
    return None


def _open_output_widgets() -> list[str]:
    """The comm ids of the ``ipywidgets.Output`` widgets open now (none if ipywidgets is not imported)."""
    module = sys.modules.get("ipywidgets.widgets.widget")
    output = sys.modules.get("ipywidgets.widgets.widget_output")
    instances = getattr(module, "_instances", None)
    cls = getattr(output, "Output", None)
    if not isinstance(instances, dict) or cls is None:
        return []
    return [str(model_id) for model_id, widget in list(instances.items()) if isinstance(widget, cls)]


def _nothing_to_flush(stream: Any) -> bool:
    """Whether an ipykernel ``OutStream`` holds no text to send: no flush pending (every write schedules
    one, every flush clears it) and no buffered text. Its ``flush`` is a round trip to the IOPub thread,
    paid twice per cell for nothing when the cell printed nothing. Anything else: False (flush it)."""
    try:
        if stream._flush_pending or stream._subprocess_flush_pending:
            return False
        with stream._buffer_lock:
            return not any(buffer.tell() for buffer in stream._buffers.values())
    except AttributeError:  # not an OutStream, or another ipykernel
        return False


def _drain_fd_pipes(streams: list[Any], timeout: float) -> None:
    """Wait until what was written to the OutStreams' file descriptors has been read by ipykernel's
    watcher threads and handed to the streams (``OutStream._fid``, the pipe's read end, and
    ``watch_fd_thread``): each pipe empty and its thread back in ``os.read``. Gives up after ``timeout``
    seconds (a background process that keeps writing); a stream without a watched fd (ipykernel under
    pytest) is skipped.

    The usual case (nothing pending) costs one ``select`` and no wait: the cell's end must not move (a
    reply a millisecond later can meet an nbclient ``Output`` widget's comm message on the shell channel,
    see the runner). Not seen: bytes a watcher has just read and not yet handed over at that very moment
    (it waits for the interpreter lock while the cell ends); they reach the frontend, not the record."""
    watched = [(s._fid, s.watch_fd_thread) for s in streams
               if getattr(s, "_should_watch", False) and isinstance(getattr(s, "_fid", None), int)
               and getattr(s, "watch_fd_thread", None) is not None and s.watch_fd_thread.is_alive()]
    deadline: float | None = None
    while watched:
        try:
            readable = select.select([fid for fid, _ in watched], [], [], 0)[0]
        except (OSError, ValueError):
            return
        if not readable and all(_reading(thread) for _, thread in watched):
            return
        if deadline is None:
            deadline = time.monotonic() + timeout
        elif time.monotonic() >= deadline:
            return
        time.sleep(0.0005)


def _reading(thread: threading.Thread) -> bool:
    """Is ipykernel's fd watcher thread waiting in ``os.read`` (not handing over what it read)?"""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return True
    if frame.f_code.co_name == "_watch_pipe_fd":
        return "os.read(" in linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    while frame is not None:  # inside OutStream.write, called by the watcher: busy
        if frame.f_code.co_name == "_watch_pipe_fd":
            return False
        frame = frame.f_back
    return True  # a watcher of another shape: the empty pipe is all there is to go by


def replay_outputs(shell: Any, outputs: list[dict[str, Any]]) -> None:
    """Show recorded outputs again, each as the kind of output it was: displays with their display id (a
    later cell's update finds them), pending updates of earlier cells' displays as updates."""
    for output in outputs:
        kind = output.get("output_type")
        display_id = display_id_of(output)
        if kind == "stream":
            name = "stderr" if output.get("name") == "stderr" else "stdout"
            text = output.get("text", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            if text:
                stream = sys.stderr if name == "stderr" else sys.stdout
                stream.write(text)
                stream.flush()
            else:
                _send_empty_stream(shell, name)
        elif kind == "display_data" or (kind == PENDING_UPDATE and display_id):
            extra: dict[str, Any] = {"transient": {"display_id": display_id}} if display_id else {}
            if kind == PENDING_UPDATE:
                extra["update"] = True
            shell.display_pub.publish(data=output.get("data", {}), metadata=output.get("metadata", {}), **extra)
        elif kind == "execute_result":
            hook = shell.displayhook
            hook.start_displayhook()
            hook.write_output_prompt()
            hook.write_format_data(output.get("data", {}), output.get("metadata", {}))
            hook.finish_displayhook()
        elif kind == "error":
            _replay_error(shell, output)


def _send_empty_stream(shell: Any, name: str) -> None:
    """An empty stream output (text that ``\\r``/``\\b`` folded away) still separates the outputs around it
    in the notebook, but a stream writes nothing empty: in a kernel, its message is sent directly, after
    what the streams hold (the same IOPub thread sends both, in order)."""
    kernel = getattr(shell, "kernel", None)
    session, socket = getattr(kernel, "session", None), getattr(kernel, "iopub_socket", None)
    if session is None or socket is None:
        return  # a terminal shows nothing for it
    sys.stdout.flush()
    sys.stderr.flush()
    session.send(socket, "stream", {"name": name, "text": ""}, parent=_parent(shell), ident=f"stream.{name}".encode())


def _parent(shell: Any) -> dict[str, Any]:
    get_parent = getattr(shell, "get_parent", None)
    parent = get_parent() if get_parent is not None else None
    return parent if isinstance(parent, dict) else {}


def _replay_error(shell: Any, output: dict[str, Any]) -> None:
    """A traceback a completed cell showed (the cell caught the error): shown again the way IPython shows
    one (an ``error`` message in a kernel), without making the restored cell fail."""
    show = getattr(shell, "_showtraceback", None)
    if show is None:
        return
    saved = getattr(shell, "_last_traceback", None)
    etype = type(str(output.get("ename") or "Error"), (Exception,), {})
    try:
        show(etype, str(output.get("evalue", "")), list(output.get("traceback") or []))
    finally:
        if hasattr(shell, "_last_traceback"):
            shell._last_traceback = saved


def show_notice(shell: Any, text: str, kind: str, details: dict[str, Any] | None = None) -> None:
    """A one-line notice (restored, re-executed…), marked in its metadata so tools can tell it apart
    (the headless runner moves it into the cell's metadata)."""
    shell.display_pub.publish(data={"text/plain": text},
                              metadata={NOTICE_METADATA_KEY: {"notice": kind, **(details or {})}})


class WaitIndicator:
    """The one-line countdown of a durable wait, updated in place where the frontend can (ipykernel's
    display ids); a terminal shell prints only its first and last lines. It is a notice: never recorded."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self._display_id: str | None = None

    def reset(self) -> None:
        """A new cell: a wait cut short in the previous one left its line there."""
        self._display_id = None

    def show(self, text: str, finished: bool) -> None:
        pub = self.shell.display_pub
        updates = type(pub).__module__.startswith("ipykernel")
        first = self._display_id is None
        if first:
            self._display_id = secrets.token_hex(8)
        if first or updates or finished:
            pub.publish(data={"text/plain": text}, metadata={NOTICE_METADATA_KEY: {"notice": "waiting"}},
                        transient={"display_id": self._display_id}, update=not first and updates)
        if finished:
            self._display_id = None
