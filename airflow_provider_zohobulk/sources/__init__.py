"""Inputs of a Bulk Write submission: the rows to push into Zoho, streamed as Arrow record batches.

:class:`RowSource` is the interface (see :mod:`airflow_provider_zohobulk.sources.base` for what every
source guarantees: one schema, no empty batches, at most ``batch_rows`` rows a batch);
:class:`ObjectStorageSource` reads CSV, Parquet or JSON Lines files (local, S3, GCS, Azure),
:class:`SqlSource` a query through an Airflow SQL connection, :class:`DuckDBSource` a DuckDB query.

The sources are imported on first use (PEP 562), as the sinks are: each pulls in its own heavy client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow_provider_zohobulk.sources.base import RowSource

if TYPE_CHECKING:
    from airflow_provider_zohobulk.sources.object_storage import ObjectStorageSource
    from airflow_provider_zohobulk.sources.sql import DuckDBSource, SqlSource

__all__ = ["DuckDBSource", "ObjectStorageSource", "RowSource", "SqlSource"]

_LAZY = {
    "DuckDBSource": "airflow_provider_zohobulk.sources.sql",
    "ObjectStorageSource": "airflow_provider_zohobulk.sources.object_storage",
    "SqlSource": "airflow_provider_zohobulk.sources.sql",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
