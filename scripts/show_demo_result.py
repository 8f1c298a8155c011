"""Print what the demo run produced: each task's XCom summary, then a few rows from DuckDB and Parquet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def xcom_summaries(dag_id: str) -> dict[str, object]:
    """The return values of the latest run's tasks, read from Airflow's metadata database."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)
        ).first()
        if run is None:
            return {}
        rows = session.scalars(
            select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == run.run_id,
                                    XComModel.key == "return_value")
        ).all()
        summaries = {}
        for row in rows:
            value = row.value
            summaries[row.task_id] = json.loads(value) if isinstance(value, (str, bytes)) else value
        return {"run_id": run.run_id, "state": str(run.state), "tasks": summaries}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--dag-id", default="zoho_bulk_write_result")
    args = parser.parse_args()

    result = xcom_summaries(args.dag_id)
    print(f"\n== DAG run {result.get('run_id')}: {result.get('state')}")
    for task_id, summary in sorted(result.get("tasks", {}).items()):
        print(f"\n-- XCom summary of task {task_id}:")
        print(json.dumps(summary, indent=2))

    import duckdb
    import pyarrow.parquet as pq

    database = args.output / "zoho_bulk.duckdb"
    with duckdb.connect(str(database), read_only=True) as con:
        print(f"\n== DuckDB {database}, table zoho_bulk_write_results, job {args.job_id}: "
              "3 rows, then 3 rows with errors")
        query = ("SELECT row_number, record_id, status, errors, source FROM zoho_bulk_write_results "
                 "WHERE job_id = ? AND (errors_raw IS NULL) = ? ORDER BY file_name, row_number LIMIT 3")
        for without_errors in (True, False):
            for row in con.execute(query, [args.job_id, without_errors]).fetchall():
                print("  ", row)
        print("   rows per status:", dict(con.execute(
            "SELECT status, count(*) FROM zoho_bulk_write_results WHERE job_id = ? GROUP BY status ORDER BY status",
            [args.job_id]).fetchall()))
    for path in sorted((args.output / "bulk_write" / args.job_id).glob("*.parquet")):
        table = pq.read_table(path)
        print(f"\n== Parquet {path} ({table.num_rows} rows); first 3:")
        for row in table.slice(0, 3).to_pylist():
            print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
