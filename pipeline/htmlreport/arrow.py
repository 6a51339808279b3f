"""The few pyarrow.compute steps the report repeats, returning plain Python values.

Why wrappers: pyarrow-stubs type the kernels by overloads that do not cover a
column compared with a Python ``str`` or a boolean mask with nulls filled, so
the columns come in as ``Any`` here and leave as ``int``/``dict``/``list``. And
every run ends with its report, so nothing here may import pandas (+45 MB):
pyarrow does on ``to_numpy()`` and on a Python scalar given to a kernel, so
scalars and numpy views are built from buffers (:mod:`pipeline.arrowutil`).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..arrowutil import filled as filled  # the report's modules read these two from here
from ..arrowutil import string_scalar
from ..arrowutil import to_numpy as to_numpy


def equal(column: Any, value: str) -> Any:
    """A boolean mask: ``column == value`` (null where the column is null)."""
    return pc.equal(column, string_scalar(value))


def count_true(values: Any) -> int:
    """How many values of a boolean mask are true (nulls are not)."""
    return int(pc.sum(pc.cast(values, pa.int64())).as_py() or 0)


def total(column: Any) -> Any:
    """The sum of a numeric column as a Python number, None when every value is null."""
    return pc.sum(column).as_py()


def value_counts(column: Any) -> dict[Any, int]:
    """Non-null values and how often each occurs."""
    return {c["values"]: int(c["counts"]) for c in pc.value_counts(column.drop_null()).to_pylist()}


def first_true(values: Any, n: int) -> list[int]:
    """Positions of the first ``n`` true values of a boolean mask (nulls count as false),
    scanning chunk by chunk so a million-row mask with early hits stops early."""
    found: list[int] = []
    offset = 0
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    for chunk in chunks:
        hits = pc.indices_nonzero(filled(chunk)).slice(0, n - len(found)).to_pylist()
        found += [offset + int(i) for i in hits]
        offset += len(chunk)
        if len(found) >= n:
            break
    return found
