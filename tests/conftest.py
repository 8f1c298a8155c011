"""Shared test set-up. Each server the tests need is started by a fixture module of its own.

Airflow reads its configuration when first imported, which happens while pytest collects the test
modules, so the isolated AIRFLOW_HOME is set here at import time, before any test module loads.
"""

import os
import tempfile
from pathlib import Path

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
