"""The sandbox's Bulk Read over real HTTP: jobs and their states, pages and page tokens, criteria, the
streamed page zips, Zoho's limits, faults, and the admin API a future operator's tests will use."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from datetime import datetime, timezone

import pytest
import requests
from stream_unzip import stream_unzip

from airflow_provider_zohobulk.errors import ZohoConfigurationError
from airflow_provider_zohobulk.sandbox import ZohoSandbox, bulk_read
from airflow_provider_zohobulk.sandbox.server import ADMIN_TOKEN_ENV

LEADS_FIRST_ID = 4_150_868_000_100_000_000
LEADS_FIELDS = ["Id", "Owner", "Company", "First_Name", "Last_Name", "Email", "Phone", "Mobile", "Lead_Status",
                "Lead_Source", "Industry", "Annual_Revenue", "No_of_Employees", "Rating", "Email_Opt_Out",
                "Description", "Street", "City", "State", "Zip_Code", "Country", "Created_Time", "Modified_Time"]


# --- helpers ------------------------------------------------------------------------------------------


def token(sandbox) -> str:
    body = requests.post(f"{sandbox.url}/oauth/v2/token", timeout=10, params={
        "grant_type": "refresh_token", "client_id": "sandbox-client-id", "client_secret": "sandbox-client-secret",
        "refresh_token": "sandbox-refresh-token"}).json()
    assert "access_token" in body, body
    return body["access_token"]


def auth(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Zoho-oauthtoken {access_token}"}


def create(sandbox, access: str, module: str = "Leads", **query) -> requests.Response:
    """POST /crm/bulk/v8/read; ``query`` goes into the body's query (``body=`` replaces the whole body)."""
    body = query.pop("body", None) or {"callback": {"url": "https://example.com/cb", "method": "post"},
                                       "query": {"module": {"api_name": module}, **query}}
    return requests.post(f"{sandbox.url}/crm/bulk/v8/read", json=body, headers=auth(access), timeout=60)


def created_id(response: requests.Response) -> str:
    assert response.status_code == 201, response.text
    return response.json()["data"][0]["details"]["id"]


def details(sandbox, access: str, job_id: str) -> dict:
    response = requests.get(f"{sandbox.url}/crm/bulk/v8/read/{job_id}", headers=auth(access), timeout=10)
    assert response.status_code == 200, response.text
    (entry,) = response.json()["data"]
    return entry


def download(sandbox, access: str, job_id: str, **kwargs) -> requests.Response:
    path = details(sandbox, access, job_id)["result"]["download_url"]
    return requests.get(f"{sandbox.url}{path}", headers=auth(access), timeout=60, **kwargs)


def page_csv(zip_bytes: bytes, job_id: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        assert archive.namelist() == [f"{job_id}.csv"]
        return archive.read(f"{job_id}.csv")  # zipfile checks the CRC-32 at the end


def rows_of(csv_bytes: bytes) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.reader(io.StringIO(csv_bytes.decode("utf-8"), newline=""))
    header = next(reader)
    return header, [dict(zip(header, row, strict=True)) for row in reader]


def read_page(sandbox, access: str, job_id: str) -> list[dict[str, str]]:
    return rows_of(page_csv(download(sandbox, access, job_id).content, job_id))[1]


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture
def sandbox(zoho_sandbox):
    """A sandbox without the download limit (tests of the limit set it back), and a token."""
    zoho_sandbox.configure(bulk_read_downloads_per_minute=None)
    return zoho_sandbox, token(zoho_sandbox)


# --- jobs ------------------------------------------------------------------------------------------------


def test_create_and_details_have_zohos_shape(sandbox):
    zoho_sandbox, access = sandbox
    response = create(zoho_sandbox, access, fields=["Last_Name", "Email"])
    assert response.status_code == 201
    body = response.json()
    assert body["info"] == {}
    (entry,) = body["data"]
    assert (entry["status"], entry["code"], entry["message"]) == ("success", "ADDED_SUCCESSFULLY",
                                                                  "Added successfully.")
    job_id = entry["details"]["id"]
    assert len(job_id) == 19 and job_id.isdigit()
    assert entry["details"]["operation"] == "read" and entry["details"]["state"] == "ADDED"
    assert entry["details"]["created_by"]["name"] == "Sandbox User"
    assert instant(entry["details"]["created_time"]).utcoffset() is not None

    job = details(zoho_sandbox, access, job_id)
    assert (job["id"], job["operation"], job["state"], job["file_type"]) == (job_id, "read", "COMPLETED", "csv")
    assert job["query"]["module"]["api_name"] == "Leads" and job["query"]["module"]["id"].isdigit()
    assert job["query"]["fields"] == ["Last_Name", "Email"] and job["query"]["page"] == 1
    assert job["callback"] == {"url": "https://example.com/cb", "method": "post"}
    assert job["result"] == {"page": 1, "count": 1000, "download_url": f"/crm/bulk/v8/read/{job_id}/result",
                             "per_page": 200000, "more_records": False}

    answer = download(zoho_sandbox, access, job_id)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/zip"
    assert answer.headers["Content-Disposition"] == f'attachment; filename="{job_id}.zip"'
    header, rows = rows_of(page_csv(answer.content, job_id))
    assert header == ["Last_Name", "Email"] and len(rows) == 1000
    missing = requests.get(f"{zoho_sandbox.url}/crm/bulk/v8/read/4150868000000000000", headers=auth(access),
                           timeout=10)
    assert missing.status_code == 400 and missing.json()["code"] == "RESOURCE_NOT_FOUND"


@pytest.mark.parametrize("spelling", ["IN PROGRESS", "INPROGRESS"])
def test_states_advance_with_the_sandbox_clock(sandbox, spelling):
    zoho_sandbox, access = sandbox
    zoho_sandbox.configure(job_step_seconds=30, in_progress_spelling=spelling)
    job_id = created_id(create(zoho_sandbox, access))
    seen = []
    for _ in range(4):
        job = details(zoho_sandbox, access, job_id)
        seen.append(job["state"])
        if job["state"] != "COMPLETED":
            assert "result" not in job
            early = requests.get(f"{zoho_sandbox.url}/crm/bulk/v8/read/{job_id}/result", headers=auth(access),
                                 timeout=10)
            assert early.status_code == 400 and early.json()["code"] == "INVALID_REQUEST"
            assert early.json()["details"]["state"] == job["state"]
        zoho_sandbox.advance_clock(31)
    assert seen == ["ADDED", "QUEUED", spelling, "COMPLETED"]
    assert job["result"]["count"] == 1000
    assert zoho_sandbox.read_jobs()[0]["downloads"] == 0  # refused downloads do not count


def test_every_record_shape_and_field_selection(sandbox):
    zoho_sandbox, access = sandbox
    zoho_sandbox.seed_module("Leads", 3000, seed=7)
    rows = read_page(zoho_sandbox, access, created_id(create(zoho_sandbox, access)))
    assert list(rows[0]) == LEADS_FIELDS
    assert [int(r["Id"]) for r in rows] == list(range(LEADS_FIRST_ID, LEADS_FIRST_ID + 3000))
    assert all(len(r["Id"]) == 19 for r in rows)
    descriptions = [r["Description"] for r in rows]
    assert any("," in d for d in descriptions) and any('"' in d for d in descriptions)
    assert any("\n" in d for d in descriptions) and any("\r\n" in d for d in descriptions)
    assert any(not d for d in descriptions) and any(not r["Phone"] for r in rows)
    assert all(r["Last_Name"] for r in rows)  # mandatory in Zoho
    assert any(ord(c) > 127 for r in rows for c in r["Company"] + r["Last_Name"])
    for row in rows:
        modified, created = instant(row["Modified_Time"]), instant(row["Created_Time"])
        assert modified.utcoffset().total_seconds() == 5.5 * 3600
        assert created <= modified
        assert datetime(2025, 7, 1, tzinfo=timezone.utc) <= modified < datetime(2026, 7, 1, tzinfo=timezone.utc)

    chosen = ["Modified_Time", "Email", "Id"]
    job_id = created_id(create(zoho_sandbox, access, fields=chosen))
    header, picked = rows_of(page_csv(download(zoho_sandbox, access, job_id).content, job_id))
    assert header == chosen
    assert [(r["Id"], r["Email"], r["Modified_Time"]) for r in picked] == [
        (r["Id"], r["Email"], r["Modified_Time"]) for r in rows]

    zoho_sandbox.configure(bulk_read_quote_all=True)
    text = page_csv(download(zoho_sandbox, access, job_id).content, job_id).decode()
    assert text.startswith('"Modified_Time","Email","Id"\r\n"20')
    assert rows_of(text.encode())[1] == picked


def test_other_modules(sandbox):
    zoho_sandbox, access = sandbox
    modules = zoho_sandbox.read_modules()
    assert set(modules) == {"Leads", "Contacts", "Deals"}
    for module in ("Contacts", "Deals"):
        rows = read_page(zoho_sandbox, access, created_id(create(zoho_sandbox, access, module=module)))
        assert list(rows[0]) == modules[module]["fields"]
        assert len(rows) == 1000 and rows[0]["Id"] == modules[module]["first_id"]
        assert rows[-1]["Id"] == modules[module]["last_id"]
    assert create(zoho_sandbox, access, module="Accounts").json()["code"] == "INVALID_MODULE"


# --- pages ------------------------------------------------------------------------------------------------


def test_four_pages_by_token_and_by_number(sandbox):
    zoho_sandbox, access = sandbox
    zoho_sandbox.seed_module("Leads", 3500, seed=3)
    zoho_sandbox.configure(bulk_read_per_page=1000)
    first = created_id(create(zoho_sandbox, access))
    result = details(zoho_sandbox, access, first)["result"]
    assert (result["page"], result["count"], result["per_page"], result["more_records"]) == (1, 1000, 1000, True)
    pages = [read_page(zoho_sandbox, access, first)]
    token_ = result["next_page_token"]
    for number in (2, 3, 4):
        by_token = created_id(create(zoho_sandbox, access, page_token=token_))
        result = details(zoho_sandbox, access, by_token)["result"]
        assert result["page"] == number
        assert details(zoho_sandbox, access, by_token)["query"]["page_token"] == token_
        by_number = created_id(create(zoho_sandbox, access, page=number))
        assert details(zoho_sandbox, access, by_number)["result"]["count"] == result["count"]
        pages.append(read_page(zoho_sandbox, access, by_token))
        assert read_page(zoho_sandbox, access, by_number) == pages[-1]
        token_ = result.get("next_page_token")
    assert (result["count"], result["more_records"], token_) == (500, False, None)
    assert [len(page) for page in pages] == [1000, 1000, 1000, 500]
    ids = [int(row["Id"]) for page in pages for row in page]
    assert ids == list(range(LEADS_FIRST_ID, LEADS_FIRST_ID + 3500))
    expected = zoho_sandbox.client().read_records("Leads", limit=3500)
    assert [row for page in pages for row in page] == [dict(zip(expected["fields"], r, strict=True))
                                                       for r in expected["records"]]
    beyond = created_id(create(zoho_sandbox, access, page=5))
    assert details(zoho_sandbox, access, beyond)["result"]["count"] == 0
    assert read_page(zoho_sandbox, access, beyond) == []


def test_page_tokens_expire_and_belong_to_their_query(sandbox):
    zoho_sandbox, access = sandbox
    zoho_sandbox.configure(bulk_read_per_page=400, job_step_seconds=10)
    since = {"field": {"api_name": "Modified_Time"}, "comparator": "greater_equal",
             "value": "2025-10-01T00:00:00+00:00"}
    first = created_id(create(zoho_sandbox, access, criteria=since))
    zoho_sandbox.advance_clock(30)
    token_ = details(zoho_sandbox, access, first)["result"]["next_page_token"]
    for query, reason in ((dict(criteria=since, page_token="not-a-token"), "invalid"),
                          (dict(page_token=token_), "another query"),
                          (dict(module="Contacts", criteria=since, page_token=token_), "another query"),
                          (dict(criteria=since, page_token=token_, page=2), "not both")):
        refused = create(zoho_sandbox, access, **query)
        assert refused.status_code == 400, query
        body = refused.json()
        assert (body["status"], body["code"]) == ("error", "INVALID_DATA")
        assert body["details"]["api_name"] == "page_token" and reason in body["message"]
    zoho_sandbox.advance_clock(24 * 3600 - 60)  # just under 24 h since the token was given
    access = token(zoho_sandbox)  # the access token lives an hour only
    assert create(zoho_sandbox, access, criteria=since, page_token=token_).status_code == 201
    zoho_sandbox.advance_clock(61)
    expired = create(zoho_sandbox, access, criteria=since, page_token=token_)
    assert expired.status_code == 400 and "expired" in expired.json()["message"]


def test_the_same_seed_gives_the_same_bytes(sandbox):
    zoho_sandbox, access = sandbox
    zoho_sandbox.seed_module("Deals", 2500, seed=42)
    job_id = created_id(create(zoho_sandbox, access, module="Deals"))
    first = download(zoho_sandbox, access, job_id).content
    assert download(zoho_sandbox, access, job_id).content == first
    other_job = created_id(create(zoho_sandbox, access, module="Deals"))
    assert page_csv(download(zoho_sandbox, access, other_job).content, other_job) == page_csv(first, job_id)
    with ZohoSandbox() as elsewhere:
        elsewhere.configure(bulk_read_downloads_per_minute=None)
        elsewhere.seed_module("Deals", 2500, seed=42)
        their_token = token(elsewhere)
        theirs = created_id(create(elsewhere, their_token, module="Deals"))
        assert page_csv(download(elsewhere, their_token, theirs).content, theirs) == page_csv(first, job_id)
        elsewhere.seed_module("Deals", 2500, seed=43)
        reseeded = created_id(create(elsewhere, their_token, module="Deals"))
        other = rows_of(page_csv(download(elsewhere, their_token, reseeded).content, reseeded))[1]
    same = rows_of(page_csv(first, job_id))[1]
    assert [r["Id"] for r in other] == [r["Id"] for r in same]
    assert sum(a != b for a, b in zip(other, same, strict=True)) > 2000  # another seed, other values


def test_a_job_keeps_the_records_it_started_with(sandbox):
    zoho_sandbox, access = sandbox
    zoho_sandbox.configure(bulk_read_per_page=600)
    job_id = created_id(create(zoho_sandbox, access))
    before = read_page(zoho_sandbox, access, job_id)
    token_ = details(zoho_sandbox, access, job_id)["result"]["next_page_token"]
    zoho_sandbox.seed_module("Leads", 5, seed=99)
    assert read_page(zoho_sandbox, access, job_id) == before
    rest = read_page(zoho_sandbox, access, created_id(create(zoho_sandbox, access, page_token=token_)))
    assert len(rest) == 400 and int(rest[0]["Id"]) == LEADS_FIRST_ID + 600
    assert len(read_page(zoho_sandbox, access, created_id(create(zoho_sandbox, access)))) == 5


# --- criteria ----------------------------------------------------------------------------------------------


def _between(low: str, high: str) -> dict:
    return {"field": {"api_name": "Modified_Time"}, "comparator": "between", "value": [low, high]}


CRITERIA = {
    "between": (_between("2025-09-01T00:00:00+00:00", "2025-12-01T00:00:00+00:00"),
                lambda r: datetime(2025, 9, 1, tzinfo=timezone.utc) <= instant(r["Modified_Time"])
                <= datetime(2025, 12, 1, tzinfo=timezone.utc)),
    "greater_equal": ({"field": {"api_name": "Modified_Time"}, "comparator": "greater_equal",
                       "value": "2026-03-01T05:30:00+05:30"},
                      lambda r: instant(r["Modified_Time"]) >= datetime(2026, 3, 1, tzinfo=timezone.utc)),
    "less_than": ({"api_name": "Modified_Time", "comparator": "less_than", "value": "2025-08-01T00:00:00Z"},
                  lambda r: instant(r["Modified_Time"]) < datetime(2025, 8, 1, tzinfo=timezone.utc)),
    "and_group": ({"group_operator": "and", "group": [
                       {"field": {"api_name": "Modified_Time"}, "comparator": "greater_equal",
                        "value": "2025-10-01T00:00:00+00:00"},
                       {"field": {"api_name": "Modified_Time"}, "comparator": "less_than",
                        "value": "2026-01-01T00:00:00+00:00"},
                       {"field": {"api_name": "Lead_Source"}, "comparator": "equal", "value": "Trade Show"}]},
                  lambda r: datetime(2025, 10, 1, tzinfo=timezone.utc) <= instant(r["Modified_Time"])
                  < datetime(2026, 1, 1, tzinfo=timezone.utc) and r["Lead_Source"] == "Trade Show"),
    "or_group": ({"group_operator": "or", "group": [
                      {"field": {"api_name": "Lead_Status"}, "comparator": "equal", "value": "Junk Lead"},
                      {"field": {"api_name": "Country"}, "comparator": "in", "value": ["Japan", "Nigeria"]}]},
                 lambda r: r["Lead_Status"] == "Junk Lead" or r["Country"] in ("Japan", "Nigeria")),
    "text_equal": ({"field": {"api_name": "Company"}, "comparator": "equal", "value": "Acme, Inc."},
                   lambda r: r["Company"] == "Acme, Inc."),
    "created_not_equal_empty": ({"field": {"api_name": "Industry"}, "comparator": "not_equal", "value": ""},
                                lambda r: r["Industry"] != ""),
}


@pytest.mark.parametrize("name", list(CRITERIA))
def test_criteria_select_the_matching_records_over_pages(sandbox, name):
    """Each page set is checked against the whole module, downloaded and filtered here by the test."""
    zoho_sandbox, access = sandbox
    zoho_sandbox.seed_module("Leads", 4000, seed=11)
    everything = read_page(zoho_sandbox, access, created_id(create(zoho_sandbox, access)))
    criteria, keep = CRITERIA[name]
    expected = [row for row in everything if keep(row)]
    assert 0 < len(expected) < len(everything)
    zoho_sandbox.configure(bulk_read_per_page=max(len(expected) // 3, 1))
    selected, page_token = [], None
    while True:
        query = {"criteria": criteria, **({"page_token": page_token} if page_token else {})}
        job_id = created_id(create(zoho_sandbox, access, **query))
        result = details(zoho_sandbox, access, job_id)["result"]
        page = read_page(zoho_sandbox, access, job_id)
        assert result["count"] == len(page)
        selected += page
        if not result["more_records"]:
            break
        page_token = result["next_page_token"]
    assert selected == expected
    assert zoho_sandbox.read_records("Leads", criteria)["matching"] == len(expected)


def test_modified_time_equal_and_created_time(sandbox):
    zoho_sandbox, access = sandbox
    everything = read_page(zoho_sandbox, access, created_id(create(zoho_sandbox, access)))
    target = everything[123]
    equal = {"field": {"api_name": "Modified_Time"}, "comparator": "equal", "value": target["Modified_Time"]}
    assert target in read_page(zoho_sandbox, access, created_id(create(zoho_sandbox, access, criteria=equal)))
    created = {"field": {"api_name": "Created_Time"}, "comparator": "less_equal", "value": target["Created_Time"]}
    rows = read_page(zoho_sandbox, access, created_id(create(zoho_sandbox, access, criteria=created)))
    assert rows == [r for r in everything if instant(r["Created_Time"]) <= instant(target["Created_Time"])]


@pytest.mark.parametrize(("query", "code", "api_name", "json_path"), [
    ({"fields": ["Last_Name", "Shoe_Size"]}, "INVALID_QUERY", "Shoe_Size", "$.query.fields[1]"),
    ({"criteria": {"field": {"api_name": "Shoe_Size"}, "comparator": "equal", "value": "9"}}, "INVALID_QUERY",
     "Shoe_Size", "$.query.criteria.field"),
    ({"criteria": {"field": {"api_name": "Modified_Time"}, "comparator": "starts_with", "value": "2025"}},
     "INVALID_QUERY", "Modified_Time", "$.query.criteria.comparator"),
    ({"criteria": {"field": {"api_name": "Last_Name"}, "comparator": "greater_than", "value": "M"}},
     "INVALID_QUERY", "Last_Name", "$.query.criteria.comparator"),
    ({"criteria": {"field": {"api_name": "Modified_Time"}, "comparator": "greater_equal",
                   "value": "2025-10-01T00:00:00"}}, "INVALID_QUERY", "Modified_Time", "$.query.criteria.value"),
    ({"criteria": _between("2025-10-01T00:00:00+00:00", "nonsense")}, "INVALID_QUERY", "Modified_Time",
     "$.query.criteria.value"),
    ({"criteria": {"group_operator": "xor", "group": []}}, "INVALID_QUERY", "group_operator",
     "$.query.criteria.group_operator"),
    ({"criteria": {"group_operator": "and", "group": [
        {"field": {"api_name": "Modified_Time"}, "comparator": "less_than", "value": "2026-01-01T00:00:00Z"},
        {"field": {"api_name": "Nope"}, "comparator": "equal", "value": "x"}]}},
     "INVALID_QUERY", "Nope", "$.query.criteria.group[1].field"),
    ({"page": 0}, "INVALID_DATA", "page", "$.query.page"),
    ({"module": {"api_name": "Widgets"}}, "INVALID_MODULE", "Widgets", "$.query.module"),
    ({"module": None}, "MANDATORY_NOT_FOUND", "module", "$.query.module"),
])
def test_bad_queries_are_zoho_400s(sandbox, query, code, api_name, json_path):
    zoho_sandbox, access = sandbox
    body = {"query": {"module": {"api_name": "Leads"}, **query}}
    response = create(zoho_sandbox, access, body=body)
    assert response.status_code == 400
    answer = response.json()
    assert (answer["status"], answer["code"]) == ("error", code)
    assert answer["details"]["api_name"] == api_name and answer["details"]["json_path"] == json_path
    assert zoho_sandbox.read_jobs() == []


def test_bad_bodies_and_file_types(sandbox):
    zoho_sandbox, access = sandbox
    not_json = requests.post(f"{zoho_sandbox.url}/crm/bulk/v8/read", data=b"{", headers=auth(access), timeout=10)
    assert not_json.status_code == 400 and not_json.json()["code"] == "INVALID_DATA"
    assert create(zoho_sandbox, access, body={"callback": {}}).json()["code"] == "MANDATORY_NOT_FOUND"
    ics = create(zoho_sandbox, access, body={"file_type": "ics", "query": {"module": {"api_name": "Leads"}}})
    assert ics.status_code == 400 and ics.json()["details"]["api_name"] == "file_type"
    v2 = requests.post(f"{zoho_sandbox.url}/crm/bulk/v2/read", json={"query": {"module": "Contacts"}},
                       headers=auth(access), timeout=10)
    job = details(zoho_sandbox, access, created_id(v2))
    assert job["result"]["download_url"].startswith("/crm/bulk/v2/read/")
    assert requests.post(f"{zoho_sandbox.url}/crm/bulk/v8/read", json={"query": {"module": "Leads"}},
                         timeout=10).status_code == 401
    assert zoho_sandbox.stats()["read_jobs"] == 1


# --- Zoho's limits ------------------------------------------------------------------------------------------


def test_eleventh_download_in_a_minute_is_throttled(zoho_sandbox):
    access = token(zoho_sandbox)
    job_id = created_id(create(zoho_sandbox, access, fields=["Id"]))
    assert all(download(zoho_sandbox, access, job_id).status_code == 200 for _ in range(10))
    zoho_sandbox.advance_clock(20)
    throttled = download(zoho_sandbox, access, job_id)
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "TOO_MANY_REQUESTS" and throttled.json()["status"] == "error"
    retry_after = int(throttled.headers["Retry-After"])
    assert 35 <= retry_after <= 41  # the first download leaves the minute 40 sandbox seconds from now
    zoho_sandbox.advance_clock(retry_after - 5)
    assert download(zoho_sandbox, access, job_id).status_code == 429
    zoho_sandbox.advance_clock(6)
    assert download(zoho_sandbox, access, job_id).status_code == 200
    assert zoho_sandbox.stats()["read_downloads"] == 11
    assert zoho_sandbox.read_jobs()[0]["downloads"] == 11
    zoho_sandbox.configure(bulk_read_downloads_per_minute=None)
    assert all(download(zoho_sandbox, access, job_id).status_code == 200 for _ in range(12))


def test_eleventh_running_job_is_refused(zoho_sandbox):
    access = token(zoho_sandbox)
    zoho_sandbox.configure(job_step_seconds=60)
    ids = [created_id(create(zoho_sandbox, access)) for _ in range(10)]
    zoho_sandbox.advance_clock(100)
    refused = create(zoho_sandbox, access)
    assert refused.status_code == 429
    assert refused.json() == {"code": "TOO_MANY_REQUESTS", "details": {"limit": 10},
                              "message": "too many bulk read jobs in progress: at most 10 per org at a time",
                              "status": "error"}
    assert 70 <= int(refused.headers["Retry-After"]) <= 81  # the first job finishes 180 s after creation
    assert len(zoho_sandbox.read_jobs()) == 10
    zoho_sandbox.advance_clock(81)
    assert details(zoho_sandbox, access, ids[0])["state"] == "COMPLETED"
    assert create(zoho_sandbox, access).status_code == 201
    zoho_sandbox.configure(bulk_read_max_active_jobs=None)
    assert create(zoho_sandbox, access).status_code == 201


def test_a_failed_job(sandbox):
    zoho_sandbox, access = sandbox
    zoho_sandbox.configure(job_step_seconds=10, bulk_read_per_page=100)
    zoho_sandbox.add_fault("bulk_read_failed", message="the export could not be completed")
    requests.get(f"{zoho_sandbox.url}/crm/bulk/v8/write/1", headers=auth(access), timeout=10)  # not a read create
    failing = created_id(create(zoho_sandbox, access))
    succeeding = created_id(create(zoho_sandbox, access))
    assert details(zoho_sandbox, access, failing)["state"] == "ADDED"
    zoho_sandbox.advance_clock(31)
    job = details(zoho_sandbox, access, failing)
    assert job["state"] == "FAILED" and "result" not in job
    assert job["error"] == {"code": "INTERNAL_ERROR", "message": "the export could not be completed", "details": {}}
    refused = requests.get(f"{zoho_sandbox.url}/crm/bulk/v8/read/{failing}/result", headers=auth(access), timeout=10)
    assert refused.status_code == 400 and refused.json()["details"]["state"] == "FAILED"
    assert details(zoho_sandbox, access, succeeding)["result"]["more_records"] is True
    assert [j["state"] for j in zoho_sandbox.read_jobs()] == ["FAILED", "COMPLETED"]
    assert zoho_sandbox.read_jobs()[0]["next_page_token"] is None


# --- faults ----------------------------------------------------------------------------------------------------


@pytest.fixture
def ready(sandbox):
    """A completed job over 20,000 Leads (a zip of a few hundred kB) and its page, before any fault."""
    zoho_sandbox, access = sandbox
    zoho_sandbox.seed_module("Leads", 20000, seed=5)
    job_id = created_id(create(zoho_sandbox, access))
    url = zoho_sandbox.url + details(zoho_sandbox, access, job_id)["result"]["download_url"]
    original = requests.get(url, headers=auth(access), timeout=60).content
    return zoho_sandbox, access, job_id, url, original


def test_status_and_reset_faults_hit_the_read_endpoints(ready):
    zoho_sandbox, access, job_id, url, _ = ready
    zoho_sandbox.add_fault("status", status=500, path_prefix="/crm/bulk/v8/read")
    zoho_sandbox.add_fault("status", status=429, retry_after=3, path_prefix="/crm/bulk/v8/read")
    zoho_sandbox.add_fault("status", status=503, path_prefix="/crm/bulk/v8/read")
    zoho_sandbox.add_fault("reset_connection", path_prefix="/crm/bulk/v8/read")
    assert requests.get(f"{zoho_sandbox.url}/crm/bulk/v8/write/1", headers=auth(access),
                        timeout=10).status_code == 400  # another API: the faults wait
    failed = create(zoho_sandbox, access)
    assert failed.status_code == 500 and failed.json()["code"] == "INTERNAL_ERROR"
    throttled = requests.get(f"{zoho_sandbox.url}/crm/bulk/v8/read/{job_id}", headers=auth(access), timeout=10)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "3")
    assert requests.get(url, headers=auth(access), timeout=10).status_code == 503
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, headers=auth(access), timeout=10)
    assert zoho_sandbox.stats()["pending_faults"] == []
    assert len(zoho_sandbox.read_jobs()) == 1  # the 500 created nothing


def test_drop_mid_body(ready):
    zoho_sandbox, access, _, url, original = ready
    zoho_sandbox.add_fault("drop_mid_body", fraction=0.4)
    received = bytearray()
    with requests.get(url, headers=auth(access), timeout=60, stream=True) as response:
        assert response.status_code == 200 and response.headers["Transfer-Encoding"] == "chunked"
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in response.iter_content(8192):
                received += chunk
    assert 0 < len(received) < len(original)
    assert requests.get(url, headers=auth(access), timeout=60).content == original


def test_truncate_and_corrupt_zip(ready):
    zoho_sandbox, access, job_id, url, original = ready
    zoho_sandbox.add_fault("truncate_zip", percent=30)
    truncated = requests.get(url, headers=auth(access), timeout=60).content  # the HTTP body ends cleanly
    assert 0 < len(truncated) < len(original)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(truncated))
    zoho_sandbox.add_fault("corrupt_zip")
    corrupt = requests.get(url, headers=auth(access), timeout=60).content
    assert len(corrupt) == len(original) and corrupt != original
    yielded = bytearray()
    with pytest.raises(Exception) as info:  # checked by name below: stream_unzip's own
        for _, _, chunks in stream_unzip(iter([corrupt])):
            for chunk in chunks:
                yielded += chunk
    assert type(info.value).__name__ == "CRC32IntegrityError"
    assert bytes(yielded) == page_csv(original, job_id)  # every byte arrived before the error did
    with zipfile.ZipFile(io.BytesIO(corrupt)) as seekable, pytest.raises(zipfile.BadZipFile, match="CRC"):
        seekable.read(f"{job_id}.csv")


def test_error_body_expired_link_slow_body_and_redirect(ready):
    zoho_sandbox, access, _, url, original = ready
    zoho_sandbox.add_fault("error_body", content_type="text/html")
    html = requests.get(url, headers=auth(access), timeout=10)
    assert html.status_code == 200 and html.headers["Content-Type"] == "text/html"
    zoho_sandbox.add_fault("expired_link")
    assert requests.get(url, headers=auth(access), timeout=10).json() == {"info": "Forbidden",
                                                                          "x-info": "Link not valid"}
    zoho_sandbox.add_fault("slow_body", delay=3, chunk_size=4096)
    with requests.get(url, headers=auth(access), timeout=(5, 0.5), stream=True) as response:
        received = bytearray()
        with pytest.raises(requests.exceptions.ConnectionError):
            for chunk in response.iter_content(1024):
                received += chunk
    assert len(received) == 4096
    elsewhere = url.replace("127.0.0.1", "localhost")
    zoho_sandbox.add_fault("redirect", location=elsewhere, presigned=True)
    moved = requests.get(url, headers=auth(access), timeout=10, allow_redirects=False)
    assert moved.status_code == 302
    assert requests.get(moved.headers["Location"], timeout=60).content == original  # signed: no token needed


def test_expired_and_revoked_tokens_on_the_read_endpoints(ready):
    zoho_sandbox, access, job_id, url, _ = ready
    zoho_sandbox.advance_clock(3601)
    for answer in (create(zoho_sandbox, access), requests.get(url, headers=auth(access), timeout=10),
                   requests.get(f"{zoho_sandbox.url}/crm/bulk/v8/read/{job_id}", headers=auth(access), timeout=10)):
        assert answer.status_code == 401 and answer.json()["code"] == "INVALID_TOKEN"
    fresh = token(zoho_sandbox)
    assert requests.get(url, headers=auth(fresh), timeout=60).status_code == 200
    zoho_sandbox.revoke_refresh_token("sandbox-refresh-token")
    assert requests.get(url, headers=auth(fresh), timeout=10).status_code == 401
    revoked = requests.post(f"{zoho_sandbox.url}/oauth/v2/token", timeout=10, params={
        "grant_type": "refresh_token", "client_id": "sandbox-client-id", "client_secret": "sandbox-client-secret",
        "refresh_token": "sandbox-refresh-token"})
    assert revoked.json() == {"error": "invalid_code"}


# --- the zip writer, state, admin API --------------------------------------------------------------------------


@pytest.mark.parametrize("zip64", [False, True])
def test_streamed_zip_reads_back_in_both_readers(zip64):
    blocks = [b"Id,Name\r\n", b"".join(b"%d,name %d\r\n" % (i, i) for i in range(50000)), b"", b"last,row\r\n"]
    archive = b"".join(bulk_read.zip_stream("x.csv", iter(blocks), zip64=zip64, modified=1767225600))
    with zipfile.ZipFile(io.BytesIO(archive)) as seekable:
        (info,) = seekable.infolist()
        assert seekable.read("x.csv") == b"".join(blocks)
        assert info.compress_type == zipfile.ZIP_DEFLATED and info.date_time == (2026, 1, 1, 5, 30, 0)
    streamed = [(name, b"".join(chunks)) for name, _, chunks in stream_unzip(iter([archive]))]
    assert streamed == [(b"x.csv", b"".join(blocks))]


def test_state_file_keeps_read_jobs_tokens_and_modules(tmp_path):
    state = tmp_path / "sandbox.json"
    with ZohoSandbox(state_file=state, bulk_read_per_page=300) as first:
        access = token(first)
        first.seed_module("Contacts", 700, seed=4)
        job_id = created_id(create(first, access, module="Contacts"))
        archive = download(first, access, job_id).content
        token_ = details(first, access, job_id)["result"]["next_page_token"]
    with ZohoSandbox(state_file=state) as restarted:
        assert restarted.read_modules()["Contacts"]["records"] == 700
        assert download(restarted, access, job_id).content == archive
        rest = created_id(create(restarted, access, module="Contacts", page_token=token_))
        assert details(restarted, access, rest)["result"]["page"] == 2
        assert restarted.read_jobs()[0]["downloads"] == 2
        assert restarted.stats()["read_downloads"] == 2
        restarted.reset()
        assert restarted.read_jobs() == [] and restarted.read_modules()["Contacts"]["records"] == 1000


def test_admin_api_over_http(zoho_sandbox):
    remote = zoho_sandbox.client()
    described = remote.seed_module("Deals", 50, seed=2, modified_from="2026-01-01T00:00:00+00:00",
                                   modified_to="2026-01-02T00:00:00+00:00")
    assert described["records"] == 50 and described["last_id"] == "4150868000300000049"
    assert described["modified_from"] == "2026-01-01T05:30:00+05:30"
    assert remote.read_modules()["Deals"] == described
    expected = remote.read_records("Deals", criteria=_between("2026-01-01T00:00:00+00:00",
                                                              "2026-01-01T12:00:00+00:00"), fields=["Id", "Stage"])
    assert expected["fields"] == ["Id", "Stage"] and 0 < expected["matching"] < 50
    job_id = remote.create_read_job({"query": {"module": {"api_name": "Deals"}, "fields": ["Id", "Stage"]}})
    assert remote.read_job_details(job_id)["data"][0]["result"]["count"] == 50
    assert remote.read_jobs()[0]["id"] == job_id and remote.read_job_details("404") is None
    access = token(zoho_sandbox)
    rows = read_page(zoho_sandbox, access, job_id)
    assert [[r["Id"], r["Stage"]] for r in rows if [r["Id"], r["Stage"]] in expected["records"]] == \
        expected["records"]
    for call, match in ((lambda: remote.seed_module("Accounts", 5), "Leads"),
                        (lambda: remote.seed_module("Leads", -1), "records"),
                        (lambda: remote.seed_module("Leads", 5, modified_from="yesterday"), "modified_from"),
                        (lambda: remote.read_records("Leads", fields=["Nope"]), "Nope"),
                        (lambda: remote.create_read_job({"query": {}}), "MANDATORY_NOT_FOUND"),
                        (lambda: remote.configure(bulk_read_per_page=0), "bulk_read_per_page"),
                        (lambda: remote.configure(bulk_read_downloads_per_minute=True), "downloads_per_minute")):
        with pytest.raises(ZohoConfigurationError, match=match):
            call()


# --- memory --------------------------------------------------------------------------------------------------------


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


class _ChunksReader(io.RawIOBase):
    """A file over an iterator of byte chunks, so csv can read a streamed member line by line."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            self._pending = next(self._chunks, None)
            if self._pending is None:
                self._pending = b""
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


@pytest.mark.slow
def test_a_million_record_page_streams_with_flat_memory(tmp_path):
    """The sandbox process's peak RSS grows by less than 50 MB while it serves a 1,000,000-record page
    (about 300 MB of CSV, 68 MB zipped; holding even the zip would grow it by about 80 MB): the page is
    generated as it is sent, never held. Measured growth: under 10 MB."""
    proc = subprocess.Popen([sys.executable, "-m", "airflow_provider_zohobulk.sandbox", "--port", "0",
                             "--read-records", "Leads=1000000", "--read-seed", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        printed = {}
        while ADMIN_TOKEN_ENV not in printed:
            line = proc.stdout.readline()
            assert line, "the sandbox did not start"
            key, _, value = line.strip().partition("=")
            printed[key] = value
        remote = ZohoSandbox.attach(printed["ZOHO_SANDBOX_URL"], admin_token=printed[ADMIN_TOKEN_ENV])
        remote.configure(bulk_read_per_page=1_000_000, bulk_read_downloads_per_minute=None)
        access = token(remote)
        warm_up = created_id(create(remote, access, module="Contacts"))  # every code path loaded once
        assert len(read_page(remote, access, warm_up)) == 1000
        before = _peak_rss_kib(proc.pid)

        job_id = created_id(create(remote, access))
        result = details(remote, access, job_id)["result"]
        assert (result["count"], result["more_records"]) == (1_000_000, False)
        with download(remote, access, job_id, stream=True) as response:
            assert "Content-Length" not in response.headers
            members = stream_unzip(response.iter_content(1 << 16))  # checks the CRC-32 and sizes at the end
            name, _, chunks = next(members)
            assert name == f"{job_id}.csv".encode()
            reader = csv.reader(io.TextIOWrapper(io.BufferedReader(_ChunksReader(chunks), 1 << 16),
                                                 encoding="utf-8", newline=""))
            assert next(reader) == LEADS_FIELDS
            count, last_id = 0, None
            for row in reader:
                count += 1
                last_id = row[0]
            assert next(members, None) is None
        after = _peak_rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert count == 1_000_000 and int(last_id) == LEADS_FIRST_ID + 999_999
    assert (after - before) / 1024 < 50, f"peak RSS grew by {(after - before) / 1024:.0f} MB"
