"""Export Zoho CRM modules every day, incrementally, into Parquet files and a PostgreSQL warehouse.

Each daily run exports, with Zoho's Bulk Read API, the records of each module that were modified during
the run's data interval (``incremental=True``: ``Modified_Time`` from ``data_interval_start`` up to
``data_interval_end``). One mapped task per module (``.partial(...).expand(module=...)``): Airflow runs
them in parallel, and each one's pages are committed together, so a failed module leaves its destination
as it was and is retried on its own. Every module goes twice:

- into Parquet files, one per page of up to 200,000 records:
  ``$ZOHOBULK_OUTPUT_DIR/lake/bulk_read/<module>/<interval start>/<module>-00001.parquet``;
- into PostgreSQL (any SQL connection works), one table per module (``zoho_leads``, ...) with a text
  column per field, merged on ``Id``: new records are inserted, changed ones updated, the rest kept.

Trigger it from the UI to export other modules, or one module only ("Trigger DAG" shows a form; keep a
logical date: the export window is the day before it), or from the CLI:

    airflow dags test zoho_bulk_read_incremental 2026-01-02 -c '{"modules": ["Leads"]}'

Zoho runs about 10 bulk jobs per org at a time and each task runs one job at a time: the two exports are
capped at 4 modules each per run here; across DAGs, put the tasks in an Airflow pool of about 8 slots.
Nothing here does I/O at parse time: the sinks only store their (templated) locations.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, CronTriggerTimetable, Param, task

from airflow_provider_zohobulk.operators.bulk_read import ZohoBulkReadOperator
from airflow_provider_zohobulk.sinks import ObjectStorageSink, SqlSink

OUTPUT_DIR = os.environ.get("ZOHOBULK_OUTPUT_DIR", "/tmp/zoho-bulk")
MODULES = ["Leads", "Contacts", "Deals"]
POLL_INTERVAL = float(os.environ.get("ZOHOBULK_POKE_INTERVAL", "30"))

with DAG(
    dag_id="zoho_bulk_read_incremental",
    # At midnight UTC, for the day before: the interval makes the data interval that day (a plain "@daily"
    # gives Airflow 3 runs an empty data interval, which an incremental export refuses).
    schedule=CronTriggerTimetable("@daily", timezone="UTC", interval=timedelta(days=1)),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["zoho", "example"],
    doc_md=__doc__,
    params={
        "modules": Param(MODULES, type="array", items={"type": "string", "minLength": 1}, minItems=1,
                         title="Modules", description="Zoho CRM module API names; one export task each."),
        "warehouse_conn_id": Param(os.environ.get("ZOHOBULK_WAREHOUSE_CONN_ID", "postgres_default"), type="string",
                                   minLength=1, title="Warehouse connection",
                                   description="An Airflow SQL connection: postgres (COPY), sqlite, ..."),
    },
):

    @task
    def modules_to_export(params=None) -> list[str]:
        """The modules of this run: the form's, or every module of the list on a scheduled run."""
        return list(params["modules"])

    modules = modules_to_export()

    ZohoBulkReadOperator.partial(
        task_id="export_to_parquet",
        sink=ObjectStorageSink(
            f"file://{OUTPUT_DIR}/lake/bulk_read/{{{{ task.module }}}}/{{{{ data_interval_start | ds }}}}/"
            "{file}.parquet"),
        incremental=True,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        max_active_tis_per_dagrun=4,
    ).expand(module=modules)

    ZohoBulkReadOperator.partial(
        task_id="export_to_postgres",
        sink=SqlSink(conn_id="{{ params.warehouse_conn_id }}", table="zoho_{{ task.module | lower }}"),
        write_mode="merge",
        incremental=True,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        max_active_tis_per_dagrun=4,
    ).expand(module=modules)
