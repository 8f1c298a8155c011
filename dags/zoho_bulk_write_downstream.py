"""Runs whenever new Bulk Write results land in the lake: scheduled on the loading task's Asset.

A stand-in for what a team would do next (dbt, a quality check, a report); here it lists the
Parquet files the triggering load wrote, as recorded in the Asset event.
"""

from __future__ import annotations

import os

from airflow.sdk import DAG, Asset, task

OUTPUT_DIR = os.environ.get("ZOHOBULK_OUTPUT_DIR", "/tmp/zoho-bulk")
LAKE = Asset(f"file://{OUTPUT_DIR}/lake/bulk_write/")

with DAG(
    dag_id="zoho_bulk_write_downstream",
    schedule=[LAKE],
    catchup=False,
    tags=["zoho", "example"],
    doc_md=__doc__,
):

    @task
    def report(triggering_asset_events=None) -> list[str]:
        written = []
        for events in (triggering_asset_events or {}).values():
            for event in events:
                written.extend((event.extra or {}).get("destination", []))
        print(f"New Zoho Bulk Write results: {written}")
        return written

    report()
