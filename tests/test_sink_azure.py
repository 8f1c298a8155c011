"""ObjectStorageSink on Azure Blob Storage (``azure://``), against Azurite.

The sink writes through smart-open's Azure writer: blocks are staged as the rows arrive and the blob
is made of them only when the block list is committed, which the sink does on commit. What these
tests show, beside round trips: after a failure mid-stream, or at the archive's final CRC check, no
blob appears and an existing blob keeps its content, even when blocks had already been staged (they
are visible as uncommitted blocks, which Azure discards by itself after a week; smart-open has no
call to delete them sooner), and a later load of the same blob still works.

Most tests pass the client in ``transport_params``; the last ones go through ``conn_id``: a real
Airflow ``wasb`` connection (from ``AIRFLOW_CONN_<ID>``, no metadata database) read by the Microsoft
Azure provider's WasbHook, whose extra holds Azurite's connection string.
"""

from __future__ import annotations

import gc
import json
import traceback

import pytest

from airflow_provider_zohobulk.bulk_result import read_bulk_write_result
from airflow_provider_zohobulk.errors import CorruptArchiveError, SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import load_batches
from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink
from tests.fixtures.azurite import ACCOUNT_KEY, AzuriteServer
from tests.fixtures.zips import SAMPLE_RESULT_ROWS, chunked, corrupt_crc_field, make_result_csv, zip_with_zipfile
from tests.helpers import sample_rows
from tests.test_sink_object_storage import JOB, MEMBER, batches_of, expected_rows
from tests.test_sink_s3 import CorruptArchive, decoded_rows, failing_after

pytestmark = pytest.mark.azure

#: A block size small enough that a few thousand rows stage blocks before the load ends (Azure has
#: no minimum; smart-open's default is 64 MiB).
SMALL_BLOCK = 256 * 1024


def azure_sink(server: AzuriteServer, uri: str, **transport_params) -> ObjectStorageSink:
    return ObjectStorageSink(uri, transport_params={"client": server.client(), **transport_params})


def names(server: AzuriteServer, container: str) -> list[str]:
    """The committed blobs (a blob with only uncommitted blocks is not listed)."""
    return sorted(server.client().get_container_client(container).list_blob_names())


def get_bytes(server: AzuriteServer, container: str, name: str) -> bytes:
    return server.client().get_blob_client(container, name).download_blob().readall()


def read_back(server: AzuriteServer, container: str, name: str) -> list[dict]:
    return decoded_rows(name, get_bytes(server, container, name))


def put_previous_load(server: AzuriteServer, container: str, name: str) -> None:
    server.client().get_blob_client(container, name).upload_blob(b"previous load")


def large_pairs():
    """About 1.3 MB of CSV in four batches: several SMALL_BLOCK blocks."""
    return batches_of(sample_rows(6_000), size=1_500)


@pytest.mark.parametrize("name", ["r/out.parquet", "r/out.csv", "r/out.csv.gz", "r/out.jsonl.zst", "r/out.ndjson"])
def test_round_trip(azurite: AzuriteServer, name: str) -> None:
    container = azurite.new_container("round")
    pairs = batches_of(sample_rows(11))
    written = load_batches(azure_sink(azurite, f"azure://{container}/{name}"), JOB, pairs)
    assert written == [f"azure://{container}/{name}"]
    assert read_back(azurite, container, name) == expected_rows(pairs)
    assert azurite.uncommitted_blocks(container) == {}


def test_large_result_goes_up_in_several_blocks(azurite: AzuriteServer) -> None:
    container = azurite.new_container("blocks")
    pairs = large_pairs()
    load_batches(azure_sink(azurite, f"azure://{container}/big.csv", min_part_size=SMALL_BLOCK), JOB, pairs)
    committed, uncommitted = azurite.client().get_blob_client(container, "big.csv").get_block_list("all")
    assert len(committed) >= 3
    assert uncommitted == []
    assert read_back(azurite, container, "big.csv") == expected_rows(pairs)


def test_failure_after_blocks_were_staged_publishes_nothing(azurite: AzuriteServer) -> None:
    container = azurite.new_container("abort")
    sink = azure_sink(azurite, f"azure://{container}/out.csv", min_part_size=SMALL_BLOCK)
    with pytest.raises(CorruptArchive):
        load_batches(sink, JOB, failing_after(large_pairs(), 3))
    assert names(azurite, container) == []
    # The blocks did reach the server, staged but never committed into a blob.
    staged = azurite.uncommitted_blocks(container)
    assert list(staged) == ["out.csv"]
    assert staged["out.csv"] >= 2 * SMALL_BLOCK


def test_failure_keeps_the_existing_blob_and_a_rerun_replaces_it(azurite: AzuriteServer) -> None:
    container = azurite.new_container("keep")
    put_previous_load(azurite, container, "out.csv")
    with pytest.raises(CorruptArchive):
        load_batches(azure_sink(azurite, f"azure://{container}/out.csv", min_part_size=SMALL_BLOCK), JOB,
                     failing_after(large_pairs(), 3))
    assert get_bytes(azurite, container, "out.csv") == b"previous load"
    assert azurite.uncommitted_blocks(container)["out.csv"] >= 2 * SMALL_BLOCK
    # The next load stages blocks with the same ids as the abandoned ones; its commit must win.
    pairs = batches_of(sample_rows(7))
    load_batches(azure_sink(azurite, f"azure://{container}/out.csv"), JOB, pairs)
    assert read_back(azurite, container, "out.csv") == expected_rows(pairs)
    assert azurite.uncommitted_blocks(container) == {}


def test_sink_dropped_without_commit_or_abort_publishes_nothing(azurite: AzuriteServer) -> None:
    """smart-open's Azure writer commits its block list when garbage-collected unclosed; the sink's
    guard must stop it."""
    container = azurite.new_container("dropped")
    sink = azure_sink(azurite, f"azure://{container}/out.jsonl.gz")
    sink.open(JOB)
    for name, batch in batches_of(sample_rows(7)):
        sink.write(name, batch)
    del sink
    gc.collect()
    assert names(azurite, container) == []


def test_one_blob_per_member_with_file_placeholder(azurite: AzuriteServer) -> None:
    container = azurite.new_container("members")
    rows = sample_rows(8)
    leads, deals = batches_of(rows[:4], "Leads-Leads.csv"), batches_of(rows[4:], "Deals-Deals.csv")
    written = load_batches(azure_sink(azurite, f"azure://{container}/job/{{file}}.parquet"), JOB, leads + deals)
    assert written == [f"azure://{container}/job/Leads-Leads.parquet", f"azure://{container}/job/Deals-Deals.parquet"]
    assert read_back(azurite, container, "job/Leads-Leads.parquet") == expected_rows(leads)
    assert read_back(azurite, container, "job/Deals-Deals.parquet") == expected_rows(deals)


def test_empty_jsonl_result_is_an_empty_blob(azurite: AzuriteServer) -> None:
    container = azurite.new_container("empty")
    load_batches(azure_sink(azurite, f"azure://{container}/out.jsonl"), JOB, batches_of([]))
    assert names(azurite, container) == ["out.jsonl"]
    assert get_bytes(azurite, container, "out.jsonl") == b""


@pytest.mark.parametrize(("transport_params", "stage", "file_name"),
                         [({}, "committing", None), ({"min_part_size": SMALL_BLOCK}, "writing to", MEMBER)])
def test_missing_container_is_a_sink_error_naming_the_job(azurite: AzuriteServer, transport_params: dict,
                                                          stage: str, file_name: str | None) -> None:
    """Rows buffered until commit fail there; with small blocks the first block fails mid-stream."""
    uri = "azure://no-such-container/out.csv"
    with pytest.raises(SinkError) as caught:
        load_batches(azure_sink(azurite, uri, **transport_params), JOB, large_pairs())
    assert str(caught.value).startswith(f"{stage} {uri!r} failed")
    assert "ContainerNotFound" in str(caught.value)
    assert (caught.value.job_id, caught.value.file_name) == (JOB, file_name)


def test_corrupt_archive_through_the_core_pipeline_publishes_nothing(azurite: AzuriteServer) -> None:
    """The CRC error comes after every row was decoded and written: the blob must not change."""
    container = azurite.new_container("crc")
    put_previous_load(azurite, container, "out.csv.gz")
    archive = corrupt_crc_field(zip_with_zipfile({"Leads-Leads.csv": make_result_csv(SAMPLE_RESULT_ROWS)},
                                                 compression="stored"))
    with pytest.raises(CorruptArchiveError):
        load_batches(azure_sink(azurite, f"azure://{container}/out.csv.gz"), JOB,
                     read_bulk_write_result(chunked(archive, 1000), job_id=JOB))
    assert names(azurite, container) == ["out.csv.gz"]
    assert get_bytes(azurite, container, "out.csv.gz") == b"previous load"


# --- credentials from an Airflow ``wasb`` connection ---------------------------------------------------

CONN_ID = "zoho_blob"


@pytest.fixture
def wasb_connection(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The id of an Airflow ``wasb`` connection to Azurite, set for this test only."""
    for name, value in azurite.airflow_conn_env(CONN_ID).items():
        monkeypatch.setenv(name, value)
    return CONN_ID


def test_round_trip_through_an_airflow_wasb_connection(azurite: AzuriteServer, wasb_connection: str) -> None:
    container = azurite.new_container("conn")
    rows = sample_rows(8)
    leads, deals = batches_of(rows[:5], "Leads-Leads.csv"), batches_of(rows[5:], "Deals-Deals.csv")
    sink = ObjectStorageSink(f"azure://{container}/{{file}}.parquet", conn_id=wasb_connection)
    written = load_batches(sink, JOB, leads + deals)
    assert written == [f"azure://{container}/Leads-Leads.parquet", f"azure://{container}/Deals-Deals.parquet"]
    assert read_back(azurite, container, "Leads-Leads.parquet") == expected_rows(leads)
    assert read_back(azurite, container, "Deals-Deals.parquet") == expected_rows(deals)


def test_failure_through_a_connection_publishes_nothing(azurite: AzuriteServer, wasb_connection: str) -> None:
    container = azurite.new_container("conn-abort")
    put_previous_load(azurite, container, "out.csv")
    sink = ObjectStorageSink(f"azure://{container}/out.csv", conn_id=wasb_connection,
                             transport_params={"min_part_size": SMALL_BLOCK})
    with pytest.raises(CorruptArchive):
        load_batches(sink, JOB, failing_after(large_pairs(), 3))
    assert names(azurite, container) == ["out.csv"]
    assert get_bytes(azurite, container, "out.csv") == b"previous load"
    # The connection's client did reach Azurite: its blocks are there, never committed.
    assert azurite.uncommitted_blocks(container)["out.csv"] >= 2 * SMALL_BLOCK


@pytest.mark.parametrize(("conn_id", "connection_string", "reason"), [
    ("zoho_blobs", None, "AirflowNotFoundException"),  # a typo of CONN_ID, which exists
    ("zoho_blob_broken", f"DefaultEndpointsProtocol=http;AccountKey={ACCOUNT_KEY};BlobEndpoint=", "ValueError"),
])
def test_unusable_connection_is_named_without_its_key(wasb_connection: str, monkeypatch: pytest.MonkeyPatch,
                                                      conn_id: str, connection_string: str | None,
                                                      reason: str) -> None:
    """A missing connection, or one whose connection string cannot be parsed, stops the load before any
    write; the error names the connection and the cause's type, never the account key."""
    monkeypatch.delenv(f"AIRFLOW_CONN_{conn_id.upper()}", raising=False)
    if connection_string is not None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                           json.dumps({"conn_type": "wasb", "extra": {"connection_string": connection_string}}))
    sink = ObjectStorageSink("azure://container/{file}.parquet", conn_id=conn_id)
    with pytest.raises(SinkConfigurationError) as caught:
        sink.open(JOB)
    message = str(caught.value)
    assert message == f"Airflow connection {conn_id!r} for azure:// could not be used: {reason}"
    assert ACCOUNT_KEY not in message and ACCOUNT_KEY[:16] not in message
    printed = "".join(traceback.format_exception(caught.value))  # what a task log shows, causes included
    assert ACCOUNT_KEY[:16] not in printed and caught.value.__cause__ is None
