"""bulk_result.py: ERRORS grammar, STATUS normalisation, canonical batches, the whole core pipeline."""

from __future__ import annotations

import csv as csv_module
import io
import json
import os
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import zipfile
from collections import Counter

import pyarrow as pa
import pytest

from airflow_provider_zohobulk.bulk_result import (
    KNOWN_ERROR_CODES,
    ResultStats,
    canonical_schema,
    normalise_status,
    parse_errors,
    read_bulk_write_result,
    source_type,
    to_canonical,
)
from airflow_provider_zohobulk.errors import (
    ArchiveLimitError,
    CorruptArchiveError,
    CsvFormatError,
    NotAZipError,
    ResultLayoutError,
    TruncatedArchiveError,
    ZohoBulkError,
)
from airflow_provider_zohobulk.sandbox.results import sample_leads_csv
from airflow_provider_zohobulk.stream.decode import iter_csv_batches
from airflow_provider_zohobulk.stream.unzip import UnzipLimits
from tests.fixtures.zips import (
    SAMPLE_RESULT_ROWS,
    chunked,
    corrupt_first_member,
    make_result_csv,
    truncate,
    zip_with_stream_zip,
    zip_with_zipfile,
)
from tests.helpers import canonical_batch

# --- ERRORS grammar -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, []),
        ("", []),
        ("   ", []),
        ("MANDATORY_NOT_FOUND-Company,Last_Name:DUPLICATE_DATA-Email",
         [("MANDATORY_NOT_FOUND", ["Company", "Last_Name"]), ("DUPLICATE_DATA", ["Email"])]),
        ("INVALID_DATA-Lead-Source", [("INVALID_DATA", ["Lead-Source"])]),
        ("MANDATORY_NOT_FOUND-Lead-Source,Last_Name", [("MANDATORY_NOT_FOUND", ["Lead-Source", "Last_Name"])]),
        ("NEW_ZOHO_CODE-Email:INVALID_DATA-Phone", [("NEW_ZOHO_CODE", ["Email"]), ("INVALID_DATA", ["Phone"])]),
        ("LIMIT_EXCEEDED", [("LIMIT_EXCEEDED", [])]),
        ("CANNOT_PROCESS:BLOCKED_RECORD-Owner", [("CANNOT_PROCESS", []), ("BLOCKED_RECORD", ["Owner"])]),
        ("INVALID_DATA-Time:stamp,Email", [("INVALID_DATA", ["Time:stamp", "Email"])]),
        ("INVALID_DATA-Note : DUPLICATE_DATA-Email", [("INVALID_DATA", ["Note"]), ("DUPLICATE_DATA", ["Email"])]),
        ("MANDATORY_NOT_FOUND-", [("MANDATORY_NOT_FOUND", [])]),
        ("something went wrong", [("something went wrong", [])]),
    ],
    ids=["none", "empty", "blank", "reference-example", "hyphen-header", "hyphen-and-more", "unknown-code",
         "no-columns", "two-codes-first-bare", "colon-in-header", "spaces-around-colon", "dangling-dash",
         "free-text"],
)
def test_parse_errors(text, expected):
    assert parse_errors(text) == [{"code": code, "columns": columns} for code, columns in expected]


def test_every_known_code_parses_with_hyphenated_columns():
    assert len(KNOWN_ERROR_CODES) == 8
    for code in KNOWN_ERROR_CODES:
        assert parse_errors(f"{code}-Lead-Source,A-B-C") == [{"code": code, "columns": ["Lead-Source", "A-B-C"]}]


def test_parse_errors_returns_fresh_lists_despite_caching():
    first = parse_errors("DUPLICATE_DATA-Email")
    first[0]["columns"].append("mutated")
    assert parse_errors("DUPLICATE_DATA-Email") == [{"code": "DUPLICATE_DATA", "columns": ["Email"]}]


@pytest.mark.parametrize(("value", "expected"),
                         [(" added ", "ADDED"), ("Updated", "UPDATED"), ("weird", "WEIRD"), ("", None), (None, None)])
def test_normalise_status(value, expected):
    assert normalise_status(value) == expected


# --- canonical batches ----------------------------------------------------------------------------


def text_batch(columns: dict[str, list]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({name: pa.array(values, pa.string()) for name, values in columns.items()})


def pairs(source: dict) -> list[tuple[str, str | None]]:
    """A row's ``source`` as (header, value) pairs in its order: the struct's fields keep the header's."""
    return list(source.items())


def test_columns_are_found_by_name_in_any_case_and_order():
    batch = text_batch({
        "errors ": ["INVALID_DATA-Email", None],
        "\ufeffStatus": [" added", "skipped "],
        "Email": ["a@x.com", None],
        "record_id": ["0041508680000053500", None],
        "Last_Name": ["Smith", "Jones"],
    })
    canonical = to_canonical(batch, job_id="J1", file_name="Leads.csv", first_row_number=41)
    assert canonical.schema == canonical_schema(source_type(("Email", "Last_Name")))
    assert canonical.to_pylist() == [
        {"job_id": "J1", "file_name": "Leads.csv", "row_number": 41, "record_id": "0041508680000053500",
         "status": "ADDED", "errors": [{"code": "INVALID_DATA", "columns": ["Email"]}],
         "errors_raw": "INVALID_DATA-Email", "source": {"Email": "a@x.com", "Last_Name": "Smith"}},
        {"job_id": "J1", "file_name": "Leads.csv", "row_number": 42, "record_id": None,
         "status": "SKIPPED", "errors": [], "errors_raw": None, "source": {"Email": None, "Last_Name": "Jones"}},
    ]


def test_zoho_status_wins_over_a_mapped_status_column():
    batch = text_batch({"Status": ["Contacted"], "RECORD_ID": ["1"], "STATUS": ["ADDED"], "ERRORS": [None]})
    row = to_canonical(batch, job_id="J", file_name="f.csv", first_row_number=1).to_pylist()[0]
    assert row["status"] == "ADDED"
    assert pairs(row["source"]) == [("Status", "Contacted")]


def test_zoho_columns_win_over_mapped_columns_of_the_very_same_name():
    """Mapped headers spelt exactly STATUS and RECORD_ID: Zoho's are the adjacent RECORD_ID, STATUS,
    ERRORS at the end, and the mapped ones keep their names in ``source``."""
    csv = (b"Last_Name,STATUS,RECORD_ID,RECORD_ID,STATUS,ERRORS\r\n"
           b"Doe,Active,legacy-7,4150868000000001,added,\r\n")
    [batch] = list(iter_csv_batches([csv], file_name="Leads.csv"))
    row = to_canonical(batch, job_id="J", file_name="Leads.csv", first_row_number=1).to_pylist()[0]
    assert (row["status"], row["record_id"]) == ("ADDED", "4150868000000001")
    assert pairs(row["source"]) == [("Last_Name", "Doe"), ("STATUS", "Active"), ("RECORD_ID", "legacy-7")]


@pytest.mark.parametrize(
    ("header", "zoho_at", "source_names"),
    [
        ("RECORD_ID,STATUS,ERRORS,Last_Name,STATUS", 0, ["Last_Name", "STATUS"]),
        ("Last_Name,STATUS,RECORD_ID,STATUS,ERRORS", 2, ["Last_Name", "STATUS"]),
        ("record_id,Status,errors,ERRORS,Status", 0, ["ERRORS", "Status"]),
        ("STATUS,ERRORS,RECORD_ID,RECORD_ID,STATUS,ERRORS", 3, ["STATUS", "ERRORS", "RECORD_ID"]),
        ("RECORD_ID,STATUS,ERRORS,STATUS,STATUS", 0, ["STATUS", "STATUS_2"]),
    ],
    ids=["zoho-first", "zoho-last", "any-case-zoho-first", "zoho-last-three-namesakes", "two-namesakes"],
)
def test_zoho_columns_are_the_adjacent_triple_and_namesakes_keep_their_names(header, zoho_at, source_names):
    """Security issue #10: with Zoho's columns first, the mapped STATUS (renamed STATUS_2 by the
    decoder, coming last) was taken for Zoho's, and Zoho's went into ``source``."""
    names = header.split(",")
    values = [f"mapped-{n}" for n in range(len(names))]
    values[zoho_at:zoho_at + 3] = ["4150868000000001", "added", "INVALID_DATA-Email"]
    [batch] = list(iter_csv_batches([f"{header}\r\n{','.join(values)}\r\n".encode()], file_name="Leads.csv"))
    row = to_canonical(batch, job_id="J", file_name="Leads.csv", first_row_number=1).to_pylist()[0]
    assert (row["record_id"], row["status"], row["errors_raw"]) == ("4150868000000001", "ADDED", "INVALID_DATA-Email")
    source_at = [n for n in range(len(names)) if not zoho_at <= n < zoho_at + 3]
    assert pairs(row["source"]) == [(name, f"mapped-{n}") for name, n in zip(source_names, source_at, strict=True)]


@pytest.mark.parametrize(
    "header",
    ["RECORD_ID,STATUS,ERRORS,RECORD_ID,STATUS,ERRORS", "STATUS,Last_Name,STATUS,RECORD_ID,ERRORS",
     "Status,STATUS", "RECORD_ID,ERRORS,STATUS,Email,STATUS"],
    ids=["two-triples", "no-triple", "no-triple-short", "triple-out-of-order"],
)
def test_namesakes_without_one_adjacent_triple_are_refused_as_ambiguous(header):
    csv = f"{header}\r\n{','.join('x' * len(header.split(',')))}\r\n".encode()
    archive = zip_with_zipfile({"Leads.csv": csv})
    with pytest.raises(ResultLayoutError, match="cannot tell Zoho's RECORD_ID, STATUS, ERRORS") as caught:
        run(archive)
    assert (caught.value.job_id, caught.value.file_name) == ("4150868000005350003", "Leads.csv")


def sandbox_result_zip(sandbox, csv_bytes: bytes) -> tuple[str, bytes]:
    """A job's result zip from the sandbox, over HTTP as Zoho serves it (token minted, then download)."""
    job_id = sandbox.create_job_from_csv(csv_bytes)
    form = urllib.parse.urlencode({"grant_type": "refresh_token", "client_id": sandbox.client_id,
                                   "client_secret": sandbox.client_secret, "refresh_token": sandbox.refresh_token})
    with urllib.request.urlopen(f"{sandbox.url}/oauth/v2/token", data=form.encode(), timeout=30) as answer:
        token = json.load(answer)["access_token"]
    download = urllib.request.Request(sandbox.job_details(job_id)["result"]["download_url"],
                                      headers={"Authorization": f"Zoho-oauthtoken {token}"})
    with urllib.request.urlopen(download, timeout=30) as answer:
        return job_id, answer.read()


@pytest.mark.parametrize("zoho_columns_first", [False, True], ids=["zoho-last", "zoho-first"])
def test_sandbox_result_with_a_mapped_status_column_loads_zohos_status(zoho_sandbox, zoho_columns_first):
    """The upload has its own STATUS column among the three Zoho echoes back, in both layouts."""
    upload = sample_leads_csv(60, status_column=True)
    zoho_sandbox.configure(seeded_failure_share=0, result_zoho_columns_first=zoho_columns_first)
    job_id, archive = sandbox_result_zip(zoho_sandbox, upload)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        header = opened.read(opened.namelist()[0]).split(b"\r\n", 1)[0]
    assert header == (b"RECORD_ID,STATUS,ERRORS,Last_Name,STATUS,Email" if zoho_columns_first
                      else b"Last_Name,STATUS,Email,RECORD_ID,STATUS,ERRORS")
    rows = [row for _, batch in read_bulk_write_result([archive], job_id=job_id) for row in batch.to_pylist()]
    uploaded = [row for row in csv_module.reader(io.StringIO(upload.decode(), newline="")) if row][1:]
    assert [pairs(row["source"]) for row in rows] == [
        [("Last_Name", last or None), ("STATUS", status or None), ("Email", email or None)]
        for last, status, email, *_ in uploaded]
    counts = zoho_sandbox.job_details(job_id)["resource"][0]["file"]
    assert Counter(row["status"] for row in rows) == {"ADDED": counts["added_count"],
                                                       "SKIPPED": counts["skipped_count"]}
    assert counts["skipped_count"] > 0 and counts["added_count"] > 0
    assert all(row["record_id"].isdigit() for row in rows if row["status"] == "ADDED")


def test_missing_status_column_is_a_layout_error_naming_file_and_columns():
    batch = text_batch({"Last_Name": ["x"], "RECORD_ID": ["1"], "ERRORS": [None]})
    with pytest.raises(ResultLayoutError, match=r"no STATUS column.*\['Last_Name', 'RECORD_ID', 'ERRORS'\]") as caught:
        to_canonical(batch, job_id="J", file_name="Leads.csv", first_row_number=1)
    assert caught.value.file_name == "Leads.csv"


def test_missing_record_id_and_errors_columns_are_tolerated():
    batch = text_batch({"STATUS": ["ADDED", "UNPROCESSED"], "Email": ["a", "b"]})
    rows = to_canonical(batch, job_id="J", file_name="f.csv", first_row_number=1).to_pylist()
    assert [(r["record_id"], r["errors"], r["errors_raw"], r["source"]) for r in rows] == [
        (None, [], None, {"Email": "a"}), (None, [], None, {"Email": "b"})]


def test_zero_rows_and_no_source_columns():
    empty = to_canonical(text_batch({"Email": [], "STATUS": []}), job_id="J", file_name="f.csv", first_row_number=1)
    assert empty.num_rows == 0
    assert empty.schema == canonical_schema(source_type(("Email",)))
    bare = to_canonical(text_batch({"STATUS": ["ADDED", "SKIPPED"]}), job_id="J", file_name="f.csv",
                        first_row_number=7)
    assert bare.schema == canonical_schema(source_type(()))
    assert [(row["row_number"], row["source"]) for row in bare.to_pylist()] == [(7, {}), (8, {})]


def test_source_is_a_struct_of_the_decoded_columns_without_a_copy():
    batch = text_batch({"Email": ["a@x.com", None], "STATUS": ["ADDED", "SKIPPED"], "Last_Name": ["Smith", "Ng"]})
    source = to_canonical(batch, job_id="J", file_name="f.csv", first_row_number=1).column("source")
    assert source.type == pa.struct([("Email", pa.string()), ("Last_Name", pa.string())])
    for field_at, column_at in ((0, 0), (1, 2)):  # the same value buffers: no value was copied
        assert source.field(field_at).buffers()[2].address == batch.column(column_at).buffers()[2].address


def test_same_rows_as_the_shared_test_helper_builds():
    rows = [("Smith", "s@x.com", "Acme, Inc.", "4150868000005350003", "ADDED", ""),
            ("", "d@x.com", "", "", "skipped", "MANDATORY_NOT_FOUND-Company,Last_Name:DUPLICATE_DATA-Email")]
    batch = text_batch({name: [r[i] or None for r in rows] for i, name in
                        enumerate(("Last_Name", "Email", "Company", "RECORD_ID", "STATUS", "ERRORS"))})
    expected = canonical_batch("J", "f.csv", [
        {"record_id": "4150868000005350003", "status": "ADDED",
         "source": {"Last_Name": "Smith", "Email": "s@x.com", "Company": "Acme, Inc."}},
        {"status": "SKIPPED", "errors_raw": rows[1][5],
         "errors": [{"code": "MANDATORY_NOT_FOUND", "columns": ["Company", "Last_Name"]},
                    {"code": "DUPLICATE_DATA", "columns": ["Email"]}],
         "source": {"Last_Name": None, "Email": "d@x.com", "Company": None}},
    ])
    assert to_canonical(batch, job_id="J", file_name="f.csv", first_row_number=1).equals(expected)


# --- the whole pipeline ---------------------------------------------------------------------------


def run(archive: bytes, chunk_size: int = 1000, **kwargs) -> list[tuple[str, pa.RecordBatch]]:
    return list(read_bulk_write_result(chunked(archive, chunk_size), job_id="4150868000005350003", **kwargs))


def test_pipeline_over_several_members_with_different_columns():
    leads = make_result_csv(SAMPLE_RESULT_ROWS * 1000, bom=True)
    contacts = make_result_csv([("Ann", "1", "updated", "")], header=("First_Name", "RECORD_ID", "STATUS", "ERRORS"))
    header_only = make_result_csv([])
    skipped: list[tuple[str, int]] = []
    archive = zip_with_stream_zip({"Leads-bulkwrite.csv": leads, "log.txt": b"hello",
                                   "Contacts-bulkwrite.csv": contacts, "Deals-bulkwrite.csv": header_only})
    results = run(archive, block_size=256, on_skip=lambda name, size: skipped.append((name, size)))
    assert skipped == [("log.txt", 5)]
    names = [name for name, _ in results]
    assert names[0] == "Leads-bulkwrite.csv" and names[-2:] == ["Contacts-bulkwrite.csv", "Deals-bulkwrite.csv"]
    assert names.count("Leads-bulkwrite.csv") > 1  # a block is at least block_size, at most that plus a chunk
    source_columns = {name: tuple(batch.schema.field("source").type.names) for name, batch in results}
    assert source_columns == {"Leads-bulkwrite.csv": ("Last_Name", "Email", "Company"),
                              "Contacts-bulkwrite.csv": ("First_Name",),
                              "Deals-bulkwrite.csv": ("Last_Name", "Email", "Company")}
    assert all(batch.schema == canonical_schema(source_type(source_columns[name])) for name, batch in results)
    leads_rows = [row for name, batch in results if name == "Leads-bulkwrite.csv" for row in batch.to_pylist()]
    assert [row["row_number"] for row in leads_rows] == list(range(1, 4001))
    assert pairs(leads_rows[2]["source"]) == [("Last_Name", 'Quote "q"'), ("Email", "line\nbreak@example.com"),
                                              ("Company", "Zürich ☃")]
    assert leads_rows[2]["record_id"] == "0041508680000053500"
    contacts_rows = [row for name, batch in results if name == "Contacts-bulkwrite.csv" for row in batch.to_pylist()]
    assert contacts_rows == [{"job_id": "4150868000005350003", "file_name": "Contacts-bulkwrite.csv", "row_number": 1,
                              "record_id": "1", "status": "UPDATED", "errors": [], "errors_raw": None,
                              "source": {"First_Name": "Ann"}}]
    assert [batch.num_rows for name, batch in results if name == "Deals-bulkwrite.csv"] == [0]


@pytest.mark.parametrize(
    ("archive", "error", "file_name"),
    [
        (b'{"info": "Forbidden", "x-info": "Link not valid"}', NotAZipError, None),
        (zip_with_zipfile({"Leads.csv": b"Last_Name,RECORD_ID\r\nx,1\r\n"}), ResultLayoutError, "Leads.csv"),
        (zip_with_zipfile({"Leads.csv": make_result_csv([("a", "b")])}), CsvFormatError, "Leads.csv"),
        (zip_with_zipfile({"notes.txt": b"x"}), ResultLayoutError, None),
        (zip_with_stream_zip({"Leads.csv": b"0" * (3 << 20)}), ArchiveLimitError, "Leads.csv"),
    ],
    ids=["not-a-zip", "no-status", "ragged", "no-csv", "bomb"],
)
def test_every_error_carries_the_job_id(archive, error, file_name):
    with pytest.raises(error) as caught:
        run(archive)
    assert caught.value.job_id == "4150868000005350003"
    assert caught.value.file_name == file_name
    assert "job 4150868000005350003" in str(caught.value)


def test_a_csv_error_caused_by_corruption_is_reported_as_the_corrupt_archive():
    data = make_result_csv(SAMPLE_RESULT_ROWS * 200)
    archive = zip_with_zipfile({"Leads.csv": data}, compression="stored")
    broken = corrupt_first_member(archive, offset_in_data=data.index(b"Smith", 100))  # invalid UTF-8 in a row
    with pytest.raises(CorruptArchiveError, match="CRC32") as caught:
        run(broken, block_size=256)  # the bad row is parsed long before the member's end and its CRC
    assert isinstance(caught.value.__cause__, CsvFormatError)
    assert (caught.value.job_id, caught.value.file_name) == ("4150868000005350003", "Leads.csv")


def test_the_corrupt_archive_is_reported_even_when_its_error_was_already_queued():
    """A member small enough for decompression to reach its end (and its CRC error) while the parser is
    still on the first block: the CRC error waits in the read-ahead queue behind the CSV error."""
    data = b"Last_Name,Company,Email,RECORD_ID,STATUS,ERRORS\n" + b"".join(
        b"Doe%07d,Acme,d%07d@example.com,%019d,ADDED,\n" % (i, i, i) for i in range(21_000))  # 1.3 MB
    broken = bytearray(zip_with_zipfile({"Leads.csv": data}, compression="stored"))
    comma = broken.index(b"Doe0005000,") + len(b"Doe0005000")
    broken[comma] = ord(";")  # row 5001 is ragged now, and the member's CRC no longer matches
    for _attempt in range(3):  # the race may go either way; the answer must not
        with pytest.raises(CorruptArchiveError, match="CRC32"):
            list(read_bulk_write_result(chunked(bytes(broken), 1 << 16), job_id="J"))


def test_limits_are_passed_through():
    archive = zip_with_zipfile({"Leads.csv": make_result_csv(SAMPLE_RESULT_ROWS)})
    with pytest.raises(ArchiveLimitError):
        run(archive, limits=UnzipLimits(max_member_bytes=10))


def test_errors_are_zoho_bulk_errors():
    with pytest.raises(ZohoBulkError):
        run(b"")


# --- stats -------------------------------------------------------------------------------------------


def test_result_stats_counts_by_status_and_error_code():
    rows = SAMPLE_RESULT_ROWS * 5 + [("x", "y", "z", "", " ", "")]
    archive = zip_with_stream_zip({"Leads.csv": make_result_csv(rows), "Empty.csv": make_result_csv([])})
    stats = ResultStats()
    for name, batch in run(archive, block_size=128):
        stats.add(name, batch)
    summary = stats.as_dict()
    assert summary == {
        "files": ["Leads.csv", "Empty.csv"],
        "rows": 21,
        "by_status": {"(missing)": 1, "ADDED": 5, "SKIPPED": 5, "UNPROCESSED": 5, "UPDATED": 5},
        "errors_by_code": {"DUPLICATE_DATA": 5, "INVALID_DATA": 5, "MANDATORY_NOT_FOUND": 5},
    }
    assert json.loads(json.dumps(summary)) == summary


# --- concurrency plumbing ---------------------------------------------------------------------------


def readahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zohobulk-readahead" and t.is_alive()]


def test_stopping_early_leaves_no_thread_behind_and_the_next_run_works():
    archive = zip_with_stream_zip({"Leads.csv": make_result_csv(SAMPLE_RESULT_ROWS * 2000)})
    results = read_bulk_write_result(chunked(archive, 4096), job_id="J", block_size=1024)
    name, first = next(results)
    assert (name, first.column("row_number")[0].as_py()) == ("Leads.csv", 1)
    results.close()
    assert readahead_threads() == []
    assert sum(batch.num_rows for _, batch in run(archive)) == 8000
    assert readahead_threads() == []


def test_an_error_in_a_background_stage_arrives_with_its_traceback_and_no_thread_left():
    archive = truncate(zip_with_stream_zip({"Leads.csv": make_result_csv(SAMPLE_RESULT_ROWS * 500)}), 0.5)
    with pytest.raises(TruncatedArchiveError) as caught:
        run(archive, block_size=512)
    assert caught.value.job_id == "4150868000005350003"
    assert any(entry.name == "checked_chunks" for entry in caught.traceback)
    assert readahead_threads() == []


@pytest.mark.parametrize("chosen", [None, "mimalloc", "system"])
def test_lean_memory_pool_unless_the_user_chose_one(chosen):
    """Run in a fresh interpreter: the default pool is process-wide, and Arrow reads the variable once."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    code = ("import pyarrow as pa\n"
            "from airflow_provider_zohobulk.bulk_result import use_lean_memory_pool\n"
            "chosen = use_lean_memory_pool()\n"
            "try:\n    pa.jemalloc_memory_pool()\n    has_jemalloc = True\n"
            "except NotImplementedError:\n    has_jemalloc = False\n"
            "print(chosen, pa.default_memory_pool().backend_name, has_jemalloc)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                            check=True)
    chosen_backend, default_backend, has_jemalloc = result.stdout.split()
    assert chosen_backend == default_backend == (chosen or ("jemalloc" if has_jemalloc == "True" else "system"))
