"""Wait for a Zoho CRM Bulk Write job, then load its result into object storage and a warehouse.

One sensor waits (deferred to the triggerer, so no worker slot is held while Zoho works); two loads
then run in parallel from that single wait. Trigger it from the UI with the job id. The load into
files updates an Asset that ``zoho_bulk_write_downstream`` is scheduled on.

The warehouse here is DuckDB; for PostgreSQL or any Airflow SQL connection, use
``SqlSink(conn_id, table)`` as the sink instead, as ``zoho_bulk_write_to_warehouse`` does.
"""

from __future__ import annotations

import os

from airflow.sdk import DAG, Param

from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteResultOperator
from airflow_provider_zohobulk.sensors.bulk_write import ZohoBulkWriteJobSensor
from airflow_provider_zohobulk.sinks import DuckDBSink, ObjectStorageSink

OUTPUT_DIR = os.environ.get("ZOHOBULK_OUTPUT_DIR", "/tmp/zoho-bulk")
#: A fixed prefix (only the job id varies below it) keeps the Asset the same for every run.
FILES_URI = f"file://{OUTPUT_DIR}/lake/bulk_write/{{{{ params.job_id }}}}/{{file}}.parquet"

with DAG(
    dag_id="zoho_bulk_write_wait_and_load",
    schedule=None,
    catchup=False,
    tags=["zoho", "example"],
    doc_md=__doc__,
    params={
        "job_id": Param(type="string", minLength=1, title="Bulk Write job id",
                        description="The id Zoho returned when the Bulk Write job was created."),
    },
):
    wait = ZohoBulkWriteJobSensor(
        task_id="wait_for_job",
        job_id="{{ params.job_id }}",
        deferrable=True,
        poke_interval=float(os.environ.get("ZOHOBULK_POKE_INTERVAL", "30")),
        timeout=6 * 3600,
    )
    to_files = ZohoBulkWriteResultOperator(
        task_id="load_to_object_storage",
        job_id="{{ params.job_id }}",
        sink=ObjectStorageSink(FILES_URI),
    )
    to_warehouse = ZohoBulkWriteResultOperator(
        task_id="load_to_warehouse",
        job_id="{{ params.job_id }}",
        sink=DuckDBSink(database=f"{OUTPUT_DIR}/warehouse.duckdb", table="zoho_bulk_write_results"),
    )
    wait >> [to_files, to_warehouse]
