"""ZohoCrmHook against the local Zoho sandbox, over real HTTP."""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile

import pytest

from airflow_provider_zohobulk.errors import (
    DisallowedHostError,
    DownloadError,
    DownloadLinkExpiredError,
    InvalidClientError,
    InvalidClientSecretError,
    InvalidRefreshTokenError,
    TokenThrottledError,
    ZohoApiError,
    ZohoConfigurationError,
    ZohoConnectionError,
    ZohoNotFoundError,
    ZohoRateLimitError,
    ZohoScopeError,
    ZohoServerError,
    ZohoTokenRejectedError,
)
from airflow_provider_zohobulk.hooks.token_cache import CachedToken, get_token_cache
from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

FAST = {"retry_backoff": 0.01, "max_backoff": 0.05, "retry_limit": 3, "timeout": (5, 10)}


def use_connection(monkeypatch, sandbox, conn_id="zoho_crm_default", **overrides):
    conn = sandbox.airflow_connection()
    extra = {**conn["extra"], **overrides.pop("extra", {})}
    conn = {**conn, **overrides, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn


def make_hook(monkeypatch, sandbox, conn_id="zoho_crm_default", hook_kwargs=None, **overrides):
    use_connection(monkeypatch, sandbox, conn_id, **overrides)
    return ZohoCrmHook(conn_id, **{**FAST, **(hook_kwargs or {})})


def small_zip(rows: int = 3) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        lines = ["Last_Name,Email,Company,RECORD_ID,STATUS,ERRORS"]
        lines += [f"N{i},n{i}@x.com,Acme,{4150868000000000000 + i},ADDED," for i in range(rows)]
        # A fixed time stamp: built twice across a two-second boundary, the same zip must be the same bytes.
        member = zipfile.ZipInfo("Leads-Leads.csv", date_time=(2026, 1, 1, 0, 0, 0))
        member.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(member, "\n".join(lines) + "\n")
    return buf.getvalue()


def sample_csv(rows: int = 20) -> bytes:
    lines = ["Last_Name,Email,Company,Phone"]
    lines += [f"Name{i},p{i}@example.com,Acme {i},555-{i:04d}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


# --- tokens ----------------------------------------------------------------------------------------


def test_token_is_minted_once_and_reused(monkeypatch, zoho_sandbox):
    hook = make_hook(monkeypatch, zoho_sandbox)
    first = hook.get_access_token()
    assert first
    assert hook.get_access_token() == first
    assert ZohoCrmHook(**FAST).get_access_token() == first  # a new hook in the same process shares it
    assert zoho_sandbox.stats()["tokens_minted"] == 1


@pytest.mark.parametrize("style", ["expires_in", "expires_in_sec", "both", "none"])
def test_every_expiry_spelling_gives_about_an_hour(monkeypatch, zoho_sandbox, style):
    zoho_sandbox.configure(token_response_style=style)
    hook = make_hook(monkeypatch, zoho_sandbox)
    hook.get_access_token()
    token = get_token_cache("local").get(hook._cache_key)
    assert token is not None
    assert 3500 < token.expires_at - time.time() <= 3600


def test_token_near_expiry_is_replaced(monkeypatch, zoho_sandbox):
    hook = make_hook(monkeypatch, zoho_sandbox)
    old = hook.get_access_token()
    cache = get_token_cache("local")
    cache.put(hook._cache_key, CachedToken(old, time.time() + 200))  # inside the 5-minute margin
    new = hook.get_access_token()
    assert new != old
    assert zoho_sandbox.stats()["tokens_minted"] == 2


def test_expired_token_rejected_by_zoho_is_refreshed_once(monkeypatch, zoho_sandbox):
    job_id = zoho_sandbox.create_job_from_csv(sample_csv())
    hook = make_hook(monkeypatch, zoho_sandbox)
    hook.get_bulk_write_job(job_id)
    zoho_sandbox.advance_clock(3700)  # Zoho's clock says the cached token is dead; ours does not know
    job = hook.get_bulk_write_job(job_id)
    assert job["id"] == job_id
    assert zoho_sandbox.stats()["tokens_minted"] == 2


@pytest.mark.parametrize(
    ("change", "error", "hint"),
    [
        ({"login": "unknown-client"}, InvalidClientError, "data centre"),
        ({"password": "wrong-secret"}, InvalidClientSecretError, "client secret"),
        ({"extra": {"refresh_token": "revoked-or-wrong"}}, InvalidRefreshTokenError, "refresh token"),
    ],
)
def test_token_errors_are_typed_and_say_what_to_fix(monkeypatch, zoho_sandbox, change, error, hint):
    hook = make_hook(monkeypatch, zoho_sandbox, **change)
    with pytest.raises(error) as info:
        hook.get_access_token()
    assert hint in str(info.value)
    for secret in ("wrong-secret", "revoked-or-wrong", "sandbox-client-secret", "sandbox-refresh-token"):
        assert secret not in str(info.value)


def test_revoked_refresh_token(monkeypatch, zoho_sandbox):
    hook = make_hook(monkeypatch, zoho_sandbox, extra={"oauth_cache": "none"})
    zoho_sandbox.revoke_refresh_token("sandbox-refresh-token")
    with pytest.raises(InvalidRefreshTokenError, match="revoked"):
        hook.get_access_token()


def test_missing_connection_fields_are_named(monkeypatch, zoho_sandbox):
    hook = make_hook(monkeypatch, zoho_sandbox, password=None)
    with pytest.raises(ZohoConfigurationError, match="client secret"):
        hook.get_access_token()


def test_throttle_is_waited_out_within_the_bound(monkeypatch, caplog):
    from airflow_provider_zohobulk.sandbox import ZohoSandbox

    with ZohoSandbox(token_limit=2, token_window_seconds=1.5) as sandbox:
        hook = make_hook(monkeypatch, sandbox, extra={"oauth_cache": "none"},
                         hook_kwargs={"throttle_wait": 0.5, "throttle_max_wait": 10})
        for _ in range(2):
            hook.__dict__.pop("_uncached_token", None)
            hook.get_access_token()
        hook.__dict__.pop("_uncached_token", None)
        with caplog.at_level(logging.WARNING):
            assert hook.get_access_token()
        assert "throttled" in caplog.text
        assert sandbox.stats()["tokens_minted"] == 3


def test_throttle_gives_up_after_the_bound(monkeypatch):
    from airflow_provider_zohobulk.sandbox import ZohoSandbox

    with ZohoSandbox(token_limit=1, token_window_seconds=600) as sandbox:
        hook = make_hook(monkeypatch, sandbox, extra={"oauth_cache": "none"},
                         hook_kwargs={"throttle_wait": 0.2, "throttle_max_wait": 0.5})
        hook.get_access_token()
        hook.__dict__.pop("_uncached_token", None)
        started = time.monotonic()
        with pytest.raises(TokenThrottledError, match="10 per 10 minutes"):
            hook.get_access_token()
        assert time.monotonic() - started < 5


def _token_in_child(conn_json: str, cache_dir: str, barrier, results) -> None:
    import os

    os.environ["AIRFLOW_CONN_ZOHO_CRM_DEFAULT"] = conn_json
    os.environ["ZOHOBULK_TOKEN_CACHE_DIR"] = cache_dir
    from airflow_provider_zohobulk.hooks import token_cache

    token_cache._caches.clear()  # a fresh process would have no cache object either
    barrier.wait(timeout=60)  # all 20 ask at the same instant
    results.put(ZohoCrmHook(**FAST).get_access_token())


def test_twenty_processes_mint_exactly_one_token(zoho_sandbox, tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")  # Airflow is already imported: forking keeps this fast
    barrier, results = context.Barrier(20), context.Queue()
    conn_json = json.dumps(zoho_sandbox.airflow_connection())
    procs = [context.Process(target=_token_in_child, args=(conn_json, str(tmp_path / "cache"), barrier, results))
             for _ in range(20)]
    for proc in procs:
        proc.start()
    tokens = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert len(set(tokens)) == 1
    assert zoho_sandbox.stats()["tokens_minted"] == 1


# --- API calls --------------------------------------------------------------------------------------


def test_job_details_status_is_normalised(monkeypatch):
    from airflow_provider_zohobulk.sandbox import ZohoSandbox

    with ZohoSandbox(job_step_seconds=30, in_progress_spelling="INPROGRESS") as sandbox:
        job_id = sandbox.create_job_from_csv(sample_csv())
        hook = make_hook(monkeypatch, sandbox)
        assert hook.get_bulk_write_job(job_id)["status"] == "ADDED"
        sandbox.advance_clock(31)
        assert hook.get_bulk_write_job(job_id)["status"] == "IN PROGRESS"
        sandbox.advance_clock(31)
        job = hook.get_bulk_write_job(job_id)
        assert job["status"] == "COMPLETED"
        assert job["resource"][0]["file"]["total_count"] == 20
        assert job["result"]["download_url"]


def test_unknown_job_is_not_found_and_named(monkeypatch, zoho_sandbox):
    hook = make_hook(monkeypatch, zoho_sandbox)
    with pytest.raises(ZohoNotFoundError) as info:
        hook.get_bulk_write_job("999999")
    assert info.value.code == "RESOURCE_NOT_FOUND"
    assert "999999" in str(info.value)


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 429, "retry_after": 0},
        {"kind": "status", "status": 500},
        {"kind": "status", "status": 503},
        {"kind": "reset_connection"},
    ],
    ids=["429", "500", "503", "reset"],
)
def test_transient_faults_are_retried(monkeypatch, zoho_sandbox, fault, caplog):
    job_id = zoho_sandbox.create_job_from_csv(sample_csv())
    hook = make_hook(monkeypatch, zoho_sandbox)
    hook.get_access_token()
    zoho_sandbox.add_fault(count=2, path_prefix="/crm/bulk", **fault)
    with caplog.at_level(logging.WARNING):
        assert hook.get_bulk_write_job(job_id)["id"] == job_id
    assert caplog.text.count("retry") >= 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [({"kind": "status", "status": 500}, ZohoServerError),
     ({"kind": "status", "status": 429, "retry_after": 0}, ZohoRateLimitError),
     ({"kind": "reset_connection"}, ZohoConnectionError)],
    ids=["500", "429", "reset"],
)
def test_retries_are_bounded(monkeypatch, zoho_sandbox, fault, error):
    job_id = zoho_sandbox.create_job_from_csv(sample_csv())
    hook = make_hook(monkeypatch, zoho_sandbox, hook_kwargs={"retry_limit": 2})
    hook.get_access_token()
    before = len(zoho_sandbox.stats()["requests"])
    zoho_sandbox.add_fault(count=10, path_prefix="/crm/bulk", **fault)
    with pytest.raises(error):
        hook.get_bulk_write_job(job_id)
    calls = [r for r in zoho_sandbox.stats()["requests"][before:] if r["path"].startswith("/crm/bulk")]
    assert len(calls) == 3  # the first attempt and two retries, no more


def test_retry_after_is_honoured(monkeypatch, zoho_sandbox):
    job_id = zoho_sandbox.create_job_from_csv(sample_csv())
    hook = make_hook(monkeypatch, zoho_sandbox, hook_kwargs={"max_backoff": 5})
    hook.get_access_token()
    zoho_sandbox.add_fault("status", status=429, retry_after=1, path_prefix="/crm/bulk")
    started = time.monotonic()
    hook.get_bulk_write_job(job_id)
    assert time.monotonic() - started >= 0.95


def test_invalid_token_answer_refreshes_once(monkeypatch, zoho_sandbox):
    job_id = zoho_sandbox.create_job_from_csv(sample_csv())
    hook = make_hook(monkeypatch, zoho_sandbox)
    hook.get_access_token()
    zoho_sandbox.add_fault("status", status=401, path_prefix="/crm/bulk",
                           body={"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token",
                                 "status": "error"})
    assert hook.get_bulk_write_job(job_id)["id"] == job_id
    assert zoho_sandbox.stats()["tokens_minted"] == 2


def test_scope_mismatch_names_the_scope(monkeypatch, zoho_sandbox):
    job_id = zoho_sandbox.create_job_from_csv(sample_csv())
    hook = make_hook(monkeypatch, zoho_sandbox)
    zoho_sandbox.add_fault("status", status=401, path_prefix="/crm/bulk",
                           body={"code": "OAUTH_SCOPE_MISMATCH", "details": {}, "message": "invalid oauth scope",
                                 "status": "error"})
    with pytest.raises(ZohoScopeError, match=r"ZohoCRM\.bulk"):
        hook.get_bulk_write_job(job_id)
    assert zoho_sandbox.stats()["tokens_minted"] == 1  # a refresh cannot fix a scope


# --- downloads --------------------------------------------------------------------------------------


def test_download_streams_bounded_chunks(monkeypatch, zoho_sandbox):
    payload = small_zip(5000)
    job_id = zoho_sandbox.create_job_from_zip(payload)
    hook = make_hook(monkeypatch, zoho_sandbox, hook_kwargs={"chunk_size": 4096})
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    with hook.stream_download(url) as download:
        chunks = list(download)
        assert download.bytes_read == len(payload)
        assert download.filename == f"{job_id}.zip"
    assert b"".join(chunks) == payload
    assert max(len(c) for c in chunks) <= 4096
    assert len(chunks) > 1


def test_download_dropped_mid_body_is_an_error(monkeypatch, zoho_sandbox):
    job_id = zoho_sandbox.create_job_from_zip(small_zip(5000))
    hook = make_hook(monkeypatch, zoho_sandbox)
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    zoho_sandbox.add_fault("drop_mid_body")
    with pytest.raises(DownloadError, match=r"dropped|ended after"), hook.stream_download(url) as download:
        for _ in download:
            pass


def test_download_retries_only_before_the_first_byte(monkeypatch, zoho_sandbox):
    payload = small_zip()
    job_id = zoho_sandbox.create_job_from_zip(payload)
    hook = make_hook(monkeypatch, zoho_sandbox)
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    zoho_sandbox.add_fault("status", status=503, count=2)
    with hook.stream_download(url) as download:
        assert b"".join(download) == payload


def test_expired_link_is_typed(monkeypatch, zoho_sandbox):
    job_id = zoho_sandbox.create_job_from_zip(small_zip())
    hook = make_hook(monkeypatch, zoho_sandbox)
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    zoho_sandbox.add_fault("expired_link")
    with pytest.raises(DownloadLinkExpiredError, match="no longer valid"), hook.stream_download(url, job_id=job_id):
        pass


@pytest.mark.parametrize("content_type", ["text/html", "application/json"])
def test_error_body_instead_of_zip(monkeypatch, zoho_sandbox, content_type):
    job_id = zoho_sandbox.create_job_from_zip(small_zip())
    hook = make_hook(monkeypatch, zoho_sandbox)
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    zoho_sandbox.add_fault("error_body", content_type=content_type)
    with pytest.raises(DownloadError, match="instead of a zip") as info, hook.stream_download(url, job_id=job_id):
        pass
    assert job_id in str(info.value)


def test_foreign_host_never_gets_a_request(monkeypatch, zoho_sandbox):
    hook = make_hook(monkeypatch, zoho_sandbox)
    before = len(zoho_sandbox.stats()["requests"])
    foreign = f"http://localhost:{zoho_sandbox.port}/v2/crm/x/bulk-write/1/1.zip"
    with pytest.raises(DisallowedHostError, match="localhost"), hook.stream_download(foreign):
        pass
    assert len(zoho_sandbox.stats()["requests"]) == before


def test_download_hosts_extends_the_allowlist(monkeypatch, zoho_sandbox):
    payload = small_zip()
    job_id = zoho_sandbox.create_job_from_zip(payload)
    hook = make_hook(monkeypatch, zoho_sandbox, extra={"download_hosts": "localhost"})
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"].replace("127.0.0.1", "localhost")
    with pytest.raises(DisallowedHostError, match="plain http"):  # a bare host name: https only
        hook.stream_download(url).__enter__()
    hook = make_hook(monkeypatch, zoho_sandbox, extra={"download_hosts": "http://localhost"})
    with hook.stream_download(url) as download:
        assert b"".join(download) == payload
    last = zoho_sandbox.stats()["requests"][-1]
    assert last["host"].startswith("localhost") and last["authorized"]


def test_redirect_to_foreign_host_drops_the_token(monkeypatch, zoho_sandbox):
    job_id = zoho_sandbox.create_job_from_zip(small_zip())
    hook = make_hook(monkeypatch, zoho_sandbox)
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    foreign = url.replace("127.0.0.1", "localhost")
    minted = zoho_sandbox.stats()["tokens_minted"]
    zoho_sandbox.add_fault("redirect", location=foreign, presigned=True)  # as a CDN's pre-signed link
    with hook.stream_download(url) as download:
        assert b"".join(download) == small_zip()
    requests_seen = zoho_sandbox.stats()["requests"]
    redirected = [r for r in requests_seen if r["host"].startswith("localhost")]
    assert len(redirected) == 1, requests_seen[-3:]  # served at once: no retry, no refresh
    assert not any(r["authorized"] for r in redirected)
    assert zoho_sandbox.stats()["tokens_minted"] == minted


def test_a_401_from_a_host_never_given_the_token_keeps_the_token(monkeypatch, zoho_sandbox):
    """The foreign host's refusal says nothing about Zoho's token: no new token is minted, and the
    error names the host that refused instead of blaming the connection's data centre."""
    job_id = zoho_sandbox.create_job_from_zip(small_zip())
    hook = make_hook(monkeypatch, zoho_sandbox)
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    token = hook.get_access_token()
    minted = zoho_sandbox.stats()["tokens_minted"]
    zoho_sandbox.add_fault("redirect", location=url.replace("127.0.0.1", "localhost"))  # not signed: 401
    with pytest.raises(ZohoApiError) as caught, hook.stream_download(url, job_id=job_id):
        pass
    assert not isinstance(caught.value, ZohoTokenRejectedError)
    assert "'localhost' is not a Zoho host" in str(caught.value) and caught.value.job_id == job_id
    assert zoho_sandbox.stats()["tokens_minted"] == minted
    assert hook.get_access_token() == token


# --- secrets ----------------------------------------------------------------------------------------


def test_secrets_are_registered_with_the_masker(monkeypatch, zoho_sandbox):
    from airflow.sdk.log import redact

    hook = make_hook(monkeypatch, zoho_sandbox)
    token = hook.get_access_token()
    for secret in ("sandbox-client-secret", "sandbox-refresh-token", token):
        assert secret not in str(redact(f"leaked {secret} here"))


def test_secrets_never_reach_logs_or_errors(monkeypatch, zoho_sandbox, caplog):
    job_id = zoho_sandbox.create_job_from_csv(sample_csv())
    hook = make_hook(monkeypatch, zoho_sandbox)
    messages = []
    with caplog.at_level(logging.DEBUG):
        token = hook.get_access_token()
        zoho_sandbox.add_fault("status", status=500, count=10, path_prefix="/crm/bulk")
        with pytest.raises(ZohoServerError) as info:
            hook.get_bulk_write_job(job_id)
        messages.append(str(info.value))
        hook_bad = make_hook(monkeypatch, zoho_sandbox, conn_id="zoho_bad", password="wrong-secret")
        with pytest.raises(InvalidClientSecretError) as info:
            hook_bad.get_access_token()
        messages.append(str(info.value))
        messages.append(repr(hook.settings))
    text = caplog.text + "\n".join(messages)
    for secret in ("sandbox-client-secret", "sandbox-refresh-token", "wrong-secret", token):
        assert secret not in text


def test_test_connection(monkeypatch, zoho_sandbox):
    ok, message = make_hook(monkeypatch, zoho_sandbox).test_connection()
    assert ok and "us" in message
    ok, message = make_hook(monkeypatch, zoho_sandbox, conn_id="zoho_bad", login="nobody").test_connection()
    assert not ok and "InvalidClientError" in message


@pytest.mark.parametrize("variant", [
    {"result_bom": True},
    {"result_zoho_columns_first": True, "result_status_case": "lower"},
    {"result_status_case": "title", "download_content_type": "application/x-download",
     "download_filename_style": "rfc5987"},
    {"download_content_type": "application/zip", "download_filename_style": "none"},
], ids=["bom", "zoho-columns-first-lowercase", "title-case-x-download-rfc5987", "zip-no-filename"])
def test_every_result_variant_the_reference_lists_loads_the_same_rows(monkeypatch, zoho_sandbox, variant):
    """The sandbox writes each variant a client must tolerate; the canonical rows do not change."""
    from airflow_provider_zohobulk.bulk_result import read_bulk_write_result

    hook = make_hook(monkeypatch, zoho_sandbox)

    def load(csv_bytes: bytes) -> tuple[str, list[tuple], str | None, bytes]:
        job_id = zoho_sandbox.create_job_from_csv(csv_bytes)
        url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
        with hook.stream_download(url, job_id=job_id) as download:
            body = b"".join(download)
        rows = [(row["row_number"], row["status"], row["errors_raw"], row["source"])
                for _name, batch in read_bulk_write_result([body], job_id=job_id) for row in batch.to_pylist()]
        return job_id, rows, download.filename, body

    zoho_sandbox.configure(seeded_failure_share=0)
    csv_bytes = sample_csv() + b",no-name@example.com,Acme,555\n"  # one SKIPPED row: Last_Name missing
    _, expected, _, _ = load(csv_bytes)
    zoho_sandbox.configure(**variant)
    job_id, rows, filename, body = load(csv_bytes)
    assert rows == expected and {status for _, status, _, _ in rows} == {"ADDED", "SKIPPED"}
    assert filename == (None if variant.get("download_filename_style") == "none" else f"{job_id}.zip")
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        raw = archive.read(archive.namelist()[0])
    assert raw.startswith(b"\xef\xbb\xbf") == bool(variant.get("result_bom"))
    assert raw.lstrip(b"\xef\xbb\xbf").startswith(b"RECORD_ID,STATUS,ERRORS") == bool(
        variant.get("result_zoho_columns_first"))
