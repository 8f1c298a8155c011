"""Bulk Write submission core: rows -> Zoho upload zips (limits, formatting, determinism, errors)."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import requests

from airflow_provider_zohobulk import bulk_write_submit as bws
from airflow_provider_zohobulk.bulk_result import read_bulk_write_result, sequence
from airflow_provider_zohobulk.bulk_write_submit import (
    SubmissionPlan,
    SubmitLimits,
    format_for_zoho,
    input_row_numbers,
    plan_submission,
    write_upload_files,
)
from airflow_provider_zohobulk.errors import SubmissionInputError, ZohoConfigurationError
from airflow_provider_zohobulk.sandbox import results
from tests.helpers import canonical_batch

# --- helpers -------------------------------------------------------------------------------------------


def numbered_table(rows: int) -> pa.Table:
    """``Last_Name`` = ``name-<input row>``, ``Row`` = the 1-based input row: built in Arrow, so the
    order of the rows in every file can be checked."""
    numbers = sequence(rows, 1)
    names = pc.binary_join_element_wise(pa.repeat(pa.scalar("name-"), rows), numbers.cast(pa.string()), "")
    return pa.table({"Last_Name": names, "Row": numbers})


def noisy_table(rows: int, width: int = 64) -> pa.Table:
    """Text that hardly compresses (hex digests), so zipped sizes track CSV sizes."""
    text = [(hashlib.sha256(str(i).encode()).hexdigest() * 4)[:width] for i in range(rows)]
    return pa.table({"Last_Name": text, "Row": list(range(1, rows + 1))})


def uploaded(upload: bws.UploadFile) -> results.UploadedCsv:
    """The file as the sandbox (Zoho's stand-in) reads an upload."""
    with open(upload.path, "rb") as f:
        return results.read_uploaded_zip(f.read())


def plan_for(schema: pa.Schema, **kwargs) -> SubmissionPlan:
    return plan_submission(schema, module=kwargs.pop("module", "Leads"), operation=kwargs.pop("operation", "insert"),
                           **kwargs)


def rendered(array: pa.Array) -> list[str]:
    batch = pa.record_batch({"v": array})
    return format_for_zoho(batch, plan_for(batch.schema)).column(0).to_pylist()


# --- files, limits, determinism --------------------------------------------------------------------------


def test_60000_rows_make_three_files_in_input_order(tmp_path):
    table = numbered_table(60_000)
    plan = plan_for(table.schema)
    files = write_upload_files(table.to_batches(7_000), plan, work_dir=str(tmp_path))

    assert [(f.index, f.rows, f.first_row) for f in files] == [(0, 25_000, 1), (1, 25_000, 25_001), (2, 10_000, 50_001)]
    assert [f.name for f in files] == ["Leads-00001.csv", "Leads-00002.csv", "Leads-00003.csv"]
    assert [os.path.basename(f.path) for f in files] == ["Leads-00001.zip", "Leads-00002.zip", "Leads-00003.zip"]
    for f in files:
        csv_file = uploaded(f)
        assert csv_file.name == f.name
        assert csv_file.header == ["Last_Name", "Row"]
        assert len(csv_file.rows) == f.rows
        assert [int(r[1]) for r in csv_file.rows] == list(range(f.first_row, f.first_row + f.rows))
        assert csv_file.rows[0][0] == f"name-{f.first_row}"
        assert f.zipped_bytes == os.path.getsize(f.path)
        with open(f.path, "rb") as data:
            assert f.sha256 == hashlib.sha256(data.read()).hexdigest()
        with zipfile.ZipFile(f.path) as archive:
            assert f.csv_sha256 == hashlib.sha256(archive.read(f.name)).hexdigest()
            assert [i.filename for i in archive.infolist()] == [f.name]
            assert archive.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
            assert archive.testzip() is None


def test_same_rows_give_the_same_bytes_whatever_the_batching(tmp_path):
    table = numbered_table(30_000)
    plan = plan_for(table.schema)
    first = write_upload_files(table.to_batches(7_000), plan, work_dir=str(tmp_path / "a"))
    again = write_upload_files(table.to_batches(7_000), plan, work_dir=str(tmp_path / "b"))
    rebatched = write_upload_files(table.to_batches(999), plan, work_dir=str(tmp_path / "c"))
    assert [f.sha256 for f in first] == [f.sha256 for f in again] == [f.sha256 for f in rebatched]
    assert [f.csv_sha256 for f in first] == [f.csv_sha256 for f in rebatched]
    assert len(first) == 2
    for a, b in zip(first, again, strict=True):
        with open(a.path, "rb") as one, open(b.path, "rb") as other:
            assert one.read() == other.read()
    # one changed value changes that file's fingerprint, and only that one
    changed = table.set_column(0, "Last_Name", pc.if_else(pc.equal(table["Row"], 29_000), pa.scalar("x"),
                                                          table["Last_Name"]))
    other = write_upload_files(changed.to_batches(7_000), plan, work_dir=str(tmp_path / "d"))
    assert [f.sha256 == g.sha256 for f, g in zip(first, other, strict=True)] == [True, False]
    assert [f.csv_sha256 == g.csv_sha256 for f, g in zip(first, other, strict=True)] == [True, False]


def test_small_zip_limit_cuts_files_that_stay_under_it(tmp_path):
    table = noisy_table(30_000)  # ~2.1 MB of CSV that hardly compresses
    limit = 200_000
    plan = plan_for(table.schema)
    files = write_upload_files(table.to_batches(5_000), plan, work_dir=str(tmp_path),
                               limits=SubmitLimits(max_zipped_bytes=limit))
    assert len(files) > 5
    assert all(f.zipped_bytes <= limit for f in files)
    assert all(f.zipped_bytes > limit // 2 for f in files[:-1])  # cut for size, not needlessly early
    assert sum(f.rows for f in files) == 30_000
    assert [f.first_row for f in files] == [1] + [sum(g.rows for g in files[:i]) + 1 for i in range(1, len(files))]
    rows = [r for f in files for r in uploaded(f).rows]
    assert rows == [[name, str(row)] for name, row in zip(table["Last_Name"].to_pylist(), range(1, 30_001),
                                                        strict=True)]


def test_compressible_files_fill_close_to_the_zip_limit(tmp_path):
    table = numbered_table(400_000)
    limit = 600_000
    files = write_upload_files(table.to_batches(50_000), plan_for(table.schema), work_dir=str(tmp_path),
                               limits=SubmitLimits(max_records=10**9, max_zipped_bytes=limit))
    assert len(files) >= 2
    assert all(f.zipped_bytes <= limit for f in files)
    # the bound never counts on compression, but it is re-checked as the file grows
    assert all(f.zipped_bytes > limit - 80 * 1024 for f in files[:-1])


def test_row_sizes_are_exactly_what_pyarrow_writes():
    batch = pa.record_batch({"a": ['say "hi"', "", None, "x,y\nz", "Zürich 東京"], "b": [1, 2, None, 4, 5]})
    text = format_for_zoho(batch, plan_for(batch.schema))
    assert pc.sum(bws._row_bytes(text)).as_py() == bws._csv_bytes(text).size


def test_limits_must_be_positive():
    with pytest.raises(ZohoConfigurationError, match="max_records"):
        SubmitLimits(max_records=0)
    with pytest.raises(ZohoConfigurationError, match="field_max_chars"):
        SubmitLimits(field_max_chars={"Email": -1})


def test_empty_input_gives_no_files(tmp_path):
    schema = pa.schema([("Last_Name", pa.string())])
    plan = plan_for(schema)
    assert write_upload_files([], plan, work_dir=str(tmp_path)) == []
    assert write_upload_files([pa.RecordBatch.from_pylist([], schema=schema)], plan, work_dir=str(tmp_path)) == []
    assert os.listdir(tmp_path) == []


def test_name_prefix_is_made_safe_for_file_names(tmp_path):
    table = numbered_table(3)
    files = write_upload_files(table.to_batches(), plan_for(table.schema), work_dir=str(tmp_path),
                               name_prefix="../job 7/Leads")
    assert [f.name for f in files] == ["job_7_Leads-00001.csv"]
    assert os.path.dirname(files[0].path) == str(tmp_path)


# --- planning ---------------------------------------------------------------------------------------------


def test_plan_without_mappings_uploads_every_column_by_header():
    schema = pa.schema([("Last_Name", pa.string()), ("Email", pa.string()), ("Age", pa.int32())])
    plan = plan_submission(schema, module="Contacts", operation="UPSERT", find_by="Email")
    assert (plan.operation, plan.module, plan.find_by) == ("upsert", "Contacts", "Email")
    assert plan.source_columns == plan.api_names == ("Last_Name", "Email", "Age")
    assert plan.zoho_field_mappings() is None


def test_plan_with_mappings_uploads_only_mapped_columns_in_mapping_order(tmp_path):
    schema = pa.schema([("surname", pa.string()), ("mail", pa.string()), ("ignored", pa.binary())])
    plan = plan_submission(schema, module="Leads", operation="update", find_by="Email",
                           field_mappings={"Email": "mail", "Last_Name": "surname"})
    assert plan.source_columns == ("mail", "surname")
    assert plan.api_names == ("Email", "Last_Name")
    assert plan.zoho_field_mappings() == [{"api_name": "Email", "index": 0}, {"api_name": "Last_Name", "index": 1}]
    batch = pa.record_batch({"surname": ["Doe"], "mail": ["d@x.io"], "ignored": [b"\x00"]})
    (upload,) = write_upload_files([batch], plan, work_dir=str(tmp_path))
    csv_file = uploaded(upload)
    assert (csv_file.header, csv_file.rows) == (["mail", "surname"], [["d@x.io", "Doe"]])
    # the sandbox resolves the mappings the way Zoho does
    assert results.resolve_mappings(csv_file, plan.zoho_field_mappings()) == ([0, 1], ["Email", "Last_Name"])


def error_of(call, *args, **kwargs) -> SubmissionInputError:
    with pytest.raises(SubmissionInputError) as caught:
        call(*args, **kwargs)
    return caught.value


SCHEMA = pa.schema([("Last_Name", pa.string()), ("Email", pa.string()), ("Company", pa.string())])


@pytest.mark.parametrize(("kwargs", "column", "words"), [
    ({"operation": "delete"}, None, ["'delete'", "insert", "upsert"]),
    ({"operation": "update"}, None, ["update needs find_by"]),
    ({"operation": "upsert"}, None, ["upsert needs find_by"]),
    ({"operation": "upsert", "find_by": "Phone"}, "Phone", ["find_by 'Phone'", "'Email'"]),
    ({"field_mappings": {"Email": "email"}}, "email", ["'email'", "did you mean 'Email'"]),
    ({"field_mappings": {"Email": "Emial"}}, "Emial", ["did you mean 'Email'"]),
    ({"field_mappings": {"Phone": "zzz"}}, "zzz", ["'Phone'", "columns are ['Last_Name', 'Email', 'Company']"]),
    ({"operation": "upsert", "find_by": "Email", "field_mappings": {"Last_Name": "Last_Name"}}, "Email",
     ["find_by 'Email'", "['Last_Name']"]),
    ({"limits": SubmitLimits(max_columns=2)}, None, ["3 columns", "2 Zoho takes"]),
    ({"module": " "}, None, ["module"]),
])
def test_plan_refuses_what_zoho_would_refuse(kwargs, column, words):
    kwargs = {"module": "Leads", "operation": "insert", **kwargs}
    error = error_of(plan_submission, SCHEMA, **kwargs)
    assert error.column == column
    for word in words:
        assert word in str(error)


def test_plan_refuses_duplicate_api_names_and_ambiguous_columns():
    schema = pa.schema([("Email", pa.string()), ("Email", pa.string()), ("Last_Name", pa.string())])
    error = error_of(plan_for, schema)
    assert error.column == "Email" and "more than once" in str(error)
    error = error_of(plan_for, schema, field_mappings={"Email": "Email"})
    assert error.column == "Email" and "2 columns of that name" in str(error)
    # mapping around the duplicate works
    assert plan_for(schema, field_mappings={"Last_Name": "Last_Name"}).source_columns == ("Last_Name",)


@pytest.mark.parametrize("arrow_type", [
    pa.list_(pa.string()), pa.large_list(pa.int64()), pa.struct([("a", pa.string())]),
    pa.map_(pa.string(), pa.string()), pa.binary(), pa.large_binary(), pa.binary(4), pa.duration("s"),
])
def test_plan_refuses_types_zoho_cannot_take(arrow_type):
    schema = pa.schema([("Last_Name", pa.string()), ("Blob", arrow_type)])
    error = error_of(plan_for, schema)
    assert error.column == "Blob"
    assert "column 'Blob'" in str(error) and str(arrow_type) in str(error)


# --- values: validation -------------------------------------------------------------------------------------


def test_too_long_value_names_the_input_row_and_column_and_leaves_no_files(tmp_path):
    table = numbered_table(30_000)
    long_name = pc.if_else(pc.equal(table["Row"], 27_345), pa.scalar("x" * 101), table["Last_Name"])
    table = table.set_column(0, "Last_Name", long_name)
    plan = plan_for(table.schema, field_mappings={"Last_Name": "Last_Name"})
    error = error_of(write_upload_files, table.to_batches(4_000), plan, work_dir=str(tmp_path),
                     limits=SubmitLimits(field_max_chars={"Last_Name": 100}))
    assert (error.row_number, error.column) == (27_345, "Last_Name")
    assert "row 27345" in str(error) and "101 characters" in str(error) and "at most 100" in str(error)
    assert os.listdir(tmp_path) == []  # the 25,000-row file written before the bad row is gone too


def test_field_limits_are_by_zoho_field_and_counted_in_characters(tmp_path):
    batch = pa.record_batch({"mail": ["é" * 100, "b"], "note": ["ü" * 120, None]})
    plan = plan_for(batch.schema, field_mappings={"Email": "mail", "Description": "note"})
    limits = SubmitLimits(max_field_chars=120, field_max_chars={"Email": 100})
    (upload,) = write_upload_files([batch], plan, work_dir=str(tmp_path / "ok"), limits=limits)  # 200 bytes is fine
    assert uploaded(upload).rows[0] == ["é" * 100, "ü" * 120]
    error = error_of(write_upload_files, [batch], plan, work_dir=str(tmp_path / "no"),
                     limits=SubmitLimits(max_field_chars=119, field_max_chars={"Email": 100}))
    assert (error.row_number, error.column) == (1, "note") and "'Description'" in str(error)


def test_nan_is_refused_with_its_row(tmp_path):
    batches = [pa.record_batch({"Amount": [1.0, 2.0]}), pa.record_batch({"Amount": [None, float("nan")]})]
    error = error_of(write_upload_files, batches, plan_for(batches[0].schema), work_dir=str(tmp_path))
    assert (error.row_number, error.column) == (4, "Amount") and "NaN" in str(error)


def test_a_row_too_large_for_any_zip_is_refused(tmp_path):
    batch = pa.record_batch({"Last_Name": ["a", "b" * 20_000], "Note": ["", "c" * 500]})
    error = error_of(write_upload_files, [batch], plan_for(batch.schema), work_dir=str(tmp_path),
                     limits=SubmitLimits(max_zipped_bytes=10_000))
    assert (error.row_number, error.column) == (2, "Last_Name")
    assert "max_zipped_bytes=10000" in str(error)
    assert os.listdir(tmp_path) == []


def test_a_batch_missing_a_planned_column_is_refused(tmp_path):
    plan = plan_for(SCHEMA)
    batch = pa.record_batch({"Last_Name": ["a"], "Email": ["b"]})
    error = error_of(write_upload_files, [batch], plan, work_dir=str(tmp_path))
    assert error.column == "Company" and "lacks" in str(error)


# --- values: rendering --------------------------------------------------------------------------------------


UTC = datetime.timezone.utc


@pytest.mark.parametrize(("array", "expected"), [
    (pa.array(["text", "", None]), ["text", "", ""]),
    (pa.array(["a", None], pa.large_string()), ["a", ""]),
    (pa.array(["a", None], pa.string_view()), ["a", ""]),
    (pa.array([True, False, None]), ["true", "false", ""]),
    (pa.array([0, -7, 2**63 - 1, None], pa.int64()), ["0", "-7", "9223372036854775807", ""]),
    (pa.array([255, None], pa.uint8()), ["255", ""]),
    (pa.array([1.0, 0.1, -2.5, 1e16, 1.2345678901234568e17, 1e-7, 123456.789, None]),
     ["1", "0.1", "-2.5", "10000000000000000", "123456789012345680", "0.0000001", "123456.789", ""]),
    (pa.array([0.1, 1e20, None], pa.float32()), ["0.1", "100000000000000000000", ""]),
    (pa.array([decimal.Decimal("1.50"), decimal.Decimal("-0.01"), None], pa.decimal128(7, 2)), ["1.50", "-0.01", ""]),
    (pa.array([decimal.Decimal("12345678901234567890.1")], pa.decimal256(40, 1)), ["12345678901234567890.1"]),
    (pa.array([datetime.date(2026, 1, 2), None]), ["2026-01-02", ""]),
    (pa.array([datetime.date(1999, 12, 31)], pa.date64()), ["1999-12-31"]),
    (pa.array([datetime.datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC), None], pa.timestamp("us", "UTC")),
     ["2026-01-02T03:04:05+00:00", ""]),
    (pa.array([datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)], pa.timestamp("s", "Asia/Kolkata")),
     ["2026-01-02T08:34:05+05:30"]),
    (pa.array([datetime.datetime(2026, 7, 2, 3, 4, 5, tzinfo=UTC)], pa.timestamp("ms", "America/New_York")),
     ["2026-07-01T23:04:05-04:00"]),
    (pa.array([datetime.datetime(2026, 1, 15, 12, tzinfo=UTC), None, datetime.datetime(2026, 3, 8, 7, tzinfo=UTC),
               datetime.datetime(2026, 3, 8, 6, 59, 59, tzinfo=UTC)], pa.timestamp("s", "America/New_York")),
     ["2026-01-15T07:00:00-05:00", "", "2026-03-08T03:00:00-04:00", "2026-03-08T01:59:59-05:00"]),
    (pa.array([datetime.datetime(1969, 12, 31, 23, 59, 59, 900_000, tzinfo=UTC)], pa.timestamp("ms", "UTC")),
     ["1969-12-31T23:59:59+00:00"]),
    (pa.array([datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)], pa.timestamp("ns", "-03:30")),
     ["2026-01-01T23:34:05-03:30"]),
    (pa.array([datetime.datetime(2026, 1, 2, 3, 4, 5, 500_000), None], pa.timestamp("ms")),
     ["2026-01-02T03:04:05", ""]),
    (pa.array([datetime.datetime(1969, 12, 31, 23, 59, 59, 500_000)], pa.timestamp("us")), ["1969-12-31T23:59:59"]),
    (pa.array([datetime.time(13, 4, 5)], pa.time32("s")), ["13:04:05"]),
    (pa.array(["x", "y", "x", None]).dictionary_encode(), ["x", "y", "x", ""]),
    (pa.array([3, None], pa.int16()).dictionary_encode(), ["3", ""]),
    (pa.nulls(2), ["", ""]),
])
def test_every_arrow_type_renders_as_documented(array, expected):
    assert rendered(array) == expected


TRICKY = ['say "hi"', "a,b", "line1\nline2", "crlf\r\nend", "  padded  ", "semi;colon:pipe|", "Zürich 東京 🚀",
          "", None, '"', "\ufeffbom-looking", "trailing\\"]


def test_quoting_round_trips_through_the_sandbox_parser(tmp_path):
    batch = pa.record_batch({"Last_Name": TRICKY, "Company": list(reversed(TRICKY))})
    (upload,) = write_upload_files([batch], plan_for(batch.schema), work_dir=str(tmp_path))
    csv_file = uploaded(upload)
    as_text = [value or "" for value in TRICKY]
    assert csv_file.rows == [[a, b] for a, b in zip(as_text, reversed(as_text), strict=True)]


def test_a_single_column_of_empty_values_keeps_every_row(tmp_path):
    batch = pa.record_batch({"Last_Name": [None, "", "x", None]})
    (upload,) = write_upload_files([batch], plan_for(batch.schema), work_dir=str(tmp_path))
    assert uploaded(upload).rows == [[""], [""], ["x"], [""]]  # an empty line would be dropped by CSV readers


# --- the result, back to input rows -----------------------------------------------------------------------


def test_input_row_numbers_shifts_row_number_only():
    batch = canonical_batch("J1", "Leads-Leads-00002.csv", [{"source": {"Last_Name": "a"}}, {"status": "SKIPPED"}])
    shifted = input_row_numbers(batch, 25_001)
    assert shifted.column("row_number").to_pylist() == [25_001, 25_002]
    assert shifted.schema == batch.schema
    assert shifted.drop_columns(["row_number"]).equals(batch.drop_columns(["row_number"]))
    assert input_row_numbers(batch, 1).column("row_number").to_pylist() == [1, 2]
    with pytest.raises(SubmissionInputError):
        input_row_numbers(pa.record_batch({"x": [1]}), 3)


def test_upload_to_sandbox_and_join_the_result_to_input_rows(zoho_sandbox, tmp_path):
    """Over real HTTP: upload each file, create its job, download the result and map it back."""
    zoho_sandbox.configure(seeded_failure_share=0)
    rows = 40
    table = pa.table({
        "Last_Name": [f"Name {i}" if i % 7 else None for i in range(1, rows + 1)],  # every 7th: MANDATORY_NOT_FOUND
        "Company": [f"Co, {i}" for i in range(1, rows + 1)],
        "Email": [f"p{i}@example.com" for i in range(1, rows + 1)],
    })
    plan = plan_submission(table.schema, module="Leads", operation="insert",
                           field_mappings={"Last_Name": "Last_Name", "Company": "Company", "Email": "Email"})
    files = write_upload_files(table.to_batches(9), plan, work_dir=str(tmp_path),
                               limits=SubmitLimits(max_records=15))
    assert [(f.first_row, f.rows) for f in files] == [(1, 15), (16, 15), (31, 10)]

    token = requests.post(f"{zoho_sandbox.url}/oauth/v2/token", timeout=10, params={
        "grant_type": "refresh_token", "client_id": "sandbox-client-id", "client_secret": "sandbox-client-secret",
        "refresh_token": "sandbox-refresh-token"}).json()["access_token"]
    auth = {"Authorization": f"Zoho-oauthtoken {token}"}
    joined = {}
    for upload in files:
        with open(upload.path, "rb") as f:
            answer = requests.post(f"{zoho_sandbox.url}/crm/v8/upload", timeout=10,
                                   headers={**auth, "feature": "bulk-write", "X-CRM-ORG": "sandbox-org"},
                                   files={"file": (os.path.basename(upload.path), f, "application/zip")})
        assert answer.status_code == 200, answer.text
        resource = {"type": "data", "module": {"api_name": plan.module}, "file_id": answer.json()["details"]["file_id"],
                    "field_mappings": plan.zoho_field_mappings()}
        created = requests.post(f"{zoho_sandbox.url}/crm/bulk/v8/write", headers=auth, timeout=10,
                                json={"operation": plan.operation, "resource": [resource]})
        assert created.status_code == 201, created.text
        job_id = created.json()["details"]["id"]
        details = requests.get(f"{zoho_sandbox.url}/crm/bulk/v8/write/{job_id}", headers=auth, timeout=10).json()
        result = requests.get(details["result"]["download_url"], headers=auth, timeout=10).content
        for _, batch in read_bulk_write_result([result], job_id=job_id):
            for row in input_row_numbers(batch, upload.first_row).to_pylist():
                joined[row["row_number"]] = (row["status"], row["source"]["Company"])
    assert sorted(joined) == list(range(1, rows + 1))
    for number, (status, company) in joined.items():
        assert company == f"Co, {number}"
        assert status == ("SKIPPED" if number % 7 == 0 else "ADDED")


# --- memory -------------------------------------------------------------------------------------------------


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile, tracemalloc
    import pyarrow as pa, pyarrow.compute as pc
    from airflow_provider_zohobulk.arrow_values import int_scalar, string_scalar
    from airflow_provider_zohobulk.bulk_result import sequence
    from airflow_provider_zohobulk.bulk_write_submit import plan_submission, write_upload_files

    rows, size = int(sys.argv[1]), 10_000
    def batches():  # generated as they are consumed, in Arrow (arrow_values: no pandas import)
        for start in range(1, rows + 1, size):
            n = sequence(min(size, rows - start + 1), start)
            text = n.cast(pa.string())
            yield pa.record_batch({
                "Last_Name": pc.binary_join_element_wise(string_scalar("Name "), text, string_scalar("")),
                "Email": pc.binary_join_element_wise(string_scalar("p"), text, string_scalar("@example.com"),
                                                     string_scalar("")),
                "Amount": pc.divide(n.cast(pa.float64()), int_scalar(8).cast(pa.float64())),
                "Seen": pc.multiply(n, int_scalar(997)).cast(pa.timestamp("s", "Europe/Paris")),
            })
    tracemalloc.start()
    first = next(batches())
    plan = plan_submission(first.schema, module="Leads", operation="insert")
    with tempfile.TemporaryDirectory() as work_dir:
        files = write_upload_files(batches(), plan, work_dir=work_dir)
    print(json.dumps({"rows": sum(f.rows for f in files), "files": len(files),
                      "arrow_peak": pa.default_memory_pool().max_memory(),
                      "python_peak": tracemalloc.get_traced_memory()[1],
                      "pandas": "pandas" in sys.modules}))
""")


def measure(rows: int) -> dict:
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(rows)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_memory_does_not_grow_with_the_input():
    small, large = measure(50_000), measure(500_000)
    assert (small["rows"], large["rows"]) == (50_000, 500_000)
    assert large["files"] == 20
    assert not small["pandas"] and not large["pandas"]  # no Python object was converted to Arrow
    # ten times the rows (~45 MB of CSV): the same peak (~3 MB), give or take a batch (~1 MB of text)
    assert large["arrow_peak"] < small["arrow_peak"] * 1.25 + (1 << 20)
    assert large["python_peak"] < small["python_peak"] * 1.25 + (1 << 20)
    assert large["arrow_peak"] < 16 << 20


def test_zip_bytes_are_a_single_plain_deflated_member(tmp_path):
    table = numbered_table(10)
    (upload,) = write_upload_files(table.to_batches(), plan_for(table.schema), work_dir=str(tmp_path))
    with zipfile.ZipFile(upload.path) as archive:
        (info,) = archive.infolist()
        assert info.date_time == bws.ZIP_DATE_TIME
        assert info.flag_bits & 0x1 == 0  # not encrypted
        text = archive.read(info).decode("utf-8")
    assert text.startswith('"Last_Name","Row"\n"name-1","1"\n')
    assert io.StringIO(text).read().count("\n") == 11
