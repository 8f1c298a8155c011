"""The Bulk Read export: one page's zip of CSV -> the module's own columns plus three meta columns.

A Bulk Read page is a zip holding ``<job_id>.csv``: the module's records, one column per exported
field, headed by the fields' API names. :func:`read_export_page` streams it through the same unzip,
decode and read-ahead threads as a Bulk Write result (``bulk_result.member_batches``); only the
row layout differs. A page's batches hold:

- the module's columns, as the header names them (``Id``, ``Last_Name``, ...), every one
  ``pa.string()``: Zoho's values are text, and typing them is the warehouse's choice. An empty cell
  is the empty string ``""``, never null, so a null in a sink means only "not exported" (a field
  one page lacks);
- :data:`EXPORT_META_COLUMNS`: ``_job_id`` (the page's own job id: every page is a job of its own),
  ``_page`` (int64, the page number) and ``_row_number`` (int64, 1-based within the page).

Like every core module, this imports no Airflow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa

from airflow_provider_zohobulk.arrow_values import int_scalar, string_scalar
from airflow_provider_zohobulk.bulk_result import member_batches, sequence, shown
from airflow_provider_zohobulk.errors import ResultLayoutError, ZohoBulkError, ZohoConfigurationError
from airflow_provider_zohobulk.stream.unzip import UnzipLimits, iter_csv_members

__all__ = ["EXPORT_META_COLUMNS", "RESERVED_EXPORT_COLUMNS", "export_schema", "read_export_page"]

#: The columns every export batch carries after the module's own, in this order.
EXPORT_META_COLUMNS = ("_job_id", "_page", "_row_number")
#: Names a module column may not have: the meta columns, and the load time warehouses add.
RESERVED_EXPORT_COLUMNS = (*EXPORT_META_COLUMNS, "_loaded_at")


@functools.lru_cache(maxsize=64)
def export_schema(module_columns: tuple[str, ...]) -> pa.Schema:
    """The schema of an export batch whose module columns are ``module_columns`` (in header order)."""
    return pa.schema([
        *(pa.field(name, pa.string()) for name in module_columns),
        pa.field("_job_id", pa.string(), nullable=False),
        pa.field("_page", pa.int64(), nullable=False),
        pa.field("_row_number", pa.int64(), nullable=False),
    ])


@functools.lru_cache(maxsize=64)
def _checked_module_columns(names: tuple[str, ...], file_name: str) -> tuple[str, ...]:
    """``names`` if none is reserved; cached, since every batch of a page has its header."""
    reserved = [name for name in names if name in RESERVED_EXPORT_COLUMNS]
    if reserved:
        raise ResultLayoutError(
            f"the export's CSV has a column named {reserved[0]!r}, a name this provider keeps for its own "
            f"columns ({', '.join(RESERVED_EXPORT_COLUMNS)}); its columns are {shown(names)}", file_name=file_name)
    return names


def to_export_layout(batch: pa.RecordBatch, *, job_id: str, page: int, file_name: str,
                     first_row_number: int) -> pa.RecordBatch:
    """One decoded batch (string columns named by the header) -> the export layout, zero-copy for the
    module's columns."""
    module_columns = _checked_module_columns(tuple(batch.schema.names), file_name)
    num_rows = batch.num_rows
    return pa.RecordBatch.from_arrays(
        [*batch.columns,
         pa.repeat(string_scalar(job_id), num_rows),
         pa.repeat(int_scalar(page), num_rows),
         sequence(num_rows, first_row_number)],
        schema=export_schema(module_columns))


def read_export_page(
    chunks: Iterable[bytes],
    *,
    job_id: str,
    page: int,
    limits: UnzipLimits | None = None,
    block_size: int = 1 << 20,
    on_skip: Callable[[str, int], None] | None = None,
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """One page's zip bytes -> ``(file_name, batch)`` for its CSV member, in the export layout (see the
    module docstring), through the same unzip and decode as Bulk Write results.

    ``file_name`` is the member's name (``<job_id>.csv``); the caller names the page for the sink.
    The member yields at least one batch (zero rows for a page with only a header). Batches are
    provisional until the iterator is exhausted: the CRC and sizes are checked at the member's end.
    A zip without a CSV member, or with more than one, is a :class:`ResultLayoutError` (raised when
    the second member starts: the sink's load is aborted, nothing is kept). Every error carries
    ``job_id``; ``on_skip(name, size)`` hears of members that are not CSV.
    """
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise ZohoConfigurationError(f"a Bulk Read page number is a positive integer, got {page!r}", job_id=job_id)
    limits = limits or UnzipLimits()
    first_member: str | None = None
    try:
        for member in iter_csv_members(chunks, limits=limits, on_skip=on_skip):
            if first_member is not None:
                raise ResultLayoutError(
                    f"page {page} of the export holds more than one CSV file ({first_member!r}, {member.name!r}); "
                    "a Bulk Read page holds exactly one", file_name=member.name)
            first_member = member.name
            layout = functools.partial(_layout_for, job_id=job_id, page=page, file_name=member.name)
            yield from member_batches(member.name, member.chunks, layout=layout, block_size=block_size,
                                      max_columns=limits.max_columns, empty_as_null=False)
    except ZohoBulkError as exc:
        exc.with_context(job_id=job_id)
        raise


def _layout_for(batch: pa.RecordBatch, first_row_number: int, *, job_id: str, page: int,
                file_name: str) -> pa.RecordBatch:
    """:func:`to_export_layout` in the shape ``bulk_result.member_batches`` calls it."""
    return to_export_layout(batch, job_id=job_id, page=page, file_name=file_name, first_row_number=first_row_number)
