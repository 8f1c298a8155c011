"""ObjectStorageSink on S3, GCS and Azure Blob: the same promises, checked on each store's real server.

What matters remotely is what a reader sees: the object appears complete at commit or not at all, an
older object survives a failed load, and what the upload staged is either cancelled (S3's multipart
uploads are aborted; they would cost storage until someone did) or, where the store offers no cancel
(GCS sessions, Azure uncommitted blocks), never becomes an object. Each store's own ways of staging
are in ``tests/fixtures/remote_stores.py``; what only one store has is in its own test file.
"""

from __future__ import annotations

import gc
import json

import pytest

from airflow_provider_zohobulk.bulk_result import read_bulk_write_result
from airflow_provider_zohobulk.errors import CorruptArchiveError, SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import load_batches
from tests.fixtures.remote_stores import RemoteStore
from tests.fixtures.zips import SAMPLE_RESULT_ROWS, chunked, corrupt_crc_field, make_result_csv, zip_with_zipfile
from tests.helpers import (
    JOB,
    MEMBER,
    CorruptArchive,
    batches_of,
    canonical_batch,
    expected_rows,
    failing_after,
    sample_rows,
)

PREVIOUS = b"previous load"


@pytest.mark.parametrize("name", ["r/out.parquet", "r/out.csv", "r/out.csv.gz", "r/out.jsonl.zst", "r/out.ndjson"])
def test_round_trip(remote_store: RemoteStore, name: str) -> None:
    bucket = remote_store.new_bucket("round")
    pairs = batches_of(sample_rows(11))
    written = load_batches(remote_store.sink(bucket, name), JOB, pairs)
    assert written == [remote_store.uri(bucket, name)]
    assert remote_store.read_back(bucket, name) == expected_rows(pairs)
    assert remote_store.unfinished(bucket) == {}


def test_large_result_goes_up_in_several_parts(remote_store: RemoteStore) -> None:
    bucket = remote_store.new_bucket("parts")
    pairs = remote_store.batches_for_several_parts()
    load_batches(remote_store.sink(bucket, "big.jsonl", small_parts=True), JOB, pairs)
    assert len(remote_store.get_bytes(bucket, "big.jsonl")) > 2 * remote_store.small_part
    parts = remote_store.part_count(bucket, "big.jsonl")
    assert parts is None or parts >= 3
    assert remote_store.read_back(bucket, "big.jsonl") == expected_rows(pairs)
    assert remote_store.unfinished(bucket) == {}


def test_failure_after_parts_were_sent_publishes_nothing(remote_store: RemoteStore) -> None:
    bucket = remote_store.new_bucket("abort")
    with pytest.raises(CorruptArchive):
        load_batches(remote_store.sink(bucket, "out.csv", small_parts=True), JOB,
                     failing_after(remote_store.batches_for_several_parts(), 3))
    assert remote_store.names(bucket) == []
    leftovers = remote_store.unfinished(bucket)
    if remote_store.keeps_abandoned_parts:  # the parts did reach the server, and stay unfinished
        assert list(leftovers) == ["out.csv"] and leftovers["out.csv"] >= 2 * remote_store.small_part
    else:
        assert leftovers == {}


def test_failure_keeps_the_existing_object_and_a_rerun_replaces_it(remote_store: RemoteStore) -> None:
    bucket = remote_store.new_bucket("keep")
    remote_store.put(bucket, "out.csv", PREVIOUS)
    with pytest.raises(CorruptArchive):
        load_batches(remote_store.sink(bucket, "out.csv", small_parts=True), JOB,
                     failing_after(remote_store.batches_for_several_parts(), 3))
    assert remote_store.get_bytes(bucket, "out.csv") == PREVIOUS
    # The next load may stage parts under the ids of the abandoned ones (Azure's block ids): it must win.
    pairs = batches_of(sample_rows(7))
    load_batches(remote_store.sink(bucket, "out.csv"), JOB, pairs)
    assert remote_store.read_back(bucket, "out.csv") == expected_rows(pairs)
    if remote_store.later_upload_clears_leftovers:
        assert remote_store.unfinished(bucket) == {}


def test_sink_dropped_without_commit_or_abort_publishes_nothing(remote_store: RemoteStore) -> None:
    """Each store's writer completes its upload when garbage-collected unclosed (smart-open's S3 and Azure
    writers, google-cloud-storage's); the sink's guard must cancel it instead."""
    bucket = remote_store.new_bucket("dropped")
    sink = remote_store.sink(bucket, "out.jsonl.gz")
    sink.open(JOB)
    for name, batch in batches_of(sample_rows(7)):
        sink.write(name, batch)
    assert list(remote_store.unfinished(bucket)) == (["out.jsonl.gz"] if remote_store.upload_starts_when_opened else [])
    del sink
    gc.collect()
    assert remote_store.names(bucket) == []
    if not remote_store.keeps_abandoned_parts:
        assert remote_store.unfinished(bucket) == {}


def test_one_object_per_member_with_file_placeholder(remote_store: RemoteStore) -> None:
    bucket = remote_store.new_bucket("members")
    rows = sample_rows(8)
    leads, deals = batches_of(rows[:4], "Leads-Leads.csv"), batches_of(rows[4:], "Deals-Deals.csv")
    written = load_batches(remote_store.sink(bucket, "job/{file}.parquet"), JOB, leads + deals)
    assert written == [remote_store.uri(bucket, "job/Leads-Leads.parquet"),
                       remote_store.uri(bucket, "job/Deals-Deals.parquet")]
    assert remote_store.read_back(bucket, "job/Leads-Leads.parquet") == expected_rows(leads)
    assert remote_store.read_back(bucket, "job/Deals-Deals.parquet") == expected_rows(deals)


def test_several_members_without_placeholder_publish_nothing(remote_store: RemoteStore) -> None:
    bucket = remote_store.new_bucket("nofile")
    rows = sample_rows(8)
    pairs = batches_of(rows[:4], "Leads-Leads.csv") + batches_of(rows[4:], "Deals-Deals.csv")
    with pytest.raises(SinkConfigurationError, match=r"Deals-Deals\.csv"):
        load_batches(remote_store.sink(bucket, "out.jsonl"), JOB, pairs)
    assert remote_store.names(bucket) == []
    if not remote_store.keeps_abandoned_parts:
        assert remote_store.unfinished(bucket) == {}


def test_empty_jsonl_result_is_an_empty_object(remote_store: RemoteStore) -> None:
    bucket = remote_store.new_bucket("empty")
    load_batches(remote_store.sink(bucket, "out.jsonl"), JOB, batches_of([]))
    assert remote_store.names(bucket) == ["out.jsonl"]
    assert remote_store.get_bytes(bucket, "out.jsonl") == b""


@pytest.mark.parametrize("small_parts", [False, True])
def test_missing_bucket_is_a_sink_error_naming_the_job(remote_store: RemoteStore, small_parts: bool) -> None:
    """S3 fails when the object is opened; elsewhere rows buffered until commit fail there, and with
    small parts the first part fails mid-stream."""
    uri = remote_store.uri("no-such-bucket-zohobulk", "out.csv")
    with pytest.raises(SinkError) as caught:
        load_batches(remote_store.sink("no-such-bucket-zohobulk", "out.csv", small_parts=small_parts), JOB,
                     remote_store.batches_for_several_parts())
    if remote_store.upload_starts_when_opened:
        failed, file_name = f"opening {uri!r} for writing failed", MEMBER
    elif small_parts:
        failed, file_name = f"writing to {uri!r} failed", MEMBER
    else:
        failed, file_name = f"committing {uri!r} failed", None
    assert str(caught.value).startswith(failed)
    assert remote_store.missing_bucket_error in str(caught.value)
    assert (caught.value.job_id, caught.value.file_name) == (JOB, file_name)


def test_corrupt_archive_through_the_core_pipeline_publishes_nothing(remote_store: RemoteStore) -> None:
    """The CRC error comes after every row was decoded and written: the object must not change."""
    bucket = remote_store.new_bucket("crc")
    remote_store.put(bucket, "out.csv.gz", PREVIOUS)
    archive = corrupt_crc_field(zip_with_zipfile({"Leads-Leads.csv": make_result_csv(SAMPLE_RESULT_ROWS)},
                                                 compression="stored"))
    with pytest.raises(CorruptArchiveError):
        load_batches(remote_store.sink(bucket, "out.csv.gz"), JOB,
                     read_bulk_write_result(chunked(archive, 1000), job_id=JOB))
    assert remote_store.names(bucket) == ["out.csv.gz"]
    assert remote_store.get_bytes(bucket, "out.csv.gz") == PREVIOUS
    if not remote_store.keeps_abandoned_parts:
        assert remote_store.unfinished(bucket) == {}


def test_json_lines_values_are_json_typed(remote_store: RemoteStore) -> None:
    """row_number is a number, empty errors an empty array, a missing record_id null (not "")."""
    bucket = remote_store.new_bucket("types")
    rows = [{"record_id": None, "status": "ADDED", "source": {"A": ""}}]
    load_batches(remote_store.sink(bucket, "t.jsonl"), JOB, [("X.csv", canonical_batch(JOB, "X.csv", rows))])
    line = json.loads(remote_store.get_bytes(bucket, "t.jsonl"))
    assert line == {"job_id": JOB, "file_name": "X.csv", "row_number": 1, "record_id": None, "status": "ADDED",
                    "errors": [], "errors_raw": None, "source": {"A": ""}}


def test_real_archive_through_the_core_pipeline(remote_store: RemoteStore) -> None:
    """Zip bytes -> unzip -> CSV decode -> canonical rows -> one object per member, as the operator runs it."""
    bucket = remote_store.new_bucket("pipeline")
    archive = zip_with_zipfile({"Leads-Leads.csv": make_result_csv(SAMPLE_RESULT_ROWS),
                                "Deals-Deals.csv": make_result_csv(SAMPLE_RESULT_ROWS[:2])})
    batches = list(read_bulk_write_result(chunked(archive, 1000), job_id=JOB))
    written = load_batches(remote_store.sink(bucket, f"{JOB}/{{file}}.parquet"), JOB, iter(batches))
    assert written == [remote_store.uri(bucket, f"{JOB}/Leads-Leads.parquet"),
                       remote_store.uri(bucket, f"{JOB}/Deals-Deals.parquet")]
    leads = remote_store.read_back(bucket, f"{JOB}/Leads-Leads.parquet")
    assert leads == expected_rows([pair for pair in batches if pair[0] == "Leads-Leads.csv"])
    # the decode stage reads an empty CSV cell as null
    assert [row["source"]["Email"] for row in leads] == [row[1] or None for row in SAMPLE_RESULT_ROWS]
