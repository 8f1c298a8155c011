"""The Bulk Read export's row layout (``bulk_read.read_export_page``): page zips the sandbox serves over real
HTTP and crafted ones, through the same unzip and decode as Bulk Write results."""

from __future__ import annotations

import pyarrow as pa
import pytest
import requests

from airflow_provider_zohobulk.bulk_read import EXPORT_META_COLUMNS, read_export_page
from airflow_provider_zohobulk.errors import (
    CorruptArchiveError,
    CsvFormatError,
    ResultLayoutError,
    ZohoConfigurationError,
)
from airflow_provider_zohobulk.stream.decode import iter_csv_batches
from tests.fixtures.zips import chunked, corrupt_crc_field, zip_with_zipfile
from tests.test_sandbox_bulk_read import LEADS_FIELDS, auth, create, created_id, details, token

PAGE_JOB = "4150868000009000001"


# --- helpers (also used by tests/test_export_sinks.py) ---------------------------------------------------------


def export_pages(zoho_sandbox, module: str = "Leads", *, records: int, per_page: int, seed: int = 0,
                 fields: list[str] | None = None) -> list[tuple[str, int, bytes]]:
    """Every page of one export, ``(job_id, page, zip bytes)``, fetched over HTTP as the operator does: page
    1's job, then the next page's job by ``next_page_token`` while ``more_records``."""
    zoho_sandbox.configure(bulk_read_downloads_per_minute=None, bulk_read_per_page=per_page)
    zoho_sandbox.seed_module(module, records, seed=seed)
    access = token(zoho_sandbox)
    query = {"fields": fields} if fields else {}
    pages, page_token = [], None
    while True:
        job_id = created_id(create(zoho_sandbox, access, module=module, **query,
                                   **({"page_token": page_token} if page_token else {})))
        result = details(zoho_sandbox, access, job_id)["result"]
        body = requests.get(zoho_sandbox.url + result["download_url"], headers=auth(access), timeout=60)
        assert body.status_code == 200, body.text
        pages.append((job_id, result["page"], body.content))
        if not result["more_records"]:
            return pages
        page_token = result["next_page_token"]


def expected_export_rows(zoho_sandbox, module: str = "Leads", *, records: int,
                         fields: list[str] | None = None) -> list[dict]:
    """The module's records as the sandbox's admin API lists them (header -> value, every value text)."""
    listed = zoho_sandbox.client().read_records(module, limit=records, fields=fields)
    return [dict(zip(listed["fields"], record, strict=True)) for record in listed["records"]]


def page_rows(pairs: list[tuple[str, pa.RecordBatch]]) -> list[dict]:
    return [row for _, batch in pairs for row in batch.to_pylist()]


def one_page_zip(csv_text: str, member: str = f"{PAGE_JOB}.csv") -> bytes:
    return zip_with_zipfile({member: csv_text.encode("utf-8")})


def read_crafted(archive: bytes, **kwargs) -> list[tuple[str, pa.RecordBatch]]:
    return list(read_export_page(chunked(archive, 7), job_id=PAGE_JOB, page=kwargs.pop("page", 1), **kwargs))


# --- pages the sandbox serves -----------------------------------------------------------------------------


def test_every_page_of_a_sandbox_export_reads_back_as_the_modules_rows(zoho_sandbox):
    pages = export_pages(zoho_sandbox, records=2500, per_page=1000, seed=7)
    assert [page for _, page, _ in pages] == [1, 2, 3]
    expected = expected_export_rows(zoho_sandbox, records=2500)
    got: list[dict] = []
    for job_id, page, archive in pages:
        pairs = list(read_export_page(chunked(archive, 4096), job_id=job_id, page=page, block_size=16 << 10))
        assert len(pairs) > 1  # small blocks: several batches per page, numbered on across them
        assert {name for name, _ in pairs} == {f"{job_id}.csv"}
        for _, batch in pairs:
            assert batch.schema.names == [*LEADS_FIELDS, *EXPORT_META_COLUMNS]
            assert batch.schema.types == [pa.string()] * (len(LEADS_FIELDS) + 1) + [pa.int64(), pa.int64()]
            assert batch.schema.metadata is None  # the decoder's header metadata stays out of the files
        rows = page_rows(pairs)
        assert [row["_row_number"] for row in rows] == list(range(1, len(rows) + 1))
        assert {(row["_job_id"], row["_page"]) for row in rows} == {(job_id, page)}
        got += [{name: row[name] for name in LEADS_FIELDS} for row in rows]
    assert got == expected
    assert any(value == "" for row in got for value in row.values())  # the sandbox writes empty values...
    assert all(value is not None for row in got for value in row.values())  # ...which stay "", never null


def test_a_page_with_only_a_header_yields_its_columns(zoho_sandbox):
    zoho_sandbox.configure(bulk_read_downloads_per_minute=None)
    zoho_sandbox.seed_module("Leads", 10)
    access = token(zoho_sandbox)
    job_id = created_id(create(zoho_sandbox, access, fields=["Id", "Email"], page=2))  # past the last record
    body = requests.get(zoho_sandbox.url + details(zoho_sandbox, access, job_id)["result"]["download_url"],
                        headers=auth(access), timeout=60).content
    [(name, batch)] = list(read_export_page([body], job_id=job_id, page=2))
    assert (name, batch.num_rows) == (f"{job_id}.csv", 0)
    assert batch.schema.names == ["Id", "Email", *EXPORT_META_COLUMNS]


# --- crafted pages ----------------------------------------------------------------------------------------


def test_empty_cells_are_empty_strings_while_bulk_write_results_keep_nulls():
    text = 'Id,Email,Phone,Description\r\n1,,"","a, ""quoted""\r\nline"\r\n2,x@example.com,5,\r\n'
    rows = page_rows(read_crafted(one_page_zip(text), page=3))
    assert rows == [
        {"Id": "1", "Email": "", "Phone": "", "Description": 'a, "quoted"\r\nline',
         "_job_id": PAGE_JOB, "_page": 3, "_row_number": 1},
        {"Id": "2", "Email": "x@example.com", "Phone": "5", "Description": "",
         "_job_id": PAGE_JOB, "_page": 3, "_row_number": 2},
    ]
    [result_batch] = list(iter_csv_batches([text.encode()], file_name="f.csv"))  # the default is unchanged
    assert result_batch.to_pylist()[0]["Email"] is None and result_batch.to_pylist()[0]["Phone"] is None


def test_a_missing_cell_is_a_ragged_row_naming_the_job_and_row():
    with pytest.raises(CsvFormatError, match="ragged row: 2 fields where the header has 3") as info:
        read_crafted(one_page_zip("Id,Email,Phone\r\n1,a,b\r\n2,c\r\n"))
    assert (info.value.job_id, info.value.file_name, info.value.row_number) == (PAGE_JOB, f"{PAGE_JOB}.csv", 2)


def test_a_page_with_two_csv_files_is_refused():
    archive = zip_with_zipfile({f"{PAGE_JOB}.csv": b"Id\r\n1\r\n", "other.csv": b"Id\r\n2\r\n"})
    with pytest.raises(ResultLayoutError, match=r"page 2 of the export holds more than one CSV file "
                                                rf"\('{PAGE_JOB}.csv', 'other.csv'\)") as info:
        read_crafted(archive, page=2)
    assert info.value.job_id == PAGE_JOB


def test_a_page_without_a_csv_file_is_refused():
    with pytest.raises(ResultLayoutError, match=r"holds no \.csv file: it holds 'readme\.txt'") as info:
        read_crafted(zip_with_zipfile({"readme.txt": b"hello"}))
    assert info.value.job_id == PAGE_JOB


def test_a_column_named_like_a_meta_column_is_refused():
    with pytest.raises(ResultLayoutError, match="column named '_page'"):
        read_crafted(one_page_zip("Id,_page\r\n1,2\r\n"))


def test_a_corrupt_page_is_an_archive_error_after_its_rows():
    archive = zip_with_zipfile({f"{PAGE_JOB}.csv": b"Id,Email\r\n" + b"".join(
        f"{i},user{i}@example.com\r\n".encode() for i in range(5000))})
    seen = 0
    with pytest.raises(CorruptArchiveError) as info:
        for _, batch in read_export_page(chunked(corrupt_crc_field(archive), 1024), job_id=PAGE_JOB, page=1,
                                         block_size=4096):
            seen += batch.num_rows
    assert info.value.job_id == PAGE_JOB
    assert seen > 0  # rows are provisional: the sink's load must be aborted, which load_export_batches does


@pytest.mark.parametrize("page", [0, -1, True, "1"])
def test_a_page_number_must_be_a_positive_integer(page):
    with pytest.raises(ZohoConfigurationError, match="positive integer"):
        list(read_export_page([b""], job_id=PAGE_JOB, page=page))
