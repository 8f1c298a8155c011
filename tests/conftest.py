"""Shared test set-up. Each server the tests need is started by a fixture module of its own.

Airflow reads its configuration when first imported, which happens while pytest collects the test
modules, so the isolated AIRFLOW_HOME is set here at import time, before any test module loads.
"""

import os
import tempfile
from pathlib import Path

import pytest

_session_dir = Path(tempfile.mkdtemp(prefix="zohobulk-tests-"))
os.environ["AIRFLOW_HOME"] = str(_session_dir / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["ZOHOBULK_TOKEN_CACHE_DIR"] = str(_session_dir / "tokens")
os.environ.setdefault("ZOHOBULK_OUTPUT_DIR", str(_session_dir / "output"))

pytest_plugins = [
    "tests.fixtures.zips",
    "tests.fixtures.staging",
    "tests.fixtures.s3",
    "tests.fixtures.gcs",
    "tests.fixtures.azurite",
    "tests.fixtures.remote_stores",
    "tests.fixtures.postgres",
    "tests.fixtures.airflow_env",
    "tests.fixtures.running_airflow",
    "tests.fixtures.celery_airflow",
]


@pytest.fixture(autouse=True)
def _token_cache_of_this_test(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test gets an empty token cache.

    The cache key holds the accounts URL, so a sandbox started on a port an earlier test's sandbox had
    used would find that sandbox's token, get 401, refresh and retry: correct behaviour, but one more
    request and no token minted in tests that count them (seen in CI, rarely).
    """
    from airflow_provider_zohobulk.hooks import token_cache

    monkeypatch.setenv("ZOHOBULK_TOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tokens")))
    token_cache._caches.clear()
    yield
    token_cache._caches.clear()
