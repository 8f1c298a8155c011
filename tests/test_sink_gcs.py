"""ObjectStorageSink on Google Cloud Storage (``gs://``), against gcp-storage-emulator.

The sink writes through smart-open's GCS writer, a resumable upload: chunks go to the server as the
rows arrive and the object only exists once the last chunk (the one carrying the total size) is
sent, which the sink does on commit. What these tests show, beside round trips: after a failure
mid-stream, or at the archive's final CRC check, no object appears and an existing object is left as
it was, even when chunks had already reached the server (the emulator still holds them in an
unfinalised session). What the emulator cannot show: that the session is cancelled. It implements
no cancel, and the client does not really send one either (google-cloud-storage's
``BlobWriter.terminate`` sends its DELETE to the upload-initiation URL, not the session's); real GCS
discards an unfinalised session a week after it began.

The client is passed in ``transport_params``; the ``conn_id`` path (Airflow's Google provider hook)
is not exercised here.
"""

from __future__ import annotations

import gc

import pytest

from airflow_provider_zohobulk.bulk_result import read_bulk_write_result
from airflow_provider_zohobulk.errors import CorruptArchiveError, SinkError
from airflow_provider_zohobulk.sinks.base import load_batches
from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink
from tests.fixtures.gcs import GcsServer
from tests.fixtures.zips import SAMPLE_RESULT_ROWS, chunked, corrupt_crc_field, make_result_csv, zip_with_zipfile
from tests.helpers import sample_rows
from tests.test_sink_object_storage import JOB, MEMBER, batches_of, expected_rows
from tests.test_sink_s3 import CorruptArchive, decoded_rows, failing_after

pytestmark = pytest.mark.gcs

#: The smallest chunk a resumable upload takes (chunk sizes are multiples of 256 KiB), so that a
#: few thousand rows already send chunks before the load ends.
SMALL_CHUNK = 256 * 1024


def gcs_sink(server: GcsServer, uri: str, **transport_params) -> ObjectStorageSink:
    return ObjectStorageSink(uri, transport_params={"client": server.client(), **transport_params})


def names(server: GcsServer, bucket: str) -> list[str]:
    return sorted(blob.name for blob in server.client().list_blobs(bucket))


def get_bytes(server: GcsServer, bucket: str, name: str) -> bytes:
    return server.client().bucket(bucket).blob(name).download_as_bytes()


def read_back(server: GcsServer, bucket: str, name: str) -> list[dict]:
    return decoded_rows(name, get_bytes(server, bucket, name))


def put_previous_load(server: GcsServer, bucket: str, name: str) -> None:
    server.client().bucket(bucket).blob(name).upload_from_string(b"previous load")


def large_pairs():
    """About 1.3 MB of CSV in four batches: several SMALL_CHUNK chunks."""
    return batches_of(sample_rows(6_000), size=1_500)


@pytest.mark.parametrize("name", ["r/out.parquet", "r/out.csv", "r/out.csv.gz", "r/out.jsonl.zst", "r/out.ndjson"])
def test_round_trip(gcs_emulator: GcsServer, name: str) -> None:
    bucket = gcs_emulator.new_bucket("round")
    pairs = batches_of(sample_rows(11))
    written = load_batches(gcs_sink(gcs_emulator, f"gs://{bucket}/{name}"), JOB, pairs)
    assert written == [f"gs://{bucket}/{name}"]
    assert read_back(gcs_emulator, bucket, name) == expected_rows(pairs)
    assert gcs_emulator.unfinished_uploads(bucket) == {}


def test_large_result_goes_up_in_several_chunks(gcs_emulator: GcsServer) -> None:
    bucket = gcs_emulator.new_bucket("chunks")
    pairs = large_pairs()
    load_batches(gcs_sink(gcs_emulator, f"gs://{bucket}/big.csv", min_part_size=SMALL_CHUNK), JOB, pairs)
    assert len(get_bytes(gcs_emulator, bucket, "big.csv")) > 3 * SMALL_CHUNK
    assert read_back(gcs_emulator, bucket, "big.csv") == expected_rows(pairs)
    assert gcs_emulator.unfinished_uploads(bucket) == {}


def test_failure_after_chunks_were_sent_publishes_nothing(gcs_emulator: GcsServer) -> None:
    bucket = gcs_emulator.new_bucket("abort")
    sink = gcs_sink(gcs_emulator, f"gs://{bucket}/out.csv", min_part_size=SMALL_CHUNK)
    with pytest.raises(CorruptArchive):
        load_batches(sink, JOB, failing_after(large_pairs(), 3))
    assert names(gcs_emulator, bucket) == []
    # The chunks did reach the server, in a resumable session that was never finalised.
    received = gcs_emulator.unfinished_uploads(bucket)
    assert list(received) == ["out.csv"]
    assert received["out.csv"] >= 2 * SMALL_CHUNK


def test_failure_keeps_the_existing_object_and_a_rerun_replaces_it(gcs_emulator: GcsServer) -> None:
    bucket = gcs_emulator.new_bucket("keep")
    put_previous_load(gcs_emulator, bucket, "out.csv")
    with pytest.raises(CorruptArchive):
        load_batches(gcs_sink(gcs_emulator, f"gs://{bucket}/out.csv", min_part_size=SMALL_CHUNK), JOB,
                     failing_after(large_pairs(), 3))
    assert get_bytes(gcs_emulator, bucket, "out.csv") == b"previous load"
    pairs = batches_of(sample_rows(7))
    load_batches(gcs_sink(gcs_emulator, f"gs://{bucket}/out.csv"), JOB, pairs)
    assert read_back(gcs_emulator, bucket, "out.csv") == expected_rows(pairs)


def test_sink_dropped_without_commit_or_abort_publishes_nothing(gcs_emulator: GcsServer) -> None:
    """A google-cloud-storage writer that is garbage-collected unclosed finalises its upload; the
    sink's guard must cancel it instead."""
    bucket = gcs_emulator.new_bucket("dropped")
    sink = gcs_sink(gcs_emulator, f"gs://{bucket}/out.jsonl.gz")
    sink.open(JOB)
    for name, batch in batches_of(sample_rows(7)):
        sink.write(name, batch)
    del sink
    gc.collect()
    assert names(gcs_emulator, bucket) == []


def test_one_object_per_member_with_file_placeholder(gcs_emulator: GcsServer) -> None:
    bucket = gcs_emulator.new_bucket("members")
    rows = sample_rows(8)
    leads, deals = batches_of(rows[:4], "Leads-Leads.csv"), batches_of(rows[4:], "Deals-Deals.csv")
    written = load_batches(gcs_sink(gcs_emulator, f"gs://{bucket}/job/{{file}}.parquet"), JOB, leads + deals)
    assert written == [f"gs://{bucket}/job/Leads-Leads.parquet", f"gs://{bucket}/job/Deals-Deals.parquet"]
    assert read_back(gcs_emulator, bucket, "job/Leads-Leads.parquet") == expected_rows(leads)
    assert read_back(gcs_emulator, bucket, "job/Deals-Deals.parquet") == expected_rows(deals)


def test_empty_jsonl_result_is_an_empty_object(gcs_emulator: GcsServer) -> None:
    bucket = gcs_emulator.new_bucket("empty")
    load_batches(gcs_sink(gcs_emulator, f"gs://{bucket}/out.jsonl"), JOB, batches_of([]))
    assert names(gcs_emulator, bucket) == ["out.jsonl"]
    assert get_bytes(gcs_emulator, bucket, "out.jsonl") == b""


@pytest.mark.parametrize(("transport_params", "stage", "file_name"),
                         [({}, "committing", None), ({"min_part_size": SMALL_CHUNK}, "writing to", MEMBER)])
def test_missing_bucket_is_a_sink_error_naming_the_job(gcs_emulator: GcsServer, transport_params: dict,
                                                       stage: str, file_name: str | None) -> None:
    """Rows buffered until commit fail there; with small chunks the first chunk fails mid-stream."""
    uri = "gs://no-such-bucket-zohobulk/out.csv"
    with pytest.raises(SinkError) as caught:
        load_batches(gcs_sink(gcs_emulator, uri, **transport_params), JOB, large_pairs())
    assert str(caught.value).startswith(f"{stage} {uri!r} failed")
    assert "404" in str(caught.value)
    assert (caught.value.job_id, caught.value.file_name) == (JOB, file_name)


def test_corrupt_archive_through_the_core_pipeline_publishes_nothing(gcs_emulator: GcsServer) -> None:
    """The CRC error comes after every row was decoded and written: the object must not appear."""
    bucket = gcs_emulator.new_bucket("crc")
    put_previous_load(gcs_emulator, bucket, "out.csv.gz")
    archive = corrupt_crc_field(zip_with_zipfile({"Leads-Leads.csv": make_result_csv(SAMPLE_RESULT_ROWS)},
                                                 compression="stored"))
    with pytest.raises(CorruptArchiveError):
        load_batches(gcs_sink(gcs_emulator, f"gs://{bucket}/out.csv.gz"), JOB,
                     read_bulk_write_result(chunked(archive, 1000), job_id=JOB))
    assert names(gcs_emulator, bucket) == ["out.csv.gz"]
    assert get_bytes(gcs_emulator, bucket, "out.csv.gz") == b"previous load"
