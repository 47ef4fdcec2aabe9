"""Retries and timeouts for a whole cell: ``%%durable --retries 5 --initial-interval 1s --timeout 10m``.

IPython compiles a cell into an AST before running it; an AST transformer (``CellPolicyTransformer``)
wraps the body of a cell that has a policy in a loop of attempts::

    while __nbdurable__._attempts.next():
        with __nbdurable__._attempts:          # starts the attempt, arms its timeout
            <the cell's statements; the last expression is kept>
    __nbdurable__._attempts.result()          # shown like the cell's last expression

The ``with`` block records each attempt in the cell's step (start, end, error, the wait before the next
one), swallows a failure that will be retried (after waiting the policy's delay) and lets the final one
propagate, so the cell fails with its real traceback. Code before a failure has run, so an attempt sees
what the failed ones left in the namespace: make retried cells idempotent (as Temporal asks of its
activities). Timeouts interrupt as described in ``runtime/deadline.py``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Any

from nbdurable.runtime.clock import clock
from nbdurable.runtime.deadline import deadline
from nbdurable.runtime.policy import NO_RETRY, RetryPolicy
from nbdurable.runtime.session import HANDLE_NAME
from nbdurable.runtime.steps import Attempts


class CellAttempts:
    """The attempts of one cell under its policy (the object the wrapped cell talks to)."""

    def __init__(self, policy: RetryPolicy | None, timeout: float | None,
                 record: Callable[[int, float, dict[str, Any] | None, float | None], None]) -> None:
        self._attempts = Attempts(policy or NO_RETRY, record=record, timeout=timeout)
        self._limit = ExitStack()
        self._done = False
        self._value: Any = None

    def next(self) -> bool:
        """True while another attempt is to run."""
        return not self._done

    def keep(self, value: Any) -> None:
        """The value of the cell's last expression in this attempt."""
        self._value = value

    def result(self) -> Any:
        """The value of the cell's last expression in the attempt that succeeded."""
        return self._value

    def __enter__(self) -> CellAttempts:
        self._value = None
        self._attempts.start()
        self._limit.enter_context(deadline(self._attempts.timeout))
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> bool:
        self._limit.close()
        if ev is None:
            self._attempts.succeeded(None)
            self._done = True
            return False
        delay = self._attempts.failed(ev)
        if delay is None:
            self._done = True
            return False  # the last attempt failed: the cell fails with this error
        n, total = self._attempts.attempt, self._attempts.policy.max_attempts
        print(f"↻ nbdurable: attempt {n} of {total} failed ({type(ev).__name__}: {ev}); retrying in {delay:g} s",
              file=sys.stderr)
        clock().sleep(delay)  # a time-skipping clock skips the backoff
        return True


class CellPolicyTransformer(ast.NodeTransformer):
    """Wraps the cell being executed in its attempts loop when ``wanted()`` says it has a policy.

    ``wanted`` is asked once per module IPython transforms and answers True only for the first one of
    a cell (magics such as ``%time`` transform their own code too: that is not the cell)."""

    def __init__(self, wanted: Callable[[], bool]) -> None:
        self.wanted = wanted

    def visit_Module(self, node: ast.Module) -> ast.Module:  # ast.NodeTransformer's naming
        if not node.body or not self.wanted():
            return node
        body = list(node.body)
        last_expr = isinstance(body[-1], ast.Expr)
        if last_expr:
            body[-1] = ast.Expr(_call("keep", [body[-1].value]))  # type: ignore[attr-defined]
        attempt = ast.With(items=[ast.withitem(context_expr=_attr(), optional_vars=None)], body=body)
        wrapped: list[ast.stmt] = [ast.While(test=_call("next", []), body=[attempt], orelse=[])]
        if last_expr:
            wrapped.append(ast.Expr(_call("result", [])))
        module = ast.Module(body=wrapped, type_ignores=node.type_ignores)
        return ast.fix_missing_locations(ast.copy_location(module, node))


def _attr(method: str | None = None) -> ast.expr:
    attempts = ast.Attribute(value=ast.Name(id=HANDLE_NAME, ctx=ast.Load()), attr="_attempts", ctx=ast.Load())
    return attempts if method is None else ast.Attribute(value=attempts, attr=method, ctx=ast.Load())


def _call(method: str, args: list[ast.expr]) -> ast.Call:
    return ast.Call(func=_attr(method), args=args, keywords=[])
