"""The Zoho sandbox over real HTTP: accounts, Bulk Write, downloads, faults, admin API and CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile

import pytest
import requests
from stream_unzip import stream_unzip
from stream_zip import ZIP_32, stream_zip

from airflow_provider_zohobulk.errors import ZohoConfigurationError
from airflow_provider_zohobulk.sandbox import ZohoSandbox, sample_leads_csv
from airflow_provider_zohobulk.sandbox.server import ADMIN_TOKEN_ENV, ADMIN_TOKEN_HEADER

SECRETS = ("sandbox-client-secret", "sandbox-refresh-token")


# --- helpers ------------------------------------------------------------------------------------------


def token_params(**overrides: str) -> dict[str, str]:
    return {"grant_type": "refresh_token", "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret", "refresh_token": "sandbox-refresh-token", **overrides}


def mint(sandbox, **overrides: str) -> requests.Response:
    return requests.post(f"{sandbox.url}/oauth/v2/token", params=token_params(**overrides), timeout=10)


def token(sandbox) -> str:
    body = mint(sandbox).json()
    assert "access_token" in body, body
    return body["access_token"]


def auth(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Zoho-oauthtoken {access_token}"}


def job_details(sandbox, job_id: str, access_token: str) -> requests.Response:
    return requests.get(f"{sandbox.url}/crm/bulk/v8/write/{job_id}", headers=auth(access_token), timeout=10)


def download(sandbox, job_id: str, access_token: str, **kwargs) -> requests.Response:
    url = job_details(sandbox, job_id, access_token).json()["result"]["download_url"]
    return requests.get(url, headers=auth(access_token), timeout=10, **kwargs)


def zip_of(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def upload(sandbox, access_token: str, payload: bytes, *, headers: dict[str, str] | None = None,
           file_name: str = "upload.zip") -> requests.Response:
    sent = {"feature": "bulk-write", "X-CRM-ORG": "sandbox-org", **auth(access_token), **(headers or {})}
    sent = {k: v for k, v in sent.items() if v is not None}
    return requests.post(f"{sandbox.url}/crm/v8/upload", headers=sent, timeout=10,
                         files={"file": (file_name, payload, "application/zip")})


def result_rows(zip_bytes: bytes) -> tuple[str, list[dict[str, str]]]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        (name,) = archive.namelist()
        text = archive.read(name).decode("utf-8")
    return name, list(csv.DictReader(io.StringIO(text, newline="")))


TRICKY_CSV = (
    'Last_Name,Email,Company,Phone\r\n'
    'Smith,smith@example.com,"Acme, Inc.",1\r\n'
    ',blank@example.com,Globex,2\r\n'                      # no Last_Name: MANDATORY_NOT_FOUND
    '"Quote ""Q""",dup@example.com,"Multi\nLine Co",3\r\n'
    'Jones,dup@example.com,Initech,4\r\n'                  # repeated e-mail: DUPLICATE_DATA
    ',dup@example.com,,5\r\n'                              # both: a multi-code ERRORS value
    'Zürich,z@example.com,Zürich AG,6\r\n'
).encode()


# --- OAuth ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("style", "keys"), [
    ("expires_in", {"expires_in"}), ("expires_in_sec", {"expires_in_sec"}),
    ("both", {"expires_in", "expires_in_sec"}), ("none", set()),
])
def test_token_response_styles(zoho_sandbox, style, keys):
    zoho_sandbox.configure(token_response_style=style)
    response = mint(zoho_sandbox)
    body = response.json()
    assert response.status_code == 200
    assert body["access_token"].startswith("1000.")
    assert body["token_type"] == "Bearer" and body["api_domain"] == zoho_sandbox.url
    assert "ZohoCRM.bulk.ALL" in body["scope"]
    assert {k for k in body if k.startswith("expires")} == keys
    assert all(body[k] == 3600 for k in keys)


def test_token_from_form_body(zoho_sandbox):
    response = requests.post(f"{zoho_sandbox.url}/oauth/v2/token", data=token_params(), timeout=10)
    assert response.json()["access_token"].startswith("1000.")
    assert zoho_sandbox.stats()["tokens_minted"] == 1


@pytest.mark.parametrize(("change", "error"), [
    ({"client_id": "nobody"}, "invalid_client"),
    ({"client_secret": "wrong"}, "invalid_client_secret"),
    ({"refresh_token": "unknown"}, "invalid_code"),
    ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
])
def test_token_errors_come_with_http_200(zoho_sandbox, change, error):
    response = mint(zoho_sandbox, **change)
    assert response.status_code == 200
    assert response.json() == {"error": error}
    zoho_sandbox.configure(token_error_status=400)
    assert mint(zoho_sandbox, **change).status_code == 400
    assert zoho_sandbox.stats()["tokens_minted"] == 0


def test_revoked_refresh_token_and_its_access_tokens(zoho_sandbox):
    access = token(zoho_sandbox)
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    zoho_sandbox.revoke_refresh_token("sandbox-refresh-token")
    assert mint(zoho_sandbox).json() == {"error": "invalid_code"}
    assert job_details(zoho_sandbox, job_id, access).status_code == 401
    zoho_sandbox.add_client("other-client", "other-secret", "other-refresh")
    other = mint(zoho_sandbox, client_id="other-client", client_secret="other-secret", refresh_token="other-refresh")
    assert job_details(zoho_sandbox, job_id, other.json()["access_token"]).status_code == 200
    # a refresh token belongs to its own client only
    assert mint(zoho_sandbox, refresh_token="other-refresh").json() == {"error": "invalid_code"}
    # mints are counted per client too, refused ones not at all
    assert zoho_sandbox.stats()["tokens_minted_by_client"] == {"sandbox-client-id": 1, "other-client": 1}


def test_throttle_blocks_until_the_window_ends():
    with ZohoSandbox(token_limit=3, token_window_seconds=600) as sandbox:
        for _ in range(3):
            assert "access_token" in mint(sandbox).json()
        throttled = mint(sandbox).json()
        assert throttled == {"error_description": "You have made too many requests continuously. Please try "
                                                  "again after some time.",
                             "error": "Access Denied", "status": "failure"}
        sandbox.advance_clock(300)
        assert mint(sandbox).json()["error"] == "Access Denied"
        sandbox.advance_clock(301)
        assert "access_token" in mint(sandbox).json()
        assert sandbox.stats()["tokens_minted"] == 4
        # the throttle counts per refresh token
        sandbox.add_client("sandbox-client-id", "sandbox-client-secret", "second-refresh")
        assert "access_token" in mint(sandbox, refresh_token="second-refresh").json()


def test_sixteenth_live_token_evicts_the_oldest(zoho_sandbox):
    zoho_sandbox.configure(token_limit=100)
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    tokens = [token(zoho_sandbox) for _ in range(16)]
    assert job_details(zoho_sandbox, job_id, tokens[0]).status_code == 401
    assert all(job_details(zoho_sandbox, job_id, t).status_code == 200 for t in tokens[1:])
    assert zoho_sandbox.stats()["live_tokens"] == 15


def test_access_token_expires_after_an_hour_of_sandbox_time(zoho_sandbox):
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    access = token(zoho_sandbox)
    zoho_sandbox.advance_clock(3590)
    assert job_details(zoho_sandbox, job_id, access).status_code == 200
    zoho_sandbox.advance_clock(20)
    response = job_details(zoho_sandbox, job_id, access)
    assert response.status_code == 401
    assert response.json() == {"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token",
                               "status": "error"}


@pytest.mark.parametrize("header", [None, "Bearer {t}", "Zoho-oauthtoken 1000.forged"])
def test_crm_calls_need_a_zoho_token(zoho_sandbox, header):
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    access = token(zoho_sandbox)
    headers = {"Authorization": header.format(t=access)} if header else {}
    response = requests.get(f"{zoho_sandbox.url}/crm/bulk/v8/write/{job_id}", headers=headers, timeout=10)
    assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN"
    assert zoho_sandbox.stats()["requests"][-1]["authorized"] is (header is not None)


def test_request_log_never_holds_secrets(zoho_sandbox, caplog):
    with caplog.at_level("DEBUG", logger="airflow_provider_zohobulk.sandbox"):
        access = token(zoho_sandbox)
        mint(zoho_sandbox, client_secret="wrong-secret")
        job_details(zoho_sandbox, "1", access)
    assert "POST /oauth/v2/token -> 200" in caplog.text
    for secret in (*SECRETS, "wrong-secret", access):
        assert secret not in caplog.text


# --- upload and job creation --------------------------------------------------------------------------


def test_upload_then_create_job_over_http(zoho_sandbox):
    access = token(zoho_sandbox)
    response = upload(zoho_sandbox, access, zip_of("Contacts.csv", TRICKY_CSV))
    body = response.json()
    assert response.status_code == 200
    assert (body["status"], body["code"], body["message"]) == ("success", "FILE_UPLOAD_SUCCESS", "file uploaded.")
    file_id = body["details"]["file_id"]
    assert file_id.isdigit() and body["details"]["created_time"]
    for version, module in (("v8", {"api_name": "Contacts"}), ("v2", "Contacts")):
        created = requests.post(
            f"{zoho_sandbox.url}/crm/bulk/{version}/write", headers=auth(access), timeout=10,
            json={"operation": "insert", "character_encoding": "UTF-8",
                  "callback": {"url": "https://x", "method": "post"},
                  "resource": [{"type": "data", "module": module, "file_id": file_id}]})
        assert created.status_code == 201
        details = created.json()
        assert (details["status"], details["code"], details["message"]) == ("success", "SUCCESS", "success")
        job_id = details["details"]["id"]
        assert len(job_id) == 19 and job_id.isdigit()
        assert details["details"]["created_by"]["name"] == "Sandbox User"
        job = job_details(zoho_sandbox, job_id, access).json()
        assert job["resource"][0]["module"] == module if isinstance(module, str) else \
            job["resource"][0]["module"]["api_name"] == "Contacts"
        assert job["callback"] == {"url": "https://x", "method": "post"}
        name, _ = result_rows(download(zoho_sandbox, job_id, access).content)
        assert name == "Contacts-Contacts.csv"


@pytest.mark.parametrize(("headers", "missing"), [({"feature": None}, "feature"), ({"X-CRM-ORG": None}, "X-CRM-ORG"),
                                                 ({"feature": "bulk-read"}, "feature")])
def test_upload_needs_its_headers(zoho_sandbox, headers, missing):
    response = upload(zoho_sandbox, token(zoho_sandbox), zip_of("a.csv", TRICKY_CSV), headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "MANDATORY_NOT_FOUND" and response.json()["details"] == {"header": missing}
    assert zoho_sandbox.stats()["uploads"] == 0


def test_upload_rejects_what_is_not_a_zip_and_what_is_too_large(zoho_sandbox):
    access = token(zoho_sandbox)
    not_zip = upload(zoho_sandbox, access, TRICKY_CSV)
    assert not_zip.status_code == 400 and not_zip.json()["code"] == "INVALID_FILE_FORMAT"
    zoho_sandbox.configure(upload_limit_bytes=4096)
    big = zip_of("big.csv", os.urandom(8000))  # random bytes do not compress
    too_large = upload(zoho_sandbox, access, big)
    assert too_large.status_code == 413 and too_large.json()["code"] == "FILE_TOO_LARGE"
    huge = upload(zoho_sandbox, access, zip_of("huge.csv", os.urandom(200_000)))  # refused before it is read
    assert huge.status_code == 413
    assert upload(zoho_sandbox, access, zip_of("ok.csv", TRICKY_CSV)).status_code == 200
    assert zoho_sandbox.stats()["uploads"] == 1


@pytest.mark.parametrize(("body", "code", "field"), [
    ({"resource": []}, "MANDATORY_NOT_FOUND", "operation"),
    ({"operation": "delete"}, "INVALID_DATA", "operation"),
    ({"operation": "insert"}, "MANDATORY_NOT_FOUND", "resource"),
    ({"operation": "insert", "resource": [{"module": {"api_name": "Leads"}}]}, "MANDATORY_NOT_FOUND",
     "resource[0].file_id"),
    ({"operation": "insert", "resource": [{"module": {"api_name": "Leads"}, "file_id": "404"}]}, "INVALID_DATA",
     "resource[0].file_id"),
    ({"operation": "insert", "resource": [{"file_id": "{file_id}"}]}, "MANDATORY_NOT_FOUND", "resource[0].module"),
    ({"operation": "insert", "resource": [{"module": {"id": "1"}, "file_id": "{file_id}"}]}, "INVALID_DATA",
     "resource[0].module"),
    ({"operation": "upsert", "resource": [{"module": "Leads", "file_id": "{file_id}"}]}, "MANDATORY_NOT_FOUND",
     "resource[0].find_by"),
    ({"operation": "update", "resource": [{"module": "Leads", "file_id": "{file_id}"}]}, "MANDATORY_NOT_FOUND",
     "resource[0].find_by"),
    ("not json", "INVALID_DATA", "body"),
])
def test_create_job_validation(zoho_sandbox, body, code, field):
    access = token(zoho_sandbox)
    file_id = upload(zoho_sandbox, access, zip_of("a.csv", TRICKY_CSV)).json()["details"]["file_id"]
    payload = body if isinstance(body, str) else json.dumps(body).replace("{file_id}", file_id)
    response = requests.post(f"{zoho_sandbox.url}/crm/bulk/v8/write", data=payload, timeout=10,
                             headers={**auth(access), "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == code and response.json()["details"]["api_name"] == field
    assert response.json()["status"] == "error"
    assert zoho_sandbox.stats()["jobs"] == 0


def test_field_mapping_out_of_range_is_refused(zoho_sandbox):
    with pytest.raises(ZohoConfigurationError, match="index 9"):
        zoho_sandbox.create_job_from_csv(TRICKY_CSV, field_mappings=[{"api_name": "Last_Name", "index": 9}])


# --- job progress -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["IN PROGRESS", "INPROGRESS"])
def test_job_progresses_with_sandbox_time(spelling):
    with ZohoSandbox(job_step_seconds=60, in_progress_spelling=spelling) as sandbox:
        job_id = sandbox.create_job_from_csv(TRICKY_CSV)
        access = token(sandbox)
        seen = []
        for _ in range(3):
            job = job_details(sandbox, job_id, access).json()
            seen.append(job["status"])
            if job["status"] != "COMPLETED":
                assert "result" not in job
                assert "total_count" not in job["resource"][0]["file"]
            sandbox.advance_clock(61)
        assert seen == ["ADDED", spelling, "COMPLETED"]
        assert job["resource"][0]["file"]["total_count"] == 6
        assert job["result"]["download_url"].endswith(f"/v2/crm/sandbox-org/bulk-write/{job_id}/{job_id}.zip")


def test_finished_job_has_the_documented_shape(zoho_sandbox):
    access = token(zoho_sandbox)
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    job = job_details(zoho_sandbox, job_id, access).json()
    assert {"status", "character_encoding", "id", "operation", "ignore_empty", "created_time", "created_by",
            "resource", "result"} <= set(job)
    resource = job["resource"][0]
    assert (resource["status"], resource["code"], resource["type"]) == ("COMPLETED", "COMPLETED", "data")
    assert resource["module"]["api_name"] == "Leads" and resource["module"]["id"].isdigit()
    assert resource["field_mappings"][0] == {"api_name": "Last_Name", "index": 0, "format": None, "find_by": None,
                                             "module": None, "default_value": None}
    counts = resource["file"]
    assert {k: counts[k] for k in ("status", "name", "updated_count", "total_count")} == {
        "status": "COMPLETED", "name": "Leads.csv", "updated_count": 0, "total_count": 6}
    # three rows always fail (empty mandatory columns, a duplicate); the job-id seed may fail one more
    assert counts["skipped_count"] >= 3 and counts["added_count"] + counts["skipped_count"] == 6


def test_unknown_job_is_resource_not_found(zoho_sandbox):
    response = job_details(zoho_sandbox, "4150868000000000000", token(zoho_sandbox))
    assert response.status_code == 400
    assert response.json()["code"] == "RESOURCE_NOT_FOUND" and response.json()["status"] == "error"


# --- the result file ----------------------------------------------------------------------------------------


def test_result_zip_follows_the_upload(zoho_sandbox):
    access = token(zoho_sandbox)
    zoho_sandbox.configure(seeded_failure_share=0)  # exact statuses: no random INVALID_DATA
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    response = download(zoho_sandbox, job_id, access)
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{job_id}.zip"'
    assert int(response.headers["Content-Length"]) == len(response.content)
    name, rows = result_rows(response.content)
    assert name == "Leads-Leads.csv"
    assert list(rows[0]) == ["Last_Name", "Email", "Company", "RECORD_ID", "STATUS", "ERRORS"]
    assert [r["STATUS"] for r in rows] == ["ADDED", "SKIPPED", "ADDED", "SKIPPED", "SKIPPED", "ADDED"]
    assert rows[1]["ERRORS"] == "MANDATORY_NOT_FOUND-Last_Name"
    assert rows[3]["ERRORS"] == "DUPLICATE_DATA-Email"
    assert rows[4]["ERRORS"] == "MANDATORY_NOT_FOUND-Company,Last_Name:DUPLICATE_DATA-Email"
    assert (rows[0]["Company"], rows[2]["Last_Name"]) == ("Acme, Inc.", 'Quote "Q"')
    assert rows[2]["Company"] == "Multi\nLine Co"
    assert rows[5]["Company"] == "Zürich AG"
    for row in rows:
        added = row["STATUS"] == "ADDED"
        assert (len(row["RECORD_ID"]) == 19 and row["RECORD_ID"].isdigit()) if added else row["RECORD_ID"] == ""
        assert bool(row["ERRORS"]) is not added


def test_generated_leads_match_their_counts(zoho_sandbox):
    access = token(zoho_sandbox)
    job_id = zoho_sandbox.create_job_from_csv(sample_leads_csv(1000))
    counts = job_details(zoho_sandbox, job_id, access).json()["resource"][0]["file"]
    _, rows = result_rows(download(zoho_sandbox, job_id, access).content)
    statuses = [r["STATUS"] for r in rows]
    assert counts["total_count"] == len(rows) == 1000
    assert counts["added_count"] == statuses.count("ADDED") > 800
    assert counts["skipped_count"] == statuses.count("SKIPPED") > 20
    assert any(":" in r["ERRORS"] for r in rows)
    assert any(r["ERRORS"].startswith("INVALID_DATA-") for r in rows)  # the seeded failures
    assert any("\n" in r["Company"] for r in rows) and any("," in r["Company"] for r in rows)
    # the seeded failures depend on the job id only: the same upload in another job fails other rows
    again = zoho_sandbox.create_job_from_csv(sample_leads_csv(1000))
    _, rows_again = result_rows(download(zoho_sandbox, again, access).content)
    invalid = [i for i, r in enumerate(rows) if "INVALID_DATA" in r["ERRORS"]]
    assert invalid != [i for i, r in enumerate(rows_again) if "INVALID_DATA" in r["ERRORS"]]


def test_field_mappings_choose_the_result_columns(zoho_sandbox):
    access = token(zoho_sandbox)
    zoho_sandbox.configure(seeded_failure_share=0)  # exact statuses: no random INVALID_DATA
    data = b"Phone;Company;Email;Last_Name\r\n1;Acme;a@x.com;Able\r\n2;Beta;b@x.com;Baker\r\n"
    mappings = [{"api_name": "Last_Name", "index": 3}, {"api_name": "Company", "index": 1},
                {"api_name": "Phone", "index": 0}, {"api_name": "Email", "index": 2}]
    job_id = zoho_sandbox.create_job_from_csv(data, field_mappings=mappings, file_name="people.csv")
    name, rows = result_rows(download(zoho_sandbox, job_id, access).content)
    assert name == "Leads-people.csv"
    assert list(rows[0]) == ["Last_Name", "Company", "Phone", "RECORD_ID", "STATUS", "ERRORS"]
    assert [(r["Last_Name"], r["STATUS"]) for r in rows] == [("Able", "ADDED"), ("Baker", "ADDED")]


def test_upsert_updates_records_of_an_earlier_job(zoho_sandbox):
    access = token(zoho_sandbox)
    zoho_sandbox.configure(seeded_failure_share=0)  # exact statuses: no random INVALID_DATA
    first = zoho_sandbox.create_job_from_csv(b"Last_Name,Email,Company\r\nA,a@x.com,Acme\r\nB,b@x.com,Acme\r\n")
    _, inserted = result_rows(download(zoho_sandbox, first, access).content)
    second = zoho_sandbox.create_job_from_csv(b"Last_Name,Email,Company\r\nA2,a@x.com,Acme\r\nC,c@x.com,Acme\r\n",
                                              operation="upsert", find_by="Email")
    _, upserted = result_rows(download(zoho_sandbox, second, access).content)
    assert [r["STATUS"] for r in upserted] == ["UPDATED", "ADDED"]
    assert upserted[0]["RECORD_ID"] == inserted[0]["RECORD_ID"]
    counts = job_details(zoho_sandbox, second, access).json()["resource"][0]["file"]
    assert (counts["updated_count"], counts["added_count"]) == (1, 1)
    third = zoho_sandbox.create_job_from_csv(b"Last_Name,Email,Company\r\nX,zz@x.com,Acme\r\n",
                                             operation="update", find_by="Email")
    _, updated = result_rows(download(zoho_sandbox, third, access).content)
    assert updated[0]["STATUS"] == "SKIPPED" and updated[0]["ERRORS"].startswith("RESOURCE_NOT_FOUND")


def test_link_expires_and_download_base_is_configurable(zoho_sandbox):
    access = token(zoho_sandbox)
    zoho_sandbox.configure(download_base_url=f"http://localhost:{zoho_sandbox.port}", link_ttl_seconds=100)
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    url = job_details(zoho_sandbox, job_id, access).json()["result"]["download_url"]
    assert url.startswith(f"http://localhost:{zoho_sandbox.port}/v2/crm/")
    assert requests.get(url, headers=auth(access), timeout=10).status_code == 200
    assert zoho_sandbox.stats()["requests"][-1]["host"] == f"localhost:{zoho_sandbox.port}"
    zoho_sandbox.advance_clock(101)
    expired = requests.get(url, headers=auth(access), timeout=10)
    assert expired.status_code == 400 and expired.json() == {"info": "Forbidden", "x-info": "Link not valid"}
    zoho_sandbox.configure(expired_link_status=403)
    assert requests.get(url, headers=auth(access), timeout=10).status_code == 403
    no_token = requests.get(url, timeout=10)
    assert no_token.status_code == 401


def test_zip_path_is_streamed_from_disk(tmp_path):
    with ZohoSandbox(files_dir=tmp_path) as zoho_sandbox:
        access = token(zoho_sandbox)
        small = tmp_path / "small.zip"
        small.write_bytes(zip_of("Leads-x.csv", b"A,STATUS\r\n" + b"".join(b"%d,ADDED\r\n" % i for i in range(30000))))
        job_id = zoho_sandbox.create_job_from_zip(small, counts={"added_count": 30000, "skipped_count": 0,
                                                                 "updated_count": 0, "total_count": 30000})
        assert download(zoho_sandbox, job_id, access).content == small.read_bytes()
        assert job_details(zoho_sandbox, job_id, access).json()["resource"][0]["file"]["added_count"] == 30000
        # an 8 GiB sparse file: the first bytes arrive at once, so nothing reads the file whole
        huge = tmp_path / "huge.zip"
        with open(huge, "wb") as f:
            f.truncate(8 * 1024**3)
        job_id = zoho_sandbox.create_job_from_zip(huge)
        with download(zoho_sandbox, job_id, access, stream=True) as response:
            assert int(response.headers["Content-Length"]) == 8 * 1024**3
            first = response.raw.read(1024 * 1024)
            assert first == b"\0" * (1024 * 1024)
        with pytest.raises(ZohoConfigurationError, match="no file"):
            zoho_sandbox.create_job_from_zip(tmp_path / "missing.zip")


def test_failed_job_from_zip(zoho_sandbox):
    job_id = zoho_sandbox.create_job_from_zip(zip_of("Leads-x.csv", b"A\r\n"), status="FAILED")
    job = job_details(zoho_sandbox, job_id, token(zoho_sandbox)).json()
    assert job["status"] == "FAILED" and job["resource"][0]["status"] == "FAILED"
    assert "result" not in job


# --- faults ---------------------------------------------------------------------------------------------


@pytest.fixture
def ready(zoho_sandbox):
    """A sandbox with a job, a token and the job's download URL, before any fault."""
    access = token(zoho_sandbox)
    job_id = zoho_sandbox.create_job_from_csv(sample_leads_csv(3000))
    url = job_details(zoho_sandbox, job_id, access).json()["result"]["download_url"]
    original = requests.get(url, headers=auth(access), timeout=10).content
    return zoho_sandbox, job_id, access, url, original


def test_status_faults(ready):
    sandbox, job_id, access, _, _ = ready
    sandbox.add_fault("status", status=429, retry_after=2, path_prefix="/crm/bulk")
    sandbox.add_fault("status", status=500, path_prefix="/crm/bulk")
    scope = {"code": "OAUTH_SCOPE_MISMATCH", "details": {}, "message": "invalid oauth scope", "status": "error"}
    sandbox.add_fault("status", status=401, body=scope, path_prefix="/crm/bulk")
    assert mint(sandbox).status_code == 200  # another path: the faults wait
    first = job_details(sandbox, job_id, access)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "2")
    assert first.json() == {"code": "TOO_MANY_REQUESTS", "details": {}, "message": "too many requests",
                            "status": "error"}
    second = job_details(sandbox, job_id, access)
    assert second.status_code == 500 and second.json()["code"] == "INTERNAL_ERROR"
    third = job_details(sandbox, job_id, access)
    assert third.status_code == 401 and third.json() == scope
    assert job_details(sandbox, job_id, access).status_code == 200  # each fault fired once
    sandbox.add_fault("status", status=401, code="OAUTH_SCOPE_MISMATCH", path_prefix="/crm/bulk")
    assert job_details(sandbox, job_id, access).json() == {
        "code": "OAUTH_SCOPE_MISMATCH", "details": {}, "message": "oauth scope mismatch", "status": "error"}
    sandbox.add_fault("status", status=503, count=2)
    assert [job_details(sandbox, job_id, access).status_code for _ in range(3)] == [503, 503, 200]
    assert sandbox.stats()["pending_faults"] == []


def test_token_error_fault(zoho_sandbox):
    zoho_sandbox.add_fault("token_error", error="Access Denied")
    zoho_sandbox.add_fault("token_error", error="invalid_code", status=400)
    assert mint(zoho_sandbox).json()["error"] == "Access Denied"
    second = mint(zoho_sandbox)
    assert (second.status_code, second.json()) == (400, {"error": "invalid_code"})
    assert "access_token" in mint(zoho_sandbox).json()


def test_slow_answer_fault_delays_then_answers_as_usual(zoho_sandbox):
    zoho_sandbox.add_fault("slow_answer", path_prefix="/oauth/v2/token", delay=0.6)
    started = time.monotonic()
    slow = mint(zoho_sandbox)
    slow_seconds = time.monotonic() - started
    assert slow_seconds >= 0.6
    assert zoho_sandbox.stats()["pending_faults"] == []  # used up: the next request is not delayed
    fast = mint(zoho_sandbox)
    assert slow.status_code == fast.status_code == 200 and slow.json()["access_token"] != fast.json()["access_token"]
    assert zoho_sandbox.stats()["tokens_minted"] == 2


def test_body_faults_only_hit_downloads(ready):
    sandbox, job_id, access, url, original = ready
    sandbox.add_fault("truncate_zip", percent=60)
    job_details(sandbox, job_id, access)  # not a download: the fault waits for one
    truncated = requests.get(url, headers=auth(access), timeout=10)
    assert len(truncated.content) == int(truncated.headers["Content-Length"]) == len(original) * 60 // 100
    assert truncated.content == original[:len(truncated.content)]
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(truncated.content))
    assert requests.get(url, headers=auth(access), timeout=10).content == original


def test_drop_mid_body(ready):
    sandbox, _, access, url, original = ready
    sandbox.add_fault("drop_mid_body")
    with requests.get(url, headers=auth(access), timeout=10, stream=True) as response:
        assert int(response.headers["Content-Length"]) == len(original)
        received = bytearray()
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in response.iter_content(8192):
                received += chunk
    assert 0 < len(received) < len(original)
    assert requests.get(url, headers=auth(access), timeout=10).content == original


def test_slow_body_stalls_between_chunks(ready):
    sandbox, _, access, url, _ = ready
    sandbox.add_fault("slow_body", delay=3, chunk_size=4096)
    with requests.get(url, headers=auth(access), timeout=(5, 0.5), stream=True) as response:
        received = bytearray()
        with pytest.raises(requests.exceptions.ConnectionError):
            for chunk in response.iter_content(1024):
                received += chunk
    assert len(received) == 4096  # the first chunk came, the second did not within the read timeout


@pytest.mark.parametrize("archiver", ["zipfile", "stream_zip"])
def test_corrupt_zip_fails_its_crc_only_at_the_end(zoho_sandbox, archiver):
    access = token(zoho_sandbox)
    content = b"Last_Name,RECORD_ID,STATUS,ERRORS\r\n" + b"".join(b"N%d,%d,ADDED,\r\n" % (i, i) for i in range(20000))
    if archiver == "zipfile":
        archive = zip_of("Leads-x.csv", content)
    else:  # data descriptors after the data, as streaming servers write them
        from datetime import datetime
        archive = b"".join(stream_zip([("Leads-x.csv", datetime(2024, 5, 11), 0o600, ZIP_32, iter([content]))]))
    job_id = zoho_sandbox.create_job_from_zip(archive)
    zoho_sandbox.add_fault("corrupt_zip")
    corrupt = download(zoho_sandbox, job_id, access).content
    assert len(corrupt) == len(archive) and corrupt != archive
    yielded = bytearray()
    with pytest.raises(Exception) as info:  # checked by name below: stream_unzip's own
        for _, _, chunks in stream_unzip(iter([corrupt])):
            for chunk in chunks:
                yielded += chunk
    assert type(info.value).__name__ == "CRC32IntegrityError"
    assert bytes(yielded) == content  # every byte arrived before the error did
    with zipfile.ZipFile(io.BytesIO(corrupt)) as seekable, pytest.raises(zipfile.BadZipFile, match="CRC"):
        seekable.read("Leads-x.csv")


def test_expired_link_and_error_body_faults(ready):
    sandbox, _, access, url, original = ready
    sandbox.add_fault("expired_link")
    sandbox.add_fault("error_body", content_type="text/html")
    sandbox.add_fault("error_body", content_type="application/json")
    expired = requests.get(url, headers=auth(access), timeout=10)
    assert expired.status_code == 400 and expired.json() == {"info": "Forbidden", "x-info": "Link not valid"}
    html = requests.get(url, headers=auth(access), timeout=10)
    assert html.status_code == 200 and html.headers["Content-Type"] == "text/html" and b"<html>" in html.content
    as_json = requests.get(url, headers=auth(access), timeout=10)
    assert as_json.headers["Content-Type"] == "application/json" and as_json.json()["status"] == "error"
    assert requests.get(url, headers=auth(access), timeout=10).content == original


def test_redirect_fault(ready):
    sandbox, _, access, url, original = ready
    elsewhere = url.replace("127.0.0.1", "localhost")
    sandbox.add_fault("redirect", location=elsewhere)
    response = requests.get(url, headers=auth(access), timeout=10, allow_redirects=False)
    assert (response.status_code, response.headers["Location"]) == (302, elsewhere)
    assert requests.get(elsewhere, headers=auth(access), timeout=10).content == original


def test_reset_connection_fault(ready):
    sandbox, job_id, access, _, _ = ready
    sandbox.add_fault("reset_connection", path_prefix="/crm/bulk")
    with pytest.raises(requests.exceptions.ConnectionError):
        job_details(sandbox, job_id, access)
    assert sandbox.stats()["requests"][-1]["status"] is None
    assert job_details(sandbox, job_id, access).status_code == 200


def test_faults_are_validated_and_clearable(zoho_sandbox):
    with pytest.raises(ZohoConfigurationError, match="unknown sandbox fault"):
        zoho_sandbox.add_fault("meteor")
    with pytest.raises(ZohoConfigurationError, match="location"):
        zoho_sandbox.add_fault("redirect")
    with pytest.raises(ZohoConfigurationError, match="unknown sandbox option"):
        zoho_sandbox.configure(tokens_per_second=1)
    with pytest.raises(ZohoConfigurationError, match="spelling"):
        zoho_sandbox.configure(in_progress_spelling="RUNNING")
    zoho_sandbox.add_fault("status", status=500, count=5)
    zoho_sandbox.clear_faults()
    assert mint(zoho_sandbox).status_code == 200


# --- state --------------------------------------------------------------------------------------------------


def test_reset_keeps_clients_and_tokens(zoho_sandbox):
    access = token(zoho_sandbox)
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    zoho_sandbox.add_fault("status", status=500, path_prefix="/oauth")
    zoho_sandbox.reset()
    stats = zoho_sandbox.stats()
    assert (stats["jobs"], stats["tokens_minted"], stats["requests"], stats["pending_faults"]) == (0, 0, [], [])
    assert job_details(zoho_sandbox, job_id, access).status_code == 400  # the job is gone, the token is not
    assert mint(zoho_sandbox).status_code == 200


def test_state_file_survives_a_restart(tmp_path):
    state = tmp_path / "sandbox.json"
    with ZohoSandbox(state_file=state, job_step_seconds=10) as sandbox:
        access = token(sandbox)
        job_id = sandbox.create_job_from_csv(TRICKY_CSV)
        sandbox.advance_clock(25)
        before = job_details(sandbox, job_id, access).json()
        archive = download(sandbox, job_id, access).content
    with ZohoSandbox(state_file=state) as restarted:
        again = job_details(restarted, job_id, access).json()
        assert {k: v for k, v in again.items() if k != "result"} == {k: v for k, v in before.items() if k != "result"}
        assert download(restarted, job_id, access).content == archive


def test_connection_helpers(zoho_sandbox):
    conn = zoho_sandbox.airflow_connection()
    assert conn == {"conn_type": "zoho_crm", "login": "sandbox-client-id", "password": "sandbox-client-secret",
                    "extra": {"refresh_token": "sandbox-refresh-token", "data_center": "us",
                              "accounts_url": zoho_sandbox.url, "api_domain": zoho_sandbox.url,
                              "org_id": "sandbox-org"}}
    env = zoho_sandbox.airflow_connection_env("zoho_other")
    assert json.loads(env["AIRFLOW_CONN_ZOHO_OTHER"]) == conn


def test_connection_fixture_sets_the_environment(zoho_sandbox_connection):
    conn = json.loads(os.environ["AIRFLOW_CONN_ZOHO_CRM_DEFAULT"])
    assert conn["extra"]["api_domain"] == zoho_sandbox_connection.url


def test_loopback_only():
    with pytest.raises(ZohoConfigurationError, match="loopback"):
        ZohoSandbox("0.0.0.0")
    refused = subprocess.run([sys.executable, "-m", "airflow_provider_zohobulk.sandbox", "--host", "0.0.0.0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "loopback addresses only" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_ipv6_loopback_serves(tmp_path):
    try:
        sandbox = ZohoSandbox("::1").start()
    except OSError as exc:  # IPv6 compiled in but disabled on the host
        pytest.skip(f"::1 cannot be bound here: {exc}")
    try:
        assert sandbox.url.startswith("http://[::1]:")
        access = token(sandbox)
        assert access and sandbox.stats()["tokens_minted"] == 1
    finally:
        sandbox.stop()


# --- a sandbox in another process -----------------------------------------------------------------------


def test_cli_and_attach(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    served_zip = served / "result.zip"
    served_zip.write_bytes(zip_of("Leads-x.csv", b"A,STATUS\r\n1,ADDED\r\n"))
    proc = subprocess.Popen([sys.executable, "-m", "airflow_provider_zohobulk.sandbox", "--port", "0", "--seed-job",
                             "--files-dir", str(served)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        printed = {}
        while "ZOHO_SANDBOX_JOB_ID" not in printed:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            key, _, value = line.strip().partition("=")
            printed[key] = value
        admin_token = printed[ADMIN_TOKEN_ENV]
        assert len(admin_token) >= 32
        refused = requests.post(f"{printed['ZOHO_SANDBOX_URL']}/_sandbox/stats", json={}, timeout=10)
        assert refused.status_code == 403
        remote = ZohoSandbox.attach(printed["ZOHO_SANDBOX_URL"], admin_token=admin_token)
        job_id = printed["ZOHO_SANDBOX_JOB_ID"]
        assert remote.create_job_from_zip(served_zip)
        with pytest.raises(ZohoConfigurationError, match="outside the sandbox's files_dir"):
            remote.create_job_from_zip(tmp_path / "elsewhere.zip")

        conn = remote.airflow_connection()
        assert conn["extra"]["api_domain"] == printed["ZOHO_SANDBOX_URL"] == remote.url
        access = token(remote)
        file = job_details(remote, job_id, access).json()["resource"][0]["file"]
        assert file["total_count"] == 1000 and 0 < file["skipped_count"] < 1000
        _, rows = result_rows(download(remote, job_id, access).content)
        assert any(":" in r["ERRORS"] for r in rows)

        other = remote.create_job_from_csv(TRICKY_CSV, file_name="t.csv")  # bytes travel base64-encoded
        assert remote.job_details(other)["resource"][0]["file"]["total_count"] == 6
        remote.add_fault("status", status=500, path_prefix="/crm/bulk")
        assert job_details(remote, other, access).status_code == 500
        remote.advance_clock(3700)
        assert job_details(remote, other, access).status_code == 401
        stats = remote.stats()
        assert stats["tokens_minted"] == 1 and all(not r["path"].startswith("/_sandbox") for r in stats["requests"])
        with pytest.raises(ZohoConfigurationError, match="unknown sandbox option"):
            remote.configure(nope=1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "GET /crm/bulk/v8/write/" in stderr
    for secret in (*SECRETS, access, admin_token):
        assert secret not in stderr


def test_seeded_failures_can_be_switched_off(zoho_sandbox):
    access = token(zoho_sandbox)
    with pytest.raises(ZohoConfigurationError, match="seeded_failure_share"):
        zoho_sandbox.configure(seeded_failure_share=1.5)
    zoho_sandbox.configure(seeded_failure_share=0)
    job_id = zoho_sandbox.create_job_from_csv(sample_leads_csv(1000))
    _, rows = result_rows(download(zoho_sandbox, job_id, access).content)
    assert not any("INVALID_DATA" in r["ERRORS"] for r in rows)
    assert any(r["STATUS"] == "SKIPPED" for r in rows)  # the earned failures stay
    zoho_sandbox.configure(seeded_failure_share=1)
    job_id = zoho_sandbox.create_job_from_csv(sample_leads_csv(200))
    _, rows = result_rows(download(zoho_sandbox, job_id, access).content)
    assert all(r["STATUS"] == "SKIPPED" and "INVALID_DATA" in r["ERRORS"] for r in rows)


def test_result_variant_options_are_validated(zoho_sandbox):
    with pytest.raises(ZohoConfigurationError, match="result_status_case must be one of"):
        zoho_sandbox.configure(result_status_case="camel")
    with pytest.raises(ZohoConfigurationError, match="download_filename_style must be one of"):
        zoho_sandbox.configure(download_filename_style="both")


def test_admin_calls_refuse_a_foreign_host_or_origin(zoho_sandbox):
    """A web page reaching the sandbox through DNS rebinding or a cross-site request must not drive it:
    admin calls can serve any file of the machine."""
    admin = f"{zoho_sandbox.url}/_sandbox/stats"
    token_header = {ADMIN_TOKEN_HEADER: zoho_sandbox.admin_token}
    assert requests.post(admin, json={}, headers=token_header, timeout=10).status_code == 200
    for headers in ({"Host": f"rebound.example:{zoho_sandbox.port}"}, {"Origin": "http://evil.example"}):
        answer = requests.post(admin, json={}, headers={**token_header, **headers}, timeout=10)
        assert answer.status_code == 403, headers
        assert "loopback" in answer.json()["message"]
    assert requests.post(admin, json={}, headers={**token_header, "Origin": f"http://localhost:{zoho_sandbox.port}"},
                         timeout=10).status_code == 200


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH"])
def test_admin_calls_are_post_only(zoho_sandbox, method):
    """An <img src=".../_sandbox/reset"> on any web page sends a GET without Origin: it must do nothing."""
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    answer = requests.request(method, f"{zoho_sandbox.url}/_sandbox/reset", timeout=10,
                              headers={ADMIN_TOKEN_HEADER: zoho_sandbox.admin_token})
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"
    assert not any(name.lower().startswith("access-control-") for name in answer.headers)
    assert zoho_sandbox.job_details(job_id) is not None


@pytest.mark.parametrize("sent", [None, "", "wrong-token"])
def test_admin_calls_need_this_runs_token(zoho_sandbox, sent):
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    headers = {} if sent is None else {ADMIN_TOKEN_HEADER: sent}
    for method in ("reset", "create_job_from_zip", "no_such_method"):
        answer = requests.post(f"{zoho_sandbox.url}/_sandbox/{method}", json={"zip_bytes_or_path": "/etc/passwd"},
                               headers=headers, timeout=10)
        assert answer.status_code == 403, method
        assert ADMIN_TOKEN_HEADER in answer.json()["message"]
    assert zoho_sandbox.job_details(job_id) is not None
    assert zoho_sandbox.stats()["jobs"] == 1
    accepted = requests.post(f"{zoho_sandbox.url}/_sandbox/reset", json={}, timeout=10,
                             headers={ADMIN_TOKEN_HEADER: zoho_sandbox.admin_token})
    assert accepted.status_code == 200
    assert zoho_sandbox.job_details(job_id) is None


def test_admin_token_is_random_per_run_and_can_be_chosen():
    with ZohoSandbox() as first, ZohoSandbox() as second:
        assert len(first.admin_token) >= 32 and first.admin_token != second.admin_token
    with ZohoSandbox(admin_token="chosen-for-this-test") as chosen:
        assert chosen.client().stats()["jobs"] == 0
        assert requests.post(f"{chosen.url}/_sandbox/stats", json={}, timeout=10,
                             headers={ADMIN_TOKEN_HEADER: "chosen-for-this-test"}).status_code == 200
    with pytest.raises(ZohoConfigurationError, match="admin_token"):
        ZohoSandbox(admin_token="")


@pytest.mark.parametrize("origin", ["http://evil.example", None])
def test_admin_preflight_gets_no_cors_approval(zoho_sandbox, origin):
    """The token header makes a browser ask first (a CORS preflight); the answer must not approve it."""
    headers = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": ADMIN_TOKEN_HEADER}
    if origin:
        headers["Origin"] = origin
    answer = requests.options(f"{zoho_sandbox.url}/_sandbox/reset", headers=headers, timeout=10)
    assert answer.status_code in (403, 405)
    assert not any(name.lower().startswith("access-control-") for name in answer.headers)


def test_client_sends_the_token_and_needs_one(zoho_sandbox, monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    with pytest.raises(ZohoConfigurationError, match=ADMIN_TOKEN_ENV):
        ZohoSandbox.attach(zoho_sandbox.url)
    wrong = ZohoSandbox.attach(zoho_sandbox.url, admin_token="wrong-token")
    with pytest.raises(ZohoConfigurationError, match=r"refused reset: admin calls need this run's admin token"):
        wrong.reset()
    job_id = zoho_sandbox.create_job_from_csv(TRICKY_CSV)
    assert zoho_sandbox.client().job_details(job_id)["id"] == job_id
    monkeypatch.setenv(ADMIN_TOKEN_ENV, zoho_sandbox.admin_token)
    assert ZohoSandbox.attach(zoho_sandbox.url).job_details(job_id)["id"] == job_id


def test_zip_paths_are_refused_without_a_files_dir(zoho_sandbox, tmp_path):
    archive = tmp_path / "result.zip"
    archive.write_bytes(zip_of("Leads-x.csv", b"A,STATUS\r\n1,ADDED\r\n"))
    with pytest.raises(ZohoConfigurationError, match="files_dir") as refused:
        zoho_sandbox.create_job_from_zip(archive)
    assert str(archive) in str(refused.value)
    with pytest.raises(ZohoConfigurationError, match="files_dir"):  # the same over HTTP
        zoho_sandbox.client().create_job_from_zip(archive)
    assert zoho_sandbox.stats()["jobs"] == 0
    assert zoho_sandbox.client().create_job_from_zip(archive.read_bytes())  # bytes sent in the call still work


def test_zip_paths_are_served_only_from_the_files_dir(tmp_path):
    served = tmp_path / "served"
    (served / "sub").mkdir(parents=True)
    inside = served / "sub" / "result.zip"
    inside.write_bytes(zip_of("Leads-x.csv", b"A,STATUS\r\n1,ADDED\r\n"))
    outside = tmp_path / "secret.zip"
    outside.write_bytes(b"not for the web")
    (served / "escape.zip").symlink_to(outside)
    (served / "escape_dir").symlink_to(tmp_path)
    (served / "alias.zip").symlink_to(inside)  # a link that stays inside is fine
    with ZohoSandbox(files_dir=served) as sandbox:
        remote = sandbox.client()
        for escape in (outside, served / ".." / "secret.zip", "../secret.zip", served / "escape.zip",
                       served / "escape_dir" / "secret.zip", "/etc/passwd"):
            for caller in (sandbox, remote):
                with pytest.raises(ZohoConfigurationError, match="outside the sandbox's files_dir") as refused:
                    caller.create_job_from_zip(escape)
                assert str(escape) in str(refused.value) and str(served) in str(refused.value)
        assert sandbox.stats()["jobs"] == 0
        access = token(sandbox)
        for allowed in (inside, "sub/result.zip", served / "alias.zip", served / "sub" / ".." / "sub" / "result.zip"):
            job_id = remote.create_job_from_zip(allowed)
            assert download(sandbox, job_id, access).content == inside.read_bytes(), allowed
        with pytest.raises(ZohoConfigurationError, match="no file"):
            sandbox.create_job_from_zip("sub/missing.zip")
    with pytest.raises(ZohoConfigurationError, match="files_dir"):
        ZohoSandbox(files_dir=tmp_path / "missing")


def test_restarted_sandbox_serves_saved_paths_only_from_its_files_dir(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "result.zip"
    archive.write_bytes(zip_of("Leads-x.csv", b"A,STATUS\r\n1,ADDED\r\n"))
    state = tmp_path / "sandbox.json"
    with ZohoSandbox(files_dir=served, state_file=state) as sandbox:
        sandbox.create_job_from_zip(archive)
    with pytest.raises(ZohoConfigurationError, match="files_dir") as refused:
        ZohoSandbox(state_file=state)
    assert str(archive) in str(refused.value)
    with ZohoSandbox(files_dir=served, state_file=state) as restarted:
        assert restarted.stats()["jobs"] == 1
