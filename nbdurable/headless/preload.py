"""Imported first by the launcher's forkserver (``launch.PRELOAD``), before the runner's modules: the forkserver
is nbdurable's own process, so it skips the slow optional imports as the ``nbdurable`` command does
(``nbdurable.startup``). Not for import anywhere else."""

from nbdurable.startup import skip_slow_imports

skip_slow_imports()
