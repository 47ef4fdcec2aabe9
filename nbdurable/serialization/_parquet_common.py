"""What the Parquet format's writer and its fast reader share: the format name, the encoding options
(chosen by measurement, bench/bench_serialization_probe.py) and the error a failed conversion raises.

``_parquet.py`` owns the format and ``_parquet_pages.py`` reads the pages our writer produced; both
import this module, neither imports the other's internals.
"""

from __future__ import annotations

import inspect
from typing import Any

import pyarrow.parquet as pq

from nbdurable.errors import RestoreError

FORMAT = "parquet"

WRITE_OPTIONS: dict[str, Any] = {
    "compression": "none",  # this disk is faster than any codec (design.md, decision 2); snappy halved save speed
    "write_statistics": False,  # ~0.03 s per 500 MB (~5% of a save); DuckDB then just cannot skip row groups
    "row_group_size": 1 << 20,  # several row groups still let DuckDB scan a big file in parallel
    "max_rows_per_page": 1 << 17,  # encodes 2-3x faster than the 20 Ki-row default (measured)
    "write_batch_size": 1 << 17,
    "data_page_size": 8 << 20,  # caps pages of long strings; numeric pages are bounded by rows
    "dictionary_pagesize_limit": 1 << 30,  # a categorical's dictionary must never fall back to plain
    "store_schema": True,  # the Arrow schema in the footer restores tz, durations, units exactly
}

# Older pyarrow versions lack some options (max_rows_per_page is recent): drop what this one does not know.
_KNOWN = set(inspect.signature(pq.ParquetWriter.__init__).parameters) | {
    "row_group_size",
    "data_page_size",
}
WRITE_OPTIONS = {name: value for name, value in WRITE_OPTIONS.items() if name in _KNOWN}


def conversion_error(exc: Exception) -> RestoreError:
    return RestoreError(
        f"the Parquet data could not be converted to pandas ({type(exc).__name__}: {exc})",
        hint="install the pandas and pyarrow versions the run used, or re-run the cell that created it.",
    )
