"""ZohoBulkWriteResultOperator: stream a Bulk Write job's result zip into a sink, atomically.

The operator is glue: it asks the hook for the job and an open download, runs the streaming core
(:func:`~airflow_provider_zohobulk.bulk_result.read_bulk_write_result`) over the bytes, and drives the
sink through open / write / commit (abort on any error). Everything heavy lives in the core, which
knows nothing of Airflow.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import tempfile
from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_zohobulk import bulk_job
from airflow_provider_zohobulk.bulk_result import ResultStats, read_bulk_write_result, use_lean_memory_pool
from airflow_provider_zohobulk.bulk_write_submit import (
    SubmissionPlan,
    SubmitLimits,
    UploadFile,
    input_row_numbers,
    plan_submission,
    write_upload_files,
)
from airflow_provider_zohobulk.errors import (
    BulkJobNotCompleteError,
    DownloadLinkExpiredError,
    SubmissionChangedError,
    SubmissionUncertainError,
    ZohoBulkError,
    ZohoConfigurationError,
    ZohoConnectionError,
    ZohoServerError,
)
from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
from airflow_provider_zohobulk.links import ZohoBulkWriteJobLink, job_web_url
from airflow_provider_zohobulk.operators.common import asset_for, lineage, poll_until_complete, record_asset_event
from airflow_provider_zohobulk.progress import Progress
from airflow_provider_zohobulk.sinks.base import ResultSink, load_batches
from airflow_provider_zohobulk.sources import RowSource
from airflow_provider_zohobulk.stream.unzip import UnzipLimits
from airflow_provider_zohobulk.triggers.bulk_write import ZohoBulkWriteJobTrigger, raise_error_event

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)


def load_job_result(hook: ZohoCrmHook, sink: ResultSink, url: str, job_id: str, *, limits: UnzipLimits | None,
                    progress_interval: float, log: logging.Logger, first_row: int = 1) -> dict[str, Any]:
    """Stream one Bulk Write job's result zip from ``url`` into ``sink`` (one atomic load) and return its summary.

    ``first_row``: the input row of the job's first record, for jobs this provider submitted: each
    ``row_number`` then becomes the row of the input it reports on, so outcome joins input. Shared by the
    result operator and the submitting operator, so the two can never load a result differently.
    """
    stats = ResultStats()
    skipped: list[str] = []

    def on_skip(name: str, size: int) -> None:
        skipped.append(name)
        log.info("Skipping non-CSV member %r of the result (%d bytes)", name, size)

    use_lean_memory_pool()
    with hook.stream_download(url, job_id=job_id) as download:
        progress = Progress(log, interval=progress_interval, total_bytes=download.content_length)
        log.info("Downloading the result of job %s (%s, %s bytes)", job_id,
                 download.filename or "unnamed", download.content_length or "unknown")
        batches = read_bulk_write_result(progress.count_bytes(download), job_id=job_id, limits=limits, on_skip=on_skip)

        def counted():
            for file_name, batch in progress.count_rows(batches):
                if first_row != 1:
                    batch = input_row_numbers(batch, first_row)
                stats.add(file_name, batch)
                yield file_name, batch
            # A commit can take a while (DuckDB inserts the staged rows then): say why the log pauses.
            log.info("Read and verified the whole archive of job %s (%d rows); committing them to the %s",
                     job_id, stats.rows, type(sink).__name__)

        try:
            destinations = load_batches(sink, job_id, counted(), first_row=first_row)
        except ZohoBulkError as exc:
            raise exc.with_context(job_id=job_id) from exc
        progress.report("done")
    summary = {"job_id": job_id, **stats.as_dict(), "bytes_downloaded": download.bytes_read,
               "destination": destinations}
    if skipped:
        summary["skipped_members"] = skipped
    return summary


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
        return load_job_result(self.hook, self.sink, url, job_id, limits=self.limits,
                               progress_interval=self.progress_interval, log=self.log)

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


class SubmissionLedger:
    """Which of a task's upload files already have a Zoho job, kept in an Airflow Variable across tries.

    Airflow clears a task's XCom when it retries, and a Bulk Write job cannot be taken back: a task that
    crashed after creating two of three jobs must, when retried, create only the third. The ledger is the
    record of what was sent, written right after each job is created (the window left is the one between
    Zoho's answer and that write) and deleted when the task succeeds, so a deliberate re-run submits again.
    Each entry keeps the file's SHA-256: the files are deterministic, so a retry that rebuilds a different
    file knows the input changed and refuses to mix two inputs (:class:`SubmissionChangedError`).
    """

    def __init__(self, key: str) -> None:
        self.key = key

    @classmethod
    def for_task(cls, context: Context) -> SubmissionLedger:
        ti = context["ti"]
        identity = f"{ti.dag_id}\x00{ti.run_id}\x00{ti.task_id}\x00{getattr(ti, 'map_index', -1)}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        # Readable enough to find in the UI's Variables list, bounded whatever the ids' lengths.
        return cls(f"zohobulk_submission__{ti.task_id[:120]}__{digest}")

    def entries(self) -> list[dict[str, Any]]:
        from airflow.sdk import Variable

        value = Variable.get(self.key, default=None, deserialize_json=True)
        return list(value.get("files", [])) if isinstance(value, dict) else []

    def save(self, entries: list[dict[str, Any]]) -> None:
        from airflow.sdk import Variable

        Variable.set(self.key, {"files": entries}, serialize_json=True,
                     description="Zoho Bulk Write jobs this task already created (airflow-provider-zohobulk); "
                                 "deleted when the task succeeds")

    def delete(self) -> None:
        from airflow.sdk import Variable

        try:
            Variable.delete(self.key)
        except Exception as exc:  # the task's work is done; a stale ledger only costs a Variable
            log.warning("Could not delete the submission ledger Variable %s: %s", self.key, exc)


class ZohoBulkWriteOperator(BaseOperator):
    """Submit rows to Zoho CRM with Bulk Write, wait for the jobs, and load their results.

    The rows come from a :class:`~airflow_provider_zohobulk.sources.RowSource` (a file in object storage,
    a SQL query) and are streamed into zipped CSV files within Zoho's limits (25,000 records, 200
    columns, 25 MB zipped per file), all written and checked on local disk before the first upload, so
    bad input is refused before anything reaches Zoho. Each file is uploaded and gets its own job.
    With ``wait_for_completion`` the task waits for every job (in the triggerer with ``deferrable=True``) and, with
    ``result_sink``, loads each job's result with the same pipeline as
    :class:`ZohoBulkWriteResultOperator`, ``row_number`` being the row of the input the outcome is for.

    A retried task does not submit the same rows twice: see :class:`SubmissionLedger`.

    :param module: the Zoho module (``Leads``). Templated.
    :param operation: ``insert``, ``update`` or ``upsert``. Templated.
    :param source: where the rows come from. Its location and query are templated.
    :param find_by: the field that finds existing records (required for update and upsert). Templated.
    :param field_mappings: Zoho field api name -> input column. Only these columns are uploaded; without
        it every column is uploaded and its header must be the Zoho field's api name. Templated.
    :param result_sink: where each job's result rows go (needs ``wait_for_completion``).
    :param limits: Zoho's per-file limits and the field lengths checked before sending.
    :param result_limits: zip safety limits for the results.
    """

    template_fields: Sequence[str] = ("module", "operation", "source", "find_by", "field_mappings", "zoho_conn_id",
                                      "result_sink")
    template_fields_renderers = {"field_mappings": "json"}
    ui_color = "#fdf1e8"

    def __init__(
        self,
        *,
        module: str,
        source: RowSource,
        operation: str = "insert",
        find_by: str | None = None,
        field_mappings: dict[str, str] | None = None,
        zoho_conn_id: str = ZohoCrmHook.default_conn_name,
        wait_for_completion: bool = True,
        result_sink: ResultSink | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30.0,
        wait_timeout: float = 24 * 3600.0,
        limits: SubmitLimits | None = None,
        result_limits: UnzipLimits | None = None,
        progress_interval: float = 10.0,
        hook_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(source, RowSource):
            raise ZohoConfigurationError(f"source must be a RowSource, not {type(source).__name__}")
        if result_sink is not None and not isinstance(result_sink, ResultSink):
            raise ZohoConfigurationError(f"result_sink must be a ResultSink, not {type(result_sink).__name__}")
        if result_sink is not None and not wait_for_completion:
            raise ZohoConfigurationError("result_sink needs wait_for_completion=True: a result exists only once "
                                         "the job has finished")
        if result_sink is not None and "outlets" not in kwargs and (asset := asset_for(result_sink)) is not None:
            kwargs["outlets"] = [asset]
        super().__init__(**kwargs)
        self.module = module
        self.source = source
        self.operation = operation
        self.find_by = find_by
        self.field_mappings = field_mappings
        self.zoho_conn_id = zoho_conn_id
        self.wait_for_completion = wait_for_completion
        self.result_sink = result_sink
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.limits = limits or SubmitLimits()
        self.result_limits = result_limits
        self.progress_interval = progress_interval
        self.hook_kwargs = hook_kwargs or {}

    @cached_property
    def hook(self) -> ZohoCrmHook:
        return ZohoCrmHook(self.zoho_conn_id, **self.hook_kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        ledger = SubmissionLedger.for_task(context)
        jobs = self._submit(ledger)
        return self._after_submission(context, ledger, jobs)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resumed by the triggerer once a job finished: the jobs come from the ledger, not the deferral's
        kwargs (which ``dag.test()`` in Airflow 3.3.2 drops), then the remaining waits and the loads."""
        if event.get("status") != "success":
            raise_error_event(event)
        ledger = SubmissionLedger.for_task(context)
        jobs = [_job_facts(entry) for entry in ledger.entries()]
        if not any(job["job_id"] == event.get("job_id") for job in jobs):
            raise ZohoConfigurationError(
                f"resumed for job {event.get('job_id')} but the submission ledger (Variable {ledger.key}) does not "
                "list it; was the Variable deleted while the task waited?", job_id=event.get("job_id"))
        return self._after_submission(context, ledger, jobs)

    # --- submitting ----------------------------------------------------------------------------------------

    def _submit(self, ledger: SubmissionLedger) -> list[dict[str, Any]]:
        """Build every upload file, then upload and create a job for each file the ledger does not hold."""
        with tempfile.TemporaryDirectory(prefix="zohobulk-submit-") as work_dir:
            plan, files = self._write_files(work_dir)
            done = {entry["index"]: entry for entry in ledger.entries()}
            if len(files) < len(done):
                raise SubmissionChangedError(
                    f"an earlier try of this task submitted {len(done)} files to Zoho but the input now makes "
                    f"{len(files)}: the input changed between tries. Check the jobs already created "
                    f"({', '.join(entry['job_id'] for entry in done.values())}), then delete the Variable "
                    f"{ledger.key} to submit the new input")
            entries = [done[index] for index in sorted(done)]
            for upload in files:
                previous = done.get(upload.index)
                if previous is not None:
                    self._check_previous(previous, upload, ledger)
                    self.log.info("%s was submitted by an earlier try as job %s; not sending it again",
                                  upload.name, previous["job_id"])
                    continue
                file_id = self.hook.upload_bulk_write_file(upload.path, file_name=f"{Path(upload.name).stem}.zip")
                entry = {"index": upload.index, "name": upload.name, "csv_sha256": upload.csv_sha256,
                         "first_row": upload.first_row, "rows": upload.rows, "file_id": file_id, "job_id": None}
                entries.append(entry)
                ledger.save(entries)  # before the create: a lost answer must not become a second job
                try:
                    entry["job_id"] = self.hook.create_bulk_write_job(
                        module=plan.module, operation=plan.operation, file_id=file_id,
                        find_by=plan.find_by, field_mappings=plan.zoho_field_mappings())
                except (ZohoServerError, ZohoConnectionError):
                    raise  # the request may have reached Zoho: the entry stays, and a retry asks the user
                except BaseException:
                    entries.remove(entry)  # Zoho refused it or it was never sent: no job exists
                    ledger.save(entries)
                    raise
                ledger.save(entries)
                self.log.info("Uploaded %s (input rows %d to %d, %.1f MB zipped) as file %s: Bulk Write %s job %s",
                              upload.name, upload.first_row, upload.first_row + upload.rows - 1,
                              upload.zipped_bytes / 1e6, file_id, plan.operation, entry["job_id"])
        return [_job_facts(entry) for entry in entries]

    def _check_previous(self, previous: dict[str, Any], upload: UploadFile, ledger: SubmissionLedger) -> None:
        """An earlier try's entry for this file must be a created job for the very same rows."""
        rows = f"input rows {upload.first_row} to {upload.first_row + upload.rows - 1}"
        if previous["csv_sha256"] != upload.csv_sha256:  # the CSV's: the zip's bytes depend on zlib's build
            raise SubmissionChangedError(
                f"{upload.name} ({rows}) differs from the file an earlier try submitted (CSV SHA-256 "
                f"{upload.csv_sha256[:12]}... now, {previous['csv_sha256'][:12]}... then): the input changed "
                f"between tries. Delete the Variable {ledger.key} to submit the new input", file_name=upload.name)
        if not previous.get("job_id"):
            raise SubmissionUncertainError(
                f"an earlier try uploaded {upload.name} ({rows}) as Zoho file {previous.get('file_id')} and asked "
                "Zoho to create its Bulk Write job, but the answer was lost, so the job may exist. Look for a job "
                f"of that file among the org's Bulk Write jobs, then in the Variable {ledger.key} either set that "
                f"entry's job_id to its id or delete the entry (to create it), and clear the task",
                file_name=upload.name)

    def _write_files(self, work_dir: str) -> tuple[SubmissionPlan | None, list[UploadFile]]:
        """The whole input as upload files on local disk, checked, and the plan they follow (None for an
        input without rows); nothing is sent before this returns."""
        self.log.info("Reading rows to %s into Zoho %s from %s", self.operation, self.module, self.source.describe())
        batches = iter(self.source.batches())
        first = next(batches, None)
        if first is None:
            self.log.warning("The source %s holds no rows: nothing to submit", self.source.describe())
            return None, []
        plan = plan_submission(first.schema, module=self.module, operation=self.operation,
                                     find_by=self.find_by or None, field_mappings=self.field_mappings or None,
                                     limits=self.limits)
        files = write_upload_files(itertools.chain([first], batches), plan, work_dir=work_dir,
                                   limits=self.limits, name_prefix=self.module)
        self.log.info("Wrote %d rows into %d upload files (%.1f MB zipped), all within Zoho's limits",
                      sum(f.rows for f in files), len(files), sum(f.zipped_bytes for f in files) / 1e6)
        return plan, files

    # --- waiting and loading ---------------------------------------------------------------------------------

    def _after_submission(self, context: Context, ledger: SubmissionLedger, jobs: list[dict[str, Any]]
                          ) -> dict[str, Any]:
        summary: dict[str, Any] = {"module": self.module, "operation": self.operation,
                                   "rows": sum(job["rows"] for job in jobs), "files": len(jobs), "jobs": jobs}
        if self.wait_for_completion and jobs:
            details = {job["job_id"]: self._wait_for(job["job_id"]) for job in jobs}
            if self.result_sink is not None:
                summary.update(self._load_results(jobs, details))
            else:
                summary["by_status"] = _sum_counts(bulk_job.expected_counts(job) or {} for job in details.values())
        ledger.delete()
        if self.result_sink is not None:
            record_asset_event(self.outlets, context,
                               {key: summary.get(key) for key in ("module", "rows", "by_status", "destination")})
        return summary

    def _wait_for(self, job_id: str) -> dict[str, Any]:
        job = self.hook.get_bulk_write_job(job_id)
        bulk_job.raise_if_failed(job, job_id)
        if bulk_job.is_complete(job):
            return job
        if self.deferrable:  # the resumed task finds its jobs in the ledger and comes back here
            self.defer(
                trigger=ZohoBulkWriteJobTrigger(job_id, self.zoho_conn_id, self.poll_interval, self.hook_kwargs),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.wait_timeout),
            )
        return poll_until_complete(self.hook.get_bulk_write_job, job_id, kind="Bulk Write",
                                   poll_interval=self.poll_interval, wait_timeout=self.wait_timeout, log=self.log)

    def _load_results(self, jobs: list[dict[str, Any]], details: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Every job's result into the sink, one atomic load per job (a sink keys its rows by job id)."""
        destinations: list[str] = []
        for job in jobs:
            url = bulk_job.download_url(details[job["job_id"]])
            if not url:
                raise BulkJobNotCompleteError("the job is COMPLETED but Zoho gave no result.download_url",
                                              job_id=job["job_id"])
            loaded = load_job_result(self.hook, self.result_sink, url, job["job_id"], limits=self.result_limits,
                                     progress_interval=self.progress_interval, log=self.log,
                                     first_row=job["first_row"])
            job["by_status"] = loaded["by_status"]
            destinations.extend(d for d in loaded["destination"] if d not in destinations)
        by_status = _sum_counts(job["by_status"] for job in jobs)
        self.log.info("Loaded the results of %d jobs: %s into %s", len(jobs), by_status, ", ".join(destinations))
        return {"by_status": by_status, "destination": destinations}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The Zoho module as output of the submission; the results' sink too when there is one."""
        if self.result_sink is None:
            return None
        return lineage(self.hook, f"module/{self.module}", self.result_sink)


def _job_facts(entry: dict[str, Any]) -> dict[str, Any]:
    """The XCom facts of one submitted file: its job, and which input rows it carried."""
    return {"job_id": entry["job_id"], "file": entry["name"], "first_row": entry["first_row"],
            "last_row": entry["first_row"] + entry["rows"] - 1, "rows": entry["rows"]}


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for key, value in one.items():
            total[key] = total.get(key, 0) + value
    return total
