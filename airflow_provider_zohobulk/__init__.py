"""Apache Airflow provider for Zoho CRM Bulk API results."""

__version__ = "0.1.0"
