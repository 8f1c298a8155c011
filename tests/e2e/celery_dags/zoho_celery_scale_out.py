"""DAGs for the CeleryExecutor scale-out tests (``tests/e2e/test_celery_scale_out.py``).

``zoho_celery_scale_out``: many finished Bulk Write jobs, each loaded by mapped tasks into PostgreSQL,
S3 and/or local files shared by the workers, plus Bulk Read exports of some modules into S3. One task
first checks that every job is complete, so a bad job id fails the run before anything is loaded.
(Tasks that all start at once share one token too: see ``zoho_celery_token_race``.) Every
Zoho-calling task is in the ``zoho_bulk`` pool, whose slots are Zoho's bulk concurrency limit.

``zoho_celery_wait_and_load``: each mapped task waits for its job deferred in the triggerer
(``wait_for_completion=True, deferrable=True``), then loads it into PostgreSQL.

Everything comes from the run's conf: job ids, targets, bucket, table, modules.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, Param, task

from airflow_provider_zohobulk.operators.bulk_read import ZohoBulkReadOperator
from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteResultOperator
from airflow_provider_zohobulk.sinks import ObjectStorageSink, SqlSink

POOL = "zoho_bulk"
WAREHOUSE_CONN_ID = "zoho_celery_warehouse"
S3_CONN_ID = "zoho_celery_s3"
OUTPUT_DIR = os.environ.get("ZOHOBULK_OUTPUT_DIR", "/tmp/zoho-bulk")
POLL_INTERVAL = float(os.environ.get("ZOHOBULK_POKE_INTERVAL", "2"))
#: A task killed with its worker is failed by the scheduler's heartbeat check, then retried elsewhere.
RETRIES = dict(retries=2, retry_delay=timedelta(seconds=1))

PARAMS = {
    "job_ids": Param([], type="array", items={"type": "string"}),
    "targets": Param(["postgres", "s3"], type="array", items={"enum": ["postgres", "s3", "files"]}),
    "modules": Param([], type="array", items={"type": "string"}),
    "bucket": Param("zoho-scale-out", type="string"),
    "table": Param("zoho_bulk_write_results", type="string"),
}

with DAG(dag_id="zoho_celery_scale_out", schedule=None, catchup=False, params=PARAMS, max_active_tasks=64,
         tags=["zoho", "test"], doc_md=__doc__):

    @task(pool=POOL)
    def check_jobs(params=None) -> list[str]:
        """Every job is COMPLETED (else fail before loading anything)."""
        from airflow_provider_zohobulk import bulk_job
        from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

        hook = ZohoCrmHook()
        for job_id in params["job_ids"]:
            job = hook.get_bulk_write_job(job_id)
            bulk_job.raise_if_failed(job, job_id)
            if not bulk_job.is_complete(job):
                raise ValueError(f"Bulk Write job {job_id} is {job.get('status')}, not COMPLETED")
        return list(params["job_ids"])

    @task
    def jobs_for(target: str, job_ids: list[str], params=None) -> list[str]:
        """The jobs to load into ``target``: none (its mapped task is skipped) unless the run names it."""
        return job_ids if target in params["targets"] else []

    @task
    def modules_to_export(params=None) -> list[str]:
        return list(params["modules"])

    checked = check_jobs()
    ZohoBulkWriteResultOperator.partial(
        task_id="load_to_postgres", sink=SqlSink(WAREHOUSE_CONN_ID, table="{{ params.table }}"), pool=POOL,
        **RETRIES,
    ).expand(job_id=jobs_for.override(task_id="postgres_jobs")("postgres", checked))
    ZohoBulkWriteResultOperator.partial(
        task_id="load_to_s3",
        sink=ObjectStorageSink("s3://{{ params.bucket }}/bulk_write/{{ task.job_id }}/{file}.parquet",
                               conn_id=S3_CONN_ID),
        pool=POOL, **RETRIES,
    ).expand(job_id=jobs_for.override(task_id="s3_jobs")("s3", checked))
    ZohoBulkWriteResultOperator.partial(
        task_id="load_to_files",
        sink=ObjectStorageSink(f"file://{OUTPUT_DIR}/lake/{{{{ task.job_id }}}}/{{file}}.parquet"),
        pool=POOL, **RETRIES,
    ).expand(job_id=jobs_for.override(task_id="files_jobs")("files", checked))
    ZohoBulkReadOperator.partial(
        task_id="export_to_s3",
        sink=ObjectStorageSink("s3://{{ params.bucket }}/bulk_read/{{ task.module }}/{file}.parquet",
                               conn_id=S3_CONN_ID),
        pool=POOL, poll_interval=POLL_INTERVAL, **RETRIES,
    ).expand(module=modules_to_export())


with DAG(dag_id="zoho_celery_wait_and_load", schedule=None, catchup=False, params=PARAMS, max_active_tasks=64,
         tags=["zoho", "test"], doc_md=__doc__):

    @task
    def job_ids(params=None) -> list[str]:
        return list(params["job_ids"])

    ZohoBulkWriteResultOperator.partial(
        task_id="wait_and_load", sink=SqlSink(WAREHOUSE_CONN_ID, table="{{ params.table }}"), pool=POOL,
        wait_for_completion=True, deferrable=True, poll_interval=POLL_INTERVAL, **RETRIES,
    ).expand(job_id=job_ids())
