"""Destinations for Bulk Write results and Bulk Read exports; all share :class:`ResultSink`'s staged interface.

The sinks are imported on first use (PEP 562): each pulls in its own heavy client (smart-open with
boto3, duckdb, psycopg), and a DAG file or a task that uses one sink should pay for that one only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow_provider_zohobulk.sinks.base import ExportLoad, ResultSink, load_batches, load_export_batches

if TYPE_CHECKING:
    from airflow_provider_zohobulk.sinks.duckdb import DuckDBSink
    from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink
    from airflow_provider_zohobulk.sinks.sql import SqlSink

__all__ = [
    "DuckDBSink", "ExportLoad", "ObjectStorageSink", "ResultSink", "SqlSink", "load_batches", "load_export_batches"]

_LAZY = {
    "DuckDBSink": "airflow_provider_zohobulk.sinks.duckdb",
    "ObjectStorageSink": "airflow_provider_zohobulk.sinks.object_storage",
    "SqlSink": "airflow_provider_zohobulk.sinks.sql",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
