"""The Bulk Write job trigger: :class:`~airflow_provider_zohobulk.triggers.bulk_job.ZohoBulkJobTrigger` for
``operation="write"``, under the class path that deferred tasks of earlier releases have serialised.

Like ``bulk_job``, it imports next to nothing: the triggerer imports it inside its event loop.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_zohobulk.triggers.bulk_job import ZohoBulkJobTrigger, error_event, raise_error_event

__all__ = ["ZohoBulkWriteJobTrigger", "error_event", "raise_error_event"]


class ZohoBulkWriteJobTrigger(ZohoBulkJobTrigger):
    """Poll a Bulk Write job until it is COMPLETED (event ``success``) or fails (event ``error``)."""

    def __init__(self, job_id: str, zoho_conn_id: str = "zoho_crm_default", poll_interval: float = 30.0,
                 hook_kwargs: dict[str, Any] | None = None, operation: str = "write") -> None:
        super().__init__(job_id, zoho_conn_id, poll_interval, hook_kwargs, "write")

    def serialize(self) -> tuple[str, dict[str, Any]]:
        classpath, kwargs = super().serialize()
        kwargs.pop("operation")
        return classpath, kwargs
