"""The hook against hostile URLs and misbehaving servers (issue #10).

Two questions, each answered over real HTTP:

- Where can the access token go? The sandbox (the connection's Zoho) listens on 127.0.0.1; a second
  server on 127.0.0.2 (Linux routes all of 127.0.0.0/8 to loopback) records every request it receives.
  Each URL trick that makes one parser read 127.0.0.1 while the connecting one reads 127.0.0.2 is tried
  directly and as a redirect's ``Location``; the recorder must never see an ``Authorization`` header.
- How does a broken answer fail? The recorder, named as the connection's API domain, answers job-details
  calls with bodies cut short, HTML, 204, JSON of the wrong shape or a bad gzip encoding: transport
  failures are retried within the bound and then typed as transient; malformed bodies are typed errors
  that name what was expected.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_provider_zohobulk.datacenters import request_target, resolve_endpoints
from airflow_provider_zohobulk.errors import (
    TRANSIENT_ERRORS,
    DisallowedHostError,
    DownloadError,
    ZohoApiError,
    ZohoBulkError,
    ZohoConnectionError,
    ZohoMalformedResponseError,
)
from tests.test_hook import make_hook, sample_csv, small_zip

RECORDER_HOST = "127.0.0.2"
DOWNLOAD_PATH = "/v2/crm/sandbox-org/bulk-write/77/77.zip"


def http_answer(status: int, body: bytes = b"", content_type: str | None = "application/json",
                headers: dict[str, str] | None = None, *, declared_length: int | None = None) -> bytes:
    """One raw HTTP/1.1 answer that closes its connection; ``declared_length`` can lie about the body."""
    reason = {200: "OK", 204: "No Content", 302: "Found"}.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}", "Connection: close"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if status != 204:
        lines.append(f"Content-Length: {len(body) if declared_length is None else declared_length}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked_cut_short(first_part: bytes) -> bytes:
    """A chunked JSON answer whose first chunk announces more bytes than arrive before the close."""
    head = (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    return head + f"{len(first_part) + 100:x}\r\n".encode() + first_part


def job_details(job_id: str = "77", download_url: str | None = None) -> dict[str, Any]:
    return {"status": "COMPLETED", "id": job_id, "operation": "insert",
            "resource": [{"status": "COMPLETED", "type": "data", "module": {"api_name": "Leads"},
                          "file": {"status": "COMPLETED", "name": "Leads.csv", "added_count": 3, "total_count": 3}}],
            "result": {"download_url": download_url or f"http://{RECORDER_HOST}{DOWNLOAD_PATH}"}}


class RecordingServer:
    """A stdlib HTTP server on 127.0.0.2 that records what it receives and answers from a script.

    Each request takes the next scripted raw answer, or :attr:`default` when the script is empty; every
    answer closes its connection, so a cut-short answer cannot leak into the next request.
    """

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.default = http_answer(200, small_zip(), "application/zip")
        self._script: list[bytes] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: the tests read :attr:`RecordingServer.received` instead."""

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with recorder._lock:
                    recorder.received.append({"method": self.command, "path": self.path,
                                              "headers": dict(self.headers.items())})
                    raw = recorder._script.pop(0) if recorder._script else recorder.default
                self.wfile.write(raw)
                self.wfile.flush()
                self.close_connection = True

            do_GET = do_POST = _answer

        self._server = ThreadingHTTPServer((RECORDER_HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{RECORDER_HOST}:{self.port}"

    def script(self, *answers: bytes) -> None:
        with self._lock:
            self._script.extend(answers)

    def authorized(self) -> list[dict[str, Any]]:
        """The requests that arrived carrying any Authorization header at all."""
        return [r for r in self.received if any(name.lower() == "authorization" for name in r["headers"])]

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


# --- High: the token goes only where the connecting parser goes ----------------------------------------

#: Each trick, written with {r} = the recorder's port and {s} = the sandbox's port. All but the last
#: make some parser read the sandbox (127.0.0.1, allowed) while requests connects to 127.0.0.2, or hide
#: user information; they are refused outright. The last is an honest foreign URL: no token, no refusal
#: on a redirect, and the recorder must see it arrive (proof that it records at all).
TRICKS = {
    "backslash": "http://127.0.0.2:{r}\\@127.0.0.1:{s}" + DOWNLOAD_PATH,
    "backslash-uppercase-scheme": "HTTP://127.0.0.2:{r}\\@127.0.0.1:{s}" + DOWNLOAD_PATH,
    "backslash-in-path": "http://127.0.0.1:{s}/\\127.0.0.2:{r}" + DOWNLOAD_PATH,
    "userinfo": "http://127.0.0.1:{s}@127.0.0.2:{r}" + DOWNLOAD_PATH,
    "userinfo-on-allowed-host": "http://user:pw@127.0.0.1:{s}" + DOWNLOAD_PATH,
    "encoded-slash": "http://127.0.0.2:{r}%2F@127.0.0.1:{s}" + DOWNLOAD_PATH,
    "encoded-backslash": "http://127.0.0.2:{r}%5C@127.0.0.1:{s}" + DOWNLOAD_PATH,
    "tab": "http://127.0.0.2:{r}\t@127.0.0.1:{s}" + DOWNLOAD_PATH,
    "newline": "http://127.0.0.2:{r}\n@127.0.0.1:{s}" + DOWNLOAD_PATH,
    "space": "http://127.0.0.2:{r} @127.0.0.1:{s}" + DOWNLOAD_PATH,
    "malformed-ipv6": "http://[::1" + DOWNLOAD_PATH,
    "malformed-ipv6-then-host": "http://[127.0.0.2:{r}\\@127.0.0.1:{s}]" + DOWNLOAD_PATH,
    "non-ascii-host": "http://127.0.0.2:{r}\uff20127.0.0.1:{s}" + DOWNLOAD_PATH,
    "ftp-scheme": "ftp://127.0.0.1:{s}" + DOWNLOAD_PATH,
    "port-out-of-range": "http://127.0.0.1:99999" + DOWNLOAD_PATH,
    "foreign-host": "http://127.0.0.2:{r}" + DOWNLOAD_PATH,
}
HONEST_FOREIGN = {"foreign-host"}
REFUSED = sorted(set(TRICKS) - HONEST_FOREIGN)
#: A raw newline cannot travel inside a Location header (it would end the header), so that one trick is
#: tried only directly.
REDIRECTABLE = sorted(set(TRICKS) - {"newline"})


def trick_url(name: str, recorder: RecordingServer, sandbox) -> str:
    return TRICKS[name].replace("{r}", str(recorder.port)).replace("{s}", str(sandbox.port))


def download_outcome(hook, url: str, job_id: str) -> BaseException | None:
    """Download ``url`` to the end; the exception it raised, if any. The tests look at what the
    recorder received first, and only then at the exception."""
    try:
        with hook.stream_download(url, job_id=job_id) as download:
            b"".join(download)
    except Exception as exc:
        return exc
    return None


def test_the_recorder_does_see_a_token_it_is_allowed(monkeypatch, zoho_sandbox, recorder):
    """The control for every test below: named in download_hosts, the recorder receives the token, so
    its recording of "no Authorization" elsewhere means the token was withheld, not lost."""
    hook = make_hook(monkeypatch, zoho_sandbox, extra={"download_hosts": f"http://{RECORDER_HOST}"})
    with hook.stream_download(recorder.url + DOWNLOAD_PATH) as download:
        assert b"".join(download) == small_zip()
    assert len(recorder.authorized()) == 1


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_a_hostile_download_url_never_carries_the_token(monkeypatch, zoho_sandbox, recorder, trick):
    hook = make_hook(monkeypatch, zoho_sandbox)
    token = hook.get_access_token()
    url = trick_url(trick, recorder, zoho_sandbox)
    sandbox_requests = len(zoho_sandbox.stats()["requests"])
    refused = download_outcome(hook, url, "77")
    assert recorder.authorized() == []
    assert recorder.received == [] and len(zoho_sandbox.stats()["requests"]) == sandbox_requests
    assert isinstance(refused, DisallowedHostError), repr(refused)
    assert token not in str(refused) and refused.job_id == "77"


@pytest.mark.parametrize("trick", REFUSED)
def test_a_hostile_api_url_never_carries_the_token(monkeypatch, zoho_sandbox, recorder, trick):
    hook = make_hook(monkeypatch, zoho_sandbox)
    url = trick_url(trick, recorder, zoho_sandbox).replace(DOWNLOAD_PATH, "/crm/bulk/v8/write/1")
    sandbox_requests = len(zoho_sandbox.stats()["requests"])
    try:
        hook.request("GET", url)
    except Exception as exc:
        refused = exc
    assert recorder.authorized() == []
    assert recorder.received == [] and len(zoho_sandbox.stats()["requests"]) == sandbox_requests
    assert isinstance(refused, DisallowedHostError), repr(refused)


@pytest.mark.parametrize("trick", REDIRECTABLE)
def test_a_hostile_redirect_never_carries_the_token(monkeypatch, zoho_sandbox, recorder, trick):
    """Zoho's own host answers the download with a redirect to the trick: it is refused outright, or,
    for an honest foreign host, followed without the token."""
    job_id = zoho_sandbox.create_job_from_zip(small_zip())
    hook = make_hook(monkeypatch, zoho_sandbox)
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    # Header values travel as bytes: a non-ASCII Location arrives as its UTF-8 bytes read as latin-1.
    location = trick_url(trick, recorder, zoho_sandbox).encode().decode("latin-1")
    zoho_sandbox.add_fault("redirect", location=location)
    refused = download_outcome(hook, url, job_id)
    assert recorder.authorized() == []
    if trick in HONEST_FOREIGN:
        assert refused is None and len(recorder.received) == 1
    else:
        assert recorder.received == []
        assert isinstance(refused, DisallowedHostError), repr(refused)
        assert "redirect Location" in str(refused) and refused.job_id == job_id


@pytest.mark.parametrize("trick", ["backslash", "userinfo", "encoded-backslash", "tab", "ftp-scheme",
                                   "port-out-of-range", "malformed-ipv6"])
def test_a_hostile_redirect_of_an_api_call_is_refused(monkeypatch, zoho_sandbox, recorder, trick):
    job_id = zoho_sandbox.create_job_from_csv(sample_csv())
    hook = make_hook(monkeypatch, zoho_sandbox)
    hook.get_access_token()
    zoho_sandbox.add_fault("redirect", location=trick_url(trick, recorder, zoho_sandbox), path_prefix="/crm/bulk")
    with pytest.raises(DisallowedHostError) as refused:
        hook.get_bulk_write_job(job_id)
    assert job_id in str(refused.value)
    assert recorder.received == []


@pytest.mark.parametrize(("url", "problem"), [
    ("http://127.0.0.2:8\\@127.0.0.1/x", "backslash"),
    ("http://u@127.0.0.1/x", "user information"),
    ("http://@127.0.0.1/x", "user information"),
    ("http://127.0.0.2:8%2F@127.0.0.1/x", "user information"),
    ("http://127.0.0.1%2F.zoho.com/x", "percent"),
    ("http://127.0.0.1/a\tb", "whitespace or a control character"),
    (" http://127.0.0.1/x", "whitespace or a control character"),
    ("http://127.0.0.1/x\x7f", "whitespace or a control character"),
    ("http://\uff57\uff57\uff57.zohoapis.com/x", "non-ASCII"),  # full-width "www"
    ("https://[::1/x", "host or port"),
    ("https://[::1%25eth0]/x", "host"),
    ("http://127.0.0.1:99999/x", "host or port"),
    ("http://127.0.0.1:0/x", "port 0"),
    ("ftp://www.zohoapis.com/x", "scheme 'ftp'"),
    ("javascript:alert(1)", "scheme 'javascript'"),
    ("www.zohoapis.com/x", "scheme"),
    ("http:/www.zohoapis.com/x", "no host"),
    (12345, "not a URL"),
])
def test_request_target_refuses_ambiguous_urls(url, problem):
    with pytest.raises(DisallowedHostError, match=problem):
        request_target(url)
    assert not resolve_endpoints("us").may_receive_token(url)


def test_request_target_reads_the_host_that_is_connected():
    target = request_target("HTTPS://WWW.ZohoAPIs.com:443/crm/bulk/v8/write/1?x=1#f")
    assert (target.scheme, target.host, target.port) == ("https", "www.zohoapis.com", 443)
    assert request_target("http://[::1]:8080/x").host == "::1"
    # What the backslash trick is really asking for: a path on 127.0.0.2, which is what requests connects to.
    assert request_target("http://127.0.0.2:8/%5C@127.0.0.1/x").host == "127.0.0.2"


# --- Medium: transport failures are retried and typed; malformed bodies are named -------------------------


def api_hook(monkeypatch, sandbox, recorder, **hook_kwargs):
    """A hook whose API domain (and download host) is the recorder; tokens still come from the sandbox."""
    return make_hook(monkeypatch, sandbox, extra={"api_domain": recorder.url}, hook_kwargs=hook_kwargs)


@pytest.mark.parametrize("broken", [
    chunked_cut_short(b'{"status": "COMPLETED", "id": "77", "resou'),
    http_answer(200, b'{"status": "COMPLETED", "id"', declared_length=4000),
    http_answer(200, b"this is not gzip", headers={"Content-Encoding": "gzip"}),
], ids=["chunked-cut", "content-length-cut", "bad-gzip"])
def test_a_job_details_body_broken_in_transit_is_retried(monkeypatch, zoho_sandbox, recorder, broken, caplog):
    recorder.script(broken, broken)
    recorder.default = http_answer(200, json.dumps(job_details()).encode())
    hook = api_hook(monkeypatch, zoho_sandbox, recorder)
    with caplog.at_level(logging.WARNING):
        assert hook.get_bulk_write_job("77")["status"] == "COMPLETED"
    assert len(recorder.received) == 3
    assert caplog.text.count("retry") == 2


def test_a_job_details_body_always_broken_is_a_transient_typed_error(monkeypatch, zoho_sandbox, recorder):
    recorder.default = chunked_cut_short(b'{"status": "COMPL')
    hook = api_hook(monkeypatch, zoho_sandbox, recorder, retry_limit=2)
    with pytest.raises(ZohoConnectionError, match="failed after 3 attempts") as caught:
        hook.get_bulk_write_job("77")
    assert isinstance(caught.value, TRANSIENT_ERRORS) and caught.value.job_id == "77"
    assert len(recorder.received) == 3  # the first attempt and two retries, no more


def test_the_sensor_waits_through_a_body_broken_in_transit(monkeypatch, zoho_sandbox, recorder):
    from airflow_provider_zohobulk.sensors.bulk_write import ZohoBulkWriteJobSensor
    from tests.test_hook import FAST

    recorder.default = chunked_cut_short(b'{"status": "COMPL')
    api_hook(monkeypatch, zoho_sandbox, recorder)
    sensor = ZohoBulkWriteJobSensor(task_id="s", job_id="77", deferrable=False, hook_kwargs={**FAST, "retry_limit": 1})
    assert not sensor.poke({}).is_done
    recorder.default = http_answer(200, json.dumps(job_details()).encode())
    assert sensor.poke({}).is_done


def test_the_sensor_waits_through_a_maintenance_page(monkeypatch, zoho_sandbox, recorder):
    """Zoho's maintenance page is HTML with HTTP 200: a typed, logged failure, then the next poke goes on."""
    from airflow_provider_zohobulk.sensors.bulk_write import ZohoBulkWriteJobSensor
    from tests.test_hook import FAST

    recorder.default = http_answer(200, b"<html><body><h1>Maintenance</h1></body></html>", "text/html")
    api_hook(monkeypatch, zoho_sandbox, recorder)
    sensor = ZohoBulkWriteJobSensor(task_id="s", job_id="77", deferrable=False, hook_kwargs={**FAST, "retry_limit": 1})
    assert not sensor.poke({}).is_done
    recorder.default = http_answer(200, json.dumps(job_details()).encode())
    assert sensor.poke({}).is_done


def test_a_job_id_cannot_walk_to_another_api_path(monkeypatch, zoho_sandbox, recorder):
    recorder.default = http_answer(200, json.dumps(job_details()).encode())
    hook = api_hook(monkeypatch, zoho_sandbox, recorder)
    hook.get_bulk_write_job("../../settings/users")
    assert recorder.received[-1]["path"].endswith("/crm/bulk/v8/write/..%2F..%2Fsettings%2Fusers")


@pytest.mark.parametrize(("answer", "said"), [
    (http_answer(200, b"<html><body><h1>Maintenance</h1></body></html>", "text/html;charset=UTF-8"),
     r"expected a JSON object with the job's details.*got HTML.*Maintenance"),
    (http_answer(204, content_type=None), r"expected a JSON object with the job's details.*empty.*HTTP 204"),
    (http_answer(200, b'{"status": "COMPLETED", "id": '), r"expected a JSON object with the job's details.*not JSON"),
    (http_answer(200, b"[1, 2, 3]"), r"expected a JSON object with the job's details, got a JSON list"),
    (http_answer(200, b'"COMPLETED"'), r"expected a JSON object with the job's details, got a JSON string"),
    (http_answer(200, json.dumps({**job_details(), "resource": [{"status": "COMPLETED", "file": "Leads.csv"}]})
                 .encode()), r"resource\[0\]\.file to be a JSON object.*got a JSON string"),
    (http_answer(200, json.dumps({**job_details(), "resource": {"status": "COMPLETED"}}).encode()),
     r"resource to be a JSON list.*got a JSON object"),
    (http_answer(200, json.dumps({**job_details(), "resource": ["COMPLETED"]}).encode()),
     r"resource\[0\] to be a JSON object"),
    (http_answer(200, json.dumps({**job_details(), "result": {"download_url": 42}}).encode()),
     r"result\.download_url to be a string.*got a JSON number"),
    (http_answer(200, json.dumps({**job_details(), "status": ["COMPLETED"]}).encode()),
     r"status to be a string"),
], ids=["html", "204", "truncated-json", "list", "string", "file-as-string", "resource-object", "resource-string",
        "download-url-number", "status-list"])
def test_a_malformed_job_details_body_is_a_typed_error_naming_what_was_expected(
        monkeypatch, zoho_sandbox, recorder, answer, said):
    recorder.default = answer
    hook = api_hook(monkeypatch, zoho_sandbox, recorder)
    with pytest.raises(ZohoMalformedResponseError, match=said) as caught:
        hook.get_bulk_write_job("77")
    assert isinstance(caught.value, ZohoApiError) and caught.value.job_id == "77"
    assert len(recorder.received) == 1  # a wrong body is not a blip: asking again would get the same


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x", "http://127.0.0.1:99999/x", "https://[::1/x",
                                      "gopher://127.0.0.1:70/x"])
def test_a_redirect_nowhere_is_refused_not_crashed_on(monkeypatch, zoho_sandbox, location):
    job_id = zoho_sandbox.create_job_from_zip(small_zip())
    hook = make_hook(monkeypatch, zoho_sandbox)
    url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
    zoho_sandbox.add_fault("redirect", location=location)
    with pytest.raises(DisallowedHostError, match="redirect"), hook.stream_download(url, job_id=job_id):
        pass


def test_a_download_with_a_bad_gzip_encoding_is_a_download_error(monkeypatch, zoho_sandbox, recorder):
    recorder.default = http_answer(200, b"PK\x03\x04 not really gzip", "application/zip",
                                   {"Content-Encoding": "gzip"})
    hook = make_hook(monkeypatch, zoho_sandbox, extra={"download_hosts": f"http://{RECORDER_HOST}"})
    with pytest.raises(DownloadError, match=r"Content-Encoding 'gzip'") as caught, \
            hook.stream_download(recorder.url + DOWNLOAD_PATH, job_id="77") as download:
        for _ in download:
            pass
    assert caught.value.job_id == "77"


def test_a_download_url_that_is_not_a_string_is_refused(monkeypatch, zoho_sandbox):
    hook = make_hook(monkeypatch, zoho_sandbox)
    with pytest.raises(DisallowedHostError, match="not a URL"), hook.stream_download(None):  # type: ignore[arg-type]
        pass


@pytest.mark.parametrize("url", ["https://[::1/x", "http://a\\b/bulk-write/1/1.zip", 7])
def test_reading_a_job_id_from_a_hostile_url_does_not_crash(url):
    from airflow_provider_zohobulk import bulk_job

    assert bulk_job.job_id_from_download_url(url) is None


def test_every_failure_here_is_a_zoho_bulk_error():
    """The sensor and trigger tell transient from final by these classes; nothing else may escape."""
    assert issubclass(ZohoMalformedResponseError, ZohoBulkError)
    assert issubclass(DisallowedHostError, ZohoBulkError)
    assert ZohoConnectionError in TRANSIENT_ERRORS
    assert issubclass(ZohoMalformedResponseError, TRANSIENT_ERRORS)  # a maintenance page is waited through
