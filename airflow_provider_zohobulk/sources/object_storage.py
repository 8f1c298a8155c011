"""ObjectStorageSource: the rows of a CSV, Parquet or JSON Lines file, local or in S3, GCS or Azure, streamed.

The places are the sinks' (:class:`~airflow_provider_zohobulk.sinks.object_storage.ObjectStorageSink`):
a local path, ``file://``, ``s3://``, ``gs://``, ``azure://``, read through smart-open (``"rb"``), with
credentials from an Airflow connection (``conn_id``, turned into a client by the sink's own
``_client_from_connection``) or given as ``transport_params``. Compression (``.gz``, ``.bz2``, ``.xz``,
``.zst`` after the format's extension) is undone here on the byte stream, as the sink applies it,
rather than by smart-open's by-extension wrappers (its ``.zst`` needs another package).

How each format streams, and what its values are:

* CSV: the header names the columns; **every value is text exactly as written** (leading zeros,
  19-digit ids and ``007`` stay as they are, nothing is inferred), and an **empty field is the empty
  string ``""``**, quoted or not (a CSV cannot tell an empty value from a missing one; Zoho reads an
  empty cell as empty either way). Quoted fields may hold newlines and delimiters; a UTF-8 BOM at the
  start is dropped; blank lines are skipped. With the default ``delimiter=","`` the rows go through the
  project's strict CSV decoder (:func:`~airflow_provider_zohobulk.stream.decode.iter_csv_batches`: whole
  rows cut at quote parity and parsed by pyarrow from memory, a ragged row, bad quoting or invalid UTF-8
  named by its row). Another delimiter (``";"``, ``"\\t"``) takes a simpler path through the same pyarrow
  parser, whose errors name a range of rows instead of the row.
* Parquet: ``pyarrow.parquet.ParquetFile(...).iter_batches(batch_size=batch_rows)``, one row group at a
  time, with the file's own types. A remote object must be seekable (smart-open's S3, GCS and Azure
  readers are: Parquet's footer is read first, with ranged requests). Compressed Parquet names are
  refused: Parquet compresses itself.
* JSON Lines (``.jsonl``, ``.ndjson``): one object per line, ``batch_rows`` lines parsed at a time by
  ``pyarrow.json.read_json``, with its types (numbers, booleans, nested lists and objects as lists and
  structs). ``pyarrow.json.open_json`` is not used: it stops with "changed from null to number" as soon
  as a later block holds a type the first one did not (measured with pyarrow 26). Here the first block
  fixes the schema, with a column only ever null in it read as string, and later blocks are cast to it
  (``1`` in a string column becomes ``"1"``); a key that first appears after the first block, or a value
  that cannot be cast, is a SourceError naming the column and rows.

Memory is bounded whatever the input's size: about one CSV block (1 MiB, more only for a longer row, up
to 16 MiB), one Parquet row group, or ``batch_rows`` JSON lines, plus smart-open's read buffer.

Importing this module imports no Airflow (and not smart-open): connections are resolved in
:meth:`ObjectStorageSource.batches`.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from airflow_provider_zohobulk.errors import CsvFormatError, SinkError, SourceConfigurationError, SourceError
from airflow_provider_zohobulk.sinks.base import describe_exception
from airflow_provider_zohobulk.sinks.formats import CSV, FORMAT_BY_EXTENSION, FORMATS, JSONL, PARQUET
from airflow_provider_zohobulk.sinks.object_storage import (
    COMPRESSION_EXTENSIONS,
    REMOTE_SCHEMES,
    StorageLocation,
    _client_from_connection,
    _scheme_of,
    local_path,
    uri_suffixes,
)
from airflow_provider_zohobulk.sources.base import (
    DEFAULT_BATCH_ROWS,
    RowSource,
    check_batch_rows,
    check_text,
    is_templated,
    rebatched,
    stable_batches,
)
from airflow_provider_zohobulk.stream.decode import (
    BOM,
    QUOTE,
    first_row_end,
    iter_csv_batches,
    last_row_end,
    unique_column_names,
)

_FORMAT_ALIASES = {"ndjson": JSONL, "jsonlines": JSONL, "json_lines": JSONL}
#: Bytes read from the (decompressed) stream at a time.
CHUNK_BYTES = 1 << 20
#: CSV rows are parsed in blocks of whole rows of about this size.
CSV_BLOCK_BYTES = 1 << 20
#: The longest CSV row (with another delimiter than ",") or JSON line read: an unclosed quote or a
#: file without line ends must not be buffered whole.
MAX_ROW_BYTES = 64 << 20
#: A JSON Lines block is parsed once it holds ``batch_rows`` lines or this many bytes.
JSONL_BLOCK_BYTES = 32 << 20


def check_format(format_name: str) -> str:
    """The format's canonical name (``ndjson`` is ``jsonl``), or a SourceConfigurationError."""
    normalised = format_name.lower() if isinstance(format_name, str) else ""
    normalised = _FORMAT_ALIASES.get(normalised, normalised)
    if normalised not in FORMATS:
        raise SourceConfigurationError(f"unknown input format {format_name!r}; use one of {', '.join(FORMATS)}")
    return normalised


def parse_input(uri: str, format_name: str | None) -> StorageLocation:
    """Check a URI (and the explicit format, if any) and say what it means; no I/O."""
    check_text(uri, "ObjectStorageSource's uri")
    scheme = _scheme_of(uri)
    if scheme not in ("", "file", *REMOTE_SCHEMES):
        raise SourceConfigurationError(
            f"URI {redact_uri(uri)!r} has the unsupported scheme {scheme!r}; use s3://, gs://, azure://, file:// "
            "or a local path")
    extension, compression = uri_suffixes(uri)
    from_extension = FORMAT_BY_EXTENSION.get(extension)
    if format_name is not None:
        chosen = check_format(format_name)
        if from_extension is not None and from_extension != chosen:
            raise SourceConfigurationError(
                f"URI {redact_uri(uri)!r} ends in {extension!r} ({from_extension}) but format={format_name!r} "
                "was given")
    elif from_extension is None:
        raise SourceConfigurationError(
            f"cannot tell the format of {redact_uri(uri)!r}: end it in .csv, .parquet, .jsonl or .ndjson "
            f"(CSV and JSON Lines optionally followed by {', '.join(COMPRESSION_EXTENSIONS)}), or pass format=")
    else:
        chosen = from_extension
    if chosen == PARQUET and compression:
        raise SourceConfigurationError(
            f"URI {redact_uri(uri)!r} names a {compression} compressed Parquet file; Parquet compresses itself")
    return StorageLocation(uri=uri, scheme=scheme, format=chosen, compression=compression)


def redact_uri(uri: str) -> str:
    """``uri`` without a password in it: smart-open accepts ``s3://key:secret@bucket/key``."""
    if not isinstance(uri, str) or "@" not in uri or "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


class ObjectStorageSource(RowSource):
    """Stream the rows of a CSV, Parquet or JSON Lines file at ``uri`` (see the module docstring).

    ``uri``: ``s3://bucket/key``, ``gs://bucket/name``, ``azure://container/blob``, ``file:///path`` or a
    local path; the format from its extension (``.csv``, ``.parquet``, ``.jsonl`` / ``.ndjson``, CSV and
    JSON Lines optionally compressed: ``.csv.gz``) or from ``format`` (``"csv"``, ``"parquet"``,
    ``"jsonl"``).
    ``conn_id``: an Airflow connection whose credentials reach the store (``aws`` for ``s3://``,
    ``google_cloud_platform`` for ``gs://``, ``wasb`` for ``azure://``), as for the sink; without one,
    the libraries' default credentials, or a ``client`` in ``transport_params`` (passed to smart-open).
    ``batch_rows``: the most rows in one batch. ``delimiter``: CSV's field separator (one character).
    """

    template_fields = ("uri", "conn_id")
    repr_fields = ("uri", "conn_id", "format")

    def __init__(
        self,
        uri: str,
        *,
        conn_id: str | None = None,
        format: str | None = None,
        transport_params: dict[str, Any] | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        delimiter: str = ",",
    ) -> None:
        check_text(uri, "ObjectStorageSource's uri")
        if not is_templated(uri):
            parse_input(uri, format)
        elif format is not None:
            check_format(format)
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in ('"', "\r", "\n"):
            raise SourceConfigurationError(
                f"delimiter must be one character other than a quote or a line end, got {delimiter!r}")
        self.uri = uri
        self.conn_id = conn_id
        self.format = format
        self.transport_params = dict(transport_params or {})
        self.batch_rows = check_batch_rows(batch_rows)
        self.delimiter = delimiter

    def _repr_value(self, name: str) -> object:
        value = getattr(self, name, None)
        return redact_uri(value) if name == "uri" else value

    def describe(self) -> str:
        return redact_uri(self.uri)

    def parse_time_asset_uri(self) -> str | None:
        """The URI (local paths as absolute ``file://`` URIs); None while it is templated."""
        if is_templated(self.uri):
            return None
        if _scheme_of(self.uri) in REMOTE_SCHEMES:
            return redact_uri(self.uri)
        return "file://" + quote(self._local_path(), safe="/:")

    def batches(self) -> Iterator[pa.RecordBatch]:
        location = parse_input(self.uri, self.format)  # again: the rendered URI may differ
        where = self.describe()
        params = self._transport_params(location)
        if location.format == PARQUET:
            yield from stable_batches(self._parquet_batches(location, params, where), where=where)
            return
        raw = self._open(location, params, where)
        try:
            stream = _decompressing(raw, location.compression, where)
            try:
                if location.format == CSV:
                    rows = self._csv_batches(stream, where)
                    yield from stable_batches(rebatched(rows, self.batch_rows), where=where)
                else:
                    yield from stable_batches(_jsonl_batches(stream, self.batch_rows, where), where=where, widen=True)
            finally:
                if stream is not raw:
                    stream.close()
        finally:
            raw.close()

    # --- opening --------------------------------------------------------------------------------------

    def _local_path(self) -> str:
        try:
            return local_path(self.uri)
        except SinkError as exc:
            raise SourceConfigurationError(exc.message) from None

    def _transport_params(self, location: StorageLocation) -> dict[str, Any]:
        params = dict(self.transport_params)
        if self.conn_id is None:
            return params
        if location.is_local:
            raise SourceConfigurationError(
                f"conn_id {self.conn_id!r} was given for the local input {self.describe()!r}, which needs none")
        if "client" in params:
            raise SourceConfigurationError(
                f"give either conn_id or a client in transport_params for {self.describe()!r}, not both")
        try:
            params["client"] = _client_from_connection(location.scheme, self.conn_id)
        except SinkError as exc:  # the sink's wording; the same facts (no secrets: it never chains the cause)
            raise SourceConfigurationError(exc.message) from None
        return params

    def _open(self, location: StorageLocation, params: dict[str, Any], where: str) -> BinaryIO:
        """The raw bytes of the input; a SourceError naming it when it is missing or unreadable."""
        try:
            if location.is_local:
                return open(self._local_path(), "rb")  # closed by batches()
            import smart_open  # here: with boto3 installed it costs ~40 MB and 1 s to import

            return smart_open.open(location.uri, "rb", compression="disable", transport_params=params)
        except SourceError:
            raise
        except FileNotFoundError:
            raise SourceError(f"the input {where!r} does not exist", file_name=where) from None
        except Exception as exc:
            raise SourceError(f"opening the input failed: {describe_exception(exc)}", file_name=where) from None

    # --- formats --------------------------------------------------------------------------------------

    def _parquet_batches(self, location: StorageLocation, params: dict[str, Any], where: str
                         ) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        if location.is_local:
            path = self._local_path()
            if not os.path.exists(path):
                raise SourceError(f"the input {where!r} does not exist", file_name=where)
            raw: BinaryIO | None = None
        else:
            raw = self._open(location, params, where)
        try:
            try:
                parquet = pq.ParquetFile(path if raw is None else raw)
            except (pa.ArrowException, OSError) as exc:
                raise SourceError(f"the input is not a readable Parquet file: {describe_exception(exc)}",
                                  file_name=where) from None
            try:
                reader = parquet.iter_batches(batch_size=self.batch_rows, use_threads=False)
                while True:
                    try:
                        batch = next(reader)
                    except StopIteration:
                        return
                    except (pa.ArrowException, OSError) as exc:
                        raise SourceError(f"reading the Parquet file failed: {describe_exception(exc)}",
                                          file_name=where) from None
                    yield batch
            finally:
                parquet.close()
        finally:
            if raw is not None:
                raw.close()

    def _csv_batches(self, stream: BinaryIO, where: str) -> Iterator[pa.RecordBatch]:
        chunks = _chunks(stream, where)
        head = b""
        for chunk in chunks:  # up to the first byte that is not a BOM or a line end
            head += chunk
            if head.removeprefix(BOM).strip(b"\r\n") or len(head) > CSV_BLOCK_BYTES:
                break
        if not head.removeprefix(BOM).strip(b"\r\n"):
            return  # an empty file, or only blank lines: no rows
        rest = _prepend(head, chunks)
        if self.delimiter != ",":
            yield from _delimited_batches(rest, self.delimiter, where)
            return
        try:
            yield from iter_csv_batches(rest, file_name=where, empty_as_null=False)
        except CsvFormatError as exc:  # the decoder's wording, the source's error type
            raise SourceError(f"the CSV is malformed: {exc.message}", file_name=where,
                              row_number=exc.row_number) from None


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _decompressing(raw: BinaryIO, compression: str | None, where: str) -> BinaryIO:
    """A reader of ``raw``'s decompressed bytes (``raw`` itself when it is not compressed)."""
    if compression is None:
        return raw
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == ".bz2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if compression == ".xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    try:
        import zstandard
    except ImportError:
        raise SourceConfigurationError(
            f"{where!r} ends in .zst, which needs the zstandard package: pip install "
            "'airflow-provider-zohobulk[zstd]'") from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=False))  # type: ignore[arg-type]


def _chunks(stream: BinaryIO, where: str) -> Iterator[bytes]:
    """The stream's bytes, a chunk at a time; a read or decompression failure is a SourceError."""
    while True:
        try:
            chunk = stream.read(CHUNK_BYTES)
        except Exception as exc:  # gzip.BadGzipFile, EOFError (truncated), lzma.LZMAError, network errors
            raise SourceError(f"reading the input failed: {describe_exception(exc)}", file_name=where) from None
        if not chunk:
            return
        yield chunk


# --- CSV with another delimiter ---------------------------------------------------------------------


def _delimited_batches(chunks: Iterator[bytes], delimiter: str, where: str) -> Iterator[pa.RecordBatch]:
    """CSV rows with a delimiter other than ``,``: every value text, empty fields ``""``.

    Blocks of whole rows are cut at quote parity (a newline after an even number of quotes ends a row;
    :func:`~airflow_provider_zohobulk.stream.decode.last_row_end`) and parsed by pyarrow from memory, as
    the comma decoder does; errors name the block's rows rather than the exact one.
    """
    data, names = _delimited_header(chunks, delimiter, where)
    read_options = pacsv.ReadOptions(column_names=names, use_threads=False)
    parse_options = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, double_quote=True,
                                       ignore_empty_lines=True)
    convert_options = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), null_values=[],
                                           strings_can_be_null=False, quoted_strings_can_be_null=False)
    rows_done = 0

    def parse(block: bytes) -> list[pa.RecordBatch]:
        nonlocal rows_done
        if not block.strip(b"\r\n"):
            return []
        if block.startswith(BOM):  # pyarrow drops a BOM starting its buffer: keep it as data
            block = b"\n" + block
        read_options.block_size = len(block) + 1
        try:
            table = pacsv.read_csv(pa.BufferReader(block), read_options=read_options,
                                   parse_options=parse_options, convert_options=convert_options)
        except pa.ArrowInvalid as exc:
            detail = str(exc).splitlines()[0][:200]
            raise SourceError(f"the CSV is malformed in the rows after row {rows_done}: {detail}",
                              file_name=where, row_number=rows_done + 1) from None
        rows_done += table.num_rows
        return table.to_batches()

    target = CSV_BLOCK_BYTES
    for chunk in chunks:
        data += chunk
        if len(data) < target:
            continue
        cut = last_row_end(data)
        if cut < 0:
            if len(data) > MAX_ROW_BYTES:
                raise SourceError(f"a row is longer than {MAX_ROW_BYTES} bytes (most often an unclosed quote)",
                                  file_name=where, row_number=rows_done + 1)
            target = len(data) * 2
            continue
        yield from parse(data[:cut])
        data, target = data[cut:], CSV_BLOCK_BYTES
    if data.count(QUOTE) % 2:
        raise SourceError("the file ends inside a quoted field (unclosed quote)", file_name=where,
                          row_number=rows_done + 1)
    yield from parse(data)


def _delimited_header(chunks: Iterator[bytes], delimiter: str, where: str) -> tuple[bytes, list[str]]:
    """Read up to the end of the header row (a BOM and blank lines before it skipped): the bytes after
    it and the column names."""
    data = b""
    for chunk in chunks:
        data += chunk
        if data.startswith(BOM):
            data = data[len(BOM):]
        while (end := first_row_end(data)) >= 0:
            if data[:end].strip(b"\r\n"):
                return data[end:], _header_names(data[:end], delimiter, where)
            data = data[end:]
        if len(data) > MAX_ROW_BYTES:
            raise SourceError(f"the header row is longer than {MAX_ROW_BYTES} bytes", file_name=where)
    if not data.strip(b"\r\n"):
        raise SourceError("the CSV has no header row", file_name=where)
    return b"", _header_names(data, delimiter, where)


def _header_names(row: bytes, delimiter: str, where: str) -> list[str]:
    try:
        text = row.decode("utf-8")
        fields = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except (UnicodeDecodeError, csv.Error, StopIteration) as exc:
        raise SourceError(f"the CSV header row cannot be read: {type(exc).__name__}: {exc}", file_name=where) from None
    return unique_column_names(fields)


# --- JSON Lines -------------------------------------------------------------------------------------


def _jsonl_batches(stream: BinaryIO, batch_rows: int, where: str) -> Iterator[pa.RecordBatch]:
    """One object per line, ``batch_rows`` lines (at most ``JSONL_BLOCK_BYTES``) parsed at a time.
    Blank lines are skipped and not counted: row 1 is the first object."""
    pending: list[bytes] = []
    size = rows_done = 0
    first_line = True
    while True:
        try:
            line = stream.readline(MAX_ROW_BYTES + 1)
        except Exception as exc:
            raise SourceError(f"reading the input failed: {describe_exception(exc)}", file_name=where) from None
        if not line:
            break
        if first_line and line.startswith(BOM):
            line = line[len(BOM):]
        first_line = False
        if len(line) > MAX_ROW_BYTES:
            raise SourceError(f"a line is longer than {MAX_ROW_BYTES} bytes", file_name=where,
                              row_number=rows_done + len(pending) + 1)
        if not line.strip():
            continue
        pending.append(line if line.endswith(b"\n") else line + b"\n")
        size += len(pending[-1])
        if len(pending) >= batch_rows or size >= JSONL_BLOCK_BYTES:
            yield from _parse_json_block(pending, rows_done, where)
            rows_done += len(pending)
            pending, size = [], 0
    if pending:
        yield from _parse_json_block(pending, rows_done, where)


def _parse_json_block(lines: list[bytes], rows_done: int, where: str) -> list[pa.RecordBatch]:
    data = b"".join(lines)
    try:
        table = pajson.read_json(pa.BufferReader(data),
                                 read_options=pajson.ReadOptions(use_threads=False, block_size=len(data) + 1))
    except pa.ArrowInvalid as exc:
        detail = str(exc).splitlines()[0][:200]
        raise SourceError(f"rows {rows_done + 1}..{rows_done + len(lines)} are not valid JSON Lines "
                          f"(one object per line): {detail}", file_name=where, row_number=rows_done + 1) from None
    return table.to_batches()

