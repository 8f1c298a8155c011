"""Zoho data centres: where to sign in, where to call, and which hosts may ever see the token.

A Zoho token works only in the data centre that issued it, and it is a bearer credential: whoever
receives it can act as the user. So the set of hosts allowed to receive it is computed once, here,
from the connection, and every request checks against it. Facts from
``shared/reference/zoho-bulk-api.md`` section 1; hosts marked unconfirmed there can be added with the
connection's ``download_hosts`` or the URL overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from airflow_provider_zohobulk.errors import ZohoConfigurationError

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


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _base(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ZohoConfigurationError(f"{url!r} is not an http(s) URL")
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

    def may_receive_token(self, url: str) -> bool:
        """Whether the token may be sent to ``url``: one of :attr:`token_hosts` (exact host name, any
        port), over https unless the connection names that host with ``http://`` itself. So a redirect
        from a Zoho host to ``http://`` never carries the token in clear text."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if host not in self.token_hosts:
            return False
        return parts.scheme.lower() == "https" or (parts.scheme.lower() == "http" and host in self.plain_http_hosts)


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
    api_host = _host(dc_api)
    suffix = api_host.removeprefix("www.")
    hosts = {
        api_host,
        f"sandbox.{suffix}",
        f"developer.{suffix}",
        upload_host,
        "upload.zoho.com",
        *download,
        _host(api),
        _host(accounts),
    }
    if isinstance(download_hosts, str):
        download_hosts = download_hosts.split(",")
    plain_http = {_host(url) for url in (api, accounts) if urlsplit(url).scheme.lower() == "http"}
    for entry in (h.strip().lower() for h in (download_hosts or ()) if h and h.strip()):
        # A bare host name gets the token over https only; "http://host" opts that host into plain http.
        host = _host(entry) if "://" in entry else entry
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
