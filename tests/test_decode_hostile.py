"""stream/decode.py against hostile or unusual input: cost per column, column limits, a BOM mid-file.

Security issue #10: a header that repeats one name cost quadratic CPU, a very wide header or data row
cost memory in proportion to its field count, and a U+FEFF starting a row was dropped or kept
depending on where pyarrow's buffers began.
"""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_provider_zohobulk.bulk_result import read_bulk_write_result
from airflow_provider_zohobulk.errors import ColumnLimitError, CsvFormatError
from airflow_provider_zohobulk.stream import decode
from airflow_provider_zohobulk.stream.decode import iter_csv_batches, unique_column_names
from airflow_provider_zohobulk.stream.unzip import UnzipLimits
from tests.fixtures.zips import chunked, zip_with_zipfile

REPO = Path(__file__).resolve().parent.parent


def decode_rows(data: bytes, *, chunk_size: int = 1 << 16, **kwargs) -> list[dict]:
    batches = iter_csv_batches(chunked(data, chunk_size), file_name="Leads.csv", **kwargs)
    return [row for batch in batches for row in batch.to_pylist()]


# --- duplicated header names: linear renaming, same names as before ------------------------------


def quadratic_unique_column_names(header: list[str]) -> list[str]:
    """The renaming as it was before issue #10 (one probe per taken suffix): the reference for names."""
    names: list[str] = []
    taken: set[str] = set()
    for position, raw in enumerate(header, start=1):
        base = raw if raw.strip() else f"column_{position}"
        name, suffix = base, 2
        while name in taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(name)
        names.append(name)
    return names


class LineBudget:
    """Counts the Python lines executed in stream/decode.py and fails once they pass a budget.

    A step budget instead of a stopwatch: the quadratic renaming took ~1.25 billion steps for this
    header (hours), so it is stopped at the budget instead of being waited for.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.lines = 0

    def __enter__(self) -> LineBudget:
        self.previous = sys.gettrace()
        sys.settrace(self.trace_calls)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(self.previous)

    def trace_calls(self, frame, event, arg):
        return self.trace_lines if frame.f_code.co_filename == decode.__file__ else None

    def trace_lines(self, frame, event, arg):
        if event == "line":
            self.lines += 1
            if self.lines > self.budget:
                raise AssertionError(f"more than {self.budget} Python lines executed in stream/decode.py")
        return self.trace_lines


def test_a_header_repeating_one_name_50000_times_is_renamed_in_linear_steps():
    header = ["Email"] * 50_000
    with LineBudget(budget=20 * len(header)) as steps:
        names = unique_column_names(header)
    assert names == ["Email"] + [f"Email_{n}" for n in range(2, 50_001)]
    assert steps.lines > len(header)  # the budget did see the loop


def test_a_header_whose_renames_collide_with_written_names_is_renamed_in_linear_steps():
    """Written names that the renaming would pick (Email_2, Email_3...) make every probe a collision."""
    header = [f"Email_{n}" for n in range(2, 20_002)] + ["Email"] * 20_001
    with LineBudget(budget=30 * len(header)):
        names = unique_column_names(header)
    assert names == header[:20_001] + [f"Email_{n}" for n in range(20_002, 40_002)]
    assert names[20_000] == "Email" and len(set(names)) == len(names)


@pytest.mark.parametrize("seed", range(20))
def test_linear_renaming_gives_the_same_names_as_before(seed):
    rng = random.Random(seed)
    pool = ["A", "A_2", "A_3", "A_2_2", "B", "b", "", " ", "column_2", "column_3_2", "A_10", "A_1"]
    header = [rng.choice(pool) for _ in range(rng.randint(1, 60))]
    names = unique_column_names(header)
    assert names == quadratic_unique_column_names(header)
    assert len(set(names)) == len(names) and all(names)


# --- the column limit ---------------------------------------------------------------------------


def header_of(count: int) -> bytes:
    return b",".join(b"col%d" % n for n in range(count)) + b"\r\n"


def test_a_header_over_max_columns_is_refused_naming_the_file_and_the_count():
    assert len(decode_rows(header_of(50) + b"," * 49 + b"x\r\n", max_columns=50)[0]) == 50
    with pytest.raises(ColumnLimitError, match=r"51 columns.*max_columns=50") as caught:
        decode_rows(header_of(51), max_columns=50)
    assert isinstance(caught.value, CsvFormatError)
    assert caught.value.file_name == "Leads.csv"
    assert "'Leads.csv'" in str(caught.value)


def test_commas_inside_quoted_header_names_are_not_columns():
    header = b",".join(b'"Name, %d"' % n for n in range(50)) + b"\r\n"
    [row] = decode_rows(header + b"," * 49 + b"x\r\n", max_columns=50, chunk_size=7)
    assert list(row)[:2] == ["Name, 0", "Name, 1"]


def test_the_default_limit_is_a_few_thousand_columns_and_limits_carry_it_through_the_core():
    header = b",".join(b"col%d" % n for n in range(4096)) + b",RECORD_ID,STATUS,ERRORS\r\n"
    wide = zip_with_zipfile({"Leads.csv": header})
    with pytest.raises(ColumnLimitError, match="4099 columns") as caught:
        list(read_bulk_write_result(chunked(wide, 1 << 16), job_id="J1"))
    assert (caught.value.job_id, caught.value.file_name) == ("J1", "Leads.csv")
    assert UnzipLimits().max_columns == 4096
    loaded = list(read_bulk_write_result(chunked(wide, 1 << 16), job_id="J1", limits=UnzipLimits(max_columns=5000)))
    assert [batch.num_rows for _, batch in loaded] == [0]


def test_a_header_over_the_limit_is_refused_without_reading_the_rest_of_it():
    consumed = 0

    def endless_header() -> Iterator[bytes]:
        nonlocal consumed
        piece = b"name," * 1000
        while True:
            consumed += len(piece)
            yield piece

    with pytest.raises(ColumnLimitError):
        list(iter_csv_batches(endless_header(), file_name="Leads.csv", max_columns=4096))
    assert consumed < 64 * 1024  # the header is refused once it has shown 4097 names, not at 16 MiB


@pytest.mark.parametrize("wide_row", [b"1,2,3,4,5,6,7", b"1,2,3,4,5,6,7,8,9,10,11,12"])
def test_a_row_wider_than_the_header_but_within_the_limit_is_still_a_ragged_row(wide_row):
    data = header_of(6) + b"a,b,c,d,e,f\r\n" + wide_row + b"\r\n"
    with pytest.raises(CsvFormatError, match="fields where the header has 6") as caught:
        decode_rows(data, max_columns=10)
    assert caught.value.row_number == 2


@pytest.mark.parametrize("block_size", [64, 1 << 20])
def test_a_row_over_the_limit_is_named_and_an_earlier_bad_row_still_comes_first(block_size):
    good = b"a,b,c,d,e,f\r\n"
    wide = b",".join([b"x"] * 5000) + b"\r\n"
    with pytest.raises(ColumnLimitError, match="5000 fields where the header has 6") as caught:
        decode_rows(header_of(6) + good * 3 + wide + good, block_size=block_size)
    assert caught.value.row_number == 4
    with pytest.raises(CsvFormatError, match="3 fields where the header has 6") as caught:
        decode_rows(header_of(6) + good + b"a,b,c\r\n" + wide, block_size=block_size)
    assert caught.value.row_number == 2


def test_wide_data_rows_are_refused_before_their_fields_are_materialised():
    """A 6-column header and one data row of 2 million fields (6 MB): the error must come without a
    Python object per field (that cost ~190 MB here). Fresh process, tracemalloc's peak."""
    script = textwrap.dedent(
        """
        import json, tracemalloc
        from airflow_provider_zohobulk.errors import CsvFormatError
        from airflow_provider_zohobulk.stream.decode import iter_csv_batches
        header = b"a,b,c,RECORD_ID,STATUS,ERRORS\\r\\n" + b"1,2,3,4,ADDED,\\r\\n"
        cases = {
            "plain": header + b",".join([b"ab"] * 2_000_000) + b"\\r\\n",
            "quoted": header + b",".join([b'"a"'] * 1_500_000) + b"\\r\\n",
            "unclosed-quote": header + b"ab," * 2_000_000 + b'"never closed\\r\\n',
        }
        found = {}
        for name, data in cases.items():
            tracemalloc.start()
            try:
                for _ in iter_csv_batches([data[i:i + 65536] for i in range(0, len(data), 65536)],
                                          file_name="wide.csv"):
                    pass
                message = None
            except CsvFormatError as exc:
                message = [type(exc).__name__, exc.row_number, str(exc)[:120]]
            found[name] = {"error": message, "peak": tracemalloc.get_traced_memory()[1], "bytes": len(data)}
            tracemalloc.stop()
        print(json.dumps(found))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["plain"]["error"][:2] == ["ColumnLimitError", 2]
    assert "2000000 fields where the header has 6" in found["plain"]["error"][2]
    assert found["quoted"]["error"][:2] == ["ColumnLimitError", 2]
    assert "1500000 fields" in found["quoted"]["error"][2]
    assert found["unclosed-quote"]["error"][:2] == ["CsvFormatError", 2]
    assert "unclosed quote" in found["unclosed-quote"]["error"][2]
    for name, case in found.items():
        assert case["peak"] < 4 * case["bytes"] + (8 << 20), name


# --- a BOM is dropped at the start of the member only ------------------------------------------------


def csv_module_rows(data: bytes) -> list[dict]:
    """The stdlib's reading of the same bytes (``utf-8-sig`` drops one BOM, at the start only)."""
    header, *rows = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), strict=True)
    return [{name: value or None for name, value in zip(header, row, strict=True)} for row in rows if row]


def rows_starting_with_bom(count: int) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["Last_Name", "Email", "RECORD_ID", "STATUS", "ERRORS"])
    for n in range(count):
        first = "\ufeff" * (n % 3) + f"Name {n}"  # no BOM, one, or two, on every row
        writer.writerow([first, f"\ufeffmail{n}@example.com", str(n), "ADDED", ""])
    writer.writerow(["\ufeff", "lone-bom@example.com", "x", "ADDED", ""])
    return b"\xef\xbb\xbf" + out.getvalue().encode()


@pytest.mark.parametrize("block_size", [1, 16, 40, 64, 97, 4096, 1 << 20])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_a_bom_starting_a_later_row_is_data_whatever_the_chunking(block_size, chunk_size):
    data = rows_starting_with_bom(40)
    expected = csv_module_rows(data)
    assert expected[1]["Last_Name"] == "\ufeffName 1" and expected[-1]["Last_Name"] == "\ufeff"
    assert decode_rows(data, block_size=block_size, chunk_size=chunk_size) == expected


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 1000])
def test_only_the_first_of_two_leading_boms_is_dropped(chunk_size):
    for data in (b"\xef\xbb\xbf\xef\xbb\xbfA,B", b"\xef\xbb\xbf\xef\xbb\xbfA,B\r\n1,2\r\n"):
        batch = next(iter_csv_batches(chunked(data, chunk_size), file_name="f.csv"))
        assert batch.schema.names == ["\ufeffA", "B"]
        assert batch.to_pylist() == csv_module_rows(data)


def test_a_bom_right_after_the_header_stays_on_the_first_data_row():
    data = b"\xef\xbb\xbfA,B\r\n\xef\xbb\xbfx,y\r\n"
    for block_size in (1, 1 << 20):
        assert decode_rows(data, block_size=block_size) == [{"A": "\ufeffx", "B": "y"}]
    assert pa.types.is_string(next(iter_csv_batches([data], file_name="f.csv")).schema.field("A").type)
