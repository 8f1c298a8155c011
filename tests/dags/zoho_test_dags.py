"""DAGs the end-to-end tests run with Airflow's own runner (dag.test()); locations come from params."""

from __future__ import annotations

from airflow.sdk import DAG, task

from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteResultOperator
from airflow_provider_zohobulk.sensors.bulk_write import ZohoBulkWriteJobSensor
from airflow_provider_zohobulk.sinks import DuckDBSink, ObjectStorageSink

FAST_HOOK = {"retry_backoff": 0.01, "max_backoff": 0.05, "retry_limit": 2, "timeout": (5, 30)}

with DAG("zoho_test_load", schedule=None, params={"job_id": "", "uri": "", "database": ""}) as load_dag:
    ZohoBulkWriteResultOperator(task_id="to_files", job_id="{{ params.job_id }}",
                                sink=ObjectStorageSink("{{ params.uri }}"), hook_kwargs=FAST_HOOK,
                                progress_interval=0)
    ZohoBulkWriteResultOperator(task_id="to_duckdb", job_id="{{ params.job_id }}",
                                sink=DuckDBSink(database="{{ params.database }}"), hook_kwargs=FAST_HOOK)

with DAG("zoho_test_wait", schedule=None, params={"job_id": "", "database": ""}) as wait_dag:
    wait = ZohoBulkWriteJobSensor(task_id="wait", job_id="{{ params.job_id }}", deferrable=True,
                                  poke_interval=0.5, timeout=60, hook_kwargs=FAST_HOOK)
    load = ZohoBulkWriteResultOperator(task_id="wait_and_load", job_id="{{ params.job_id }}",
                                       sink=DuckDBSink(database="{{ params.database }}"),
                                       wait_for_completion=True, deferrable=True, poll_interval=0.5,
                                       wait_timeout=60, hook_kwargs=FAST_HOOK)

with DAG("zoho_test_variable_cache", schedule=None, params={"second_cache_dir": ""}) as variable_cache_dag:

    @task
    def two_machines_share_a_token(params=None) -> dict:
        """Two 'machines' (separate local caches) in one task: the second must find the first's token."""
        import os

        from airflow_provider_zohobulk.hooks import token_cache
        from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

        first = ZohoCrmHook().get_access_token()
        token_cache._caches.clear()
        os.environ["ZOHOBULK_TOKEN_CACHE_DIR"] = params["second_cache_dir"]
        second = ZohoCrmHook().get_access_token()
        return {"same_token": first == second}

    two_machines_share_a_token()
