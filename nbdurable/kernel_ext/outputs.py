"""Capturing a cell's outputs as nbformat output dicts, and showing recorded outputs again.

Capture sits at IPython's own output boundaries, so it works the same in a terminal shell and in
ipykernel: ``display_pub.publish`` (display_data, update_display_data), the displayhook's
``write_format_data`` (execute_result), and tees on ``sys.stdout``/``sys.stderr`` (streams). The
wrappers are instance attributes set on install and removed on uninstall (``%reload_ext`` safe).
"""

from __future__ import annotations

import secrets
import sys
from typing import Any, TextIO

NOTICE_METADATA_KEY = "nbdurable"


class _Tee:
    """A stream that records what is written and passes everything through."""

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
    """Collects the outputs of the step in progress."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.outputs: list[dict[str, Any]] = []
        self.active = False
        self._saved_streams: tuple[Any, Any] | None = None
        self._displaying = 0  # a terminal shell prints displays to stdout: not a stream output

    def _display_call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        self._displaying += 1
        try:
            return func(*args, **kwargs)
        finally:
            self._displaying -= 1

    def install(self) -> None:
        """Wrap the shell's display publisher and displayhook."""
        pub = self.shell.display_pub
        original_publish = pub.publish

        def publish(data: dict[str, Any], metadata: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
            if self.active:
                self._record_display(data, metadata or {}, kwargs.get("transient") or {}, bool(kwargs.get("update")))
            return self._display_call(original_publish, data, metadata, *args, **kwargs)

        pub.publish = publish
        hook = self.shell.displayhook
        original_write = hook.write_format_data

        def write_format_data(format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None) -> Any:
            if self.active:
                self.outputs.append(
                    {
                        "output_type": "execute_result",
                        "execution_count": self.shell.execution_count,
                        "data": dict(format_dict),
                        "metadata": dict(md_dict or {}),
                    }
                )
            return self._display_call(original_write, format_dict, md_dict)

        hook.write_format_data = write_format_data

    def uninstall(self) -> None:
        """Remove the wrappers (the class methods show through again)."""
        self.stop()
        for obj, attr in ((self.shell.display_pub, "publish"), (self.shell.displayhook, "write_format_data")):
            if attr in vars(obj):
                delattr(obj, attr)

    def start(self) -> None:
        """Begin collecting a step's outputs."""
        self.outputs = []
        self.active = True
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self, "stdout")
        sys.stderr = _Tee(sys.stderr, self, "stderr")

    def stop(self) -> list[dict[str, Any]]:
        """Stop collecting; returns the step's outputs."""
        if self._saved_streams is not None:
            # Only undo our own tees: a cell may have replaced the streams itself.
            if isinstance(sys.stdout, _Tee) and sys.stdout._capture is self:
                sys.stdout = self._saved_streams[0]
            if isinstance(sys.stderr, _Tee) and sys.stderr._capture is self:
                sys.stderr = self._saved_streams[1]
            self._saved_streams = None
        self.active = False
        return self.outputs

    def record_stream(self, name: str, text: str) -> None:
        """Append stream text, merged with the previous output when it is the same stream."""
        if not self.active or not text or self._displaying:
            return
        last = self.outputs[-1] if self.outputs else None
        if last is not None and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.outputs.append({"output_type": "stream", "name": name, "text": text})

    def _record_display(self, data: dict[str, Any], metadata: dict[str, Any], transient: dict[str, Any], update: bool) -> None:
        if NOTICE_METADATA_KEY in metadata:
            return
        display_id = transient.get("display_id")
        if update and display_id:
            for output in self.outputs:
                if output.get("transient", {}).get("display_id") == display_id:
                    output["data"], output["metadata"] = dict(data), dict(metadata)
            return
        shown: dict[str, Any] = {"output_type": "display_data", "data": dict(data), "metadata": dict(metadata)}
        if display_id:
            shown["transient"] = {"display_id": display_id}
        self.outputs.append(shown)

    def record_error(self, exc: BaseException) -> dict[str, Any]:
        """The error output of a failed step, with IPython's formatted traceback."""
        try:
            tb = self.shell.InteractiveTB.structured_traceback(type(exc), exc, exc.__traceback__)
        except Exception:  # formatting must never hide the real error
            tb = [f"{type(exc).__name__}: {exc}"]
        error = {"output_type": "error", "ename": type(exc).__name__, "evalue": str(exc), "traceback": list(tb)}
        self.outputs.append(error)
        return error


def replay_outputs(shell: Any, outputs: list[dict[str, Any]]) -> None:
    """Show recorded outputs again, each as the kind of output it was."""
    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            stream = sys.stderr if output.get("name") == "stderr" else sys.stdout
            stream.write(output.get("text", ""))
            stream.flush()
        elif kind == "display_data":
            shell.display_pub.publish(data=output.get("data", {}), metadata=output.get("metadata", {}))
        elif kind == "execute_result":
            hook = shell.displayhook
            hook.start_displayhook()
            hook.write_output_prompt()
            hook.write_format_data(output.get("data", {}), output.get("metadata", {}))
            hook.finish_displayhook()


def show_notice(shell: Any, text: str, kind: str, details: dict[str, Any] | None = None) -> None:
    """A one-line notice (restored, re-executed…), marked in its metadata so tools can tell it apart
    (the headless runner moves it into the cell's metadata)."""
    shell.display_pub.publish(data={"text/plain": text}, metadata={NOTICE_METADATA_KEY: {"notice": kind, **(details or {})}})


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
