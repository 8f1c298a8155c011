"""ZohoCrmHook: an Airflow connection -> Zoho OAuth -> authenticated API calls and streamed downloads.

Design choices worth knowing:

- Tokens come from :mod:`.token_cache`, so parallel tasks share one token instead of tripping Zoho's
  10-per-10-minutes throttle.
- The token is a bearer credential. It is attached only to hosts of the connection's data centre
  (see :mod:`airflow_provider_zohobulk.datacenters`), and the host is read by the code that connects
  (:func:`~airflow_provider_zohobulk.datacenters.request_target`), never by a second parser that could
  disagree with it. Redirects are followed by hand so that every hop is checked the same way: a hop to
  any other host goes without the token, and an ambiguous URL (backslash, ``user@``, control
  characters, malformed IPv6, a port out of range, a scheme other than http(s)) is refused outright.
- Retries are bounded, logged and use exponential backoff with jitter. Every transport failure (refused,
  reset, timed out, a body cut short or undecodable) is retried and ends as :class:`ZohoConnectionError`,
  one of ``errors.TRANSIENT_ERRORS``, so a waiting sensor polls through it. A body read whole (job
  details) is read inside the retry loop; a download is retried only before its first byte: once rows
  are flowing to a sink a retry could not be told apart from a duplicate, so a failure mid-body is an
  error and the sink aborts.
- A well-delivered body of the wrong kind (HTML, empty, a JSON list, a field of the wrong type) is not
  a blip: it raises :class:`ZohoMalformedResponseError` naming what was expected.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import random
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import quote

import requests
import urllib3
from airflow.sdk import BaseHook

from airflow_provider_zohobulk import bulk_job
from airflow_provider_zohobulk.datacenters import (
    ZohoEndpoints,
    redirect_target,
    request_target,
    resolve_endpoints,
    safe_url,
)
from airflow_provider_zohobulk.errors import (
    DisallowedHostError,
    DownloadError,
    DownloadLinkExpiredError,
    InvalidClientError,
    InvalidClientSecretError,
    InvalidRefreshTokenError,
    TokenThrottledError,
    ZohoApiError,
    ZohoAuthError,
    ZohoBulkError,
    ZohoConfigurationError,
    ZohoConnectionError,
    ZohoMalformedResponseError,
    ZohoNotFoundError,
    ZohoRateLimitError,
    ZohoScopeError,
    ZohoServerError,
    ZohoTokenRejectedError,
)
from airflow_provider_zohobulk.hooks.token_cache import CachedToken, TokenCache, cache_key, get_token_cache

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 3600
MAX_REDIRECTS = 5
#: How much longer than ``throttle_max_wait`` a task waits for another one minting the same token.
_MINT_LOCK_MARGIN_S = 120.0
_TOKEN_REJECTED_CODES = {"INVALID_TOKEN", "AUTHENTICATION_FAILURE"}
_SCOPE_HINT = "ZohoCRM.bulk.ALL (or ZohoCRM.bulk.READ / ZohoCRM.bulk.CREATE), ZohoCRM.modules.ALL"
#: Everything the network can do to a request or a body on its way: transient by nature. requests wraps
#: most of urllib3's and http.client's failures, but not every path does (a body read from ``raw``).
#: Not urllib3's whole ``HTTPError``: it includes ``LocationValueError``, a malformed URL, never transient.
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.DecodeError,
    urllib3.exceptions.TimeoutError,
    http.client.IncompleteRead,
)
_FULL_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_JOB_DETAILS = "a JSON object with the job's details"
_READ_JOB_CREATED = "a JSON object whose data[0].details.id is the new Bulk Read job's id"
_UPLOADED = "a JSON object whose details.file_id is the uploaded file's id"
_WRITE_JOB_CREATED = "a JSON object whose details.id is the new Bulk Write job's id"
_WRITE_OPERATIONS = ("insert", "update", "upsert")
#: Zoho's size limit on one uploaded zip (reference section 4); only used to explain a 413.
_UPLOAD_LIMIT_MB = 25


def _mask(value: str | None) -> None:
    """Register a secret with Airflow's masker so it is redacted from every log line."""
    if not value:
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - older task SDKs
        return
    mask_secret(value)


@dataclass(frozen=True)
class ZohoConnectionSettings:
    client_id: str
    client_secret: str
    refresh_token: str
    endpoints: ZohoEndpoints
    org_id: str | None
    token_cache: str

    def __repr__(self) -> str:  # never print secrets, even by accident
        return f"ZohoConnectionSettings(client_id={self.client_id!r}, data_center={self.endpoints.data_center!r})"


class Download:
    """An open result download: iterate it for byte chunks; ``bytes_read`` grows as you do."""

    def __init__(self, response: requests.Response, url: str, chunk_size: int, job_id: str | None = None) -> None:
        self.url = url
        self.response = response
        self.chunk_size = chunk_size
        self.job_id = job_id
        self.bytes_read = 0
        length = response.headers.get("Content-Length")
        self.content_length = int(length) if length and length.isdigit() else None
        self.content_type = response.headers.get("Content-Type", "")
        self.filename = _content_disposition_filename(response.headers.get("Content-Disposition", ""))

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.response.iter_content(chunk_size=self.chunk_size):
                if chunk:
                    self.bytes_read += len(chunk)
                    yield chunk
        except requests.exceptions.ContentDecodingError:
            encoding = self.response.headers.get("Content-Encoding")
            raise DownloadError(
                f"the body of {safe_url(self.url)} could not be decoded as its Content-Encoding {encoding!r} "
                f"says, after {self.bytes_read} bytes", job_id=self.job_id) from None
        except _TRANSPORT_ERRORS as exc:
            raise DownloadError(
                f"the connection dropped after {self.bytes_read} bytes of {safe_url(self.url)} "
                f"({type(exc).__name__})", job_id=self.job_id
            ) from None
        if self.content_length is not None and self.bytes_read < self.content_length:
            raise DownloadError(
                f"the download of {safe_url(self.url)} ended after {self.bytes_read} of "
                f"{self.content_length} bytes", job_id=self.job_id
            )


def _content_disposition_filename(header: str) -> str | None:
    """``filename*=UTF-8''x.zip`` (RFC 5987) wins over ``filename="x.zip"``."""
    from urllib.parse import unquote

    plain = None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        key = key.strip().lower()
        value = value.strip()
        if key == "filename*" and "''" in value:
            return unquote(value.split("''", 1)[1])
        if key == "filename":
            plain = value.strip('"')
    return plain


class ZohoCrmHook(BaseHook):
    """Interact with Zoho CRM through a ``zoho_crm`` connection.

    :param zoho_conn_id: the Airflow connection (login = client id, password = client secret,
        extra: refresh_token, data_center, org_id, accounts_url, api_domain, download_hosts, oauth_cache).
    :param timeout: (connect, read) seconds for every HTTP call.
    :param retry_limit: retries after the first attempt, for connection errors, 429 and 5xx.
    :param retry_backoff: first backoff in seconds; doubles each retry, with jitter, capped at ``max_backoff``.
    :param throttle_wait: seconds to wait when Zoho throttles token minting ("Access Denied").
    :param throttle_max_wait: total seconds to keep waiting for the throttle to lift.
    :param chunk_size: bytes per chunk yielded by :meth:`stream_download`.
    """

    conn_name_attr = "zoho_conn_id"
    default_conn_name = "zoho_crm_default"
    conn_type = "zoho_crm"
    hook_name = "Zoho CRM"

    def __init__(
        self,
        zoho_conn_id: str = default_conn_name,
        *,
        timeout: float | tuple[float, float] = (10.0, 300.0),
        retry_limit: int = 4,
        retry_backoff: float = 1.0,
        max_backoff: float = 60.0,
        throttle_wait: float = 60.0,
        throttle_max_wait: float = 660.0,
        chunk_size: int = 1 << 20,
    ) -> None:
        super().__init__()
        self.zoho_conn_id = zoho_conn_id
        self.timeout = timeout
        self.retry_limit = retry_limit
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.throttle_wait = throttle_wait
        self.throttle_max_wait = throttle_max_wait
        self.chunk_size = chunk_size

    # --- connection -----------------------------------------------------------------------------

    @cached_property
    def settings(self) -> ZohoConnectionSettings:
        conn = self.get_connection(self.zoho_conn_id)
        extra = conn.extra_dejson or {}
        refresh_token = extra.get("refresh_token")
        missing = [
            name
            for name, value in (("client id (login)", conn.login), ("client secret (password)", conn.password),
                                ("refresh_token (extra)", refresh_token))
            if not value
        ]
        if missing:
            raise ZohoConfigurationError(
                f"Zoho connection {self.zoho_conn_id!r} is missing: {', '.join(missing)}"
            )
        _mask(conn.password)
        _mask(refresh_token)
        return ZohoConnectionSettings(
            client_id=conn.login,
            client_secret=conn.password,
            refresh_token=refresh_token,
            endpoints=resolve_endpoints(
                extra.get("data_center"),
                accounts_url=extra.get("accounts_url"),
                api_domain=extra.get("api_domain"),
                download_hosts=extra.get("download_hosts"),
            ),
            org_id=extra.get("org_id"),
            token_cache=extra.get("oauth_cache") or "local",
        )

    @property
    def endpoints(self) -> ZohoEndpoints:
        return self.settings.endpoints

    @cached_property
    def session(self) -> requests.Session:
        session = _HandRedirectSession()
        session.headers["User-Agent"] = "airflow-provider-zohobulk"
        return session

    @cached_property
    def _token_cache(self) -> TokenCache | None:
        return get_token_cache(self.settings.token_cache)

    @cached_property
    def _cache_key(self) -> str:
        s = self.settings
        return cache_key(s.endpoints.accounts_url, s.client_id, s.client_secret, s.refresh_token)

    # --- OAuth ----------------------------------------------------------------------------------

    def get_access_token(self) -> str:
        """A valid access token: cached and shared when possible, minted (once, under a lock) if not."""
        cache = self._token_cache
        if cache is None:
            return self._current_or_mint()
        # Longer than a minter may wait out the throttle, so a waiter only gives up on a stuck one.
        token = cache.get_or_mint(self._cache_key, self._mint_token,
                                  timeout=self.throttle_max_wait + _MINT_LOCK_MARGIN_S)
        _mask(token.access_token)
        return token.access_token

    def _current_or_mint(self) -> str:
        token = self.__dict__.get("_uncached_token")
        if token is None or not token.is_fresh():
            token = self._mint_token()
            self.__dict__["_uncached_token"] = token
        return token.access_token

    def _forget_token(self, rejected: str) -> None:
        if self._token_cache is None:
            self.__dict__.pop("_uncached_token", None)
        else:
            self._token_cache.invalidate(self._cache_key, rejected)

    def _mint_token(self) -> CachedToken:
        s = self.settings
        dc = s.endpoints.data_center
        waited = 0.0
        while True:
            response = self._send(
                "POST",
                s.endpoints.token_url,
                attach_token=False,
                data={
                    "grant_type": "refresh_token",
                    "client_id": s.client_id,
                    "client_secret": s.client_secret,
                    "refresh_token": s.refresh_token,
                },
            )
            body = _json_or_none(response)
            if body is None:
                raise ZohoAuthError(
                    f"Zoho's token endpoint {s.endpoints.token_url} answered HTTP {response.status_code} "
                    "without a JSON body"
                )
            error = body.get("error")
            if not error and body.get("access_token"):
                break
            if error == "Access Denied" or "too many requests" in str(body.get("error_description", "")).lower():
                if waited + self.throttle_wait > self.throttle_max_wait:
                    raise TokenThrottledError(
                        f"Zoho is throttling token requests for this refresh token (10 per 10 minutes) and "
                        f"it had not lifted after waiting {waited:.0f}s; too many workers are minting tokens "
                        "(set the connection's oauth_cache to 'local' or 'variable')",
                        error=error,
                    )
                log.warning(
                    "Zoho throttled the token request (Access Denied: too many tokens minted); "
                    "waiting %.0fs before trying again (%.0fs waited so far, at most %.0fs)",
                    self.throttle_wait, waited, self.throttle_max_wait,
                )
                time.sleep(self.throttle_wait)
                waited += self.throttle_wait
                continue
            raise _auth_error(error, dc, s.endpoints.accounts_url)
        expires_in = body.get("expires_in", body.get("expires_in_sec", DEFAULT_EXPIRES_IN))
        try:
            expires_in = float(expires_in)
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN
        # Old responses gave expires_in in milliseconds next to expires_in_sec.
        if expires_in > 86_400 and "expires_in_sec" in body:
            expires_in = float(body["expires_in_sec"])
        _mask(body["access_token"])
        log.info("Minted a Zoho access token for client %s in data centre %s (valid %.0fs)",
                 s.client_id, dc, expires_in)
        return CachedToken(body["access_token"], time.time() + expires_in, body.get("api_domain"))

    # --- HTTP -----------------------------------------------------------------------------------

    def _sleep_before_retry(self, attempt: int, reason: str, method: str, url: str,
                            retry_after: str | None = None) -> None:
        delay = min(self.max_backoff, self.retry_backoff * (2 ** attempt))
        delay = delay * (0.5 + random.random() / 2)
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = min(self.max_backoff, max(delay, float(retry_after)))
        log.warning("Zoho %s %s: %s; retry %d of %d in %.1fs",
                    method, safe_url(url), reason, attempt + 1, self.retry_limit, delay)
        time.sleep(delay)

    def _send(self, method: str, url: str, *, attach_token: bool, stream: bool = False,
              headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
        """One logical request: bounded retries, one token refresh on 401, redirects by hand.

        Answers that are final (2xx, 4xx other than a rejected token, or retries exhausted) are
        returned as they are; :meth:`_raise_for_zoho_error` turns error bodies into exceptions.
        """
        attempt = 0
        refreshed = False
        while True:
            sent_token = None
            try:
                response, sent_token = self._send_following_redirects(
                    method, url, attach_token=attach_token, stream=stream, headers=headers, **kwargs
                )
            except _TRANSPORT_ERRORS as exc:  # a body read whole is read in here, so a cut one is retried too
                if attempt >= self.retry_limit:
                    raise ZohoConnectionError(
                        f"Zoho {method} {safe_url(url)} failed after {attempt + 1} attempts: {type(exc).__name__}"
                    ) from None
                self._sleep_before_retry(attempt, type(exc).__name__, method, url)
                attempt += 1
                continue
            status = response.status_code
            if status == 401 and sent_token and not refreshed:
                code = (_json_or_none(response, peek=True) or {}).get("code")
                if code in _TOKEN_REJECTED_CODES or code is None:
                    response.close()
                    log.warning("Zoho rejected the access token (%s); minting a new one and retrying once", code)
                    self._forget_token(sent_token)
                    refreshed = True
                    continue
            if status == 429 or status >= 500:
                if attempt >= self.retry_limit:
                    return response
                reason = f"HTTP {status}"
                retry_after = response.headers.get("Retry-After")
                response.close()
                self._sleep_before_retry(attempt, reason, method, url, retry_after)
                attempt += 1
                continue
            return response

    def _send_following_redirects(self, method: str, url: str, *, attach_token: bool, stream: bool,
                                  headers: dict[str, str] | None, **kwargs: Any
                                  ) -> tuple[requests.Response, str | None]:
        """Every hop is read by :func:`request_target` (refused if ambiguous) and requested as read, so
        the host the token is checked against is the host that is connected to."""
        current = request_target(url)
        sent_token = None
        for _hop in range(MAX_REDIRECTS + 1):
            sent_token = None  # of the hop that answers: a 401 from a host never given the token is not Zoho's
            request_headers = dict(headers or {})
            if attach_token and self.endpoints.may_receive_token(current):
                sent_token = self.get_access_token()
                request_headers["Authorization"] = f"Zoho-oauthtoken {sent_token}"
            body = kwargs.get("data")
            if isinstance(body, _MultipartFileBody):  # a retry or a 307 sends the whole file again
                body.rewind()
            response = self.session.request(
                method, current.url, headers=request_headers, stream=stream, timeout=self.timeout,
                allow_redirects=False, **kwargs,
            )
            if not response.is_redirect:
                return response, sent_token
            location = response.headers.get("Location", "")
            response.close()
            current = redirect_target(current, location)
            if attach_token and not self.endpoints.may_receive_token(current):
                log.info("Following a redirect to %s without the Zoho token (not a Zoho host of this "
                         "connection)", current.host)
            if method == "POST":
                method = "GET"
                kwargs.pop("data", None)
                kwargs.pop("json", None)
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects starting at {safe_url(url)}")

    def _url(self, path_or_url: str) -> str:
        if _FULL_URL.match(path_or_url):  # any scheme, so that ftp:// is refused, not read as a path
            return path_or_url
        return f"{self.endpoints.api_domain}/{path_or_url.lstrip('/')}"

    def request(self, method: str, path_or_url: str, **kwargs: Any) -> requests.Response:
        """An authenticated CRM API call; Zoho error bodies become typed exceptions.

        ``path_or_url`` is relative to the connection's API domain (``crm/bulk/v8/write/123``) or a
        full URL on a host allowed to receive the token.
        """
        url = self._url(path_or_url)
        self._check_host(url)
        response = self._send(method.upper(), url, attach_token=True, **kwargs)
        self._raise_for_zoho_error(response, url)
        return response

    def _check_host(self, url: str) -> None:
        """Refuse, before any request, a URL that may not receive the token: ambiguous or foreign."""
        target = request_target(url)
        if self.endpoints.may_receive_token(target):
            return
        host = target.host
        if host in self.endpoints.token_hosts:  # a Zoho host, but not over https
            raise DisallowedHostError(
                f"refusing to send the Zoho token over plain http to {host!r}: Zoho's hosts are reached over "
                "https (only a host the connection itself names with http://, such as a local sandbox, is exempt)")
        raise DisallowedHostError(
            f"refusing to send the Zoho token to {host!r}: it is not a Zoho host of data centre "
            f"{self.endpoints.data_center!r}; add it to the connection's download_hosts if it is genuinely Zoho's")

    def _raise_for_zoho_error(self, response: requests.Response, url: str, job_id: str | None = None) -> None:
        if response.status_code < 400:
            return
        body = _json_or_none(response) or {}
        code = body.get("code")
        message = body.get("message") or response.reason
        status = response.status_code
        answered_by = safe_url(response.url or url)
        redirected = f" (redirected to {answered_by})" if answered_by != safe_url(url) else ""
        where = f"Zoho {response.request.method} {safe_url(url)}{redirected} answered HTTP {status}"
        kwargs = {"code": code, "zoho_message": message, "status_code": status, "job_id": job_id}
        if status == 401 and "Authorization" not in response.request.headers:
            raise ZohoApiError(
                f"{where}: {request_target(response.url or url).host!r} is not a Zoho host of this connection, so "
                "it was not sent the token, and it demands authorisation", **kwargs)
        if code == "OAUTH_SCOPE_MISMATCH":
            raise ZohoScopeError(
                f"{where} OAUTH_SCOPE_MISMATCH: the refresh token lacks the scope this call needs; "
                f"generate a new refresh token with {_SCOPE_HINT}", **kwargs)
        if status == 401 or code in _TOKEN_REJECTED_CODES:
            raise ZohoTokenRejectedError(
                f"{where} {code}: Zoho rejected a freshly minted token too ({message}); check that the "
                "connection's data centre matches the account", **kwargs)
        if code == "RESOURCE_NOT_FOUND" or status == 404:
            raise ZohoNotFoundError(f"{where} {code}: {message}", **kwargs)
        if status == 429:
            raise ZohoRateLimitError(
                f"{where}: still rate limited after {self.retry_limit} retries ({code or 'no code'})", **kwargs)
        if status >= 500:
            raise ZohoServerError(
                f"{where}: Zoho kept failing after {self.retry_limit} retries ({code or 'no code'}: {message})",
                **kwargs)
        raise ZohoApiError(f"{where} {code or ''}: {message}".rstrip(": "), **kwargs)

    # --- Bulk Write -----------------------------------------------------------------------------

    def get_bulk_write_job(self, job_id: str) -> dict[str, Any]:
        """Job details with every status normalised (``IN PROGRESS`` == ``INPROGRESS``).

        Transport failures end as :class:`ZohoConnectionError` (transient), bodies of the wrong shape as
        :class:`ZohoMalformedResponseError`; both name the job.
        """
        try:
            # Quoted: a job id from a template (dag_run.conf) must not walk to another API path.
            response = self.request("GET", f"crm/bulk/v8/write/{quote(str(job_id), safe='')}")
            body = _json_body(response, expected=_JOB_DETAILS)
            if isinstance(body, dict) and isinstance(body.get("data"), list) and body["data"]:
                body = body["data"][0]  # tolerate the wrapped shape of other Bulk APIs
            return bulk_job.normalise_job(body)
        except ZohoBulkError as exc:
            raise exc.with_context(job_id=job_id) from None

    def upload_bulk_write_file(self, path: str | os.PathLike[str], *, file_name: str | None = None) -> str:
        """Upload a zipped CSV for a Bulk Write job; returns Zoho's ``file_id`` for :meth:`create_bulk_write_job`.

        The zip goes to the data centre's upload host (``content.zohoapis.<tld>``, or the overridden API
        domain itself) as the multipart part ``file``, with the headers ``feature: bulk-write`` and
        ``X-CRM-ORG`` (the connection extra ``org_id``, Zoho's zgid). It is streamed from disk, never read
        whole: the body is a file-like object of known length, so ``Content-Length`` is sent, and it is
        rewound before every attempt.

        An upload is safe to repeat (a repeated one only leaves an unused file at Zoho), so it goes through
        the hook's usual retries: connection drops, 429 and 5xx, bounded and logged; one token refresh on 401.
        ``FILE_TOO_LARGE`` (413) and ``INVALID_FILE_FORMAT`` (400) raise :class:`ZohoApiError` with Zoho's
        code and the file's name: they are not transient, the file has to change.

        :param path: the zip on local disk.
        :param file_name: the name Zoho is told (default: the file's base name).
        """
        name = file_name or os.path.basename(os.fspath(path))
        org_id = self.settings.org_id
        if not org_id or not str(org_id).strip():
            raise ZohoConfigurationError(
                f"Zoho connection {self.zoho_conn_id!r} has no org_id: Bulk Write uploads must name the organisation "
                "(its zgid, from Zoho's Organization API or CRM's Setup > Company Details) in the connection extra "
                "\"org_id\"", file_name=name)
        url = self.endpoints.upload_url
        try:
            body = _MultipartFileBody(path, name)
        except OSError as exc:
            raise ZohoConfigurationError(f"cannot read the file to upload: {exc.strerror or type(exc).__name__}",
                                         file_name=name) from None
        with contextlib.closing(body):
            log.info("Uploading %s (%d bytes) to %s for a Bulk Write job", name, body.file_size, safe_url(url))
            try:
                self._check_host(url)
                response = self._send(
                    "POST", url, attach_token=True, data=body,
                    headers={"Content-Type": body.content_type, "feature": "bulk-write",
                             "X-CRM-ORG": str(org_id).strip()})
                self._raise_for_upload_error(response, url, name, body.file_size)
                payload = _json_body(response, expected=_UPLOADED)
            except ZohoBulkError as exc:
                raise exc.with_context(file_name=name) from None
        details = payload.get("details") if isinstance(payload, dict) else None
        file_id = details.get("file_id") if isinstance(details, dict) else None
        if not _is_id(file_id):
            raise ZohoMalformedResponseError(
                f"expected {_UPLOADED} from Zoho POST {safe_url(url)}, got no details.file_id",
                status_code=response.status_code, file_name=name)
        log.info("Uploaded %s: Zoho file id %s", name, file_id)
        return str(file_id)

    def _raise_for_upload_error(self, response: requests.Response, url: str, name: str, size: int) -> None:
        """Zoho's upload refusals, explained: the file has to change (or the connection's org_id)."""
        if response.status_code < 400:
            return
        body = _json_or_none(response) or {}
        code = body.get("code")
        message = body.get("message") or response.reason
        status = response.status_code
        kwargs = {"zoho_message": message, "status_code": status, "file_name": name}
        if status == 413 or code == "FILE_TOO_LARGE":
            raise ZohoApiError(
                f"Zoho refused the upload of {name!r} ({size} bytes) with HTTP {status} FILE_TOO_LARGE ({message}): "
                f"a Bulk Write file may be at most {_UPLOAD_LIMIT_MB} MB zipped; split the rows into smaller files",
                code=code or "FILE_TOO_LARGE", **kwargs)
        if code == "INVALID_FILE_FORMAT":
            raise ZohoApiError(
                f"Zoho refused the upload of {name!r} with HTTP {status} INVALID_FILE_FORMAT ({message}): the file "
                "must be a zip holding one CSV", code=code, **kwargs)
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
        if status < 500 and status not in (401, 429) and details.get("header") == "X-CRM-ORG":
            raise ZohoApiError(
                f"Zoho refused the upload of {name!r} with HTTP {status} {code} ({message}): check the connection "
                "extra \"org_id\" (the organisation's zgid)", code=code, **kwargs)
        self._raise_for_zoho_error(response, url)

    def create_bulk_write_job(
        self,
        *,
        module: str,
        operation: str,
        file_id: str,
        find_by: str | None = None,
        field_mappings: list[dict[str, Any]] | None = None,
        ignore_empty: bool = False,
        callback: dict[str, Any] | None = None,
    ) -> str:
        """Create a Bulk Write job over an uploaded file (:meth:`upload_bulk_write_file`); returns its job id.

        :param operation: ``insert``, ``update`` or ``upsert``; the last two need ``find_by`` (the field
            that finds the existing record, such as ``Email``).
        :param field_mappings: ``[{"api_name": "Last_Name", "index": 0}, ...]``; without them Zoho maps
            columns by their CSV header.
        :param callback: ``{"url": ..., "method": "post"}``, called by Zoho when the job ends.

        Creating a job is not idempotent: a repeated create makes a second job that writes the same rows
        again. So this call retries only what cannot have reached Zoho, or what Zoho refused without doing:

        * a connection that could not be opened (refused, name not resolved, connect timeout);
        * HTTP 429 (Zoho refused it; waits ``Retry-After`` when given), within ``retry_limit``;
        * one token refresh on 401 ``INVALID_TOKEN`` (Zoho refused it).

        A 5xx answer, a read timeout, or a connection dropped once the request was on its way are *not*
        retried: Zoho may have created the job. They raise :class:`ZohoServerError` or
        :class:`ZohoConnectionError` saying so; look at the org's Bulk Write jobs before creating it again.
        """
        if operation not in _WRITE_OPERATIONS:
            raise ZohoConfigurationError(
                f"Bulk Write operation must be one of {', '.join(_WRITE_OPERATIONS)}, not {operation!r}")
        if operation in ("update", "upsert") and not find_by:
            raise ZohoConfigurationError(f"a Bulk Write {operation} needs find_by (the field that finds the "
                                         "existing record, such as Email or a unique field)")
        if not module or not file_id:
            raise ZohoConfigurationError("a Bulk Write job needs a module and the file_id of an uploaded file")
        resource: dict[str, Any] = {"type": "data", "module": {"api_name": module}, "file_id": str(file_id)}
        if find_by:
            resource["find_by"] = find_by
        if field_mappings:
            resource["field_mappings"] = [dict(mapping) for mapping in field_mappings]
        request: dict[str, Any] = {"operation": operation, "character_encoding": "UTF-8",
                                   "ignore_empty": bool(ignore_empty), "resource": [resource]}
        if callback:
            request["callback"] = dict(callback)
        url = self._url("crm/bulk/v8/write")
        self._check_host(url)
        response = self._send_not_repeatable("POST", url, json=request)
        status = response.status_code
        if status >= 500:
            body = _json_or_none(response) or {}
            raise ZohoServerError(
                f"Zoho POST {safe_url(url)} answered HTTP {status} ({body.get('code') or 'no code'}: "
                f"{body.get('message') or response.reason}) to the creation of a Bulk Write job for file {file_id}; "
                "not retried, since the job may have been created: look at the org's Bulk Write jobs before "
                "creating it again", code=body.get("code"), zoho_message=body.get("message"), status_code=status)
        if status >= 400:
            body = _json_or_none(response) or {}
            details = body.get("details") if isinstance(body.get("details"), dict) else {}
            field = details.get("api_name") or details.get("param_name")
            if status == 400 and body.get("code") and field:
                raise ZohoApiError(
                    f"Zoho refused the Bulk Write job for file {file_id} ({module}, {operation}): {body['code']} on "
                    f"{field}: {body.get('message') or response.reason}", code=body["code"],
                    zoho_message=body.get("message"), status_code=status)
            self._raise_for_zoho_error(response, url)
        payload = _json_body(response, expected=_WRITE_JOB_CREATED)
        items = payload.get("data") if isinstance(payload, dict) else None
        item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else payload
        details = item.get("details") if isinstance(item, dict) else None
        job_id = details.get("id") if isinstance(details, dict) else None
        if not _is_id(job_id):
            raise ZohoMalformedResponseError(
                f"expected {_WRITE_JOB_CREATED} from Zoho POST {safe_url(url)}, got no details.id (the job may "
                "have been created: look at the org's Bulk Write jobs)", status_code=status)
        log.info("Created Bulk Write job %s (%s into %s) for file %s", job_id, operation, module, file_id)
        return str(job_id)

    def _send_not_repeatable(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """:meth:`_send` for a request that must not be done twice: retries only when Zoho cannot have
        acted on it (see :meth:`create_bulk_write_job`)."""
        attempt = 0
        refreshed = False
        while True:
            try:
                response, sent_token = self._send_following_redirects(
                    method, url, attach_token=True, stream=False, headers=None, **kwargs)
            except _TRANSPORT_ERRORS as exc:
                if not _never_sent(exc):
                    raise ZohoConnectionError(
                        f"Zoho {method} {safe_url(url)}: the connection failed after the request was sent "
                        f"({type(exc).__name__}); not retried, since Zoho may have acted on it: look at the org's "
                        "Bulk Write jobs before creating it again") from None
                if attempt >= self.retry_limit:
                    raise ZohoConnectionError(
                        f"Zoho {method} {safe_url(url)} failed after {attempt + 1} attempts: {type(exc).__name__} "
                        "(the connection could not be opened)") from None
                self._sleep_before_retry(attempt, f"{type(exc).__name__} before the request was sent", method, url)
                attempt += 1
                continue
            status = response.status_code
            if status == 401 and sent_token and not refreshed:
                code = (_json_or_none(response) or {}).get("code")
                if code in _TOKEN_REJECTED_CODES or code is None:
                    log.warning("Zoho rejected the access token (%s); minting a new one and retrying once", code)
                    self._forget_token(sent_token)
                    refreshed = True
                    continue
            if status == 429 and attempt < self.retry_limit:
                retry_after = response.headers.get("Retry-After")
                response.close()
                self._sleep_before_retry(attempt, "HTTP 429 (refused, not done)", method, url, retry_after)
                attempt += 1
                continue
            return response

    # --- Bulk Read ------------------------------------------------------------------------------

    def create_bulk_read_job(
        self,
        module: str,
        *,
        fields: list[str] | None = None,
        criteria: dict[str, Any] | None = None,
        cvid: str | None = None,
        page: int | None = None,
        page_token: str | None = None,
    ) -> str:
        """Create the Bulk Read job of one page of ``module``'s export; returns its job id.

        ``page_token`` (from the previous page's job, valid 24 hours) wins over ``page``. A 429 after the
        hook's retries means the org's limit of concurrent bulk jobs (about 10) is reached: the error says so.
        """
        query: dict[str, Any] = {"module": {"api_name": module}}
        if fields:
            query["fields"] = list(fields)
        if criteria:
            query["criteria"] = criteria
        if cvid:
            query["cvid"] = str(cvid)
        if page_token:
            query["page_token"] = page_token
        else:
            query["page"] = int(page or 1)
        try:
            response = self.request("POST", "crm/bulk/v8/read", json={"query": query})
        except ZohoRateLimitError as exc:
            raise ZohoRateLimitError(
                f"{exc.message}; Zoho admits about 10 bulk jobs in progress per org: cap the tasks that create "
                "them with an Airflow pool", code=exc.code, zoho_message=exc.zoho_message,
                status_code=exc.status_code) from None
        body = _json_body(response, expected=_READ_JOB_CREATED)
        items = body.get("data") if isinstance(body, dict) else None
        item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else body
        details = item.get("details") if isinstance(item, dict) else None
        job_id = details.get("id") if isinstance(details, dict) else None
        if not isinstance(job_id, str | int) or isinstance(job_id, bool) or not str(job_id):
            raise ZohoMalformedResponseError(
                f"expected {_READ_JOB_CREATED} from Zoho POST crm/bulk/v8/read, got no data[0].details.id")
        return str(job_id)

    def get_bulk_read_job(self, job_id: str) -> dict[str, Any]:
        """Bulk Read job details (Zoho wraps them in ``data``), its ``state`` normalised into ``status``."""
        try:
            response = self.request("GET", f"crm/bulk/v8/read/{quote(str(job_id), safe='')}")
            body = _json_body(response, expected=_JOB_DETAILS)
            if isinstance(body, dict) and isinstance(body.get("data"), list):
                if not body["data"]:
                    raise ZohoMalformedResponseError(f"expected {_JOB_DETAILS}, got an empty data list")
                body = body["data"][0]
            return bulk_job.normalise_read_job(body)
        except ZohoBulkError as exc:
            raise exc.with_context(job_id=job_id) from None

    @contextlib.contextmanager
    def stream_download(self, url: str, *, job_id: str | None = None) -> Iterator[Download]:
        """Open ``url`` for streaming; yields a :class:`Download` to iterate for byte chunks.

        Never holds the body in memory. Retries (connection errors, 429, 5xx, one token refresh)
        happen only before the first byte. Error bodies (expired link, JSON or HTML instead of a
        file) raise before anything is yielded.
        """
        try:
            if isinstance(url, str) and url.startswith("/"):  # Bulk Read gives a path on the API domain
                url = self._url(url)
            self._check_host(url)
            response = self._send("GET", url, attach_token=True, stream=True)
        except ZohoBulkError as exc:
            raise exc.with_context(job_id=job_id) from None
        try:
            if response.status_code >= 400 or _looks_like_error_body(response):
                body = _json_or_none(response) or {}
                if _is_expired_link(body):
                    raise DownloadLinkExpiredError(
                        f"Zoho says the download link is no longer valid ({body.get('x-info') or body.get('info')}); "
                        "fetch the job details again for a fresh link", job_id=job_id)
                if response.status_code >= 400:
                    self._raise_for_zoho_error(response, url, job_id=job_id)
                raise DownloadError(
                    f"{safe_url(url)} answered with {response.headers.get('Content-Type')!r} instead of a zip: "
                    f"{_excerpt(response)}", job_id=job_id)
            yield Download(response, url, self.chunk_size, job_id)
        finally:
            response.close()

    # --- UI ---------------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """Mint a token (or reuse the cached one) and say which data centre answered."""
        try:
            self.get_access_token()
        except Exception as exc:  # the UI shows the message; secrets are never part of it
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"Signed in to Zoho data centre {self.endpoints.data_center!r} ({self.endpoints.accounts_url})"


class _MultipartFileBody:
    """A ``multipart/form-data`` body with one part, ``file``, read from disk while it is sent.

    requests sends an object with ``read`` chunk by chunk, and takes its ``Content-Length`` from
    ``len()``; memory stays at one chunk whatever the file's size. :meth:`rewind` starts it over for
    a retry.
    """

    def __init__(self, path: str | os.PathLike[str], file_name: str,
                 content_type: str = "application/zip") -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        # As browsers (and urllib3) escape a file name inside the quoted header parameter.
        quoted = file_name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        self._head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{quoted}\"\r\n"
                      f"Content-Type: {content_type}\r\n\r\n").encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode("ascii")
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close(), after the request
        try:
            self.file_size = os.fstat(self._file.fileno()).st_size
        except OSError:
            self._file.close()
            raise
        self._length = len(self._head) + self.file_size + len(self._tail)
        self._position = 0

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:  # requests treats an iterable with a length as a stream
        while chunk := self.read(1 << 16):
            yield chunk

    def tell(self) -> int:
        return self._position

    def rewind(self) -> None:
        self._file.seek(0)
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._length - self._position
        out = bytearray()
        while len(out) < size and self._position < self._length:
            want = size - len(out)
            head_end = len(self._head)
            file_end = head_end + self.file_size
            if self._position < head_end:
                piece = self._head[self._position:self._position + want]
            elif self._position < file_end:
                piece = self._file.read(min(want, file_end - self._position))
                if not piece:
                    raise OSError(f"the file being uploaded shrank to {self._position - head_end} bytes "
                                  f"while it was sent (it had {self.file_size})")
            else:
                start = self._position - file_end
                piece = self._tail[start:start + want]
            out += piece
            self._position += len(piece)
        return bytes(out)

    def close(self) -> None:
        self._file.close()


def _never_sent(exc: BaseException) -> bool:
    """Whether a transport failure happened before any byte of the request left: the connection could
    not be opened (refused, unresolvable name, connect timeout). Anything else may have reached Zoho."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        # urllib3's NewConnectionError (refused, name resolution) derives from ConnectTimeoutError.
        if isinstance(current, urllib3.exceptions.ConnectTimeoutError):
            return True
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return False


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and bool(str(value))


class _HandRedirectSession(requests.Session):
    """A session that never reads a redirect itself: the hook follows every hop by hand, each read by
    :func:`request_target`. Even with ``allow_redirects=False`` requests parses the ``Location`` with its
    own parser to fill ``Response.next``, and a malformed one (a port out of range) escapes as a bare
    ``ValueError`` from inside ``request()``."""

    def resolve_redirects(self, resp: requests.Response, req: requests.PreparedRequest, **kwargs: Any
                          ) -> Iterator[Any]:
        return iter(())


def _auth_error(error: str | None, dc: str, accounts_url: str) -> ZohoAuthError:
    if error == "invalid_code":
        return InvalidRefreshTokenError(
            f"Zoho rejected the refresh token (invalid_code): it is wrong, revoked, or was issued by another "
            f"data centre than {dc!r} ({accounts_url}); generate a new one in Zoho's API console",
            error=error)
    if error == "invalid_client":
        return InvalidClientError(
            f"Zoho does not know this client id (invalid_client) at {accounts_url}: most often the connection's "
            f"data centre ({dc!r}) is not the one the client was registered in", error=error)
    if error == "invalid_client_secret":
        return InvalidClientSecretError(
            "Zoho rejected the client secret (invalid_client_secret): it does not belong to this client id",
            error=error)
    return ZohoAuthError(f"Zoho refused to mint an access token: {error or 'no access_token in the answer'}",
                         error=error)


def _json_or_none(response: requests.Response, *, peek: bool = False) -> dict | None:
    """The JSON body as a dict, or None; ``peek`` reads at most 64 KiB (safe on streamed responses)."""
    try:
        if response.raw is not None and response._content_consumed is False:  # type: ignore[attr-defined]
            raw = response.raw.read(65536, decode_content=True)
            response._content = raw  # type: ignore[attr-defined]
            response._content_consumed = True  # type: ignore[attr-defined]
        data = response.json()
    except ValueError:
        return None
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def _json_body(response: requests.Response, *, expected: str) -> Any:
    """The JSON of a successful answer, or :class:`ZohoMalformedResponseError` saying what came instead."""
    where = f"from Zoho {response.request.method} {safe_url(response.url)}"
    content_type = response.headers.get("Content-Type", "")
    if not response.content:
        raise ZohoMalformedResponseError(
            f"expected {expected} {where}, got an empty answer (HTTP {response.status_code})",
            status_code=response.status_code)
    try:
        return response.json()
    except ValueError:
        kind = ("HTML" if "html" in content_type.lower() or response.content.lstrip()[:1] == b"<"
                else "a body that is not JSON")
        raise ZohoMalformedResponseError(
            f"expected {expected} {where}, got {kind} (HTTP {response.status_code}, Content-Type "
            f"{content_type!r}): {_excerpt(response)}", status_code=response.status_code) from None


def _looks_like_error_body(response: requests.Response) -> bool:
    content_type = response.headers.get("Content-Type", "").lower()
    return content_type.startswith(("application/json", "text/html", "text/plain", "text/xml"))


def _is_expired_link(body: dict) -> bool:
    text = f"{body.get('info', '')} {body.get('x-info', '')}".lower()
    return "link not valid" in text or "expired" in text


def _excerpt(response: requests.Response) -> str:
    try:
        text = (response._content or b"")[:200].decode("utf-8", "replace")  # type: ignore[attr-defined]
        if not text:
            text = response.raw.read(200, decode_content=True).decode("utf-8", "replace")
    except Exception:
        return "(unreadable body)"
    return " ".join(text.split())[:200]
