"""pytest fixtures for the sandbox, registered as a ``pytest11`` entry point of this package.

Any project with the package installed gets ``zoho_sandbox`` (fresh per test),
``zoho_sandbox_session`` (one per session; calling ``.reset()`` between tests is the caller's
choice) and ``zoho_sandbox_connection`` (a fresh sandbox plus ``AIRFLOW_CONN_ZOHO_CRM_DEFAULT``
pointing at it). Each yields the in-process sandbox; its ``client()`` drives it over HTTP with its
admin token already set. They serve zips from bytes only: a test serving a zip by path starts its own
``ZohoSandbox(files_dir=...)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_zohobulk.sandbox.server import ZohoSandbox


@pytest.fixture
def zoho_sandbox() -> Iterator[ZohoSandbox]:
    with ZohoSandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def zoho_sandbox_session() -> Iterator[ZohoSandbox]:
    with ZohoSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def zoho_sandbox_connection(zoho_sandbox: ZohoSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[ZohoSandbox]:
    for name, value in zoho_sandbox.airflow_connection_env().items():
        monkeypatch.setenv(name, value)
    yield zoho_sandbox
