"""Baseline: dill.dump_session / dill.load_session of a namespace holding one big object.

Run as ``python -m bench._dill_session dump|load ndarray|frame PATH``; prints the seconds taken. The
object lives in ``__main__``, as in a notebook; dump includes an fsync, as nbdurable's checkpoint does.
"""

from __future__ import annotations

import os
import sys
import time

import dill

from bench.checkpoint import make_object


def main() -> None:
    mode, kind, path = sys.argv[1:4]
    if mode == "dump":
        globals()["payload"] = make_object(kind)
        start = time.perf_counter()
        dill.dump_session(path)
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    else:
        start = time.perf_counter()
        dill.load_session(path)
    print(time.perf_counter() - start)


if __name__ == "__main__":
    main()
