"""What only S3 has: credentials from an Airflow ``aws`` connection, and a real storage engine (SeaweedFS).

The promises every remote store keeps (round trips, atomicity, multipart uploads aborted) are checked on
moto's S3 in ``tests/test_sink_remote_stores.py``.
"""

from __future__ import annotations

import pytest

from airflow_provider_zohobulk.errors import SinkConfigurationError
from airflow_provider_zohobulk.sinks.base import load_batches
from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink, _s3_client
from tests.fixtures.remote_stores import S3Store
from tests.fixtures.s3 import S3Server
from tests.helpers import JOB, CorruptArchive, batches_of, expected_rows, failing_after, sample_rows

pytestmark = pytest.mark.s3


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
    assert S3Store(moto_s3).read_back(bucket, "via-conn.csv.gz") == expected_rows(pairs)
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
    store = S3Store(seaweedfs_s3)
    bucket = store.new_bucket("seaweed")
    pairs = batches_of(sample_rows(12))
    for key in ("zoho/out.parquet", "zoho/out.csv.gz"):
        load_batches(store.sink(bucket, key), JOB, pairs)
        assert store.read_back(bucket, key) == expected_rows(pairs)

    with pytest.raises(CorruptArchive):
        load_batches(store.sink(bucket, "zoho/out.csv.gz"), JOB, failing_after(batches_of(sample_rows(3)), 1))
    with pytest.raises(CorruptArchive):
        load_batches(store.sink(bucket, "zoho/aborted.parquet"), JOB, failing_after(pairs, 2))
    assert store.names(bucket) == ["zoho/out.csv.gz", "zoho/out.parquet"]
    assert store.read_back(bucket, "zoho/out.csv.gz") == expected_rows(pairs)  # the earlier object
    assert store.unfinished(bucket) == {}
