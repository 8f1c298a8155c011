"""A Bulk Read DAG the operator's tests run with Airflow's own runner (dag.test()): mapped modules, an
incremental window from the data interval, Parquet and SQLite; locations and the connection come from params.

The waits poll: this Airflow's dag.test() drops a deferred task's kwargs when the trigger fires
(apache/airflow#69942), which the operator refuses clearly; the deferred path is tested with the trigger run
inline and the kwargs kept, as Airflow's triggerer does (tests/test_bulk_read_operator.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, CronTriggerTimetable

from airflow_provider_zohobulk.operators.bulk_read import ZohoBulkReadOperator
from airflow_provider_zohobulk.sinks import ObjectStorageSink, SqlSink

FAST_HOOK = {"retry_backoff": 0.01, "max_backoff": 0.05, "retry_limit": 2, "timeout": (5, 30)}
WAITING = {"deferrable": False, "poll_interval": 0.2, "wait_timeout": 120, "hook_kwargs": FAST_HOOK,
           "progress_interval": 0, "incremental": True}

with DAG("zoho_test_bulk_read", schedule=CronTriggerTimetable("@daily", timezone="UTC", interval=timedelta(days=1)),
         start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         catchup=False, params={"lake": "", "warehouse_conn_id": ""}) as bulk_read_dag:
    ZohoBulkReadOperator.partial(
        task_id="to_files", sink=ObjectStorageSink("{{ params.lake }}/{{ task.module }}/{file}.parquet"), **WAITING,
    ).expand(module=["Leads", "Contacts"])
    ZohoBulkReadOperator.partial(
        task_id="to_sqlite", sink=SqlSink("{{ params.warehouse_conn_id }}", "zoho_{{ task.module | lower }}"),
        write_mode="merge", **WAITING,
    ).expand(module=["Leads", "Contacts"])
