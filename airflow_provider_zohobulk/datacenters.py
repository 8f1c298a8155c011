"""Zoho data centres: where to sign in, where to call, and which hosts may ever see the token.

A Zoho token works only in the data centre that issued it, and it is a bearer credential: whoever
receives it can act as the user. So the set of hosts allowed to receive it is computed once, here,
from the connection, and every request checks against it. Facts from
``shared/reference/zoho-bulk-api.md`` section 1; hosts marked unconfirmed there can be added with the
connection's ``download_hosts`` or the URL overrides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.util import parse_url

from airflow_provider_zohobulk.errors import DisallowedHostError, ZohoConfigurationError

#: dc -> (accounts server, CRM API domain, upload host, download hosts, CRM web UI)
_DATA_CENTERS: dict[str, tuple[str, str, str, tuple[str, ...], str]] = {
    "us": ("https://accounts.zoho.com", "https://www.zohoapis.com", "content.zohoapis.com",
           ("download-accl.zoho.com", "download.zoho.com"), "https://crm.zoho.com"),
    "eu": ("https://accounts.zoho.eu", "https://www.zohoapis.eu", "content.zohoapis.eu",
           ("download-accl.zoho.eu", "download.zoho.eu"), "https://crm.zoho.eu"),
    "in": ("https://accounts.zoho.in", "https://www.zohoapis.in", "content.zohoapis.in",
           ("download-accl.zoho.in", "download.zoho.in"), "https://crm.zoho.in"),
    "au": ("https://accounts.zoho.com.au", "https://www.zohoapis.com.au", "content.zohoapis.com.au",
           ("download-accl.zoho.com.au", "download.zoho.com.au"), "https://crm.zoho.com.au"),
    "jp": ("https://accounts.zoho.jp", "https://www.zohoapis.jp", "content.zohoapis.jp",
           ("download-accl.zoho.jp", "download.zoho.jp"), "https://crm.zoho.jp"),
    "cn": ("https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn", "content.zohoapis.com.cn",
           ("download-accl.zoho.com.cn", "download.zoho.com.cn"), "https://crm.zoho.com.cn"),
    "ca": ("https://accounts.zohocloud.ca", "https://www.zohoapis.ca", "upload.zohocloud.ca",
           ("download-accl.zohocloud.ca", "download.zohocloud.ca"), "https://crm.zohocloud.ca"),
    "sa": ("https://accounts.zoho.sa", "https://www.zohoapis.sa", "files.zoho.sa",
           ("download-accl.zoho.sa", "download.zoho.sa"), "https://crm.zoho.sa"),
    # uk: the API domain is unconfirmed; an explicit api_domain override wins.
    "uk": ("https://accounts.zoho.uk", "https://www.zohoapis.uk", "content.zohoapis.uk",
           ("download-accl.zoho.uk", "download.zoho.uk"), "https://crm.zoho.uk"),
}

DATA_CENTER_CODES: tuple[str, ...] = tuple(_DATA_CENTERS)


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
#: A host name or IPv4 literal as it reaches the socket: letters, digits, dots, hyphens, underscores.
_HOST_NAME = re.compile(r"[a-z0-9._-]+")
_IPV6_LITERAL = re.compile(r"[0-9a-f:.]+")
_MAX_DESCRIBED = 200


def safe_url(url: object) -> str:
    """The URL for logs and messages: no query or fragment (pre-signed links carry signatures there),
    no user information, control characters escaped, at most 200 characters. Safe on any input."""
    text = re.split(r"[?#]", str(url), maxsplit=1)[0]
    text = re.sub(r"^([^/]*//)[^/\\]*@", r"\1...@", text)
    text = "".join(char if " " <= char < "\x7f" else ascii(char)[1:-1] for char in text)
    return text if len(text) <= _MAX_DESCRIBED else text[:_MAX_DESCRIBED] + "..."


@dataclass(frozen=True)
class RequestTarget:
    """Where a request for a URL really goes, read by the same code that will connect to it."""

    #: The URL exactly as requests sends it (prepared: IDNA host, quoted path); request this one.
    url: str
    scheme: str
    #: Lower case; an IPv6 literal without its brackets, as ``urlsplit`` spells it.
    host: str
    port: int | None


def request_target(url: object, *, role: str = "the URL") -> RequestTarget:
    """Read ``url`` the way requests and urllib3 will when they connect, or refuse it.

    Parsers disagree about odd URLs: ``urlsplit`` reads ``http://a\\@b/`` as host ``b`` while urllib3
    connects to ``a``. So anything that lets two readings differ is refused outright with
    :class:`DisallowedHostError` (backslashes, user information, whitespace, control or non-ASCII
    characters, percent-escapes in the host, malformed IPv6 literals, invalid ports, schemes other
    than http(s)), and the host of what is left is taken from the prepared request, checked against
    both parsers. ``role`` names the URL in the message ("the redirect Location").
    """
    if not isinstance(url, str):
        raise DisallowedHostError(f"refusing {role} {safe_url(url)!r}: it is not a URL string "
                                  f"(got {type(url).__name__})")

    def refuse(problem: str) -> DisallowedHostError:
        return DisallowedHostError(f"refusing {role} {safe_url(url)!r}: {problem}")

    _refuse_ambiguous_characters(url, role)
    scheme = _SCHEME.match(url)
    if scheme is None:
        raise refuse("it has no scheme; expected an http:// or https:// URL")
    if scheme.group(1).lower() not in ("http", "https"):
        raise refuse(f"scheme {scheme.group(1).lower()!r} is not http or https")
    rest = url[scheme.end():]
    if not rest.startswith("//"):
        raise refuse("it has no host (expected scheme://host/...)")
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    if "@" in authority:
        raise refuse("it carries user information ('user@' before the host)")
    if "%" in authority:
        raise refuse("it has percent-escapes in the host")
    prepared = requests.PreparedRequest()
    try:
        prepared.prepare_url(url, None)
        connected = parse_url(prepared.url)
        split = urlsplit(prepared.url)
        split_port = split.port
    except (requests.RequestException, ValueError):  # urllib3's LocationParseError is a ValueError
        raise refuse("its host or port cannot be parsed (malformed IPv6 literal or port out of range?)") from None
    host = (connected.host or "").lower()
    bare_host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare_host or bare_host != (split.hostname or "") or connected.port != split_port:
        raise refuse("HTTP libraries disagree about its host")
    if not (_IPV6_LITERAL.fullmatch(bare_host) if host.startswith("[") else _HOST_NAME.fullmatch(host)):
        raise refuse("its host contains characters no host name has")
    if _port_written(authority) == 0:
        raise refuse("port 0 is not a port")
    return RequestTarget(url=prepared.url, scheme=connected.scheme or "", host=bare_host, port=connected.port)


def redirect_target(current: RequestTarget, location: str) -> RequestTarget:
    """The next hop of a redirect from ``current``, read and refused exactly as a URL given directly.

    The characters are checked on ``location`` as received, before ``urljoin`` (whose ``urlsplit``
    silently drops tabs and newlines) can hide them."""
    role = "the redirect Location"
    _refuse_ambiguous_characters(location, role)
    try:
        joined = urljoin(current.url, location)
    except ValueError:  # urlsplit's "Invalid IPv6 URL": let request_target say what is wrong
        joined = location
    return request_target(joined, role=role)


def _refuse_ambiguous_characters(url: str, role: str) -> None:
    """Characters that parsers treat differently (drop, stop at, re-encode) have no place in a URL."""
    if all(" " < char < "\x7f" and char != "\\" for char in url):
        return
    if any(char.isspace() or char < " " or char == "\x7f" for char in url):
        problem = "it contains whitespace or a control character"
    elif any(char >= "\x7f" for char in url):
        problem = "it contains a non-ASCII character (a Zoho URL is plain ASCII)"
    else:
        problem = "it contains a backslash, which HTTP libraries read in different ways"
    raise DisallowedHostError(f"refusing {role} {safe_url(url)!r}: {problem}")


def _port_written(authority: str) -> int | None:
    """The port as written after the host (urllib3 drops ``:0`` silently, which would hide it)."""
    match = re.search(r":(\d+)$", authority)
    return int(match.group(1)) if match else None


def _configured_target(url: str) -> RequestTarget:
    """A URL from the connection, read as :func:`request_target` reads every URL the hook requests."""
    try:
        return request_target(url)
    except DisallowedHostError as exc:
        raise ZohoConfigurationError(f"{safe_url(url)!r} is not an http(s) URL a token may be sent to: "
                                     f"{exc.message}") from None


def _base(url: str) -> str:
    url = url.strip().rstrip("/")
    _configured_target(url)
    return url


@dataclass(frozen=True)
class ZohoEndpoints:
    """Resolved URLs for one connection, and the hosts allowed to receive its access token."""

    data_center: str
    accounts_url: str
    api_domain: str
    upload_url: str
    crm_web_url: str
    token_hosts: frozenset[str]
    #: Hosts the connection itself names with an ``http://`` URL (a local sandbox): the only ones that
    #: may receive the token without TLS.
    plain_http_hosts: frozenset[str] = frozenset()

    @property
    def token_url(self) -> str:
        return f"{self.accounts_url}/oauth/v2/token"

    def may_receive_token(self, url: str | RequestTarget) -> bool:
        """The one decision of whether the token may be sent to ``url``: one of :attr:`token_hosts`
        (exact host name, any port), over https unless the connection names that host with ``http://``
        itself, so a redirect from a Zoho host to ``http://`` never carries the token in clear text.

        The host is the one requests connects to (:func:`request_target`); a URL it refuses never
        receives the token."""
        if not isinstance(url, RequestTarget):
            try:
                url = request_target(url)
            except DisallowedHostError:
                return False
        if url.host not in self.token_hosts:
            return False
        return url.scheme == "https" or (url.scheme == "http" and url.host in self.plain_http_hosts)


def resolve_endpoints(
    data_center: str | None = "us",
    *,
    accounts_url: str | None = None,
    api_domain: str | None = None,
    download_hosts: str | list[str] | tuple[str, ...] | None = None,
) -> ZohoEndpoints:
    """Build the endpoints of a data centre, with the connection's overrides applied."""
    dc = (data_center or "us").strip().lower()
    if dc not in _DATA_CENTERS:
        raise ZohoConfigurationError(
            f"unknown Zoho data centre {data_center!r}; expected one of {', '.join(DATA_CENTER_CODES)} "
            "(or set accounts_url and api_domain explicitly)"
        )
    dc_accounts, dc_api, upload_host, download, web = _DATA_CENTERS[dc]
    accounts = _base(accounts_url) if accounts_url else dc_accounts
    api = _base(api_domain) if api_domain else dc_api
    api_host = _configured_target(dc_api).host
    suffix = api_host.removeprefix("www.")
    hosts = {
        api_host,
        f"sandbox.{suffix}",
        f"developer.{suffix}",
        upload_host,
        "upload.zoho.com",
        *download,
        _configured_target(api).host,
        _configured_target(accounts).host,
    }
    if isinstance(download_hosts, str):
        download_hosts = download_hosts.split(",")
    plain_http = {target.host for target in map(_configured_target, (api, accounts)) if target.scheme == "http"}
    for entry in (h.strip().lower() for h in (download_hosts or ()) if h and h.strip()):
        # A bare host name gets the token over https only; "http://host" opts that host into plain http.
        host = _configured_target(entry).host if "://" in entry else entry
        hosts.add(host)
        if entry.startswith("http://"):
            plain_http.add(host)
    # Overridden API domains (the local sandbox, a sandbox org) upload to themselves.
    upload_url = f"{api}/crm/v8/upload" if api_domain else f"https://{upload_host}/crm/v8/upload"
    return ZohoEndpoints(
        data_center=dc,
        accounts_url=accounts,
        api_domain=api,
        upload_url=upload_url,
        crm_web_url=web,
        token_hosts=frozenset(hosts),
        plain_http_hosts=frozenset(plain_http),
    )
