"""Push rows from a SQL warehouse into Zoho CRM with Bulk Write, then load every record's outcome back.

The round trip users run: a query selects the leads to sync, ``ZohoBulkWriteOperator`` streams its rows
into zipped CSV files of at most 25,000 records, uploads each and upserts Leads by Email (one Bulk Write
job per file), waits for the jobs, and loads their results into a table of the same warehouse, where
``row_number`` is the row of the query's output the outcome is for. ``report`` counts the outcome per
status for this run's jobs and puts it in its XCom.

Trigger it from the UI ("Trigger DAG" form). A retried submit task does not send the same rows twice:
it resumes after the last job it created. The query's rows must come in a stable order (``ORDER BY``),
so that a retry rebuilds the same files.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteOperator
from airflow_provider_zohobulk.sinks import SqlSink
from airflow_provider_zohobulk.sources import SqlSource

DEFAULT_QUERY = (
    'SELECT last_name AS "Last_Name", email AS "Email", company AS "Company", phone AS "Phone" '
    "FROM leads_to_sync ORDER BY id"
)

with DAG(
    dag_id="zoho_bulk_write_from_warehouse",
    schedule=None,
    catchup=False,
    tags=["zoho", "example"],
    doc_md=__doc__,
    params={
        "warehouse_conn_id": Param("postgres_default", type="string", minLength=1, title="Warehouse connection",
                                   description="The Airflow SQL connection the rows come from and the results go to."),
        "query": Param(DEFAULT_QUERY, type="string", minLength=1, title="Query",
                       description="Its column names are the Zoho fields' api names; ORDER BY keeps retries exact."),
        "module": Param("Leads", type="string", minLength=1, title="Zoho module"),
        "find_by": Param("Email", type="string", minLength=1, title="Upsert by",
                         description="The field that finds an existing record."),
        "results_table": Param("zoho_bulk_write_results", type="string", minLength=1, title="Results table",
                               description="table or schema.table; created when missing."),
    },
):
    submit = ZohoBulkWriteOperator(
        task_id="upsert_into_zoho",
        module="{{ params.module }}",
        operation="upsert",
        find_by="{{ params.find_by }}",
        source=SqlSource(conn_id="{{ params.warehouse_conn_id }}", sql="{{ params.query }}"),
        result_sink=SqlSink(conn_id="{{ params.warehouse_conn_id }}", table="{{ params.results_table }}"),
        poll_interval=5.0,
    )

    @task
    def report(summary: dict, params: dict | None = None) -> dict[str, int]:
        """Rows per status of this run's jobs, counted in the warehouse (what a downstream check would read)."""
        from airflow.sdk import BaseHook

        from airflow_provider_zohobulk.sinks.identifiers import quote_table_name

        job_ids = [job["job_id"] for job in summary["jobs"]]
        if not job_ids:
            return {}
        connection = BaseHook.get_connection(params["warehouse_conn_id"])
        hook = connection.get_hook()
        mark = "%s" if connection.conn_type == "postgres" else "?"
        rows = hook.get_records(
            f"SELECT status, COUNT(*) FROM {quote_table_name(params['results_table'], connection.conn_type)} "
            f"WHERE job_id IN ({', '.join([mark] * len(job_ids))}) GROUP BY status ORDER BY status",
            parameters=job_ids)
        counts = {status: int(count) for status, count in rows}
        print(f"Outcome of {sum(counts.values())} rows in {len(job_ids)} jobs: {counts}")
        return counts

    report(submit.output)
