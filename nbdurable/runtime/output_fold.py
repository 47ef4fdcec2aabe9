"""Folding a cell's IOPub messages into the outputs a Jupyter frontend shows for it.

A kernel sends a cell's outputs as a sequence of IOPub messages; what the notebook then *shows* is that
sequence folded. ``OutputFold`` folds it the way nbclient and JupyterLab do, into nbformat v4 output dicts
(the form nbdurable records for a step, and what restores replay):

- ``stream``: appended to the cell's last output when that is a stream of the same name (one output, as
  JupyterLab shows it), and its text folded as JupyterLab's output area folds it (``StreamText``): a cursor
  that ``\\r`` moves to the start of the current line, that ``\\b`` moves back one character deleting the
  character before it and the one under it (JupyterLab's behaviour, kept as is), and where later text
  overwrites; ``\\n`` appends a new line. The cursor survives from one message to the next.
- ``display_data``, ``execute_result``, ``error``: appended. A display carrying ``transient.display_id``
  keeps it in its recorded form (``{"transient": {"display_id": ...}}``, so later updates can find it) and,
  like an update, replaces the ``data``/``metadata`` of the cell's earlier outputs with the same id.
- ``clear_output``: ``wait=False`` clears the cell's outputs now; ``wait=True`` clears them just before the
  next output is added (updates do not count). Either way the next stream starts a new output.
- ``update_display_data``: replaces ``data``/``metadata`` of every output of the cell with its display id.
  An update whose display id is in none of the cell's outputs is for an earlier cell: it is recorded as a
  *pending update*, an entry ``{"output_type": "update_display_data", "data", "metadata", "transient":
  {"display_id"}}`` kept in send order among the outputs (only the last one per display id), which a
  restore replays as an update and the headless runner applies to earlier cells (``settle``).
- Output widgets: an ``ipywidgets.Output`` (a comm whose model is ``OutputModel``) whose ``msg_id`` state is
  the cell's request captures the cell's outputs: the frontend routes them into the widget, so they are left
  out of the cell (updates excepted, as nbclient applies them). ``OutputWidgets`` follows the comm messages;
  it outlives a cell (a widget created in one cell captures in another).
- Notices (outputs whose metadata has the notice key nbdurable marks its own notices with) are dropped.

Pure: no IPython; the capture (``kernel_ext.outputs``), the headless runner and the tests feed it messages.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

OUTPUT_MESSAGES = frozenset({"stream", "display_data", "update_display_data", "execute_result", "error",
                             "clear_output"})
COMM_MESSAGES = frozenset({"comm_open", "comm_msg", "comm_close"})
PENDING_UPDATE = "update_display_data"  # the output_type of a recorded update for an earlier cell
OUTPUT_MODEL = "OutputModel"  # ipywidgets' Output widget model

_CONTROL = re.compile(r"[\n\r\b]")


class StreamText:
    """The text of one stream output as JupyterLab's output area builds it from successive writes.

    Only the last line can change (``\\r`` and ``\\b`` never move the cursor before its start, ``\\n``
    always starts a new line at the end), so finished lines are kept as strings and the last line as a
    list of characters: a write costs the length of what it writes, however long the output is."""

    __slots__ = ("_cursor", "_line", "_lines")

    def __init__(self, text: str = "") -> None:
        self._lines: list[str] = []  # finished lines, each ending with "\n"
        self._line: list[str] = []  # the last line, one character an item
        self._cursor = 0  # position in the last line
        self.write(text)

    def write(self, text: str) -> None:
        line, cursor, start = self._line, self._cursor, 0
        for control in _CONTROL.finditer(text):
            cursor = _overwrite(line, cursor, text[start:control.start()])
            start = control.end()
            char = control.group()
            if char == "\n":
                self._lines.append("".join(line) + "\n")
                line = self._line = []
                cursor = 0
            elif char == "\r":
                cursor = 0
            elif cursor > 0:  # "\b": JupyterLab deletes the character before the cursor and the one under it
                del line[cursor - 1:cursor + 1]
                cursor -= 1
        self._cursor = _overwrite(line, cursor, text[start:])

    @property
    def text(self) -> str:
        return "".join(self._lines) + "".join(self._line)


def _overwrite(line: list[str], cursor: int, segment: str) -> int:
    if segment:
        line[cursor:cursor + len(segment)] = segment
    return cursor + len(segment)


def fold_stream_text(text: str) -> str:
    """``text`` as JupyterLab shows a stream output that received it (``\\r`` and ``\\b`` folded)."""
    return StreamText(text).text


class OutputWidgets:
    """The ``ipywidgets.Output`` widgets of one kernel, known from their comm messages, and the request
    (``msg_id``) each captures now ('' when it captures none). Feed it every comm message of the kernel,
    whichever cell sent it."""

    def __init__(self) -> None:
        self._msg_ids: dict[str, str] = {}

    def track(self, comm_id: str, msg_id: str = "") -> None:
        """An Output widget known otherwise (e.g. opened before messages were followed)."""
        self._msg_ids[comm_id] = msg_id

    def observe(self, msg_type: str, content: Mapping[str, Any]) -> None:
        comm_id = content.get("comm_id")
        if not isinstance(comm_id, str):
            return
        if msg_type == "comm_close":
            self._msg_ids.pop(comm_id, None)
            return
        data = content.get("data")
        state = data.get("state") if isinstance(data, Mapping) else None
        if not isinstance(state, Mapping):
            return
        if msg_type == "comm_open" and state.get("_model_name") == OUTPUT_MODEL:
            self._msg_ids[comm_id] = str(state.get("msg_id") or "")
        elif msg_type == "comm_msg" and comm_id in self._msg_ids and "msg_id" in state:
            self._msg_ids[comm_id] = str(state.get("msg_id") or "")

    def captures(self, msg_id: str | None) -> bool:
        """Does an Output widget capture the outputs of request ``msg_id`` now?"""
        return bool(msg_id) and msg_id in self._msg_ids.values()


class _Entry:
    """An output of the cell (``stream`` set for a stream) or a pending update (``pending``)."""

    __slots__ = ("output", "pending", "stream")

    def __init__(self, output: dict[str, Any], *, stream: StreamText | None = None, pending: bool = False) -> None:
        self.output = output
        self.stream = stream
        self.pending = pending

    def materialized(self) -> dict[str, Any]:
        output = dict(self.output)
        if self.stream is not None:
            output["text"] = self.stream.text
        for key in ("data", "metadata", "transient"):
            if key in output:
                output[key] = dict(output[key])
        return output


class OutputFold:
    """Folds one cell's IOPub messages, in send order, into its recorded outputs (see the module doc).

    ``notice_key``: outputs whose metadata has this key are dropped (nbdurable's notices).
    ``request_msg_id``: the cell's execute request (what an Output widget's ``msg_id`` names when it captures).
    ``widgets``: the kernel's Output widgets, shared by the folds of successive cells (a private one if None).
    """

    def __init__(self, *, notice_key: str | None, request_msg_id: str | None = None,
                 widgets: OutputWidgets | None = None) -> None:
        self.notice_key = notice_key
        self.request_msg_id = request_msg_id
        self.widgets = widgets if widgets is not None else OutputWidgets()
        self._entries: list[_Entry] = []
        self._clear_next = False  # a clear_output(wait=True) waiting for the next output
        self._stream: _Entry | None = None  # the stream output the next stream of its name continues

    def feed(self, msg_type: str, content: Mapping[str, Any]) -> None:
        """One IOPub message of the cell (other message types are ignored)."""
        if msg_type in COMM_MESSAGES:
            self.widgets.observe(msg_type, content)
            return
        if msg_type not in OUTPUT_MESSAGES:
            return
        if msg_type != "update_display_data" and self.widgets.captures(self.request_msg_id):
            return  # the frontend shows it in the Output widget, not in the cell
        if msg_type == "clear_output":
            self._clear(bool(content.get("wait")))
        elif msg_type == "stream":
            self._write(str(content.get("name") or "stdout"), _text(content.get("text")))
        elif not self._is_notice(content):
            if msg_type == "update_display_data":
                self._update(content)
            else:
                self._add(_output(msg_type, content))

    def outputs(self) -> list[dict[str, Any]]:
        """The recorded outputs so far: the cell's outputs and pending updates, in send order."""
        return [entry.materialized() for entry in self._entries]

    # ----- the rules -------------------------------------------------------------------------

    def _is_notice(self, content: Mapping[str, Any]) -> bool:
        metadata = content.get("metadata")
        return self.notice_key is not None and isinstance(metadata, Mapping) and self.notice_key in metadata

    def _clear(self, wait: bool) -> None:
        self._stream = None
        if wait:
            self._clear_next = True
        else:
            self._entries = [entry for entry in self._entries if entry.pending]

    def _before_output(self) -> None:
        if self._clear_next:
            self._clear_next = False
            self._clear(wait=False)

    def _write(self, name: str, text: str) -> None:
        self._before_output()
        last = self._stream
        if last is not None and last.output["name"] == name and last.stream is not None:
            last.stream.write(text)
            return
        self._stream = _Entry({"output_type": "stream", "name": name}, stream=StreamText(text))
        self._entries.append(self._stream)

    def _add(self, output: dict[str, Any]) -> None:
        self._before_output()
        self._stream = None
        display_id = display_id_of(output)
        if display_id:  # a display reusing a display id updates the earlier ones (nbclient, JupyterLab)
            self._set_display(display_id, output)
        self._entries.append(_Entry(output))

    def _update(self, content: Mapping[str, Any]) -> None:
        display_id = _display_id(content)
        if not display_id:
            return  # nothing to update (nbclient ignores it too)
        update = _output(PENDING_UPDATE, content)
        if self._set_display(display_id, update):
            return
        self._entries = [entry for entry in self._entries
                         if not (entry.pending and display_id_of(entry.output) == display_id)]
        self._entries.append(_Entry(update, pending=True))

    def _set_display(self, display_id: str, source: Mapping[str, Any]) -> bool:
        found = False
        for entry in self._entries:
            if not entry.pending and display_id_of(entry.output) == display_id:
                entry.output["data"] = dict(source.get("data") or {})
                entry.output["metadata"] = dict(source.get("metadata") or {})
                found = True
        return found


def _text(text: Any) -> str:
    if isinstance(text, list):  # nbformat's multi-line form
        return "".join(str(part) for part in text)
    return "" if text is None else str(text)


def _display_id(content: Mapping[str, Any]) -> str | None:
    transient = content.get("transient")
    display_id = transient.get("display_id") if isinstance(transient, Mapping) else None
    return str(display_id) if display_id else None


def _output(msg_type: str, content: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded output of an IOPub message (not a stream)."""
    if msg_type == "error":
        return {"output_type": "error", "ename": str(content.get("ename", "")),
                "evalue": str(content.get("evalue", "")), "traceback": list(content.get("traceback") or [])}
    output: dict[str, Any] = {"output_type": msg_type}
    if msg_type == "execute_result":
        output["execution_count"] = content.get("execution_count")
    output["data"] = dict(content.get("data") or {})
    output["metadata"] = dict(content.get("metadata") or {})
    display_id = _display_id(content)
    if display_id:
        output["transient"] = {"display_id": display_id}
    return output


# ----- using recorded outputs --------------------------------------------------------------------------


def display_id_of(output: Mapping[str, Any]) -> str | None:
    """The display id a recorded output (or pending update) carries, if any."""
    return _display_id(output)


def is_pending_update(output: Mapping[str, Any]) -> bool:
    """Is this recorded entry an update for an earlier cell (not an output of its own cell)?"""
    return output.get("output_type") == PENDING_UPDATE


def shown(outputs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A cell's own outputs among its recorded entries (pending updates left out)."""
    return [dict(output) for output in outputs if not is_pending_update(output)]


def message_of(output: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The IOPub message (type, content) that shows a recorded output, or applies a pending update."""
    kind = str(output.get("output_type"))
    content = {key: value for key, value in output.items() if key != "output_type"}
    if kind == "stream":
        content["text"] = _text(content.get("text"))
    return kind, content


def fold_outputs(outputs: Iterable[Mapping[str, Any]], *, notice_key: str | None) -> list[dict[str, Any]]:
    """Outputs (nbformat, or recorded) folded again: consecutive streams of a name joined, ``\\r``/``\\b``
    folded, notices dropped. Folding folded outputs changes nothing."""
    fold = OutputFold(notice_key=notice_key)
    for output in outputs:
        fold.feed(*message_of(output))
    return fold.outputs()


def join_streams(outputs: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """Outputs collected one per message (nbclient's cells) as the frontend shows them: each run of
    consecutive stream outputs of one name joined into one (``\\r``/``\\b`` folded; a copy of the first),
    the others kept as they are (the same objects). Returns the outputs and, for each given output, the
    index of the output it is now part of (for indices kept elsewhere, such as nbclient's display ids)."""
    joined: list[dict[str, Any]] = []
    moved: list[int] = []
    texts: dict[int, StreamText] = {}
    last: int | None = None  # the stream output a next stream of its name joins
    for output in outputs:
        if output.get("output_type") == "stream":
            if last is not None and joined[last].get("name") == output.get("name"):
                texts[last].write(_text(output.get("text")))
                moved.append(last)
                continue
            last = len(joined)
            texts[last] = StreamText(_text(output.get("text")))
            output = copy.copy(output)  # its text changes: the given output stays as it was
        else:
            last = None
        moved.append(len(joined))
        joined.append(output if isinstance(output, dict) else dict(output))
    for index, text in texts.items():
        joined[index]["text"] = text.text
    return joined, moved


def fold_messages(messages: Iterable[tuple[str, Mapping[str, Any]]], *, notice_key: str | None,
                  request_msg_id: str | None = None, widgets: OutputWidgets | None = None) -> list[dict[str, Any]]:
    """One cell's IOPub messages (type, content), in send order, folded into its recorded outputs."""
    fold = OutputFold(notice_key=notice_key, request_msg_id=request_msg_id, widgets=widgets)
    for msg_type, content in messages:
        fold.feed(msg_type, content)
    return fold.outputs()


def apply_update(outputs: Iterable[dict[str, Any]], update: Mapping[str, Any]) -> int:
    """Give every output with the display id of ``update`` (a pending update, or a display reusing the
    id) its ``data`` and ``metadata``; returns how many were updated."""
    display_id = display_id_of(update)
    count = 0
    for output in outputs:
        if display_id and not is_pending_update(output) and display_id_of(output) == display_id:
            output["data"] = dict(update.get("data") or {})
            output["metadata"] = dict(update.get("metadata") or {})
            count += 1
    return count


def settle(cells: Iterable[Iterable[Mapping[str, Any]]]) -> list[list[dict[str, Any]]]:
    """The recorded outputs of a notebook's cells, in execution order → what each cell shows once all have
    run: every pending update, and every display reusing a display id, applied to the earlier cells'
    outputs in order (as nbclient and JupyterLab apply them); pending updates removed."""
    done: list[list[dict[str, Any]]] = []
    for recorded in cells:
        own: list[dict[str, Any]] = []
        for output in recorded:
            if is_pending_update(output) or display_id_of(output):
                for earlier in done:
                    apply_update(earlier, output)
            if not is_pending_update(output):
                own.append(dict(output))
        done.append(own)
    return done
