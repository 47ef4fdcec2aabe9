"""What a raw cell is, before it runs: a control cell, or a step with its options and source hash.

Pure functions of the cell's text, so the input transformer (which IPython runs *before* the
``pre_run_cell`` event) and the event hooks always reach the same verdict about the same cell.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NoReturn

import xxhash

from nbdurable.errors import OptionsError
from nbdurable.runtime.policy import RetryPolicy, parse_duration

_CONTROL_LINE = re.compile(r"^\s*(%durable\b|%(load|reload|unload)_ext\s+nbdurable\s*$|#|$)")
_CELL_MAGIC = re.compile(r"^\s*%%durable\b(.*)$")


class _CellParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse calls error() itself for some mistakes even with exit_on_error=False (an ambiguous
        # abbreviation: `--n` could be --name or --no-state), and error() exits the process.
        raise argparse.ArgumentError(None, message)


def build_cell_parser() -> argparse.ArgumentParser:
    """The options of the ``%%durable`` cell magic (used by the transformer and the magic's help)."""
    parser = _CellParser(
        prog="%%durable",
        add_help=False,
        exit_on_error=False,
        description="Options for one durable cell. The cell body runs as usual.",
    )
    parser.add_argument("--name", help="a stable step name, shown in the history and checked on resume")
    parser.add_argument(
        "--always",
        action="store_true",
        help="re-execute this cell on resume instead of restoring it (connections, side effects)",
    )
    parser.add_argument(
        "--no-state",
        action="store_true",
        dest="no_state",
        help="record the step but store none of its variables (resume re-executes it if it bound any)",
    )
    parser.add_argument("--retries", type=int, default=0, metavar="N",
                        help="re-run the cell up to N times when it raises (N+1 attempts in all, each recorded)")
    parser.add_argument("--initial-interval", dest="initial_interval", metavar="DURATION",
                        help='wait before the first retry (default 1s; "500ms", "30s", "5m"…)')
    parser.add_argument("--backoff", type=float, metavar="FACTOR",
                        help="each wait is this many times the previous (default 2)")
    parser.add_argument("--max-interval", dest="max_interval", metavar="DURATION",
                        help="longest wait between attempts (default 1m)")
    parser.add_argument("--timeout", metavar="DURATION",
                        help="interrupt an attempt running longer than this "
                             "(a failed attempt, retried if retries remain)")
    return parser


_PARSER = build_cell_parser()


@dataclass(frozen=True)
class CellOptions:
    """Options given on a cell's ``%%durable`` line."""

    name: str | None = None
    always: bool = False
    no_state: bool = False
    policy: RetryPolicy | None = None  # --retries/--initial-interval/--backoff/--max-interval
    timeout: float | None = None

    def as_record(self) -> dict[str, object]:
        """The options as journaled."""
        record: dict[str, object] = {"always": self.always, "no_state": self.no_state}
        if self.policy is not None:
            record["retry"] = {"max_attempts": self.policy.max_attempts,
                               "initial_interval": self.policy.initial_interval,
                               "backoff": self.policy.backoff, "max_interval": self.policy.max_interval}
        if self.timeout is not None:
            record["timeout"] = self.timeout
        return record


def parse_cell_options(line: str) -> CellOptions:
    """Parse the text after ``%%durable``. Bad options raise OptionsError with the usage."""
    try:
        args, extra = _PARSER.parse_known_args(shlex.split(line))
    except (argparse.ArgumentError, ValueError) as exc:
        raise OptionsError(f"%%durable: {exc}", hint=_PARSER.format_usage().strip()) from None
    if extra:
        raise OptionsError(f"%%durable: unknown option(s) {' '.join(extra)}", hint=_PARSER.format_usage().strip())
    if args.retries < 0:
        raise OptionsError(f"%%durable: --retries must be 0 or more, not {args.retries}",
                           hint="e.g. %%durable --retries 3")
    tuning = {k: v for k in ("initial_interval", "backoff", "max_interval") if (v := getattr(args, k)) is not None}
    if tuning and not args.retries:
        raise OptionsError(f"%%durable: --{next(iter(tuning)).replace('_', '-')} needs --retries",
                           hint="e.g. %%durable --retries 3 --initial-interval 5s")
    try:
        policy = RetryPolicy(max_attempts=args.retries + 1, **tuning) if args.retries else None
        timeout = parse_duration(args.timeout) if args.timeout is not None else None
    except OptionsError as exc:
        raise OptionsError(f"%%durable: {exc.message}", hint=exc.hint) from None
    return CellOptions(name=args.name, always=args.always, no_state=args.no_state, policy=policy, timeout=timeout)


@dataclass(frozen=True)
class Cell:
    """A classified cell."""

    raw: str
    control: bool
    body: str = ""
    source_hash: str = ""
    options: CellOptions = field(default_factory=CellOptions)
    has_magic_line: bool = False


def normalize_source(text: str) -> str:
    """Source as hashed: trailing spaces and surrounding blank lines do not make a cell different."""
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip("\n")


def source_hash(text: str) -> str:
    """The identity of a step's code: xxh3-128 of its normalized source."""
    return xxhash.xxh3_128_hexdigest(normalize_source(text).encode("utf-8"))


@lru_cache(maxsize=256)
def classify(raw: str) -> Cell:
    """Classify a raw cell. Raises OptionsError for a ``%%durable`` line with bad options."""
    lines = raw.splitlines()
    if all(_CONTROL_LINE.match(line) for line in lines) and any(line.strip().startswith("%") for line in lines):
        return Cell(raw, control=True)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None:
        match = _CELL_MAGIC.match(lines[first])
        if match:
            options = parse_cell_options(match.group(1))
            body = "\n".join(lines[first + 1 :])
            return Cell(raw, False, body, source_hash(body), options, has_magic_line=True)
    return Cell(raw, False, raw, source_hash(raw))
