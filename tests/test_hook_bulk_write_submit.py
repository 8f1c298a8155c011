"""ZohoCrmHook's Bulk Write submission calls (upload, create job) against the sandbox, over real HTTP."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from airflow_provider_zohobulk.bulk_result import read_bulk_write_result
from airflow_provider_zohobulk.errors import (
    ZohoApiError,
    ZohoConfigurationError,
    ZohoConnectionError,
    ZohoServerError,
)
from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
from airflow_provider_zohobulk.sandbox import sample_leads_csv

FAST = {"retry_backoff": 0.01, "max_backoff": 0.05, "retry_limit": 3, "timeout": (5, 30)}
UPLOAD = "/crm/v8/upload"
WRITE = "/crm/bulk/v8/write"
SECRETS = ("sandbox-client-secret", "sandbox-refresh-token")


def make_hook(monkeypatch, sandbox, **extra) -> ZohoCrmHook:
    conn = sandbox.airflow_connection()
    conn["extra"] = {k: v for k, v in {**conn["extra"], **extra}.items() if v is not None}
    monkeypatch.setenv("AIRFLOW_CONN_ZOHO_CRM_DEFAULT", json.dumps(conn))
    return ZohoCrmHook(**FAST)


def write_zip(path: Path, csv_bytes: bytes, member: str = "Leads.csv") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, csv_bytes)
    return path


def requests_to(sandbox, path: str) -> list[dict]:
    return [r for r in sandbox.stats()["requests"] if r.get("path") == path]


def csv_rows(csv_bytes: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(csv_bytes.decode("utf-8"), newline="")))


def result_rows(hook: ZohoCrmHook, job_id: str) -> tuple[dict, list[dict]]:
    """The job's details and its canonical result rows, downloaded and decoded as the operator does."""
    job = hook.get_bulk_write_job(job_id)
    with hook.stream_download(job["result"]["download_url"], job_id=job_id) as download:
        rows = [row for _, batch in read_bulk_write_result(download, job_id=job_id) for row in batch.to_pylist()]
    return job, rows


# --- upload ------------------------------------------------------------------------------------------


def test_upload_and_insert_round_trip_keeps_input_order(monkeypatch, zoho_sandbox, tmp_path):
    zoho_sandbox.configure(seeded_failure_share=0)
    hook = make_hook(monkeypatch, zoho_sandbox)
    data = sample_leads_csv(1500, seed=4)
    file_id = hook.upload_bulk_write_file(write_zip(tmp_path / "part-00001.zip", data))

    (uploaded,) = zoho_sandbox.uploaded_files()
    assert (uploaded["file_id"], uploaded["file_name"], uploaded["records"]) == (file_id, "part-00001.zip", 1500)
    (sent,) = requests_to(zoho_sandbox, UPLOAD)
    assert sent["content_length"] is not None and sent["transfer_encoding"] is None  # a known length, not chunked

    job_id = hook.create_bulk_write_job(module="Leads", operation="insert", file_id=file_id)
    job, rows = result_rows(hook, job_id)
    inputs = csv_rows(data)
    assert job["status"] == "COMPLETED" and job["resource"][0]["file"]["total_count"] == len(inputs)
    assert [row["row_number"] for row in rows] == list(range(1, len(inputs) + 1))
    echoed = [tuple(row["source"].get(c) or "" for c in ("Last_Name", "Email", "Company")) for row in rows]
    assert echoed == [(r["Last_Name"], r["Email"], r["Company"]) for r in inputs]  # the result's first three
    counts = job["resource"][0]["file"]
    assert counts["added_count"] == sum(row["status"] == "ADDED" for row in rows) > 0
    assert counts["skipped_count"] == sum(row["status"] == "SKIPPED" for row in rows) > 0


def test_upload_sends_the_name_it_is_given(monkeypatch, zoho_sandbox, tmp_path):
    hook = make_hook(monkeypatch, zoho_sandbox)
    hook.upload_bulk_write_file(write_zip(tmp_path / "x.zip", sample_leads_csv(5)), file_name='run 7 "b".zip')
    assert zoho_sandbox.uploaded_files()[0]["file_name"] == "run 7 %22b%22.zip"  # quoted as browsers do


def test_upsert_with_find_by_and_field_mappings(monkeypatch, zoho_sandbox, tmp_path):
    zoho_sandbox.configure(seeded_failure_share=0)
    hook = make_hook(monkeypatch, zoho_sandbox)
    first = hook.upload_bulk_write_file(write_zip(
        tmp_path / "a.zip", b"Last_Name,Email,Company\r\nA,a@x.com,Acme\r\nB,b@x.com,Acme\r\n"))
    inserted = hook.create_bulk_write_job(module="Leads", operation="insert", file_id=first)
    _, inserted_rows = result_rows(hook, inserted)
    ids = {row["source"]["Email"]: row["record_id"] for row in inserted_rows}

    # Other headers, mapped by index: the sandbox (like Zoho) finds the existing record by Email.
    second = hook.upload_bulk_write_file(write_zip(
        tmp_path / "b.zip", b"Mail,Surname,Org\r\nb@x.com,B2,Acme\r\nc@x.com,C,Initech\r\n"))
    mappings = [{"api_name": "Email", "index": 0}, {"api_name": "Last_Name", "index": 1},
                {"api_name": "Company", "index": 2}]
    upserted = hook.create_bulk_write_job(module="Leads", operation="upsert", file_id=second, find_by="Email",
                                          field_mappings=mappings, ignore_empty=True,
                                          callback={"url": "https://example.com/hook", "method": "post"})
    job, rows = result_rows(hook, upserted)
    assert [(row["source"]["Mail"], row["status"]) for row in rows] == [("b@x.com", "UPDATED"), ("c@x.com", "ADDED")]
    assert rows[0]["record_id"] == ids["b@x.com"]
    assert job["operation"] == "upsert" and job["ignore_empty"] is True
    assert job["callback"] == {"url": "https://example.com/hook", "method": "post"}
    created = zoho_sandbox.write_jobs()[-1]
    assert created["resources"] == [{"module": "Leads", "file_id": second, "file_name": "Leads.csv", "find_by": "Email",
                                     "fields": ["Email", "Last_Name", "Company"]}]


def test_missing_org_id_is_a_configuration_error_naming_the_extra(monkeypatch, zoho_sandbox, tmp_path):
    hook = make_hook(monkeypatch, zoho_sandbox, org_id=None)
    with pytest.raises(ZohoConfigurationError, match='"org_id"') as caught:
        hook.upload_bulk_write_file(write_zip(tmp_path / "leads.zip", sample_leads_csv(3)))
    assert caught.value.file_name == "leads.zip"
    assert requests_to(zoho_sandbox, UPLOAD) == []


def test_an_org_id_of_another_org_is_refused_with_a_hint(monkeypatch, zoho_sandbox, tmp_path):
    hook = make_hook(monkeypatch, zoho_sandbox, org_id="another-org")
    with pytest.raises(ZohoApiError, match='"org_id"') as caught:
        hook.upload_bulk_write_file(write_zip(tmp_path / "leads.zip", sample_leads_csv(3)))
    assert caught.value.status_code == 400 and caught.value.file_name == "leads.zip"


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 500, "count": 2},
    {"kind": "status", "status": 503, "count": 1},
    {"kind": "status", "status": 429, "retry_after": 0, "count": 1},
    {"kind": "reset_connection", "count": 2},
    {"kind": "drop", "fraction": 0.5, "count": 2},
], ids=["500x2", "503", "429", "reset", "drop-mid-body"])
def test_transient_upload_faults_are_retried_and_the_body_resent_whole(monkeypatch, zoho_sandbox, tmp_path, fault,
                                                                        caplog):
    hook = make_hook(monkeypatch, zoho_sandbox)
    hook.get_access_token()
    fault = dict(fault)
    zoho_sandbox.add_fault(fault.pop("kind"), count=fault.pop("count"), path_prefix=UPLOAD, **fault)
    # Big enough that a drop at half the body happens while the client is still sending.
    data = b"Last_Name,Email,Company,Description\r\n" + b"".join(
        b"N%d,e%d@x.com,Acme,%s\r\n" % (i, i, os.urandom(200).hex().encode()) for i in range(3000))
    with caplog.at_level(logging.WARNING):
        file_id = hook.upload_bulk_write_file(write_zip(tmp_path / "leads.zip", data))
    assert "retry" in caplog.text
    (uploaded,) = zoho_sandbox.uploaded_files()  # the retried body arrived whole: same CSV, every record
    assert uploaded["file_id"] == file_id and uploaded["records"] == 3000
    assert requests_to(zoho_sandbox, UPLOAD)[-1]["status"] == 200


def test_an_upload_whose_answer_was_lost_is_uploaded_again(monkeypatch, zoho_sandbox, tmp_path):
    """Repeating an upload is harmless (an unused file at Zoho), so a lost answer is retried."""
    hook = make_hook(monkeypatch, zoho_sandbox)
    zoho_sandbox.add_fault("drop", after_processing=True, path_prefix=UPLOAD)
    file_id = hook.upload_bulk_write_file(write_zip(tmp_path / "leads.zip", sample_leads_csv(10)))
    assert [u["file_id"] for u in zoho_sandbox.uploaded_files()][-1] == file_id
    assert len(zoho_sandbox.uploaded_files()) == 2


def test_an_expired_token_is_refreshed_and_the_file_sent_again(monkeypatch, zoho_sandbox, tmp_path):
    hook = make_hook(monkeypatch, zoho_sandbox)
    hook.get_access_token()
    zoho_sandbox.advance_clock(3700)  # Zoho says the cached token is dead; the hook's cache does not know
    hook.upload_bulk_write_file(write_zip(tmp_path / "leads.zip", sample_leads_csv(200)))
    assert [r["status"] for r in requests_to(zoho_sandbox, UPLOAD)] == [401, 200]
    assert zoho_sandbox.stats()["tokens_minted"] == 2
    assert zoho_sandbox.uploaded_files()[0]["records"] == 200


@pytest.mark.parametrize(("fault", "status", "code", "hint"), [
    ("invalid_file_format", 400, "INVALID_FILE_FORMAT", "must be a zip holding one CSV"),
    ("file_too_large", 413, "FILE_TOO_LARGE", "at most 25 MB"),
])
def test_file_refusals_are_typed_name_the_file_and_are_not_retried(monkeypatch, zoho_sandbox, tmp_path, fault,
                                                                     status, code, hint):
    hook = make_hook(monkeypatch, zoho_sandbox)
    zoho_sandbox.add_fault(fault, path_prefix=UPLOAD)
    with pytest.raises(ZohoApiError) as caught:
        hook.upload_bulk_write_file(write_zip(tmp_path / "part-3.zip", sample_leads_csv(5)))
    error = caught.value
    assert (error.code, error.status_code, error.file_name) == (code, status, "part-3.zip")
    assert "'part-3.zip'" in str(error) and code in str(error) and hint in str(error)
    assert len(requests_to(zoho_sandbox, UPLOAD)) == 1


def test_real_refusals_not_a_zip_and_too_large(monkeypatch, zoho_sandbox, tmp_path):
    hook = make_hook(monkeypatch, zoho_sandbox)
    not_zip = tmp_path / "rows.zip"
    not_zip.write_bytes(sample_leads_csv(5))
    with pytest.raises(ZohoApiError) as caught:
        hook.upload_bulk_write_file(not_zip)
    assert caught.value.code == "INVALID_FILE_FORMAT"
    zoho_sandbox.configure(upload_limit_bytes=2048)
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("Leads.csv", b"Last_Name,Company\r\n" + b"".join(b"N%d,%s\r\n" % (i, os.urandom(20).hex()
                                                                                        .encode()) for i in range(200)))
    with pytest.raises(ZohoApiError) as caught:
        hook.upload_bulk_write_file(big)
    assert (caught.value.code, caught.value.status_code) == ("FILE_TOO_LARGE", 413)
    assert f"({big.stat().st_size} bytes)" in str(caught.value)


def test_a_csv_zoho_will_not_import_is_refused_with_its_code(monkeypatch, zoho_sandbox, tmp_path):
    hook = make_hook(monkeypatch, zoho_sandbox)
    wide = ",".join(f"C{i}" for i in range(201)).encode() + b"\r\n" + b",".join([b"x"] * 201) + b"\r\n"
    with pytest.raises(ZohoApiError, match="201 columns") as caught:
        hook.upload_bulk_write_file(write_zip(tmp_path / "wide.zip", wide))
    assert (caught.value.code, caught.value.status_code, caught.value.file_name) == ("LIMIT_EXCEEDED", 400, "wide.zip")
    assert len(requests_to(zoho_sandbox, UPLOAD)) == 1


def test_a_server_that_keeps_failing_ends_as_a_server_error_naming_the_file(monkeypatch, zoho_sandbox, tmp_path):
    hook = make_hook(monkeypatch, zoho_sandbox)
    zoho_sandbox.add_fault("status", status=500, count=10, path_prefix=UPLOAD)
    with pytest.raises(ZohoServerError) as caught:
        hook.upload_bulk_write_file(write_zip(tmp_path / "leads.zip", sample_leads_csv(5)))
    assert caught.value.file_name == "leads.zip" and "leads.zip" in str(caught.value)
    assert len(requests_to(zoho_sandbox, UPLOAD)) == FAST["retry_limit"] + 1


def test_a_missing_file_is_a_configuration_error(monkeypatch, zoho_sandbox, tmp_path):
    hook = make_hook(monkeypatch, zoho_sandbox)
    with pytest.raises(ZohoConfigurationError, match="cannot read the file") as caught:
        hook.upload_bulk_write_file(tmp_path / "nowhere.zip")
    assert caught.value.file_name == "nowhere.zip"


_MEASURE = textwrap.dedent("""
    import json, sys, tracemalloc
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
    hook = ZohoCrmHook(timeout=(5, 60))
    hook.get_access_token()
    tracemalloc.start()
    file_id = hook.upload_bulk_write_file(sys.argv[1])
    print(json.dumps({"file_id": file_id, "peak": tracemalloc.get_traced_memory()[1]}))
""")


@pytest.mark.slow
def test_the_zip_is_streamed_from_disk_not_read_whole(monkeypatch, zoho_sandbox, tmp_path):
    """The hook runs in a process of its own (the sandbox's copy of the body would count here): its
    Python allocations during the upload stay far below the file's size."""
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive, archive.open("Leads.csv", "w") as member:
        member.write(b"Last_Name,Email,Company,Description\r\n")
        for i in range(4000):
            member.write(b"N%d,e%d@x.com,Acme,%s\r\n" % (i, i, os.urandom(1500).hex().encode()))
    size = path.stat().st_size
    assert size > 12_000_000
    make_hook(monkeypatch, zoho_sandbox)
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert zoho_sandbox.uploaded_files()[0]["file_id"] == measured["file_id"]
    assert zoho_sandbox.uploaded_files()[0]["size"] == size
    assert measured["peak"] < size / 10, measured


# --- create job --------------------------------------------------------------------------------------


def uploaded(monkeypatch, sandbox, tmp_path) -> tuple[ZohoCrmHook, str]:
    hook = make_hook(monkeypatch, sandbox)
    return hook, hook.upload_bulk_write_file(write_zip(tmp_path / "leads.zip", sample_leads_csv(20)))


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 502},
    {"kind": "drop", "after_processing": True},
    {"kind": "drop", "fraction": 1.0},
    {"kind": "reset_connection"},
], ids=["500", "502", "answer-lost", "dropped-after-the-body", "reset"])
def test_a_create_that_may_have_reached_zoho_is_not_repeated(monkeypatch, zoho_sandbox, tmp_path, fault):
    hook, file_id = uploaded(monkeypatch, zoho_sandbox, tmp_path)
    fault = dict(fault)
    zoho_sandbox.add_fault(fault.pop("kind"), path_prefix=WRITE, **fault)
    expected = ZohoServerError if "status" in fault else ZohoConnectionError
    with pytest.raises(expected, match="not retried") as caught:
        hook.create_bulk_write_job(module="Leads", operation="insert", file_id=file_id)
    assert "Bulk Write jobs" in str(caught.value)
    assert len(requests_to(zoho_sandbox, WRITE)) == 1
    # The lost answer is the case that matters: the job exists once, never twice.
    assert len(zoho_sandbox.write_jobs()) == (1 if fault.get("after_processing") else 0)


def test_a_create_zoho_refused_is_retried(monkeypatch, zoho_sandbox, tmp_path, caplog):
    hook, file_id = uploaded(monkeypatch, zoho_sandbox, tmp_path)
    zoho_sandbox.add_fault("status", status=429, retry_after=0, count=2, path_prefix=WRITE)
    zoho_sandbox.advance_clock(3700)  # and the cached token is dead: one refresh
    with caplog.at_level(logging.WARNING):
        job_id = hook.create_bulk_write_job(module="Leads", operation="insert", file_id=file_id)
    assert [r["status"] for r in requests_to(zoho_sandbox, WRITE)] == [429, 429, 401, 201]
    assert [job["job_id"] for job in zoho_sandbox.write_jobs()] == [job_id]
    assert "HTTP 429 (refused, not done)" in caplog.text


def test_a_create_whose_connection_cannot_open_is_retried_then_fails(monkeypatch, zoho_sandbox, caplog):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    hook = make_hook(monkeypatch, zoho_sandbox, api_domain=f"http://127.0.0.1:{closed}")
    with caplog.at_level(logging.WARNING), pytest.raises(ZohoConnectionError, match="could not be opened"):
        hook.create_bulk_write_job(module="Leads", operation="insert", file_id="1")
    assert caplog.text.count("before the request was sent") == FAST["retry_limit"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"operation": "delete"}, "insert, update, upsert"),
    ({"operation": "upsert"}, "needs find_by"),
    ({"operation": "update"}, "needs find_by"),
    ({"operation": "insert", "module": ""}, "needs a module"),
])
def test_create_arguments_are_checked_before_anything_is_sent(monkeypatch, zoho_sandbox, kwargs, match):
    hook = make_hook(monkeypatch, zoho_sandbox)
    with pytest.raises(ZohoConfigurationError, match=match):
        hook.create_bulk_write_job(**{"module": "Leads", "file_id": "1", **kwargs})
    assert requests_to(zoho_sandbox, WRITE) == []


def test_a_create_zoho_refuses_names_the_field(monkeypatch, zoho_sandbox):
    hook = make_hook(monkeypatch, zoho_sandbox)
    with pytest.raises(ZohoApiError, match=r"INVALID_DATA on resource\[0\]\.file_id") as caught:
        hook.create_bulk_write_job(module="Leads", operation="insert", file_id="404")
    assert (caught.value.code, caught.value.status_code) == ("INVALID_DATA", 400)


def test_secrets_never_reach_error_messages(monkeypatch, zoho_sandbox, tmp_path, caplog):
    hook, file_id = uploaded(monkeypatch, zoho_sandbox, tmp_path)
    texts = []
    for kind, params, path in (("file_too_large", {}, UPLOAD), ("invalid_file_format", {}, UPLOAD),
                               ("status", {"status": 500, "count": 10}, UPLOAD),
                               ("status", {"status": 500}, WRITE), ("drop", {"after_processing": True}, WRITE)):
        zoho_sandbox.clear_faults()
        zoho_sandbox.add_fault(kind, path_prefix=path, **params)
        with pytest.raises((ZohoApiError, ZohoConnectionError)) as caught:
            if path == UPLOAD:
                hook.upload_bulk_write_file(write_zip(tmp_path / "leads.zip", sample_leads_csv(3)))
            else:
                hook.create_bulk_write_job(module="Leads", operation="insert", file_id=file_id)
        texts.append(str(caught.value))
    token = hook.get_access_token()
    for text in [*texts, caplog.text]:
        for secret in (*SECRETS, token):
            assert secret not in text
