"""ZohoBulkWriteJobSensor: wait for a Bulk Write job, in a worker slot or deferred to the triggerer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf

from airflow_provider_zohobulk import bulk_job
from airflow_provider_zohobulk.errors import TRANSIENT_ERRORS
from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
from airflow_provider_zohobulk.triggers.bulk_write import ZohoBulkWriteJobTrigger, raise_error_event

if TYPE_CHECKING:
    from airflow.sdk import Context


class ZohoBulkWriteJobSensor(BaseSensorOperator):
    """Succeeds when the Bulk Write job is COMPLETED; fails with Zoho's code if it FAILED.

    Zoho's 5xx answers, rate limits and lost connections (after the hook's retries) are logged and
    waited through, up to ``timeout``; an unknown job or rejected credentials fail at once.

    :param job_id: the Bulk Write job id. Templated.
    :param zoho_conn_id: the ``zoho_crm`` connection. Templated.
    :param deferrable: wait in the triggerer instead of a worker slot (default: the
        ``[operators] default_deferrable`` setting).
    :param hook_kwargs: keyword arguments for the hook (timeouts, retries).

    Its XCom is the job details (status, counts, ``result.download_url``).
    """

    template_fields: Sequence[str] = ("job_id", "zoho_conn_id")
    ui_color = "#e8f4fd"

    def __init__(self, *, job_id: str, zoho_conn_id: str = ZohoCrmHook.default_conn_name,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 hook_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.zoho_conn_id = zoho_conn_id
        self.deferrable = deferrable
        self.hook_kwargs = hook_kwargs or {}

    @cached_property
    def hook(self) -> ZohoCrmHook:
        return ZohoCrmHook(self.zoho_conn_id, **self.hook_kwargs)

    def poke(self, context: Context) -> PokeReturnValue:
        try:
            job = self.hook.get_bulk_write_job(self.job_id)
        except TRANSIENT_ERRORS as exc:  # as the trigger: an outage is waited through until the timeout
            self.log.warning("Could not check Zoho Bulk Write job %s (%s: %s); trying again at the next poke",
                             self.job_id, type(exc).__name__, exc)
            return PokeReturnValue(is_done=False)
        bulk_job.raise_if_failed(job, self.job_id)
        self.log.info("Zoho Bulk Write job %s is %s", self.job_id, job.get("status"))
        return PokeReturnValue(is_done=bulk_job.is_complete(job), xcom_value=job)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)  # a finished job needs no trip through the triggerer
        if first.is_done:
            return first.xcom_value
        self.defer(
            trigger=ZohoBulkWriteJobTrigger(self.job_id, self.zoho_conn_id, self.poke_interval, self.hook_kwargs),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("status") != "success":
            raise_error_event(event)
        self.log.info("Zoho Bulk Write job %s is COMPLETED", self.job_id)
        return event["job"]
