"""OpenTelemetry traces of runs: run → cell → step → attempt spans, from the runtime's events.

A listener of the ``EventBus`` (it subscribes, never drives): the kernel extension installs it when
``opentelemetry-sdk`` is importable (extra ``[otel]``) and the standard variables ask for traces, so
interactive kernels, headless runs and the runs ``nbdurable serve`` starts all emit them. Otherwise nothing
subscribes (no OpenTelemetry import, no per-event cost).

Configuration (the standard variables): ``OTEL_TRACES_EXPORTER`` = ``console`` | ``otlp`` | ``none``;
traces are on when it is ``console`` or ``otlp``, or when ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (then ``otlp``); ``OTEL_SERVICE_NAME`` (default ``nbdurable``)
and ``OTEL_RESOURCE_ATTRIBUTES`` name the service. OTLP needs ``opentelemetry-exporter-otlp-proto-http``.

Spans: ``run`` (attributes ``nbdurable.run_id``, ``nbdurable.notebook``, ``nbdurable.kind``,
``nbdurable.params`` (the parameter names, never their values), ``nbdurable.resumed_from``,
``nbdurable.status``); a ``cell`` per top-level step and a ``step`` per explicit step inside it
(``nbdurable.step.ordinal``, ``nbdurable.step.name``, ``nbdurable.status``, ``nbdurable.restored`` (restored or
executed), ``nbdurable.restored_from``); an ``attempt`` per attempt of a retried step
(``nbdurable.attempt``, ``nbdurable.next_delay_s``). A failed span has status ERROR and an ``exception`` event.

Ids are derived from the journal, not random: a run's trace id from its trace root (its resume chain's
first run, or, for a child run whose ``run`` record names its ``origin`` = {"parent_run", "parent_step"},
its parent's trace root), and a span id from (run id, step ordinal). So a child run's ``run`` span takes
its parent's step span as *parent* (a remote parent context built from the recorded ids), in another
process, without either process telling the other anything; a resumed run's spans join the trace of the
run it resumes. (This holds for the tracer provider built here, which uses these ids; a provider the
application configured itself draws random ids, and child runs then start traces of their own.)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbdurable.runtime.events import EventBus, RuntimeEvent

if TYPE_CHECKING:
    from nbdurable.store import Store

ENV_EXPORTER = "OTEL_TRACES_EXPORTER"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_MAX_ORIGIN_DEPTH = 32
_ids = threading.local()  # the ids the next span takes (set just before starting it)
_chosen: list[Any] = [None]  # a provider set with ``use_provider``


def exporter_name() -> str | None:
    """The exporter the environment asks for (``console`` or ``otlp``), or None: no traces."""
    name = os.environ.get(ENV_EXPORTER, "").strip().lower()
    if not name:
        return "otlp" if any(os.environ.get(v) for v in _ENDPOINTS) else None
    first = name.split(",")[0].strip()
    return first if first in ("console", "otlp") else None


def install(bus: EventBus, store: Store, *, provider: Any = None) -> Callable[[], None] | None:
    """Emit the spans of the runs announced on ``bus`` (of ``store``); returns the function that stops it, or
    None when there is nothing to emit to (no SDK, no exporter asked for, and no ``provider`` given)."""
    provider = provider or chosen_provider()
    if provider is None:
        return None
    return bus.subscribe(RunTracer(provider, store))


def chosen_provider() -> Any:
    """The provider spans go to: ``use_provider``'s, else the environment's (None: no traces)."""
    return _chosen[0] or configured_provider()


def use_provider(provider: Any) -> None:
    """Trace the runs of kernels loading the extension from now on with ``provider`` (a TracerProvider, e.g.
    ``tracer_provider(processor)``), whatever the environment says; None: back to the environment's."""
    _chosen[0] = provider


@functools.cache
def configured_provider() -> Any:
    """The process's tracer provider as the OTEL_* variables configure it (one per process), or None."""
    name = exporter_name()
    if name is None or importlib.util.find_spec("opentelemetry.sdk") is None:
        return None
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter: Any
    if name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            print("nbdurable: OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: no traces",
                  file=sys.stderr)
            return None
        exporter = OTLPSpanExporter()
    return tracer_provider(BatchSpanProcessor(exporter))


def tracer_provider(*processors: Any) -> Any:
    """A TracerProvider with nbdurable's derived ids and ``processors`` (service name from the environment,
    default ``nbdurable``)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

    class DerivedIds(IdGenerator):  # the ids set in ``_ids`` for the next span; random otherwise
        _random = RandomIdGenerator()

        def generate_span_id(self) -> int:
            value = getattr(_ids, "span", None)
            _ids.span = None
            return value or self._random.generate_span_id()

        def generate_trace_id(self) -> int:
            value = getattr(_ids, "trace", None)
            _ids.trace = None
            return value or self._random.generate_trace_id()

    service = os.environ.get("OTEL_SERVICE_NAME") or "nbdurable"
    provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=DerivedIds())
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def trace_id_of(root: str) -> int:
    """The trace id of the runs whose trace root is ``root`` (128 bits, never 0)."""
    return int.from_bytes(hashlib.sha256(f"trace:{root}".encode()).digest()[:16], "big") or 1


def span_id_of(run_id: str, ordinal: int | None) -> int:
    """The span id of a run's step ``ordinal`` (None: the run's own span); 64 bits, never 0."""
    return int.from_bytes(hashlib.sha256(f"span:{run_id}:{ordinal}".encode()).digest()[:8], "big") or 1


def trace_root(store: Store, run_id: str) -> str:
    """The run whose id names ``run_id``'s trace: up the ``origin`` chain (child runs), then the resume chain's
    first run (``root_run``)."""
    current = run_id
    for _ in range(_MAX_ORIGIN_DEPTH):
        head = store.journal_head(current) or {}
        parent = (head.get("origin") or {}).get("parent_run") if isinstance(head.get("origin"), dict) else None
        if not parent:
            return str(head.get("root_run") or current)
        current = str(parent)
    return current


class RunTracer:
    """The spans of the runs on one bus: started and ended as the runtime's events arrive."""

    def __init__(self, provider: Any, store: Store) -> None:
        self.tracer = provider.get_tracer("nbdurable")
        self.provider, self.store = provider, store
        self._spans: dict[tuple[str, int | None], Any] = {}  # (run, ordinal or None for the run) -> span
        self._trace: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, event: RuntimeEvent) -> None:
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            with self._lock:
                handler(event)

    def _start(self, run_id: str, ordinal: int | None, name: str, parent: Any, attributes: dict[str, Any],
               start_ns: int) -> Any:
        from opentelemetry import trace

        _ids.trace, _ids.span = self._trace[run_id], span_id_of(run_id, ordinal)
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(name, context=context, attributes=_clean(attributes), start_time=start_ns)
        _ids.trace = _ids.span = None
        return span

    def _on_run_started(self, event: RuntimeEvent) -> None:
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        head = self.store.journal_head(event.run_id) or {}
        self._trace[event.run_id] = trace_id_of(trace_root(self.store, event.run_id))
        origin: dict[str, Any] = head["origin"] if isinstance(head.get("origin"), dict) else {}
        parent = None
        if origin.get("parent_run"):
            parent_run, step = str(origin["parent_run"]), origin.get("parent_step")
            parent = NonRecordingSpan(SpanContext(
                trace_id=self._trace[event.run_id], span_id=span_id_of(parent_run, step if step is None else int(step)),
                is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)))
        params: dict[str, Any] = head["params"] if isinstance(head.get("params"), dict) else {}
        self._spans[(event.run_id, None)] = self._start(event.run_id, None, "run", parent, {
            "nbdurable.run_id": event.run_id, "nbdurable.notebook": event.data.get("notebook"),
            "nbdurable.kind": head.get("kind"), "nbdurable.params": sorted(str(k) for k in params),
            "nbdurable.resumed_from": event.data.get("resumed_from"),
            "nbdurable.forked_from": event.data.get("forked_from"),
            "nbdurable.parent_run": origin.get("parent_run"), "nbdurable.parent_step": origin.get("parent_step"),
        }, _ns(event.ts))

    def _on_step_started(self, event: RuntimeEvent) -> None:
        if event.run_id not in self._trace:
            return
        ordinal, parent = int(event.data["ordinal"]), event.data.get("parent")
        owner = self._spans.get((event.run_id, None if parent is None else int(parent)))
        self._spans[(event.run_id, ordinal)] = self._start(
            event.run_id, ordinal, "cell" if parent is None else "step", owner,
            {"nbdurable.run_id": event.run_id, "nbdurable.step.ordinal": ordinal,
             "nbdurable.step.name": event.data.get("name"), "nbdurable.step.parent": parent}, _ns(event.ts))

    def _on_attempt_finished(self, event: RuntimeEvent) -> None:
        owner = self._spans.get((event.run_id, int(event.data["ordinal"])))
        if owner is None:
            return
        started, ended = event.data.get("started_at"), event.data.get("ended_at")
        length = max(0.0, float(ended) - float(started)) if started is not None and ended is not None else 0.0
        span = self._start(event.run_id, -int(event.data["ordinal"]) * 1000 - int(event.data["attempt"]), "attempt",
                           owner, {"nbdurable.run_id": event.run_id, "nbdurable.attempt": event.data.get("attempt"),
                                   "nbdurable.next_delay_s": event.data.get("next_delay")}, _ns(event.ts - length))
        _end(span, event.data.get("error"), _ns(event.ts))

    def _on_step_finished(self, event: RuntimeEvent) -> None:
        span = self._spans.pop((event.run_id, int(event.data["ordinal"])), None)
        if span is None:
            return
        status = event.data.get("status")
        restored = event.data.get("restored_from") or {}
        span.set_attributes(_clean({"nbdurable.status": status, "nbdurable.restored": status == "restored",
                                    "nbdurable.restored_from": restored.get("run_id")}))
        _end(span, event.data.get("error"), _ns(event.ts))

    def _on_run_finished(self, event: RuntimeEvent) -> None:
        span = self._spans.pop((event.run_id, None), None)
        for key in [k for k in self._spans if k[0] == event.run_id]:  # steps a crash left open
            _end(self._spans.pop(key), None, _ns(event.ts))
        self._trace.pop(event.run_id, None)
        if span is None:
            return
        status = event.data.get("status")
        span.set_attribute("nbdurable.status", str(status))
        _end(span, {"ename": "RunFailed", "evalue": f"the run ended {status}"} if status == "failed" else None,
             _ns(event.ts))
        self.provider.force_flush(5000)  # a headless kernel exits soon after its run: export now


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes OpenTelemetry accepts: None left out, other values as given (str, bool, numbers, lists)."""
    return {k: v for k, v in attributes.items() if v is not None}


def _end(span: Any, error: Any, end_ns: int) -> None:
    from opentelemetry.trace import Status, StatusCode

    if error:
        ename = str(error.get("ename") or "Error") if isinstance(error, dict) else "Error"
        evalue = str(error.get("evalue") or "") if isinstance(error, dict) else str(error)
        span.add_event("exception", {"exception.type": ename, "exception.message": evalue}, timestamp=end_ns)
        span.set_status(Status(StatusCode.ERROR, f"{ename}: {evalue}"))
        span.set_attribute("nbdurable.error", f"{ename}: {evalue}")
    span.end(end_time=end_ns)
