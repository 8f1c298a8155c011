"""ObjectStorageSink against real S3-protocol servers: moto for most cases, SeaweedFS for one real engine.

What matters on S3 is what a reader sees: the object appears complete at commit or not at all, an
older object survives a failed load, and no multipart upload is left open (they cost storage until
someone aborts them).
"""

from __future__ import annotations

import gc
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.bulk_result import CANONICAL_SCHEMA, read_bulk_write_result
from airflow_provider_zohobulk.errors import CorruptArchiveError, SinkConfigurationError
from airflow_provider_zohobulk.sinks.base import load_batches
from airflow_provider_zohobulk.sinks.object_storage import S3_MIN_PART_SIZE, ObjectStorageSink, _s3_client
from tests.fixtures.s3 import S3Server
from tests.fixtures.zips import SAMPLE_RESULT_ROWS, chunked, corrupt_crc_field, make_result_csv, zip_with_zipfile
from tests.helpers import canonical_batch, sample_rows
from tests.test_sink_object_storage import JOB, batches_of, decompressed, expected_rows, parse_csv, parse_jsonl

pytestmark = pytest.mark.s3


class CorruptArchive(Exception):
    """Stands for the CRC error the unzip stage raises after a member's last byte."""


def get_bytes(server: S3Server, bucket: str, key: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(server: S3Server, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in server.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def open_uploads(server: S3Server, bucket: str) -> list[str]:
    return [upload["Key"] for upload in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def s3_sink(server: S3Server, uri: str, **kwargs) -> ObjectStorageSink:
    return ObjectStorageSink(uri, transport_params={"client": server.client()}, **kwargs)


def read_back(server: S3Server, bucket: str, key: str) -> list[dict]:
    """Rows of an object, decoded by its extension, ``source`` as a dict."""
    return decoded_rows(key, get_bytes(server, bucket, key))


def decoded_rows(key: str, data: bytes) -> list[dict]:
    """Rows of an object's bytes, decoded by the extension of its name ``key``, ``source`` as a dict
    (shared with the GCS and Azure tests)."""
    if key.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        assert table.schema.equals(CANONICAL_SCHEMA)
        rows = table.to_pylist()
        for row in rows:
            row["source"] = dict(row["source"])
        return rows
    suffix = "." + key.rsplit(".", 1)[-1]
    plain = decompressed(data, suffix)
    return parse_csv(plain) if ".csv" in key else parse_jsonl(plain)


def failing_after(pairs: list[tuple[str, pa.RecordBatch]], count: int):
    yield from pairs[:count]
    raise CorruptArchive("CRC32 mismatch at the end of the member")


@pytest.mark.parametrize("key", ["r/out.parquet", "r/out.csv", "r/out.csv.gz", "r/out.jsonl.zst", "r/out.ndjson"])
def test_round_trip_on_moto(moto_s3: S3Server, key: str) -> None:
    bucket = moto_s3.new_bucket("round")
    pairs = batches_of(sample_rows(11))
    written = load_batches(s3_sink(moto_s3, f"s3://{bucket}/{key}"), JOB, pairs)
    assert written == [f"s3://{bucket}/{key}"]
    assert read_back(moto_s3, bucket, key) == expected_rows(pairs)
    assert open_uploads(moto_s3, bucket) == []


def test_failure_leaves_no_object_and_no_open_upload(moto_s3: S3Server) -> None:
    bucket = moto_s3.new_bucket("abort")
    with pytest.raises(CorruptArchive):
        load_batches(s3_sink(moto_s3, f"s3://{bucket}/out.csv.gz"), JOB, failing_after(batches_of(sample_rows(9)), 2))
    assert keys(moto_s3, bucket) == []
    assert open_uploads(moto_s3, bucket) == []


def test_failure_keeps_the_existing_object(moto_s3: S3Server) -> None:
    bucket = moto_s3.new_bucket("keep")
    moto_s3.client().put_object(Bucket=bucket, Key="out.parquet", Body=b"previous load")
    with pytest.raises(CorruptArchive):
        load_batches(s3_sink(moto_s3, f"s3://{bucket}/out.parquet"), JOB, failing_after(batches_of(sample_rows(9)), 2))
    assert get_bytes(moto_s3, bucket, "out.parquet") == b"previous load"
    assert open_uploads(moto_s3, bucket) == []


def test_large_result_goes_up_in_several_parts(moto_s3: S3Server) -> None:
    bucket = moto_s3.new_bucket("parts")
    rows = sample_rows(60_000)
    pairs = batches_of(rows, size=20_000)
    sink = s3_sink(moto_s3, f"s3://{bucket}/big.jsonl", min_part_size=S3_MIN_PART_SIZE)
    load_batches(sink, JOB, pairs)
    head = moto_s3.client().head_object(Bucket=bucket, Key="big.jsonl")
    assert head["ContentLength"] > 2 * S3_MIN_PART_SIZE
    parts = int(head["ETag"].strip('"').rsplit("-", 1)[1])  # multipart ETags end in -<part count>
    assert parts >= 3
    assert read_back(moto_s3, bucket, "big.jsonl") == expected_rows(pairs)


def test_abort_of_a_large_upload_with_parts_already_sent(moto_s3: S3Server) -> None:
    bucket = moto_s3.new_bucket("bigabort")
    pairs = batches_of(sample_rows(60_000), size=20_000)
    sink = s3_sink(moto_s3, f"s3://{bucket}/big.csv", min_part_size=S3_MIN_PART_SIZE)
    with pytest.raises(CorruptArchive):
        load_batches(sink, JOB, failing_after(pairs, 3))
    assert keys(moto_s3, bucket) == []
    assert open_uploads(moto_s3, bucket) == []


def test_sink_dropped_without_commit_or_abort_publishes_nothing(moto_s3: S3Server) -> None:
    """smart-open completes an upload whose writer is garbage-collected; the sink's guard must not let it."""
    bucket = moto_s3.new_bucket("dropped")
    sink = s3_sink(moto_s3, f"s3://{bucket}/out.csv.gz")
    sink.open(JOB)
    for name, batch in batches_of(sample_rows(7)):
        sink.write(name, batch)
    assert open_uploads(moto_s3, bucket) == ["out.csv.gz"]
    del sink
    gc.collect()
    assert keys(moto_s3, bucket) == []
    assert open_uploads(moto_s3, bucket) == []


def test_one_object_per_member_with_file_placeholder(moto_s3: S3Server) -> None:
    bucket = moto_s3.new_bucket("members")
    rows = sample_rows(8)
    leads, deals = batches_of(rows[:4], "Leads-Leads.csv"), batches_of(rows[4:], "Deals-Deals.csv")
    written = load_batches(s3_sink(moto_s3, f"s3://{bucket}/job/{{file}}.parquet"), JOB, leads + deals)
    assert written == [f"s3://{bucket}/job/Leads-Leads.parquet", f"s3://{bucket}/job/Deals-Deals.parquet"]
    assert read_back(moto_s3, bucket, "job/Leads-Leads.parquet") == expected_rows(leads)
    assert read_back(moto_s3, bucket, "job/Deals-Deals.parquet") == expected_rows(deals)


def test_several_members_without_placeholder_publish_nothing(moto_s3: S3Server) -> None:
    bucket = moto_s3.new_bucket("nofile")
    rows = sample_rows(8)
    pairs = batches_of(rows[:4], "Leads-Leads.csv") + batches_of(rows[4:], "Deals-Deals.csv")
    with pytest.raises(SinkConfigurationError, match=r"Deals-Deals\.csv"):
        load_batches(s3_sink(moto_s3, f"s3://{bucket}/out.jsonl"), JOB, pairs)
    assert keys(moto_s3, bucket) == []
    assert open_uploads(moto_s3, bucket) == []


def test_empty_jsonl_result_is_an_empty_object(moto_s3: S3Server) -> None:
    bucket = moto_s3.new_bucket("empty")
    load_batches(s3_sink(moto_s3, f"s3://{bucket}/out.jsonl"), JOB, batches_of([]))
    assert get_bytes(moto_s3, bucket, "out.jsonl") == b""


def test_credentials_from_an_airflow_aws_connection(moto_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Airflow connection lookup (from AIRFLOW_CONN_<ID>), no metadata database needed."""
    for name, value in moto_s3.airflow_conn_env("zoho_lake").items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    bucket = moto_s3.new_bucket("conn")
    pairs = batches_of(sample_rows(5))
    sink = ObjectStorageSink(f"s3://{bucket}/via-conn.csv.gz", conn_id="zoho_lake")
    assert load_batches(sink, JOB, pairs) == [f"s3://{bucket}/via-conn.csv.gz"]
    assert read_back(moto_s3, bucket, "via-conn.csv.gz") == expected_rows(pairs)
    client = _s3_client("zoho_lake")  # what open() built: the connection's endpoint, lenient checksums
    assert client.meta.endpoint_url == moto_s3.endpoint_url
    assert client.meta.config.request_checksum_calculation == "when_required"


def test_unknown_connection_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    sink = ObjectStorageSink("s3://bucket/out.parquet", conn_id="no_such_conn")
    with pytest.raises(SinkConfigurationError, match="no_such_conn"):
        sink.open(JOB)


def test_connection_and_client_together_are_refused(moto_s3: S3Server) -> None:
    sink = ObjectStorageSink("s3://bucket/out.parquet", conn_id="zoho_lake",
                             transport_params={"client": moto_s3.client()})
    with pytest.raises(SinkConfigurationError, match="not both"):
        sink.open(JOB)


@pytest.mark.seaweedfs
def test_round_trips_and_abort_on_seaweedfs(seaweedfs_s3: S3Server) -> None:
    bucket = seaweedfs_s3.new_bucket("seaweed")
    pairs = batches_of(sample_rows(12))
    for key in ("zoho/out.parquet", "zoho/out.csv.gz"):
        load_batches(s3_sink(seaweedfs_s3, f"s3://{bucket}/{key}"), JOB, pairs)
        assert read_back(seaweedfs_s3, bucket, key) == expected_rows(pairs)

    with pytest.raises(CorruptArchive):
        load_batches(s3_sink(seaweedfs_s3, f"s3://{bucket}/zoho/out.csv.gz"), JOB,
                     failing_after(batches_of(sample_rows(3)), 1))
    with pytest.raises(CorruptArchive):
        load_batches(s3_sink(seaweedfs_s3, f"s3://{bucket}/zoho/aborted.parquet"), JOB, failing_after(pairs, 2))
    assert keys(seaweedfs_s3, bucket) == ["zoho/out.csv.gz", "zoho/out.parquet"]
    assert read_back(seaweedfs_s3, bucket, "zoho/out.csv.gz") == expected_rows(pairs)  # the earlier object
    assert open_uploads(seaweedfs_s3, bucket) == []


def test_json_lines_values_are_json_typed(moto_s3: S3Server) -> None:
    """row_number is a number, empty errors an empty array, a missing record_id null (not "")."""
    bucket = moto_s3.new_bucket("types")
    rows = [{"record_id": None, "status": "ADDED", "source": {"A": ""}}]
    load_batches(s3_sink(moto_s3, f"s3://{bucket}/t.jsonl"), JOB, [("X.csv", canonical_batch(JOB, "X.csv", rows))])
    line = json.loads(get_bytes(moto_s3, bucket, "t.jsonl"))
    assert line == {"job_id": JOB, "file_name": "X.csv", "row_number": 1, "record_id": None, "status": "ADDED",
                    "errors": [], "errors_raw": None, "source": {"A": ""}}


def test_real_archive_through_the_core_pipeline(moto_s3: S3Server) -> None:
    """Zip bytes -> unzip -> CSV decode -> canonical rows -> one object per member, as the operator runs it."""
    bucket = moto_s3.new_bucket("pipeline")
    archive = zip_with_zipfile({"Leads-Leads.csv": make_result_csv(SAMPLE_RESULT_ROWS),
                                "Deals-Deals.csv": make_result_csv(SAMPLE_RESULT_ROWS[:2])})
    batches = list(read_bulk_write_result(chunked(archive, 1000), job_id=JOB))
    written = load_batches(s3_sink(moto_s3, f"s3://{bucket}/{JOB}/{{file}}.parquet"), JOB, iter(batches))
    assert written == [f"s3://{bucket}/{JOB}/Leads-Leads.parquet", f"s3://{bucket}/{JOB}/Deals-Deals.parquet"]
    leads = read_back(moto_s3, bucket, f"{JOB}/Leads-Leads.parquet")
    assert leads == expected_rows([pair for pair in batches if pair[0] == "Leads-Leads.csv"])
    # the decode stage reads an empty CSV cell as null
    assert [row["source"]["Email"] for row in leads] == [row[1] or None for row in SAMPLE_RESULT_ROWS]


def test_corrupt_archive_through_the_core_pipeline_publishes_nothing(moto_s3: S3Server) -> None:
    """The CRC error comes after every row was decoded and written: the staged upload must be cancelled."""
    bucket = moto_s3.new_bucket("crc")
    moto_s3.client().put_object(Bucket=bucket, Key="out.csv.gz", Body=b"previous load")
    archive = corrupt_crc_field(zip_with_zipfile({"Leads-Leads.csv": make_result_csv(SAMPLE_RESULT_ROWS)},
                                                 compression="stored"))
    with pytest.raises(CorruptArchiveError):
        load_batches(s3_sink(moto_s3, f"s3://{bucket}/out.csv.gz"), JOB,
                     read_bulk_write_result(chunked(archive, 1000), job_id=JOB))
    assert keys(moto_s3, bucket) == ["out.csv.gz"]
    assert get_bytes(moto_s3, bucket, "out.csv.gz") == b"previous load"
    assert open_uploads(moto_s3, bucket) == []
