"""The Bulk Write result: canonical row layout, STATUS normalisation and ERRORS parsing.

:func:`read_bulk_write_result` is the whole streaming core in one call: zip bytes in, canonical
batches (:func:`canonical_schema`) out, one CSV member after the other. Every sink receives exactly
these batches, so the layout is decided once, here. The layout is the same for every batch but for
``source``, a struct with one string field per mapped column of the member, in header order.

Zoho's result CSV holds the first three mapped columns of the upload (under their original headers)
and then ``RECORD_ID``, ``STATUS`` and ``ERRORS``; column order is not guaranteed, so columns are
found by name, in any case (:func:`zoho_columns` says what happens when a mapped column has the same
name). Everything is vectorised with pyarrow compute; the only Python-level work per batch is
parsing each *distinct* ``ERRORS`` text once (most rows share a handful).

The ``ERRORS`` grammar (``MANDATORY_NOT_FOUND-Company,Last_Name:DUPLICATE_DATA-Email``) is
ambiguous when headers contain the separators; :func:`parse_errors` documents how it decides.
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_zohobulk.arrow_values import int_array, int_scalar, null_scalar, string_array, string_scalar
from airflow_provider_zohobulk.errors import ArchiveError, CsvFormatError, ResultLayoutError, ZohoBulkError
from airflow_provider_zohobulk.stream.decode import iter_csv_batches, unique_column_names, written_header
from airflow_provider_zohobulk.stream.unzip import UnzipLimits, iter_csv_members

__all__ = [
    "CANONICAL_COLUMNS",
    "ERROR_TYPE",
    "KNOWN_ERROR_CODES",
    "ResultStats",
    "canonical_schema",
    "check_source_type",
    "normalise_status",
    "parse_errors",
    "read_bulk_write_result",
    "source_type",
    "to_canonical",
    "use_lean_memory_pool",
]

ERROR_TYPE = pa.struct([("code", pa.string()), ("columns", pa.list_(pa.string()))])

@functools.lru_cache(maxsize=256)
def canonical_schema(source: pa.DataType) -> pa.Schema:
    """The canonical schema whose ``source`` column has the type ``source``.

    For the batches of a CSV member that is :func:`source_type` of its mapped columns: a struct, so
    Parquet stores one column per mapped column, which engines prune and filter on. Building it is
    zero-copy; a map was a row-by-row copy of every value (0.15 CPU-s per million rows) and cost
    Parquet 0.35 CPU-s per million rows to encode against the struct's 0.20.
    Formats without structs, and the tables that hold every module's rows, hold ``source`` as a JSON
    object instead (``formats.source_to_json``; DuckDB builds it with ``to_json`` as it inserts).
    """
    return pa.schema(
        [
            pa.field("job_id", pa.string(), nullable=False),
            pa.field("file_name", pa.string(), nullable=False),
            pa.field("row_number", pa.int64(), nullable=False),
            pa.field("record_id", pa.string()),
            pa.field("status", pa.string()),
            pa.field("errors", pa.list_(ERROR_TYPE), nullable=False),
            pa.field("errors_raw", pa.string()),
            pa.field("source", source, nullable=False),
        ]
    )


#: The canonical columns, in order; only the type of ``source`` differs between members.
CANONICAL_COLUMNS: tuple[str, ...] = tuple(canonical_schema(pa.struct([])).names)


@functools.lru_cache(maxsize=256)
def source_type(names: tuple[str, ...]) -> pa.StructType:
    """``source``'s type for a member whose mapped columns are ``names`` (unique, in header order)."""
    return pa.struct([pa.field(name, pa.string()) for name in names])


@functools.lru_cache(maxsize=256)
def check_source_type(source: pa.DataType) -> str | None:
    """What makes ``source`` not a canonical ``source`` type, or None when it is one: a struct of
    string fields with distinct names (the JSON formats' object keys and DuckDB's map keys)."""
    if not pa.types.is_struct(source):
        return f"source is {source}, not a struct of string fields"
    not_text = [field.name for field in source if field.type != pa.string()]
    if not_text:
        return f"source's fields {shown(not_text)} are not strings"
    repeated = [name for name, count in Counter(field.name for field in source).items() if count > 1]
    if repeated:
        return f"source repeats the field names {shown(repeated)}"
    return None


#: The error codes Zoho documents for Bulk Write results; others are kept, not rejected.
KNOWN_ERROR_CODES: tuple[str, ...] = (
    "MANDATORY_NOT_FOUND",
    "INVALID_DATA",
    "DUPLICATE_DATA",
    "NOT_APPROVED",
    "BLOCKED_RECORD",
    "CANNOT_PROCESS",
    "LIMIT_EXCEEDED",
    "RESOURCE_NOT_FOUND",
)

#: How ``ResultStats`` counts rows whose STATUS is empty.
MISSING_STATUS = "(missing)"

_KNOWN_CODE = "|".join(re.escape(code) for code in sorted(KNOWN_ERROR_CODES, key=len, reverse=True))
_CODE_SHAPE = r"[A-Z][A-Z0-9_]*"
# A ':' starts the next error only when a code follows it: a known code (then '-', ':' or the end),
# or any code-shaped word directly followed by '-'. Any other ':' belongs to a column header.
_ERROR_SEPARATOR = re.compile(rf":\s*(?=(?:{_KNOWN_CODE})(?:-|:|\s*$)|{_CODE_SHAPE}-)")
_KNOWN_ERROR = re.compile(rf"({_KNOWN_CODE})(?:-(.*))?", re.DOTALL)
_UNKNOWN_ERROR = re.compile(rf"({_CODE_SHAPE})(?:-(.*))?", re.DOTALL)

T = TypeVar("T")

# The canonical columns taken from the CSV, by their (upper-case) header.
RECORD_ID, STATUS, ERRORS = "RECORD_ID", "STATUS", "ERRORS"


def parse_errors(text: str | None) -> list[dict[str, Any]]:
    """Parse an ``ERRORS`` cell into ``[{"code": ..., "columns": [...]}, ...]``; empty or None -> ``[]``.

    Grammar: errors are separated by ``:``, a code is separated from its columns by ``-``, columns
    by ``,``. Where headers contain those characters the format is ambiguous; the rules are:

    * ``-`` inside headers is safe: the code ends at the first ``-`` after a *known* code, so
      ``INVALID_DATA-Lead-Source`` is ``INVALID_DATA`` on ``Lead-Source``. For an unknown code the
      code is the text before the first ``-`` (it must look like a code, ``[A-Z][A-Z0-9_]*``).
    * ``:`` splits only when a code follows it (see ``_ERROR_SEPARATOR``); a header like
      ``Time:stamp`` stays whole, but a header containing ``:`` followed by an upper-case word and
      ``-`` (``Note:ABC-1``) is read as two errors. Nothing in the text can tell them apart.
    * ``,`` always separates columns: a header containing a comma is split.
    * A segment that does not start with a code-shaped word is kept whole as the code with no
      columns, so no text is lost (``errors_raw`` keeps the original anyway).
    """
    return [{"code": code, "columns": list(columns)} for code, columns in _parse_errors_cached(text or "")]


@functools.lru_cache(maxsize=4096)
def _parse_errors_cached(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Immutable, cached parse: the same few ERRORS texts repeat across thousands of rows."""
    text = text.strip()
    if not text:
        return ()
    parsed = []
    for segment in _ERROR_SEPARATOR.split(text):
        segment = segment.strip()
        if not segment:
            continue
        match = _KNOWN_ERROR.fullmatch(segment) or _UNKNOWN_ERROR.fullmatch(segment)
        if match is None:
            parsed.append((segment, ()))
            continue
        code, column_text = match.group(1), match.group(2) or ""
        columns = tuple(column.strip() for column in column_text.split(",") if column.strip())
        parsed.append((code, columns))
    return tuple(parsed)


def normalise_status(value: str | None) -> str | None:
    """``' added '`` -> ``'ADDED'``; unknown values are kept (upper-cased); empty -> None."""
    if value is None:
        return None
    value = value.strip().upper()
    return value or None


#: How many column names an error message lists before it says how many more there are.
NAMES_SHOWN = 30


class CanonicalLayout(NamedTuple):
    """Where a decoded batch's columns go in the canonical row."""

    record_id_at: int | None
    status_at: int
    errors_at: int | None
    source_at: tuple[int, ...]
    source_names: tuple[str, ...]


@functools.lru_cache(maxsize=64)
def canonical_layout(header: tuple[str, ...], file_name: str) -> CanonicalLayout:
    """Zoho's columns (:func:`zoho_columns`) and the mapped ones, whose ``source`` keys are their
    written names made unique among themselves (a mapped ``STATUS`` stays ``STATUS``). Cached: every
    batch of a member has the same header."""
    record_id_at, status_at, errors_at = zoho_columns(header, file_name)
    source_at = tuple(i for i in range(len(header)) if i not in {record_id_at, status_at, errors_at})
    source_names = tuple(unique_column_names([header[i] for i in source_at]))
    return CanonicalLayout(record_id_at, status_at, errors_at, source_at, source_names)


def zoho_columns(header: Sequence[str], file_name: str) -> tuple[int | None, int, int | None]:
    """Positions of Zoho's ``RECORD_ID``, ``STATUS`` and ``ERRORS`` in ``header`` (the names as the CSV
    wrote them), matched in any case, ignoring a BOM and whitespace.

    When each name appears at most once, it is found wherever it is (RECORD_ID and ERRORS may be
    missing). When a mapped column shares one of the names (``STATUS``, ``Status``), Zoho's three are
    the adjacent ``RECORD_ID, STATUS, ERRORS`` at the end of the header (Zoho's documented layout) or
    at its start (the columns-first variant); with no such group, or one at both ends, nothing tells
    Zoho's columns from the mapped ones and the file is refused (:class:`ResultLayoutError`) rather
    than loaded with a mapped value as the STATUS.
    """
    plain = [name.lstrip("\ufeff").strip().upper() for name in header]
    wanted = [RECORD_ID, STATUS, ERRORS]
    found = {name: [i for i, seen in enumerate(plain) if seen == name] for name in wanted}
    if not found[STATUS]:
        raise ResultLayoutError(
            f"the CSV has no STATUS column, so it is not a Bulk Write result; its columns are {shown(header)}",
            file_name=file_name)
    if all(len(found[name]) <= 1 for name in wanted):
        record_id_at, errors_at = (found[name][0] if found[name] else None for name in (RECORD_ID, ERRORS))
        return record_id_at, found[STATUS][0], errors_at
    groups = [start for start in sorted({0, len(plain) - 3}) if start >= 0 and plain[start:start + 3] == wanted]
    if len(groups) != 1:
        raise ResultLayoutError(
            "a mapped column shares a name with Zoho's RECORD_ID, STATUS or ERRORS, and "
            f"{'both ends of the header hold' if groups else 'neither end of the header holds'} "
            "RECORD_ID, STATUS, ERRORS side by side, so this cannot tell Zoho's RECORD_ID, STATUS, ERRORS "
            f"from the mapped ones; its columns are {shown(header)}", file_name=file_name)
    return groups[0], groups[0] + 1, groups[0] + 2


def shown(names: Sequence[str]) -> str:
    """``names`` for an error message: all of them, or the first :data:`NAMES_SHOWN` and a count."""
    if len(names) <= NAMES_SHOWN:
        return str(list(names))
    return f"{list(names[:NAMES_SHOWN])} and {len(names) - NAMES_SHOWN} more"


def sequence(length: int, start: int = 0) -> pa.Array:
    """``start, start + 1, ...`` as int64, built in C (no numpy, no Python loop)."""
    ones = pa.nulls(length, pa.int64()).fill_null(int_scalar(1))
    return pc.add(pc.cumulative_sum(ones), int_scalar(start - 1))


def parsed_errors_column(raw: pa.Array) -> pa.Array:
    """``ERRORS`` text -> list<struct<code, columns>>, parsing each distinct text once; null -> []."""
    if raw.null_count == len(raw):  # the usual batch of a successful job: no gather needed
        return errors_array([()] * len(raw))
    encoded = pc.dictionary_encode(raw)
    parsed = [_parse_errors_cached(text or "") for text in encoded.dictionary.to_pylist()]
    parsed.append(())  # where null ERRORS point
    indices = encoded.indices.fill_null(int_scalar(len(parsed) - 1, encoded.indices.type))
    return pc.take(errors_array(parsed), indices)


def errors_array(rows: Sequence[Sequence[tuple[str, Sequence[str]]]]) -> pa.ListArray:
    """Parsed errors (``(code, columns)`` pairs per row) as the ``errors`` column, built from buffers
    (:mod:`~airflow_provider_zohobulk.arrow_values` says why not ``pa.array``)."""
    entries = [entry for row in rows for entry in row]
    columns = pa.ListArray.from_arrays(
        int_array(list(itertools.accumulate((len(cols) for _, cols in entries), initial=0)), pa.int32()),
        string_array([name for _, cols in entries for name in cols]))
    errors = pa.StructArray.from_arrays([string_array([code for code, _ in entries]), columns],
                                        fields=list(ERROR_TYPE))
    offsets = int_array(list(itertools.accumulate(map(len, rows), initial=0)), pa.int32())
    return pa.ListArray.from_arrays(offsets, errors, type=pa.list_(ERROR_TYPE))


def to_canonical(batch: pa.RecordBatch, *, job_id: str, file_name: str, first_row_number: int) -> pa.RecordBatch:
    """One decoded CSV batch -> the canonical layout (:func:`canonical_schema`).

    ``STATUS`` is required (without it the file is not a Bulk Write result); a missing
    ``RECORD_ID`` or ``ERRORS`` column is tolerated as nulls / empty lists. Which columns are Zoho's
    is decided on the header as written (:func:`canonical_layout`). ``source`` is a struct of the
    mapped columns as decoded, zero-copy; with no mapped column, an empty struct per row.
    """
    record_id_at, status_at, errors_at, source_at, source_names = canonical_layout(
        tuple(written_header(batch.schema)), file_name)
    num_rows = batch.num_rows
    nulls = pa.nulls(num_rows, pa.string())

    status = pc.utf8_upper(pc.utf8_trim_whitespace(batch.column(status_at).cast(pa.string())))
    status = pc.if_else(pc.equal(status, string_scalar("")), null_scalar(pa.string()), status)
    errors_raw = batch.column(errors_at).cast(pa.string()) if errors_at is not None else nulls
    record_id = batch.column(record_id_at).cast(pa.string()) if record_id_at is not None else nulls
    source_fields = source_type(source_names)
    # from_buffers: from_arrays gives an empty struct array length 0, whatever the batch's length.
    source = pa.Array.from_buffers(source_fields, num_rows, [None], children=[
        batch.column(i).cast(pa.string()) for i in source_at])

    return pa.RecordBatch.from_arrays(
        [
            pa.repeat(string_scalar(job_id), num_rows),
            pa.repeat(string_scalar(file_name), num_rows),
            sequence(num_rows, first_row_number),
            record_id,
            status,
            parsed_errors_column(errors_raw),
            errors_raw,
            source,
        ],
        schema=canonical_schema(source_fields),
    )


def use_lean_memory_pool() -> str:
    """Make jemalloc (the system allocator where pyarrow lacks it) Arrow's default for the rest of this
    process, unless the user chose a pool with ``ARROW_DEFAULT_MEMORY_POOL``; returns the backend in use.

    pyarrow's default allocator, mimalloc, keeps freed blocks in a heap per thread, and the pipeline
    allocates from three (unzip, decode, sink): loading a million rows to Parquet peaked at 258 MB with
    it, 229 MB after this switch, 213 MB with ``ARROW_DEFAULT_MEMORY_POOL=jemalloc`` set before the
    process started (what Arrow's C++ side allocated from its default pool cannot be moved later), at
    no measurable difference in speed. Which allocator a process uses is the application's choice,
    so the core never calls this by itself: the operator does, because an Airflow task process runs
    the one load.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pool = pa.jemalloc_memory_pool()
        except NotImplementedError:  # a pyarrow build without jemalloc (macOS, Windows wheels)
            pool = pa.system_memory_pool()
        pa.set_memory_pool(pool)
    return pa.default_memory_pool().backend_name


def read_bulk_write_result(
    chunks: Iterable[bytes],
    *,
    job_id: str,
    limits: UnzipLimits | None = None,
    block_size: int = 1 << 20,
    on_skip: Callable[[str, int], None] | None = None,
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """The whole core pipeline: zip bytes -> ``(file_name, canonical batch)`` for every CSV member.

    Each CSV member yields at least one batch (zero rows when it holds only a header). Batches are
    provisional until the iterator is exhausted: the archive's integrity is verified member by
    member, at each member's end. Every error carries ``job_id``. When a member's CSV looks
    malformed, the rest of the member is read first: if its CRC fails, the corrupt archive is the
    error reported (the CSV error is its symptom).

    The three stages of a member run concurrently (decompression, CSV parsing, canonical layout),
    each a couple of items ahead of the next (:func:`readahead`): zlib, pyarrow's parser and its
    compute kernels release the GIL, so a second core is used and memory stays bounded.
    """
    limits = limits or UnzipLimits()
    try:
        for member in iter_csv_members(chunks, limits=limits, on_skip=on_skip):
            yield from canonical_member_batches(member.name, member.chunks, job_id=job_id, block_size=block_size,
                                                max_columns=limits.max_columns)
    except ZohoBulkError as exc:
        exc.with_context(job_id=job_id)
        raise


def canonical_member_batches(
    file_name: str, member_chunks: Iterator[bytes], *, job_id: str, block_size: int, max_columns: int
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """One CSV member through decode and canonical layout (:func:`member_batches`)."""

    def canonical(batch: pa.RecordBatch, first_row_number: int) -> pa.RecordBatch:
        return to_canonical(batch, job_id=job_id, file_name=file_name, first_row_number=first_row_number)

    return member_batches(file_name, member_chunks, layout=canonical, block_size=block_size,
                          max_columns=max_columns)


#: Turns one decoded batch into a job kind's row layout, given the 1-based number of its first row.
RowLayout = Callable[[pa.RecordBatch, int], pa.RecordBatch]


def member_batches(
    file_name: str, member_chunks: Iterator[bytes], *, layout: RowLayout, block_size: int, max_columns: int,
    empty_as_null: bool = True,
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """One CSV member through decode and a job kind's row layout, its stages overlapped in threads:
    the one member pipeline of every Bulk job kind (results: :func:`to_canonical`; exports:
    ``bulk_read.read_export_page``). ``empty_as_null`` is the decoder's (``stream.decode``).

    The layout is built in the decoding thread, not the consumer's: the consumer is the sink
    (Parquet encoding, a database driver), the slowest stage, so every CPU-second taken off its thread
    shortens the whole load. A CSV error whose cause is a corrupt archive is reported as the archive
    error (:class:`_ArchiveErrorWitness`).
    """
    witness = _ArchiveErrorWitness(member_chunks)
    chunks_ahead = readahead(witness, depth=8)

    def laid_out_batches() -> Iterator[pa.RecordBatch]:
        next_row = 1
        for batch in iter_csv_batches(chunks_ahead, file_name=file_name, block_size=block_size,
                                      max_columns=max_columns, empty_as_null=empty_as_null):
            yield layout(batch, next_row)
            next_row += batch.num_rows

    batches_ahead = readahead(laid_out_batches(), depth=2)
    try:
        for batch in batches_ahead:
            yield file_name, batch
    except CsvFormatError as csv_error:
        chunks_ahead.close()  # stop the decompression thread before reading on in this one
        if witness.error is not None:  # it was queued behind the CSV error, and closing dropped it
            raise witness.error from csv_error
        raise_if_archive_broken(member_chunks, csv_error)
        raise
    finally:
        batches_ahead.close()
        chunks_ahead.close()


_END = object()


class _ArchiveErrorWitness:
    """Passes a member's chunks through and remembers the archive error they end with.

    The decompression thread may reach the member's end, and its CRC error, before the parser's
    CSV error (the symptom) reaches the consumer; closing the read-ahead then drops the queued CRC
    error, and the member, already failed, has nothing left to read. An iterator class, not a
    generator: a generator wrapper would close the member when collected, while it is still read on.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.error: ArchiveError | None = None

    def __iter__(self) -> _ArchiveErrorWitness:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self.chunks)
        except ArchiveError as exc:
            self.error = exc
            raise


def readahead(iterable: Iterable[T], *, depth: int) -> Iterator[T]:
    """Iterate ``iterable`` in a background thread, at most ``depth`` items ahead of the consumer.

    Items, the end, and any exception (re-raised here, traceback intact) arrive in order. Closing
    this generator stops the thread after its current item and waits for it, so the source is never
    used by two threads at once; the source is left open (the caller may read on, e.g. to drain a
    zip member for its CRC check).
    """
    handoff: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterable:
                if not offer((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer((_END, exc))
            return
        offer((_END, None))

    thread = threading.Thread(target=produce, name="zohobulk-readahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def raise_if_archive_broken(rest_of_member: Iterator[bytes], symptom: CsvFormatError) -> None:
    """Read the rest of a member whose CSV failed; raise the archive error if there is one."""
    try:
        for _ in rest_of_member:
            pass
    except ArchiveError as cause:
        raise cause from symptom


class ResultStats:
    """Running totals over canonical batches, for the task's summary (XCom) and logs."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.rows = 0
        self.by_status: Counter[str] = Counter()
        self.errors_by_code: Counter[str] = Counter()

    def add(self, file_name: str, batch: pa.RecordBatch) -> None:
        """Count one canonical batch (vectorised: value counts, not a row loop)."""
        if file_name not in self.files:
            self.files.append(file_name)
        self.rows += batch.num_rows
        if not batch.num_rows:
            return
        for entry in pc.value_counts(batch.column("status")).to_pylist():
            self.by_status[entry["values"] or MISSING_STATUS] += entry["counts"]
        codes = pc.struct_field(pc.list_flatten(batch.column("errors")), "code")
        for entry in pc.value_counts(codes).to_pylist():
            if entry["values"] is not None:
                self.errors_by_code[entry["values"]] += entry["counts"]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"files": [...], "rows": n, "by_status": {...}, "errors_by_code": {...}}``."""
        return {
            "files": list(self.files),
            "rows": self.rows,
            "by_status": dict(sorted(self.by_status.items())),
            "errors_by_code": dict(sorted(self.errors_by_code.items())),
        }
