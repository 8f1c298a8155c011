"""ZohoBulkWriteResultOperator: stream a Bulk Write job's result zip into a sink, atomically.

The operator is glue: it asks the hook for the job and an open download, runs the streaming core
(:func:`~airflow_provider_zohobulk.bulk_result.read_bulk_write_result`) over the bytes, and drives the
sink through open / write / commit (abort on any error). Everything heavy lives in the core, which
knows nothing of Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_zohobulk import bulk_job
from airflow_provider_zohobulk.bulk_result import ResultStats, read_bulk_write_result, use_lean_memory_pool
from airflow_provider_zohobulk.errors import (
    BulkJobNotCompleteError,
    DownloadLinkExpiredError,
    ZohoBulkError,
    ZohoConfigurationError,
)
from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
from airflow_provider_zohobulk.links import ZohoBulkWriteJobLink, job_web_url
from airflow_provider_zohobulk.operators.common import asset_for, lineage, poll_until_complete, record_asset_event
from airflow_provider_zohobulk.progress import Progress
from airflow_provider_zohobulk.sinks.base import ResultSink, load_batches
from airflow_provider_zohobulk.stream.unzip import UnzipLimits
from airflow_provider_zohobulk.triggers.bulk_write import ZohoBulkWriteJobTrigger, raise_error_event

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)


class ZohoBulkWriteResultOperator(BaseOperator):
    """Load the result of a Zoho CRM Bulk Write job into a sink.

    :param sink: where the rows go (:class:`~airflow_provider_zohobulk.sinks.ObjectStorageSink`,
        :class:`~airflow_provider_zohobulk.sinks.DuckDBSink`, :class:`~airflow_provider_zohobulk.sinks.SqlSink`).
        Its location is templated.
    :param job_id: the Bulk Write job; its details give the download URL and the expected counts.
        Templated.
    :param download_url: a result URL to load directly (no job-details call). Templated.
    :param zoho_conn_id: the ``zoho_crm`` connection.
    :param limits: zip safety limits; raise them for very large exports.
    :param progress_interval: seconds between progress lines in the task log.
    :param wait_for_completion: wait for a running job to finish before loading (one task both waits and loads).
    :param deferrable: wait in the triggerer rather than a worker slot (default: ``[operators] default_deferrable``).
    :param poll_interval: seconds between job-details calls while waiting.
    :param wait_timeout: seconds to wait for the job before failing.
    :param hook_kwargs: extra keyword arguments for :class:`ZohoCrmHook` (timeouts, retries).

    Returns (XCom) a JSON-able summary: job_id, files, rows, by_status, errors_by_code,
    bytes_downloaded, destination.
    """

    template_fields: Sequence[str] = ("job_id", "download_url", "zoho_conn_id", "sink")
    ui_color = "#e8f4fd"
    operator_extra_links = (ZohoBulkWriteJobLink(),)

    def __init__(
        self,
        *,
        sink: ResultSink,
        job_id: str | None = None,
        download_url: str | None = None,
        zoho_conn_id: str = ZohoCrmHook.default_conn_name,
        limits: UnzipLimits | None = None,
        progress_interval: float = 10.0,
        wait_for_completion: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30.0,
        wait_timeout: float = 24 * 3600.0,
        hook_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not job_id and not download_url:
            raise ZohoConfigurationError("ZohoBulkWriteResultOperator needs job_id or download_url")
        if not isinstance(sink, ResultSink):
            raise ZohoConfigurationError(f"sink must be a ResultSink, not {type(sink).__name__}")
        if "outlets" not in kwargs and (asset := asset_for(sink)) is not None:
            kwargs["outlets"] = [asset]
        super().__init__(**kwargs)
        self.sink = sink
        self.job_id = job_id
        self.download_url = download_url
        self.zoho_conn_id = zoho_conn_id
        self.limits = limits
        self.progress_interval = progress_interval
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.hook_kwargs = hook_kwargs or {}

    @cached_property
    def hook(self) -> ZohoCrmHook:
        return ZohoCrmHook(self.zoho_conn_id, **self.hook_kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        job = None
        if self.job_id:
            endpoints = self.hook.endpoints
            ZohoBulkWriteJobLink.persist(
                context, job_web_url(endpoints.crm_web_url, self.hook.settings.org_id, self.job_id))
            job = self.hook.get_bulk_write_job(self.job_id)
            bulk_job.raise_if_failed(job, self.job_id)
            if self.wait_for_completion and not bulk_job.is_complete(job):
                if self.deferrable:
                    self.defer(
                        trigger=ZohoBulkWriteJobTrigger(self.job_id, self.zoho_conn_id, self.poll_interval,
                                                        self.hook_kwargs),
                        method_name="execute_complete",
                        timeout=timedelta(seconds=self.wait_timeout),
                    )
                job = self._poll_until_complete()
            job = self._require_complete(job)
        return self._record_asset_event(context, self._load_result(job))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resumed by the triggerer once the job finished: load its result."""
        if event.get("status") != "success":
            raise_error_event(event)
        return self._record_asset_event(context, self._load_result(self._require_complete(event["job"])))

    def _record_asset_event(self, context: Context, summary: dict[str, Any]) -> dict[str, Any]:
        """Put the small facts downstream DAGs want (job, rows, where) on the Asset event."""
        record_asset_event(self.outlets, context,
                           {key: summary[key] for key in ("job_id", "rows", "by_status", "destination")})
        return summary

    def _poll_until_complete(self) -> dict[str, Any]:
        return poll_until_complete(self.hook.get_bulk_write_job, self.job_id, kind="Bulk Write",
                                   poll_interval=self.poll_interval, wait_timeout=self.wait_timeout, log=self.log)

    def _require_complete(self, job: dict[str, Any]) -> dict[str, Any]:
        if not bulk_job.is_complete(job):
            raise BulkJobNotCompleteError(
                f"the Bulk Write job is {job.get('status')!r}, not COMPLETED, so it has no result yet; "
                "wait for it with ZohoBulkWriteJobSensor or wait_for_completion=True", job_id=self.job_id)
        if not bulk_job.download_url(job):
            raise BulkJobNotCompleteError("the job is COMPLETED but Zoho gave no result.download_url",
                                          job_id=self.job_id)
        return job

    def _load_result(self, job: dict[str, Any] | None) -> dict[str, Any]:
        url = self.download_url or bulk_job.download_url(job)
        job_id = self.job_id or bulk_job.job_id_from_download_url(url)
        if not job_id:
            raise ZohoConfigurationError(
                "job_id is needed to label the rows: it could not be read from the download URL")
        try:
            summary = self._load(url, job_id)
        except DownloadLinkExpiredError:
            if not self.job_id:
                raise
            self.log.warning("The download link of job %s has expired; asking Zoho for a fresh one", job_id)
            job = self._require_complete(self.hook.get_bulk_write_job(job_id))
            summary = self._load(bulk_job.download_url(job), job_id)
        if job is not None:
            self._check_counts(job, summary)
        self.log.info("Loaded job %s: %s rows %s into %s", job_id, summary["rows"], summary["by_status"],
                      ", ".join(summary["destination"]))
        return summary

    def _load(self, url: str, job_id: str) -> dict[str, Any]:
        stats = ResultStats()
        skipped: list[str] = []

        def on_skip(name: str, size: int) -> None:
            skipped.append(name)
            self.log.info("Skipping non-CSV member %r of the result (%d bytes)", name, size)

        use_lean_memory_pool()
        with self.hook.stream_download(url, job_id=job_id) as download:
            progress = Progress(self.log, interval=self.progress_interval, total_bytes=download.content_length)
            self.log.info("Downloading the result of job %s (%s, %s bytes)", job_id,
                          download.filename or "unnamed", download.content_length or "unknown")
            batches = read_bulk_write_result(
                progress.count_bytes(download), job_id=job_id, limits=self.limits, on_skip=on_skip
            )

            def counted():
                for file_name, batch in progress.count_rows(batches):
                    stats.add(file_name, batch)
                    yield file_name, batch
                # A commit can take a while (DuckDB inserts the staged rows then): say why the log pauses.
                self.log.info("Read and verified the whole archive of job %s (%d rows); committing them to the %s",
                              job_id, stats.rows, type(self.sink).__name__)

            try:
                destinations = load_batches(self.sink, job_id, counted())
            except ZohoBulkError as exc:
                raise exc.with_context(job_id=job_id) from exc
            progress.report("done")
        summary = {"job_id": job_id, **stats.as_dict(), "bytes_downloaded": download.bytes_read,
                   "destination": destinations}
        if skipped:
            summary["skipped_members"] = skipped
        return summary

    def _check_counts(self, job: dict[str, Any], summary: dict[str, Any]) -> None:
        expected = bulk_job.expected_counts(job)
        if expected is None:
            return
        actual = {status: summary["by_status"].get(status, 0) for status in expected}
        if actual != expected:
            self.log.warning(
                "Row counts differ from Zoho's job details for job %s: file has %s, Zoho says %s",
                summary["job_id"], actual, expected,
            )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The Zoho job as input, the sink's destination as output (OpenLineage provider installed)."""
        job_id = self.job_id or bulk_job.job_id_from_download_url(self.download_url or "") or "unknown"
        return lineage(self.hook, f"bulk-write/{job_id}", self.sink)
