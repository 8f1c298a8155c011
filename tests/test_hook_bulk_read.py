"""ZohoCrmHook's Bulk Read calls and the shared trigger, against the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import csv
import io
import zipfile

import pytest

from airflow_provider_zohobulk import bulk_job
from airflow_provider_zohobulk.errors import (
    BulkJobFailedError,
    ZohoApiError,
    ZohoConfigurationError,
    ZohoMalformedResponseError,
    ZohoRateLimitError,
)
from airflow_provider_zohobulk.triggers.bulk_job import ZohoBulkJobTrigger
from airflow_provider_zohobulk.triggers.bulk_write import ZohoBulkWriteJobTrigger
from tests.test_hook import FAST, make_hook


def page_ids(hook, path: str) -> list[str]:
    """The Ids of a page, downloaded by the path Zoho gives (on the API domain)."""
    with hook.stream_download(path) as download:
        data = b"".join(download)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (name,) = archive.namelist()
        text = archive.read(name).decode("utf-8")
    return [row["Id"] for row in csv.DictReader(io.StringIO(text, newline=""))]


def test_an_export_of_three_pages_by_token(monkeypatch, zoho_sandbox):
    zoho_sandbox.seed_module("Leads", 25, seed=3)
    zoho_sandbox.configure(bulk_read_per_page=10, bulk_read_downloads_per_minute=None)
    hook = make_hook(monkeypatch, zoho_sandbox)
    ids: list[str] = []
    token = None
    pages = []
    while True:
        job_id = hook.create_bulk_read_job("Leads", fields=["Id", "Last_Name", "Email"], page_token=token)
        job = hook.get_bulk_read_job(job_id)
        assert bulk_job.is_complete(job) and job["state"] == "COMPLETED"
        page = bulk_job.read_page(job, job_id)
        assert page.download_url.startswith("/crm/bulk/")
        ids += page_ids(hook, page.download_url)
        pages.append((page.page, page.count, page.more_records))
        if not page.more_records:
            break
        token = page.next_page_token
    assert pages == [(1, 10, True), (2, 10, True), (3, 5, False)]
    expected = zoho_sandbox.read_records("Leads", fields=["Id"], limit=100)["records"]
    assert ids == [record[0] if isinstance(record, list) else record["Id"] for record in expected]
    created = zoho_sandbox.read_jobs()
    assert [job["module"] for job in created] == ["Leads"] * 3
    assert created[1]["page_token"] == created[0]["next_page_token"]


def test_the_trigger_waits_for_a_read_job(monkeypatch, zoho_sandbox):
    """The one trigger of every Bulk job kind: operation="read" polls the Bulk Read details until COMPLETED."""
    zoho_sandbox.seed_module("Contacts", 5)
    zoho_sandbox.configure(job_step_seconds=0.2)
    hook = make_hook(monkeypatch, zoho_sandbox)
    job_id = hook.create_bulk_read_job("Contacts")
    assert hook.get_bulk_read_job(job_id)["status"] == "ADDED"
    trigger = ZohoBulkJobTrigger(job_id, poll_interval=0.1, hook_kwargs=FAST, operation="read")
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_zohobulk.triggers.bulk_job.ZohoBulkJobTrigger"
    rebuilt = ZohoBulkJobTrigger(**kwargs)

    async def first_event():
        async for event in rebuilt.run():
            return event.payload

    payload = asyncio.run(first_event())
    assert payload["status"] == "success" and payload["job"]["status"] == "COMPLETED"
    assert bulk_job.read_page(payload["job"], job_id).count == 5


def test_a_failed_read_job_is_reported_with_zohos_code(monkeypatch, zoho_sandbox):
    zoho_sandbox.seed_module("Leads", 5)
    zoho_sandbox.add_fault("bulk_read_failed", code="INTERNAL_ERROR", message="export broke")
    hook = make_hook(monkeypatch, zoho_sandbox)
    job_id = hook.create_bulk_read_job("Leads")
    job = hook.get_bulk_read_job(job_id)
    with pytest.raises(BulkJobFailedError, match="Bulk Read job FAILED") as caught:
        bulk_job.raise_if_failed(job, job_id, "Bulk Read")
    assert caught.value.job_id == job_id


def test_too_many_jobs_names_the_limit(monkeypatch, zoho_sandbox):
    zoho_sandbox.seed_module("Leads", 5)
    zoho_sandbox.configure(job_step_seconds=3600, bulk_read_max_active_jobs=2)
    hook = make_hook(monkeypatch, zoho_sandbox, hook_kwargs={"retry_limit": 1})
    hook.create_bulk_read_job("Leads")
    hook.create_bulk_read_job("Leads")
    with pytest.raises(ZohoRateLimitError, match="about 10 bulk jobs in progress per org"):
        hook.create_bulk_read_job("Leads")


def test_a_bad_query_is_zohos_error_and_a_job_id_is_quoted(monkeypatch, zoho_sandbox):
    zoho_sandbox.seed_module("Leads", 5)
    hook = make_hook(monkeypatch, zoho_sandbox)
    with pytest.raises(ZohoApiError) as caught:
        hook.create_bulk_read_job("Leads", fields=["No_Such_Field"])
    assert caught.value.status_code == 400
    with pytest.raises(ZohoApiError):  # not another endpoint: the id is one path segment
        hook.get_bulk_read_job("../write/1")
    requests_seen = [entry["path"] for entry in zoho_sandbox.stats()["requests"]]
    assert any(path.endswith("/crm/bulk/v8/read/..%2Fwrite%2F1") for path in requests_seen)


@pytest.mark.parametrize(("details", "said"), [
    ({"state": ["COMPLETED"]}, "state to be a string"),
    ({"state": "COMPLETED", "result": {"more_records": "yes"}}, "result.more_records to be true or false"),
    ({"state": "COMPLETED", "result": {"page": "1"}}, "result.page to be a number"),
    ("COMPLETED", "got a JSON string"),
])
def test_malformed_read_details_are_named(details, said):
    with pytest.raises(ZohoMalformedResponseError, match=said):
        bulk_job.normalise_read_job(details)


def test_a_completed_job_without_a_download_url_is_malformed():
    job = bulk_job.normalise_read_job({"state": "Completed", "result": {"page": 1, "count": 0}})
    assert job["status"] == "COMPLETED"
    with pytest.raises(ZohoMalformedResponseError, match="download_url"):
        bulk_job.read_page(job, "1")


def test_the_bulk_write_trigger_keeps_its_class_path_and_kwargs():
    """Tasks deferred by an earlier release were serialised with this class path and these kwargs."""
    classpath, kwargs = ZohoBulkWriteJobTrigger("1", poll_interval=5).serialize()
    assert classpath == "airflow_provider_zohobulk.triggers.bulk_write.ZohoBulkWriteJobTrigger"
    assert set(kwargs) == {"job_id", "zoho_conn_id", "poll_interval", "hook_kwargs"}
    assert ZohoBulkWriteJobTrigger(**kwargs).operation == "write"
    with pytest.raises(ZohoConfigurationError, match="unknown Bulk job operation"):
        ZohoBulkJobTrigger("1", operation="delete")
