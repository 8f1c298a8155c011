"""The one interface every input of a Bulk Write submission implements: stream the rows as Arrow batches.

Why a stream of batches: the rows to push into Zoho can be far larger than a task's memory (a table
export, a lake file of millions of rows), and the submit side cuts them into Zoho's 25k-row CSV files
anyway, so it only ever needs a few batches at a time. Every source reads its input incrementally
(an object through smart-open, a query through a server-side or DB-API cursor, DuckDB through its Arrow
reader), and :meth:`RowSource.batches` is a generator that closes its file or connection in ``finally``,
so a consumer that stops early (a failed submission) leaks nothing.

Decisions a consumer can rely on, for every source:

* Every batch of one source has the same schema (names, types and order): the first batch with rows
  fixes it, and a reader that drifts later (JSON Lines inferring a type per block) is cast to it, or
  stopped with a :class:`~airflow_provider_zohobulk.errors.SourceError` naming the column and rows.
* Column names are unique and non-empty: a repeated name gets ``_2``, ``_3``... and an empty one is
  ``column_<n>`` (the CSV decoder's rule, :func:`~airflow_provider_zohobulk.stream.decode.unique_column_names`).
* No batch is empty: an input without rows (a header-only CSV, an empty file, a query that matches
  nothing) yields no batches at all, and the consumer decides whether that is an error.
* A batch has at most ``batch_rows`` rows.

Sources are plain objects built at DAG-parse time, like the sinks: ``__init__`` does no I/O and imports
no Airflow; connections are resolved when :meth:`RowSource.batches` runs. Airflow renders the attributes
named in ``template_fields`` when a source is passed to an operator.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Iterator
from typing import ClassVar

import pyarrow as pa

from airflow_provider_zohobulk.errors import SourceConfigurationError, SourceError

DEFAULT_BATCH_ROWS = 10_000
#: How much of a query :meth:`RowSource.describe` shows.
SQL_EXCERPT_CHARS = 80


class RowSource(abc.ABC):
    """Where the rows of a Bulk Write submission come from: a file, an object, or a query."""

    template_fields: ClassVar[tuple[str, ...]] = ()
    #: The attributes :meth:`__repr__` shows: where the rows come from, never options or query parameters.
    repr_fields: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        """The location fields only (never ``transport_params`` or query parameters): Airflow shows a
        template field's rendered value as its repr, under the task's Rendered Templates."""
        fields = ", ".join(f"{name}={self._repr_value(name)!r}" for name in self.repr_fields)
        return f"{type(self).__name__}({fields})"

    def _repr_value(self, name: str) -> object:
        return getattr(self, name, None)

    @abc.abstractmethod
    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows, as record batches of at most ``batch_rows`` rows and one schema (see the module
        docstring). A generator: its file or connection is closed when it ends or is closed early."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the rows come from, for logs and messages (the URI, or the connection and the start of
        the query); never a secret."""

    def parse_time_asset_uri(self) -> str | None:
        """The input's URI as a DAG file can know it (for an Asset inlet): no I/O, no connection lookup;
        None when it is still templated or needs a connection to be named."""
        return None


def check_batch_rows(batch_rows: int) -> int:
    if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1:
        raise SourceConfigurationError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    return batch_rows


def check_text(value: object, what: str) -> str:
    """``value`` if it is a non-empty string, else a SourceConfigurationError naming ``what``."""
    if not isinstance(value, str) or not value.strip():
        raise SourceConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    return value


def is_templated(text: str) -> bool:
    """True while ``text`` still holds Jinja: at DAG-parse time it can only be checked once rendered."""
    return "{{" in text or "{%" in text


def sql_excerpt(sql: str) -> str:
    """The start of a query on one line, for messages."""
    flat = re.sub(r"\s+", " ", sql).strip()
    return flat if len(flat) <= SQL_EXCERPT_CHARS else flat[:SQL_EXCERPT_CHARS] + "..."


def rebatched(batches: Iterable[pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of ``batches`` (one schema) in batches of exactly ``batch_rows`` rows, the last one
    possibly shorter: a reader whose batches follow its own blocks (CSV) then gives a predictable count.
    Holds at most one output batch of rows; a batch is copied only where it joins pieces."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            piece = batch.slice(start, batch_rows - held)
            start += piece.num_rows
            pending.append(piece)
            held += piece.num_rows
            if held == batch_rows:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, held = [], 0
    if held:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def widen_nulls(data_type: pa.DataType) -> pa.DataType:
    """``data_type`` with every ``null`` (a column, list item or struct field that was only ever null
    in the rows seen) replaced by ``string``: a later value of any scalar type can still be cast to it."""
    if pa.types.is_null(data_type):
        return pa.string()
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        item = data_type.value_field
        widened = item.with_type(widen_nulls(item.type))
        return pa.large_list(widened) if pa.types.is_large_list(data_type) else pa.list_(widened)
    if pa.types.is_struct(data_type):
        return pa.struct([data_type.field(i).with_type(widen_nulls(data_type.field(i).type))
                          for i in range(data_type.num_fields)])
    return data_type


def stable_batches(batches: Iterable[pa.RecordBatch], *, where: str, widen: bool = False
                   ) -> Iterator[pa.RecordBatch]:
    """Yield ``batches`` with one schema: the first batch with rows fixes it (its ``null`` types widened
    to ``string`` when ``widen``), later ones are conformed to it (:func:`conform_batch`).
    Batches without rows are dropped."""
    schema: pa.Schema | None = None
    first_row = 1
    for batch in batches:
        if not batch.num_rows:
            continue
        if schema is None:
            schema = pa.schema([field.with_type(widen_nulls(field.type)) if widen else field for field in batch.schema],
                               metadata=batch.schema.metadata)
        yield conform_batch(batch, schema, where=where, first_row=first_row)
        first_row += batch.num_rows


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema, *, where: str, first_row: int) -> pa.RecordBatch:
    """``batch`` with exactly ``schema``: a missing column as nulls, a drifted type cast (safely) to the
    schema's. A column the schema does not have, or a value that does not fit, is a SourceError naming
    the column and the rows: the earlier batches are already on their way and cannot change shape."""
    if batch.schema.equals(schema):
        return batch
    last_row = first_row + batch.num_rows - 1
    extra = [name for name in batch.schema.names if name not in schema.names]
    if extra:
        raise SourceError(
            f"{where}: column {extra[0]!r} first appears in rows {first_row}..{last_row}, after the first rows "
            f"fixed the columns ({schema.names[:20]}); give it (even as null) in the first rows",
            row_number=first_row)
    arrays = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(index)
        if column.type == field.type:
            arrays.append(column)
            continue
        try:
            arrays.append(column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SourceError(
                f"{where}: column {field.name!r} is {column.type} in rows {first_row}..{last_row} where the first "
                f"rows made it {field.type}, and it cannot be converted ({exc})",
                row_number=first_row) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
