"""Bulk Read exports into the sinks (``open_export``): multi-page exports the sandbox serves over HTTP into
local Parquet/CSV/JSON Lines, S3 (moto) and DuckDB (replace, merge, new fields), and a corrupt page 3 of 4
that leaves every destination exactly as it was."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import requests

from airflow_provider_zohobulk.bulk_read import EXPORT_META_COLUMNS, export_schema, read_export_page
from airflow_provider_zohobulk.errors import CorruptArchiveError, SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks import ExportLoad, ResultSink, load_export_batches
from airflow_provider_zohobulk.sinks.duckdb import DuckDBSink
from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink
from tests.fixtures.remote_stores import S3Store
from tests.fixtures.s3 import S3Server
from tests.fixtures.zips import chunked
from tests.test_bulk_read_core import expected_export_rows, export_pages
from tests.test_sandbox_bulk_read import LEADS_FIELDS, auth, details, token

META = list(EXPORT_META_COLUMNS)


# --- helpers ---------------------------------------------------------------------------------------------------


def export_batches(pages: list[tuple[str, int, bytes]], module: str = "Leads"):
    """Each page through the core, named for the sink as the operator names it (``Leads-00001.csv``)."""
    for job_id, page, archive in pages:
        for _, batch in read_export_page(chunked(archive, 1 << 16), job_id=job_id, page=page, block_size=64 << 10):
            yield f"{module}-{page:05d}.csv", batch


def load_export(sink: ResultSink, pages: list[tuple[str, int, bytes]], write_mode: str = "replace",
                module: str = "Leads") -> list[str]:
    return load_export_batches(sink, ExportLoad(module, pages[0][0], write_mode), export_batches(pages, module))


def sandbox_export(zoho_sandbox, *, records: int, per_page: int = 1000, seed: int = 0, fields=None,
                   corrupt_page: int | None = None) -> list[tuple[str, int, bytes]]:
    """An export's pages; ``corrupt_page``: that page's zip comes with a CRC error (the sandbox's fault)."""
    pages = export_pages(zoho_sandbox, records=records, per_page=per_page, seed=seed, fields=fields)
    if corrupt_page is not None:
        zoho_sandbox.add_fault("corrupt_zip")
        job_id, page, _ = pages[corrupt_page - 1]
        access = token(zoho_sandbox)
        corrupt = requests.get(zoho_sandbox.url + details(zoho_sandbox, access, job_id)["result"]["download_url"],
                               headers=auth(access), timeout=60).content
        pages[corrupt_page - 1] = (job_id, page, corrupt)
    return pages


def page_rows(pages: list[tuple[str, int, bytes]]) -> list[dict]:
    return [row for _, batch in export_batches(pages) for row in batch.to_pylist()]


def files_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def table_snapshot(database: Path, table: str = "leads") -> tuple | None:
    """The table's columns and every row (sorted), or None when there is no table."""
    with duckdb.connect(str(database), read_only=True) as connection:
        if not connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0]:
            return None
        columns = connection.execute(f'DESCRIBE "{table}"').fetchall()
        return columns, connection.execute(f'SELECT * FROM "{table}" ORDER BY ALL').fetchall()


def table_rows(database: Path, table: str = "leads", *, exclude: tuple[str, ...] = ("_loaded_at",)) -> list[dict]:
    with duckdb.connect(str(database), read_only=True) as connection:
        result = connection.execute(f'SELECT * EXCLUDE ({", ".join(exclude)}) FROM "{table}" ORDER BY "Id", _page')
        names = [column[0] for column in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def without(rows: list[dict], *names: str) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in names} for row in rows]


@pytest.fixture
def four_pages(zoho_sandbox):
    """3,500 Leads in pages of 1,000: pages 1-3 full, page 4 half."""
    return sandbox_export(zoho_sandbox, records=3500, seed=1)


# --- the interface -----------------------------------------------------------------------------------------


def test_export_load_checks_its_write_mode_and_names():
    assert ExportLoad("Leads", "1") == ExportLoad("Leads", "1", "replace", "Id")
    with pytest.raises(SinkConfigurationError, match="write_mode 'upsert' is not one of 'replace', 'merge'"):
        ExportLoad("Leads", "1", "upsert")
    with pytest.raises(SinkConfigurationError, match=r"ExportLoad\.key must be a non-empty string"):
        ExportLoad("Leads", "1", "merge", key=" ")


def test_a_custom_sink_without_exports_says_so():
    class ResultsOnly(ResultSink):
        def open(self, job_id): ...
        def write(self, file_name, batch): ...
        def commit(self): return []
        def abort(self): ...
        asset_uri = "file:///x"

    with pytest.raises(SinkConfigurationError, match="ResultsOnly does not load Bulk Read exports"):
        load_export_batches(ResultsOnly(), ExportLoad("Leads", "1"), [])


def export_batch(rows: list[dict], columns: list[str], *, job_id: str = "J1", page: int = 1,
                 first_row: int = 1) -> pa.RecordBatch:
    data = {name: [row.get(name) for row in rows] for name in columns}
    data |= {"_job_id": [job_id] * len(rows), "_page": [page] * len(rows),
             "_row_number": list(range(first_row, first_row + len(rows)))}
    return pa.RecordBatch.from_pydict(data, schema=export_schema(tuple(columns)))


def test_a_page_repeating_its_rows_is_refused_and_nothing_is_written(tmp_path: Path):
    batch = export_batch([{"Id": "1"}, {"Id": "2"}], ["Id"])
    with pytest.raises(SinkError, match=r"got rows 1\.\.2 of 'Leads-00001.csv' where row 3 was due"):
        load_export_batches(ObjectStorageSink(str(tmp_path / "{file}.csv")), ExportLoad("Leads", "J1"),
                            [("Leads-00001.csv", batch), ("Leads-00001.csv", batch)])
    assert files_snapshot(tmp_path) == {}


@pytest.mark.parametrize("sink_kind", ["files", "duckdb"])
def test_a_batch_without_the_export_layout_is_refused(tmp_path: Path, sink_kind: str):
    sink = (ObjectStorageSink(str(tmp_path / "{file}.csv")) if sink_kind == "files"
            else DuckDBSink(str(tmp_path / "x.duckdb"), "leads"))
    wrong = pa.record_batch({"Id": pa.array(["1"]), "_job_id": pa.array(["J"]), "_page": pa.array([1]),
                             "_row_number": pa.array([1], pa.int32())})
    with pytest.raises(SinkError, match=r"not a Bulk Read export page: _job_id must be a string column and _page, "
                                        "_row_number int64 columns"):
        load_export_batches(sink, ExportLoad("Leads", "J1"), [("Leads-00001.csv", wrong)])
    assert files_snapshot(tmp_path) == {}


# --- object storage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl.gz"])
def test_a_multi_page_export_into_local_files_one_per_page(tmp_path: Path, zoho_sandbox, four_pages, suffix: str):
    written = load_export(ObjectStorageSink(str(tmp_path / "Leads" / f"{{file}}{suffix}")), four_pages)
    names = [f"Leads-{page:05d}{suffix}" for page in (1, 2, 3, 4)]
    assert written == [str(tmp_path / "Leads" / name) for name in names]
    assert sorted(files_snapshot(tmp_path)) == [f"Leads/{name}" for name in names]
    expected = page_rows(four_pages)
    got: list[dict] = []
    for name in names:
        data = (tmp_path / "Leads" / name).read_bytes()
        if suffix == ".parquet":
            table = pq.read_table(io.BytesIO(data))
            assert table.column_names == [*LEADS_FIELDS, *META]  # one column per field, no canonical layout
            assert table.schema.types == [pa.string()] * (len(LEADS_FIELDS) + 1) + [pa.int64(), pa.int64()]
            got += table.to_pylist()
        elif suffix == ".csv":
            table = pa_csv.read_csv(io.BytesIO(data), convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in [*LEADS_FIELDS, "_job_id"]},
                strings_can_be_null=True, quoted_strings_can_be_null=False),
                parse_options=pa_csv.ParseOptions(newlines_in_values=True))
            assert table.column_names == [*LEADS_FIELDS, *META]
            got += table.to_pylist()
        else:
            import gzip

            lines = [json.loads(line) for line in gzip.decompress(data).decode().splitlines()]
            assert list(lines[0]) == [*LEADS_FIELDS, *META]
            got += lines
    assert got == expected
    assert [row[name] for row in got for name in LEADS_FIELDS].count("") > 0  # empty cells stay "" (not null)
    assert without(got, *META) == expected_export_rows(zoho_sandbox, records=3500)


def test_parquet_dictionaries_only_for_columns_that_repeat(tmp_path: Path):
    """Unique values (ids, e-mails) are hashed for nothing in a dictionary: only repeated ones get one,
    judged on the file's first batch with rows; a row-less first batch does not decide it, and every
    value reads back as written."""
    rows = [{"Id": str(4150868000000000000 + i), "Email": f"u{i}@example.com", "Lead_Status": ["New", "Junk"][i % 2],
             "City": "Lagos" if i % 3 else ""} for i in range(300)]
    columns = ["Id", "Email", "Lead_Status", "City"]
    batches = [("Leads-00001.csv", export_batch([], columns)), ("Leads-00001.csv", export_batch(rows[:200], columns)),
               ("Leads-00001.csv", export_batch(rows[200:], columns, first_row=201))]
    load_export_batches(ObjectStorageSink(str(tmp_path / "{file}.parquet")), ExportLoad("Leads", "J1"), batches)
    parquet = pq.ParquetFile(tmp_path / "Leads-00001.parquet")
    encodings = {parquet.metadata.row_group(0).column(index).path_in_schema:
                 parquet.metadata.row_group(0).column(index).encodings for index in range(parquet.metadata.num_columns)}
    dictionary = {name for name, used in encodings.items() if any("DICTIONARY" in encoding for encoding in used)}
    assert dictionary == {"Lead_Status", "City", "_job_id", "_page"}
    assert parquet.read().to_pylist() == [{**row, "_job_id": "J1", "_page": 1, "_row_number": number}
                                          for number, row in enumerate(rows, 1)]


def test_a_parquet_page_without_rows_keeps_its_columns(tmp_path: Path):
    load_export_batches(ObjectStorageSink(str(tmp_path / "{file}.parquet")), ExportLoad("Leads", "J1"),
                        [("Leads-00001.csv", export_batch([], ["Id", "Email"]))])
    table = pq.read_table(tmp_path / "Leads-00001.parquet")
    assert table.num_rows == 0 and table.schema.names == ["Id", "Email", *META]


def test_several_pages_need_the_file_placeholder(tmp_path: Path, four_pages):
    with pytest.raises(SinkConfigurationError, match=r"the export has several pages \('Leads-00001.csv', "
                                                     r"'Leads-00002.csv'\) .* put \{file\} in the URI"):
        load_export(ObjectStorageSink(str(tmp_path / "leads.parquet")), four_pages)
    assert files_snapshot(tmp_path) == {}


def test_a_one_page_export_fits_one_named_object(tmp_path: Path, zoho_sandbox):
    pages = sandbox_export(zoho_sandbox, records=40, fields=["Id", "Email"])
    assert load_export(ObjectStorageSink(str(tmp_path / "leads.csv")), pages) == [str(tmp_path / "leads.csv")]
    header = (tmp_path / "leads.csv").read_text().splitlines()[0]
    assert header == '"Id","Email","_job_id","_page","_row_number"'


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_corrupt_page_3_of_4_leaves_local_files_as_they_were(tmp_path: Path, zoho_sandbox, suffix: str):
    uri = str(tmp_path / "Leads" / f"{{file}}{suffix}")
    load_export(ObjectStorageSink(uri), sandbox_export(zoho_sandbox, records=2500, seed=1))  # an earlier run
    before = files_snapshot(tmp_path)
    assert len(before) == 3
    broken = sandbox_export(zoho_sandbox, records=3500, seed=2, corrupt_page=3)
    with pytest.raises(CorruptArchiveError) as caught:
        load_export(ObjectStorageSink(uri), broken)
    assert caught.value.job_id == broken[2][0]
    assert files_snapshot(tmp_path) == before  # no page 1 or 2 of the new run, no temporary file


@pytest.mark.s3
def test_a_multi_page_export_into_s3_and_a_failed_one_changes_nothing(moto_s3: S3Server, zoho_sandbox, four_pages):
    store = S3Store(moto_s3)
    bucket = store.new_bucket("export")
    sink = store.sink(bucket, "zoho/Leads/{file}.parquet")
    written = load_export(sink, four_pages)
    names = [f"zoho/Leads/Leads-{page:05d}.parquet" for page in (1, 2, 3, 4)]
    assert written == [f"s3://{bucket}/{name}" for name in names]
    assert store.names(bucket) == names
    assert [row for name in names for row in pq.read_table(io.BytesIO(store.get_bytes(bucket, name))).to_pylist()] \
        == page_rows(four_pages)

    before = {name: store.get_bytes(bucket, name) for name in names}
    broken = sandbox_export(zoho_sandbox, records=3500, seed=2, corrupt_page=3)
    with pytest.raises(CorruptArchiveError):
        load_export(store.sink(bucket, "zoho/Leads/{file}.parquet"), broken)
    assert {name: store.get_bytes(bucket, name) for name in store.names(bucket)} == before
    assert store.unfinished(bucket) == {}  # the multipart uploads of pages 1-3 were aborted


# --- DuckDB --------------------------------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


def test_replace_creates_the_table_with_one_text_column_per_field(database: Path, zoho_sandbox, four_pages):
    assert load_export(DuckDBSink(str(database), "leads"), four_pages) == [DuckDBSink(str(database), "leads").asset_uri]
    columns, _ = table_snapshot(database)
    assert [(name, kind) for name, kind, *_ in columns] == [
        *((name, "VARCHAR") for name in LEADS_FIELDS),
        ("_job_id", "VARCHAR"), ("_page", "BIGINT"), ("_row_number", "BIGINT"),
        ("_loaded_at", "TIMESTAMP WITH TIME ZONE")]
    assert table_rows(database) == page_rows(four_pages)
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("SELECT count(DISTINCT _loaded_at), count(DISTINCT _job_id) FROM leads").fetchone() \
            == (1, 4)


def test_replace_swaps_the_whole_table_and_views_survive(database: Path, zoho_sandbox, four_pages):
    sink = DuckDBSink(str(database), "leads")
    load_export(sink, four_pages)
    with duckdb.connect(str(database)) as connection:
        connection.execute("CREATE VIEW lead_ids AS SELECT \"Id\" FROM leads")
    smaller = sandbox_export(zoho_sandbox, records=1500, seed=9)
    load_export(sink, smaller)
    assert table_rows(database) == page_rows(smaller)
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM lead_ids").fetchone() == (1500,)


def test_merge_inserts_new_ids_updates_existing_and_is_idempotent(database: Path, zoho_sandbox):
    sink = DuckDBSink(str(database), "leads")
    first = sandbox_export(zoho_sandbox, records=2500, seed=1)
    load_export(sink, first, "merge")  # into no table: created
    assert table_rows(database) == page_rows(first)

    changed = sandbox_export(zoho_sandbox, records=3500, seed=2)  # ids 1-2500 again, changed; 2501-3500 new
    load_export(sink, changed, "merge")
    merged = table_rows(database)
    assert len(merged) == 3500 and merged == page_rows(changed)
    assert without(merged[:2500], *META) != without(page_rows(first), *META)  # the seed changed the values
    load_export(sink, changed, "merge")
    assert table_rows(database) == merged  # the same export merged again: the same table

    fewer = sandbox_export(zoho_sandbox, records=1200, seed=3)
    load_export(sink, fewer, "merge")
    rows = {row["Id"]: row for row in table_rows(database)}
    updated = page_rows(fewer)
    assert len(rows) == 3500
    assert [rows[row["Id"]] for row in updated] == updated
    untouched = merged[len(updated):]  # ids in order: the first 1,200 were merged again
    assert [rows[row["Id"]] for row in untouched] == untouched and len(untouched) == 2300


def test_a_new_field_becomes_a_column_and_older_rows_hold_null(database: Path, zoho_sandbox):
    sink = DuckDBSink(str(database), "leads")
    load_export(sink, sandbox_export(zoho_sandbox, records=1500, fields=["Id", "Last_Name"]), "merge")
    wider = sandbox_export(zoho_sandbox, records=500, seed=4, fields=["Id", "Last_Name", "Email"])
    load_export(sink, wider, "merge")
    columns, _ = table_snapshot(database)
    assert [name for name, *_ in columns] == ["Id", "Last_Name", *META, "_loaded_at", "Email"]
    rows = table_rows(database)
    assert len(rows) == 1500
    assert [row["Email"] for row in rows[:500]] == [row["Email"] for row in page_rows(wider)]
    assert {row["Email"] for row in rows[500:]} == {None}  # not exported this time: null, never ""


def test_pages_of_one_run_may_differ_in_their_fields(database: Path):
    pages = [("Leads-00001.csv", export_batch([{"Id": "1", "A": "a"}], ["Id", "A"], page=1)),
             ("Leads-00002.csv", export_batch([{"Id": "2", "A": "", "B": "b"}], ["Id", "A", "B"], page=2))]
    load_export_batches(DuckDBSink(str(database), "leads"), ExportLoad("Leads", "J1"), pages)
    assert table_rows(database) == [{"Id": "1", "A": "a", "_job_id": "J1", "_page": 1, "_row_number": 1, "B": None},
                                    {"Id": "2", "A": "", "_job_id": "J1", "_page": 2, "_row_number": 1, "B": "b"}]


@pytest.mark.parametrize("write_mode", ["replace", "merge"])
@pytest.mark.parametrize("existing", [True, False])
def test_a_corrupt_page_3_of_4_leaves_the_table_as_it_was(database: Path, zoho_sandbox, write_mode: str,
                                                          existing: bool):
    if existing:
        load_export(DuckDBSink(str(database), "leads"), sandbox_export(zoho_sandbox, records=1500, seed=1))
        with duckdb.connect(str(database)) as connection:
            connection.execute("CREATE TABLE other (x INTEGER)")
    before = table_snapshot(database) if existing else None
    broken = sandbox_export(zoho_sandbox, records=3500, seed=2, fields=["Id", "Email", "Phone", "Description"],
                            corrupt_page=3)  # a field the table lacks, too: its ALTER is rolled back
    with pytest.raises(CorruptArchiveError):
        load_export(DuckDBSink(str(database), "leads"), broken, write_mode)
    if existing:
        assert table_snapshot(database) == before
    else:
        assert not database.exists() and not os.path.exists(f"{database}.wal")


def test_merge_needs_its_key_in_every_row(database: Path, zoho_sandbox):
    sink = DuckDBSink(str(database), "leads")
    load_export(sink, sandbox_export(zoho_sandbox, records=100, fields=["Id", "Email"]))
    before = table_snapshot(database)
    without_key = [("Leads-00001.csv", export_batch([{"Email": "a@example.com"}], ["Email"]))]
    with pytest.raises(SinkConfigurationError, match=r"the merge key 'Id' is not a column of this page") as refused:
        load_export_batches(sink, ExportLoad("Leads", "J1", "merge"), without_key)
    assert refused.value.file_name == "Leads-00001.csv"
    empty_key = [("Leads-00001.csv", export_batch([{"Id": "7"}, {"Id": ""}], ["Id", "Email"]))]
    with pytest.raises(SinkError, match=r"cannot merge a record whose merge key 'Id' is empty") as caught:
        load_export_batches(sink, ExportLoad("Leads", "J1", "merge"), empty_key)
    assert (caught.value.file_name, caught.value.row_number) == ("Leads-00001.csv", 2)
    assert table_snapshot(database) == before


def test_a_table_that_is_not_an_export_table_is_refused(database: Path):
    with duckdb.connect(str(database)) as connection:
        connection.execute("CREATE TABLE leads (\"Id\" VARCHAR, _page INTEGER)")
    before = table_snapshot(database)
    with pytest.raises(SinkError, match=r"is not a Bulk Read export table .* it has _job_id missing, _page INTEGER"):
        load_export_batches(DuckDBSink(str(database), "leads"), ExportLoad("Leads", "J1"),
                            [("Leads-00001.csv", export_batch([{"Id": "1"}], ["Id"]))])
    assert table_snapshot(database) == before
