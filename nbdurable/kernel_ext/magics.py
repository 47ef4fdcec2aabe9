"""``%durable`` (one method per subcommand) and ``%%durable`` (per-cell options).

A cell holding only ``%durable`` lines is a control cell: it never becomes a step.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from nbdurable.errors import OptionsError
from nbdurable.kernel_ext import commands
from nbdurable.runtime.cells import build_cell_parser, parse_cell_options

if TYPE_CHECKING:
    from nbdurable.kernel_ext.extension import Durable

RUNS_LIMIT_MAX = 1_000_000  # as `nbdurable runs --limit`; far more is no listing (and DuckDB refuses past int64)


class _HelpRequested(Exception):
    """``-h``/``--help`` on a subcommand's line: show its help instead of running it."""


class _HelpAction(argparse.Action):
    """Like argparse's own help action, which would exit the process: stops parsing at once (before a
    missing required argument is reported), whatever else the line holds."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:  # noqa: A002 - argparse's name
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> NoReturn:
        raise _HelpRequested


_help_option = argument("-h", "--help", action=_HelpAction, help="show this help and do nothing else")


def _usage(parser: argparse.ArgumentParser) -> str:
    """``%durable SUBCOMMAND [options]`` on one line (IPython's formatter wraps it as an RST block)."""
    return " ".join(parser.format_usage().strip().removeprefix("::").split())


def _help_text(parser: argparse.ArgumentParser) -> str:
    """What ``%durable SUBCOMMAND -h`` prints: usage, description, arguments."""
    return "usage: " + parser.format_help().strip().removeprefix("::").strip()


@magics_class
class DurableMagics(Magics):
    """The ``%durable`` and ``%%durable`` magics."""

    def __init__(self, shell: Any, ext: Durable) -> None:
        super().__init__(shell)
        self.ext = ext
        self.subcommands: dict[str, Callable[[argparse.Namespace], Any]] = {
            "status": self.status,
            "resume": self.resume,
            "checkout": self.checkout,
            "plan": self.plan,
            "reuse": self.reuse,
            "new": self.new,
            "cancel": self.cancel,
            "attach": self.attach,
            "runs": self.runs,
            "exclude": self.exclude,
            "graph": self.graph,
            "history": self.history,
            "help": self.help,
        }

    @line_magic
    def durable(self, line: str) -> Any:
        """Durable execution of this notebook. Subcommands: status, resume, checkout, plan, reuse, new, cancel,
        attach, runs, exclude, graph, history, help.

        ``%durable help`` describes each; ``%durable SUBCOMMAND -h`` shows its options."""
        name, *rest = line.split(maxsplit=1) or ["help"]  # any whitespace ends the name: `status\t--all`
        command = self.subcommands.get(name)
        if command is None:
            raise OptionsError(
                f"%durable: unknown subcommand {name!r}.",
                hint=f"use one of: {', '.join(self.subcommands)} (`%durable help` describes them).",
            )
        args = self._parse(command, rest[0] if rest else "")
        return None if args is None else command(args)

    def _parse(self, command: Callable[[argparse.Namespace], Any], line: str) -> argparse.Namespace | None:
        """The subcommand's arguments, or None when ``-h``/``--help`` printed its help instead.
        A mistake is an OptionsError with the subcommand's usage (never IPython's UsageError)."""
        parser = command.parser  # type: ignore[attr-defined]  # IPython's MagicArgumentParser, built by @magic_arguments
        try:
            return parser.parse_argstring(line)  # type: ignore[no-any-return]
        except _HelpRequested:
            print(_help_text(parser))
            return None
        except (UsageError, ValueError) as exc:  # ValueError: arg_split's shlex, e.g. a quote left open
            raise OptionsError(f"%{parser.prog}: {exc}",
                               hint=f"usage: {_usage(parser)}  (`%{parser.prog} -h` explains it)") from None

    @cell_magic("durable")  # type: ignore[arg-type,unused-ignore]  # IPython 9 types the named form as a union
    def durable_cell(self, line: str, cell: str) -> Any:
        """Options for one cell: ``%%durable [--name NAME] [--always] [--no-state] [--retries N
        [--initial-interval D] [--backoff F] [--max-interval D]] [--timeout D]``, then the cell's code.

        nbdurable applies the options when the cell runs; this body only runs when that did not happen."""
        parse_cell_options(line)  # reports bad options with the usage
        return self.ext.shell.run_cell(cell, store_history=False)

    @magic_arguments("durable help")
    @_help_option
    @argument("subcommand", nargs="?", default=None, help="the subcommand to explain (default: list them all)")
    def help(self, args: argparse.Namespace) -> None:
        """List the subcommands, or explain one: `%durable help SUBCOMMAND`."""
        if args.subcommand is not None:
            command = self.subcommands.get(args.subcommand)
            if command is None:
                raise OptionsError(f"%durable help: unknown subcommand {args.subcommand!r}.",
                                   hint=f"use one of: {', '.join(self.subcommands)}")
            print(_help_text(command.parser))  # type: ignore[attr-defined]
            return
        print("%durable SUBCOMMAND [options]   (SUBCOMMAND -h for its options)\n")
        for name, command in self.subcommands.items():
            # @magic_arguments replaces a docstring by the parser's help: the original is its description
            summary = (command.parser.description or "").strip().splitlines()[0]  # type: ignore[attr-defined]
            print(f"  {name:<8} {summary}")
        print("\n" + build_cell_parser().format_help())

    @magic_arguments("durable status")
    @_help_option
    def status(self, args: argparse.Namespace) -> None:
        """Show the current run: id, notebook, store, steps executed and restored, time saved."""
        for key, value in commands.status(self.ext).items():
            print(f"{key + ':':<14} {value}")

    @magic_arguments("durable resume")
    @_help_option
    @argument("run_id", nargs="?", default=None,
              help="the run to resume (default: this notebook's latest unfinished run)")
    @argument("--on-change", dest="on_change", choices=["continue", "fail"], default="continue",
              help="cells before the run's resumption point changed since it recorded them (listed): continue "
              "(default: the changed cells and what they reach execute on Run All) or fail (nothing restored)")
    @argument("--force", action="store_true", help="resume the run even though it was cancelled")
    def resume(self, args: argparse.Namespace) -> None:
        """Restore the namespace as of a run's last completed step, and arm restoring for Run All."""
        summary = commands.resume(self.ext, args.run_id, on_change=args.on_change, force=args.force)
        print(summary)

    @magic_arguments("durable checkout")
    @_help_option
    @argument("run_id", help="the run whose state to take (a unique prefix of its id is enough)")
    @argument("--cell", type=int, default=None, metavar="N",
              help="the state after this cell of the run, numbered as `nbdurable show` numbers them "
              "(default: its last cell; 0: before the first)")
    @argument("--step", default=None, metavar="NAME",
              help="the state after the run's last cell named NAME (`%%%%durable --name`)")
    def checkout(self, args: argparse.Namespace) -> None:
        """Make the namespace a run's state after one of its cells; what runs next is a new run forked from it."""
        print(self.ext.checkout(args.run_id, args.cell, args.step))

    @magic_arguments("durable plan")
    @_help_option
    @argument("notebook", nargs="?", default=None,
              help="the .ipynb file to plan (default: this notebook's file, as last saved)")
    def plan(self, args: argparse.Namespace) -> None:
        """What Run All would do with each cell now: restore (from which run and step) or execute, and why."""
        print(commands.plan_run_all(self.ext, args.notebook))

    @magic_arguments("durable reuse")
    @_help_option
    @argument("state", nargs="?", choices=["on", "off"], default=None, help="on or off (default: show it)")
    def reuse(self, args: argparse.Namespace) -> None:
        """Also restore matching cell executions of any completed run of this notebook (on), or only of the
        run being resumed (off)."""
        if args.state is not None:
            self.ext.set_reuse(args.state == "on")
        plan = self.ext.plan
        offered = len(plan.reused) if plan is not None else 0
        print(f"nbdurable: reuse is {'on' if self.ext.reuse else 'off'}"
              + (f": {offered} execution(s) of completed runs can be restored." if self.ext.reuse else "."))

    @magic_arguments("durable new")
    @_help_option
    def new(self, args: argparse.Namespace) -> None:
        """End the current run and start a fresh one: nothing is restored from earlier runs."""
        self.ext.start_fresh()
        print("nbdurable: the next cell starts a fresh run; nothing will be restored.")

    @magic_arguments("durable cancel")
    @_help_option
    @argument("--reason", nargs="+", default=None,
              help="why, the rest of the line (recorded with who and when; `nbdurable show` says it)")
    def cancel(self, args: argparse.Namespace) -> None:
        """End the current run as cancelled, for good (nothing resumes it); the next cell starts a new run."""
        reason = " ".join(args.reason) if args.reason else None
        if reason and len(reason) > 1 and reason[0] == reason[-1] and reason[0] in "'\"":
            reason = reason[1:-1]  # IPython splits the line keeping the quotes
        print(commands.cancel(self.ext, reason))

    @magic_arguments("durable attach")
    @_help_option
    @argument("name", help="the notebook's identity (a path to the .ipynb or any stable name)")
    def attach(self, args: argparse.Namespace) -> None:
        """Name this notebook when the frontend does not (needed to resume without a run id)."""
        self.ext.attach(args.name)

    @magic_arguments("durable runs")
    @_help_option
    @argument("--limit", type=int, default=20, help=f"how many runs, newest first (1 to {RUNS_LIMIT_MAX}; default 20)")
    @argument("--all", action="store_true", help="runs of every notebook in the store, not only this one")
    def runs(self, args: argparse.Namespace) -> Any:
        """Recent runs of this store as a DataFrame."""
        if not 1 <= args.limit <= RUNS_LIMIT_MAX:
            raise OptionsError(f"%durable runs: --limit must be at least 1 and at most {RUNS_LIMIT_MAX}, "
                               f"not {args.limit}.",
                               hint="e.g. `%durable runs --limit 10`")
        notebook = None if args.all else self.ext.notebook
        return self.ext.store_obj.catalog().runs(notebook=notebook, limit=args.limit)

    @magic_arguments("durable exclude")
    @_help_option
    @argument("names", nargs="+", help="variable names never to write to disk")
    def exclude(self, args: argparse.Namespace) -> None:
        """Never write these variables to disk (like the secret patterns); resume re-executes their cells."""
        bad = [n for n in args.names if not n.isidentifier()]
        if bad:
            raise OptionsError(f"%durable exclude: not variable names: {' '.join(bad)}",
                               hint="e.g. `%durable exclude api_key db_password`")
        self.ext.secrets.excluded.update(args.names)
        print(f"nbdurable: never stored from now on: {', '.join(args.names)}")

    @magic_arguments("durable graph")
    @_help_option
    @argument("run_id", nargs="?", default=None, help="a past run to show (default: this notebook's current run, live)")
    def graph(self, args: argparse.Namespace) -> None:
        """Show the run as a live graph of its cells: status, durations, attempts, data dependencies."""
        from IPython.display import display

        from nbdurable.widgets.run_graph import RunGraph

        display(RunGraph(args.run_id, store=self.ext.store_obj) if args.run_id else RunGraph())

    @magic_arguments("durable history")
    @_help_option
    @argument("--all", action="store_true", help="runs of every notebook in the store, not only this one")
    def history(self, args: argparse.Namespace) -> None:
        """Explore past runs: filter, open one run's graph, compare two runs."""
        from IPython.display import display

        from nbdurable.widgets.history import HistoryExplorer

        display(HistoryExplorer(store=self.ext.store_obj, notebook=None if args.all else self.ext.notebook))
