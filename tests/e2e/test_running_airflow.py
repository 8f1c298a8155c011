"""The wait-and-load example DAG on a real, running Airflow 3, triggered through its REST API.

What only a running deployment shows: the sensor really leaves its worker slot (the task instance is
DEFERRED and its trigger sits in the triggerer), the triggerer polls Zoho and resumes the task, both
loads run in parallel under the LocalExecutor, the Asset event is recorded and schedules the
downstream DAG. The sandbox job is held in each state until the test moves the sandbox clock, so the
sequence ADDED -> IN PROGRESS -> COMPLETED is driven by the test, not raced against start-up times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.sandbox import sample_leads_csv
from tests.fixtures.running_airflow import JOB_STEP_SECONDS, RunningAirflow
from tests.helpers import job_detail_calls

pytestmark = [pytest.mark.airflow_e2e, pytest.mark.slow]

DAG_ID = "zoho_bulk_write_wait_and_load"
DOWNSTREAM_DAG_ID = "zoho_bulk_write_downstream"
TRIGGER_CLASS = "ZohoBulkWriteJobTrigger"
ROWS = 500


def expected_counts(sandbox: Any, job_id: str) -> dict[str, int]:
    """The counts Zoho reports for the job, summed over its files (one here)."""
    totals = {"added_count": 0, "updated_count": 0, "skipped_count": 0, "total_count": 0}
    for resource in sandbox.job_details(job_id)["resource"]:
        for key in totals:
            totals[key] += resource["file"][key]
    return totals


def test_deferred_sensor_then_parallel_loads_then_downstream_dag(running_airflow: RunningAirflow) -> None:
    airflow, sandbox = running_airflow, running_airflow.sandbox
    job_id = sandbox.create_job_from_csv(sample_leads_csv(ROWS, seed=7))
    assert sandbox.job_details(job_id)["status"] == "ADDED"

    run_id = airflow.trigger_dag(DAG_ID, {"job_id": job_id})["dag_run_id"]

    def sensor_instance() -> dict[str, Any]:
        return airflow.task_instances(DAG_ID, run_id)["wait_for_job"]

    # 1. The sensor poked once, saw ADDED, and handed the wait to the triggerer.
    deferred = airflow.wait_for("wait_for_job to be DEFERRED",
                                lambda: (ti := sensor_instance())["state"] == "deferred" and ti, timeout=120)
    assert deferred["trigger"] is not None, deferred
    assert deferred["trigger"]["classpath"].endswith(f".{TRIGGER_CLASS}")

    # 2. IN PROGRESS: the trigger keeps polling, the task stays deferred (no worker slot held).
    sandbox.advance_clock(JOB_STEP_SECONDS)
    assert sandbox.job_details(job_id)["status"] == "IN PROGRESS"
    polls_before = job_detail_calls(sandbox, job_id)
    airflow.wait_for("the trigger to poll the IN PROGRESS job twice",
                     lambda: job_detail_calls(sandbox, job_id) >= polls_before + 2, timeout=60)
    assert sensor_instance()["state"] == "deferred"

    # 3. COMPLETED: the trigger fires, the sensor resumes, both loads run. (Once the scheduler has taken in
    # the deferral: see unsettled_deferrals for the Airflow race this waits out.)
    airflow.wait_for("the scheduler to take in the sensor's deferral",
                     lambda: not airflow.unsettled_deferrals(run_id), timeout=60)
    sandbox.advance_clock(JOB_STEP_SECONDS)
    run = airflow.wait_for_run(DAG_ID, run_id, timeout=180)
    assert run["state"] == "success", airflow.failure_report(DAG_ID, run_id)

    instances = airflow.task_instances(DAG_ID, run_id)
    assert {task: ti["state"] for task, ti in instances.items()} == {
        "wait_for_job": "success", "load_to_object_storage": "success", "load_to_warehouse": "success"}
    # Resumed after deferral, not retried: still the first try.
    assert instances["wait_for_job"]["try_number"] == 1
    # The task's log holds the worker's part and, merged in, the triggerer's part of the wait.
    sensor_log = airflow.task_log(DAG_ID, run_id, "wait_for_job")
    for line in (f"Zoho Bulk Write job {job_id} is ADDED",  # the sensor's own first poke, in the worker
                 "Pausing task as DEFERRED",
                 f"Zoho Bulk Write job {job_id} is IN PROGRESS; checking again",  # the trigger, in the triggerer
                 "Trigger fired event",
                 f"Zoho Bulk Write job {job_id} is COMPLETED"):  # execute_complete, back in a worker
        assert line in sensor_log, f"{line!r} missing from the sensor's log:\n{sensor_log[-5000:]}"

    # The rows landed, matching what Zoho reports for the job.
    counts = expected_counts(sandbox, job_id)
    assert counts["total_count"] == ROWS
    with duckdb.connect(str(airflow.output_dir / "warehouse.duckdb"), read_only=True) as con:
        by_status = dict(con.execute(
            "SELECT status, count(*) FROM zoho_bulk_write_results WHERE job_id = ? GROUP BY status",
            [job_id]).fetchall())
    assert sum(by_status.values()) == counts["total_count"]
    assert by_status.get("ADDED", 0) == counts["added_count"]
    assert by_status.get("UPDATED", 0) == counts["updated_count"]
    assert sum(n for status, n in by_status.items() if status not in ("ADDED", "UPDATED")) == counts["skipped_count"]
    assert counts["skipped_count"] > 0  # the sample has flawed rows: the SKIPPED path was exercised

    parquet_files = sorted(Path(airflow.output_dir, "lake", "bulk_write", job_id).glob("*.parquet"))
    assert parquet_files, f"no Parquet files under {airflow.output_dir}/lake/bulk_write/{job_id}"
    assert sum(pq.ParquetFile(path).metadata.num_rows for path in parquet_files) == ROWS

    # The Asset event names this job and created the downstream DAG's run. Airflow 3.3.2's
    # GET /assets/events answers 500 while a run it created has not started (start_date null fails
    # its response model), so wait for the downstream run to finish before reading the event.
    def finished_downstream_runs() -> list[dict[str, Any]]:
        runs = airflow.api("GET", f"/dags/{DOWNSTREAM_DAG_ID}/dagRuns")["dag_runs"]
        return [run for run in runs if run["run_type"] == "asset_triggered" and run["state"] in ("success", "failed")]
    downstream_runs = airflow.wait_for("the Asset event to trigger a downstream run", finished_downstream_runs,
                                       timeout=120)
    events = airflow.wait_for("the Asset event", lambda: airflow.api("GET", "/assets/events", params={
        "source_dag_id": DAG_ID, "source_run_id": run_id, "source_task_id": "load_to_object_storage"}
                                                                    )["asset_events"], timeout=30)
    assert len(events) == 1, events
    event = events[0]
    assert event["uri"].rstrip("/") == f"file://{airflow.output_dir}/lake/bulk_write"  # Airflow drops the "/"
    assert event["extra"]["job_id"] == job_id
    assert event["extra"]["rows"] == ROWS
    created = [r["run_id"] for r in event["created_dagruns"] if r["dag_id"] == DOWNSTREAM_DAG_ID]
    assert len(created) == 1, event["created_dagruns"]
    downstream = next((run for run in downstream_runs if run["dag_run_id"] == created[0]), None)
    assert downstream is not None, (created, downstream_runs)
    assert downstream["state"] == "success", airflow.failure_report(DOWNSTREAM_DAG_ID, created[0])
    reported = airflow.api(
        "GET", f"/dags/{DOWNSTREAM_DAG_ID}/dagRuns/{created[0]}/taskInstances/report/xcomEntries/return_value",
        params={"deserialize": "true"})["value"]
    assert any(job_id in str(location) for location in reported), reported

    # Nothing the connection holds secret reached any log: four processes' and every task's.
    logs = "".join(path.read_text(errors="replace") for path in airflow.log_dir.rglob("*.log"))
    assert logs, f"no logs under {airflow.log_dir}"
    for secret in (sandbox.client_secret, sandbox.refresh_token):
        assert secret not in logs
