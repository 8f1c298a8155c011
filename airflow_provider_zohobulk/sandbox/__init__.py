"""A local Zoho emulator (accounts, CRM Bulk Write and Bulk Read APIs, result downloads) with faults on demand.

``ZohoSandbox`` runs in-process (tests, benchmarks); ``python -m airflow_provider_zohobulk.sandbox``
runs it in the foreground for the demo and users' CI, and ``ZohoSandbox.attach(url, admin_token=...)``
drives that with the admin token it printed at start.
No Airflow import here: the core's tests and benchmarks use it without Airflow.
"""

from airflow_provider_zohobulk.sandbox.client import SandboxClient
from airflow_provider_zohobulk.sandbox.results import sample_leads_csv
from airflow_provider_zohobulk.sandbox.server import SandboxOptions, ZohoSandbox

__all__ = ["SandboxClient", "SandboxOptions", "ZohoSandbox", "sample_leads_csv"]
