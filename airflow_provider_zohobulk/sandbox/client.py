"""A thin client for a sandbox running in another process (the demo, a user's CI, ``--seed-job`` runs).

It mirrors :class:`~airflow_provider_zohobulk.sandbox.server.ZohoSandbox`'s public methods one for one
and sends each as ``POST /_sandbox/<method>`` with JSON keyword arguments; the running sandbox does
the work. Each call carries the admin token the sandbox printed at start (``ZOHO_SANDBOX_ADMIN_TOKEN=...``),
given as ``admin_token`` or read from the ``ZOHO_SANDBOX_ADMIN_TOKEN`` environment variable, so a
script can export the sandbox's printed lines as they are. Standard library only, so a CI script needs
nothing beyond this package.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_zohobulk.errors import ZohoConfigurationError, ZohoConnectionError
from airflow_provider_zohobulk.sandbox.server import ADMIN_TOKEN_ENV, ADMIN_TOKEN_HEADER, encode_admin_value


class SandboxClient:
    """Drive a running sandbox over HTTP; same method names and results as the in-process object."""

    def __init__(self, url: str, *, admin_token: str | None = None, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ZohoConfigurationError(f"{url!r} is not a sandbox URL like http://127.0.0.1:8765")
        admin_token = admin_token or os.environ.get(ADMIN_TOKEN_ENV)
        if not admin_token:
            raise ZohoConfigurationError(
                f"no admin token for the sandbox at {url}: pass admin_token= or set {ADMIN_TOKEN_ENV} to the "
                f"value the sandbox printed at start ({ADMIN_TOKEN_ENV}=...)")
        self._admin_token = admin_token
        self.url = url.rstrip("/")
        self.port = parts.port
        self.timeout = timeout

    def _call(self, method: str, **kwargs: Any) -> Any:
        request = urllib.request.Request(
            f"{self.url}/_sandbox/{method}", data=json.dumps(encode_admin_value(kwargs)).encode(),
            headers={"Content-Type": "application/json", ADMIN_TOKEN_HEADER: self._admin_token}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())["result"]
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("message", "")
            except ValueError:
                detail = ""
            raise ZohoConfigurationError(f"the sandbox at {self.url} refused {method}: {detail or exc}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ZohoConnectionError(f"cannot reach the sandbox at {self.url} for {method}: {exc}") from None

    # Context-manager and lifecycle methods exist so code can treat both kinds alike; the remote
    # process owns its own lifetime.
    def start(self) -> SandboxClient:
        return self

    def stop(self) -> None:
        return None

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def info(self) -> dict[str, Any]:
        return self._call("info")

    def configure(self, **options: Any) -> dict[str, Any]:
        return self._call("configure", **options)

    def connection_extra(self) -> dict[str, Any]:
        return self._call("connection_extra")

    def airflow_connection(self, conn_type: str = "zoho_crm") -> dict[str, Any]:
        return self._call("airflow_connection", conn_type=conn_type)

    def airflow_connection_env(self, conn_id: str = "zoho_crm_default") -> dict[str, str]:
        return self._call("airflow_connection_env", conn_id=conn_id)

    def create_job_from_csv(self, csv_bytes: bytes, **kwargs: Any) -> str:
        return self._call("create_job_from_csv", csv_bytes=csv_bytes, **kwargs)

    def create_job_from_zip(self, zip_bytes_or_path: bytes | str | os.PathLike[str], **kwargs: Any) -> str:
        """A path is opened by the sandbox process itself: it must be under the ``--files-dir`` that
        sandbox was started with (relative paths are taken from there)."""
        return self._call("create_job_from_zip", zip_bytes_or_path=zip_bytes_or_path, **kwargs)

    def job_details(self, job_id: str) -> dict[str, Any] | None:
        return self._call("job_details", job_id=job_id)

    def add_fault(self, kind: str, *, count: int = 1, path_prefix: str | None = None, **params: Any) -> None:
        self._call("add_fault", kind=kind, count=count, path_prefix=path_prefix, **params)

    def clear_faults(self) -> None:
        self._call("clear_faults")

    def advance_clock(self, seconds: float) -> float:
        return self._call("advance_clock", seconds=seconds)

    def stats(self) -> dict[str, Any]:
        return self._call("stats")

    def uploaded_files(self) -> list[dict[str, Any]]:
        """Accepted uploads since the last reset, oldest first (file id, name sent, CSV, records, size)."""
        return self._call("uploaded_files")

    def write_jobs(self) -> list[dict[str, Any]]:
        """Bulk Write jobs created from uploads since the last reset, oldest first."""
        return self._call("write_jobs")

    def revoke_refresh_token(self, token: str) -> None:
        self._call("revoke_refresh_token", token=token)

    def add_client(self, client_id: str, client_secret: str, refresh_token: str) -> None:
        self._call("add_client", client_id=client_id, client_secret=client_secret, refresh_token=refresh_token)

    def reset(self) -> None:
        self._call("reset")

    # --- Bulk Read ---

    def seed_module(self, module: str, records: int, *, seed: int = 0, modified_from: str | None = None,
                    modified_to: str | None = None) -> dict[str, Any]:
        return self._call("seed_module", module=module, records=records, seed=seed, modified_from=modified_from,
                          modified_to=modified_to)

    def read_modules(self) -> dict[str, dict[str, Any]]:
        return self._call("read_modules")

    def read_records(self, module: str, criteria: dict[str, Any] | None = None, fields: list[str] | None = None,
                     offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        return self._call("read_records", module=module, criteria=criteria, fields=fields, offset=offset, limit=limit)

    def create_read_job(self, request: dict[str, Any]) -> str:
        return self._call("create_read_job", request=request)

    def read_jobs(self) -> list[dict[str, Any]]:
        return self._call("read_jobs")

    def read_job_details(self, job_id: str) -> dict[str, Any] | None:
        return self._call("read_job_details", job_id=job_id)
