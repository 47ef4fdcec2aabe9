"""``python -m nbdurable``: the same as the ``nbdurable`` command."""

from nbdurable.cli import entry

entry()
