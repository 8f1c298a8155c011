"""Bulk Write submission, the core: Arrow rows -> the zipped CSV files Zoho's Bulk Write takes.

Zoho takes one zipped CSV per upload, of at most 25,000 records, 200 columns and 25 MB zipped
(reference section 4). :func:`plan_submission` decides, from the input's schema alone, which columns
go up under which Zoho field and refuses what Zoho cannot take; :func:`write_upload_files` then
streams the batches into as many zips as the limits need. Every value is checked before the function
returns, so bad input is refused before anything is sent: the caller uploads afterwards.

Why it is built this way:

* **Streaming, vectorised.** Each batch is rendered to text with pyarrow compute (casts; not
  ``strftime``, 10x slower), validated with it (character lengths, NaN), and written as CSV by
  ``pyarrow.csv`` into the zip member: no Python object per value, so memory is a batch or two and
  speed is Arrow's (about 600,000 rows of five columns per CPU-second, zlib included).
  No Python object is converted *to* Arrow either (:mod:`~airflow_provider_zohobulk.arrow_values`
  says why: it would import pandas).
* **Exact cuts.** Every value is quoted (pyarrow's "needed" style quotes all text), so a row's CSV
  size is known before it is written: the sum of its fields' UTF-8 bytes, their doubled quotes, two
  quotes and one separator each. A file therefore takes exactly the rows that are certain to fit:
  the zip's bytes on disk, plus what zlib may still hold back (at most one deflate block), plus the
  new rows' size as if they did not compress at all, plus the zip's closing records, must stay under
  ``max_zipped_bytes``. Conservative (it never counts on compression) yet tight (files of
  compressible data still fill to within ~70 KiB of the limit, because the check is repeated as the
  file grows).
* **Deterministic bytes.** Fixed member metadata (date, permissions, system) and a fixed deflate
  level: the same rows give the same files byte for byte (with the same zlib), however they are
  batched, so a retried task can tell by ``sha256`` whether what it is about to upload is what an
  earlier try uploaded.
* **Header = the input's column names.** With ``field_mappings`` Zoho maps by position and ignores
  the header; without, the names are the api names. Either way the result file's first columns come
  back under the names the input used, which is what a user joins on.
"""

from __future__ import annotations

import contextlib
import decimal
import difflib
import hashlib
import os
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from airflow_provider_zohobulk.arrow_values import bool_scalar, int_scalar, string_array, string_scalar
from airflow_provider_zohobulk.bulk_result import shown
from airflow_provider_zohobulk.errors import SubmissionInputError, ZohoConfigurationError

__all__ = [
    "OPERATIONS",
    "SubmissionPlan",
    "SubmitLimits",
    "UploadFile",
    "format_for_zoho",
    "input_row_numbers",
    "plan_submission",
    "write_upload_files",
]

#: The Bulk Write operations; ``update`` and ``upsert`` need ``find_by``.
OPERATIONS: tuple[str, ...] = ("insert", "update", "upsert")

#: Fixed member metadata, so the same input gives the same bytes on any machine and day.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_COMPRESS_LEVEL = 6

# What zlib may hold back at any moment, compressed: at most one deflate block (16 Ki symbols, each
# at most 31 bits in the fixed code, which zlib uses when it beats the dynamic one) plus the < 262
# bytes of look-ahead; 70 KiB covers it. Only counted up to what was written (a small file holds less).
_DEFLATE_PENDING_BOUND = 70 * 1024
# The zip's closing records: data descriptor, central directory entry (46 bytes + name + zip64 extra),
# end of central directory (22 bytes); 1 KiB covers names up to ~900 bytes.
_ZIP_TAIL_BOUND = 1024
# zipfile refuses a member past this without zip64; a file is cut before it (never near it for Zoho).
_MAX_MEMBER_BYTES = zipfile.ZIP64_LIMIT - 1024
# One CSV write at most this many uncompressed bytes (a row longer than it is written alone).
_PIECE_BYTES = 8 * 1024 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SubmitLimits:
    """Zoho's per-file limits for a Bulk Write upload (reference section 4), and the field lengths.

    ``max_field_chars`` is Zoho's longest text field (multi-line, large); ``field_max_chars`` gives a
    tighter limit per Zoho ``api_name`` (``{"Email": 100}``), checked in characters, as Zoho counts.
    Lowering ``max_records`` or ``max_zipped_bytes`` makes more, smaller files.
    """

    max_records: int = 25_000
    max_columns: int = 200
    max_zipped_bytes: int = 25 * 1024 * 1024
    max_field_chars: int = 32_000
    field_max_chars: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_records", "max_columns", "max_zipped_bytes", "max_field_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ZohoConfigurationError(f"SubmitLimits.{name} must be a positive integer, not {value!r}")
        bad = {k: v for k, v in self.field_max_chars.items()
               if not isinstance(v, int) or isinstance(v, bool) or v < 0}
        if bad:
            raise ZohoConfigurationError(f"SubmitLimits.field_max_chars must map api names to integers >= 0: {bad}")

    def chars_for(self, api_name: str) -> int:
        """The longest value, in characters, the Zoho field ``api_name`` takes."""
        return self.field_max_chars.get(api_name, self.max_field_chars)


@dataclass(frozen=True)
class SubmissionPlan:
    """What :func:`plan_submission` decided; :func:`write_upload_files` and the job request use it.

    ``mapped`` says whether the user gave field mappings: only then does the job request carry
    ``field_mappings`` (otherwise Zoho maps by header, and the header is the api names).
    """

    operation: str
    module: str
    find_by: str | None
    source_columns: tuple[str, ...]
    api_names: tuple[str, ...]
    mapped: bool = False

    def zoho_field_mappings(self) -> list[dict] | None:
        """The resource's ``field_mappings`` (``[{"api_name", "index"}]`` by CSV position), or None when
        the user gave none and Zoho maps by the header."""
        if not self.mapped:
            return None
        return [{"api_name": api_name, "index": index} for index, api_name in enumerate(self.api_names)]


@dataclass(frozen=True)
class UploadFile:
    """One zip written by :func:`write_upload_files`, ready to upload."""

    index: int
    name: str
    path: str
    first_row: int
    rows: int
    zipped_bytes: int
    sha256: str
    #: SHA-256 of the CSV inside (uncompressed): the same rows give the same value whatever zlib build
    #: compressed them, so it is the safer fingerprint when tries may run on different machines.
    csv_sha256: str = ""


# --- planning -----------------------------------------------------------------------------------------


def plan_submission(
    schema: pa.Schema,
    *,
    module: str,
    operation: str,
    find_by: str | None = None,
    field_mappings: Mapping[str, str] | None = None,
    limits: SubmitLimits = SubmitLimits(),
) -> SubmissionPlan:
    """Decide which input columns are uploaded, under which Zoho field, and refuse what Zoho cannot take.

    ``field_mappings`` maps a Zoho api name to an input column: only those columns are uploaded, in
    the mapping's order. Without it every input column is uploaded and its name is the api name.
    Raises :class:`SubmissionInputError` naming the column for anything Zoho would refuse for the whole
    file (so it is found from the schema, before a row is read).
    """
    if not isinstance(module, str) or not module.strip():
        raise SubmissionInputError(f"module must be a Zoho module api name such as 'Leads', not {module!r}")
    op = operation.strip().lower() if isinstance(operation, str) else operation
    if op not in OPERATIONS:
        raise SubmissionInputError(f"operation must be one of {list(OPERATIONS)}, not {operation!r}")
    names = list(schema.names)
    counts = Counter(names)

    if field_mappings:
        api_names, source_columns = [], []
        for api_name, column in field_mappings.items():
            if not isinstance(api_name, str) or not api_name.strip():
                raise SubmissionInputError(f"field_mappings has an empty api name (for column {column!r})",
                                           column=column if isinstance(column, str) else None)
            if column not in counts:
                raise SubmissionInputError(
                    f"field_mappings maps the Zoho field {api_name!r} to the column {column!r}, which the input "
                    f"does not have; {_close_matches(str(column), names)}", column=str(column))
            if counts[column] > 1:
                raise SubmissionInputError(
                    f"field_mappings maps {api_name!r} to {column!r}, but the input has {counts[column]} columns "
                    "of that name, so which one is meant is unclear; rename them", column=column)
            api_names.append(api_name)
            source_columns.append(column)
    else:
        source_columns = list(names)
        api_names = list(names)
        empty = [i + 1 for i, name in enumerate(names) if not name.strip()]
        if empty:
            raise SubmissionInputError(
                f"input column(s) at position {empty} have no name, so Zoho cannot map them by header; "
                "name them or give field_mappings", column="")
    if not source_columns:
        raise SubmissionInputError("there are no columns to upload")
    if len(source_columns) > limits.max_columns:
        raise SubmissionInputError(
            f"{len(source_columns)} columns would be uploaded, more than the {limits.max_columns} Zoho takes per "
            f"file; choose columns with field_mappings (columns: {shown(source_columns)})")
    repeated = [name for name, count in Counter(api_names).items() if count > 1]
    if repeated:
        raise SubmissionInputError(
            f"the Zoho field(s) {repeated} would be uploaded more than once (the input repeats the column name); "
            "rename the columns or give field_mappings", column=repeated[0])
    for column in dict.fromkeys(source_columns):
        problem = _unsupported(schema.field(column).type)
        if problem:
            raise SubmissionInputError(
                f"column {column!r} is of type {schema.field(column).type}: {problem}; Zoho fields take text, "
                "numbers, booleans, dates and date-times", column=column)

    if op in ("update", "upsert") and not find_by:
        raise SubmissionInputError(
            f"{op} needs find_by: the Zoho field (api name) that finds the existing record, such as 'Email' or 'id'")
    if find_by and find_by not in api_names:
        raise SubmissionInputError(
            f"find_by {find_by!r} is not among the uploaded Zoho fields {shown(api_names)}; Zoho finds records "
            "by a field of the file, so map a column to it", column=find_by)
    return SubmissionPlan(op, module.strip(), find_by or None, tuple(source_columns), tuple(api_names),
                          mapped=bool(field_mappings))


def _close_matches(name: str, names: list[str]) -> str:
    folded = [candidate for candidate in names if candidate.casefold() == name.casefold()]
    close = list(dict.fromkeys(folded + difflib.get_close_matches(name, names, n=5, cutoff=0.6)))
    if close:
        return f"did you mean {' or '.join(repr(c) for c in close[:5])}?"
    return f"the input's columns are {shown(names)}"


def _unsupported(arrow_type: pa.DataType) -> str | None:
    """Why a column of ``arrow_type`` cannot be rendered as one Zoho value, or None when it can."""
    t = arrow_type
    if pa.types.is_dictionary(t):
        return _unsupported(t.value_type)
    if (pa.types.is_null(t) or pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
            or pa.types.is_decimal(t) or pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_time(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        return None
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
        return "a list has no single CSV value (join it into text first)"
    if pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_union(t):
        return "a nested value has no single CSV value (flatten it into columns or JSON text first)"
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
            or pa.types.is_binary_view(t)):
        return "binary data is not text (decode it first)"
    return "Zoho has no field of this kind"


# --- formatting -----------------------------------------------------------------------------------------


def format_for_zoho(batch: pa.RecordBatch, plan: SubmissionPlan, *, first_row: int = 1) -> pa.RecordBatch:
    """``batch``'s uploaded columns as the text Zoho gets: a batch of non-null strings, in file order,
    named by the input's columns.

    Rendering: text as is; null -> empty; bool -> ``true``/``false``; integers -> decimal; floats ->
    the shortest text that reads back as the same number, never with an exponent (``1e+16`` ->
    ``10000000000000000``); NaN and infinities are refused (Zoho has no such number; a NaN standing
    for "missing" should be null); decimals -> their digits (``1.50``); dates -> ``YYYY-MM-DD``;
    timestamps with a time zone -> ``2026-01-02T03:04:05+00:00`` in that zone (Zoho's format), naive
    ones -> the same without offset; sub-second parts are dropped (Zoho's date-times are to the
    second); times -> ``HH:MM:SS[.fraction]``; dictionary columns as their values.
    ``first_row`` (the 1-based input row of the batch's first row) is only for error messages.
    """
    arrays = []
    for column in plan.source_columns:
        index = batch.schema.get_field_index(column)
        if index < 0:
            found = batch.schema.names.count(column)
            raise SubmissionInputError(
                f"a batch {'repeats' if found else 'lacks'} the column {column!r} (its columns are "
                f"{shown(batch.schema.names)}); every batch must have the schema the plan was made from",
                column=column, row_number=first_row)
        arrays.append(_as_text(batch.column(index), column, first_row))
    return pa.RecordBatch.from_arrays(arrays, names=list(plan.source_columns))


def _as_text(values: pa.Array, column: str, first_row: int) -> pa.Array:
    t = values.type
    problem = _unsupported(t)
    if problem:
        raise SubmissionInputError(f"column {column!r} is of type {t}: {problem}", column=column,
                                   row_number=first_row)
    if pa.types.is_dictionary(t):
        return _as_text(values.dictionary_decode(), column, first_row)
    if pa.types.is_floating(t):
        if pa.types.is_float16(t):
            values = values.cast(pa.float32())
        bad = pc.invert(pc.is_finite(values)).fill_null(bool_scalar(False))
        if pc.any(bad).as_py():
            at = pc.index(bad, bool_scalar(True)).as_py()
            raise SubmissionInputError(
                f"column {column!r} holds {values[at].as_py()} at row {first_row + at}; Zoho takes no NaN or infinite "
                "numbers (make a missing value null)", column=column, row_number=first_row + at)
        text = _without_exponent(values.cast(pa.string()))
    elif pa.types.is_decimal(t):
        text = _without_exponent(values.cast(pa.string()))
    elif pa.types.is_timestamp(t):
        text = _timestamp_text(values)
    else:  # text, booleans (true/false), integers, dates (YYYY-MM-DD), times, nulls: Arrow's cast is the format
        text = values.cast(pa.string())
    return text.fill_null(string_scalar("")) if text.null_count else text


def _timestamp_text(values: pa.Array) -> pa.Array:
    """ISO 8601 to the second: ``2026-01-02T03:04:05+05:30`` in the column's zone, no offset when naive.

    Built from casts rather than ``strftime``, which costs ~1 CPU-s per million values against ~0.1:
    the wall-clock time in the zone (``local_timestamp``) cast to text, and the offset (wall clock minus
    the instant, one per distinct offset: a zone has a few) appended.
    """
    t = values.type
    instant = values.cast(pa.timestamp(t.unit))  # same numbers: the UTC instant, or the naive wall clock
    if t.unit != "s":  # floor, not truncate, so 1969-12-31T23:59:59.5 stays in its second
        instant = pc.floor_temporal(instant, unit="second").cast(pa.timestamp("s"))
    if t.tz is None:
        return _iso_text(instant)
    local = pc.local_timestamp(instant.cast(pa.timestamp("s", t.tz)))
    offsets = pc.dictionary_encode(pc.subtract(local.cast(pa.int64()), instant.cast(pa.int64())))
    labels = string_array([_offset_text(seconds) for seconds in offsets.dictionary.to_pylist()])
    return pc.binary_join_element_wise(_iso_text(local), pc.take(labels, offsets.indices), string_scalar(""))


def _iso_text(naive: pa.Array) -> pa.Array:
    """``YYYY-MM-DD HH:MM:SS`` (Arrow's text for a naive second timestamp) with the ISO ``T``."""
    return pc.utf8_replace_slice(naive.cast(pa.string()), start=10, stop=11, replacement="T")


def _offset_text(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    minutes = abs(seconds) // 60  # historical offsets with seconds (local mean time) lose them
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _without_exponent(text: pa.Array) -> pa.Array:
    """Rewrite the (rare) numbers Arrow printed with an exponent in positional notation, keeping their
    digits: ``1.2345678901234568e+17`` -> ``123456789012345680``."""
    mask = pc.match_substring_regex(text, pattern="[eE]").fill_null(bool_scalar(False))
    if not pc.any(mask).as_py():
        return text
    fixed = [format(decimal.Decimal(value), "f") for value in pc.filter(text, mask).to_pylist()]
    return pc.replace_with_mask(text, mask, string_array(fixed))


# --- writing ----------------------------------------------------------------------------------------------


def write_upload_files(
    batches: Iterable[pa.RecordBatch],
    plan: SubmissionPlan,
    *,
    work_dir: str,
    limits: SubmitLimits = SubmitLimits(),
    name_prefix: str | None = None,
) -> list[UploadFile]:
    """Stream ``batches`` into zipped CSVs in ``work_dir``, each within ``limits``; returns them in order.

    Files are named ``<prefix>-00001.zip`` holding ``<prefix>-00001.csv`` (prefix: ``name_prefix`` or
    the module, reduced to ``[A-Za-z0-9._-]``); existing files of those names are replaced. A file
    ends when it holds ``max_records`` rows or when the next rows might push the zip past
    ``max_zipped_bytes`` (see the module docstring). Every value is checked first (type, NaN,
    characters vs ``limits.chars_for(api_name)``); a :class:`SubmissionInputError` names the 1-based
    input row and the column, and removes every file this call wrote. An input without rows gives ``[]``.
    Memory: a batch or two, whatever the input's size; disk: about the zipped input.
    """
    prefix = _SAFE_NAME.sub("_", name_prefix or plan.module).strip("._") or "upload"
    os.makedirs(work_dir, exist_ok=True)
    header = _csv_bytes(pa.RecordBatch.from_arrays([pa.nulls(0, pa.string()) for _ in plan.source_columns],
                                                   names=list(plan.source_columns)), header=True)
    done: list[UploadFile] = []
    current: _UploadWriter | None = None
    rows_before = 0
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            text = format_for_zoho(batch, plan, first_row=rows_before + 1)
            _check_lengths(text, plan, limits, rows_before + 1)
            sizes = _row_bytes(text)
            start = 0
            while start < text.num_rows:
                if current is None:
                    index = len(done)
                    name = f"{prefix}-{index + 1:05d}"
                    current = _UploadWriter(index, os.path.join(work_dir, name + ".zip"), name + ".csv",
                                            first_row=rows_before + start + 1, header=header)
                take = min(text.num_rows - start, limits.max_records - current.rows)
                fits = _rows_within(sizes.slice(start, take), current.room(limits.max_zipped_bytes))
                if fits == 0:
                    if current.rows == 0:
                        raise _row_too_large(text, start, rows_before + start + 1, len(header), limits)
                    done.append(current.close(limits))
                    current = None
                    continue
                current.write(text.slice(start, fits))
                start += fits
                if current.rows >= limits.max_records:
                    done.append(current.close(limits))
                    current = None
            rows_before += batch.num_rows
        if current is not None:
            done.append(current.close(limits))
            current = None
    except BaseException:
        if current is not None:
            current.abort()
        for upload in done:
            with contextlib.suppress(OSError):
                os.remove(upload.path)
        raise
    return done


def _check_lengths(text: pa.RecordBatch, plan: SubmissionPlan, limits: SubmitLimits, first_row: int) -> None:
    """Refuse the first value longer (in characters) than its Zoho field takes."""
    for column, api_name, values in zip(plan.source_columns, plan.api_names, text.columns, strict=True):
        limit = limits.chars_for(api_name)
        lengths = pc.utf8_length(values)
        if pc.max(lengths).as_py() <= limit:
            continue
        at = pc.index(pc.greater(lengths, int_scalar(limit, lengths.type)), bool_scalar(True)).as_py()
        raise SubmissionInputError(
            f"row {first_row + at}, column {column!r} (Zoho field {api_name!r}) holds {lengths[at].as_py()} "
            f"characters; Zoho takes at most {limit} there", column=column, row_number=first_row + at)


def _row_bytes(text: pa.RecordBatch) -> pa.Array:
    """Each row's exact size as pyarrow writes it: every field quoted, inner quotes doubled, one comma
    or newline after each field."""
    total = None
    for values in text.columns:
        size = pc.add(pc.binary_length(values).cast(pa.int64()), pc.count_substring(values, pattern='"'))
        total = size if total is None else pc.add(total, size)
    return pc.add(total, int_scalar(3 * text.num_columns))


def _rows_within(sizes: pa.Array, room: int) -> int:
    """How many leading rows of ``sizes`` fit in ``room`` bytes together, and in one CSV write."""
    if room <= 0 or len(sizes) == 0:
        return 0
    within = pc.less_equal(pc.cumulative_sum(sizes), int_scalar(room))
    fits = pc.sum(within).as_py() or 0  # the sums only grow, so the fitting rows are a prefix
    if fits > 1:  # one CSV write stays under _PIECE_BYTES (a single longer row is written alone)
        fits = max(1, min(fits, pc.sum(pc.less_equal(pc.cumulative_sum(sizes.slice(0, fits)),
                                                     int_scalar(_PIECE_BYTES))).as_py() or 0))
    return fits


def _row_too_large(text: pa.RecordBatch, at: int, row_number: int, header_bytes: int,
                   limits: SubmitLimits) -> SubmissionInputError:
    row = text.slice(at, 1)
    widths = [pc.binary_length(values)[0].as_py() for values in row.columns]
    widest = row.schema.names[widths.index(max(widths))]
    size = _row_bytes(row)[0].as_py()
    return SubmissionInputError(
        f"row {row_number} is {size} bytes as CSV (widest column {widest!r}): with the header ({header_bytes} bytes) "
        f"it cannot be guaranteed to fit in a zip of max_zipped_bytes={limits.max_zipped_bytes}, Zoho's limit per "
        "file", column=widest, row_number=row_number)


def _csv_bytes(text: pa.RecordBatch, *, header: bool = False) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    pcsv.write_csv(text, sink, write_options=pcsv.WriteOptions(include_header=header, quoting_style="needed"))
    return sink.getvalue()


class _UploadWriter:
    """One zip on disk with one deflated CSV member, written as rows arrive (zipfile streams it)."""

    def __init__(self, index: int, path: str, member: str, *, first_row: int, header: pa.Buffer) -> None:
        self.index, self.path, self.member, self.first_row = index, path, member, first_row
        self.rows = 0
        self.written = 0
        self._csv_digest = hashlib.sha256()
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()/abort()
        try:
            self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_DEFLATED,
                                        compresslevel=ZIP_COMPRESS_LEVEL)
            info = zipfile.ZipInfo(member, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # the default depends on the platform; fixed for identical bytes
            info.external_attr = 0o644 << 16
            self._out = self._zip.open(info, "w")
            self._write(header)
        except BaseException:
            self.abort()
            raise

    def room(self, max_zipped_bytes: int) -> int:
        """Uncompressed CSV bytes that can still be added with the zip certain to stay within the limit.

        Bytes on disk + what zlib may hold back + the closing records + the new bytes stored as-is
        (deflate's worst case, with 5 bytes of block header per 16 KiB and then some)."""
        pending = min(self.written + 64, _DEFLATE_PENDING_BOUND)
        free = max_zipped_bytes - self._file.tell() - pending - _ZIP_TAIL_BOUND - 64
        free = free * 2048 // 2049
        return min(free, _MAX_MEMBER_BYTES - self.written)

    def write(self, text: pa.RecordBatch) -> None:
        self._write(_csv_bytes(text))
        self.rows += text.num_rows

    def _write(self, data: pa.Buffer) -> None:
        self._out.write(memoryview(data))
        self._csv_digest.update(memoryview(data))
        self.written += data.size

    def close(self, limits: SubmitLimits) -> UploadFile:
        self._out.close()
        self._zip.close()
        self._file.close()
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        size = os.path.getsize(self.path)
        if size > limits.max_zipped_bytes:  # cannot happen if room() is right; never upload a refused file
            raise SubmissionInputError(
                f"{os.path.basename(self.path)} came out at {size} bytes zipped, over max_zipped_bytes="
                f"{limits.max_zipped_bytes} (a bug in the size bound; please report it)", file_name=self.member)
        return UploadFile(self.index, self.member, self.path, self.first_row, self.rows, size, digest.hexdigest(),
                          self._csv_digest.hexdigest())

    def abort(self) -> None:
        for closing in (getattr(self, "_out", None), getattr(self, "_zip", None), self._file):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing.close()
        with contextlib.suppress(OSError):
            os.remove(self.path)


# --- reading the result back --------------------------------------------------------------------------------


def input_row_numbers(batch: pa.RecordBatch, first_row: int) -> pa.RecordBatch:
    """A canonical result batch (:func:`~airflow_provider_zohobulk.bulk_result.canonical_schema`) of the
    upload that started at input row ``first_row`` (:attr:`UploadFile.first_row`), with ``row_number``
    turned from the row within the member into the 1-based row of the whole input.

    Zoho's result has one row per uploaded record, in order, so this is an addition: users then join
    the outcome to their input by row number, whatever the number of files.
    """
    at = batch.schema.get_field_index("row_number")
    if at < 0:
        raise SubmissionInputError(f"the batch has no row_number column (columns: {shown(batch.schema.names)}); "
                                   "it is not a canonical Bulk Write result batch")
    if first_row == 1:
        return batch
    numbers = pc.add(batch.column(at), int_scalar(first_row - 1, batch.column(at).type))
    return batch.set_column(at, batch.schema.field(at), numbers)
