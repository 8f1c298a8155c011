"""Provider metadata read by Airflow's ProvidersManager through the ``apache_airflow_provider`` entry point.

The connection form is declared here (Airflow 3.2+ ``conn-fields``), not in Python widgets, so the UI
can render it without importing the hook.
"""

from __future__ import annotations

from airflow_provider_zohobulk import __version__

DATA_CENTERS = ["us", "eu", "in", "au", "jp", "cn", "ca", "sa", "uk"]


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-provider-zohobulk",
        "name": "Zoho CRM Bulk",
        "description": "Stream Zoho CRM Bulk API results into object storage and warehouses.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Zoho CRM",
                "external-doc-url": "https://www.zoho.com/crm/developer/docs/api/v8/bulk-write/overview.html",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Zoho CRM",
                "python-modules": ["airflow_provider_zohobulk.hooks.zoho_crm"],
            }
        ],
        "operators": [
            {
                "integration-name": "Zoho CRM",
                "python-modules": ["airflow_provider_zohobulk.operators.bulk_read",
                                   "airflow_provider_zohobulk.operators.bulk_write"],
            }
        ],
        "sensors": [
            {
                "integration-name": "Zoho CRM",
                "python-modules": ["airflow_provider_zohobulk.sensors.bulk_write"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Zoho CRM",
                "python-modules": ["airflow_provider_zohobulk.triggers.bulk_job",
                                   "airflow_provider_zohobulk.triggers.bulk_write"],
            }
        ],
        "extra-links": ["airflow_provider_zohobulk.links.ZohoBulkWriteJobLink"],
        "connection-types": [
            {
                "connection-type": "zoho_crm",
                "hook-class-name": "airflow_provider_zohobulk.hooks.zoho_crm.ZohoCrmHook",
                "hook-name": "Zoho CRM",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "port", "schema", "extra"],
                    "relabeling": {"login": "Client ID", "password": "Client Secret"},
                    "placeholders": {"login": "1000.XXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"},
                },
                "conn-fields": {
                    "refresh_token": {
                        "label": "Refresh token",
                        "description": "Long-lived refresh token from Zoho's API console (self client or OAuth flow).",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "data_center": {
                        "label": "Data centre",
                        "description": "Where the Zoho account lives; tokens only work in the DC that issued them.",
                        "schema": {"type": ["string", "null"], "enum": [*DATA_CENTERS, None], "default": "us"},
                    },
                    "org_id": {
                        "label": "Organization ID (zgid)",
                        "description": "Sent as X-CRM-ORG on uploads; optional for downloads.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "accounts_url": {
                        "label": "Accounts URL override",
                        "description": "For new data centres or the local sandbox, e.g. https://accounts.zoho.uk",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "api_domain": {
                        "label": "API domain override",
                        "description": "For sandbox/developer orgs (https://sandbox.zohoapis.com), the local sandbox.",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "download_hosts": {
                        "label": "Extra download hosts",
                        "description": "Comma-separated host names that may also receive the token on downloads, over "
                                       "https; write http://host to allow plain http (a local emulator).",
                        "schema": {"type": ["string", "null"]},
                    },
                    # Not "token_cache": Airflow masks the value of every extra whose key contains "token",
                    # which would turn each "local" or "variable" in the task logs into "***".
                    "oauth_cache": {
                        "label": "Token cache",
                        "description": "local (one token per machine, default), variable (one token per "
                                       "connection, shared by every worker through Airflow Variables) or none.",
                        "schema": {"type": ["string", "null"], "enum": ["local", "variable", "none", None],
                                   "default": "local"},
                    },
                },
            }
        ],
    }
