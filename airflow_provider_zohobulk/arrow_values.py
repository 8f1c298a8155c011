"""Arrow scalars and small arrays built straight from bytes, never converted from Python objects.

Why this module exists: the first time a process converts a Python object to Arrow
(``pa.scalar("x")``, ``pa.array([...])``, or a plain ``"x"`` or ``0`` passed to a ``pyarrow.compute``
function), pyarrow's C++ side imports pandas if it is installed, to learn pandas' null markers. That
costs ~50 MB of memory and ~0.4 s in a process that never uses pandas, which is the case of a task
that only moves a Bulk Write result (measured in ``benchmarks/results.md``). So the streaming core and
the sinks build every literal they hand to Arrow with these functions, from buffers; a test checks that
a whole load leaves pandas unimported.

Only what the pipeline needs: text and integer values, and booleans. Everything here is small (a
batch's column headers, the distinct ERRORS texts, one literal): the bulk data never passes through
Python objects at all.
"""

from __future__ import annotations

import array
import functools
import itertools
from collections.abc import Sequence

import pyarrow as pa

__all__ = ["bool_scalar", "empty_batch", "int_array", "int_scalar", "null_scalar", "string_array", "string_scalar"]

_INT64, _STRING = pa.int64(), pa.string()
_ARRAY_CODES: dict[pa.DataType, str] = {pa.int32(): "i", _INT64: "q"}
_INT32_MAX = 2**31 - 1


def _validity(present: Sequence[bool]) -> pa.Buffer | None:
    """Arrow's validity bitmap (bit i set = value i present, least significant bit first)."""
    if all(present):
        return None
    bits = sum(1 << position for position, here in enumerate(present) if here)
    return pa.py_buffer(bits.to_bytes((len(present) + 7) // 8, "little"))


def string_array(values: Sequence[str | None]) -> pa.StringArray:
    """``values`` as a string array (None -> null)."""
    encoded = [b"" if value is None else value.encode("utf-8") for value in values]
    offsets = array.array("i", itertools.accumulate(map(len, encoded), initial=0))
    if offsets[-1] > _INT32_MAX:  # pragma: no cover - never for the literals this is used for
        raise ValueError("string_array is for small arrays: the values exceed 2 GiB")
    present = [value is not None for value in values]
    return pa.Array.from_buffers(
        _STRING, len(values),
        [_validity(present), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
        null_count=present.count(False),
    )


def int_array(values: Sequence[int], arrow_type: pa.DataType = _INT64) -> pa.Array:
    """``values`` as an int32 or int64 array (no nulls)."""
    if arrow_type not in _ARRAY_CODES:
        raise ValueError(f"int_array builds int32 or int64 arrays, not {arrow_type}")
    code = _ARRAY_CODES[arrow_type]
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(array.array(code, values))])


@functools.lru_cache(maxsize=256)
def string_scalar(value: str) -> pa.StringScalar:
    """``value`` as an Arrow string scalar (cached: the same few literals recur in every batch)."""
    return string_array([value])[0]


@functools.lru_cache(maxsize=256)
def int_scalar(value: int, arrow_type: pa.DataType = _INT64) -> pa.Scalar:
    """``value`` as an Arrow int32 or int64 scalar."""
    return int_array([value], arrow_type)[0]


def bool_scalar(value: bool) -> pa.BooleanScalar:
    """``value`` as an Arrow boolean scalar."""
    return pa.Array.from_buffers(pa.bool_(), 1, [None, pa.py_buffer(b"\x01" if value else b"\x00")])[0]


def null_scalar(arrow_type: pa.DataType = _STRING) -> pa.Scalar:
    """A null of ``arrow_type``."""
    return pa.nulls(1, arrow_type)[0]


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    """A zero-row batch of ``schema``: it still tells the next stage the columns."""
    return pa.RecordBatch.from_arrays([pa.nulls(0, field.type) for field in schema], schema=schema)
