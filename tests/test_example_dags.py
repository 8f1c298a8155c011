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
                                "zoho_bulk_write_downstream", "zoho_bulk_write_to_warehouse",
                                "zoho_bulk_write_from_warehouse"}
    assert set(bag.dags["zoho_bulk_write_to_warehouse"].params) == {"job_id", "warehouse_conn_id", "table"}
    trigger_form = bag.dags["zoho_bulk_write_result"].params
    assert "job_id" in trigger_form and "destination" in trigger_form
    assert bag.dags["zoho_bulk_write_result"].timetable.can_be_scheduled is False
    waiting = bag.dags["zoho_bulk_write_wait_and_load"]
    assert waiting.get_task("wait_for_job").deferrable is True
    assert waiting.get_task("wait_for_job").downstream_task_ids == {"load_to_object_storage", "load_to_warehouse"}


def leads_job(sandbox, rows: int) -> str:
    return sandbox.create_job_from_csv(
        ("Last_Name,Email,Company\n" + "".join(f"N{i},e{i}@x.com,Acme\n" for i in range(rows))).encode())


def migrated_airflow_env(home: Path, *connection_envs: dict[str, str], **variables: str) -> dict[str, str]:
    """The environment of an ``airflow`` CLI run on the example DAGs with its own, migrated home."""
    env = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES), **variables}
    for connection_env in connection_envs:
        env.update(connection_env)
    airflow_cli("db", "migrate", env=env)
    return env


@pytest.mark.airflow_e2e
@pytest.mark.slow
def test_example_dag_with_airflow_dags_test(zoho_sandbox, tmp_path):
    """What the README's demo does: the example DAG, Airflow's CLI runner, the sandbox, real files."""
    job_id = leads_job(zoho_sandbox, 120)
    home = tmp_path / "airflow"
    env = migrated_airflow_env(home, zoho_sandbox.airflow_connection_env(), ZOHOBULK_OUTPUT_DIR=str(tmp_path / "out"))
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


@pytest.mark.airflow_e2e
@pytest.mark.slow
def test_warehouse_example_dag_loads_postgres_and_reruns_without_duplicates(zoho_sandbox, postgres_server, tmp_path):
    """The PostgreSQL variant, as a person triggers it: job id, connection and table from the form."""
    job_id = leads_job(zoho_sandbox, 75)
    env = migrated_airflow_env(tmp_path / "airflow", zoho_sandbox.airflow_connection_env(),
                               postgres_server.airflow_conn_env("example_warehouse"))
    conf = {"job_id": job_id, "warehouse_conn_id": "example_warehouse", "table": "public.\"Bulk Results\""}
    for _run in range(2):
        result = airflow_cli("dags", "test", "zoho_bulk_write_to_warehouse", "-c", json.dumps(conf), env=env)
        assert "Loaded job" in result.stdout + result.stderr
    with postgres_server.connect() as con:
        rows = con.execute('SELECT status, count(*) FROM public."Bulk Results" WHERE job_id = %s GROUP BY status',
                           [job_id]).fetchall()
    assert sum(count for _status, count in rows) == 75


@pytest.mark.airflow_e2e
@pytest.mark.slow
def test_bulk_read_example_exports_two_modules_into_parquet_and_sqlite_and_merges_reruns(zoho_sandbox, tmp_path):
    """``zoho_bulk_read_incremental`` as a person runs it for 2026-01-02 with two modules from the form:
    the mapped exports, the day's window, Parquet per page, one merged SQLite table per module."""
    import sqlite3
    from datetime import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    day_start, day_end = datetime.fromisoformat("2026-01-01T00:00:00+00:00"), datetime.fromisoformat(
        "2026-01-02T00:00:00+00:00")
    expected = {}
    for module in ("Leads", "Contacts"):
        zoho_sandbox.seed_module(module, 600, seed=9, modified_from="2025-12-31T12:00:00+00:00",
                                 modified_to="2026-01-02T12:00:00+00:00")  # half of them in the day
        answer = zoho_sandbox.read_records(module, limit=600)
        rows = [dict(zip(answer["fields"], record, strict=True)) for record in answer["records"]]
        expected[module] = [row for row in rows
                            if day_start <= datetime.fromisoformat(row["Modified_Time"]) < day_end]
    zoho_sandbox.configure(bulk_read_per_page=200, bulk_read_downloads_per_minute=None)
    warehouse = tmp_path / "warehouse.db"
    env = migrated_airflow_env(
        tmp_path / "airflow", zoho_sandbox.airflow_connection_env(),
        {"AIRFLOW_CONN_EXAMPLE_SQLITE": json.dumps({"conn_type": "sqlite", "host": str(warehouse)})},
        ZOHOBULK_OUTPUT_DIR=str(tmp_path / "out"))
    conf = {"modules": ["Leads", "Contacts"], "warehouse_conn_id": "example_sqlite"}
    for _run in range(2):  # the same day again: merged on Id, no duplicates
        result = airflow_cli("dags", "test", "zoho_bulk_read_incremental", "2026-01-02", "-c", json.dumps(conf),
                             env=env)
        output = result.stdout + result.stderr
        assert output.count("Read and verified all") == 4  # 2 modules x (Parquet, SQLite)
    for module, rows in expected.items():
        assert 200 < len(rows) < 400
        files = sorted((tmp_path / "out" / "lake" / "bulk_read" / module / "2026-01-01").iterdir())
        assert [path.name for path in files] == [f"{module}-0000{n}.parquet" for n in (1, 2)]
        table = pa.concat_tables([pq.read_table(path) for path in files])
        assert table.select(list(rows[0])).to_pylist() == rows
        columns = ", ".join(f'"{name}"' for name in rows[0])
        with sqlite3.connect(warehouse) as connection:
            stored = connection.execute(f'SELECT {columns} FROM "zoho_{module.lower()}" ORDER BY "Id"').fetchall()
        assert [dict(zip(rows[0], row, strict=True)) for row in stored] == rows
    assert len(zoho_sandbox.read_jobs()) == 2 * 2 * 2 * 2  # runs x modules x destinations x pages
    for secret in ("sandbox-client-secret", "sandbox-refresh-token"):
        assert secret not in output


@pytest.mark.airflow_e2e
@pytest.mark.slow
def test_submit_example_round_trips_postgres_rows_through_zoho_and_reports_per_status(
        zoho_sandbox, postgres_server, tmp_path):
    """``zoho_bulk_write_from_warehouse``: a PostgreSQL query -> upsert Leads by Email -> results back into the
    same PostgreSQL -> a report of rows per status; its counts are the warehouse's, joined to the input."""
    zoho_sandbox.configure(seeded_failure_share=0.0)
    with postgres_server.connect() as con:
        con.execute("DROP TABLE IF EXISTS leads_to_sync")
        con.execute("CREATE TABLE leads_to_sync (id int PRIMARY KEY, last_name text, email text, company text, "
                    "phone text)")
        con.execute("INSERT INTO leads_to_sync SELECT n, CASE WHEN n % 100 = 0 THEN '' ELSE 'Name ' || n END, "
                    "'lead' || n || '@example.com', 'Acme', '0' || n FROM generate_series(1, 30000) AS n")
    env = migrated_airflow_env(tmp_path / "airflow", zoho_sandbox.airflow_connection_env(),
                               postgres_server.airflow_conn_env("example_warehouse"))
    conf = {"warehouse_conn_id": "example_warehouse", "results_table": "zoho_submit_results"}
    result = airflow_cli("dags", "test", "zoho_bulk_write_from_warehouse", "-c", json.dumps(conf), env=env)
    output = result.stdout + result.stderr
    assert "Outcome of 30000 rows in 2 jobs" in output
    with postgres_server.connect() as con:
        by_status = dict(con.execute("SELECT status, count(*) FROM zoho_submit_results GROUP BY status").fetchall())
        # Every 100th lead has no Last_Name: Zoho skips it; the outcome row is the input row it reports on.
        unjoined = con.execute(
            "SELECT count(*) FROM zoho_submit_results r JOIN leads_to_sync l ON l.id = r.row_number "
            "WHERE r.source->>'Email' <> l.email").fetchone()[0]
        skipped_ids = [row[0] for row in con.execute(
            "SELECT row_number FROM zoho_submit_results WHERE status = 'SKIPPED' ORDER BY 1").fetchall()]
    assert by_status == {"ADDED": 29_700, "SKIPPED": 300}
    assert unjoined == 0
    assert skipped_ids == list(range(100, 30_001, 100))
    assert "{'ADDED': 29700, 'SKIPPED': 300}" in output
    assert zoho_sandbox.stats()["jobs"] == 2
    for secret in ("sandbox-client-secret", "sandbox-refresh-token"):
        assert secret not in output
