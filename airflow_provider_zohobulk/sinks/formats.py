"""File formats for canonical result batches: Parquet, CSV and JSON Lines, written batch by batch.

Every encoder writes the columns of ``bulk_result.CANONICAL_COLUMNS`` in that order, one output row per
result row, and keeps nothing but the current batch in memory. How each format carries the nested
columns ``errors`` (a list of ``{code, columns}``) and ``source`` (the mapped CSV columns, header ->
value):

**Parquet** (``.parquet``): the canonical Arrow schema of the CSV member as it is, so the schema is
per file. ``errors`` is ``list<struct<code: string, columns: list<string>>>`` (an empty list when the
row has no error), ``source`` is ``struct<...>`` with one ``string`` field per mapped column of that
CSV, in header order (``struct<Last_Name: string, Email: string, Company: string>``), so engines read
``source.Email`` as a column of its own; an empty CSV cell, quoted or not, is a null (the decoder
cannot tell ``""`` from a missing value). A CSV without any mapped column has ``source`` as a column
of nulls (Arrow type ``null``): Parquet cannot store a struct without fields. Row groups follow
the incoming batches (about 1 MiB of CSV each). The file is compressed by Parquet's own codec
(zstd by default), never by the file name: ``.parquet.gz`` is refused, because readers expect a
plain Parquet file.

**JSON Lines** (``.jsonl`` or ``.ndjson``): one UTF-8 JSON object per line, ``\\n``-terminated, keys in
canonical order::

    {"job_id":"4150...","file_name":"Leads-Leads.csv","row_number":2,"record_id":null,"status":"SKIPPED",
     "errors":[{"code":"MANDATORY_NOT_FOUND","columns":["Company","Last_Name"]}],
     "errors_raw":"MANDATORY_NOT_FOUND-Company,Last_Name","source":{"Last_Name":null,"Company":null}}

``row_number`` is a JSON number, every other scalar a JSON string or ``null``; ``errors`` is an array
of objects (``[]`` when none) and ``source`` an object whose keys are the mapped columns in header
order (``{}`` when there are none). Non-ASCII text is written as is (not
``\\u``-escaped); newlines and quotes inside values are escaped, so a line is always one row.

**CSV** (``.csv``): RFC 4180 with a header row and ``\\n`` line ends. Columns: ``job_id``,
``file_name``, ``row_number``, ``record_id``, ``status``, ``errors``, ``errors_raw``, ``source``.
``errors`` and ``source`` hold the JSON text described above for JSON Lines. Every string value is
quoted and a null is an empty unquoted field, so a reader can tell an empty string ``""`` from a
null (pyarrow's ``quoted_strings_can_be_null=False``, or DuckDB's ``read_csv`` default); rows from
Zoho hold no empty strings (empty cells are decoded as nulls), but a caller's own batches may. The mapped
columns are deliberately *not* flattened into one CSV column each: the header line comes first,
but the full set of mapped headers is only known after every member has been read (members of one
archive may map different columns), so flattening would mean buffering the whole result or
rewriting the file. JSON text keeps the output streaming and the columns fixed across jobs.

**Bulk Read exports** (``flat=True``) are written as they come, one column per field: exactly the
batch's columns (the module's, as Zoho's header names them, then ``_job_id``, ``_page``,
``_row_number``; see :mod:`airflow_provider_zohobulk.bulk_read`), with no canonical layout. Parquet
has one ``string`` column per module field and ``int64`` ``_page`` and ``_row_number``; CSV has
the header line, every string quoted and ``_page``, ``_row_number`` bare numbers; JSON Lines has
one object per row with the columns as keys in order and ``_page``, ``_row_number`` as numbers.
An empty cell is the empty string everywhere (CSV: ``""``), a column a page lacks is not written
at all (each output holds one page, with its own header). An output that got no batch holds the
three meta columns only.

Compression of CSV and JSON Lines (``.gz``, ``.bz2``, ``.xz``, ``.zst`` after the format's extension)
is applied to the byte stream by the sinks, not here.
"""

from __future__ import annotations

import abc
import json
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from airflow_provider_zohobulk.arrow_values import (
    bool_scalar,
    empty_batch,
    int_array,
    int_scalar,
    null_scalar,
    string_array,
)
from airflow_provider_zohobulk.arrow_values import string_scalar as lit  # short: JSON is built of many literals
from airflow_provider_zohobulk.bulk_read import EXPORT_META_COLUMNS, export_schema
from airflow_provider_zohobulk.bulk_result import (
    CANONICAL_COLUMNS,
    canonical_schema,
    check_source_type,
    source_type,
)
from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError

PARQUET, CSV, JSONL = "parquet", "csv", "jsonl"

#: File extension (lower case, with the dot) -> format name.
FORMAT_BY_EXTENSION: dict[str, str] = {".parquet": PARQUET, ".csv": CSV, ".jsonl": JSONL, ".ndjson": JSONL}
FORMATS: tuple[str, ...] = (PARQUET, CSV, JSONL)

#: Parquet codecs pyarrow can write; the names pyarrow accepts.
PARQUET_CODECS: tuple[str, ...] = ("zstd", "snappy", "gzip", "brotli", "lz4", "none")

#: The CSV layout: the canonical columns, with the nested ones as JSON text.
CSV_SCHEMA = pa.schema(
    [
        pa.field(field.name, pa.string(), nullable=field.nullable) if field.name in ("errors", "source") else field
        for field in canonical_schema(pa.string())
    ]
)
#: ``source``'s type for a CSV without mapped columns, and for output written before any batch came.
NO_SOURCE_COLUMNS = source_type(())


# --- nested columns as JSON text ---------------------------------------------------------------------
# Turning ``errors`` (list of structs) and ``source`` (struct) into JSON is the hot spot of CSV, JSON Lines
# and the SQL sink: ``to_pylist`` + ``json.dumps`` costs more than a PostgreSQL COPY itself. Built here
# with Arrow kernels over the flattened children instead (quote every string, join per row by the list
# offsets): about ten times faster on 100k rows; only strings holding rare control characters go through
# json.dumps.

_NEEDS_JSON_ESCAPE = r'["\\\x00-\x1f]'
_RARE_CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"
_COMMON_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))


def json_string_literals(values: pa.Array) -> pa.StringArray:
    """Each string as a JSON string literal; a null becomes the literal ``null``."""
    if values.type != pa.string():
        values = values.cast(pa.string())
    literals = pc.binary_join_element_wise(lit('"'), values, lit('"'), lit(""))
    needs_escape = pc.fill_null(pc.match_substring_regex(values, _NEEDS_JSON_ESCAPE), bool_scalar(False))
    if pc.any(needs_escape).as_py():
        originals = pc.filter(values, needs_escape)
        escaped = originals
        for char, escape in _COMMON_ESCAPES:
            escaped = pc.replace_substring(escaped, char, escape)
        rare = pc.match_substring_regex(escaped, _RARE_CONTROL_CHARS)
        if pc.any(rare).as_py():
            slow = [json.dumps(text, ensure_ascii=False)[1:-1] for text in pc.filter(originals, rare).to_pylist()]
            escaped = pc.replace_with_mask(escaped, rare, string_array(slow))
        literals = pc.replace_with_mask(literals, needs_escape,
                                        pc.binary_join_element_wise(lit('"'), escaped, lit('"'), lit("")))
    return pc.fill_null(literals, lit("null"))


def _children(lists: pa.ListArray | pa.MapArray) -> tuple[pa.Array, slice]:
    """Offsets rebased to 0 and the child range this (possibly sliced) array uses.

    ``.values``/``.keys`` of a sliced list array are the whole unsliced child: encoding them would
    redo the full batch for every slice.
    """
    offsets = lists.offsets
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    return pc.subtract(offsets, int_scalar(start, offsets.type)), slice(start, end)


def _join_per_row(lists: pa.ListArray | pa.MapArray, offsets: pa.Array, item_json: pa.Array, opening: str,
                  closing: str) -> pa.Array:
    """Join ``item_json`` per row of ``lists`` (by the rebased ``offsets``), inside brackets."""
    grouped = pa.ListArray.from_arrays(offsets, item_json)
    joined = pc.binary_join_element_wise(lit(opening), pc.binary_join(grouped, lit(",")), lit(closing), lit(""))
    if lists.null_count:
        joined = pc.if_else(lists.is_null(), null_scalar(pa.string()), joined)
    return joined


def errors_to_json(errors: pa.ListArray) -> pa.Array:
    """``[{"code": ..., "columns": [...]}, ...]`` per row; a null row stays null."""
    offsets, used = _children(errors)
    entries = errors.values[used]
    codes = json_string_literals(pc.struct_field(entries, "code"))
    columns = pc.struct_field(entries, "columns")
    column_offsets, used_columns = _children(columns)
    column_names = json_string_literals(columns.values[used_columns])
    columns_json = pc.fill_null(_join_per_row(columns, column_offsets, column_names, "[", "]"), lit("null"))
    entry_json = pc.binary_join_element_wise(lit('{"code":'), codes, lit(',"columns":'), columns_json, lit("}"),
                                             lit(""))
    if entries.null_count:
        entry_json = pc.if_else(entries.is_null(), lit("null"), entry_json)
    return _join_per_row(errors, offsets, entry_json, "[", "]")


def source_to_json(source: pa.StructArray) -> pa.Array:
    """``{"header": "value", ...}`` per row, keys in the struct's (header) order, null values as JSON
    null; a null row stays null.

    One element-wise join of each field's values as JSON literals between constant ``{"header":`` and
    ``,"header":`` texts: no per-row list of entries to gather and join, as a map needed.
    """
    names = [field.name for field in source.type]
    if not names:
        joined = pa.repeat(lit("{}"), len(source))
    else:
        openers = string_array(["{", *[","] * (len(names) - 1)])
        keys = pc.binary_join_element_wise(openers, json_string_literals(string_array(names)), lit(":"), lit(""))
        parts: list[pa.Scalar | pa.Array] = []
        for index in range(len(names)):  # field(i): the values as stored, sliced with the struct
            parts += [keys[index], json_string_literals(source.field(index))]
        joined = pc.binary_join_element_wise(*parts, lit("}"), lit(""))
    if source.null_count:
        joined = pc.if_else(source.is_null(), null_scalar(pa.string()), joined)
    return joined


def check_format(format_name: str) -> str:
    """The format's canonical name (``ndjson`` is ``jsonl``); raises for a format this module cannot write."""
    normalised = format_name.lower()
    normalised = JSONL if normalised in ("ndjson", "jsonlines", "json_lines") else normalised
    if normalised not in FORMATS:
        raise SinkConfigurationError(f"unknown output format {format_name!r}; choose one of {', '.join(FORMATS)}")
    return normalised


def conform_batch(batch: pa.RecordBatch, *, job_id: str, file_name: str, destination: str) -> pa.RecordBatch:
    """``batch`` with exactly the canonical columns in canonical order, or a SinkError saying what differs:
    every column has its canonical type but ``source``, which must be a struct of string fields with
    distinct names (:func:`~airflow_provider_zohobulk.bulk_result.check_source_type`).

    Sinks check this because a batch from elsewhere (another version, a hand-built one) would otherwise
    write a file or table of a different shape, or rows of another job, without any error.
    """
    at = {name: batch.schema.get_field_index(name) for name in CANONICAL_COLUMNS}  # -1: missing or repeated
    missing = [name for name, index in at.items() if index < 0]
    source = batch.schema.field(at["source"]).type if at["source"] >= 0 else NO_SOURCE_COLUMNS
    source_problem = check_source_type(source)
    expected = canonical_schema(source)
    if missing or source_problem or not batch.schema.equals(expected):
        wrong = [field.name for field in expected if field.name != "source" and at[field.name] >= 0
                 and batch.schema.field(at[field.name]).type != field.type]
        if missing or wrong or source_problem:
            raise SinkError(f"batch for {destination!r} does not have the canonical layout (missing {missing}, "
                            f"other types {wrong}{'; ' + source_problem if source_problem else ''})",
                            job_id=job_id, file_name=file_name)
        batch = pa.RecordBatch.from_arrays([batch.column(index) for index in at.values()], schema=expected)
    if batch.num_rows and not pc.all(pc.equal(batch.column("job_id"), lit(job_id))).as_py():
        raise SinkError(f"batch for {destination!r} holds rows of another job than the one opened",
                        job_id=job_id, file_name=file_name)
    return batch


def check_parquet_codec(codec: str) -> str:
    """The codec name pyarrow expects; raises for one it cannot write."""
    if not isinstance(codec, str) or codec.lower() not in PARQUET_CODECS:
        raise SinkConfigurationError(f"unknown Parquet codec {codec!r}; choose one of {', '.join(PARQUET_CODECS)}")
    return codec.lower()


def to_csv_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A canonical batch in the CSV layout (:data:`CSV_SCHEMA`): ``errors`` and ``source`` as JSON text."""
    columns = [
        errors_to_json(batch.column("errors")) if name == "errors"
        else source_to_json(batch.column("source")) if name == "source"
        else batch.column(name)
        for name in CANONICAL_COLUMNS
    ]
    return pa.RecordBatch.from_arrays(columns, schema=CSV_SCHEMA)


def encode_csv(batch: pa.RecordBatch, *, include_header: bool, flat: bool = False) -> pa.Buffer:
    """A canonical batch as CSV bytes (layout in the module docstring), or with ``flat`` a batch of plain
    columns (an export's) as it is; the header only if asked."""
    out = pa.BufferOutputStream()
    pa_csv.write_csv(batch if flat else to_csv_batch(batch), out,
                     pa_csv.WriteOptions(include_header=include_header, quoting_style="needed"))
    return out.getvalue()


def encode_jsonl(batch: pa.RecordBatch) -> pa.Buffer:
    """A batch as JSON Lines bytes, built with Arrow string kernels (no per-row Python): one object per
    row, the batch's columns as keys in order (a canonical batch has the canonical columns, an export's
    its own). Each value is encoded by its type: ``errors`` (a list) and ``source`` (a struct) as JSON,
    integers as numbers, text as strings."""
    if batch.num_rows == 0:
        return pa.py_buffer(b"")
    parts: list[str | pa.Array] = []
    for index, (field, column) in enumerate(zip(batch.schema, batch.columns, strict=True)):
        parts.append(("{" if index == 0 else ",") + json.dumps(field.name, ensure_ascii=False) + ":")
        if pa.types.is_list(field.type):
            parts.append(pc.fill_null(errors_to_json(column), lit("null")))
        elif pa.types.is_struct(field.type):
            parts.append(pc.fill_null(source_to_json(column), lit("null")))
        elif pa.types.is_integer(field.type):
            parts.append(pc.fill_null(column.cast(pa.string()), lit("null")))
        else:
            parts.append(json_string_literals(column))
    parts.append("}\n")
    lines = pc.binary_join_element_wise(*(lit(part) if isinstance(part, str) else part for part in parts), lit(""))
    whole = pc.binary_join(pa.ListArray.from_arrays(int_array([0, len(lines)], pa.int32()), lines), lit(""))
    return whole[0].as_buffer()


class BatchEncoder(abc.ABC):
    """Writes canonical batches (or, ``flat``, an export's plain columns as they are) in one format onto a
    binary stream that it never closes.

    The stream's owner decides when the bytes become visible (commit) or are thrown away (abort);
    the encoder only adds what the format needs at its end (:meth:`finish`).
    """

    def __init__(self, stream: BinaryIO, *, flat: bool = False) -> None:
        self.stream = stream
        self.flat = flat

    def empty_schema(self) -> pa.Schema:
        """The columns of an output that got no batch at all."""
        return export_schema(()) if self.flat else canonical_schema(NO_SOURCE_COLUMNS)

    @abc.abstractmethod
    def write(self, batch: pa.RecordBatch) -> None:
        """Encode one canonical batch onto the stream."""

    @abc.abstractmethod
    def finish(self) -> None:
        """Write the format's ending (Parquet footer, a CSV header if no row came); the stream stays open."""


#: Parquet columns (leaf paths) worth a dictionary: values repeated across rows. Dictionary-encoding the
#: unique ones (record ids, mapped values such as e-mails) cost a third of the encoder's CPU for a
#: larger file (13.3 MB instead of 16.1 MB per million rows with this list).
PARQUET_DICTIONARY_COLUMNS: tuple[str, ...] = (
    "job_id", "file_name", "status", "errors_raw",
    "errors.list.element.code", "errors.list.element.columns.list.element",
)
#: Columns whose min/max statistics can prune a read; those of unique text (record ids, mapped values)
#: cannot, and computing them costs about a tenth of the encoder's CPU.
PARQUET_STATISTICS_COLUMNS: tuple[str, ...] = ("job_id", "file_name", "row_number", "status")


#: Parquet options for exports, whose columns are the module's: statistics only where a read prunes on
#: them: the meta columns, the record id and Zoho's times (statistics on every column cost a third of
#: the encoder's CPU, 0.48 against 0.33 CPU-s). A name the module lacks is ignored. Which columns get a
#: dictionary is chosen per file (:data:`EXPORT_DICTIONARY_MAX_DISTINCT`).
PARQUET_EXPORT_OPTIONS: dict[str, object] = {
    "write_statistics": [*EXPORT_META_COLUMNS, "Id", "Created_Time", "Modified_Time"],
}
#: An export column gets a dictionary when at most this share of the values in the file's first
#: batch are distinct. A dictionary pays on repeated values (owner, status, city) and costs on unique
#: ones (ids, e-mails, phone numbers), whose values are hashed for nothing before pyarrow falls back
#: to plain encoding. Measured on a 200,000-record page of Leads (20 fields): a dictionary for every
#: column 0.19 CPU-s and 6.1 MB, none 0.16 CPU-s and 7.3 MB, chosen this way 0.15 CPU-s and 4.7 MB.
EXPORT_DICTIONARY_MAX_DISTINCT = 0.5


def export_dictionary_columns(sample: pa.RecordBatch) -> list[str]:
    """The columns of an export file worth a dictionary, judged on ``sample`` (its first rows): those
    with at most :data:`EXPORT_DICTIONARY_MAX_DISTINCT` distinct values per row (see there)."""
    limit = int(sample.num_rows * EXPORT_DICTIONARY_MAX_DISTINCT)
    return [field.name for field, column in zip(sample.schema, sample.columns, strict=True)
            if pc.count_distinct(column, mode="all").as_py() <= limit]


#: How Parquet stores ``source`` when it has no field (see :class:`ParquetEncoder`).
NULL_SOURCE = pa.field("source", pa.null())


def has_no_source_columns(schema: pa.Schema) -> bool:
    """Whether a canonical schema's ``source`` has no field: its CSV has no mapped column."""
    return schema.field("source").type == NO_SOURCE_COLUMNS


class ParquetEncoder(BatchEncoder):
    """Parquet with the canonical schema of the batches, one row group per incoming batch.

    The file's schema is the first batch's: ``source`` is a struct of one CSV member's mapped columns,
    so a file holds batches of that one set of columns only. A ``source`` without fields (a CSV
    without mapped columns) is written as a column of Arrow type ``null``: Parquet cannot hold a struct
    without fields (pyarrow refuses to write one), and such rows are still valid results.

    An export's file (``flat``) chooses its dictionaries from its first rows
    (:func:`export_dictionary_columns`), so its writer opens with the first batch that has rows, or at
    :meth:`finish`. Its row groups are the incoming batches too: gathering them into row groups of
    4-8 MiB was ~15 % cheaper to encode, but the process's peak memory then grew from page to page
    (+25 MB over 5 pages, measured), against the export's flat-memory target.
    """

    def __init__(self, stream: BinaryIO, *, codec: str = "zstd", flat: bool = False) -> None:
        super().__init__(stream, flat=flat)
        self.codec = check_parquet_codec(codec)
        self.writer: pq.ParquetWriter | None = None
        #: The schema of the batches this file holds, known with the first one.
        self.schema: pa.Schema | None = None

    def _open(self, schema: pa.Schema, sample: pa.RecordBatch | None = None) -> pq.ParquetWriter:
        self.schema = schema
        if self.flat:  # an export's columns are the module's, unknown in advance
            dictionary = export_dictionary_columns(sample) if sample is not None else False
            self.writer = pq.ParquetWriter(self.stream, schema, compression=self.codec, use_dictionary=dictionary,
                                           **PARQUET_EXPORT_OPTIONS)
            return self.writer
        stored = schema.set(schema.get_field_index("source"), NULL_SOURCE) if has_no_source_columns(schema) else schema
        # zstd at level 1: the same file size as pyarrow's default level on these rows, ~15 % less CPU.
        level = {"compression_level": 1} if self.codec == "zstd" else {}
        self.writer = pq.ParquetWriter(self.stream, stored, compression=self.codec, **level,
                                       use_dictionary=list(PARQUET_DICTIONARY_COLUMNS),
                                       write_statistics=list(PARQUET_STATISTICS_COLUMNS))
        return self.writer

    def write(self, batch: pa.RecordBatch) -> None:
        if self.flat:
            self._write_flat(batch)
            return
        writer = self.writer or self._open(batch.schema)  # a row-less batch still gives the file its columns
        if not batch.schema.equals(self.schema):  # the core never does this: every batch of a CSV has its columns
            raise SinkError(
                f"a Parquet file holds the rows of one CSV, with one set of mapped columns: this file's are "
                f"{_source_names(self.schema)}, this batch's {_source_names(batch.schema)}")
        if not batch.num_rows:
            return
        if has_no_source_columns(batch.schema):
            batch = batch.set_column(batch.schema.get_field_index("source"), NULL_SOURCE, pa.nulls(batch.num_rows))
        writer.write_batch(batch)

    def _write_flat(self, batch: pa.RecordBatch) -> None:
        """An export's batch; the writer opens with the first one that has rows (see the class docstring)."""
        if self.schema is None:
            self.schema = batch.schema  # a row-less batch still gives the file its columns
        elif not batch.schema.equals(self.schema):
            raise SinkError(f"a Parquet file holds one page, with one set of columns: this file's are "
                            f"{self.schema.names}, this batch's {batch.schema.names}")
        if batch.num_rows:
            (self.writer or self._open(self.schema, sample=batch)).write_batch(batch)

    def finish(self) -> None:
        (self.writer or self._open(self.schema or self.empty_schema())).close()


def _source_names(schema: pa.Schema) -> list[str]:
    return [field.name for field in schema.field("source").type]


class CsvEncoder(BatchEncoder):
    """CSV with a header line, written once even when the first batches hold no rows."""

    def __init__(self, stream: BinaryIO, *, flat: bool = False) -> None:
        super().__init__(stream, flat=flat)
        self.header_written = False

    def write(self, batch: pa.RecordBatch) -> None:
        # memoryview: a zero-copy bytes-like view; smart-open's Azure writer refuses a pyarrow Buffer.
        self.stream.write(memoryview(encode_csv(batch, include_header=not self.header_written, flat=self.flat)))
        self.header_written = True

    def finish(self) -> None:
        if not self.header_written:
            self.write(empty_batch(self.empty_schema()))


class JsonLinesEncoder(BatchEncoder):
    """JSON Lines: nothing before the first row or after the last, so an empty result is an empty file."""

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.stream.write(memoryview(encode_jsonl(batch)))  # as in CsvEncoder.write

    def finish(self) -> None:
        """JSON Lines has no ending."""


def make_encoder(format_name: str, stream: BinaryIO, *, parquet_codec: str = "zstd",
                 flat: bool = False) -> BatchEncoder:
    """The encoder for ``format_name`` (see :data:`FORMATS`) writing onto ``stream``: canonical result
    batches, or with ``flat`` an export's batches, one column per field."""
    format_name = check_format(format_name)
    if format_name == PARQUET:
        return ParquetEncoder(stream, codec=parquet_codec, flat=flat)
    if format_name == CSV:
        return CsvEncoder(stream, flat=flat)
    return JsonLinesEncoder(stream, flat=flat)
