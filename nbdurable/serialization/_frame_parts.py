"""DataFrames stored column by column: each column, and a non-range index, a Parquet object of its own.

A column's object is a one-column frame (column ``v`` over a RangeIndex) keyed by the column's dtype, length
and data only (``_parquet.serialize_frame`` computes these keys while it fingerprints the frame), so a cell
that changes one column of a big frame writes one column, and a renamed, reordered or extended frame reuses
every column it kept. The frame itself is a small manifest: the labels in order, the labels' dtype and name,
the number of rows, and a RangeIndex described (any other index is an object: a frame without columns over
it). ``assemble`` puts the parts back together exactly; each part is read by the Parquet format's own fast
path, and DuckDB reads the parts side by side (``POSITIONAL JOIN``, ``history.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from nbdurable.serialization._core import corrupt
from nbdurable.serialization._parquet import ParquetSerialized, plan
from nbdurable.serialization._parquet_common import FORMAT

COLUMN = "v"  # the one column of a column's object
_FRAME_TYPE = "pandas.DataFrame"


@dataclass
class FrameParts:
    """A frame as parts to store: ``columns`` (label, key, Serialized or None for a part stored already),
    ``index`` (key and Serialized or None; None for a RangeIndex) and the ``manifest`` that ``assemble``
    needs besides them."""

    columns: list[tuple[str, str, ParquetSerialized | None]]
    index: tuple[str, ParquetSerialized | None] | None
    manifest: dict[str, Any]

    @classmethod
    def of(cls, frame: pd.DataFrame, column_keys: tuple[str, ...], index_key: str | None,
           stored: Callable[[str], bool]) -> FrameParts | None:
        """The parts of a frame that ``plan`` accepted (None if one of them would not round-trip alone). A
        part whose key is ``stored`` is not made again: it was made, and round-tripped, when it was stored."""
        if len(column_keys) != frame.shape[1]:
            return None
        columns: list[tuple[str, str, ParquetSerialized | None]] = []
        for label, key in zip(frame.columns, column_keys, strict=True):
            if stored(key):
                columns.append((label, key, None))
                continue
            values = frame[label]
            part = values.reset_index(drop=True).to_frame(COLUMN)  # copy-on-write: shares the column's memory
            part_plan = plan(part)
            if part_plan is None or part.dtypes.iloc[0] != values.dtype:
                return None
            size = int(part.memory_usage(index=False, deep=False).sum())
            columns.append((label, key, ParquetSerialized(part, part_plan, key=key, format=FORMAT,
                                                          type_name=_FRAME_TYPE, size=size)))
        index = frame.index
        manifest: dict[str, Any] = {"labels": [str(c) for c in frame.columns], "rows": len(frame),
                                    "labels_dtype": str(frame.columns.dtype), "labels_name": frame.columns.name}
        index_part: tuple[str, ParquetSerialized | None] | None = None
        if isinstance(index, pd.RangeIndex):
            manifest["range"] = [index.start, index.stop, index.step, index.name]
        elif index_key is None:
            return None
        elif stored(index_key):
            index_part = (index_key, None)
        else:
            skeleton = pd.DataFrame(index=index)
            skeleton_plan = plan(skeleton, index_only=True)
            if skeleton_plan is None:
                return None
            index_part = (index_key, ParquetSerialized(skeleton, skeleton_plan, key=index_key, format=FORMAT,
                                                       type_name=_FRAME_TYPE, size=int(index.memory_usage(deep=False))))
        return cls(columns, index_part, manifest)


def assemble(manifest: dict[str, Any], index_part: pd.DataFrame | None, columns: list[pd.DataFrame]) -> pd.DataFrame:
    """The frame from its manifest, its index part (None for a RangeIndex) and its column parts, in order."""
    try:
        labels, rows = list(manifest["labels"]), int(manifest["rows"])
        if index_part is not None:
            index: pd.Index = index_part.index
        else:
            start, stop, step, name = manifest["range"]
            index = pd.RangeIndex(int(start), int(stop), int(step), name=name)
        names = pd.Index(labels, dtype=manifest.get("labels_dtype") or None, name=manifest.get("labels_name"))
    except (KeyError, TypeError, ValueError) as exc:
        raise corrupt(FORMAT, f"the manifest of a column-wise DataFrame is malformed ({exc})") from exc
    if len(columns) != len(labels) or len(index) != rows or any(len(c) != rows for c in columns):
        raise corrupt(FORMAT, f"a column-wise DataFrame's parts do not fit its manifest ({len(labels)} columns "
                              f"of {rows} rows expected)")
    frame = pd.concat([part[COLUMN] for part in columns], axis=1, ignore_index=True) if columns else \
        pd.DataFrame(index=pd.RangeIndex(rows))
    frame.index = index
    frame.columns = names
    return frame
