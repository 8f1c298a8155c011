"""stream/decode.py: incremental, strict CSV decoding into string RecordBatches."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_provider_zohobulk.errors import CsvFormatError
from airflow_provider_zohobulk.stream import decode as decode_module
from airflow_provider_zohobulk.stream.decode import (
    _STRAY_QUOTE,
    first_stray_quote,
    iter_csv_batches,
    last_row_end,
    unique_column_names,
)
from tests.fixtures.zips import RESULT_HEADER, SAMPLE_RESULT_ROWS, chunked, make_result_csv

REPO = Path(__file__).resolve().parent.parent


def decode(data: bytes, *, chunk_size: int = 1 << 16, **kwargs) -> list[pa.RecordBatch]:
    return list(iter_csv_batches(chunked(data, chunk_size), file_name="Leads.csv", **kwargs))


def rows_of(batches: list[pa.RecordBatch]) -> list[dict]:
    return [row for batch in batches for row in batch.to_pylist()]


def as_csv_reader_rows(rows: list[tuple[str, ...]], header=RESULT_HEADER) -> list[dict]:
    """What the csv module makes of the same rows, with empty strings as None (our null rule)."""
    return [{name: (value if value != "" else None) for name, value in zip(header, row, strict=True)} for row in rows]


# --- the happy path -----------------------------------------------------------------------------


@pytest.mark.parametrize("line_ending", ["\r\n", "\n"], ids=["crlf", "lf"])
@pytest.mark.parametrize("bom", [False, True], ids=["no-bom", "bom"])
def test_sample_rows_decode_exactly(line_ending, bom):
    data = make_result_csv(SAMPLE_RESULT_ROWS, bom=bom, line_ending=line_ending)
    batches = decode(data)
    assert batches[0].schema.names == list(RESULT_HEADER)
    assert all(field.type == pa.string() for field in batches[0].schema)
    assert rows_of(batches) == as_csv_reader_rows(SAMPLE_RESULT_ROWS)


def test_values_are_never_inferred_record_ids_keep_every_digit():
    rows = [("0001", "1e5", "TRUE", "0041508680000053500", "ADDED", "NaN"),
            ("3.50", "null", "2024-05-11", "9999999999999999999", "ADDED", "NULL")]
    batch = decode(make_result_csv(rows))[0]
    assert [r["RECORD_ID"] for r in batch.to_pylist()] == ["0041508680000053500", "9999999999999999999"]
    assert rows_of([batch]) == as_csv_reader_rows(rows)


def test_empty_fields_quoted_or_not_are_null():
    data = b'a,b,c\r\n"",,x\r\n'
    assert rows_of(decode(data)) == [{"a": None, "b": None, "c": "x"}]


def test_quoted_commas_quotes_crlf_and_newlines_in_values():
    rows = [("a,b", 'say "hi"', "line1\r\nline2\nline3", "1", "ADDED", ""), ('"', ",", "\n", "2", "ADDED", "")]
    assert rows_of(decode(make_result_csv(rows))) == as_csv_reader_rows(rows)


def test_one_byte_chunks_with_a_bom_split_across_them():
    data = make_result_csv(SAMPLE_RESULT_ROWS * 3, bom=True)
    assert rows_of(decode(data, chunk_size=1, block_size=64)) == as_csv_reader_rows(SAMPLE_RESULT_ROWS * 3)


def test_quoted_newline_across_chunk_and_block_boundary():
    value = "x" * 40 + "\r\n" + "y" * 40
    rows = [(f"n{i}", value, "c", str(i), "ADDED", "") for i in range(20)]
    data = make_result_csv(rows)
    # Put a chunk boundary and a block boundary right at a quoted CRLF.
    split_at = data.index(b"\r\ny", 200) + 1
    chunks = [data[:split_at], data[split_at:]]
    batches = list(iter_csv_batches(chunks, file_name="Leads.csv", block_size=split_at))
    assert rows_of(batches) == as_csv_reader_rows(rows)
    for block_size in (16, 97, 128, 1000):
        for chunk_size in (1, 7, 64):
            assert rows_of(decode(data, chunk_size=chunk_size, block_size=block_size)) == as_csv_reader_rows(rows)


def test_batches_follow_blocks_and_row_order_is_kept():
    rows = [(f"n{i}", f"e{i}", "c", str(i), "ADDED", "") for i in range(2000)]
    batches = decode(make_result_csv(rows), block_size=4096, chunk_size=1000)
    assert len(batches) > 5
    assert [r["RECORD_ID"] for r in rows_of(batches)] == [str(i) for i in range(2000)]


def test_a_row_longer_than_a_block_grows_the_block():
    rows = [("a", "b" * 100_000, "c", "1", "ADDED", ""), ("d", "e", "f", "2", "ADDED", "")]
    assert rows_of(decode(make_result_csv(rows), block_size=1024, chunk_size=4096)) == as_csv_reader_rows(rows)


def test_a_row_over_max_field_bytes_is_an_error_naming_the_row():
    rows = [("a", "b", "c", "1", "ADDED", "")] * 3 + [("a", "x" * 5000, "c", "4", "ADDED", "")]
    with pytest.raises(CsvFormatError, match="max_field_bytes=2048") as caught:
        decode(make_result_csv(rows), block_size=256, max_field_bytes=2048, chunk_size=100)
    assert (caught.value.file_name, caught.value.row_number) == ("Leads.csv", 4)


def test_header_only_yields_one_empty_batch_with_the_columns():
    for data in (make_result_csv([]), b"\xef\xbb\xbfRECORD_ID,STATUS,ERRORS", b"RECORD_ID,STATUS,ERRORS\n\n\n"):
        batches = decode(data)
        assert len(batches) == 1
        assert batches[0].num_rows == 0
        assert batches[0].schema.names[-3:] == ["RECORD_ID", "STATUS", "ERRORS"]


def test_last_row_without_newline_and_blank_lines_are_skipped():
    data = b"\r\nA,B\r\n1,2\r\n\r\n3,4"
    assert rows_of(decode(data)) == [{"A": "1", "B": "2"}, {"A": "3", "B": "4"}]


def test_duplicate_and_empty_header_names_are_renamed_deterministically():
    assert unique_column_names(["Email", "", "Email", " ", "Email_2", "Email"]) == [
        "Email", "column_2", "Email_2", "column_4", "Email_2_2", "Email_3"]
    batch = decode(b"Email,,Email\r\na,b,c\r\n")[0]
    assert batch.to_pylist() == [{"Email": "a", "column_2": "b", "Email_2": "c"}]


def test_quoted_header_names_keep_commas_and_newlines():
    batch = decode(b'"Last, Name","Multi\nLine",STATUS\r\nx,y,ADDED\r\n')[0]
    assert batch.schema.names == ["Last, Name", "Multi\nLine", "STATUS"]


def test_last_row_end_ignores_newlines_inside_quotes():
    assert last_row_end(b'a,"x\ny"\nb,"p\nq') == len(b'a,"x\ny"\n')
    assert last_row_end(b'a,"x\ny') == -1
    assert last_row_end(b'a,""""\n') == 7


# --- errors -------------------------------------------------------------------------------------


def many_rows(count: int) -> list[tuple[str, ...]]:
    return [(f"n{i}", f"e{i}@x.com", "c", str(i), "ADDED", "") for i in range(count)]


@pytest.mark.parametrize("block_size", [64, 1 << 20])
@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (b"only,four,fields,here", "4 fields where the header has 6"),
        (b"1,2,3,4,5,6,7", "7 fields where the header has 6"),
        (b'a,"b,c",d', "3 fields where the header has 6"),
    ],
    ids=["too-few", "too-many", "quoted-comma-too-few"],
)
def test_ragged_rows_name_the_exact_data_row(bad_row, message, block_size):
    good = make_result_csv(many_rows(57))
    data = good + bad_row + b"\r\n" + make_result_csv(many_rows(3), header=None)
    with pytest.raises(CsvFormatError, match=message) as caught:
        decode(data, block_size=block_size, chunk_size=50)
    assert (caught.value.file_name, caught.value.row_number) == ("Leads.csv", 58)
    assert "row 58" in str(caught.value)


def test_row_numbers_do_not_count_quoted_newlines_or_blank_lines():
    rows = [("a\nb\nc", "x", "y", "1", "ADDED", "")] * 4
    data = make_result_csv(rows) + b"\r\n\r\n" + b"too,few\r\n"
    with pytest.raises(CsvFormatError) as caught:
        decode(data, block_size=32)
    assert caught.value.row_number == 5


@pytest.mark.parametrize("block_size", [64, 1 << 20])
def test_invalid_utf8_names_row_and_column(block_size):
    data = make_result_csv(many_rows(10)) + b"n,\xff\xfe,c,11,ADDED,\r\n"
    with pytest.raises(CsvFormatError, match="invalid UTF-8 in column 'Email'") as caught:
        decode(data, block_size=block_size)
    assert caught.value.row_number == 11


def test_invalid_utf8_in_the_header():
    with pytest.raises(CsvFormatError, match="header row is not valid UTF-8"):
        decode(b"Na\xffme,STATUS\r\nx,ADDED\r\n")


@pytest.mark.parametrize("block_size", [64, 1 << 20])
def test_unclosed_quote_at_eof_is_an_error(block_size):
    data = make_result_csv(many_rows(6)) + b'x,"never closed,c,7,ADDED,\r\nmore,rows\r\n'
    with pytest.raises(CsvFormatError, match="unclosed quote") as caught:
        decode(data, block_size=block_size, chunk_size=10)
    assert caught.value.row_number == 7


@pytest.mark.parametrize("stray", ['5" screen', '"ab"c', '5"x"y'])
@pytest.mark.parametrize(("block_size", "chunk_size"), [(1, 7), (64, 10), (1 << 20, 1 << 16)])
def test_a_quote_inside_a_field_is_an_error_whatever_the_chunking(stray, block_size, chunk_size):
    """Not RFC 4180, and pyarrow would read it one way and the block cut another: before this check
    the same bytes gave 3 rows in one chunk and 4 when split at a row end."""
    data = (make_result_csv(many_rows(4)) + b'y,z,"a\nb",1,ADDED,\r\n'
            + stray.encode() + b',Acme,x@y.com,2,ADDED,\r\nlast,Acme,l@y.com,3,ADDED,\r\n')
    with pytest.raises(CsvFormatError, match="a quote inside a field") as caught:
        decode(data, block_size=block_size, chunk_size=chunk_size)
    assert caught.value.row_number == 6
    assert stray in str(caught.value)


def test_quotes_that_rfc_4180_allows_are_not_taken_for_stray_ones():
    data = b'a,b\r\n"he said ""hi""",2\r\n"",""""\r\n"x\r\ny","a,b"\r\n'
    assert rows_of(decode(data, block_size=1, chunk_size=3)) == [
        {"a": 'he said "hi"', "b": "2"}, {"a": None, "b": '"'}, {"a": "x\r\ny", "b": "a,b"}]


@pytest.mark.parametrize("window", [1, 2, 7, 1 << 20])
def test_the_dense_quote_search_finds_what_the_regex_finds(monkeypatch, window):
    """Blocks with many quotes (every value quoted) are searched by bit arithmetic in windows; it must
    agree with the regex on every input, a quote at a window's edge included."""
    monkeypatch.setattr(decode_module, "STRAY_QUOTE_WINDOW", window)
    monkeypatch.setattr(decode_module, "DENSE_QUOTES_EVERY", 1)  # always the bit arithmetic
    rng = random.Random(12)
    samples = [bytes(rng.choice(b'a",\r\n') for _ in range(rng.randrange(0, 40))) for _ in range(3000)]
    samples += [b'a"b', b'\r"x', b'"a"', b'x"""y', b'1,12",3\n', b'"', b'ab"\n', b"".join([b'"a",'] * 50) + b'b"c']
    for sample in samples:
        expected = _STRAY_QUOTE.search(sample)
        assert first_stray_quote(sample) == (-1 if expected is None else expected.start()), sample
        assert first_stray_quote(memoryview(sample)) == first_stray_quote(sample)


@pytest.mark.parametrize(("block_size", "chunk_size"), [(1, 7), (64, 10), (1 << 20, 1 << 16)])
def test_a_stray_quote_in_a_csv_with_every_value_quoted(block_size, chunk_size):
    """The dense path on a whole decode: every value quoted, one stray quote in row 30."""
    rows = [[f"v{row}", "Acme, Inc.", f'said ""{row}""', ""] for row in range(1, 60)]
    rows[29][1] = 'Ac"me'
    lines = ["a,b,c,d", *(",".join(f'"{value}"' for value in row) for row in rows)]
    data = ("\r\n".join(lines) + "\r\n").encode()
    with pytest.raises(CsvFormatError, match="a quote inside a field") as caught:
        decode(data, block_size=block_size, chunk_size=chunk_size)
    assert caught.value.row_number == 30
    rows[29][1] = "Acme"
    good = ("\r\n".join(["a,b,c,d", *(",".join(f'"{value}"' for value in row) for row in rows)]) + "\r\n").encode()
    decoded = rows_of(decode(good, block_size=block_size, chunk_size=chunk_size))
    assert len(decoded) == 59 and decoded[4] == {"a": "v5", "b": "Acme, Inc.", "c": 'said "5"', "d": None}


def test_unclosed_quote_in_the_header():
    with pytest.raises(CsvFormatError, match="header row ends inside a quoted field"):
        decode(b'"Last_Name,STATUS\r\nx,y\r\n')


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\r\n\r\n"], ids=["empty", "bom-only", "blank-lines"])
def test_an_empty_member_has_no_header(data):
    with pytest.raises(CsvFormatError, match="empty: it has no header row") as caught:
        decode(data)
    assert caught.value.file_name == "Leads.csv"


def test_failure_paths_exit_the_process_cleanly():
    """pyarrow has aborted at exit after CSV errors from Python streams; ours feeds it memory buffers.

    Every failure path runs in a child process, which must exit 0 with nothing on stderr.
    """
    script = textwrap.dedent(
        """
        import json
        from airflow_provider_zohobulk.errors import CsvFormatError
        from airflow_provider_zohobulk.stream.decode import iter_csv_batches
        cases = [b"a,b\\n1\\n", b"a,b\\n1,2,3\\n", b"a,b\\n1,\\xff\\n", b'a,b\\n1,"2\\n', b"", b"a,b\\n" + b"x" * 5000]
        found = []
        for data in cases:
            for block_size in (16, 1 << 20):
                try:
                    list(iter_csv_batches([data], file_name="f.csv", block_size=block_size, max_field_bytes=1024))
                except CsvFormatError as exc:
                    found.append(exc.row_number)
        print(json.dumps(found))
        """
    )
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert json.loads(done.stdout) == [1, 1, 1, 1, 1, 1, 1, 1, None, None, 1, 1]


# --- property-style comparison with the csv module --------------------------------------------------

NASTY = ["", " ", '"', '""', ",", "\n", "\r\n", "\r", "a,b", 'x"y', "ünï©ødé ☃", "0007", "  lead ", "\t", "NULL", "-"]


def random_value(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(NASTY)
    alphabet = 'ab ,"\n\r\t-:é☃0'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))


@pytest.mark.parametrize("seed", range(12))
def test_matches_csv_reader_on_random_nasty_csv(seed):
    rng = random.Random(seed)
    width = rng.randint(1, 7)
    header = [f"h{i}" for i in range(width)]
    rows = []
    for _ in range(rng.randint(0, 300)):
        row = [random_value(rng) for _ in range(width)]
        if width == 1 and row[0] == "":
            row[0] = "x"  # a lone empty field is a blank line: skipped by both readers on purpose
        rows.append(row)
    out = io.StringIO(newline="")
    quoting = rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
    # csv.writer leaves a lone "\r" unquoted when the line terminator is "\n": only quote-all may use it.
    line_ending = rng.choice(["\r\n", "\n"]) if quoting == csv.QUOTE_ALL else "\r\n"
    csv.writer(out, lineterminator=line_ending, quoting=quoting).writerows([header, *rows])
    data = (b"\xef\xbb\xbf" if rng.random() < 0.3 else b"") + out.getvalue().encode()

    expected = [
        {name: (value if value != "" else None) for name, value in zip(header, row, strict=True)}
        for row in csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), strict=True)
    ][1:]
    assert expected == [{name: (v if v != "" else None) for name, v in zip(header, row, strict=True)} for row in rows]
    block_size = rng.choice([16, 64, 256, 4096, 1 << 20])
    chunk_size = rng.choice([1, 3, 17, 1000])
    batches = decode(data, chunk_size=chunk_size, block_size=block_size)
    assert rows_of(batches) == expected
    assert batches[0].schema.names == header


# --- bounded memory -------------------------------------------------------------------------------


def test_memory_stays_bounded_while_decoding_100_mb():
    """Python (tracemalloc) and Arrow (its pool's peak) memory stay far below the 100 MB decoded.

    Runs in a fresh process so the Arrow pool's peak belongs to this decode alone.
    """
    script = textwrap.dedent(
        """
        import json, tracemalloc
        import pyarrow as pa
        from airflow_provider_zohobulk.stream.decode import iter_csv_batches
        from tests.fixtures.zips import make_result_csv
        block = make_result_csv(
            [(f"Name {i}", f"user{i}@example.com", "Acme, Inc.", str(4150868000005350003 + i), "ADDED",
              "MANDATORY_NOT_FOUND-Company") for i in range(1000)], header=None)
        repeats = (100 << 20) // len(block) + 1
        def chunks():
            yield b"Last_Name,Email,Company,RECORD_ID,STATUS,ERRORS\\r\\n"
            for _ in range(repeats):
                for start in range(0, len(block), 65536):
                    yield block[start:start + 65536]
        tracemalloc.start()
        rows = 0
        for batch in iter_csv_batches(chunks(), file_name="big.csv"):
            rows += batch.num_rows
        print(json.dumps({"bytes": repeats * len(block), "rows": rows, "expected_rows": repeats * 1000,
                          "python_peak": tracemalloc.get_traced_memory()[1],
                          "arrow_peak": pa.default_memory_pool().max_memory()}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["bytes"] >= 100 << 20
    assert result["rows"] == result["expected_rows"]
    assert result["python_peak"] < 8 << 20
    assert result["arrow_peak"] < 16 << 20
