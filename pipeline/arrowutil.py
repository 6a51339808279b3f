"""Arrow arrays and scalars built from buffers, for the run path.

``pa.array(...)`` and ``pa.scalar(...)`` on Python or numpy values, a Python value
given to a kernel and ``to_numpy()`` ask whether the value is a pandas object, which
imports pandas (+45 MB RSS, ~0.4 s) into a run that never uses it (DESIGN.md section 9).
Building from buffers asks nothing. The analyst-facing modules (summary, diff) import
pandas anyway and need none of this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

_NUMERIC = {np.dtype(np.int64): pa.int64(), np.dtype(np.int32): pa.int32(), np.dtype(np.float64): pa.float64()}


def _buffer(data: np.ndarray[Any, Any] | bytes) -> pa.Buffer:
    # numpy arrays support the buffer protocol; the stubs do not say so
    return pa.py_buffer(data)  # type: ignore[arg-type]


def numeric(values: np.ndarray[Any, Any]) -> pa.Array[Any]:
    """An int64/int32/float64 or bool numpy array as an Arrow array (no nulls)."""
    if values.dtype == np.bool_:
        bits = np.packbits(values.astype(np.bool_, copy=False), bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, _buffer(bits)])
    data = np.ascontiguousarray(values)
    return pa.Array.from_buffers(_NUMERIC[data.dtype], len(data), [None, _buffer(data)])


def int_codes(array: pa.Array[Any]) -> np.ndarray[Any, Any]:
    """The values of an int32/int64 Arrow array without nulls (dictionary indices) as numpy, zero-copy."""
    width = array.type.bit_width // 8
    data = array.buffers()[1]
    assert data is not None
    codes: np.ndarray[Any, Any] = np.frombuffer(
        memoryview(data), dtype=np.int32 if width == 4 else np.int64, count=len(array), offset=array.offset * width
    )
    return codes


def strings(values: Sequence[str]) -> pa.Array[Any]:
    """Python strings as an Arrow string array (no nulls)."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int32, count=len(encoded)), out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, _buffer(offsets), _buffer(b"".join(encoded))])


def string_scalar(value: str) -> pa.Scalar[Any]:
    """One string as an Arrow scalar, for comparisons in pyarrow.compute."""
    scalar: pa.Scalar[Any] = strings([value])[0]
    return scalar


def int_scalar(value: int) -> pa.Scalar[Any]:
    """One integer as an Arrow scalar, for comparisons in pyarrow.compute."""
    scalar: pa.Scalar[Any] = numeric(np.array([value], dtype=np.int64))[0]
    return scalar


def scalar(value: bool | int | float | str) -> pa.Scalar[Any]:
    """A Python value as an Arrow scalar (``pa.scalar(value)``, and a Python value given
    to a kernel such as ``fill_null``, ask pandas)."""
    if isinstance(value, str):
        return string_scalar(value)
    if isinstance(value, bool):
        out: pa.Scalar[Any] = numeric(np.array([value], dtype=np.bool_))[0]
        return out
    if isinstance(value, int):
        return int_scalar(value)
    out = numeric(np.array([value], dtype=np.float64))[0]
    return out


def filled(values: Any, value: bool | int | float | str = False) -> Any:
    """``values`` with nulls replaced by ``value`` (by default: a boolean mask without nulls).
    Through ``pc.fill_null``: the arrays' own ``fill_null`` passes even an Arrow scalar
    through ``pa.scalar``, which asks pandas."""
    import pyarrow.compute as pc  # not at import: the run path imports this before its first request

    return pc.fill_null(values, scalar(value).cast(values.type))


def to_numpy(values: Any, dtype: Any = np.float64) -> np.ndarray[Any, Any]:
    """A boolean (as bool) or numeric (as ``dtype``: int64 or float64) array or chunked
    array without nulls as numpy, read from its buffers (``to_numpy()`` imports pandas)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    boolean = pa.types.is_boolean(values.type)
    parts = [_chunk(c, boolean, np.dtype(dtype)) for c in chunks if len(c)]
    if not parts:
        return np.zeros(0, dtype=np.bool_ if boolean else dtype)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _chunk(c: Any, boolean: bool, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    assert c.null_count == 0, "fill or drop the nulls first"
    if boolean:
        bits = np.frombuffer(c.buffers()[1], dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[c.offset : c.offset + len(c)].astype(np.bool_)
    target = pa.int64() if dtype == np.int64 else pa.float64()
    if c.type != target:
        import pyarrow.compute as pc  # not at import: the run path imports this before its first request

        c = pc.cast(c, target)
    return np.frombuffer(c.buffers()[1], dtype=dtype, count=len(c), offset=c.offset * dtype.itemsize)
