"""Registration with Airflow: the provider, its hook, its connection form and its extra link."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_providers_manager_knows_the_connection_type():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert "airflow-provider-zohobulk" in manager.providers
    hook = ProvidersManagerTaskRuntime().hooks["zoho_crm"]
    assert hook.hook_class_name == "airflow_provider_zohobulk.hooks.zoho_crm.ZohoCrmHook"
    assert hook.connection_id_attribute_name == "zoho_conn_id"
    assert "airflow_provider_zohobulk.links.ZohoBulkWriteJobLink" in manager.extra_links_class_names


def test_connection_form_declares_the_zoho_fields():
    from airflow_provider_zohobulk.get_provider_info import get_provider_info

    (conn_type,) = get_provider_info()["connection-types"]
    fields = conn_type["conn-fields"]
    assert {"refresh_token", "data_center", "org_id", "accounts_url", "api_domain", "download_hosts"} <= set(fields)
    assert fields["refresh_token"]["schema"]["format"] == "password"  # rendered and stored as a secret
    assert "eu" in fields["data_center"]["schema"]["enum"]
    assert conn_type["ui-field-behaviour"]["relabeling"] == {"login": "Client ID", "password": "Client Secret"}


def test_airflow_cli_lists_the_hook():
    airflow = Path(sys.executable).parent / "airflow"
    result = subprocess.run([str(airflow), "providers", "hooks"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("zoho_crm"))
    assert "ZohoCrmHook" in line and "airflow-provider-zohobulk" in line


def test_only_the_refresh_token_field_is_masked_in_logs():
    """Airflow masks the value of any extra whose key contains a sensitive word ("token", "secret", ...)
    everywhere in task logs; a setting such as the token cache's "local" must not be one of them."""
    from airflow.sdk._shared.secrets_masker import should_hide_value_for_key

    from airflow_provider_zohobulk.get_provider_info import get_provider_info

    (conn_type,) = get_provider_info()["connection-types"]
    masked = {name for name in conn_type["conn-fields"] if should_hide_value_for_key(name)}
    assert masked == {"refresh_token"}


def lines_printed_by(*statements: str) -> list[str]:
    """What ``statements`` print when run in a fresh interpreter: what a module imports shows only there."""
    result = subprocess.run([sys.executable, "-c", "\n".join(statements)], capture_output=True, text=True,
                            timeout=120, check=True)
    return result.stdout.splitlines()


def test_parsing_a_dag_does_not_import_the_sinks_clients():
    """A DAG file importing the operator and one sink pays for that sink's client only: smart-open (with
    boto3), duckdb and psycopg are imported when a load needs them, not when the scheduler parses DAGs."""
    printed = lines_printed_by(
        "import sys",
        "from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteResultOperator",
        "from airflow_provider_zohobulk.sinks import ObjectStorageSink",
        "ObjectStorageSink('s3://bucket/{file}.parquet')",
        "print(sorted(m for m in ('smart_open', 'boto3', 'duckdb', 'psycopg') if m in sys.modules))",
        "from airflow_provider_zohobulk.sinks import DuckDBSink",
        "print('duckdb' in sys.modules)",
    )
    assert printed[:2] == ["[]", "True"]


def test_the_triggerer_imports_the_trigger_without_the_hook():
    """Airflow's triggerer imports a trigger's module inside its event loop, blocking every other
    trigger meanwhile: the hook (requests, filelock; ~0.15 s) must wait for run(), in a worker thread."""
    printed = lines_printed_by(
        "import sys, asyncio",
        "import airflow.triggers.base",
        "from airflow_provider_zohobulk.triggers.bulk_write import ZohoBulkWriteJobTrigger",
        "print('airflow_provider_zohobulk.hooks.zoho_crm' in sys.modules)",
        "hook = asyncio.run(asyncio.to_thread(ZohoBulkWriteJobTrigger('1')._make_hook))",
        "print(type(hook).__name__, 'airflow_provider_zohobulk.hooks.zoho_crm' in sys.modules)",
    )
    assert printed[:2] == ["False", "ZohoCrmHook True"]
