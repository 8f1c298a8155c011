"""The Zoho sandbox: one local HTTP server playing Zoho Accounts, the CRM Bulk Write and Bulk Read APIs and the
download host.

Why an emulator at all: no live Zoho is reachable from where this project is built and tested, and
the behaviours that break real clients (HTTP-200 token errors, the 10-per-10-minutes token throttle,
the 15-live-token eviction, expiring links, bodies cut short or corrupted) are exactly the ones a
real account cannot produce on demand. Everything here follows ``reference/zoho-bulk-api.md``.

Design:

* :class:`ZohoSandbox` is the single owner of state (clients, tokens, uploads, jobs, faults, the
  sandbox clock) and also runs the server; the request handler only parses HTTP and calls into it.
* The sandbox has its own clock (real time plus an offset moved by :meth:`ZohoSandbox.advance_clock`)
  so token expiry, job progress and link expiry can be tested without waiting.
* Every public method is also reachable as ``POST /_sandbox/<method>`` (JSON), which is how
  :class:`~airflow_provider_zohobulk.sandbox.client.SandboxClient` drives a sandbox in another process.
  Admin calls are neither recorded in :meth:`ZohoSandbox.stats` nor subject to faults. They can reset
  state and serve files, and any web page the user opens can send requests to 127.0.0.1, so each must
  be a POST, name the loopback in Host and Origin, and carry this run's admin token in a header (which
  also makes a browser ask a CORS preflight first, one the sandbox never approves).
* Zips given by path are served only from the ``files_dir`` folder named at start (none by default).
* A Bulk Write create is answered at once, as Zoho does; the job's result (per-row statuses, counts,
  the zip) is computed by one background thread, jobs in creation order (a job sees the records an
  earlier job created), and whatever needs it (details, download, state file, :meth:`ZohoSandbox.stop`)
  waits for it. Computing it inside the create (0.5 s of Python per 25,000 rows) made the sandbox, not
  the client, the bottleneck of a submission.
* Bulk Read (generated records, criteria, pages, page tokens, streamed page zips) lives in
  :mod:`~airflow_provider_zohobulk.sandbox.bulk_read`; this module routes its endpoints and keeps its state.
* Standard library only, no Airflow import: tests, benchmarks, the demo and users' CI all start it.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import struct
import tempfile
import threading
import time
import weakref
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from airflow_provider_zohobulk.errors import ZohoConfigurationError
from airflow_provider_zohobulk.sandbox import bulk_read, results

if TYPE_CHECKING:
    from airflow_provider_zohobulk.sandbox.client import SandboxClient

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
SCOPE = "ZohoCRM.bulk.ALL ZohoCRM.modules.ALL ZohoFiles.files.ALL"
THROTTLE_BODY = {
    "error_description": "You have made too many requests continuously. Please try again after some time.",
    "error": "Access Denied",
    "status": "failure",
}
INVALID_TOKEN_BODY = {"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"}
EXPIRED_LINK_BODY = {"info": "Forbidden", "x-info": "Link not valid"}
_DEFAULT_FAULT_BODIES: dict[int, dict[str, Any]] = {
    400: {"code": "INVALID_REQUEST", "details": {}, "message": "invalid request", "status": "error"},
    401: INVALID_TOKEN_BODY,
    404: {"code": "RESOURCE_NOT_FOUND", "details": {}, "message": "the requested resource is not found",
          "status": "error"},
    429: {"code": "TOO_MANY_REQUESTS", "details": {}, "message": "too many requests", "status": "error"},
    500: {"code": "INTERNAL_ERROR", "details": {}, "message": "internal server error", "status": "error"},
}

TOKEN_RESPONSE_STYLES = ("expires_in", "expires_in_sec", "both", "none")
IN_PROGRESS_SPELLINGS = ("IN PROGRESS", "INPROGRESS")
DOWNLOAD_FILENAME_STYLES = ("plain", "rfc5987", "none")

# Which endpoints a fault kind can hit. Faults that change the result file only ever hit downloads (of
# Bulk Write results or Bulk Read pages), so ``add_fault("drop_mid_body")`` followed by "get job details,
# then download" breaks the download; ``path_prefix`` narrows any fault to one API.
_ANY_ENDPOINT = frozenset({"token", "upload", "create", "details", "download", "read_create", "read_details",
                           "read_download"})
_DOWNLOADS = frozenset({"download", "read_download"})
FAULT_ENDPOINTS: dict[str, frozenset[str]] = {
    "status": _ANY_ENDPOINT,
    "reset_connection": _ANY_ENDPOINT,
    "redirect": _ANY_ENDPOINT,
    "drop": _ANY_ENDPOINT,
    "slow_answer": _ANY_ENDPOINT,
    "token_error": frozenset({"token"}),
    "invalid_file_format": frozenset({"upload"}),
    "file_too_large": frozenset({"upload"}),
    "drop_mid_body": _DOWNLOADS,
    "slow_body": _DOWNLOADS,
    "corrupt_zip": _DOWNLOADS,
    "truncate_zip": _DOWNLOADS,
    "expired_link": _DOWNLOADS,
    "error_body": _DOWNLOADS,
    "bulk_read_failed": frozenset({"read_create"}),
}

_WRITE_PATH = re.compile(r"^/crm/bulk/v([2-8])/write/?$")
_JOB_PATH = re.compile(r"^/crm/bulk/v([2-8])/write/([^/]+)/?$")
_UPLOAD_PATH = re.compile(r"^/crm/v([2-8])/upload/?$")
_READ_PATH = re.compile(r"^/crm/bulk/v([2-8])/read/?$")
_READ_JOB_PATH = re.compile(r"^/crm/bulk/v([2-8])/read/([^/]+)/?$")
_READ_RESULT_PATH = re.compile(r"^/crm/bulk/v([2-8])/read/([^/]+)/result/?$")
READ_RESULT_CONTENT_TYPE = "application/zip"
_SIGNATURE_PARAM = "X-Sandbox-Signature"
#: The header every admin call carries this run's admin token in (see :attr:`ZohoSandbox.admin_token`).
ADMIN_TOKEN_HEADER = "X-Sandbox-Admin-Token"
#: The line the CLI prints the token on, and where :class:`SandboxClient` looks for it when not given one.
ADMIN_TOKEN_ENV = "ZOHO_SANDBOX_ADMIN_TOKEN"
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_DOWNLOAD_PATH = re.compile(r"^/v2/crm/([^/]+)/bulk-write/([^/]+)/([^/]+)\.zip$")


@dataclass
class SandboxOptions:
    """Behaviour switches, set at construction or later with :meth:`ZohoSandbox.configure`."""

    job_step_seconds: float = 0.0  # sandbox seconds per step ADDED -> IN PROGRESS -> COMPLETED
    token_limit: int = 10  # mints per refresh token per window before "Access Denied"
    token_window_seconds: float = 600.0
    token_ttl_seconds: float = 3600.0
    max_live_tokens: int = 15  # per refresh token; minting more invalidates the oldest
    token_response_style: str = "expires_in"  # expires_in | expires_in_sec | both | none
    token_error_status: int = 200  # Zoho answers token errors with 200, sometimes 400
    in_progress_spelling: str = "IN PROGRESS"
    download_base_url: str | None = None  # defaults to the sandbox URL
    link_ttl_seconds: float = 7 * 24 * 3600.0
    expired_link_status: int = 400
    upload_limit_bytes: int = 25 * 1024 * 1024
    upload_max_records: int = results.MAX_UPLOAD_RECORDS  # per uploaded CSV, as Zoho
    upload_max_columns: int = results.MAX_UPLOAD_COLUMNS
    org_id: str = "sandbox-org"  # the X-CRM-ORG an upload must name
    seeded_failure_share: float = results.SEEDED_INVALID_SHARE  # 0 makes every result follow from the upload alone
    # Variants of the result a client must tolerate (see the reference):
    result_bom: bool = False  # a UTF-8 BOM before the header
    result_zoho_columns_first: bool = False  # RECORD_ID, STATUS, ERRORS before the mapped columns
    result_status_case: str = "upper"  # upper | lower | title
    download_content_type: str = "application/octet-stream"  # also application/zip, application/x-download
    download_filename_style: str = "plain"  # plain: filename="x.zip" | rfc5987: filename*=UTF-8''x.zip | none
    # Bulk Read:
    bulk_read_per_page: int = bulk_read.DEFAULT_PER_PAGE  # Zoho's 200,000; smaller makes many pages of few rows
    bulk_read_downloads_per_minute: int | None = 10  # per org, sandbox clock; None: no limit
    bulk_read_max_active_jobs: int | None = 10  # read jobs not yet COMPLETED/FAILED; None: no limit
    bulk_read_quote_all: bool = False  # quote every CSV value, not only those that need it

    def validate(self) -> None:
        if self.token_response_style not in TOKEN_RESPONSE_STYLES:
            raise ZohoConfigurationError(
                f"sandbox token_response_style must be one of {TOKEN_RESPONSE_STYLES}, "
                f"not {self.token_response_style!r}")
        if self.in_progress_spelling not in IN_PROGRESS_SPELLINGS:
            raise ZohoConfigurationError(
                f"sandbox in_progress_spelling must be one of {IN_PROGRESS_SPELLINGS}, "
                f"not {self.in_progress_spelling!r}")
        if self.result_status_case not in results.STATUS_CASES:
            raise ZohoConfigurationError(
                f"sandbox result_status_case must be one of {results.STATUS_CASES}, not {self.result_status_case!r}")
        if self.download_filename_style not in DOWNLOAD_FILENAME_STYLES:
            raise ZohoConfigurationError(
                f"sandbox download_filename_style must be one of {DOWNLOAD_FILENAME_STYLES}, "
                f"not {self.download_filename_style!r}")
        if not 0.0 <= self.seeded_failure_share <= 1.0:
            raise ZohoConfigurationError(
                f"sandbox seeded_failure_share must be between 0 and 1, not {self.seeded_failure_share!r}")
        if not _positive_int(self.bulk_read_per_page):
            raise ZohoConfigurationError(
                f"sandbox bulk_read_per_page must be a positive integer, not {self.bulk_read_per_page!r}")
        for name in ("upload_max_records", "upload_max_columns", "upload_limit_bytes"):
            if not _positive_int(getattr(self, name)):
                raise ZohoConfigurationError(f"sandbox {name} must be a positive integer, not {getattr(self, name)!r}")
        for name in ("bulk_read_downloads_per_minute", "bulk_read_max_active_jobs"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ZohoConfigurationError(f"sandbox {name} must be a positive integer or None, not {value!r}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class _Fault:
    kind: str
    count: int
    path_prefix: str | None
    params: dict[str, Any]


@dataclass
class _Resource:
    module: str
    module_as_string: bool  # v2 sends the module as a plain string; details echo what was sent
    file_name: str
    field_mappings: list[dict[str, Any]]
    find_by: str | None
    counts: dict[str, int] | None
    file_id: str | None = None  # the upload it was created from (None: served with create_job_from_zip)


@dataclass
class _Upload:
    """An accepted upload: its zip lives on disk (``path``), so many uploads cost no memory."""

    file_id: str
    path: str
    file_name: str | None  # the multipart part's filename, as the client sent it
    csv_name: str
    records: int
    columns: int
    size: int
    created_at: float  # sandbox clock
    header: list[str] | None = None  # kept so a create checks its field mappings without reading the zip again

    def describe(self) -> dict[str, Any]:
        return {"file_id": self.file_id, "file_name": self.file_name, "csv_name": self.csv_name,
                "records": self.records, "columns": self.columns, "size": self.size,
                "created_time": _iso(self.created_at)}


@dataclass
class _ResultTask:
    """A created job whose result the background thread still has to compute (see ``_compute_results``)."""

    job: _Job
    plans: list[tuple[_Resource, str, list[int], list[str]]]  # resource, upload path, mapped indexes, API names
    records: dict[tuple[str, str, str], str]  # the records dict of the sandbox's state the job was created in
    seeded_failure_share: float
    layout: results.ResultLayout
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Job:
    job_id: str
    operation: str
    created_at: float  # sandbox clock
    step_seconds: float
    resources: list[_Resource]
    fixed_status: str | None = None  # jobs handed in with create_job_from_zip do not progress
    result_bytes: bytes | None = None
    result_path: str | None = None
    character_encoding: str = "UTF-8"
    ignore_empty: bool = False
    callback: dict[str, Any] | None = None
    created_by: dict[str, str] = field(default_factory=dict)

    def status_at(self, now: float) -> str:
        """ADDED, then IN PROGRESS, then COMPLETED, one step every ``step_seconds`` of sandbox time."""
        if self.fixed_status:
            return self.fixed_status
        if self.step_seconds <= 0:
            return "COMPLETED"
        elapsed = now - self.created_at
        if elapsed < self.step_seconds:
            return "ADDED"
        return "IN PROGRESS" if elapsed < 2 * self.step_seconds else "COMPLETED"

    def completed_at(self) -> float:
        return self.created_at + (0 if self.fixed_status else 2 * max(self.step_seconds, 0))


class ZohoSandbox:
    """A local Zoho (accounts + CRM Bulk Write + downloads) with faults on demand.

    Use as a context manager or with :meth:`start`/:meth:`stop`; :meth:`attach` gives a client for a
    sandbox already running in another process.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_id: str = "sandbox-client-id",
        client_secret: str = "sandbox-client-secret",
        refresh_token: str = "sandbox-refresh-token",
        job_step_seconds: float = 0.0,
        token_limit: int = 10,
        token_window_seconds: float = 600,
        state_file: str | os.PathLike[str] | None = None,
        files_dir: str | os.PathLike[str] | None = None,
        admin_token: str | None = None,
        **options: Any,
    ) -> None:
        """``files_dir``: the only folder :meth:`create_job_from_zip` serves paths from (None: no paths,
        only bytes). ``admin_token``: the secret admin calls must send in ``X-Sandbox-Admin-Token``;
        random per run unless a test chooses one."""
        if host not in _LOOPBACK_NAMES:
            raise ZohoConfigurationError(f"the sandbox binds loopback addresses only, not {host!r}")
        if admin_token is not None and not admin_token:
            raise ZohoConfigurationError("the sandbox admin_token must be a non-empty string, or None for a random one")
        #: Admin calls over HTTP must carry it (``ADMIN_TOKEN_HEADER``); the CLI prints it at start.
        self.admin_token = admin_token or secrets.token_urlsafe(32)
        self.files_dir: str | None = None
        if files_dir is not None:
            self.files_dir = os.path.realpath(files_dir)
            if not os.path.isdir(self.files_dir):
                raise ZohoConfigurationError(f"the sandbox files_dir {os.fspath(files_dir)} is not a folder")
        self._host = host
        self._requested_port = port
        #: Signs the pre-signed download links of ``redirect`` faults (valid while this sandbox runs).
        self._link_key = secrets.token_bytes(16)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._state_file: Path | None = None  # set after start-up, so setting up never overwrites a saved state
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.options = SandboxOptions(job_step_seconds=job_step_seconds, token_limit=token_limit,
                                      token_window_seconds=token_window_seconds)
        self._clients: dict[str, str] = {}
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> client id
        self._revoked: set[str] = set()
        self._access_tokens: dict[str, tuple[str, float]] = {}  # token -> (refresh token, expires at)
        self._live: dict[str, list[str]] = {}  # refresh token -> its live access tokens, oldest first
        self._clock_offset = 0.0
        #: Uploaded zips are kept here, not in memory; removed when the sandbox is garbage-collected.
        self._upload_dir = tempfile.mkdtemp(prefix="zoho-sandbox-uploads-")
        self._upload_dir_cleanup = weakref.finalize(self, shutil.rmtree, self._upload_dir, True)
        self._uploads: dict[str, _Upload] = {}
        # Bulk Write results still being computed (job id -> task) and the queue of the one thread computing
        # them; the thread runs only while the queue holds work, so an idle sandbox holds no thread.
        self._pending_results: dict[str, _ResultTask] = {}
        self._result_queue: collections.deque[_ResultTask] = collections.deque()
        self._result_worker: threading.Thread | None = None
        self._queue_lock = threading.Lock()  # guards the queue and the worker; never held while waiting
        self._reset_volatile()
        self.add_client(client_id, client_secret, refresh_token)
        if options:
            self.configure(**options)
        self.options.validate()
        if state_file:
            self._state_file = Path(state_file)
            if self._state_file.exists():
                self._load_state()
            self._save_state()

    def _reset_volatile(self) -> None:
        for upload in self._uploads.values():
            with contextlib.suppress(OSError):
                os.remove(upload.path)
        self._uploads = {}
        self._write_jobs_created = 0
        self._jobs: dict[str, _Job] = {}
        # A new dict, not cleared: results still being computed for forgotten jobs write into the old one.
        self._records: dict[tuple[str, str, str], str] = {}
        self._pending_results = {}
        self._faults: list[_Fault] = []
        self._requests: list[dict[str, Any]] = []
        self._tokens_minted = 0
        self._tokens_minted_by_client: collections.Counter[str] = collections.Counter()
        self._bulk_in_flight = 0
        self._max_bulk_in_flight = 0
        self._throttle: dict[str, tuple[float, int]] = {}  # refresh token -> (window start, mints)
        self._clock_offset = 0.0
        self._datasets = bulk_read.default_datasets()
        self._read_jobs: dict[str, bulk_read.ReadJob] = {}
        self._page_tokens: dict[str, bulk_read.PageCursor] = {}
        self._read_download_times: list[float] = []  # sandbox clock, the last minute's downloads only
        self._read_downloads_total = 0

    # --- lifecycle ----------------------------------------------------------------------------------

    @classmethod
    def attach(cls, url: str, admin_token: str | None = None) -> SandboxClient:
        """A client for a sandbox running elsewhere (``python -m airflow_provider_zohobulk.sandbox``).

        ``admin_token`` is the ``ZOHO_SANDBOX_ADMIN_TOKEN=...`` that sandbox printed at start; without
        it the client reads the ``ZOHO_SANDBOX_ADMIN_TOKEN`` environment variable.
        """
        from airflow_provider_zohobulk.sandbox.client import SandboxClient

        return SandboxClient(url, admin_token=admin_token)

    def client(self) -> SandboxClient:
        """A client driving this sandbox over HTTP, as another process would, holding its admin token."""
        return self.attach(self.url, admin_token=self.admin_token)

    def start(self) -> ZohoSandbox:
        if self._server is not None:
            return self
        server_class = _IPv6HTTPServer if ":" in self._host else ThreadingHTTPServer
        server = server_class((self._host, self._requested_port), _Handler)
        server.daemon_threads = True
        server.sandbox = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="zoho-sandbox", daemon=True)
        self._thread.start()
        log.info("Zoho sandbox listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving; jobs created before it have their results computed when it returns."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        self.wait_for_results()

    def serve_forever(self) -> None:
        """Block until :meth:`stop` is called from another thread or a signal handler."""
        self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> ZohoSandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise ZohoConfigurationError("the sandbox is not started: call start() or use it as a context manager")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def now(self) -> float:
        """The sandbox clock: real time plus whatever :meth:`advance_clock` added."""
        return time.time() + self._clock_offset

    # --- connection helpers -------------------------------------------------------------------------

    def connection_extra(self) -> dict[str, Any]:
        return {"refresh_token": self.refresh_token, "data_center": "us", "accounts_url": self.url,
                "api_domain": self.url, "org_id": self.options.org_id}

    def airflow_connection(self, conn_type: str = "zoho_crm") -> dict[str, Any]:
        """The Airflow connection (JSON form) that points the provider at this sandbox."""
        return {"conn_type": conn_type, "login": self.client_id, "password": self.client_secret,
                "extra": self.connection_extra()}

    def airflow_connection_env(self, conn_id: str = "zoho_crm_default") -> dict[str, str]:
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(self.airflow_connection())}

    # --- admin API (also served under /_sandbox/<name>) -----------------------------------------------

    def info(self) -> dict[str, Any]:
        return {"url": self.url, "port": self.port, "files_dir": self.files_dir, "options": asdict(self.options)}

    def configure(self, **options: Any) -> dict[str, Any]:
        """Change behaviour switches (see :class:`SandboxOptions`); returns all current values."""
        known = {f.name for f in fields(SandboxOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ZohoConfigurationError(f"unknown sandbox option(s) {unknown}; known: {sorted(known)}")
        with self._lock:
            candidate = SandboxOptions(**{**asdict(self.options), **options})
            candidate.validate()
            self.options = candidate
            self._save_state()
            return asdict(candidate)

    def add_client(self, client_id: str, client_secret: str, refresh_token: str) -> None:
        """Register a client (or one more refresh token for a known client)."""
        with self._lock:
            self._clients[client_id] = client_secret
            self._refresh_tokens[refresh_token] = client_id
            self._revoked.discard(refresh_token)
            self._save_state()

    def revoke_refresh_token(self, token: str) -> None:
        """Revoke a refresh token and every access token minted from it (``invalid_code`` from now on)."""
        with self._lock:
            self._revoked.add(token)
            for access in self._live.pop(token, []):
                self._access_tokens.pop(access, None)
            self._save_state()

    def _link_signature(self, path: str) -> str:
        return hmac.new(self._link_key, path.encode(), hashlib.sha256).hexdigest()

    def advance_clock(self, seconds: float) -> float:
        """Move the sandbox clock forward; returns the new sandbox time (epoch seconds)."""
        with self._lock:
            self._clock_offset += float(seconds)
            self._save_state()
            return self.now()

    def add_fault(self, kind: str, *, count: int = 1, path_prefix: str | None = None, **params: Any) -> None:
        """Make the next ``count`` matching requests misbehave; each firing consumes one.

        ``path_prefix`` limits the fault to paths starting with it; ``after=N`` lets the first N matching
        requests through (the third upload fails, not the first). Kinds and their params:
        ``status`` (``status``, optional ``body`` or ``code``/``message``, ``retry_after`` -> header),
        ``reset_connection``, ``redirect`` (``location``, ``status`` 302; ``presigned=True`` signs the
        location, as a CDN's pre-signed link: a signed download is served without a token) on any endpoint;
        ``drop`` (``fraction`` 0.5 of the request body is read, then the connection is closed without an
        answer; ``after_processing=True`` instead does the work, an upload stored or a job created, and then
        closes: the answer is lost) on any endpoint; ``slow_answer`` (``delay`` 1.0 s before the request is
        handled: a slow token endpoint lets minters on several machines overlap) on any endpoint;
        ``invalid_file_format`` (400) and ``file_too_large`` (413) on uploads; ``token_error`` (``error``,
        ``status``) on the token endpoint; and on downloads only: ``drop_mid_body`` (``fraction`` 0.5),
        ``slow_body`` (``delay`` s, ``chunk_size``), ``corrupt_zip``, ``truncate_zip`` (``percent`` 50),
        ``expired_link``, ``error_body`` (``content_type`` text/html, ``body``, ``status`` 200). Downloads are Bulk
        Write results and Bulk Read pages alike; a Bulk Read page is generated as it is sent, so there
        ``truncate_zip`` and ``drop_mid_body`` cut it after that share of its *rows* (a clean end of the HTTP body,
        or none). ``bulk_read_failed`` (``code``, ``message``, ``details``) hits the next Bulk Read create: the job
        is created and ends FAILED where it would have completed.
        """
        if kind not in FAULT_ENDPOINTS:
            raise ZohoConfigurationError(f"unknown sandbox fault {kind!r}; known: {sorted(FAULT_ENDPOINTS)}")
        if kind == "redirect" and not params.get("location"):
            raise ZohoConfigurationError("the redirect fault needs a location")
        if kind == "status" and not isinstance(params.get("status"), int):
            raise ZohoConfigurationError("the status fault needs an integer status")
        with self._lock:
            self._faults.append(_Fault(kind, max(int(count), 1), path_prefix, dict(params)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "tokens_minted": self._tokens_minted,
                # Per client id: a deployment's connections each share one token, so each is counted alone.
                "tokens_minted_by_client": dict(self._tokens_minted_by_client),
                # The most Bulk API calls (uploads, creates, details, downloads) served at once since the last
                # reset: Zoho allows about 10 per org, and a pool in Airflow is what keeps a deployment below it.
                "max_bulk_calls_in_flight": self._max_bulk_in_flight,
                "live_tokens": sum(len(v) for v in self._live.values()),
                "requests": [dict(r) for r in self._requests],
                "jobs": len(self._jobs),
                "uploads": len(self._uploads),
                "write_jobs_created": self._write_jobs_created,
                "pending_faults": [{"kind": f.kind, "count": f.count} for f in self._faults],
                "read_jobs": len(self._read_jobs),
                "read_downloads": self._read_downloads_total,
            }

    def reset(self) -> None:
        """Forget jobs (both kinds), uploads, page tokens, faults, stats, throttling and clock offset, and
        put the Bulk Read modules back to their default records; keep clients and live tokens.

        Live tokens survive on purpose: other processes may have cached them, as they would against Zoho.
        """
        with self._lock:
            self._reset_volatile()
            self._save_state()

    def wait_for_results(self, job_ids: list[str] | None = None) -> None:
        """Block until the Bulk Write results of ``job_ids`` (default: every job created so far) are computed.

        Job details, downloads, the state file and :meth:`stop` wait by themselves; this is for callers
        that time job creation and want the sandbox's background work finished before the next case.
        Safe with the sandbox's lock held (``_save_state`` does so): the computing thread never takes it.
        """
        with self._lock:
            pending = list(self._pending_results.values()) if job_ids is None else [
                task for job_id in job_ids if (task := self._pending_results.get(job_id)) is not None]
        if pending:
            self._start_results()
        for task in pending:
            task.done.wait()

    def _wait_for_result(self, job_id: str) -> None:
        """Wait for one job's result if it is still being computed (call without holding the lock)."""
        task = self._pending_results.get(job_id)
        if task is not None:
            self._start_results()
            task.done.wait()

    def uploaded_files(self) -> list[dict[str, Any]]:
        """Every accepted upload since the last reset, oldest first: file id, the name the client sent,
        the CSV inside, its records and columns, its size. Lets a test see *which* files a task uploaded
        (a resumed submission uploading only the third file, say)."""
        with self._lock:
            return [upload.describe() for upload in self._uploads.values()]

    def write_jobs(self) -> list[dict[str, Any]]:
        """Every Bulk Write job created from uploads since the last reset, oldest first: job id, operation,
        and per resource the module, file id, find_by and mapped fields."""
        with self._lock:
            return [{"job_id": job.job_id, "operation": job.operation, "created_time": _iso(job.created_at),
                     "resources": [{"module": r.module, "file_id": r.file_id, "file_name": r.file_name,
                                    "find_by": r.find_by, "fields": [m["api_name"] for m in r.field_mappings]}
                                   for r in job.resources]}
                    for job in self._jobs.values() if any(r.file_id for r in job.resources)]

    # --- jobs ------------------------------------------------------------------------------------------

    def upload_file(self, zip_bytes: bytes, *, file_name: str | None = None) -> str:
        """Store an uploaded zip, validated as Zoho does (a zip holding a readable CSV, at most
        ``upload_max_records`` records and ``upload_max_columns`` columns, no empty or repeated header);
        returns its file id. Refusals raise :class:`ZohoConfigurationError` (a
        :class:`~.results.UploadRefusedError` with Zoho's code for the CSV's shape)."""
        upload = results.read_uploaded_zip(zip_bytes)
        results.check_upload_shape(upload, max_records=self.options.upload_max_records,
                                   max_columns=self.options.upload_max_columns)
        with self._lock:
            file_id = self._new_id()
            path = os.path.join(self._upload_dir, f"{file_id}.zip")
            with open(path, "wb") as f:
                f.write(zip_bytes)
            self._uploads[file_id] = _Upload(file_id, path, file_name, upload.name, len(upload.rows),
                                             len(upload.header), len(zip_bytes), self.now(), list(upload.header))
            self._save_state()
            return file_id

    def create_job(self, request: dict[str, Any]) -> str:
        """Create a Bulk Write job from the JSON body Zoho takes; :class:`ZohoConfigurationError` if invalid.

        The body, the file ids and the field mappings are checked now (a bad one raises, a 400 over HTTP);
        the result (per-row statuses, counts, the zip) is computed by the background thread when first
        needed, in creation order, and whatever shows it waits for it. The job merely *reports* progress as sandbox
        time passes; its counts always match the file.
        """
        with self._lock:  # one hold: a reset in between would take the uploads away; all of this is cheap
            operation, resources_in = _validate_job_request(request, self._uploads)
            plans: list[tuple[_Resource, str, list[int], list[str]]] = []
            resources: list[_Resource] = []
            for resource in resources_in:
                stored = self._uploads[str(resource["file_id"])]
                module_field = resource["module"]
                module = module_field if isinstance(module_field, str) else module_field["api_name"]
                if stored.header is None:  # an upload restored from an older state file: read its header once
                    parsed = results.read_uploaded_zip(stored.path)
                    stored.csv_name, stored.header = parsed.name, parsed.header
                shape = results.UploadedCsv(stored.csv_name, stored.header, [])
                indexes, api_names = results.resolve_mappings(shape, resource.get("field_mappings"))
                mappings = [{"api_name": name, "index": index, "format": None, "find_by": None, "module": None,
                             "default_value": None} for index, name in zip(indexes, api_names, strict=True)]
                entry = _Resource(module, isinstance(module_field, str), stored.csv_name, mappings,
                                  resource.get("find_by"), None, str(resource["file_id"]))
                resources.append(entry)
                plans.append((entry, stored.path, indexes, api_names))
            callback = request.get("callback") if isinstance(request.get("callback"), dict) else None
            job_id = self._new_id()
            job = _Job(job_id, operation, self.now(), self.options.job_step_seconds, resources,
                       character_encoding=str(request.get("character_encoding") or "UTF-8"),
                       ignore_empty=bool(request.get("ignore_empty", False)), callback=callback,
                       created_by=self._creator())
            task = _ResultTask(job, plans, self._records, self.options.seeded_failure_share,
                               results.ResultLayout(self.options.result_bom, self.options.result_zoho_columns_first,
                                                    self.options.result_status_case))
            self._jobs[job_id] = job
            self._pending_results[job_id] = task
            self._write_jobs_created += 1
            self._enqueue_result(task)
            self._save_state()  # with a state file, waits for the result: the file must hold it
            return job_id

    def _enqueue_result(self, task: _ResultTask) -> None:
        """Queue a job's result; it is computed when something first needs one (see :meth:`_start_results`)."""
        with self._queue_lock:
            self._result_queue.append(task)

    def _start_results(self) -> None:
        """Compute every queued result, in creation order, on the background thread.

        Results are built when first needed (job details, a download, the state file, stop), not as the
        jobs are created: Zoho processes a job on its own machines, and the sandbox building 25,000 rows
        in Python while the client's next upload arrives would charge Zoho's work to the client (the
        submission benchmark measured it). A later job still waits for the earlier ones, so an upsert
        finds the records an earlier insert created, as before.
        """
        with self._queue_lock:
            if self._result_queue and self._result_worker is None:
                self._result_worker = threading.Thread(target=self._compute_results, name="zoho-sandbox-results",
                                                       daemon=True)
                self._result_worker.start()

    def _compute_results(self) -> None:
        """The background thread: compute queued results in creation order, exit when the queue is empty.

        It never takes the sandbox's lock (waiters may hold it), and writes only into the task's job and
        records dict: a reset meanwhile gives the sandbox new ones, so a forgotten job cannot leak records
        into the state that follows.
        """
        while True:
            with self._queue_lock:
                if not self._result_queue:
                    self._result_worker = None
                    return
                task = self._result_queue.popleft()
            try:
                if task.records is self._records:  # else the job was forgotten by a reset: nothing to compute
                    self._compute_result(task)
            except Exception:  # the upload was checked when it arrived; a failure here is the sandbox's bug
                task.job.fixed_status = "FAILED"
                if task.records is self._records:  # a job forgotten by a reset meanwhile lost its upload: no news
                    log.exception("sandbox: computing the result of Bulk Write job %s failed; the job is FAILED",
                                  task.job.job_id)
            finally:
                self._pending_results.pop(task.job.job_id, None)
                task.done.set()

    def _compute_result(self, task: _ResultTask) -> None:
        job = task.job
        records = task.records

        def find_record(module: str, api_name: str, value: str) -> str | None:
            return records.get((module, api_name, value.lower()))

        def remember_record(module: str, api_name: str, value: str, record_id: str) -> None:
            records.setdefault((module, api_name, value.lower()), record_id)

        members: list[tuple[str, bytes]] = []
        counts: list[dict[str, int]] = []
        for resource, path, indexes, api_names in task.plans:
            upload = results.read_uploaded_zip(path)
            plan = results.ResultPlan(resource.module, job.operation, upload, indexes, api_names, resource.find_by)
            built = results.build_result(plan, job.job_id, new_record_id=self._new_id, find_record=find_record,
                                         remember_record=remember_record,
                                         seeded_failure_share=task.seeded_failure_share, layout=task.layout)
            members.append((built.member_name, built.csv_bytes))
            counts.append(built.counts)
        job.result_bytes = results.zip_members(members)
        for resource, resource_counts in zip(job.resources, counts, strict=True):
            resource.counts = resource_counts

    def create_job_from_csv(
        self,
        csv_bytes: bytes,
        *,
        module: str = "Leads",
        file_name: str = "Leads.csv",
        operation: str = "insert",
        find_by: str | None = None,
        field_mappings: list[dict[str, Any]] | None = None,
    ) -> str:
        """Upload ``csv_bytes`` zipped and create a job for it: the HTTP path's logic, minus the HTTP."""
        file_id = self.upload_file(results.zip_members([(file_name, csv_bytes)]), file_name=f"{file_name}.zip")
        resource: dict[str, Any] = {"type": "data", "module": {"api_name": module}, "file_id": file_id}
        if find_by:
            resource["find_by"] = find_by
        if field_mappings:
            resource["field_mappings"] = field_mappings
        return self.create_job({"operation": operation, "resource": [resource]})

    def create_job_from_zip(
        self,
        zip_bytes_or_path: bytes | str | os.PathLike[str],
        *,
        status: str = "COMPLETED",
        counts: dict[str, int] | None = None,
        module: str = "Leads",
    ) -> str:
        """Serve a zip (bytes, or a path under ``files_dir`` streamed from disk) as the result of a job
        with ``status``.

        A path may be relative to ``files_dir``; one that leaves it (``..``, a symbolic link pointing
        out, an absolute path elsewhere) is refused, because admin calls come over HTTP and the sandbox
        must not hand out the machine's other files. The job reports ``counts`` as its file counts
        (none when not given: the sandbox does not read the zip, so a 400 MB benchmark archive costs
        nothing here). It does not progress with time.
        """
        path: str | None = None
        data: bytes | None = None
        if isinstance(zip_bytes_or_path, bytes | bytearray | memoryview):
            data = bytes(zip_bytes_or_path)
        else:
            path = self._served_path(zip_bytes_or_path)
        file_name = Path(path).name if path else "result.zip"
        with self._lock:
            job_id = self._new_id()
            mappings: list[dict[str, Any]] = []
            self._jobs[job_id] = _Job(
                job_id, "insert", self.now(), 0.0,
                [_Resource(module, False, file_name, mappings, None, dict(counts) if counts else None)],
                fixed_status=status.upper(), result_bytes=data, result_path=path, created_by=self._creator())
            self._save_state()
            return job_id

    def job_details(self, job_id: str) -> dict[str, Any] | None:
        """Exactly what ``GET /crm/bulk/v8/write/<job_id>`` answers, or None for an unknown job."""
        self._wait_for_result(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            now = self.now()
            status = job.status_at(now)
            shown_status = self.options.in_progress_spelling if status == "IN PROGRESS" else status
            resources = []
            for resource in job.resources:
                module: Any = resource.module if resource.module_as_string else {
                    "id": _module_id(resource.module), "api_name": resource.module}
                file: dict[str, Any] = {"status": shown_status, "name": resource.file_name}
                if status == "COMPLETED" and resource.counts is not None:
                    file.update(resource.counts)
                entry: dict[str, Any] = {"status": shown_status, "code": shown_status, "type": "data",
                                         "module": module, "field_mappings": resource.field_mappings,
                                         "file": file}
                if resource.find_by:
                    entry["find_by"] = resource.find_by
                if status == "FAILED":
                    entry["code"] = "INVALID_DATA"
                    entry["message"] = "the sandbox was told this job failed"
                resources.append(entry)
            details: dict[str, Any] = {
                "status": shown_status,
                "character_encoding": job.character_encoding,
                "id": job.job_id,
                "operation": job.operation,
                "ignore_empty": job.ignore_empty,
                "created_time": _iso(job.created_at),
                "created_by": job.created_by,
                "resource": resources,
            }
            if job.callback:
                details["callback"] = job.callback
            if status == "COMPLETED":
                base = (self.options.download_base_url or self.url).rstrip("/")
                details["result"] = {
                    "download_url": f"{base}/v2/crm/{self.options.org_id}/bulk-write/{job_id}/{job_id}.zip"}
            return details

    def _served_path(self, requested: str | os.PathLike[str]) -> str:
        """The real path of a zip under ``files_dir``; :class:`ZohoConfigurationError` naming both if not."""
        shown = os.fspath(requested)
        if self.files_dir is None:
            raise ZohoConfigurationError(
                f"create_job_from_zip: the sandbox serves no files from disk, so not {shown}: start it with "
                "files_dir=... (--files-dir) naming the folder that holds the zips, or pass the zip's bytes")
        real = os.path.realpath(os.path.join(self.files_dir, shown))
        if os.path.commonpath([real, self.files_dir]) != self.files_dir:
            raise ZohoConfigurationError(
                f"create_job_from_zip: {shown} is outside the sandbox's files_dir {self.files_dir} "
                f"(it resolves to {real})")
        if not os.path.isfile(real):
            raise ZohoConfigurationError(f"create_job_from_zip: no file at {shown} (in files_dir {self.files_dir})")
        return real

    # --- Bulk Read (admin API; the generation, criteria and pages are in bulk_read.py) -----------------

    def seed_module(self, module: str, records: int, *, seed: int = 0, modified_from: str | None = None,
                    modified_to: str | None = None) -> dict[str, Any]:
        """Make ``module`` (Leads, Contacts or Deals) hold ``records`` generated records of ``seed``, their
        Modified_Time spread over [``modified_from``, ``modified_to``) (ISO 8601 with an offset; default
        2025-07-01 to 2026-07-01 UTC). Returns :meth:`read_modules`' entry for it.

        Nothing is stored: a record is a function of (module, seed, index), so 10,000,000 cost nothing
        until they are read. Jobs created earlier, and their page tokens, keep the records they started with.
        """
        dataset = bulk_read.Dataset.create(module, records, seed, modified_from, modified_to)
        with self._lock:
            self._datasets[module] = dataset
            self._save_state()
        return dataset.describe()

    def read_modules(self) -> dict[str, dict[str, Any]]:
        """Each generated module: records, seed, Modified_Time range, fields in export order, first/last Id."""
        with self._lock:
            return {module: dataset.describe() for module, dataset in self._datasets.items()}

    def read_records(self, module: str, criteria: dict[str, Any] | None = None, fields: list[str] | None = None,
                     offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        """What an export of ``module`` with ``criteria`` holds, without a job: ``{"fields", "records"
        (offset/limit over the matches, Id order, values as the CSV has them), "matching"}``.

        The criteria and fields are checked as a create-job body's are (a bad one raises the same error).
        """
        if not 0 <= limit <= 100_000 or offset < 0:
            raise ZohoConfigurationError(f"read_records takes offset >= 0 and limit 0..100000, not {offset}, {limit}")
        with self._lock:
            dataset = self._datasets.get(module)
        if dataset is None:
            raise ZohoConfigurationError(f"the sandbox generates records for {list(bulk_read.MODULES)} only, "
                                         f"not {module!r}")
        return bulk_read.select_records(dataset, criteria, fields, offset, limit)

    def create_read_job(self, request: dict[str, Any]) -> str:
        """Create a Bulk Read job from the JSON body Zoho takes (``{"query": {...}, "callback": ...}``),
        exactly as ``POST /crm/bulk/v8/read`` does, minus the HTTP; returns the job id."""
        return self._add_read_job(request).job_id

    def read_jobs(self) -> list[dict[str, Any]]:
        """Every Bulk Read job created, oldest first: module, state now, page, count, more_records, fields,
        criteria, the page token it was created with, the one it gives, and how many times it was downloaded."""
        with self._lock:
            now = self.now()
            return [job.summary(now) for job in self._read_jobs.values()]

    def read_job_details(self, job_id: str) -> dict[str, Any] | None:
        """Exactly what ``GET /crm/bulk/v8/read/<job_id>`` answers, or None for an unknown job."""
        with self._lock:
            job = self._read_jobs.get(job_id)
            if job is None:
                return None
            return {"data": [job.details(self.now(), module_id=_module_id(job.dataset.module),
                                         in_progress_spelling=self.options.in_progress_spelling)]}

    def _add_read_job(self, request: Any, *, api_version: str = "8",
                      failure: dict[str, Any] | None = None) -> bulk_read.ReadJob:
        """Check the request, plan its page (outside the lock: criteria over millions of records take
        seconds) and store the job; :class:`bulk_read.ReadRequestError` carries Zoho's answer if refused."""
        query = bulk_read.parse_read_request(request)
        with self._lock:
            cursor = self._page_cursor(query) if query.page_token is not None else None
            dataset = cursor.dataset if cursor else self._datasets[query.module]
            per_page = self.options.bulk_read_per_page
            self._check_read_concurrency()
        predicate = (bulk_read.compile_criteria(query.module, query.criteria, dataset)
                     if query.criteria is not None else None)
        plan = bulk_read.plan_page(dataset, predicate, per_page,
                                   page=cursor.next_page if cursor else (query.page or 1),
                                   start_index=cursor.next_index if cursor else None)
        with self._lock:
            self._check_read_concurrency()
            job = bulk_read.ReadJob(
                self._new_id(), api_version, self.now(), self.options.job_step_seconds, dataset, query.fields,
                query.fields_given, query.criteria, per_page, plan, query.file_type, query.callback, self._creator(),
                page_token=query.page_token, failure=failure)
            if plan.more_records and failure is None:
                job.next_page_token = secrets.token_hex(40)
                self._page_tokens[job.next_page_token] = bulk_read.PageCursor(
                    dataset, query.criteria_key, plan.end_index, plan.page + 1, job.finished_at())
            self._read_jobs[job.job_id] = job
            self._save_state()
            return job

    def _page_cursor(self, query: bulk_read.ReadQuery) -> bulk_read.PageCursor:
        """The cursor behind ``query.page_token``, if it is known, fresh and this query's (caller holds the lock)."""
        where = {"api_name": "page_token", "json_path": "$.query.page_token"}
        cursor = self._page_tokens.get(query.page_token or "")
        if cursor is None:
            raise bulk_read.ReadRequestError("INVALID_DATA", "the page_token is invalid", **where)
        if self.now() > cursor.issued_at + bulk_read.PAGE_TOKEN_TTL_SECONDS:
            raise bulk_read.ReadRequestError(
                "INVALID_DATA", "the page_token has expired: page tokens are valid for 24 hours", **where)
        if cursor.dataset.module != query.module or cursor.criteria_key != query.criteria_key:
            raise bulk_read.ReadRequestError(
                "INVALID_DATA", f"the page_token belongs to another query (on {cursor.dataset.module}): send it with "
                "the module and criteria of the job that gave it", **where)
        return cursor

    def _check_read_concurrency(self) -> None:
        """Zoho runs about 10 bulk jobs per org at a time; one more is refused with 429 (caller holds the lock).

        The code and body of Zoho's refusal are unconfirmed: the sandbox answers ``TOO_MANY_REQUESTS`` with
        the limit in ``details`` and a ``Retry-After`` until the first running job finishes.
        """
        limit = self.options.bulk_read_max_active_jobs
        if limit is None:
            return
        now = self.now()
        running = [job.finished_at() for job in self._read_jobs.values()
                   if job.state_at(now) not in ("COMPLETED", "FAILED")]
        if len(running) >= limit:
            raise bulk_read.ReadRequestError(
                "TOO_MANY_REQUESTS", f"too many bulk read jobs in progress: at most {limit} per org at a time",
                status=429, retry_after=max(1, math.ceil(min(running) - now)), limit=limit)

    def _read_job_for_download(self, job_id: str) -> tuple[bulk_read.ReadJob | None, str | None]:
        with self._lock:
            job = self._read_jobs.get(job_id)
            return job, job.state_at(self.now()) if job else None

    def _claim_read_download(self, job: bulk_read.ReadJob) -> int | None:
        """Count one download against the per-minute limit; the seconds to wait if over it, else None."""
        with self._lock:
            now = self.now()
            self._read_download_times = [t for t in self._read_download_times if t > now - 60]
            limit = self.options.bulk_read_downloads_per_minute
            if limit is not None and len(self._read_download_times) >= limit:
                return max(1, math.ceil(self._read_download_times[0] + 60 - now))
            self._read_download_times.append(now)
            self._read_downloads_total += 1
            job.downloads += 1
            self._save_state()
            return None

    # --- internals used by the handler --------------------------------------------------------------

    def _new_id(self) -> str:
        """19 digits like Zoho's ids; random so ids from different sandbox runs do not collide."""
        return "41508680" + f"{secrets.randbelow(10**11):011d}"

    def _creator(self) -> dict[str, str]:
        return {"id": "4150868000000225013", "name": "Sandbox User"}

    def _find_record(self, module: str, api_name: str, value: str) -> str | None:
        return self._records.get((module, api_name, value.lower()))

    def _remember_record(self, module: str, api_name: str, value: str, record_id: str) -> None:
        self._records.setdefault((module, api_name, value.lower()), record_id)

    def _record_request(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)

    @contextlib.contextmanager
    def _bulk_call(self) -> Iterator[None]:
        with self._lock:
            self._bulk_in_flight += 1
            self._max_bulk_in_flight = max(self._max_bulk_in_flight, self._bulk_in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._bulk_in_flight -= 1

    def _take_fault(self, endpoint: str | None, path: str) -> _Fault | None:
        if endpoint is None:
            return None
        with self._lock:
            for fault in self._faults:
                if endpoint in FAULT_ENDPOINTS[fault.kind] and path.startswith(fault.path_prefix or "/"):
                    if fault.params.get("after", 0) > 0:  # let this many matching requests through first
                        fault.params["after"] -= 1
                        continue
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _mint(self, params: dict[str, str]) -> tuple[dict[str, Any], bool]:
        """The token endpoint's answer body and whether it is a success."""
        with self._lock:
            if params.get("grant_type") != "refresh_token":
                return {"error": "unsupported_grant_type"}, False
            client_id = params.get("client_id", "")
            if client_id not in self._clients:
                return {"error": "invalid_client"}, False
            if params.get("client_secret") != self._clients[client_id]:
                return {"error": "invalid_client_secret"}, False
            refresh = params.get("refresh_token", "")
            if self._refresh_tokens.get(refresh) != client_id or refresh in self._revoked:
                return {"error": "invalid_code"}, False
            now = self.now()
            start, minted = self._throttle.get(refresh, (now, 0))
            if now >= start + self.options.token_window_seconds:
                start, minted = now, 0
            if minted >= self.options.token_limit:
                return dict(THROTTLE_BODY), False
            self._throttle[refresh] = (start, minted + 1)
            token = "1000." + secrets.token_hex(16) + "." + secrets.token_hex(16)
            live = [t for t in self._live.get(refresh, []) if t in self._access_tokens]
            live.append(token)
            while len(live) > self.options.max_live_tokens:
                self._access_tokens.pop(live.pop(0), None)
            self._live[refresh] = live
            self._access_tokens[token] = (refresh, now + self.options.token_ttl_seconds)
            self._tokens_minted += 1
            self._tokens_minted_by_client[client_id] += 1
            self._save_state()
        body: dict[str, Any] = {"access_token": token, "scope": SCOPE, "api_domain": self.url, "token_type": "Bearer"}
        style, ttl = self.options.token_response_style, int(self.options.token_ttl_seconds)
        if style in ("expires_in", "both"):
            body["expires_in"] = ttl
        if style in ("expires_in_sec", "both"):
            body["expires_in_sec"] = ttl
        return body, True

    def _token_is_valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Zoho-oauthtoken "):
            return False
        token = authorization[len("Zoho-oauthtoken "):].strip()
        with self._lock:
            entry = self._access_tokens.get(token)
            return entry is not None and entry[1] > self.now() and entry[0] not in self._revoked

    def _result_source(self, job_id: str) -> _ResultSource | None:
        """The job's result file if its link is valid now, else None (Zoho's "Link not valid")."""
        self._wait_for_result(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status_at(self.now()) != "COMPLETED":
                return None
            if self.now() > job.completed_at() + self.options.link_ttl_seconds:
                return None
            return _ResultSource(job.result_bytes, job.result_path)

    # --- persistence (--state-file) ------------------------------------------------------------------

    def _save_state(self) -> None:
        """Write everything but faults and stats, so a restarted sandbox keeps its jobs and tokens."""
        if self._state_file is None:
            return
        with self._lock:
            self.wait_for_results()  # the worker never takes the lock, so waiting while holding it is safe
            state = {
                "options": asdict(self.options),
                "clock_offset": self._clock_offset,
                "clients": self._clients,
                "refresh_tokens": self._refresh_tokens,
                "revoked": sorted(self._revoked),
                "access_tokens": self._access_tokens,
                "live": self._live,
                "throttle": self._throttle,
                "uploads": {k: {**asdict(v), "data": base64.b64encode(Path(v.path).read_bytes()).decode()}
                            for k, v in self._uploads.items()},
                "records": [[*key, value] for key, value in self._records.items()],
                "jobs": [_job_to_json(job) for job in self._jobs.values()],
                "bulk_read": {
                    "datasets": {module: asdict(dataset) for module, dataset in self._datasets.items()},
                    "jobs": [job.to_json() for job in self._read_jobs.values()],
                    "page_tokens": {token: cursor.to_json() for token, cursor in self._page_tokens.items()},
                    "download_times": self._read_download_times,
                    "downloads_total": self._read_downloads_total,
                },
            }
            tmp = self._state_file.with_name(self._state_file.name + ".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self._state_file)

    def _restore_upload(self, file_id: str, saved: str | dict[str, Any]) -> None:
        """An upload from a state file, written back to this run's upload folder (older state files
        hold only the zip's bytes, base64)."""
        data = base64.b64decode(saved if isinstance(saved, str) else saved["data"])
        path = os.path.join(self._upload_dir, f"{file_id}.zip")
        Path(path).write_bytes(data)
        if isinstance(saved, str):
            try:
                upload = results.read_uploaded_zip(data)
                csv_name, records, columns = upload.name, len(upload.rows), len(upload.header)
            except ZohoConfigurationError:
                csv_name, records, columns = "", 0, 0
            self._uploads[file_id] = _Upload(file_id, path, None, csv_name, records, columns, len(data), self.now())
        else:
            fields_ = {k: v for k, v in saved.items() if k != "data"}
            self._uploads[file_id] = _Upload(**{**fields_, "path": path})

    def _load_state(self) -> None:
        """Restore a saved state; the saved options win over the constructor's (it is the same sandbox)."""
        assert self._state_file is not None
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError) as exc:
            raise ZohoConfigurationError(f"cannot read the sandbox state file {self._state_file}: {exc}") from None
        self.options = SandboxOptions(**state["options"])
        self._clock_offset = float(state["clock_offset"])
        self._clients.update(state["clients"])
        self._refresh_tokens.update(state["refresh_tokens"])
        self._revoked = set(state["revoked"])
        self._access_tokens = {k: (v[0], float(v[1])) for k, v in state["access_tokens"].items()}
        self._live = {k: list(v) for k, v in state["live"].items()}
        self._throttle = {k: (float(v[0]), int(v[1])) for k, v in state["throttle"].items()}
        for file_id, saved in state["uploads"].items():
            self._restore_upload(file_id, saved)
        self._records = {(m, a, v): r for m, a, v, r in state["records"]}
        self._jobs = {job["job_id"]: _job_from_json(job) for job in state["jobs"]}
        read_state = state.get("bulk_read")  # absent from state files of sandboxes without Bulk Read
        if read_state:
            self._datasets.update({module: bulk_read.Dataset(**data)
                                   for module, data in read_state["datasets"].items()})
            self._read_jobs = {job["job_id"]: bulk_read.ReadJob.from_json(job) for job in read_state["jobs"]}
            self._page_tokens = {token: bulk_read.PageCursor.from_json(cursor)
                                 for token, cursor in read_state["page_tokens"].items()}
            self._read_download_times = [float(t) for t in read_state["download_times"]]
            self._read_downloads_total = int(read_state["downloads_total"])
        for job in self._jobs.values():  # this run may name another files_dir, or none
            if job.result_path is not None:
                try:
                    job.result_path = self._served_path(job.result_path)
                except ZohoConfigurationError as exc:
                    raise ZohoConfigurationError(
                        f"the sandbox state file {self._state_file} has a job served from disk: {exc.message}",
                        job_id=job.job_id) from None


def _job_to_json(job: _Job) -> dict[str, Any]:
    data = asdict(job)
    data["result_bytes"] = base64.b64encode(job.result_bytes).decode() if job.result_bytes is not None else None
    return data


def _job_from_json(data: dict[str, Any]) -> _Job:
    data = dict(data)
    data["resources"] = [_Resource(**r) for r in data["resources"]]
    if data.get("result_bytes") is not None:
        data["result_bytes"] = base64.b64decode(data["result_bytes"])
    return _Job(**data)


def _validate_job_request(request: Any, uploads: dict[str, _Upload]) -> tuple[str, list[dict[str, Any]]]:
    """Zoho's rules for a create-job body; raises with the offending field named."""
    if not isinstance(request, dict):
        raise _JobRequestError("INVALID_DATA", "body", "the body must be a JSON object")
    operation = request.get("operation")
    if not operation:
        raise _JobRequestError("MANDATORY_NOT_FOUND", "operation", "required field not found")
    if operation not in ("insert", "update", "upsert"):
        raise _JobRequestError("INVALID_DATA", "operation", f"operation must be insert, update or upsert, "
                                                           f"not {operation!r}")
    resources = request.get("resource")
    if not isinstance(resources, list) or not resources:
        raise _JobRequestError("MANDATORY_NOT_FOUND", "resource", "required field not found")
    for position, resource in enumerate(resources):
        if not isinstance(resource, dict):
            raise _JobRequestError("INVALID_DATA", f"resource[{position}]", "a resource must be an object")
        file_id = resource.get("file_id")
        if not file_id:
            raise _JobRequestError("MANDATORY_NOT_FOUND", f"resource[{position}].file_id", "required field not found")
        if str(file_id) not in uploads:
            raise _JobRequestError("INVALID_DATA", f"resource[{position}].file_id", f"unknown file id {file_id}")
        module = resource.get("module")
        if not module:
            raise _JobRequestError("MANDATORY_NOT_FOUND", f"resource[{position}].module", "required field not found")
        if not isinstance(module, str) and not (isinstance(module, dict) and isinstance(module.get("api_name"), str)
                                                and module["api_name"]):
            raise _JobRequestError("INVALID_DATA", f"resource[{position}].module",
                                   "module must be {\"api_name\": ...} or a module name")
        if operation in ("update", "upsert") and not resource.get("find_by"):
            raise _JobRequestError("MANDATORY_NOT_FOUND", f"resource[{position}].find_by",
                                   f"find_by is required for {operation}")
        mappings = resource.get("field_mappings")
        if mappings is not None and not (isinstance(mappings, list) and all(isinstance(m, dict) for m in mappings)):
            raise _JobRequestError("INVALID_DATA", f"resource[{position}].field_mappings",
                                   "field_mappings must be a list of objects")
    return operation, resources


class _JobRequestError(ZohoConfigurationError):
    """A create-job body Zoho would refuse; carries the Zoho code and field for the 400 answer."""

    def __init__(self, code: str, api_name: str, message: str) -> None:
        super().__init__(f"invalid Bulk Write job request: {api_name}: {message}")
        self.code = code
        self.api_name = api_name
        self.zoho_message = message


def _module_id(module: str) -> str:
    return "41508680000000" + f"{sum(module.encode()) * 7919 % 100000:05d}"


def _iso(epoch: float) -> str:
    return bulk_read.org_time(epoch)


def _rechunk(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """The same bytes in pieces of ``size`` (the last may be shorter), for the ``slow_body`` fault."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        whole = len(pending) - len(pending) % size
        for start in range(0, whole, size):
            yield bytes(pending[start:start + size])
        del pending[:whole]
    if pending:
        yield bytes(pending)


class _ResultSource:
    """A result zip in memory or on disk, read in chunks with optional byte patches (for corrupt_zip)."""

    def __init__(self, data: bytes | None, path: str | None) -> None:
        self.data = data
        self.path = path
        self.size = len(data) if data is not None else os.path.getsize(path or "")

    def read_at(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset:offset + length]
        with open(self.path or "", "rb") as f:
            f.seek(offset)
            return f.read(length)

    def chunks(self, limit: int, chunk_size: int, patches: dict[int, int] | None = None) -> Iterator[bytes]:
        with contextlib.ExitStack() as stack:
            reader = io.BytesIO(self.data) if self.data is not None else stack.enter_context(
                open(self.path or "", "rb"))
            offset = 0
            while offset < limit:
                chunk = reader.read(min(chunk_size, limit - offset))
                if not chunk:
                    return
                if patches:
                    hits = [(pos, xor) for pos, xor in patches.items() if offset <= pos < offset + len(chunk)]
                    if hits:
                        mutable = bytearray(chunk)
                        for pos, xor in hits:
                            mutable[pos - offset] ^= xor
                        chunk = bytes(mutable)
                offset += len(chunk)
                yield chunk

    def crc_patches(self) -> dict[int, int]:
        """Byte positions that, flipped, make the first member's CRC check fail at its end.

        Every recorded copy of the CRC-32 (local header, data descriptor, central directory) is
        altered, never the compressed bytes: a flipped deflate byte usually breaks decompression
        mid-member instead, while a reader must be shown the worse case, data that decodes fine and
        is only found wrong at the end. Only the central directory is read, even for huge archives.
        """
        source: Any = io.BytesIO(self.data) if self.data is not None else self.path
        with zipfile.ZipFile(source) as archive:
            first = archive.infolist()[0]
            central_directory = archive.start_dir  # type: ignore[attr-defined]
        local = self.read_at(first.header_offset, 30)
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        positions = [first.header_offset + 14, central_directory + 16]
        if first.flag_bits & 0x08:
            descriptor = first.header_offset + 30 + name_length + extra_length + first.compress_size
            has_signature = self.read_at(descriptor, 4) == b"PK\x07\x08"
            positions.append(descriptor + (4 if has_signature else 0))
        return {position: 0xFF for position in positions}


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Parts of a multipart/form-data body: name -> (filename, bytes). Binary-safe, no ``cgi``."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/form-data") or not match:
        return {}
    delimiter = b"--" + match.group(1).encode("latin-1")
    parts: dict[str, tuple[str | None, bytes]] = {}
    for raw in body.split(delimiter)[1:]:
        if raw.startswith(b"--"):
            break
        head, _, content = raw.partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        disposition = next((line for line in head.decode("latin-1").split("\r\n")
                            if line.lower().startswith("content-disposition")), "")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name:
            parts[name.group(1)] = (filename.group(1) if filename else None, content)
    return parts


def _zoho_error(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"code": code, "details": details, "message": message, "status": "error"}


class _IPv6HTTPServer(ThreadingHTTPServer):
    """For ``::1``: the standard server binds IPv4 sockets only."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """Parses HTTP and answers from :class:`ZohoSandbox` state; one instance per connection."""

    protocol_version = "HTTP/1.1"
    server_version = "ZohoSandbox/1.0"
    timeout = 60  # an idle keep-alive connection is closed after this many seconds
    # Answers are written in pieces (headers, then body): with Nagle's algorithm on, a kept-alive client
    # (the hook keeps its connection) waits ~40 ms for each small answer's delayed ACK.
    disable_nagle_algorithm = True

    @property
    def sandbox(self) -> ZohoSandbox:
        return self.server.sandbox  # type: ignore[attr-defined]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: the base class logs the raw request line, query string (client secret) included."""

    def log_message(self, format: str, *args: Any) -> None:
        """Protocol errors only; any query string is cut out, since token requests carry secrets there."""
        log.debug("sandbox http: %s", re.sub(r"\?\S*", "?<query hidden>", format % args))

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # HEAD, OPTIONS (a CORS preflight) and PATCH exist only to refuse admin calls with 405 like any
    # other non-POST; elsewhere they stay unsupported (501), as Zoho's endpoints do not take them here.
    def do_HEAD(self) -> None:
        self._admin_or_unsupported()

    def do_OPTIONS(self) -> None:
        self._admin_or_unsupported()

    def do_PATCH(self) -> None:
        self._admin_or_unsupported()

    # --- plumbing ---------------------------------------------------------------------------------

    def _admin_or_unsupported(self) -> None:
        if urlsplit(self.path).path.startswith("/_sandbox/"):
            self._dispatch()
        else:
            self.send_error(501, f"Unsupported method ({self.command!r})")

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/_sandbox/"):
            self._admin(path[len("/_sandbox/"):])
            return
        self._entry = {"method": self.command, "path": path, "host": self.headers.get("Host", ""),
                       "authorized": "Authorization" in self.headers, "status": None,
                       "content_length": self.headers.get("Content-Length"),
                       "transfer_encoding": self.headers.get("Transfer-Encoding")}
        self.sandbox._record_request(self._entry)
        endpoint = self._endpoint(path)
        if endpoint is None or endpoint == "token":
            self._serve(path, endpoint)
            return
        with self.sandbox._bulk_call():  # counts the Zoho Bulk API calls in flight, for concurrency limits
            self._serve(path, endpoint)

    def _serve(self, path: str, endpoint: str | None) -> None:
        fault = self.sandbox._take_fault(endpoint, path)
        if fault is not None and fault.kind == "reset_connection":
            self._reset()
            return
        if fault is not None and fault.kind == "drop" and not fault.params.get("after_processing"):
            self._drop_mid_request(fault)
            return
        if fault is not None and fault.kind == "slow_answer":
            time.sleep(float(fault.params.get("delay", 1.0)))
            fault = None  # then answered as usual
        if endpoint == "upload":
            self._upload(fault)
            return
        body = self._read_body()
        if fault is not None and self._answer_generic_fault(fault):
            return
        if endpoint == "token":
            self._token(body, fault)
        elif endpoint == "create":
            self._create_job(body, fault)
        elif endpoint == "details":
            self._job_details(path)
        elif endpoint == "download":
            self._download(path, fault)
        elif endpoint == "read_create":
            self._create_read_job(path, body, fault)
        elif endpoint == "read_details":
            self._read_job_details(path)
        elif endpoint == "read_download":
            self._read_download(path, fault)
        else:
            self._json(404, _zoho_error("INVALID_URL_PATTERN", "Please check if the URL trying to access is a "
                                                               "correct one", path=path))

    def _endpoint(self, path: str) -> str | None:
        if path == "/oauth/v2/token" and self.command == "POST":
            return "token"
        if _UPLOAD_PATH.match(path) and self.command == "POST":
            return "upload"
        if _WRITE_PATH.match(path) and self.command == "POST":
            return "create"
        if _JOB_PATH.match(path) and self.command == "GET":
            return "details"
        if _DOWNLOAD_PATH.match(path) and self.command == "GET":
            return "download"
        if _READ_PATH.match(path) and self.command == "POST":
            return "read_create"
        if _READ_JOB_PATH.match(path) and self.command == "GET":
            return "read_details"
        if _READ_RESULT_PATH.match(path) and self.command == "GET":
            return "read_download"
        return None

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _drain_body(self) -> None:
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            remaining -= len(chunk)

    def _log(self, status: int | None) -> None:
        self._entry["status"] = status
        log.info("%s %s -> %s", self.command, self._entry["path"], status if status is not None else "no answer")

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._bytes(status, json.dumps(body).encode(), "application/json;charset=UTF-8", headers)

    def _bytes(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        # Recorded before the answer goes out: a client reading stats() right after its answer must see it.
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close with an RST and no answer, as a dropped connection looks to the client."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self._log(None)
        with contextlib.suppress(OSError):
            self.connection.close()

    def _unauthorized(self) -> bool:
        if self.sandbox._token_is_valid(self.headers.get("Authorization")):
            return False
        self._json(401, INVALID_TOKEN_BODY)
        return True

    def _answer_generic_fault(self, fault: _Fault) -> bool:
        """Faults that replace the whole answer; body faults are left to the download."""
        params = fault.params
        if fault.kind == "status":
            status = int(params["status"])
            code = params.get("code")
            body = (params.get("body")
                    or (code and _zoho_error(str(code), str(params.get("message") or code.lower().replace("_", " "))))
                    or _DEFAULT_FAULT_BODIES.get(status)
                    or _zoho_error("INTERNAL_ERROR" if status >= 500 else "INVALID_REQUEST",
                                   f"sandbox fault: HTTP {status}"))
            headers = {"Retry-After": str(params["retry_after"])} if params.get("retry_after") is not None else None
            self._json(status, body, headers)
            return True
        if fault.kind == "redirect":
            location = str(params["location"])
            if params.get("presigned"):
                signature = self.sandbox._link_signature(urlsplit(location).path)
                location += f"{'&' if '?' in location else '?'}{_SIGNATURE_PARAM}={signature}"
            self._bytes(int(params.get("status", 302)), b"", "text/plain", {"Location": location})
            return True
        if fault.kind == "expired_link":
            self._json(self.sandbox.options.expired_link_status, EXPIRED_LINK_BODY)
            return True
        if fault.kind == "error_body":
            content_type = str(params.get("content_type", "text/html"))
            body = params.get("body")
            if body is None:
                body = (json.dumps(_zoho_error("INTERNAL_ERROR", "internal server error"))
                        if "json" in content_type else
                        "<html><head><title>Zoho</title></head><body><h1>Sorry, something went wrong</h1>"
                        "<p>Please try again later.</p></body></html>")
            self._bytes(int(params.get("status", 200)), str(body).encode(), content_type)
            return True
        return False

    # --- endpoints ------------------------------------------------------------------------------------

    def _token(self, body: bytes, fault: _Fault | None) -> None:
        params = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if "form-urlencoded" in self.headers.get("Content-Type", "") and body:
            params.update({k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()})
        options = self.sandbox.options
        if fault is not None and fault.kind == "token_error":
            error = str(fault.params.get("error", "invalid_code"))
            answer = dict(THROTTLE_BODY) if error == "Access Denied" else {"error": error}
            self._json(int(fault.params.get("status", options.token_error_status)), answer)
            return
        answer, ok = self.sandbox._mint(params)
        self._json(200 if ok else options.token_error_status, answer)

    def _upload(self, fault: _Fault | None) -> None:
        """Zoho's upload: the token, ``feature: bulk-write``, ``X-CRM-ORG`` naming this org, a multipart
        part ``file`` holding a zip of one CSV within Zoho's limits. The body is read whole (at most
        ``upload_limit_bytes`` plus framing: anything longer is refused unread) and the zip is kept on disk."""
        kind = fault.kind if fault is not None else None
        if kind in ("status", "redirect"):
            self._drain_body()
            self._answer_generic_fault(fault)  # type: ignore[arg-type]
            return
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # The chunks are not read, so they must not be taken for a next request: close after answering.
            self._json(411, _zoho_error("LENGTH_REQUIRED", "the upload must carry a Content-Length"),
                       {"Connection": "close"})
            return
        limit = self.sandbox.options.upload_limit_bytes
        if int(self.headers.get("Content-Length") or 0) > limit + CHUNK_SIZE:  # multipart framing is small
            self._drain_body()
            self._json(413, _zoho_error("FILE_TOO_LARGE", f"the file is larger than {limit} bytes"))
            return
        body = self._read_body()
        if kind == "invalid_file_format":
            self._json(400, _zoho_error("INVALID_FILE_FORMAT", "the file is not a zip file (sandbox fault)"))
            return
        if kind == "file_too_large":
            self._json(413, _zoho_error("FILE_TOO_LARGE", f"the file is larger than {limit} bytes (sandbox fault)"))
            return
        if self._unauthorized():
            return
        if (self.headers.get("feature") or "").lower() != "bulk-write":
            self._json(400, _zoho_error("MANDATORY_NOT_FOUND", "required header feature: bulk-write is missing",
                                        header="feature"))
            return
        org = self.headers.get("X-CRM-ORG")
        if not org:
            self._json(400, _zoho_error("MANDATORY_NOT_FOUND", "required header X-CRM-ORG is missing",
                                        header="X-CRM-ORG"))
            return
        if org.strip() != self.sandbox.options.org_id:
            self._json(400, _zoho_error("INVALID_DATA", "the organization in X-CRM-ORG is not the one this token "
                                                        "belongs to", header="X-CRM-ORG"))
            return
        parts = _parse_multipart(self.headers.get("Content-Type", ""), body)
        if "file" not in parts:
            self._json(400, _zoho_error("MANDATORY_NOT_FOUND", "multipart part 'file' is missing", param_name="file"))
            return
        file_name, data = parts["file"]
        if len(data) > limit:
            self._json(413, _zoho_error("FILE_TOO_LARGE", f"the file is larger than {limit} bytes"))
            return
        try:
            file_id = self.sandbox.upload_file(data, file_name=file_name)
        except results.UploadRefusedError as exc:
            self._json(400, _zoho_error(exc.code, exc.zoho_message, **exc.details))
            return
        except ZohoConfigurationError as exc:
            self._json(400, _zoho_error("INVALID_FILE_FORMAT", str(exc)))
            return
        if self._dropped_after_processing(fault):
            return
        self._json(200, {"status": "success", "code": "FILE_UPLOAD_SUCCESS", "message": "file uploaded.",
                         "details": {"file_id": file_id, "created_time": _iso(self.sandbox.now())}})

    def _drop_mid_request(self, fault: _Fault) -> None:
        """The ``drop`` fault: read ``fraction`` (0.5) of the request body, then close without an answer."""
        remaining = int(int(self.headers.get("Content-Length") or 0) * float(fault.params.get("fraction", 0.5)))
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
        self._reset()

    def _dropped_after_processing(self, fault: _Fault | None) -> bool:
        """The ``drop`` fault with ``after_processing``: the request did its work, the answer is lost."""
        if fault is not None and fault.kind == "drop" and fault.params.get("after_processing"):
            self._reset()
            return True
        return False

    def _create_job(self, body: bytes, fault: _Fault | None = None) -> None:
        if self._unauthorized():
            return
        try:
            request = json.loads(body or b"null")
        except ValueError:
            self._json(400, _zoho_error("INVALID_DATA", "the body is not valid JSON", api_name="body"))
            return
        try:
            job_id = self.sandbox.create_job(request)
        except _JobRequestError as exc:
            self._json(400, _zoho_error(exc.code, exc.zoho_message, api_name=exc.api_name))
            return
        except ZohoConfigurationError as exc:
            self._json(400, _zoho_error("INVALID_DATA", str(exc)))
            return
        if self._dropped_after_processing(fault):
            return
        self._json(201, {"status": "success", "code": "SUCCESS", "message": "success",
                         "details": {"id": job_id, "created_by": self.sandbox._creator()}})

    def _job_details(self, path: str) -> None:
        if self._unauthorized():
            return
        match = _JOB_PATH.match(path)
        assert match is not None
        job_id = match.group(2)
        details = self.sandbox.job_details(job_id)
        if details is None:
            self._json(400, _zoho_error("RESOURCE_NOT_FOUND", "the requested resource is not found", id=job_id))
            return
        self._json(200, details)

    def _presigned(self, path: str) -> bool:
        """Whether the URL carries this run's signature of ``path`` (a ``redirect`` fault's CDN-style link)."""
        signature = parse_qs(urlsplit(self.path).query).get(_SIGNATURE_PARAM, [""])[0]
        return hmac.compare_digest(signature, self.sandbox._link_signature(path))

    def _send_filename_header(self, job_id: str) -> None:
        style = self.sandbox.options.download_filename_style
        if style == "plain":
            self.send_header("Content-Disposition", f'attachment; filename="{job_id}.zip"')
        elif style == "rfc5987":
            self.send_header("Content-Disposition", f"attachment; filename*=UTF-8''{job_id}.zip")

    def _download(self, path: str, fault: _Fault | None) -> None:
        if not self._presigned(path) and self._unauthorized():
            return
        match = _DOWNLOAD_PATH.match(path)
        assert match is not None
        _, job_id, file_stem = match.groups()
        source = self.sandbox._result_source(job_id) if file_stem == job_id else None
        if source is None:
            self._json(self.sandbox.options.expired_link_status, EXPIRED_LINK_BODY)
            return
        kind, params = (fault.kind, fault.params) if fault is not None else (None, {})
        limit = source.size
        if kind == "truncate_zip":
            limit = source.size * int(params.get("percent", 50)) // 100
        patches = source.crc_patches() if kind == "corrupt_zip" else None
        sent_limit = limit
        if kind == "drop_mid_body":
            sent_limit = int(source.size * float(params.get("fraction", 0.5)))
        chunk_size = int(params.get("chunk_size", CHUNK_SIZE)) if kind == "slow_body" else CHUNK_SIZE
        delay = float(params.get("delay", 0.5)) if kind == "slow_body" else 0.0

        self.send_response(200)
        self.send_header("Content-Type", self.sandbox.options.download_content_type)
        self._send_filename_header(job_id)
        self.send_header("Content-Length", str(limit))
        self.end_headers()
        self._log(200)
        try:
            for position, chunk in enumerate(source.chunks(sent_limit, chunk_size, patches)):
                if delay and position:
                    time.sleep(delay)
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if kind == "drop_mid_body":
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _create_read_job(self, path: str, body: bytes, fault: _Fault | None) -> None:
        if self._unauthorized():
            return
        try:
            request = json.loads(body or b"null")
        except ValueError:
            self._json(400, _zoho_error("INVALID_DATA", "the body is not valid JSON", api_name="body"))
            return
        failure = None
        if fault is not None and fault.kind == "bulk_read_failed":
            failure = {key: fault.params[key] for key in ("code", "message", "details") if key in fault.params}
        match = _READ_PATH.match(path)
        assert match is not None
        try:
            job = self.sandbox._add_read_job(request, api_version=match.group(1), failure=failure)
        except bulk_read.ReadRequestError as exc:
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
            self._json(exc.status, _zoho_error(exc.code, exc.zoho_message, **exc.details), headers)
            return
        self._json(201, {"data": [{"status": "success", "code": "ADDED_SUCCESSFULLY", "message": "Added successfully.",
                                   "details": {"id": job.job_id, "operation": "read", "state": "ADDED",
                                               "created_by": job.created_by,
                                               "created_time": bulk_read.org_time(job.created_at)}}],
                         "info": {}})

    def _read_job_details(self, path: str) -> None:
        if self._unauthorized():
            return
        match = _READ_JOB_PATH.match(path)
        assert match is not None
        details = self.sandbox.read_job_details(match.group(2))
        if details is None:
            self._json(400, _zoho_error("RESOURCE_NOT_FOUND", "the requested resource is not found",
                                        id=match.group(2)))
            return
        self._json(200, details)

    def _read_download(self, path: str, fault: _Fault | None) -> None:
        """A page's zip, generated while it is sent (chunked: its size is known only at the end)."""
        if not self._presigned(path) and self._unauthorized():
            return
        match = _READ_RESULT_PATH.match(path)
        assert match is not None
        job_id = match.group(2)
        job, state = self.sandbox._read_job_for_download(job_id)
        if job is None:
            self._json(400, _zoho_error("RESOURCE_NOT_FOUND", "the requested resource is not found", id=job_id))
            return
        if state != "COMPLETED":
            shown = self.sandbox.options.in_progress_spelling if state == "IN PROGRESS" else state
            self._json(400, _zoho_error("INVALID_REQUEST", f"the bulk read job is {shown}: its result can be "
                                                           "downloaded once it is COMPLETED", id=job_id, state=shown))
            return
        retry_after = self.sandbox._claim_read_download(job)
        if retry_after is not None:
            self._json(429, _zoho_error("TOO_MANY_REQUESTS", "too many requests: at most "
                                        f"{self.sandbox.options.bulk_read_downloads_per_minute} bulk read downloads "
                                        "a minute", limit=self.sandbox.options.bulk_read_downloads_per_minute),
                       {"Retry-After": str(retry_after)})
            return
        kind, params = (fault.kind, fault.params) if fault is not None else (None, {})
        zip_faults = bulk_read.ZipFaults()
        if kind == "truncate_zip":
            zip_faults = bulk_read.ZipFaults(row_share=int(params.get("percent", 50)) / 100, complete=False)
        elif kind == "drop_mid_body":
            zip_faults = bulk_read.ZipFaults(row_share=float(params.get("fraction", 0.5)), complete=False)
        elif kind == "corrupt_zip":
            zip_faults = bulk_read.ZipFaults(corrupt_crc=True)
        chunks = bulk_read.page_zip(job, quote_all=self.sandbox.options.bulk_read_quote_all, faults=zip_faults)
        delay = 0.0
        if kind == "slow_body":
            chunks = _rechunk(chunks, int(params.get("chunk_size", CHUNK_SIZE)))
            delay = float(params.get("delay", 0.5))

        self.send_response(200)
        self.send_header("Content-Type", READ_RESULT_CONTENT_TYPE)
        self._send_filename_header(job_id)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._log(200)
        try:
            for position, chunk in enumerate(chunks):
                if delay and position:
                    time.sleep(delay)
                if chunk:
                    self.wfile.write(b"%X\r\n%b\r\n" % (len(chunk), chunk))
            if kind == "drop_mid_body":  # no last chunk: the body ends mid-stream
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # --- admin ------------------------------------------------------------------------------------------

    _ADMIN_METHODS = frozenset({
        "info", "configure", "add_client", "revoke_refresh_token", "advance_clock", "add_fault", "clear_faults",
        "stats", "reset", "create_job_from_csv", "create_job_from_zip", "job_details", "connection_extra",
        "airflow_connection", "airflow_connection_env", "seed_module", "read_modules", "read_records",
        "create_read_job", "read_jobs", "read_job_details", "uploaded_files", "write_jobs",
    })

    def _from_this_machine(self) -> bool:
        """The Host, and the Origin a browser adds, must name the loopback: a web page reaching the
        sandbox through DNS rebinding (a hostile name resolving to 127.0.0.1) sends its own name."""
        def loopback(url_or_host: str) -> bool:
            host = urlsplit(url_or_host if "//" in url_or_host else f"//{url_or_host}").hostname or ""
            return host in _LOOPBACK_NAMES

        origin = self.headers.get("Origin")
        return loopback(self.headers.get("Host", "")) and (origin is None or loopback(origin))

    def _admin_refusal(self) -> tuple[int, str, dict[str, str] | None] | None:
        """Why this admin call is refused (status, message, headers), or None to serve it.

        Admin calls reset state and serve files, and any web page the user opens may send requests to
        127.0.0.1: an ``<img>`` sends a GET without Origin, a form a POST. So only a POST is served, and
        only with this run's token in a header, which a page can neither know nor send without a CORS
        preflight; preflights (OPTIONS) get a 405 without any ``Access-Control-Allow-*`` header.
        """
        if self.command != "POST":
            return 405, "sandbox admin calls are POST only", {"Allow": "POST"}
        if not self._from_this_machine():
            return 403, "admin calls are taken from loopback names only", None
        sent = self.headers.get(ADMIN_TOKEN_HEADER, "").encode("utf-8", "replace")
        if not hmac.compare_digest(sent, self.sandbox.admin_token.encode()):
            return 403, (f"admin calls need this run's admin token in the {ADMIN_TOKEN_HEADER} header (the sandbox "
                         f"printed it at start: {ADMIN_TOKEN_ENV}=...)"), None
        return None

    def _admin(self, name: str) -> None:
        self._entry = {"path": "/_sandbox/" + name}
        refusal = self._admin_refusal()
        if refusal is not None:
            status, message, headers = refusal
            self._drain_body()
            self._json(status, {"error": "method_not_allowed" if status == 405 else "forbidden", "message": message},
                       headers)
            return
        body = self._read_body()
        if name not in self._ADMIN_METHODS:
            self._json(404, {"error": "unknown_admin_method", "message": f"no sandbox admin method {name!r}"})
            return
        try:
            kwargs = decode_admin_value(json.loads(body)) if body else {}
            if not isinstance(kwargs, dict):
                raise ZohoConfigurationError("admin calls take a JSON object of keyword arguments")
            result = getattr(self.sandbox, name)(**kwargs)
        except (ZohoConfigurationError, TypeError, ValueError) as exc:
            self._json(400, {"error": type(exc).__name__, "message": str(exc)})
            return
        self._json(200, {"result": result})


def encode_admin_value(value: Any) -> Any:
    """JSON-safe form of admin arguments: bytes travel as ``{"$bytes": base64}``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: encode_admin_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_admin_value(v) for v in value]
    return value


def decode_admin_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        return {k: decode_admin_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_admin_value(v) for v in value]
    return value
