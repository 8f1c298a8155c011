"""ZohoBulkReadOperator end to end: the sandbox's Bulk Read over real HTTP -> pages -> sinks.

Waiting both ways: polling in the worker, and deferred, with the trigger run inline and a FRESH operator
resumed from the deferral's kwargs after a JSON round trip (what Airflow stores between the two). One
test runs a DAG with Airflow's own runner (``dag.test()``): mapped modules, deferred, Parquet and SQLite.
Failure paths call ``execute`` directly so that the typed exception itself can be inspected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_zohobulk.errors import (
    BulkJobFailedError,
    BulkJobNotCompleteError,
    CorruptArchiveError,
    DownloadError,
    TruncatedArchiveError,
    ZohoConfigurationError,
    ZohoRateLimitError,
)
from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
from airflow_provider_zohobulk.operators.bulk_read import ZohoBulkReadOperator, and_criteria, modified_window
from airflow_provider_zohobulk.sinks import DuckDBSink, ObjectStorageSink, SqlSink

FAST_HOOK = {"retry_backoff": 0.01, "max_backoff": 0.05, "retry_limit": 2, "timeout": (5, 30)}
META = ["_job_id", "_page", "_row_number"]
DAY_START, DAY_END = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc)
SQLITE_CONN = "zoho_bulk_read_sqlite"
JOB_STEP = 10.0  # sandbox seconds per job state; a job is COMPLETED 3 steps after it was created


# --- helpers ----------------------------------------------------------------------------------------------


class _TaskInstance:
    def xcom_push(self, key: str, value: object) -> None:
        pass


class _OutletEvent:
    extra: dict = {}


def task_context(**extra) -> dict:
    """The parts of Airflow's context the operator uses; the data interval only when given."""
    return {"ti": _TaskInstance(), "outlet_events": defaultdict(_OutletEvent), **extra}


def window_context() -> dict:
    return task_context(data_interval_start=DAY_START, data_interval_end=DAY_END)


def export(sink, module: str = "Leads", **kwargs) -> ZohoBulkReadOperator:
    kwargs.setdefault("deferrable", False)
    kwargs.setdefault("poll_interval", 0.05)
    return ZohoBulkReadOperator(task_id="export", module=module, sink=sink, hook_kwargs=FAST_HOOK, **kwargs)


def run_deferred(make_operator, context: dict, sandbox, before_resume=None) -> tuple[dict, list[TaskDeferred]]:
    """Run an export as Airflow does: ``execute``; at each deferral move the sandbox clock past the job's
    steps, run the trigger inline (rebuilt from its serialised form, as the triggerer does) and resume a
    fresh operator's ``execute_complete`` with the event and the deferral's kwargs, both through JSON.
    ``before_resume(number, kwargs)`` runs before each resumption (to plant a fault)."""
    deferrals: list[TaskDeferred] = []
    resume = None
    while True:
        operator = make_operator()
        try:
            return (operator.execute(context) if resume is None else resume(operator)), deferrals
        except TaskDeferred as deferred:
            deferrals.append(deferred)
            kwargs = json.loads(json.dumps(deferred.kwargs))
            if before_resume:
                before_resume(len(deferrals), kwargs)
            sandbox.advance_clock(3 * JOB_STEP + 1)
            classpath, trigger_kwargs = deferred.trigger.serialize()
            assert classpath == "airflow_provider_zohobulk.triggers.bulk_job.ZohoBulkJobTrigger"
            event = json.loads(json.dumps(first_event(type(deferred.trigger)(**trigger_kwargs))))

            def resume(op, event=event, kwargs=kwargs, method=deferred.method_name):
                return getattr(op, method)(context, event=event, **kwargs)


def first_event(trigger) -> dict:
    async def run():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(run())


def expected_rows(sandbox, module: str, criteria: dict | None = None, limit: int = 100_000) -> list[dict]:
    """What the export must hold, from the sandbox's own view of the module (no job, no download)."""
    answer = sandbox.read_records(module, criteria, limit=limit)
    return [dict(zip(answer["fields"], record, strict=True)) for record in answer["records"]]


def parquet_rows(paths: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(path) for path in paths])


def sqlite_rows(path: Path, table: str, columns: list[str]) -> list[dict]:
    quoted = ", ".join(f'"{name}"' for name in columns)
    with sqlite3.connect(path) as connection:
        rows = connection.execute(f'SELECT {quoted} FROM "{table}" ORDER BY "Id"').fetchall()
    return [dict(zip(columns, row, strict=True)) for row in rows]


def job_ids(sandbox) -> list[str]:
    return [job["id"] for job in sandbox.read_jobs()]


@pytest.fixture
def sandbox_conn(zoho_sandbox, monkeypatch):
    """The sandbox behind ``zoho_crm_default``, without its 10-downloads-a-minute limit (the limit's own
    handling is the hook's: tests/test_sandbox_bulk_read.py and tests/test_hook_bulk_read.py)."""
    for name, value in zoho_sandbox.airflow_connection_env().items():
        monkeypatch.setenv(name, value)
    zoho_sandbox.configure(bulk_read_downloads_per_minute=None)
    return zoho_sandbox


@pytest.fixture
def four_pages(sandbox_conn):
    """3,500 Leads in pages of 1,000: pages of 1000, 1000, 1000 and 500 records."""
    sandbox_conn.seed_module("Leads", 3500, seed=3)
    sandbox_conn.configure(bulk_read_per_page=1000)
    return sandbox_conn


@pytest.fixture
def sqlite_db(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv(f"AIRFLOW_CONN_{SQLITE_CONN.upper()}", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


# --- the export: pages, rows, summary ------------------------------------------------------------------------


def test_four_pages_into_local_parquet(four_pages, tmp_path, caplog, capsys):
    sink = ObjectStorageSink(f"file://{tmp_path}/lake/{{file}}.parquet")
    with caplog.at_level(logging.INFO):
        summary = export(sink, progress_interval=0).execute(task_context())

    jobs = four_pages.read_jobs()
    assert [(job["page"], job["count"], job["more_records"]) for job in jobs] == [
        (1, 1000, True), (2, 1000, True), (3, 1000, True), (4, 500, False)]
    assert jobs[0]["page_token"] is None  # each next page by the token the page before gave
    assert [job["page_token"] for job in jobs[1:]] == [job["next_page_token"] for job in jobs[:-1]]
    assert [job["downloads"] for job in jobs] == [1, 1, 1, 1]

    files = sorted((tmp_path / "lake").iterdir())
    assert [path.name for path in files] == [f"Leads-0000{n}.parquet" for n in (1, 2, 3, 4)]
    table = parquet_rows(files)
    expected = expected_rows(four_pages, "Leads")
    assert table.column_names == [*expected[0], *META]
    assert table.select(list(expected[0])).to_pylist() == expected
    first_id = int(four_pages.read_modules()["Leads"]["first_id"])
    assert [int(value) for value in table.column("Id").to_pylist()] == list(range(first_id, first_id + 3500))
    ids = [job["id"] for job in jobs]
    for number, path in enumerate(files, start=1):
        page = pq.read_table(path)
        count = 500 if number == 4 else 1000
        assert page.column("_job_id").to_pylist() == [ids[number - 1]] * count
        assert page.column("_page").to_pylist() == [number] * count
        assert page.column("_row_number").to_pylist() == list(range(1, count + 1))

    assert summary["module"] == "Leads" and summary["pages"] == 4 and summary["rows"] == 3500
    assert summary["job_ids"] == ids
    assert summary["destination"] == [f"file://{path}" for path in files]
    assert json.loads(json.dumps(summary)) == summary
    log = caplog.text + capsys.readouterr().out
    for number in (1, 2, 3, 4):
        assert f"page {number} of 4 (job {ids[number - 1]}):" in log
    assert "MB/s" in log
    assert "Read and verified all 4 pages of Leads (3500 rows); committing them to the ObjectStorageSink" in log


def test_summary_counts_the_bytes_and_records_the_asset_event(four_pages, tmp_path, caplog, capsys):
    sink = ObjectStorageSink(f"file://{tmp_path}/lake/{{file}}.jsonl")
    operator = export(sink)
    context = task_context()
    with caplog.at_level(logging.DEBUG):
        summary = operator.execute(context)
    assert set(summary) == {"module", "pages", "rows", "bytes_downloaded", "destination", "job_ids"}
    hook = ZohoCrmHook(**FAST_HOOK)
    page_sizes = []
    for job_id in summary["job_ids"]:
        with hook.stream_download(f"/crm/bulk/v8/read/{job_id}/result", job_id=job_id) as download:
            page_sizes.append(sum(len(chunk) for chunk in download))
    assert summary["bytes_downloaded"] == sum(page_sizes) > 0  # the same seed gives the same bytes
    (asset,) = operator.outlets
    assert asset.uri == Asset(f"file://{tmp_path}/lake").uri
    assert context["outlet_events"][asset].extra == {
        "module": "Leads", "pages": 4, "rows": 3500, "destination": summary["destination"]}
    text = json.dumps(summary) + caplog.text + capsys.readouterr().out
    assert "Exported Leads: 3500 rows in 4 pages" in text  # the logs were captured at all
    for secret in ("sandbox-client-secret", "sandbox-refresh-token", hook.get_access_token()):
        assert secret not in text


def test_deferred_export_resumes_page_after_page(four_pages, tmp_path):
    four_pages.configure(job_step_seconds=JOB_STEP)
    lake = tmp_path / "lake"
    seen_while_waiting = []

    def make():
        return export(ObjectStorageSink(f"file://{lake}/{{file}}.parquet"), deferrable=True, poll_interval=7,
                      wait_timeout=600)

    def before_resume(number, kwargs):
        seen_while_waiting.append(sorted(lake.iterdir()) if lake.exists() else [])

    summary, deferrals = run_deferred(make, task_context(), four_pages, before_resume)

    assert len(deferrals) == 4  # one wait per page, in the triggerer
    ids = job_ids(four_pages)
    assert [deferred.trigger.job_id for deferred in deferrals] == ids
    for number, deferred in enumerate(deferrals):
        assert deferred.method_name == "execute_complete"
        assert deferred.timeout == timedelta(seconds=600)
        assert (deferred.trigger.operation, deferred.trigger.poll_interval) == ("read", 7)
        pages = deferred.kwargs["pages"]
        assert [page["job_id"] for page in pages] == ids[:number]  # the pages so far, small facts only
        assert all(set(page) == {"job_id", "page", "count", "download_url"} for page in pages)
        assert len(json.dumps(deferred.kwargs)) < 1000
    assert seen_while_waiting == [[]] * 4  # nothing visible before the one commit
    assert summary["rows"] == 3500 and summary["job_ids"] == ids
    table = parquet_rows(sorted(lake.iterdir()))
    assert table.select(["Id", "Email", "Modified_Time"]).to_pylist() == [
        {key: row[key] for key in ("Id", "Email", "Modified_Time")} for row in expected_rows(four_pages, "Leads")]


def test_resumed_without_the_deferrals_kwargs_is_a_clear_error(four_pages, tmp_path):
    """What dag.test() of this Airflow does (apache/airflow#69942): the event, without the pages so far."""
    four_pages.configure(job_step_seconds=JOB_STEP)
    operator = export(ObjectStorageSink(str(tmp_path / "x.parquet")), deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(task_context())
    four_pages.advance_clock(3 * JOB_STEP + 1)
    event = first_event(deferred.value.trigger)
    with pytest.raises(ZohoConfigurationError, match="apache/airflow#69942"):
        export(ObjectStorageSink(str(tmp_path / "x.parquet")), deferrable=True).execute_complete(
            task_context(), event=event)
    assert len(four_pages.read_jobs()) == 1 and list(tmp_path.iterdir()) == []


def test_polling_waits_for_each_page(four_pages, tmp_path):
    four_pages.configure(job_step_seconds=0.15)  # the sandbox clock runs with the real one
    summary = export(DuckDBSink(str(tmp_path / "w.duckdb"), "leads")).execute(task_context())
    assert summary["rows"] == 3500
    polls = defaultdict(int)
    for request in four_pages.stats()["requests"]:
        if request["method"] == "GET" and request["path"].rstrip("/").split("/")[-1] in summary["job_ids"]:
            polls[request["path"].rstrip("/").split("/")[-1]] += 1
    assert all(polls[job_id] >= 2 for job_id in summary["job_ids"]), polls  # it waited for every page


def test_polling_wait_gives_up_at_its_timeout(four_pages, tmp_path):
    four_pages.configure(job_step_seconds=10**6)
    operator = export(ObjectStorageSink(str(tmp_path / "x.parquet")), poll_interval=0.2, wait_timeout=1)
    with pytest.raises(BulkJobNotCompleteError, match="after waiting 1s") as info:
        operator.execute(task_context())
    assert info.value.job_id == job_ids(four_pages)[0]
    assert list(tmp_path.iterdir()) == []


def test_a_fields_selection_and_a_custom_view_reach_zoho(four_pages, tmp_path):
    summary = export(ObjectStorageSink(f"file://{tmp_path}/{{file}}.csv"), fields="Id, Email,Last_Name",
                     ).execute(task_context())
    assert all(job["fields"] == ["Id", "Email", "Last_Name"] for job in four_pages.read_jobs())
    header = (tmp_path / "Leads-00001.csv").read_text().splitlines()[0]
    assert header.replace('"', "") == "Id,Email,Last_Name,_job_id,_page,_row_number"
    assert summary["rows"] == 3500


# --- incremental -------------------------------------------------------------------------------------------


@pytest.fixture
def around_new_year(sandbox_conn):
    """2,000 Leads modified between 2025-12-30 and 2026-01-03: about 500 a day."""
    sandbox_conn.seed_module("Leads", 2000, seed=5, modified_from="2025-12-30T00:00:00+00:00",
                             modified_to="2026-01-03T00:00:00+00:00")
    sandbox_conn.configure(bulk_read_per_page=200)
    return sandbox_conn


def modified_in_the_day(row: dict) -> bool:
    return DAY_START <= datetime.fromisoformat(row["Modified_Time"]) < DAY_END


def test_incremental_exports_the_data_interval_only(around_new_year, tmp_path):
    summary = export(ObjectStorageSink(f"file://{tmp_path}/{{file}}.parquet"), incremental=True,
                     ).execute(window_context())
    window = {"group_operator": "and", "group": [
        {"field": {"api_name": "Modified_Time"}, "comparator": "greater_equal", "value": "2026-01-01T00:00:00+00:00"},
        {"field": {"api_name": "Modified_Time"}, "comparator": "less_than", "value": "2026-01-02T00:00:00+00:00"}]}
    assert all(job["criteria"] == window for job in around_new_year.read_jobs())
    everything = expected_rows(around_new_year, "Leads")
    expected = [row for row in everything if modified_in_the_day(row)]
    assert 300 < len(expected) < 700 and len(everything) == 2000
    assert summary["pages"] == -(-len(expected) // 200) >= 2
    table = parquet_rows(sorted(tmp_path.glob("*.parquet")))
    assert table.select(list(everything[0])).to_pylist() == expected


@pytest.mark.parametrize("user_criteria", [
    {"field": {"api_name": "Lead_Source"}, "comparator": "equal", "value": "Trade Show"},
    {"group_operator": "and", "group": [
        {"field": {"api_name": "Lead_Source"}, "comparator": "equal", "value": "Trade Show"},
        {"field": {"api_name": "Country"}, "comparator": "in", "value": ["Japan", "Nigeria", "India"]}]},
    {"group_operator": "or", "group": [
        {"field": {"api_name": "Lead_Status"}, "comparator": "equal", "value": "Junk Lead"},
        {"field": {"api_name": "Country"}, "comparator": "in", "value": ["Japan", "Nigeria"]}]},
], ids=["one-condition", "and-group", "or-group"])
def test_incremental_ands_the_window_with_the_users_criteria(around_new_year, tmp_path, user_criteria):
    text_criteria = json.dumps(user_criteria)  # as a template renders {{ params.criteria | tojson }}
    export(DuckDBSink(str(tmp_path / "w.duckdb"), "leads"), incremental=True, criteria=text_criteria,
           ).execute(window_context())
    sent = around_new_year.read_jobs()[0]["criteria"]
    assert sent["group_operator"] == "and" and sent["group"][:2] == modified_window(DAY_START, DAY_END)["group"]
    if user_criteria.get("group_operator") == "and":
        assert sent["group"][2:] == user_criteria["group"]  # flattened: one and-group
    else:
        assert sent["group"][2:] == [user_criteria]
    expected = [row for row in expected_rows(around_new_year, "Leads", user_criteria) if modified_in_the_day(row)]
    assert expected
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        ids = [row[0] for row in connection.execute('SELECT "Id" FROM leads ORDER BY "Id"').fetchall()]
    assert ids == [row["Id"] for row in expected]


@pytest.mark.parametrize(("interval", "message"), [
    ({}, "this run has none"),
    ({"data_interval_start": None, "data_interval_end": None}, "this run has none"),
    ({"data_interval_start": DAY_START, "data_interval_end": DAY_START}, "CronTriggerTimetable"),
])
def test_incremental_without_a_data_interval_is_refused(around_new_year, tmp_path, interval, message):
    operator = export(ObjectStorageSink(str(tmp_path / "x.parquet")), incremental=True)
    with pytest.raises(ZohoConfigurationError, match=message):
        operator.execute(task_context(**interval))
    assert around_new_year.read_jobs() == [] and list(tmp_path.iterdir()) == []


def test_window_values_are_zohos_iso_form():
    from zoneinfo import ZoneInfo

    start = datetime(2026, 1, 1, 5, 30, 0, 999999, tzinfo=ZoneInfo("Asia/Kolkata"))
    criteria = and_criteria(modified_window(start, start + timedelta(hours=1)), None)
    assert [part["value"] for part in criteria["group"]] == ["2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+00:00"]
    with pytest.raises(ZohoConfigurationError, match="time zone"):
        modified_window(datetime(2026, 1, 1), datetime(2026, 1, 2))


# --- failures: typed errors, destination untouched -------------------------------------------------------------


def test_a_failed_job_fails_the_task_and_leaves_the_destination(four_pages, tmp_path):
    target = tmp_path / "leads.parquet"
    target.write_bytes(b"previous content")
    four_pages.add_fault("bulk_read_failed", code="INTERNAL_ERROR", message="the export could not be completed")
    with pytest.raises(BulkJobFailedError, match="Bulk Read job FAILED") as info:
        export(ObjectStorageSink(str(target))).execute(task_context())
    assert info.value.job_id == job_ids(four_pages)[0]
    assert target.read_bytes() == b"previous content" and list(tmp_path.iterdir()) == [target]


def test_a_failed_job_carries_zohos_code_and_message(four_pages, tmp_path):
    """The sandbox writes a FAILED job's reason in ``error`` ({code, message}); the task's error should say it."""
    four_pages.add_fault("bulk_read_failed", code="INTERNAL_ERROR", message="the export could not be completed")
    with pytest.raises(BulkJobFailedError) as info:
        export(ObjectStorageSink(str(tmp_path / "x.parquet"))).execute(task_context())
    assert info.value.code == "INTERNAL_ERROR"
    assert "the export could not be completed" in str(info.value)


def test_a_failed_third_page_fails_the_deferred_task(four_pages, tmp_path):
    four_pages.configure(job_step_seconds=JOB_STEP)

    def fail_the_next_job(number, kwargs):
        if number == 2:  # page 2's job is done waiting: page 3's job is created next
            four_pages.add_fault("bulk_read_failed", code="INTERNAL_ERROR", message="page 3 broke")

    with pytest.raises(BulkJobFailedError, match="Bulk Read job FAILED") as info:
        run_deferred(lambda: export(ObjectStorageSink(f"file://{tmp_path}/{{file}}.parquet"), deferrable=True),
                     task_context(), four_pages, fail_the_next_job)
    jobs = four_pages.read_jobs()
    assert [job["state"] for job in jobs] == ["COMPLETED", "COMPLETED", "FAILED"]
    assert info.value.job_id == jobs[2]["id"]
    assert list(tmp_path.iterdir()) == []


def test_too_many_bulk_jobs_is_a_clear_error(four_pages, tmp_path):
    four_pages.configure(bulk_read_max_active_jobs=1, job_step_seconds=1000)
    four_pages.create_read_job({"query": {"module": {"api_name": "Contacts"}}})  # another task's job, running
    with pytest.raises(ZohoRateLimitError, match="about 10 bulk jobs in progress per org"):
        export(ObjectStorageSink(str(tmp_path / "x.parquet"))).execute(task_context())
    assert len(four_pages.read_jobs()) == 1 and list(tmp_path.iterdir()) == []


def destination_state(kind: str, tmp_path: Path):
    """Everything at a destination, to compare before and after a failed export."""
    if kind == "files":
        return {path.name: path.read_bytes() for path in sorted((tmp_path / "lake").iterdir())}
    if kind == "duckdb":
        with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
            return connection.execute('SELECT * FROM leads ORDER BY _page, _row_number').fetchall()
    with sqlite3.connect(tmp_path / "warehouse.db") as connection:
        return connection.execute('SELECT * FROM leads ORDER BY _page, _row_number').fetchall()


def sink_for(kind: str, tmp_path: Path):
    if kind == "files":
        return ObjectStorageSink(f"file://{tmp_path}/lake/{{file}}.parquet")
    if kind == "duckdb":
        return DuckDBSink(str(tmp_path / "w.duckdb"), "leads")
    return SqlSink(SQLITE_CONN, "leads")


@pytest.mark.parametrize("kind", ["files", "duckdb", "sqlite"])
@pytest.mark.parametrize(("fault", "error"), [
    ({"kind": "corrupt_zip"}, CorruptArchiveError),
    ({"kind": "truncate_zip", "percent": 60}, TruncatedArchiveError),
    ({"kind": "drop_mid_body", "fraction": 0.5}, DownloadError),
], ids=["corrupt", "truncated", "dropped"])
def test_a_bad_third_page_of_four_leaves_the_destination_as_it_was(four_pages, tmp_path, sqlite_db, kind, fault,
                                                                     error):
    first = export(sink_for(kind, tmp_path)).execute(task_context())
    assert first["rows"] == 3500
    before = destination_state(kind, tmp_path)
    four_pages.seed_module("Leads", 3600, seed=4)  # other values: a second commit would show
    four_pages.configure(job_step_seconds=JOB_STEP)

    def break_page_3(number, kwargs):
        if number == 4:  # pages 1-3 are known: their downloads come once page 4's job is done
            third = kwargs["pages"][2]["job_id"]
            four_pages.add_fault(**fault, path_prefix=f"/crm/bulk/v8/read/{third}/result")

    with pytest.raises(error) as info:
        run_deferred(lambda: export(sink_for(kind, tmp_path), deferrable=True), task_context(), four_pages,
                     break_page_3)
    assert info.value.job_id == job_ids(four_pages)[6]  # the run's third page
    assert destination_state(kind, tmp_path) == before  # files: the same objects, no staged leftovers

    four_pages.configure(job_step_seconds=0)  # the retry polls: jobs done at once, no waiting
    retried = export(sink_for(kind, tmp_path)).execute(task_context())  # a retry starts over, with new jobs
    assert retried["job_ids"] == job_ids(four_pages)[8:] and retried["rows"] == 3600
    assert destination_state(kind, tmp_path) != before


# --- arguments, parse time, lineage ------------------------------------------------------------------------


def test_construction_does_no_io_and_checks_arguments():
    with pytest.raises(ZohoConfigurationError, match="ResultSink"):
        ZohoBulkReadOperator(task_id="t", module="Leads", sink="s3://not-a-sink")
    with pytest.raises(ZohoConfigurationError, match="write_mode"):
        ZohoBulkReadOperator(task_id="t", module="Leads", sink=DuckDBSink("x.duckdb"), write_mode="upsert")
    operator = ZohoBulkReadOperator(task_id="t", module="{{ params.module }}", sink=SqlSink("no_such_conn", "t"))
    assert operator.template_fields == ("module", "fields", "criteria", "cvid", "sink", "zoho_conn_id")
    assert operator.outlets == []  # a SqlSink's URI needs its connection: no lookup at parse time


@pytest.mark.parametrize(("arguments", "message"), [
    ({"module": ""}, "module must be"),
    ({"fields": ["Email", 7]}, "fields must be"),
    ({"criteria": "{not json"}, "not valid JSON"),
    ({"criteria": "[1, 2]"}, "JSON object"),
    ({"write_mode": "merge", "fields": ["Email", "Last_Name"]}, "add it to fields"),
])
def test_bad_rendered_arguments_are_refused_before_any_job(sandbox_conn, tmp_path, arguments, message):
    operator = export(ObjectStorageSink(str(tmp_path / "x.parquet")), **{"module": "Leads", **arguments})
    with pytest.raises(ZohoConfigurationError, match=message):
        operator.execute(task_context())
    assert sandbox_conn.read_jobs() == []


def test_mapped_exports_declare_their_asset_and_render_their_own_sink():
    from airflow.sdk import DAG

    sink = ObjectStorageSink("s3://lake/zoho/bulk_read/{{ task.module }}/{file}.parquet")
    with DAG("mapped", schedule=None):
        mapped = ZohoBulkReadOperator.partial(task_id="export", sink=sink).expand(module=["Leads", "Deals"])
    assert [asset.uri for asset in mapped.partial_kwargs["outlets"]] == ["s3://lake/zoho/bulk_read"]

    first, second = (ZohoBulkReadOperator(task_id=f"t{n}", module=module, sink=sink)
                     for n, module in enumerate(["Leads", "Deals"]))
    for operator in (first, second):
        operator.render_template_fields({"task": operator})
    assert first.sink.uri == "s3://lake/zoho/bulk_read/Leads/{file}.parquet"
    assert second.sink.uri == "s3://lake/zoho/bulk_read/Deals/{file}.parquet"
    assert sink.uri == "s3://lake/zoho/bulk_read/{{ task.module }}/{file}.parquet"


def test_the_provider_lists_the_operator():
    import importlib

    from airflow_provider_zohobulk.get_provider_info import get_provider_info

    (operators,) = get_provider_info()["operators"]
    assert "airflow_provider_zohobulk.operators.bulk_read" in operators["python-modules"]
    for module in operators["python-modules"]:
        importlib.import_module(module)


def test_lineage_names_the_module_and_the_destination(sandbox_conn):
    operator = ZohoBulkReadOperator(task_id="t", module="Contacts",
                                    sink=ObjectStorageSink("s3://lake/zoho/{{ ds }}/{file}.parquet"))
    lineage = operator.get_openlineage_facets_on_complete(None)
    assert lineage.inputs[0].name == "bulk-read/Contacts"
    assert lineage.inputs[0].namespace.startswith("zoho-crm://127.0.0.1")
    assert (lineage.outputs[0].namespace, lineage.outputs[0].name) == ("s3://lake", "/zoho")


# --- through Airflow's runner ----------------------------------------------------------------------------


@pytest.mark.airflow_e2e
def test_dag_test_runs_mapped_incremental_exports_into_parquet_and_sqlite(airflow_db, sandbox_conn, sqlite_db,
                                                                         tmp_path):
    import importlib.util

    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    for module in ("Leads", "Contacts"):
        sandbox_conn.seed_module(module, 600, seed=8, modified_from="2025-12-31T12:00:00+00:00",
                                 modified_to="2026-01-02T12:00:00+00:00")  # half of them in the day
    sandbox_conn.configure(bulk_read_per_page=200, job_step_seconds=0.1)  # real seconds: the tasks poll
    spec = importlib.util.spec_from_file_location(
        "zoho_bulk_read_test_dags", Path(__file__).parent / "dags" / "zoho_bulk_read_test_dags.py")
    dags = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dags)
    dag = dags.bulk_read_dag
    run = dag.test(logical_date=DAY_END, run_conf={"lake": f"file://{tmp_path}/lake",
                                                   "warehouse_conn_id": SQLITE_CONN})
    with create_session() as session:
        states = {(ti.task_id, ti.map_index): str(ti.state) for ti in session.scalars(
            select(TaskInstance).where(TaskInstance.run_id == run.run_id, TaskInstance.dag_id == dag.dag_id))}
        xcoms = {(x.task_id, x.map_index): x.value for x in session.scalars(
            select(XComModel).where(XComModel.run_id == run.run_id, XComModel.dag_id == dag.dag_id,
                                    XComModel.key == "return_value"))}
    assert str(run.state) == "success", states
    summaries = {key: json.loads(value) if isinstance(value, str) else value for key, value in xcoms.items()}
    for index, module in enumerate(["Leads", "Contacts"]):
        expected = [row for row in expected_rows(sandbox_conn, module) if modified_in_the_day(row)]
        assert 200 < len(expected) < 400
        files = sorted((tmp_path / "lake" / module).iterdir())
        assert [path.name for path in files] == [f"{module}-0000{n}.parquet" for n in range(1, len(files) + 1)]
        assert len(files) >= 2
        columns = list(expected[0])
        assert parquet_rows(files).select(columns).to_pylist() == expected
        assert sqlite_rows(sqlite_db, f"zoho_{module.lower()}", columns) == expected
        for task_id in ("to_files", "to_sqlite"):
            assert summaries[(task_id, index)]["module"] == module
            assert summaries[(task_id, index)]["rows"] == len(expected)
    completed = [job for job in sandbox_conn.read_jobs() if job["state"] == "COMPLETED"]
    assert len(completed) == sum(summary["pages"] for summary in summaries.values())


def test_the_test_dag_file_parses():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "zoho_bulk_read_test_dags.py"))
    assert bag.import_errors == {}
    assert {task.task_id for task in bag.dags["zoho_test_bulk_read"].tasks} == {"to_files", "to_sqlite"}
