"""A CSV member's bytes -> pyarrow RecordBatches of strings, incrementally and strictly.

How it works, and why:

* The bytes are cut into *blocks of whole rows* here, and each block is handed to pyarrow's C++
  CSV parser as an in-memory buffer (``pyarrow.csv.read_csv`` over a ``BufferReader``). Parsing is
  pyarrow's speed (about 3x the csv module), while pyarrow never reads from a Python stream: after
  an ``ArrowInvalid`` from a Python-stream source the process has been seen to abort at exit, and
  short reads from a Python stream shrink its blocks. In-memory buffers have neither problem.
* A block ends at the last newline that lies *outside* quotes. Because a block always starts at a
  row boundary, "outside quotes" is just "an even number of ``"`` before it" (RFC 4180 escapes a
  quote by doubling it, which keeps the parity), so finding the cut costs a ``bytes.count`` and an
  ``rfind`` in C, never a Python loop over rows. A row longer than ``block_size`` grows the block,
  up to ``max_field_bytes``.
* pyarrow silently accepts an unclosed quote at the end of the input; the parity check catches it.
  A quote inside a field that is not RFC 4180's (``5" screen``, ``"ab"c``: text on both sides of
  it) would make pyarrow and the parity disagree on where rows end, and so make the rows depend on
  how the input was chunked; every block with quotes is scanned for one (a ``re`` search that skips
  to each quote in C, ~0.1 CPU-s per million rows of quoted data; where nearly every value is
  quoted, bit arithmetic over the bytes' classes instead, :func:`first_stray_quote`, ~40 % cheaper
  there) and the file reported as malformed. A stray quote at the very end of an unquoted field
  (``12",``) looks like a closing quote and cannot be told apart locally; it upsets the parity,
  which most often ends in an unclosed-quote or ragged-row error, but two such quotes can cancel out.
* When pyarrow rejects a block (ragged row, invalid UTF-8), the block is re-read with the csv
  module to name the exact 1-based data row: precision on the error path, speed on the happy path.
  A row with more fields than ``max_columns`` is found first without splitting it into fields
  (:func:`count_fields`), so a row of millions of fields is reported without a Python object each.
* pyarrow drops a UTF-8 BOM at the start of every buffer it parses; a block that starts with one
  gets a blank line in front, so only the BOM at the start of the member is dropped (by
  :func:`read_header`) and a U+FEFF starting a later row stays data whatever the chunking.

Decisions a caller can rely on:

* Every value is text (``pa.string()``), never inferred: ``RECORD_ID`` keeps its leading zeros and
  all 19 digits. An empty field, quoted or not, is null; with ``empty_as_null=False`` it is the
  empty string ``""`` (a Bulk Read export: an empty cell is a field that is empty, not one that is
  missing, and a file format that can tell them apart should keep it empty).
* Header names are kept as written (the one UTF-8 BOM starting the member is dropped). An empty
  name becomes ``column_<n>`` (its 1-based position) and a repeated name gets ``_2``, ``_3``... in
  order of appearance, so every column has a unique, deterministic name
  (:func:`unique_column_names`); the names as written travel in the schema's metadata
  (:func:`written_header`), because a repeated name may be Zoho's own column (``STATUS``).
* A header or data row with more than ``max_columns`` fields is a
  :class:`~airflow_provider_zohobulk.errors.ColumnLimitError`: decoding costs memory per column.
* Blank lines are skipped and not counted; row 1 is the first data row after the header.
* A header-only file yields exactly one zero-row batch with the header's columns.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv

from airflow_provider_zohobulk.arrow_values import empty_batch
from airflow_provider_zohobulk.errors import ColumnLimitError, CsvFormatError
from airflow_provider_zohobulk.stream.unzip import UnzipLimits

__all__ = ["count_fields", "first_stray_quote", "iter_csv_batches", "unique_column_names", "written_header"]

BOM = b"\xef\xbb\xbf"
QUOTE = b'"'
COMMA = b","
NEWLINE = b"\n"
#: Where the schema's metadata keeps the header as written (JSON list), see :func:`written_header`.
HEADER_METADATA_KEY = b"zohobulk.header"
#: :func:`count_fields` splits a row at its quotes this many bytes at a time: bounded memory.
FIELD_COUNT_WINDOW = 1 << 16
#: A row ends at a CR or an LF outside quotes, for the csv module and for pyarrow alike.
_LINE_END = re.compile(rb"[\r\n]")
#: A quote with text on both sides (neither a delimiter, a line end nor another quote): found by
#: jumping from quote to quote, the lookbehind then checks the byte before it.
_STRAY_QUOTE = re.compile(rb'"(?<=[^,\n"]")[^,\r\n"]')
#: The same search by bit arithmetic (:func:`first_stray_quote`): every byte becomes its class, bit 0
#: a quote, bit 1 a byte that may precede a stray quote (not ``,`` ``\n`` ``"``), bit 2 one that may
#: follow it (not ``,`` ``\r`` ``\n`` ``"``).
_QUOTE_CLASSES = bytes(
    1 if byte == QUOTE[0] else (byte not in b',\n"') << 1 | (byte not in b',\r\n"') << 2 for byte in range(256))
#: Bytes the bit arithmetic handles at a time: its few temporary integers stay in the CPU's cache
#: (1 MiB windows ran 2.5x slower per byte than 64 KiB ones).
STRAY_QUOTE_WINDOW = 1 << 16
#: A block with more quotes than one in this many bytes (judged on its first 64 KiB) is searched by bit
#: arithmetic, ~1.5 ms per MiB whatever it holds; the regex costs ~20 ns per quote: ~3 ms per MiB of a
#: CSV with every value quoted, ~0.5 ms per MiB of one quoted only where needed.
DENSE_QUOTES_EVERY = 16


def unique_column_names(header: Sequence[str]) -> list[str]:
    """Make header names unique and non-empty, deterministically (see the module docstring).

    A repeated name takes the lowest free suffix from ``_2`` on. Each name remembers the next suffix
    to try, so no suffix is tried twice and the work is linear: probing from ``_2`` on every repeat
    was quadratic, and a 2 KB zip can hold a header repeating one name tens of thousands of times.
    """
    names: list[str] = []
    taken: set[str] = set()
    next_suffix: dict[str, int] = {}
    for base in written_names(header):
        name = base
        if name in taken:
            suffix = next_suffix.get(base, 2)
            while (name := f"{base}_{suffix}") in taken:
                suffix += 1
            next_suffix[base] = suffix + 1
        taken.add(name)
        names.append(name)
    return names


def written_names(header: Sequence[str]) -> list[str]:
    """The header's names as written, an empty one named ``column_<n>`` after its 1-based position."""
    return [raw if raw.strip() else f"column_{position}" for position, raw in enumerate(header, start=1)]


def written_header(schema: pa.Schema) -> list[str]:
    """The names of a decoded batch's columns as the header wrote them (before ``_2``, ``_3``...).

    Batches that did not come from :func:`iter_csv_batches` have only their names: those are returned.
    """
    written = (schema.metadata or {}).get(HEADER_METADATA_KEY)
    names = json.loads(written) if written is not None else None
    return names if isinstance(names, list) and len(names) == len(schema.names) else list(schema.names)


def count_fields(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Fields in the one row ``data[start:end]`` (starting at a row boundary): commas outside quotes,
    plus one. Found with C-speed counts, a window at a time, never a Python object per field."""
    end = len(data) if end is None else end
    if data.find(QUOTE, start, end) < 0:
        return data.count(COMMA, start, end) + 1
    commas, inside = 0, False
    for window in range(start, end, FIELD_COUNT_WINDOW):
        pieces = data[window:min(window + FIELD_COUNT_WINDOW, end)].split(QUOTE)
        commas += b"".join(pieces[int(inside)::2]).count(COMMA)  # every other piece lies outside quotes
        inside ^= len(pieces) % 2 == 0  # an odd number of quotes in the window
    return commas + 1


def first_stray_quote(block: bytes | memoryview) -> int:
    """Offset of the first quote in ``block`` with text on both sides (see the module docstring), or -1.

    Quotes at the block's very start or end are never stray: a block starts and ends at a row boundary.
    Where quotes are dense (every value quoted) the regex's cost per quote adds up, so the block's bytes
    become their classes (:data:`_QUOTE_CLASSES`) and one integer of them, ``x``, answers for every byte
    at once: ``x & x << 7 & x >> 10`` has bit ``8i`` set exactly where byte ``i`` is a quote, byte
    ``i - 1`` may precede a stray quote and byte ``i + 1`` may follow one. No other bit can be set.
    """
    sample = block[:1 << 16]
    if bytes(sample).count(QUOTE) * DENSE_QUOTES_EVERY <= len(sample):
        found = _STRAY_QUOTE.search(block)
        return -1 if found is None else found.start()
    size = len(block)
    for start in range(0, size, STRAY_QUOTE_WINDOW):
        # One byte of context on either side: a quote at a window's edge is judged in its neighbour.
        low = max(start - 1, 0)
        classes = int.from_bytes(bytes(block[low:start + STRAY_QUOTE_WINDOW + 1]).translate(_QUOTE_CLASSES), "little")
        stray = classes & classes << 7 & classes >> 10
        if stray:
            return low + (((stray & -stray).bit_length() - 1) >> 3)
    return -1


def iter_rows(data: bytes) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of every non-blank row of ``data`` (starting at a row boundary), without
    splitting rows into fields; an unclosed quote runs to the end."""
    start = scan = quotes = 0
    while True:
        found = _LINE_END.search(data, scan)
        end = len(data) if found is None else found.start()
        quotes += data.count(QUOTE, scan, end)
        if found is not None and quotes % 2:  # a line break inside quotes: the row goes on
            scan = end + 1
            continue
        if end > start:
            yield start, end
        if found is None:
            return
        start = scan = end + 1
        quotes = 0


def last_row_end(data: bytes) -> int:
    """Offset just after the last newline outside quotes, or -1; ``data`` starts at a row boundary."""
    quotes_after = 0
    end = len(data)
    total_quotes = data.count(QUOTE)
    while True:
        newline = data.rfind(NEWLINE, 0, end)
        if newline < 0:
            return -1
        quotes_after += data.count(QUOTE, newline + 1, end)
        if (total_quotes - quotes_after) % 2 == 0:
            return newline + 1
        end = newline


def first_row_end(data: bytes, start: int = 0) -> int:
    """Offset just after the first newline outside quotes at or after ``start``, or -1."""
    quotes_before = data.count(QUOTE, 0, start)
    while True:
        newline = data.find(NEWLINE, start)
        if newline < 0:
            return -1
        quotes_before += data.count(QUOTE, start, newline)
        if quotes_before % 2 == 0:
            return newline + 1
        start = newline + 1


class CsvDecoder:
    """State of one member's decoding: its columns, the rows done so far, the parse options."""

    def __init__(self, file_name: str, block_size: int, max_field_bytes: int, max_columns: int,
                 empty_as_null: bool = True) -> None:
        if block_size <= 0 or max_field_bytes <= 0 or max_columns <= 0:
            raise ValueError("block_size, max_field_bytes and max_columns must be positive")
        self.file_name = file_name
        self.empty_as_null = empty_as_null
        self.block_size = block_size
        self.max_field_bytes = max(max_field_bytes, block_size)
        self.max_columns = max_columns
        self.rows_done = 0
        self.names: list[str] = []
        self.schema: pa.Schema | None = None

    # --- the header -------------------------------------------------------------------------------

    def read_header(self, data: bytes) -> None:
        """Decode the header row (``data`` is exactly that row) and fix the column names."""
        fields = count_fields(data)
        if fields > self.max_columns:
            raise self.too_many_columns(fields)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CsvFormatError(
                f"the header row is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r})",
                file_name=self.file_name) from None
        try:
            rows = [row for row in strict_csv_rows(text, self.max_field_bytes) if row]
        except csv.Error as exc:
            raise CsvFormatError(f"the header row is malformed: {exc}", file_name=self.file_name) from None
        if len(rows) != 1:
            raise CsvFormatError("the header row could not be read as one CSV row", file_name=self.file_name)
        self.names = unique_column_names(rows[0])
        self.schema = pa.schema([pa.field(name, pa.string()) for name in self.names],
                                metadata={HEADER_METADATA_KEY: json.dumps(written_names(rows[0])).encode()})
        self.read_options = pacsv.ReadOptions(column_names=self.names, use_threads=False)
        self.parse_options = pacsv.ParseOptions(newlines_in_values=True, double_quote=True, ignore_empty_lines=True)
        self.convert_options = pacsv.ConvertOptions(
            column_types=dict.fromkeys(self.names, pa.string()),
            null_values=[""] if self.empty_as_null else [],
            strings_can_be_null=self.empty_as_null, quoted_strings_can_be_null=self.empty_as_null,
        )

    # --- data blocks ------------------------------------------------------------------------------

    def parse_block(self, block: bytes | memoryview) -> list[pa.RecordBatch]:
        """Parse whole rows with pyarrow; on failure, name the exact row (csv-module re-read)."""
        if not bytes(block[:64]).strip(b"\r\n") and not bytes(block).strip(b"\r\n"):
            return []  # only blank lines: pyarrow would call it an empty file
        if block[:len(BOM)] == BOM:  # pyarrow would drop it as its buffer's BOM; a blank line is skipped
            block = NEWLINE + bytes(block)
        self.refuse_stray_quote(block)
        self.read_options.block_size = len(block) + 1
        try:
            table = pacsv.read_csv(pa.BufferReader(pa.py_buffer(block)), read_options=self.read_options,
                                   parse_options=self.parse_options, convert_options=self.convert_options)
        except pa.ArrowInvalid as exc:
            raise self.locate_problem(bytes(block), str(exc)) from None
        assert self.schema is not None
        table = table.replace_schema_metadata(self.schema.metadata)  # the header as written, for the layout
        batches = [batch for batch in table.to_batches() if batch.num_rows]
        self.rows_done += table.num_rows
        return batches

    def locate_problem(self, block: bytes, arrow_message: str) -> CsvFormatError:
        """Re-read a rejected block row by row to find which row is wrong and say how.

        Rows before the first row over ``max_columns`` (if any) are re-read with the csv module, so
        an earlier bad row is still the one reported; the wide row itself is never split into fields.
        """
        wide = self.first_row_over_limit(block)
        if wide is not None:
            block = block[:wide[1]]
        text = block.decode("utf-8", errors="surrogateescape")
        row_number = self.rows_done
        expected = len(self.names)
        try:
            for row in strict_csv_rows(text, self.max_field_bytes):
                if not row:
                    continue
                row_number += 1
                if len(row) != expected:
                    return CsvFormatError(
                        f"ragged row: {len(row)} fields where the header has {expected}",
                        file_name=self.file_name, row_number=row_number)
                for column, value in zip(self.names, row, strict=True):
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError:
                        return CsvFormatError(f"invalid UTF-8 in column {column!r}",
                                              file_name=self.file_name, row_number=row_number)
        except csv.Error as exc:
            return CsvFormatError(f"malformed CSV: {exc}", file_name=self.file_name, row_number=row_number + 1)
        if wide is not None:
            return self.too_many_columns(wide[2], row_number=wide[0])
        short = arrow_message.split(":", 2)[-1].strip()[:80] if "Expected" not in arrow_message else ""
        return CsvFormatError(
            f"the CSV parser rejected rows {self.rows_done + 1} to {row_number}: "
            f"{arrow_message.split(':')[0]}{': ' + short if short else ''}",
            file_name=self.file_name, row_number=self.rows_done + 1)

    def first_row_over_limit(self, block: bytes) -> tuple[int, int, int] | None:
        """The first row of ``block`` with more than ``max_columns`` fields, as ``(row number, offset,
        fields)``, or None."""
        if block.count(COMMA) < self.max_columns:
            return None
        for row_number, (start, end) in enumerate(iter_rows(block), start=self.rows_done + 1):
            fields = count_fields(block, start, end)
            if fields > self.max_columns:
                return row_number, start, fields
        return None

    def too_many_columns(self, fields: int, *, row_number: int | None = None, at_least: bool = False
                         ) -> ColumnLimitError:
        """A header (no ``row_number``) or data row over ``max_columns``."""
        counted = f"{'at least ' if at_least else ''}{fields}"
        what = (f"the header row has {counted} columns" if row_number is None
                else f"ragged row: {counted} fields where the header has {len(self.names)}")
        return ColumnLimitError(
            f"{what}, more than max_columns={self.max_columns} (a Zoho result has at most 203; "
            "UnzipLimits.max_columns raises the limit)", file_name=self.file_name, row_number=row_number)

    def refuse_stray_quote(self, block: bytes | memoryview) -> None:
        """Raise if a quote in ``block`` (whole rows) has text on both sides (see the module docstring)."""
        stray = first_stray_quote(block)
        if stray >= 0:
            raise self.stray_quote(bytes(block), stray)

    def stray_quote(self, block: bytes, offset: int) -> CsvFormatError:
        """A quote at ``offset`` with text on both sides: name its row (rows counted up to it, skipping
        blank lines, by the same quote parity as the block cut)."""
        row_number, quotes, start = self.rows_done, 0, 0
        while (newline := block.find(NEWLINE, start, offset)) >= 0:
            quotes += block.count(QUOTE, start, newline)
            if quotes % 2 == 0 and block[start:newline].strip(b"\r"):
                row_number += 1
            start = newline + 1
        excerpt = block[max(offset - 10, 0):offset + 10].decode("utf-8", errors="replace")
        return CsvFormatError(
            f"a quote inside a field ({excerpt!r}): a field with a quote must be enclosed in quotes, "
            "with the quote doubled", file_name=self.file_name, row_number=row_number + 1)

    def unclosed_quote(self, tail: bytes) -> CsvFormatError:
        """The input ended inside a quoted field; find the row that opened it: the last of ``tail``'s
        rows, counted without splitting them into fields (the tail can be ``max_field_bytes`` long)."""
        rows = sum(1 for _ in iter_rows(tail))
        return CsvFormatError("the file ends inside a quoted field (unclosed quote)",
                              file_name=self.file_name, row_number=self.rows_done + max(rows, 1))

    def row_too_long(self, length: int) -> CsvFormatError:
        return CsvFormatError(
            f"a row is longer than max_field_bytes={self.max_field_bytes} ({length} bytes without a row end "
            "outside quotes); most often an unclosed quote", file_name=self.file_name, row_number=self.rows_done + 1)

    def empty_batch(self) -> pa.RecordBatch:
        """The one zero-row batch of a header-only file: it still tells sinks the columns."""
        assert self.schema is not None
        return empty_batch(self.schema)


def strict_csv_rows(text: str, max_field_chars: int) -> Iterator[list[str]]:
    """csv.reader over text, strict about quoting, with a field limit matching ours.

    The csv module's field limit is process-wide, so it is raised only for the duration of the read.
    """
    previous = csv.field_size_limit(max(max_field_chars, csv.field_size_limit()))
    try:
        yield from csv.reader(io.StringIO(text, newline=""), strict=True)
    finally:
        csv.field_size_limit(previous)


def iter_csv_batches(
    chunks: Iterable[bytes], *, file_name: str, block_size: int = 1 << 20, max_field_bytes: int = 16 << 20,
    max_columns: int = UnzipLimits.max_columns, empty_as_null: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Decode a CSV member incrementally into RecordBatches of string columns.

    An empty field is null, or ``""`` with ``empty_as_null=False`` (see the module docstring).

    Memory is bounded by about ``block_size`` plus one input chunk (more only while one row is
    longer, up to ``max_field_bytes``, which bounds a whole row: no field can be longer than it),
    times a per-column cost that ``max_columns`` bounds.

    Raises :class:`~airflow_provider_zohobulk.errors.CsvFormatError` naming ``file_name`` and the
    1-based data row for ragged rows, invalid UTF-8, an unclosed quote, a row over
    ``max_field_bytes``, or an empty member; its subclass
    :class:`~airflow_provider_zohobulk.errors.ColumnLimitError` for a header or row with more than
    ``max_columns`` fields.
    """
    decoder = CsvDecoder(file_name, block_size, max_field_bytes, max_columns, empty_as_null)
    iterator = iter(chunks)
    buffer = read_header(decoder, iterator)
    yielded = False
    pieces = [buffer] if buffer else []
    size = len(buffer)
    target = block_size
    for chunk in iterator:
        if not chunk:
            continue
        pieces.append(chunk)
        size += len(chunk)
        if size < target:
            continue
        data = b"".join(pieces)
        cut = last_row_end(data)
        if cut < 0:
            if size > decoder.max_field_bytes:
                decoder.refuse_stray_quote(data)  # a stray quote is the likelier cause: name it
                raise decoder.row_too_long(size)
            target = min(size * 2, decoder.max_field_bytes + 1)
            pieces = [data]
            continue
        for batch in decoder.parse_block(memoryview(data)[:cut]):
            yielded = True
            yield batch
        tail = data[cut:]
        pieces, size, target = ([tail] if tail else []), len(tail), block_size
    data = b"".join(pieces)
    if data.count(QUOTE) % 2:
        decoder.refuse_stray_quote(data)  # one stray quote leaves the parity odd to the end: name it
        raise decoder.unclosed_quote(data)
    if len(data) > decoder.max_field_bytes and last_row_end(data) < 0:
        raise decoder.row_too_long(len(data))
    if data:
        for batch in decoder.parse_block(data):
            yielded = True
            yield batch
    if not yielded:
        yield decoder.empty_batch()


def read_header(decoder: CsvDecoder, iterator: Iterator[bytes]) -> bytes:
    """Consume bytes up to the end of the header row (skipping the member's BOM and blank lines), set
    the columns on ``decoder`` and return the bytes already read past the header.

    Only a BOM at the very start of the member is dropped: a second one is part of the first name.
    """
    data = b""
    start_checked = False
    for chunk in iterator:
        data += chunk
        if not start_checked:
            if len(data) < len(BOM) and BOM.startswith(data):
                continue
            if data.startswith(BOM):
                data = data[len(BOM):]
            start_checked = True
        while True:
            end = first_row_end(data)
            if end < 0:
                break
            if data[:end].strip(b"\r\n"):
                decoder.read_header(data[:end])
                return data[end:]
            data = data[end:]  # a blank line before the header
        if data.count(COMMA) >= decoder.max_columns and (fields := count_fields(data)) > decoder.max_columns:
            raise decoder.too_many_columns(fields, at_least=True)  # without reading the rest of it
        if len(data) > decoder.max_field_bytes:
            raise CsvFormatError(
                f"the header row is longer than max_field_bytes={decoder.max_field_bytes}",
                file_name=decoder.file_name)
    if not data.strip(b"\r\n"):
        raise CsvFormatError("the CSV file is empty: it has no header row", file_name=decoder.file_name)
    if data.count(QUOTE) % 2:
        raise CsvFormatError("the header row ends inside a quoted field (unclosed quote)",
                             file_name=decoder.file_name)
    decoder.read_header(data)
    return b""
