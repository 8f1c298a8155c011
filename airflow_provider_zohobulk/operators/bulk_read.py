"""ZohoBulkReadOperator: export a Zoho CRM module with Bulk Read, page after page, into a sink, atomically.

Zoho exports a module as a chain of jobs, one per page of up to 200,000 records: each COMPLETED job says
whether more records follow and gives the token of the next page. The operator works in two phases:

1. **Collect the pages.** Create page 1's job, wait for it (polling in the worker, or deferred to the
   triggerer, resuming in :meth:`ZohoBulkReadOperator.execute_complete` with the pages so far), then, while
   ``more_records``, create the next page's job with ``next_page_token`` and wait again. Only small facts
   travel between deferrals: job ids, download paths, counts.
2. **Load them.** In one execution, never deferred: open the sink for the export, stream every page's zip
   through the same unzip and decode as Bulk Write results
   (:func:`~airflow_provider_zohobulk.bulk_read.read_export_page`), and commit once. Nothing is visible at
   the destination before every page has been read and verified; any failure aborts the whole run.

A retried task starts over with new jobs: page tokens live 24 hours and belong to one chain of jobs, and
the sink's commit-once load means no half-loaded run is left to resume.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from copy import copy
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_zohobulk import bulk_job
from airflow_provider_zohobulk.bulk_read import read_export_page
from airflow_provider_zohobulk.bulk_result import use_lean_memory_pool
from airflow_provider_zohobulk.errors import (
    BulkJobNotCompleteError,
    ZohoBulkError,
    ZohoConfigurationError,
    ZohoMalformedResponseError,
)
from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
from airflow_provider_zohobulk.operators.common import asset_for, lineage, poll_until_complete, record_asset_event
from airflow_provider_zohobulk.progress import Progress
from airflow_provider_zohobulk.sinks.base import EXPORT_WRITE_MODES, ExportLoad, ResultSink, load_export_batches
from airflow_provider_zohobulk.stream.unzip import UnzipLimits
from airflow_provider_zohobulk.triggers.bulk_job import ZohoBulkJobTrigger, raise_error_event

if TYPE_CHECKING:
    import pyarrow as pa
    from airflow.sdk import Context

KIND = "Bulk Read"
#: The field an incremental export filters on, and the merge key of a warehouse load.
MODIFIED_TIME = "Modified_Time"
RECORD_ID = "Id"


class ZohoBulkReadOperator(BaseOperator):
    """Export a Zoho CRM module (all pages of one Bulk Read) into a sink, committed once.

    :param module: the module's API name (``Leads``, ``Contacts``, a custom ``Invoices__c``...). Templated;
        map it with ``.partial(...).expand(module=[...])`` to export several modules in parallel.
    :param sink: where the rows go (:class:`~airflow_provider_zohobulk.sinks.ObjectStorageSink` with
        ``{file}`` in its URI when the export has several pages: objects are named ``<module>-<page:05d>``,
        :class:`~airflow_provider_zohobulk.sinks.DuckDBSink`, :class:`~airflow_provider_zohobulk.sinks.SqlSink`).
        Templated (``{{ task.module }}`` names a table per module).
    :param fields: the fields to export (API names), or a comma-separated string; all fields when omitted.
        Templated.
    :param criteria: Zoho's criteria JSON (``{"field": {"api_name": ...}, "comparator": ..., "value": ...}``
        or a ``group_operator``/``group``), or that JSON as text (``{{ params.criteria | tojson }}``). Templated.
    :param cvid: a custom view whose records to export. Templated.
    :param zoho_conn_id: the ``zoho_crm`` connection. Templated.
    :param incremental: export only records with ``Modified_Time`` in the run's data interval
        ``[data_interval_start, data_interval_end)``, and-ed with ``criteria``; a daily schedule then exports
        each day's changes once (pair it with ``write_mode="merge"``).
    :param write_mode: ``"replace"`` (the table holds exactly this export) or ``"merge"`` (insert or update
        on ``Id``, keep the rest); object storage writes the export's objects either way.
    :param deferrable: wait for each page's job in the triggerer rather than a worker slot (default:
        ``[operators] default_deferrable``).
    :param poll_interval: seconds between job-details calls while waiting.
    :param wait_timeout: seconds to wait for each page's job before failing.
    :param limits: zip safety limits; raise them for very large pages.
    :param progress_interval: seconds between progress lines in the task log.
    :param hook_kwargs: extra keyword arguments for :class:`ZohoCrmHook` (timeouts, retries).

    Returns (XCom) a JSON-able summary: module, pages, rows, bytes_downloaded, destination, job_ids.
    """

    template_fields: Sequence[str] = ("module", "fields", "criteria", "cvid", "sink", "zoho_conn_id")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        module: str,
        sink: ResultSink,
        fields: list[str] | str | None = None,
        criteria: dict[str, Any] | str | None = None,
        cvid: str | None = None,
        zoho_conn_id: str = ZohoCrmHook.default_conn_name,
        incremental: bool = False,
        write_mode: str = "replace",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30.0,
        wait_timeout: float = 24 * 3600.0,
        limits: UnzipLimits | None = None,
        progress_interval: float = 10.0,
        hook_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(sink, ResultSink):
            raise ZohoConfigurationError(f"sink must be a ResultSink, not {type(sink).__name__}")
        if write_mode not in EXPORT_WRITE_MODES:
            raise ZohoConfigurationError(
                f"write_mode must be one of {', '.join(map(repr, EXPORT_WRITE_MODES))}, not {write_mode!r}")
        if "outlets" not in kwargs and (asset := asset_for(sink)) is not None:
            kwargs["outlets"] = [asset]
        super().__init__(**kwargs)
        self.module = module
        # A copy: Airflow renders a sink's templates in place, and the mapped tasks of one
        # ``.partial(sink=...)`` share the sink object (in one process, as under ``dag.test()``).
        self.sink = copy(sink)
        self.fields = fields
        self.criteria = criteria
        self.cvid = cvid
        self.zoho_conn_id = zoho_conn_id
        self.incremental = incremental
        self.write_mode = write_mode
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.limits = limits
        self.progress_interval = progress_interval
        self.hook_kwargs = hook_kwargs or {}

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """``.partial(...).expand(module=[...])`` with the sink's Asset as outlet, as ``__init__`` gives an
        unmapped task: a mapped task's ``__init__`` runs only when it executes, after the DAG was parsed,
        too late to declare the Asset that downstream DAGs are scheduled on."""
        sink = kwargs.get("sink")
        if "outlets" not in kwargs and isinstance(sink, ResultSink) and (asset := asset_for(sink)) is not None:
            kwargs["outlets"] = [asset]
        return super().partial(**kwargs)

    @cached_property
    def hook(self) -> ZohoCrmHook:
        return ZohoCrmHook(self.zoho_conn_id, **self.hook_kwargs)

    # --- phase 1: one job per page, waited for ----------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        self._check_rendered_arguments()
        criteria = self._query_criteria(context)
        self.log.info("Exporting Zoho CRM module %s with Bulk Read (fields: %s; criteria: %s; custom view: %s)",
                      self.module, ", ".join(self._field_list() or ["all"]),
                      json.dumps(criteria) if criteria else "none", self.cvid or "none")
        return self._collect_pages(context, criteria, pages=[], last=None)

    def execute_complete(self, context: Context, event: dict[str, Any], criteria: dict[str, Any] | None = None,
                         pages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Resumed by the triggerer once a page's job finished: note the page, then go on with the next."""
        if event.get("status") != "success":
            raise_error_event(event)
        if pages is None:  # every deferral hands the pages so far, [] for page 1's
            raise ZohoConfigurationError(
                f"the {self.module} export was resumed without the pages collected before its deferral, so it "
                "cannot go on. Airflow's triggerer keeps a deferred task's kwargs, but dag.test() and 'airflow "
                "dags test' drop them when the trigger fires in Airflow versions without apache/airflow#69942 "
                "(3.3.2 among them): test with deferrable=False", job_id=event.get("job_id"))
        self._check_rendered_arguments()
        pages = list(pages)
        page = self._completed_page(event["job"], str(event["job_id"]), pages)
        return self._collect_pages(context, criteria, pages=[*pages, page_facts(event["job_id"], page)], last=page)

    def _collect_pages(self, context: Context, criteria: dict[str, Any] | None, *, pages: list[dict[str, Any]],
                       last: bulk_job.ReadPage | None) -> dict[str, Any]:
        """Create and wait for the jobs of the pages after ``last`` (page 1 when None), then load them all."""
        while last is None or last.more_records:
            job_id = self.hook.create_bulk_read_job(
                self.module, fields=self._field_list(), criteria=criteria, cvid=self._cvid(),
                page=len(pages) + 1, page_token=last.next_page_token if last else None)
            self.log.info("Created Zoho Bulk Read job %s for page %d of %s", job_id, len(pages) + 1, self.module)
            job = self._wait_for(job_id, criteria, pages)
            last = self._completed_page(job, job_id, pages)
            pages.append(page_facts(job_id, last))
        return self._load_pages(context, pages)

    def _wait_for(self, job_id: str, criteria: dict[str, Any] | None, pages: list[dict[str, Any]]) -> dict[str, Any]:
        """The job's details once COMPLETED; a deferrable task leaves here for the triggerer (pages in hand)."""
        job = self.hook.get_bulk_read_job(job_id)
        bulk_job.raise_if_failed(job, job_id, KIND)
        if bulk_job.is_complete(job):  # a finished job needs no trip through the triggerer
            return job
        if self.deferrable:
            self.defer(
                trigger=ZohoBulkJobTrigger(job_id, self.zoho_conn_id, self.poll_interval, self.hook_kwargs,
                                           operation="read"),
                method_name="execute_complete",
                kwargs={"criteria": criteria, "pages": pages},
                timeout=timedelta(seconds=self.wait_timeout),
            )
        return poll_until_complete(self.hook.get_bulk_read_job, job_id, kind=KIND, poll_interval=self.poll_interval,
                                   wait_timeout=self.wait_timeout, log=self.log)

    def _completed_page(self, job: dict[str, Any], job_id: str, pages: list[dict[str, Any]]) -> bulk_job.ReadPage:
        """The page a COMPLETED job holds; it must be the page that comes next (a repeated or skipped page
        would load duplicates or leave a hole)."""
        bulk_job.raise_if_failed(job, job_id, KIND)
        if not bulk_job.is_complete(job):
            raise BulkJobNotCompleteError(
                f"the {KIND} job is {job.get('status')!r}, not COMPLETED, so it has no page yet", job_id=job_id)
        page = bulk_job.read_page(job, job_id)
        if page.page != len(pages) + 1:
            raise ZohoMalformedResponseError(
                f"Zoho gave page {page.page} of the {self.module} export where page {len(pages) + 1} was due",
                job_id=job_id)
        self.log.info("Zoho Bulk Read job %s is COMPLETED: page %d of %s holds %d records%s", job_id, page.page,
                      self.module, page.count, ", more follow" if page.more_records else ", the last page")
        return page

    # --- phase 2: every page into the sink, one commit --------------------------------------------------

    def _load_pages(self, context: Context, pages: list[dict[str, Any]]) -> dict[str, Any]:
        load = ExportLoad(module=self.module, run_id=pages[0]["job_id"], write_mode=self.write_mode, key=RECORD_ID)
        totals = {"rows": 0, "bytes": 0}
        skipped: list[str] = []
        use_lean_memory_pool()

        def every_page() -> Iterator[tuple[str, pa.RecordBatch]]:
            for page in pages:
                yield from self._read_page(page, len(pages), totals, skipped)
            # A commit can take a while (a warehouse merges then): say why the log pauses.
            self.log.info("Read and verified all %d pages of %s (%d rows); committing them to the %s", len(pages),
                          self.module, totals["rows"], type(self.sink).__name__)

        try:
            destinations = load_export_batches(self.sink, load, every_page())
        except ZohoBulkError as exc:
            raise exc.with_context(job_id=load.run_id) from exc
        summary = {"module": self.module, "pages": len(pages), "rows": totals["rows"],
                   "bytes_downloaded": totals["bytes"], "destination": destinations,
                   "job_ids": [page["job_id"] for page in pages]}
        if skipped:
            summary["skipped_members"] = skipped
        self.log.info("Exported %s: %d rows in %d pages into %s", self.module, summary["rows"], summary["pages"],
                      ", ".join(destinations))
        record_asset_event(self.outlets, context,
                           {key: summary[key] for key in ("module", "pages", "rows", "destination")})
        return summary

    def _read_page(self, page: dict[str, Any], of: int, totals: dict[str, int],
                   skipped: list[str]) -> Iterator[tuple[str, pa.RecordBatch]]:
        """One page's rows, as ``(<module>-<page:05d>.csv, batch)``: the sink names the page's object after it."""
        job_id, number = page["job_id"], page["page"]
        file_name = f"{self.module}-{number:05d}.csv"

        def on_skip(name: str, size: int) -> None:
            skipped.append(name)
            self.log.info("Skipping non-CSV member %r of page %d (%d bytes)", name, number, size)

        try:
            with self.hook.stream_download(page["download_url"], job_id=job_id) as download:
                progress = Progress(self.log, interval=self.progress_interval, total_bytes=download.content_length)
                batches = read_export_page(progress.count_bytes(download), job_id=job_id, page=number,
                                           limits=self.limits, on_skip=on_skip)
                for _member, batch in progress.count_rows(batches):
                    yield file_name, batch
                progress.report(f"page {number} of {of} (job {job_id})")
        except ZohoBulkError as exc:
            raise exc.with_context(job_id=job_id) from exc
        totals["rows"] += progress.rows
        totals["bytes"] += download.bytes_read
        if progress.rows != page["count"]:
            self.log.warning("Page %d (job %s) holds %d rows where Zoho's job details say %d",
                             number, job_id, progress.rows, page["count"])

    # --- arguments ----------------------------------------------------------------------------------------

    def _check_rendered_arguments(self) -> None:
        """What templates may only produce at run time: checked before any job is created."""
        if not isinstance(self.module, str) or not self.module.strip():
            raise ZohoConfigurationError(f"module must be a Zoho module's API name, not {self.module!r}")
        fields = self._field_list()
        if self.write_mode == "merge" and fields is not None and RECORD_ID not in fields:
            raise ZohoConfigurationError(
                f"write_mode='merge' matches rows on {RECORD_ID!r}: add it to fields ({', '.join(fields)})")
        self._user_criteria()

    def _field_list(self) -> list[str] | None:
        if self.fields is None or self.fields == "" or self.fields == []:
            return None
        names = self.fields.split(",") if isinstance(self.fields, str) else self.fields
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ZohoConfigurationError(
                f"fields must be a list of field API names or a comma-separated string, not {self.fields!r}")
        return [name.strip() for name in names]

    def _cvid(self) -> str | None:
        if self.cvid is None:
            return None
        return str(self.cvid).strip() or None

    def _user_criteria(self) -> dict[str, Any] | None:
        criteria = self.criteria
        if criteria is None or (isinstance(criteria, str) and not criteria.strip()):
            return None
        if isinstance(criteria, str):
            try:
                criteria = json.loads(criteria)
            except ValueError as exc:
                raise ZohoConfigurationError(f"criteria is not valid JSON ({exc}): {self.criteria!r:.200}") from None
        if not isinstance(criteria, dict) or not criteria:
            raise ZohoConfigurationError(
                f"criteria must be a JSON object in Zoho's criteria form, not {self.criteria!r:.200}")
        return criteria

    def _query_criteria(self, context: Context) -> dict[str, Any] | None:
        """The user's criteria, and-ed with the data interval's Modified_Time window when incremental."""
        criteria = self._user_criteria()
        if not self.incremental:
            return criteria
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is None or end is None:
            raise ZohoConfigurationError(
                "incremental=True exports the records modified in the run's data interval, and this run has none "
                "(a manual run without a logical date): trigger it with a logical date, or set incremental=False")
        if not start < end:
            raise ZohoConfigurationError(
                f"incremental=True exports the records modified in the run's data interval, and this run's is "
                f"empty ({zoho_datetime(start)} to {zoho_datetime(end)}): give the DAG a schedule whose runs "
                "cover an interval, such as CronTriggerTimetable('@daily', timezone='UTC', "
                "interval=timedelta(days=1)) (a plain '@daily' gives Airflow 3 runs an empty one), or set "
                "incremental=False")
        return and_criteria(modified_window(start, end), criteria)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The Zoho module as input, the sink's destination as output (OpenLineage provider installed)."""
        return lineage(self.hook, f"bulk-read/{self.module}", self.sink)


def page_facts(job_id: str, page: bulk_job.ReadPage) -> dict[str, Any]:
    """What phase 2 needs of a page, small and JSON-able (it travels in the deferral's kwargs)."""
    return {"job_id": str(job_id), "page": page.page, "count": page.count, "download_url": page.download_url}


def zoho_datetime(value: datetime) -> str:
    """ISO 8601 with the offset, to the second, as Zoho's criteria take it: ``2026-01-01T00:00:00+00:00``.

    Cut to the second (Zoho keeps no fractions), which keeps consecutive windows back to back."""
    if value.tzinfo is None:
        raise ZohoConfigurationError(f"the data interval's {value!r} has no time zone")
    return value.astimezone(timezone.utc).replace(microsecond=0).isoformat()


def modified_window(start: datetime, end: datetime) -> dict[str, Any]:
    """Records with ``start <= Modified_Time < end``: half-open like Airflow's data intervals, so that
    back-to-back runs export a record modified exactly at midnight once, not twice or never."""
    return {"group_operator": "and", "group": [
        {"field": {"api_name": MODIFIED_TIME}, "comparator": "greater_equal", "value": zoho_datetime(start)},
        {"field": {"api_name": MODIFIED_TIME}, "comparator": "less_than", "value": zoho_datetime(end)},
    ]}


def and_criteria(window: dict[str, Any], criteria: dict[str, Any] | None) -> dict[str, Any]:
    """``window`` and ``criteria`` in Zoho's group form; an ``and`` group of the user's is flattened into it."""
    if criteria is None:
        return window
    if str(criteria.get("group_operator", "")).lower() == "and" and isinstance(criteria.get("group"), list):
        return {"group_operator": "and", "group": [*window["group"], *criteria["group"]]}
    return {"group_operator": "and", "group": [*window["group"], criteria]}
