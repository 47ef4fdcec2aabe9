"""``%durable`` (one method per subcommand) and ``%%durable`` (per-cell options).

A cell holding only ``%durable`` lines is a control cell: it never becomes a step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from nbdurable.errors import OptionsError
from nbdurable.kernel_ext.cells import build_cell_parser, parse_cell_options

if TYPE_CHECKING:
    from nbdurable.kernel_ext.extension import Durable


@magics_class
class DurableMagics(Magics):
    """The ``%durable`` and ``%%durable`` magics."""

    def __init__(self, shell: Any, ext: Durable) -> None:
        super().__init__(shell)
        self.ext = ext
        self.subcommands: dict[str, Callable[[str], Any]] = {
            "status": self.status,
            "resume": self.resume,
            "new": self.new,
            "attach": self.attach,
            "runs": self.runs,
            "exclude": self.exclude,
            "help": self.help,
        }

    @line_magic
    def durable(self, line: str) -> Any:
        """Durable execution of this notebook. Subcommands: status, resume, new, attach, runs, exclude, help.

        ``%durable help`` describes each; ``%durable SUBCOMMAND -h`` shows its options."""
        name, _, rest = line.strip().partition(" ")
        if not name:
            return self.help("")
        command = self.subcommands.get(name)
        if command is None:
            raise OptionsError(
                f"%durable: unknown subcommand {name!r}.",
                hint=f"use one of: {', '.join(self.subcommands)} (`%durable help` describes them).",
            )
        return command(rest)

    @cell_magic("durable")  # type: ignore[arg-type,unused-ignore]  # IPython 9 types the named form as a union
    def durable_cell(self, line: str, cell: str) -> Any:
        """Options for one cell: ``%%durable [--name NAME] [--always] [--no-state] [--retries N
        [--initial-interval D] [--backoff F] [--max-interval D]] [--timeout D]``, then the cell's code.

        nbdurable applies the options when the cell runs; this body only runs when that did not happen."""
        parse_cell_options(line)  # reports bad options with the usage
        return self.ext.shell.run_cell(cell, store_history=False)

    def help(self, line: str) -> None:
        """List the subcommands."""
        print("%durable SUBCOMMAND [options]   (SUBCOMMAND -h for its options)\n")
        for name, command in self.subcommands.items():
            summary = (command.__doc__ or "").strip().splitlines()[0]
            print(f"  {name:<8} {summary}")
        print("\n" + build_cell_parser().format_help())

    @magic_arguments()
    def status(self, line: str) -> None:
        """Show the current run: id, notebook, store, steps executed and restored, time saved."""
        parse_argstring(self.status, line)
        for key, value in self.ext.status().items():
            print(f"{key + ':':<14} {value}")

    @magic_arguments()
    @argument("run_id", nargs="?", default=None, help="the run to resume (default: this notebook's latest unfinished run)")
    def resume(self, line: str) -> None:
        """Restore the namespace as of a run's last completed step, and arm replay for Run All."""
        args = parse_argstring(self.resume, line)
        summary = self.ext.resume(args.run_id)
        print(summary)

    @magic_arguments()
    def new(self, line: str) -> None:
        """End the current run and start a fresh one: nothing is restored from earlier runs."""
        parse_argstring(self.new, line)
        self.ext.start_fresh()
        print("nbdurable: the next cell starts a fresh run; nothing will be restored.")

    @magic_arguments()
    @argument("name", help="the notebook's identity (a path to the .ipynb or any stable name)")
    def attach(self, line: str) -> None:
        """Name this notebook when the frontend does not (needed to resume without a run id)."""
        args = parse_argstring(self.attach, line)
        self.ext.attach(args.name)

    @magic_arguments()
    @argument("--limit", type=int, default=20, help="how many runs (newest first)")
    @argument("--all", action="store_true", help="runs of every notebook in the store, not only this one")
    def runs(self, line: str) -> Any:
        """Recent runs of this store as a DataFrame."""
        args = parse_argstring(self.runs, line)
        if args.limit < 1:
            raise OptionsError("%durable runs: --limit must be at least 1.", hint="e.g. `%durable runs --limit 10`")
        notebook = None if args.all else self.ext.notebook
        return self.ext.store_obj.catalog().runs(notebook=notebook, limit=args.limit)

    @magic_arguments()
    @argument("names", nargs="+", help="variable names never to write to disk")
    def exclude(self, line: str) -> None:
        """Never write these variables to disk (like the secret patterns); resume re-executes their cells."""
        args = parse_argstring(self.exclude, line)
        bad = [n for n in args.names if not n.isidentifier()]
        if bad:
            raise OptionsError(f"%durable exclude: not variable names: {' '.join(bad)}", hint="e.g. `%durable exclude api_key db_password`")
        self.ext.secrets.excluded.update(args.names)
        print(f"nbdurable: never stored from now on: {', '.join(args.names)}")
