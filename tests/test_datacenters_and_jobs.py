"""Data-centre resolution, the token host allowlist, and the reading of job details."""

from __future__ import annotations

import pytest

from airflow_provider_zohobulk import bulk_job
from airflow_provider_zohobulk.datacenters import DATA_CENTER_CODES, resolve_endpoints
from airflow_provider_zohobulk.errors import BulkJobFailedError, ZohoConfigurationError, ZohoMalformedResponseError

FINISHED = {
    "status": "COMPLETED", "id": "4150868000005350003", "operation": "insert",
    "resource": [{"status": "COMPLETED", "code": "COMPLETED", "type": "data",
                  "module": {"id": "1", "api_name": "Leads"},
                  "file": {"status": "COMPLETED", "name": "Fil2.csv", "added_count": 9, "skipped_count": 2,
                           "updated_count": 0, "total_count": 11}}],
    "result": {"download_url": "https://download-accl.zoho.com/v2/crm/694902309/bulk-write/"
                               "4150868000005350003/4150868000005350003.zip"},
}


@pytest.mark.parametrize(
    ("dc", "accounts", "api", "download"),
    [("us", "https://accounts.zoho.com", "https://www.zohoapis.com", "download-accl.zoho.com"),
     ("eu", "https://accounts.zoho.eu", "https://www.zohoapis.eu", "download-accl.zoho.eu"),
     ("in", "https://accounts.zoho.in", "https://www.zohoapis.in", "download-accl.zoho.in"),
     ("au", "https://accounts.zoho.com.au", "https://www.zohoapis.com.au", "download-accl.zoho.com.au"),
     ("jp", "https://accounts.zoho.jp", "https://www.zohoapis.jp", "download-accl.zoho.jp"),
     ("cn", "https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn", "download-accl.zoho.com.cn"),
     ("ca", "https://accounts.zohocloud.ca", "https://www.zohoapis.ca", "download-accl.zohocloud.ca"),
     ("sa", "https://accounts.zoho.sa", "https://www.zohoapis.sa", "download-accl.zoho.sa")],
)
def test_every_data_centre(dc, accounts, api, download):
    endpoints = resolve_endpoints(dc)
    assert endpoints.token_url == f"{accounts}/oauth/v2/token"
    assert endpoints.api_domain == api
    assert endpoints.may_receive_token(f"https://{download}/v2/crm/1/bulk-write/2/2.zip")
    assert endpoints.may_receive_token(api + "/crm/bulk/v8/write/1")
    sandbox_org = api.replace("www.", "sandbox.")
    assert endpoints.may_receive_token(sandbox_org + "/crm/bulk/v8/write/1")


def test_a_token_never_crosses_data_centres():
    us = resolve_endpoints("us")
    assert not us.may_receive_token("https://www.zohoapis.eu/crm/bulk/v8/write/1")
    assert not us.may_receive_token("https://download-accl.zoho.in/x.zip")
    assert not us.may_receive_token("https://evil.example.com/www.zohoapis.com")
    assert not us.may_receive_token("https://www.zohoapis.com.evil.example/x")


def test_the_token_never_travels_over_plain_http_to_zoho():
    """A redirect from a Zoho host to http:// would put the token on the wire in clear text."""
    us = resolve_endpoints("us")
    assert us.may_receive_token("https://www.zohoapis.com/crm/bulk/v8/write/1")
    assert not us.may_receive_token("http://www.zohoapis.com/crm/bulk/v8/write/1")
    assert not us.may_receive_token("http://download-accl.zoho.com/x.zip")
    assert not us.may_receive_token("ftp://www.zohoapis.com/x")
    # Only a host the connection itself names with http:// (a local sandbox) is exempt, and only it.
    local = resolve_endpoints("us", api_domain="http://127.0.0.1:8080", accounts_url="http://127.0.0.1:8080")
    assert local.may_receive_token("http://127.0.0.1:8080/crm/bulk/v8/write/1")
    assert not local.may_receive_token("http://www.zohoapis.com/crm/bulk/v8/write/1")


@pytest.mark.parametrize("url", [
    "https://evil.example\\@www.zohoapis.com/crm/bulk/v8/write/1",  # urlsplit: zohoapis; requests: evil
    "HTTPS://evil.example\\@www.zohoapis.com/x",
    "https://evil.example%5C@www.zohoapis.com/x",
    "https://evil.example%2F@www.zohoapis.com/x",
    "https://evil.example\t@www.zohoapis.com/x",
    "https://user@www.zohoapis.com/x",
    "https://www.zohoapis.com:99999/x",
    "https://www.zohoapis.com:0/x",
    "https://[::1/www.zohoapis.com",
    "https://www.zohoapis.com /x",
    "https://www.zohoapis.com/x\n",
])
def test_the_token_decision_reads_the_host_requests_connects_to(url):
    """A URL two parsers could read differently never receives the token, even if one reads Zoho."""
    assert not resolve_endpoints("us").may_receive_token(url)


def test_an_ambiguous_configured_url_is_a_configuration_error():
    with pytest.raises(ZohoConfigurationError, match="backslash"):
        resolve_endpoints("us", api_domain="https://evil.example\\@www.zohoapis.com")
    with pytest.raises(ZohoConfigurationError, match="user information"):
        resolve_endpoints("us", download_hosts="http://user@files.example")


def test_overrides_and_extra_hosts():
    endpoints = resolve_endpoints("uk", api_domain="https://www.zohoapis.uk/", accounts_url="http://127.0.0.1:9/",
                                  download_hosts="files.example.zoho.uk, other.zoho.uk")
    assert endpoints.api_domain == "https://www.zohoapis.uk"
    assert endpoints.token_url == "http://127.0.0.1:9/oauth/v2/token"
    assert endpoints.upload_url == "https://www.zohoapis.uk/crm/v8/upload"
    assert endpoints.may_receive_token("https://other.zoho.uk/a.zip")
    assert endpoints.may_receive_token("https://FILES.example.zoho.uk/a.zip")


def test_unknown_data_centre_lists_the_known_ones():
    with pytest.raises(ZohoConfigurationError, match="eu"):
        resolve_endpoints("mars")
    assert len(DATA_CENTER_CODES) == 9


def test_bad_override_is_refused():
    with pytest.raises(ZohoConfigurationError, match="not an http"):
        resolve_endpoints("us", api_domain="ftp://x")


@pytest.mark.parametrize("spelling", ["IN PROGRESS", "INPROGRESS", "In Progress", "in_progress"])
def test_in_progress_spellings_are_one_state(spelling):
    job = bulk_job.normalise_job({"status": spelling, "resource": [{"status": spelling, "file": {"status": spelling}}]})
    assert job["status"] == bulk_job.IN_PROGRESS
    assert job["resource"][0]["status"] == bulk_job.IN_PROGRESS
    assert job["resource"][0]["file"]["status"] == bulk_job.IN_PROGRESS
    assert not bulk_job.is_complete(job)


def test_finished_job_reading():
    job = bulk_job.normalise_job(FINISHED)
    assert bulk_job.is_complete(job)
    assert bulk_job.expected_counts(job) == {"ADDED": 9, "UPDATED": 0, "SKIPPED": 2}
    assert bulk_job.job_id_from_download_url(bulk_job.download_url(job)) == "4150868000005350003"
    bulk_job.raise_if_failed(job, "4150868000005350003")


def test_running_job_has_no_counts_or_url():
    job = {"status": "IN PROGRESS", "resource": [{"status": "IN PROGRESS"}]}
    assert bulk_job.expected_counts(job) is None
    assert bulk_job.download_url(job) is None


def test_failed_resource_is_raised_with_zoho_code():
    job = {"status": "COMPLETED", "resource": [{"status": "FAILED", "code": "INVALID_DATA", "message": "bad file",
                                                "module": {"api_name": "Deals"}, "file": {"name": "d.csv"}}]}
    with pytest.raises(BulkJobFailedError, match=r"Deals.*bad file") as info:
        bulk_job.raise_if_failed(job, "77")
    assert info.value.code == "INVALID_DATA"
    assert "job 77" in str(info.value)


@pytest.mark.parametrize(("details", "named"), [
    ([{"status": "COMPLETED"}], "a JSON object with the job's details, got a JSON list"),
    (None, "a JSON object with the job's details, got null"),
    ({"status": "COMPLETED", "resource": [{"status": "FAILED", "file": "d.csv"}]},
     r"resource\[0\]\.file to be a JSON object in the job's details, got a JSON string \('d.csv'\)"),
    ({"status": "COMPLETED", "resource": "Leads"}, "resource to be a JSON list"),
    ({"status": "COMPLETED", "resource": [7]}, r"resource\[0\] to be a JSON object.*got a JSON number \(7\)"),
    ({"status": "COMPLETED", "resource": [{"file": {"status": 3}}]}, r"resource\[0\]\.file\.status to be a string"),
    ({"status": "COMPLETED", "result": "https://x"}, "result to be a JSON object"),
    ({"status": "COMPLETED", "result": {"download_url": ["https://x"]}}, "result.download_url to be a string"),
])
def test_job_details_of_the_wrong_shape_are_named(details, named):
    """Every reader of job details goes through normalise_job, so none meets a string for an object."""
    with pytest.raises(ZohoMalformedResponseError, match=named):
        bulk_job.normalise_job(details)


def test_job_details_with_optional_parts_missing_are_fine():
    for details in ({}, {"status": "ADDED", "resource": None, "result": None},
                    {"status": "COMPLETED", "resource": [{"module": "Leads", "file": None}]}):
        assert bulk_job.normalise_job(details) == details
