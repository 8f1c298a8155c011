"""An extra link from the task to the Bulk Write job in Zoho CRM's web UI (the connection's data centre).

The URL is computed while the task runs (it needs the connection) and kept in XCom, the pattern
Airflow's own provider links use, so rendering the link never opens a connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context, TaskInstanceKey

XCOM_KEY = "zoho_bulk_write_job_url"


def job_web_url(crm_web_url: str, org_id: str | None, job_id: str) -> str:
    """Zoho lists Bulk Write jobs with the org's import history; the page path is Zoho's, per data centre."""
    org = f"org{org_id}/" if org_id else ""
    return f"{crm_web_url}/crm/{org}settings/import-history?bulk_write_job={job_id}"


class ZohoBulkWriteJobLink(BaseOperatorLink):
    name = "Zoho CRM job"

    @staticmethod
    def persist(context: Context, url: str) -> None:
        context["ti"].xcom_push(key=XCOM_KEY, value=url)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(key=XCOM_KEY, ti_key=ti_key) or ""
