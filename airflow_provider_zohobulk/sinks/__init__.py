"""Destinations for canonical Bulk Write result rows; all share :class:`ResultSink`'s staged interface."""

from airflow_provider_zohobulk.sinks.base import ResultSink, load_batches
from airflow_provider_zohobulk.sinks.duckdb import DuckDBSink
from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink
from airflow_provider_zohobulk.sinks.sql import SqlSink

__all__ = ["DuckDBSink", "ObjectStorageSink", "ResultSink", "SqlSink", "load_batches"]
