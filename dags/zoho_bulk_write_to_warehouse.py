"""Load a Zoho CRM Bulk Write result into a SQL warehouse through an Airflow connection.

Trigger it from the UI ("Trigger DAG" form) with the job id, the Airflow connection of the warehouse
(PostgreSQL gets the streaming ``COPY`` path; any other DB-API connection works, in batches) and the
table, ``schema.table`` allowed. The table is created when missing and the job's earlier rows are
replaced in one transaction, so a re-run never duplicates rows. ``zoho_bulk_write_result`` is the
same load into Parquet files and DuckDB.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteResultOperator
from airflow_provider_zohobulk.sinks import SqlSink

with DAG(
    dag_id="zoho_bulk_write_to_warehouse",
    schedule=None,
    catchup=False,
    tags=["zoho", "example"],
    doc_md=__doc__,
    params={
        "job_id": Param(type="string", minLength=1, title="Bulk Write job id",
                        description="The id Zoho returned when the Bulk Write job was created."),
        "warehouse_conn_id": Param("postgres_default", type="string", minLength=1, title="Warehouse connection",
                                   description="An Airflow SQL connection: postgres, sqlite, ..."),
        "table": Param("zoho_bulk_write_results", type="string", minLength=1, title="Table",
                       description="table or schema.table; created when missing."),
    },
):
    ZohoBulkWriteResultOperator(
        task_id="load_to_warehouse",
        job_id="{{ params.job_id }}",
        sink=SqlSink(conn_id="{{ params.warehouse_conn_id }}", table="{{ params.table }}"),
    )
