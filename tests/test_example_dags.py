"""The example DAGs: import cleanly with no network I/O at parse time, and run with `airflow dags test`."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import duckdb
import pytest

from tests.fixtures.airflow_env import REPO, airflow_cli

EXAMPLES = REPO / "dags"


def test_example_dags_import_without_network(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    def no_network(*args, **kwargs):
        raise AssertionError("a DAG opened a network connection at parse time")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) >= {"zoho_bulk_write_result", "zoho_bulk_write_wait_and_load",
                                "zoho_bulk_write_downstream"}
    trigger_form = bag.dags["zoho_bulk_write_result"].params
    assert "job_id" in trigger_form and "destination" in trigger_form
    assert bag.dags["zoho_bulk_write_result"].timetable.can_be_scheduled is False
    waiting = bag.dags["zoho_bulk_write_wait_and_load"]
    assert waiting.get_task("wait_for_job").deferrable is True
    assert waiting.get_task("wait_for_job").downstream_task_ids == {"load_to_object_storage", "load_to_warehouse"}


@pytest.mark.airflow_e2e
@pytest.mark.slow
def test_example_dag_with_airflow_dags_test(zoho_sandbox, tmp_path):
    """What the README's demo does: the example DAG, Airflow's CLI runner, the sandbox, real files."""
    job_id = zoho_sandbox.create_job_from_csv(
        ("Last_Name,Email,Company\n" + "".join(f"N{i},e{i}@x.com,Acme\n" for i in range(120))).encode())
    home = tmp_path / "airflow"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
        "ZOHOBULK_OUTPUT_DIR": str(tmp_path / "out"),
        **zoho_sandbox.airflow_connection_env(),
    }
    airflow_cli("db", "migrate", env=env)
    conf = {"job_id": job_id, "destination": f"file://{tmp_path}/out", "duckdb_database": f"{tmp_path}/out/z.duckdb"}
    result = airflow_cli("dags", "test", "zoho_bulk_write_result", "-c", json.dumps(conf), env=env)
    output = result.stdout + result.stderr
    assert "Loaded job" in output
    parquet = list(Path(tmp_path / "out" / "bulk_write" / job_id).glob("*.parquet"))
    assert len(parquet) == 1
    with duckdb.connect(f"{tmp_path}/out/z.duckdb") as con:
        count = con.execute("SELECT count(*) FROM zoho_bulk_write_results WHERE job_id = ?", [job_id]).fetchone()[0]
    assert count == 120
    for secret in ("sandbox-client-secret", "sandbox-refresh-token"):
        assert secret not in output
    logs = "".join(p.read_text(errors="replace") for p in home.rglob("*.log")) if home.exists() else ""
    assert "sandbox-client-secret" not in logs
    assert os.environ.get("AIRFLOW_HOME") != str(home)  # the test's own Airflow home stayed untouched
