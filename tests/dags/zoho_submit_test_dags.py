"""DAGs for the Bulk Write submission tests (dag.test()); the input file and databases come from params."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteOperator
from airflow_provider_zohobulk.sinks import DuckDBSink
from airflow_provider_zohobulk.sources import ObjectStorageSource

FAST_HOOK = {"retry_backoff": 0.01, "max_backoff": 0.05, "retry_limit": 1, "timeout": (5, 60)}
PARAMS = {"uri": "", "database": "", "operation": "insert", "find_by": ""}

with DAG("zoho_test_submit", schedule=None, params=PARAMS) as submit_dag:
    ZohoBulkWriteOperator(
        task_id="submit", module="Leads", operation="{{ params.operation }}", find_by="{{ params.find_by }}",
        source=ObjectStorageSource("{{ params.uri }}"), result_sink=DuckDBSink(database="{{ params.database }}"),
        hook_kwargs=FAST_HOOK, poll_interval=0.2, wait_timeout=120, deferrable=False,
        retries=1, retry_delay=timedelta(seconds=0))

with DAG("zoho_test_submit_deferred", schedule=None, params=PARAMS) as deferred_submit_dag:
    ZohoBulkWriteOperator(
        task_id="submit", module="Leads", operation="{{ params.operation }}", find_by="{{ params.find_by }}",
        source=ObjectStorageSource("{{ params.uri }}"), result_sink=DuckDBSink(database="{{ params.database }}"),
        hook_kwargs=FAST_HOOK, poll_interval=0.5, wait_timeout=120, deferrable=True)

with DAG("zoho_test_submit_no_wait", schedule=None, params=PARAMS) as no_wait_dag:
    ZohoBulkWriteOperator(
        task_id="submit", module="Leads", operation="{{ params.operation }}", find_by="{{ params.find_by }}",
        source=ObjectStorageSource("{{ params.uri }}"), wait_for_completion=False, hook_kwargs=FAST_HOOK)

def _change_the_input(context) -> None:
    """Between the tries: the input file is replaced by another (what a re-run query might return)."""
    import shutil

    shutil.copyfile(context["params"]["changed"], context["params"]["uri"])


with DAG("zoho_test_submit_changing", schedule=None, params={"uri": "", "changed": "", "database": ""}) as changing_dag:
    ZohoBulkWriteOperator(
        task_id="submit", module="Leads", source=ObjectStorageSource("{{ params.uri }}"),
        result_sink=DuckDBSink(database="{{ params.database }}"), hook_kwargs=FAST_HOOK, poll_interval=0.2,
        wait_timeout=120, deferrable=False, retries=1, retry_delay=timedelta(seconds=0),
        on_retry_callback=_change_the_input)
