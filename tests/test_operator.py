"""ZohoBulkWriteResultOperator and ZohoBulkWriteJobSensor end to end: sandbox over HTTP -> sinks.

Happy paths and deferral run through Airflow's own runner (``dag.test()``); failure paths call
``execute`` directly so the typed exception itself can be inspected.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections import defaultdict
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.errors import (
    BulkJobFailedError,
    BulkJobNotCompleteError,
    CorruptArchiveError,
    DownloadError,
    NotAZipError,
    SinkConfigurationError,
    TruncatedArchiveError,
)
from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteResultOperator, asset_for
from airflow_provider_zohobulk.sensors.bulk_write import ZohoBulkWriteJobSensor
from airflow_provider_zohobulk.sinks import DuckDBSink, ObjectStorageSink
from tests.helpers import job_detail_calls

DAGS = Path(__file__).parent / "dags" / "zoho_test_dags.py"
FAST_HOOK = {"retry_backoff": 0.01, "max_backoff": 0.05, "retry_limit": 2, "timeout": (5, 30)}


def leads_csv(rows: int = 300) -> bytes:
    lines = ["Last_Name,Email,Company,Phone"]
    for i in range(rows):
        last = "" if i % 17 == 0 else f"Name {i}"
        email = "dup@example.com" if i % 23 == 0 else f"lead{i}@example.com"
        lines.append(f'{last},{email},"Acme, Inc. {i}",555-{i:04d}')
    return ("\n".join(lines) + "\n").encode()


def result_zip(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return buf.getvalue()


class _TaskInstance:
    def __init__(self) -> None:
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


class _OutletEvent:
    extra: dict = {}


def run_execute(operator) -> dict:
    """Run ``operator.execute`` with the parts of the context it uses."""
    context = {"ti": _TaskInstance(), "outlet_events": defaultdict(_OutletEvent)}
    return operator.execute(context)


def load_dag_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoho_test_dags", DAGS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_dag(dag, conf: dict) -> tuple[str, dict[str, str], dict[str, object]]:
    """``dag.test()``; returns (state, task states, XCom return values)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    run = dag.test(run_conf=conf)
    with create_session() as session:
        states = {ti.task_id: str(ti.state) for ti in
                  session.scalars(select(TaskInstance).where(TaskInstance.run_id == run.run_id,
                                                             TaskInstance.dag_id == dag.dag_id))}
        xcoms = {x.task_id: x.value for x in
                 session.scalars(select(XComModel).where(XComModel.run_id == run.run_id,
                                                         XComModel.dag_id == dag.dag_id,
                                                         XComModel.key == "return_value"))}
    xcoms = {k: json.loads(v) if isinstance(v, str) else v for k, v in xcoms.items()}
    return str(run.state), states, xcoms


@pytest.fixture
def sandbox_conn(zoho_sandbox, monkeypatch):
    for name, value in zoho_sandbox.airflow_connection_env().items():
        monkeypatch.setenv(name, value)
    return zoho_sandbox


# --- through Airflow's runner ------------------------------------------------------------------------


@pytest.mark.airflow_e2e
def test_dag_loads_files_and_duckdb_with_a_summary(airflow_db, sandbox_conn, tmp_path):
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    job_id = sandbox_conn.create_job_from_csv(leads_csv(300))
    claimed = ZohoCrmHook(**FAST_HOOK).get_bulk_write_job(job_id)["resource"][0]["file"]
    database = tmp_path / "warehouse.duckdb"
    uri = f"file://{tmp_path}/lake/{job_id}/{{file}}.parquet"
    pa.set_memory_pool(pa.mimalloc_memory_pool())  # pyarrow's own default, which the operator replaces
    state, states, xcoms = run_dag(load_dag_module().load_dag,
                                   {"job_id": job_id, "uri": uri, "database": str(database)})
    assert state == "success", states
    assert pa.default_memory_pool().backend_name in ("jemalloc", "system")
    files_summary, duck_summary = xcoms["to_files"], xcoms["to_duckdb"]
    for summary in (files_summary, duck_summary):
        assert summary["job_id"] == job_id
        assert summary["rows"] == 300
        assert sum(summary["by_status"].values()) == 300
        assert summary["errors_by_code"].get("MANDATORY_NOT_FOUND", 0) > 0
        assert summary["bytes_downloaded"] > 0
        assert json.loads(json.dumps(summary)) == summary  # small and JSON-able
    written = files_summary["destination"]
    assert len(written) == 1 and written[0].endswith(".parquet")
    table = pq.read_table(written[0].removeprefix("file://"))
    assert table.num_rows == 300
    with duckdb.connect(str(database)) as con:
        counts = dict(con.execute("SELECT status, count(*) FROM zoho_bulk_write_results WHERE job_id = ? "
                                  "GROUP BY status", [job_id]).fetchall())
    assert counts == files_summary["by_status"]
    parquet_counts = defaultdict(int)
    for status in table.column("status").to_pylist():
        parquet_counts[status] += 1
    assert dict(parquet_counts) == counts
    assert counts.get("ADDED", 0) == claimed["added_count"]
    assert counts.get("SKIPPED", 0) == claimed["skipped_count"]


@pytest.mark.airflow_e2e
def test_dag_waits_deferred_then_loads(airflow_db, sandbox_conn, tmp_path):
    import threading

    sandbox_conn.configure(job_step_seconds=600)  # short of the tokens' hour, so moving time keeps them alive
    job_id = sandbox_conn.create_job_from_csv(leads_csv(50))

    def polls() -> int:
        return sum(1 for r in sandbox_conn.stats()["requests"] if r["path"].endswith(f"/write/{job_id}"))

    stop = threading.Event()

    def one_step_per_poll() -> None:  # Zoho's job moves on only after someone has looked at it
        seen = 0
        while not stop.wait(0.05):
            if (now := polls()) > seen:
                seen = now
                sandbox_conn.advance_clock(600)

    mover = threading.Thread(target=one_step_per_poll, daemon=True)
    mover.start()
    try:
        state, states, xcoms = run_dag(load_dag_module().wait_dag,
                                       {"job_id": job_id, "database": str(tmp_path / "w.duckdb")})
    finally:
        stop.set()
        mover.join()
    assert state == "success", states
    assert xcoms["wait"]["status"] == "COMPLETED"
    assert xcoms["wait_and_load"]["rows"] == 50
    assert polls() >= 3  # it really waited: ADDED and IN PROGRESS were seen before COMPLETED


# --- failure paths: typed errors, destination untouched --------------------------------------------------


def test_job_not_completed_is_refused(sandbox_conn, tmp_path):
    sandbox_conn.configure(job_step_seconds=3600)
    job_id = sandbox_conn.create_job_from_csv(leads_csv(5))
    target = tmp_path / "out.parquet"
    op = ZohoBulkWriteResultOperator(task_id="t", job_id=job_id, sink=ObjectStorageSink(str(target)),
                                     hook_kwargs=FAST_HOOK)
    with pytest.raises(BulkJobNotCompleteError, match="ADDED") as info:
        run_execute(op)
    assert job_id in str(info.value)
    assert not target.exists()


@pytest.mark.parametrize(
    ("fault", "error"),
    [({"kind": "corrupt_zip"}, CorruptArchiveError),
     ({"kind": "truncate_zip", "percent": 60}, TruncatedArchiveError),
     ({"kind": "error_body", "content_type": "application/octet-stream"}, NotAZipError),
     ({"kind": "drop_mid_body"}, DownloadError)],
    ids=["corrupt", "truncated", "not-a-zip", "dropped"],
)
def test_bad_archive_leaves_duckdb_and_files_as_they_were(sandbox_conn, tmp_path, fault, error):
    job_id = sandbox_conn.create_job_from_csv(leads_csv(2000))
    database = tmp_path / "w.duckdb"
    first = run_execute(ZohoBulkWriteResultOperator(task_id="t", job_id=job_id, sink=DuckDBSink(str(database)),
                                                    hook_kwargs=FAST_HOOK))
    assert first["rows"] == 2000
    with duckdb.connect(str(database)) as con:
        before = con.execute("SELECT * FROM zoho_bulk_write_results ORDER BY row_number").fetchall()
    target = tmp_path / "out.parquet"
    target.write_bytes(b"previous content")
    for sink in (DuckDBSink(str(database)), ObjectStorageSink(str(target))):
        sandbox_conn.add_fault(**fault)
        op = ZohoBulkWriteResultOperator(task_id="t", job_id=job_id, sink=sink, hook_kwargs=FAST_HOOK)
        with pytest.raises(error) as info:
            run_execute(op)
        assert job_id in str(info.value)
    with duckdb.connect(str(database)) as con:
        assert con.execute("SELECT * FROM zoho_bulk_write_results ORDER BY row_number").fetchall() == before
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet", "w.duckdb"]


def test_expired_link_is_refreshed_from_job_details(sandbox_conn, tmp_path):
    job_id = sandbox_conn.create_job_from_csv(leads_csv(10))
    sandbox_conn.add_fault("expired_link")
    summary = run_execute(ZohoBulkWriteResultOperator(task_id="t", job_id=job_id,
                                                      sink=ObjectStorageSink(str(tmp_path / "r.parquet")),
                                                      hook_kwargs=FAST_HOOK))
    assert summary["rows"] == 10
    details_calls = [r for r in sandbox_conn.stats()["requests"] if r["path"].endswith(f"/write/{job_id}")]
    assert len(details_calls) == 2


def test_several_csvs_need_the_file_placeholder(sandbox_conn, tmp_path):
    header = "Name,Email,Company,RECORD_ID,STATUS,ERRORS\n"
    job_id = sandbox_conn.create_job_from_zip(result_zip({
        "Accounts-parent.csv": header + "A,a@x.com,Acme,1,ADDED,\n",
        "Contacts-child.csv": header + "B,b@x.com,Acme,2,ADDED,\n",
    }))
    target = tmp_path / "one.parquet"
    with pytest.raises(SinkConfigurationError, match=r"\{file\}"):
        run_execute(ZohoBulkWriteResultOperator(task_id="t", job_id=job_id, sink=ObjectStorageSink(str(target)),
                                                hook_kwargs=FAST_HOOK))
    assert list(tmp_path.iterdir()) == []
    summary = run_execute(ZohoBulkWriteResultOperator(
        task_id="t", job_id=job_id, sink=ObjectStorageSink(str(tmp_path / "{file}.parquet")), hook_kwargs=FAST_HOOK))
    assert summary["files"] == ["Accounts-parent.csv", "Contacts-child.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Accounts-parent.parquet", "Contacts-child.parquet"]


def test_download_url_without_job_id(sandbox_conn, tmp_path):
    job_id = sandbox_conn.create_job_from_csv(leads_csv(7))
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    url = ZohoCrmHook(**FAST_HOOK).get_bulk_write_job(job_id)["result"]["download_url"]
    summary = run_execute(ZohoBulkWriteResultOperator(task_id="t", download_url=url,
                                                      sink=DuckDBSink(str(tmp_path / "d.duckdb")),
                                                      hook_kwargs=FAST_HOOK))
    assert summary["job_id"] == job_id and summary["rows"] == 7


def test_count_mismatch_is_a_warning(sandbox_conn, tmp_path, caplog, capsys):
    header = "Name,Email,Company,RECORD_ID,STATUS,ERRORS\n"
    job_id = sandbox_conn.create_job_from_zip(
        result_zip({"Leads-x.csv": header + "A,a@x.com,Acme,1,ADDED,\n"}),
        counts={"added_count": 5, "skipped_count": 0, "updated_count": 0, "total_count": 5})
    with caplog.at_level(logging.WARNING):
        run_execute(ZohoBulkWriteResultOperator(task_id="t", job_id=job_id,
                                                sink=DuckDBSink(str(tmp_path / "d.duckdb")), hook_kwargs=FAST_HOOK))
    assert "differ" in caplog.text + capsys.readouterr().out


def test_progress_is_logged(sandbox_conn, tmp_path, caplog, capsys):
    job_id = sandbox_conn.create_job_from_csv(leads_csv(100))
    with caplog.at_level(logging.INFO):
        run_execute(ZohoBulkWriteResultOperator(task_id="t", job_id=job_id, progress_interval=0,
                                                sink=DuckDBSink(str(tmp_path / "d.duckdb")), hook_kwargs=FAST_HOOK))
    text = caplog.text + capsys.readouterr().out  # the task logger writes through structlog
    assert "progress:" in text and "rows/s" in text
    assert f"Read and verified the whole archive of job {job_id} (100 rows); committing them to the DuckDBSink" in text
    assert "done:" in text and text.index("committing them") < text.index("done:")


def test_summary_and_logs_hold_no_secret(sandbox_conn, tmp_path, caplog, capsys):
    job_id = sandbox_conn.create_job_from_csv(leads_csv(20))
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    with caplog.at_level(logging.DEBUG):
        summary = run_execute(ZohoBulkWriteResultOperator(task_id="t", job_id=job_id,
                                                          sink=DuckDBSink(str(tmp_path / "d.duckdb")),
                                                          hook_kwargs=FAST_HOOK))
    token = ZohoCrmHook().get_access_token()
    text = json.dumps(summary) + caplog.text + capsys.readouterr().out
    assert "Loaded job" in text  # the logs were captured at all
    for secret in ("sandbox-client-secret", "sandbox-refresh-token", token):
        assert secret not in text


def test_sensor_fails_with_zoho_code(sandbox_conn):
    job_id = sandbox_conn.create_job_from_zip(result_zip({"Leads-x.csv": "A,STATUS\n"}), status="FAILED")
    sensor = ZohoBulkWriteJobSensor(task_id="s", job_id=job_id, deferrable=False, poke_interval=0.1, timeout=5,
                                    hook_kwargs=FAST_HOOK)
    with pytest.raises(BulkJobFailedError) as info:
        sensor.poke({})
    assert job_id in str(info.value)


def test_sensor_pokes_until_complete(sandbox_conn):
    sandbox_conn.configure(job_step_seconds=3600)
    job_id = sandbox_conn.create_job_from_csv(leads_csv(5))
    sensor = ZohoBulkWriteJobSensor(task_id="s", job_id=job_id, deferrable=False, hook_kwargs=FAST_HOOK)
    assert not sensor.poke({}).is_done
    sandbox_conn.advance_clock(7300)
    result = sensor.poke({})
    assert result.is_done and result.xcom_value["status"] == "COMPLETED"


def test_trigger_round_trips_and_reports(sandbox_conn):
    import asyncio

    from airflow_provider_zohobulk.triggers.bulk_write import ZohoBulkWriteJobTrigger

    sandbox_conn.configure(job_step_seconds=0.5)
    job_id = sandbox_conn.create_job_from_csv(leads_csv(5))
    trigger = ZohoBulkWriteJobTrigger(job_id, poll_interval=0.2, hook_kwargs=FAST_HOOK)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_zohobulk.triggers.bulk_write.ZohoBulkWriteJobTrigger"
    rebuilt = ZohoBulkWriteJobTrigger(**kwargs)

    async def first_event():
        async for event in rebuilt.run():
            return event.payload

    payload = asyncio.run(first_event())
    assert payload["status"] == "success" and payload["job"]["status"] == "COMPLETED"

    unknown = ZohoBulkWriteJobTrigger("123456", poll_interval=0.2, hook_kwargs=FAST_HOOK)

    async def error_event():
        async for event in unknown.run():
            return event.payload

    payload = asyncio.run(error_event())
    assert payload["status"] == "error" and payload["error_type"] == "ZohoNotFoundError"


def test_the_trigger_first_checks_one_interval_after_the_deferral(sandbox_conn):
    """The task checked the job just before deferring: the trigger does not ask again at once (which is
    also what would expose Airflow's deferral race, see the README's sensor section)."""
    import asyncio

    from airflow_provider_zohobulk.triggers.bulk_write import ZohoBulkWriteJobTrigger

    job_id = sandbox_conn.create_job_from_csv(leads_csv(3))  # already COMPLETED
    trigger = ZohoBulkWriteJobTrigger(job_id, poll_interval=1.0, hook_kwargs=FAST_HOOK)
    asked = []

    async def watch_then_event():
        run = asyncio.ensure_future(anext(trigger.run()))
        await asyncio.sleep(0.5)
        asked.append(job_detail_calls(sandbox_conn, job_id))
        return (await run).payload

    payload = asyncio.run(watch_then_event())
    assert asked == [0]  # nothing asked within the first interval
    assert payload["status"] == "success" and job_detail_calls(sandbox_conn, job_id) == 1


def test_an_outage_is_waited_through_by_the_trigger_and_the_sensor(sandbox_conn, capfd):
    """Zoho answering 503 for longer than the hook's retries (3 attempts here) must not end a wait
    that may last hours: the poll is logged and repeated. An unknown job still ends it at once."""
    import asyncio

    from airflow_provider_zohobulk.triggers.bulk_write import ZohoBulkWriteJobTrigger

    job_id = sandbox_conn.create_job_from_csv(leads_csv(3))
    sandbox_conn.add_fault("status", status=503, count=4, path_prefix="/crm/bulk/v8/write/")
    trigger = ZohoBulkWriteJobTrigger(job_id, poll_interval=0.1, hook_kwargs=FAST_HOOK)

    async def first_event():
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(first_event())
    assert payload["status"] == "success" and payload["job"]["status"] == "COMPLETED"
    logged = capfd.readouterr()
    assert f"Could not check Zoho Bulk Write job {job_id} (ZohoServerError" in logged.out + logged.err

    sandbox_conn.add_fault("status", status=503, count=3, path_prefix="/crm/bulk/v8/write/")
    sensor = ZohoBulkWriteJobSensor(task_id="s", job_id=job_id, deferrable=False, poke_interval=0.1, timeout=5,
                                    hook_kwargs=FAST_HOOK)
    assert not sensor.poke({}).is_done
    assert sensor.poke({}).is_done


def test_assets_are_stable_prefixes():
    sink = ObjectStorageSink("s3://lake/zoho/bulk_write/{{ params.job_id }}/{file}.parquet")
    assert asset_for(sink).uri == "s3://lake/zoho/bulk_write"
    op = ZohoBulkWriteResultOperator(task_id="t", job_id="1", sink=sink)
    assert [a.uri for a in op.outlets] == ["s3://lake/zoho/bulk_write"]
    assert asset_for(ObjectStorageSink("s3://lake/zoho/{file}.csv.gz")).uri == "s3://lake/zoho"
    assert asset_for(DuckDBSink("/data/w.duckdb", "t")).uri.endswith("/data/w.duckdb/t")
    # nothing stable before the template, or a location that needs a connection: no Asset
    assert asset_for(ObjectStorageSink("{{ params.destination }}/x/{file}.parquet")) is None
    for only_a_scheme in ("gs://{{ params.bucket }}/x/{file}.parquet", "s3://lake-{{ params.env }}/x.csv",
                          "file://{{ params.dir }}/x.parquet", "azure://{file}.parquet"):
        assert asset_for(ObjectStorageSink(only_a_scheme)) is None, only_a_scheme
    assert asset_for(ObjectStorageSink("file:///data/{{ params.dir }}/x.parquet")).uri == "file:///data"
    assert asset_for(DuckDBSink("{{ params.database }}")) is None
    from airflow_provider_zohobulk.sinks import SqlSink

    assert asset_for(SqlSink("no_such_connection_at_parse_time", "t")) is None


def test_lineage_names_job_and_destination(monkeypatch, zoho_sandbox):
    for name, value in zoho_sandbox.airflow_connection_env().items():
        monkeypatch.setenv(name, value)
    op = ZohoBulkWriteResultOperator(task_id="t", job_id="42",
                                     sink=ObjectStorageSink("s3://lake/zoho/{{ params.job_id }}/{file}.parquet"))
    lineage = op.get_openlineage_facets_on_complete(None)
    assert lineage.inputs[0].name == "bulk-write/42"
    assert lineage.inputs[0].namespace.startswith("zoho-crm://127.0.0.1")
    assert (lineage.outputs[0].namespace, lineage.outputs[0].name) == ("s3://lake", "/zoho")


def test_operator_construction_does_no_io_and_checks_arguments():
    with pytest.raises(Exception, match="job_id or download_url"):
        ZohoBulkWriteResultOperator(task_id="t", sink=DuckDBSink("x.duckdb"))
    with pytest.raises(Exception, match="ResultSink"):
        ZohoBulkWriteResultOperator(task_id="t", job_id="1", sink="s3://not-a-sink")


@pytest.mark.airflow_e2e
def test_variable_token_cache_is_shared_across_machines(airflow_db, zoho_sandbox, monkeypatch, tmp_path):
    conn = zoho_sandbox.airflow_connection()
    conn["extra"]["oauth_cache"] = "variable"
    monkeypatch.setenv("AIRFLOW_CONN_ZOHO_CRM_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("ZOHOBULK_TOKEN_CACHE_DIR", str(tmp_path / "machine-1"))
    state, states, xcoms = run_dag(load_dag_module().variable_cache_dag,
                                   {"second_cache_dir": str(tmp_path / "machine-2")})
    assert state == "success", states
    assert xcoms["two_machines_share_a_token"] == {"same_token": True}
    assert zoho_sandbox.stats()["tokens_minted"] == 1
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        keys = [v.key for v in session.scalars(select(Variable).where(Variable.key.like("zohobulk_token_%")))]
    assert keys and all("sandbox" not in key for key in keys)


def test_deferred_waits_hand_timeout_and_interval_to_airflow(sandbox_conn, tmp_path):
    """Airflow enforces a deferral's timeout; what must be right is what the task hands it."""
    from datetime import timedelta

    from airflow.sdk.exceptions import TaskDeferred

    sandbox_conn.configure(job_step_seconds=10**6)
    job_id = sandbox_conn.create_job_from_csv(leads_csv(5))
    sensor = ZohoBulkWriteJobSensor(task_id="s", job_id=job_id, deferrable=True, poke_interval=7, timeout=90,
                                    hook_kwargs=FAST_HOOK)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert deferred.value.timeout == timedelta(seconds=90)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.trigger.poll_interval == 7 and deferred.value.trigger.job_id == job_id

    op = ZohoBulkWriteResultOperator(task_id="t", job_id=job_id, sink=DuckDBSink(str(tmp_path / "d.duckdb")),
                                     wait_for_completion=True, deferrable=True, poll_interval=11, wait_timeout=120,
                                     hook_kwargs=FAST_HOOK)
    with pytest.raises(TaskDeferred) as deferred:
        run_execute(op)
    assert deferred.value.timeout == timedelta(seconds=120)
    assert deferred.value.trigger.poll_interval == 11
    assert not (tmp_path / "d.duckdb").exists()  # nothing loaded while waiting


def test_polling_wait_gives_up_at_its_timeout(sandbox_conn, tmp_path):
    sandbox_conn.configure(job_step_seconds=10**6)
    job_id = sandbox_conn.create_job_from_csv(leads_csv(5))
    op = ZohoBulkWriteResultOperator(task_id="t", job_id=job_id, sink=DuckDBSink(str(tmp_path / "d.duckdb")),
                                     wait_for_completion=True, deferrable=False, poll_interval=0.2, wait_timeout=1,
                                     hook_kwargs=FAST_HOOK)
    with pytest.raises(BulkJobNotCompleteError, match="after waiting 1s"):
        run_execute(op)
    polls = [r for r in sandbox_conn.stats()["requests"] if r["path"].endswith(f"/write/{job_id}")]
    assert 3 <= len(polls) <= 8  # every 0.2 s for about a second, then it stops


def test_rendered_templates_show_the_sinks_location_and_nothing_else():
    """Airflow stores a template field's rendered value by its repr: the UI's Rendered Templates tab
    should show where the rows went, never the sink's other options (credentials may sit there)."""
    from airflow.sdk.execution_time.task_runner import _serialize_rendered_fields

    sink = ObjectStorageSink("s3://lake/{{ params.job_id }}/{file}.parquet",
                             transport_params={"client_kwargs": {"aws_secret_access_key": "very-secret"}})
    op = ZohoBulkWriteResultOperator(task_id="t", job_id="{{ params.job_id }}", sink=sink)
    op.render_template_fields({"params": {"job_id": "4150868000005350003"}})
    rendered = _serialize_rendered_fields(op)
    assert rendered["sink"] == "ObjectStorageSink(uri='s3://lake/4150868000005350003/{file}.parquet')"
    assert "very-secret" not in json.dumps(rendered, default=str)
    assert repr(DuckDBSink("/data/w.duckdb", "analytics.results")) == (
        "DuckDBSink(database='/data/w.duckdb', table='analytics.results')")
