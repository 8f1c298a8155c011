"""A trigger that waits in Airflow's triggerer for a Zoho Bulk job (Bulk Write or Bulk Read) to finish.

The polling call is the hook's own job-details method (``ZohoCrmHook.get_bulk_write_job`` or
``get_bulk_read_job``), run in a worker thread so the triggerer's event loop never blocks. Reusing it
means the trigger follows exactly the same token cache, retry and error rules as every other call,
instead of a second async client that could drift from the first. Both job kinds share this one
trigger: they differ only in the details call.

The triggerer imports this module inside its event loop, so it imports next to nothing: the hook
(with requests and filelock, ~0.15 s) is imported by ``run()`` in a worker thread, where the import
blocks no other trigger.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_zohobulk import bulk_job
from airflow_provider_zohobulk.errors import TRANSIENT_ERRORS, ZohoBulkError, ZohoConfigurationError

if TYPE_CHECKING:
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

#: operation -> (the hook's job-details method, the job kind's name in messages)
OPERATIONS: dict[str, tuple[str, str]] = {
    "write": ("get_bulk_write_job", "Bulk Write"),
    "read": ("get_bulk_read_job", "Bulk Read"),
}


class ZohoBulkJobTrigger(BaseTrigger):
    """Poll a Bulk job until it is COMPLETED (event ``success``) or fails (event ``error``).

    Transient failures (Zoho's 5xx, rate limits, lost connections, after the hook's own retries) are
    logged and polled through; the task's timeout ends the wait. Anything else (job failed or
    unknown, rejected credentials) ends it at once with an ``error`` event.

    :param job_id: the job id.
    :param zoho_conn_id: the ``zoho_crm`` connection.
    :param poll_interval: seconds between job-details calls.
    :param hook_kwargs: keyword arguments for the hook (timeouts, retries).
    :param operation: ``"write"`` (Bulk Write) or ``"read"`` (Bulk Read).
    """

    def __init__(self, job_id: str, zoho_conn_id: str = "zoho_crm_default", poll_interval: float = 30.0,
                 hook_kwargs: dict[str, Any] | None = None, operation: str = "write") -> None:
        super().__init__()
        if operation not in OPERATIONS:
            raise ZohoConfigurationError(
                f"unknown Bulk job operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
        self.job_id = job_id
        self.zoho_conn_id = zoho_conn_id
        self.poll_interval = poll_interval
        self.hook_kwargs = hook_kwargs or {}
        self.operation = operation

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"job_id": self.job_id, "zoho_conn_id": self.zoho_conn_id, "poll_interval": self.poll_interval,
             "hook_kwargs": self.hook_kwargs, "operation": self.operation},
        )

    def _make_hook(self) -> ZohoCrmHook:
        from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

        return ZohoCrmHook(self.zoho_conn_id, **self.hook_kwargs)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = await asyncio.to_thread(self._make_hook)  # the first import of the hook happens here
        method, kind = OPERATIONS[self.operation]
        # Every task checks the job just before it defers, so the first check here waits an interval too.
        # Firing within a second of the deferral is also what exposes Airflow 3.2-3.3's race that fails
        # the task (apache/airflow#66374, #71580): its scheduler has not yet taken in the deferral.
        await asyncio.sleep(self.poll_interval)
        while True:
            try:
                job = await asyncio.to_thread(getattr(hook, method), self.job_id)
                bulk_job.raise_if_failed(job, self.job_id, kind)
            except TRANSIENT_ERRORS as exc:  # an outage must not end a wait of hours: the timeout does
                self.log.warning("Could not check Zoho %s job %s (%s: %s); checking again in %.0fs",
                                 kind, self.job_id, type(exc).__name__, exc, self.poll_interval)
                await asyncio.sleep(self.poll_interval)
                continue
            except ZohoBulkError as exc:
                yield TriggerEvent(error_event(self.job_id, exc))
                return
            if bulk_job.is_complete(job):
                yield TriggerEvent({"status": "success", "job_id": self.job_id, "job": job})
                return
            self.log.info("Zoho %s job %s is %s; checking again in %.0fs",
                          kind, self.job_id, job.get("status"), self.poll_interval)
            await asyncio.sleep(self.poll_interval)


def error_event(job_id: str, exc: ZohoBulkError) -> dict[str, Any]:
    """A JSON-able description of a failure that :func:`raise_error_event` turns back into the same type."""
    return {"status": "error", "job_id": job_id, "error_type": type(exc).__name__, "message": exc.message,
            "code": getattr(exc, "code", None)}


def raise_error_event(event: dict[str, Any]) -> None:
    """Re-raise an ``error`` event as the typed exception it came from."""
    from airflow_provider_zohobulk import errors

    error_type = getattr(errors, str(event.get("error_type")), errors.ZohoBulkError)
    if not (isinstance(error_type, type) and issubclass(error_type, errors.ZohoBulkError)):
        error_type = errors.ZohoBulkError
    exc = error_type(event.get("message") or "the trigger reported an error", job_id=event.get("job_id"))
    if event.get("code") is not None:
        exc.code = event["code"]
    raise exc
