"""The sandbox's upload endpoint and the jobs it runs over uploaded rows, over real HTTP."""

from __future__ import annotations

import csv
import io
import os
import socket
import zipfile

import pytest
import requests

from airflow_provider_zohobulk.sandbox import ZohoSandbox, sample_leads_csv
from airflow_provider_zohobulk.sandbox.results import FIELD_MAX_LENGTHS, UploadRefusedError, parse_csv

UPLOAD = "/crm/v8/upload"


def token(sandbox) -> str:
    return requests.post(f"{sandbox.url}/oauth/v2/token", timeout=10, data={
        "grant_type": "refresh_token", "client_id": sandbox.client_id, "client_secret": sandbox.client_secret,
        "refresh_token": sandbox.refresh_token}).json()["access_token"]


def zip_of(data: bytes, name: str = "Leads.csv") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def upload(sandbox, payload: bytes, *, org: str = "sandbox-org", file_name: str = "up.zip") -> requests.Response:
    headers = {"Authorization": f"Zoho-oauthtoken {token(sandbox)}", "feature": "bulk-write", "X-CRM-ORG": org}
    return requests.post(f"{sandbox.url}{UPLOAD}", headers=headers, timeout=30,
                         files={"file": (file_name, payload, "application/zip")})


def create(sandbox, file_id: str, **resource) -> str:
    response = requests.post(
        f"{sandbox.url}/crm/bulk/v8/write", timeout=30, headers={"Authorization": f"Zoho-oauthtoken {token(sandbox)}"},
        json={"operation": resource.pop("operation", "insert"),
              "resource": [{"type": "data", "module": {"api_name": "Leads"}, "file_id": file_id, **resource}]})
    assert response.status_code == 201, response.text
    return response.json()["details"]["id"]


def result(sandbox, job_id: str) -> list[dict[str, str]]:
    url = sandbox.job_details(job_id)["result"]["download_url"]
    body = requests.get(url, headers={"Authorization": f"Zoho-oauthtoken {token(sandbox)}"}, timeout=30).content
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        (name,) = archive.namelist()
        return list(csv.DictReader(io.StringIO(archive.read(name).decode("utf-8"), newline="")))


def rows_csv(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


@pytest.fixture
def sandbox(zoho_sandbox):
    zoho_sandbox.configure(seeded_failure_share=0)
    return zoho_sandbox


# --- what an upload must be ------------------------------------------------------------------------------


@pytest.mark.parametrize(("csv_bytes", "code", "details"), [
    (rows_csv([f"C{i}" for i in range(201)], [["x"] * 201]), "LIMIT_EXCEEDED", {"limit": 200, "columns": 201}),
    (b"Last_Name,Company\r\n" + b"N,Acme\r\n" * 25_001, "LIMIT_EXCEEDED", {"limit": 25_000, "records": 25_001}),
    (b"Last_Name,,Company\r\nN,x,Acme\r\n", "INVALID_DATA", {"column_index": 1}),
    (b"Last_Name,Email,Email\r\nN,a@x.com,b@x.com\r\n", "DUPLICATE_DATA", {"column": "Email"}),
], ids=["201-columns", "25001-records", "empty-header", "duplicate-header"])
def test_csvs_zoho_would_not_import_are_refused(sandbox, csv_bytes, code, details):
    response = upload(sandbox, zip_of(csv_bytes))
    assert response.status_code == 400
    assert (response.json()["code"], response.json()["details"], response.json()["status"]) == (code, details, "error")
    assert "Leads.csv" in response.json()["message"]
    assert sandbox.uploaded_files() == []


@pytest.mark.parametrize(("data", "header", "first_row"), [
    (b"Last_Name;Email\nDoe;d@x.com\n", ["Last_Name", "Email"], ["Doe", "d@x.com"]),
    (b"Last_Name|Email\nDoe|d@x.com\n", ["Last_Name", "Email"], ["Doe", "d@x.com"]),
    # Delimiters inside a quoted header name do not count: two columns, not three.
    (b'"Time: a:b",Email\n"1:2",d@x.com\n', ["Time: a:b", "Email"], ["1:2", "d@x.com"]),
    # One quoted column whose name holds another delimiter stays one column.
    (b'"a;b"\n"x;y"\n', ["a;b"], ["x;y"]),
])
def test_the_delimiter_is_read_from_the_header_outside_quotes(data, header, first_row):
    upload = parse_csv(data, "up.csv")
    assert (upload.header, upload.rows[0]) == (header, first_row)


def test_the_limits_themselves_are_accepted(sandbox):
    assert upload(sandbox, zip_of(rows_csv([f"C{i}" for i in range(200)], [["x"] * 200]))).status_code == 200
    assert upload(sandbox, zip_of(b"Last_Name,Company\r\n" + b"N,Acme\r\n" * 25_000)).status_code == 200
    assert [f["records"] for f in sandbox.uploaded_files()] == [1, 25_000]


def test_the_python_api_refuses_alike(sandbox):
    with pytest.raises(UploadRefusedError, match="more than once") as caught:
        sandbox.create_job_from_csv(b"Email,Email\r\na,b\r\n")
    assert caught.value.code == "DUPLICATE_DATA"
    sandbox.configure(upload_max_records=2)  # benchmarks may raise or lower the limits
    with pytest.raises(UploadRefusedError, match="3 records"):
        sandbox.create_job_from_csv(b"Last_Name,Company\r\nA,B\r\nC,D\r\nE,F\r\n")


def test_the_org_must_be_this_one(sandbox):
    response = upload(sandbox, zip_of(sample_leads_csv(3)), org="someone-else")
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_DATA" and response.json()["details"] == {"header": "X-CRM-ORG"}
    assert upload(sandbox, zip_of(sample_leads_csv(3))).status_code == 200


def test_a_chunked_upload_is_refused_and_the_connection_closed(sandbox):
    headers = {"Authorization": f"Zoho-oauthtoken {token(sandbox)}", "feature": "bulk-write",
               "X-CRM-ORG": "sandbox-org", "Content-Type": "multipart/form-data; boundary=x"}
    response = requests.post(f"{sandbox.url}{UPLOAD}", headers=headers, timeout=10,
                             data=iter([b"--x\r\n", b"whatever\r\n--x--\r\n"]))
    assert response.status_code == 411 and response.headers.get("Connection") == "close"


# --- faults ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "status", "code"), [
    ("invalid_file_format", 400, "INVALID_FILE_FORMAT"),
    ("file_too_large", 413, "FILE_TOO_LARGE"),
])
def test_file_faults_answer_as_zoho_once(sandbox, kind, status, code):
    sandbox.add_fault(kind)
    refused = upload(sandbox, zip_of(sample_leads_csv(3)))
    assert (refused.status_code, refused.json()["code"]) == (status, code)
    assert upload(sandbox, zip_of(sample_leads_csv(3))).status_code == 200
    assert len(sandbox.uploaded_files()) == 1


def test_a_status_fault_on_the_upload_drains_the_body_and_keeps_the_connection(sandbox):
    sandbox.add_fault("status", status=503, path_prefix=UPLOAD)
    with requests.Session() as session:
        headers = {"Authorization": f"Zoho-oauthtoken {token(sandbox)}", "feature": "bulk-write",
                   "X-CRM-ORG": "sandbox-org"}
        answers = [session.post(f"{sandbox.url}{UPLOAD}", headers=headers, timeout=10,
                                files={"file": ("a.zip", zip_of(sample_leads_csv(300)), "application/zip")})
                   for _ in range(2)]
    assert [a.status_code for a in answers] == [503, 200]
    assert answers[0].json()["code"] == "INTERNAL_ERROR"


def test_a_drop_closes_the_connection_mid_request_without_an_answer(sandbox):
    sandbox.add_fault("drop", fraction=0.5, path_prefix=UPLOAD)
    payload = zip_of(rows_csv(["Last_Name", "Company", "Description"],
                              [[f"N{i}", "Acme", os.urandom(500).hex()] for i in range(2000)]))
    with pytest.raises(requests.ConnectionError):
        upload(sandbox, payload)
    assert sandbox.uploaded_files() == []
    assert [r["status"] for r in sandbox.stats()["requests"] if r["path"] == UPLOAD] == [None]


def test_a_drop_after_processing_stores_the_upload_but_loses_the_answer(sandbox):
    sandbox.add_fault("drop", after_processing=True, path_prefix=UPLOAD)
    with pytest.raises(requests.ConnectionError):
        upload(sandbox, zip_of(sample_leads_csv(3)))
    assert len(sandbox.uploaded_files()) == 1


def test_a_drop_after_processing_on_create_makes_the_job(sandbox):
    file_id = upload(sandbox, zip_of(sample_leads_csv(3))).json()["details"]["file_id"]
    sandbox.add_fault("drop", after_processing=True, path_prefix="/crm/bulk/v8/write")
    with pytest.raises(requests.ConnectionError):
        create(sandbox, file_id)
    assert [job["resources"][0]["file_id"] for job in sandbox.write_jobs()] == [file_id]
    assert sandbox.stats()["write_jobs_created"] == 1


# --- jobs over the uploaded rows ----------------------------------------------------------------------------


def test_results_follow_the_upload_row_for_row_in_order(sandbox):
    data = sample_leads_csv(3000, seed=9)
    inputs = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
    file_id = upload(sandbox, zip_of(data)).json()["details"]["file_id"]
    job_id = create(sandbox, file_id)
    rows = result(sandbox, job_id)
    assert [(r["Last_Name"], r["Email"], r["Company"]) for r in rows] == \
        [(r["Last_Name"], r["Email"], r["Company"]) for r in inputs]
    counts = sandbox.job_details(job_id)["resource"][0]["file"]
    assert counts["total_count"] == len(rows) == 3000
    assert counts["added_count"] == sum(r["STATUS"] == "ADDED" for r in rows)
    assert counts["skipped_count"] == sum(r["STATUS"] == "SKIPPED" for r in rows) > 0
    assert all(r["RECORD_ID"] for r in rows if r["STATUS"] == "ADDED")


def test_a_value_longer_than_its_field_fails_its_row(sandbox):
    limit_email, limit_description = FIELD_MAX_LENGTHS["Email"], FIELD_MAX_LENGTHS["Description"]
    email_at_limit = "a" * (limit_email - 8) + "@x.co.uk"
    rows = [
        ["A" * 255, email_at_limit, "Acme", "d" * limit_description],        # every value at its limit
        ["A" * 256, "b@x.com", "Acme", ""],                                   # Last_Name: 255
        ["C", "c" + email_at_limit, "Acme", ""],                              # Email: 100
        ["D", "d@x.com", "Acme", "d" * (limit_description + 1)],              # Description: 32,000
        ["E" * 300, "e@x.com", "C" * 300, ""],                                # two columns: one code, both named
    ]
    file_id = upload(sandbox, zip_of(rows_csv(["Last_Name", "Email", "Company", "Description"], rows)))
    results = result(sandbox, create(sandbox, file_id.json()["details"]["file_id"]))
    assert [(r["STATUS"], r["ERRORS"]) for r in results] == [
        ("ADDED", ""), ("SKIPPED", "INVALID_DATA-Last_Name"), ("SKIPPED", "INVALID_DATA-Email"),
        ("SKIPPED", "INVALID_DATA-Description"), ("SKIPPED", "INVALID_DATA-Last_Name,Company")]


def test_field_lengths_follow_the_mapped_field_not_the_header(sandbox):
    """A column headed Notes mapped to Description takes 32,000 characters; mapped to a single-line field, 255."""
    csv_bytes = rows_csv(["Surname", "Org", "Notes"], [["N", "Acme", "n" * 1000]])
    file_id = upload(sandbox, zip_of(csv_bytes)).json()["details"]["file_id"]
    as_description = create(sandbox, file_id, field_mappings=[
        {"api_name": "Last_Name", "index": 0}, {"api_name": "Company", "index": 1},
        {"api_name": "Description", "index": 2}])
    as_title = create(sandbox, file_id, field_mappings=[
        {"api_name": "Last_Name", "index": 0}, {"api_name": "Company", "index": 1},
        {"api_name": "Designation", "index": 2}])
    assert [r["ERRORS"] for r in result(sandbox, as_description)] == [""]
    assert [r["ERRORS"] for r in result(sandbox, as_title)] == ["INVALID_DATA-Notes"]


def test_uploads_and_jobs_can_be_counted_and_listed_over_http(sandbox):
    names = []
    for part in range(3):
        name = f"part-{part:05d}.zip"
        names.append(name)
        file_id = upload(sandbox, zip_of(sample_leads_csv(10 + part)), file_name=name).json()["details"]["file_id"]
        create(sandbox, file_id)
    sandbox.create_job_from_zip(zip_of(b"Last_Name,RECORD_ID,STATUS,ERRORS\r\n"))  # not from an upload
    remote = sandbox.client()
    assert [f["file_name"] for f in remote.uploaded_files()] == names
    assert [f["records"] for f in remote.uploaded_files()] == [10, 11, 12]
    jobs = remote.write_jobs()
    assert [j["resources"][0]["file_id"] for j in jobs] == [f["file_id"] for f in remote.uploaded_files()]
    stats = remote.stats()
    assert (stats["uploads"], stats["write_jobs_created"], stats["jobs"]) == (3, 3, 4)
    remote.reset()
    assert remote.uploaded_files() == [] and remote.stats()["write_jobs_created"] == 0


def test_uploads_live_on_disk_and_reset_removes_them(sandbox):
    upload(sandbox, zip_of(sample_leads_csv(5)))
    folder = sandbox._upload_dir
    assert len(os.listdir(folder)) == 1
    sandbox.reset()
    assert os.listdir(folder) == []


def test_uploads_survive_a_restart_with_a_state_file(tmp_path):
    state = tmp_path / "state.json"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ZohoSandbox(port=port, state_file=state, seeded_failure_share=0) as first:
        file_id = upload(first, zip_of(sample_leads_csv(7)), file_name="kept.zip").json()["details"]["file_id"]
    with ZohoSandbox(port=port, state_file=state) as second:
        assert [(f["file_id"], f["file_name"], f["records"]) for f in second.uploaded_files()] == \
            [(file_id, "kept.zip", 7)]
        assert len(result(second, create(second, file_id))) == 7


def test_stats_count_the_most_bulk_calls_served_at_once(zoho_sandbox_connection):
    """What the scale-out test reads to check Zoho never saw more calls at once than the pool allows."""
    import threading

    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    zoho_sandbox = zoho_sandbox_connection
    job_id = zoho_sandbox.create_job_from_csv(b"Last_Name,Email,Company\nDoe,doe@example.com,Acme\n")
    zoho_sandbox.add_fault("slow_body", count=3, delay=0.3, chunk_size=16)
    hook = ZohoCrmHook()
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    assert zoho_sandbox.stats()["max_bulk_calls_in_flight"] == 1

    def download() -> None:
        with hook.stream_download(url, job_id=job_id) as chunks:
            for _chunk in chunks:
                pass

    threads = [threading.Thread(target=download) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert zoho_sandbox.stats()["max_bulk_calls_in_flight"] == 3
    zoho_sandbox.reset()
    assert zoho_sandbox.stats()["max_bulk_calls_in_flight"] == 0


def test_results_built_on_demand_still_follow_creation_order(sandbox):
    """Results are built when first looked at; a later job looked at first must still see the records the
    earlier job created (an upsert updates them), as if each had been processed when it was created."""
    header = ["Last_Name", "Email", "Company"]
    first = upload(sandbox, zip_of(rows_csv(header, [[f"N{i}", f"e{i}@x.com", "Acme"] for i in range(5)])))
    second = upload(sandbox, zip_of(rows_csv(header, [[f"M{i}", f"e{i}@x.com", "Acme"] for i in range(3, 8)])))
    insert_job = create(sandbox, first.json()["details"]["file_id"])
    upsert_job = create(sandbox, second.json()["details"]["file_id"], operation="upsert", find_by="Email")
    later = result(sandbox, upsert_job)  # the upsert's result asked for before the insert's
    assert [row["STATUS"] for row in later] == ["UPDATED", "UPDATED", "ADDED", "ADDED", "ADDED"]
    earlier = {row["Email"]: row["RECORD_ID"] for row in result(sandbox, insert_job)}
    assert [row["RECORD_ID"] for row in later[:2]] == [earlier["e3@x.com"], earlier["e4@x.com"]]
