"""Load a Zoho CRM Bulk Write job's result into local Parquet files and DuckDB.

Trigger it from the Airflow UI ("Trigger DAG" shows a form for the job id) or from the CLI:

    airflow dags test zoho_bulk_write_result -c '{"job_id": "4150868000005350003"}'

Nothing here does I/O at parse time: the sinks only store their (templated) locations.
"""

from __future__ import annotations

import os

from airflow.sdk import DAG, Param

from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteResultOperator
from airflow_provider_zohobulk.sinks import DuckDBSink, ObjectStorageSink

OUTPUT_DIR = os.environ.get("ZOHOBULK_OUTPUT_DIR", "/tmp/zoho-bulk")

with DAG(
    dag_id="zoho_bulk_write_result",
    schedule=None,
    catchup=False,
    tags=["zoho", "example"],
    doc_md=__doc__,
    params={
        "job_id": Param(type="string", minLength=1, title="Bulk Write job id",
                        description="The id Zoho returned when the Bulk Write job was created."),
        "destination": Param(f"file://{OUTPUT_DIR}", type="string", title="Object storage prefix",
                             description="s3://bucket/prefix, gs://..., azure://... or file:///path"),
        "duckdb_database": Param(f"{OUTPUT_DIR}/zoho_bulk.duckdb", type="string", title="DuckDB database file"),
    },
):
    ZohoBulkWriteResultOperator(
        task_id="load_to_files",
        job_id="{{ params.job_id }}",
        sink=ObjectStorageSink("{{ params.destination }}/bulk_write/{{ params.job_id }}/{file}.parquet"),
    )
    ZohoBulkWriteResultOperator(
        task_id="load_to_duckdb",
        job_id="{{ params.job_id }}",
        sink=DuckDBSink(database="{{ params.duckdb_database }}", table="zoho_bulk_write_results"),
    )
