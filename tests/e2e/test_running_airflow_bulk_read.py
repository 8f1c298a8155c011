"""The Bulk Read example DAG on a real, running Airflow 3, triggered through its REST API.

Two modules, exported incrementally by dynamically mapped, deferred tasks into Parquet files and a SQL
warehouse (SQLite here, merged on Id), with Zoho's jobs moved through their states by the test: what a
deployment shows that ``dag.test()`` does not (mapped tasks in parallel under the LocalExecutor, each
deferral through the triggerer, the Asset event of every mapped task).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.fixtures.running_airflow import JOB_STEP_SECONDS, WAREHOUSE_CONN_ID, RunningAirflow

pytestmark = [pytest.mark.airflow_e2e, pytest.mark.slow]

DAG_ID = "zoho_bulk_read_incremental"
MODULES = ["Leads", "Contacts"]
RECORDS = 600
PER_PAGE = 100


def test_two_modules_exported_incrementally_into_parquet_and_a_merged_warehouse(
        running_airflow: RunningAirflow) -> None:
    airflow, sandbox = running_airflow, running_airflow.sandbox
    now = datetime.now(timezone.utc)
    # Records modified over the last five days. The run's data interval is the day before its logical
    # date, three days ago: apart from the interval of the scheduled run that the unpaused DAG also gets
    # (yesterday), which exports into the same warehouse but other files.
    for module in MODULES:
        sandbox.seed_module(module, RECORDS, seed=11, modified_from=(now - timedelta(days=5)).isoformat(),
                            modified_to=(now + timedelta(minutes=5)).isoformat())
    sandbox.configure(bulk_read_per_page=PER_PAGE, bulk_read_downloads_per_minute=None)
    jobs_before = len(sandbox.read_jobs())

    run = airflow.trigger_dag(DAG_ID, {"modules": MODULES, "warehouse_conn_id": WAREHOUSE_CONN_ID},
                              logical_date=now - timedelta(days=3))
    run_id, interval = run["dag_run_id"], (run["data_interval_start"], run["data_interval_end"])
    assert interval[0] and interval[1], run

    def finished() -> dict[str, Any] | None:
        if not airflow.unsettled_deferrals(run_id):  # see there: no job completes while Airflow could race
            sandbox.advance_clock(JOB_STEP_SECONDS)  # every Bulk Read job of the run moves one state on
        current = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        return current if current["state"] in ("success", "failed") else None

    final = airflow.wait_for(f"{DAG_ID} to finish", finished, timeout=420, interval=2.0)
    assert final["state"] == "success", airflow.failure_report(DAG_ID, run_id)

    mapped = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances",
                         params={"task_id_pattern": "export_to"})["task_instances"]
    assert sorted((ti["task_id"], ti["map_index"], ti["state"]) for ti in mapped if ti["map_index"] >= 0) == sorted(
        (task, index, "success") for task in ("export_to_parquet", "export_to_postgres") for index in range(2))

    # Each module's export holds exactly the records modified in the run's data interval.
    window = {"group_operator": "and", "group": [
        {"field": {"api_name": "Modified_Time"}, "comparator": "greater_equal",
         "value": datetime.fromisoformat(interval[0]).isoformat()},
        {"field": {"api_name": "Modified_Time"}, "comparator": "less_than",
         "value": datetime.fromisoformat(interval[1]).isoformat()}]}
    start = datetime.fromisoformat(interval[0].replace("Z", "+00:00")).strftime("%Y-%m-%d")
    for module in MODULES:
        expected = sandbox.read_records(module, criteria=window, fields=["Id"], limit=RECORDS)
        expected_ids = sorted(_ids(expected["records"]))
        assert 0 < len(expected_ids) < RECORDS, (module, len(expected_ids))
        files = sorted(Path(airflow.output_dir, "lake", "bulk_read", module, start).glob("*.parquet"))
        assert len(files) == -(-len(expected_ids) // PER_PAGE), files  # one file per page
        parquet_ids = sorted(i for path in files for i in pq.read_table(path, columns=["Id"]).column("Id").to_pylist())
        assert parquet_ids == expected_ids
        ours = [job["id"] for job in sandbox.read_jobs()[jobs_before:]
                if job["module"] == module and zoho_time(interval[0]) in str(job["criteria"])]
        assert ours, sandbox.read_jobs()[jobs_before:]
        with sqlite3.connect(airflow.output_dir / "warehouse.sqlite") as con:
            marks = ", ".join("?" * len(ours))
            table_ids = sorted(row[0] for row in con.execute(
                f'SELECT "Id" FROM "zoho_{module.lower()}" WHERE _job_id IN ({marks})', ours))
            duplicates = con.execute(f'SELECT count(*) - count(DISTINCT "Id") FROM "zoho_{module.lower()}"').fetchone()
        assert table_ids == expected_ids  # merged on Id: the window's records, each once
        assert duplicates == (0,)

    # The Parquet export's Asset got one event per mapped task, each naming its module and rows.
    events = airflow.wait_for("the Asset events", lambda: airflow.api("GET", "/assets/events", params={
        "source_dag_id": DAG_ID, "source_run_id": run_id, "source_task_id": "export_to_parquet"})["asset_events"],
        timeout=60)
    assert sorted(event["extra"]["module"] for event in events) == sorted(MODULES)
    assert all(event["uri"].startswith(f"file://{airflow.output_dir}/lake/bulk_read") for event in events)


def zoho_time(text: str) -> str:
    """An instant of the data interval as the operator writes it into the criteria: UTC, whole seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).replace(
        microsecond=0).isoformat()


def _ids(records: list[Any]) -> list[str]:
    return [record["Id"] if isinstance(record, dict) else record[0] for record in records]
