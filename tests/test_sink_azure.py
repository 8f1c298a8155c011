"""What only Azure has here: credentials from an Airflow ``wasb`` connection (``azure://`` with ``conn_id``).

A real Airflow connection (from ``AIRFLOW_CONN_<ID>``, no metadata database) read by the Microsoft Azure
provider's WasbHook, whose extra holds Azurite's connection string. The promises every remote store keeps
(round trips, atomicity; staged blocks never committed into a blob) are checked on Azurite in
``tests/test_sink_remote_stores.py``.
"""

from __future__ import annotations

import json
import traceback

import pytest

from airflow_provider_zohobulk.errors import SinkConfigurationError
from airflow_provider_zohobulk.sinks.base import load_batches
from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink
from tests.fixtures.azurite import ACCOUNT_KEY, AzuriteServer
from tests.fixtures.remote_stores import SMALL_CHUNK, AzureStore
from tests.helpers import JOB, CorruptArchive, batches_of, expected_rows, failing_after, sample_rows

pytestmark = pytest.mark.azure


CONN_ID = "zoho_blob"


@pytest.fixture
def wasb_connection(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The id of an Airflow ``wasb`` connection to Azurite, set for this test only."""
    for name, value in azurite.airflow_conn_env(CONN_ID).items():
        monkeypatch.setenv(name, value)
    return CONN_ID


def test_round_trip_through_an_airflow_wasb_connection(azurite: AzuriteServer, wasb_connection: str) -> None:
    store = AzureStore(azurite)
    container = store.new_bucket("conn")
    rows = sample_rows(8)
    leads, deals = batches_of(rows[:5], "Leads-Leads.csv"), batches_of(rows[5:], "Deals-Deals.csv")
    sink = ObjectStorageSink(f"azure://{container}/{{file}}.parquet", conn_id=wasb_connection)
    written = load_batches(sink, JOB, leads + deals)
    assert written == [f"azure://{container}/Leads-Leads.parquet", f"azure://{container}/Deals-Deals.parquet"]
    assert store.read_back(container, "Leads-Leads.parquet") == expected_rows(leads)
    assert store.read_back(container, "Deals-Deals.parquet") == expected_rows(deals)


def test_failure_through_a_connection_publishes_nothing(azurite: AzuriteServer, wasb_connection: str) -> None:
    store = AzureStore(azurite)
    container = store.new_bucket("conn-abort")
    store.put(container, "out.csv", b"previous load")
    sink = ObjectStorageSink(f"azure://{container}/out.csv", conn_id=wasb_connection,
                             transport_params={"min_part_size": SMALL_CHUNK})
    with pytest.raises(CorruptArchive):
        load_batches(sink, JOB, failing_after(store.batches_for_several_parts(), 3))
    assert store.names(container) == ["out.csv"]
    assert store.get_bytes(container, "out.csv") == b"previous load"
    # The connection's client did reach Azurite: its blocks are there, never committed.
    assert store.unfinished(container)["out.csv"] >= 2 * SMALL_CHUNK


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
