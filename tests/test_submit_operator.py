"""ZohoBulkWriteOperator end to end: a file of leads -> upload files -> sandbox jobs over HTTP -> results back.

Runs through Airflow's own runner (``dag.test()``), because the resume-after-crash ledger lives in an
Airflow Variable, which only a running task can reach. Input checks happen before the ledger is read,
so the bad-input tests call ``execute`` directly and inspect the typed error.
"""

from __future__ import annotations

import csv
import json
import threading
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest

from airflow_provider_zohobulk.errors import SubmissionInputError
from airflow_provider_zohobulk.operators.bulk_write import ZohoBulkWriteOperator
from airflow_provider_zohobulk.sources import ObjectStorageSource

DAGS = Path(__file__).parent / "dags" / "zoho_submit_test_dags.py"


def load_dags():
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoho_submit_test_dags", DAGS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_leads(path: Path, rows: int, *, email_of=lambda n: f"lead{n}@example.com") -> Path:
    """``rows`` leads, row n (1-based) with e-mail ``email_of(n)``: the join key from outcome back to input."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["Last_Name", "Email", "Company", "Phone"])
        for n in range(1, rows + 1):
            writer.writerow([f"Name {n}", email_of(n), f"Acme, Inc. {n % 50}", f"0{n:09d}"])
    return path


def run_dag(dag, conf: dict, logical_date=None):
    """``dag.test()``; returns (state, task states, XCom return values, run id)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    kwargs = {"run_conf": conf}
    if logical_date is not None:
        kwargs["logical_date"] = logical_date
    run = dag.test(**kwargs)
    with create_session() as session:
        tis = list(session.scalars(select(TaskInstance).where(TaskInstance.run_id == run.run_id,
                                                              TaskInstance.dag_id == dag.dag_id)))
        states = {ti.task_id: (str(ti.state), ti.try_number) for ti in tis}
        xcoms = {x.task_id: x.value for x in
                 session.scalars(select(XComModel).where(XComModel.run_id == run.run_id,
                                                         XComModel.dag_id == dag.dag_id,
                                                         XComModel.key == "return_value"))}
    xcoms = {k: json.loads(v) if isinstance(v, str) else v for k, v in xcoms.items()}
    return str(run.state), states, xcoms


def requests_to(sandbox, suffix: str) -> list[dict]:
    return [r for r in sandbox.stats()["requests"]
            if r.get("method") == "POST" and r["path"].rstrip("/").endswith(suffix)]


@pytest.fixture
def sandbox(zoho_sandbox_connection, monkeypatch):
    zoho_sandbox_connection.configure(seeded_failure_share=0.0)  # outcomes follow from the input alone
    return zoho_sandbox_connection


@pytest.mark.airflow_e2e
def test_60000_rows_become_three_jobs_and_every_outcome_joins_its_input_row(airflow_db, sandbox, tmp_path):
    def email_of(n: int) -> str:
        if n % 1000 == 0:  # repeats the row before, in the same file: Zoho skips it as a duplicate
            return f"lead{n - 1}@example.com"
        if 50_001 <= n <= 50_010:  # the e-mail of a record the first job created: the upsert updates it
            return f"lead{n - 50_000}@example.com"
        return f"lead{n}@example.com"

    source = write_leads(tmp_path / "leads.csv", 60_000, email_of=email_of)
    database = tmp_path / "results.duckdb"
    state, states, xcoms = run_dag(load_dags().submit_dag, {"uri": str(source), "database": str(database),
                                                            "operation": "upsert", "find_by": "Email"})
    assert state == "success", states
    summary = xcoms["submit"]
    assert [(j["first_row"], j["last_row"], j["rows"]) for j in summary["jobs"]] == [
        (1, 25_000, 25_000), (25_001, 50_000, 25_000), (50_001, 60_000, 10_000)]
    assert summary["rows"] == 60_000 and summary["files"] == 3
    assert len(requests_to(sandbox, "/upload")) == 3
    assert len(requests_to(sandbox, "/bulk/v8/write")) == 3
    assert json.loads(json.dumps(summary)) == summary
    job_ids = [j["job_id"] for j in summary["jobs"]]
    with duckdb.connect(str(database), read_only=True) as con:
        per_job = dict(con.execute("SELECT job_id, count(*) FROM zoho_bulk_write_results GROUP BY job_id").fetchall())
        assert per_job == {job_ids[0]: 25_000, job_ids[1]: 25_000, job_ids[2]: 10_000}
        numbers = con.execute("SELECT min(row_number), max(row_number), count(DISTINCT row_number) "
                              "FROM zoho_bulk_write_results").fetchone()
        assert numbers == (1, 60_000, 60_000)
        # Outcome joins input: each result row echoes the e-mail of the input row its row_number names.
        mismatched = con.execute(
            "SELECT count(*) FROM zoho_bulk_write_results WHERE json_extract_string(source, '$.Email') <> "
            "'lead' || (CASE WHEN row_number % 1000 = 0 THEN row_number - 1 "
            "WHEN row_number BETWEEN 50001 AND 50010 THEN row_number - 50000 ELSE row_number END) || '@example.com'"
        ).fetchone()[0]
        assert mismatched == 0
        by_status = dict(con.execute("SELECT status, count(*) FROM zoho_bulk_write_results GROUP BY status").fetchall())
        assert by_status == {"ADDED": 59_930, "SKIPPED": 60, "UPDATED": 10}
        skipped_at = [r[0] for r in con.execute("SELECT row_number FROM zoho_bulk_write_results "
                                                "WHERE status = 'SKIPPED' ORDER BY 1").fetchall()]
        assert skipped_at == list(range(1000, 60_001, 1000))
        updated_at = [r[0] for r in con.execute("SELECT row_number FROM zoho_bulk_write_results "
                                                "WHERE status = 'UPDATED' ORDER BY 1").fetchall()]
        assert updated_at == list(range(50_001, 50_011))
    assert summary["by_status"] == by_status


@pytest.mark.airflow_e2e
def test_a_retry_after_a_crash_before_the_third_upload_submits_only_the_third(airflow_db, sandbox, tmp_path):
    source = write_leads(tmp_path / "leads.csv", 60_000)
    # The third upload fails past the hook's retries (retry_limit=1: two attempts): the first try dies there.
    sandbox.add_fault("status", count=2, path_prefix="/crm/v8/upload", status=500, after=2)
    state, states, xcoms = run_dag(load_dags().submit_dag, {"uri": str(source), "database": str(tmp_path / "r.duckdb")})
    assert state == "success", states
    assert states["submit"][1] == 2  # the task ran twice
    summary = xcoms["submit"]
    assert len(summary["jobs"]) == 3
    creates = requests_to(sandbox, "/bulk/v8/write")
    assert len(creates) == 3  # the retry created only the third job
    assert len(requests_to(sandbox, "/upload")) == 2 + 2 + 1  # two, the failing third twice, the third again
    assert len({j["job_id"] for j in summary["jobs"]}) == 3
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT row_number) FROM zoho_bulk_write_results").fetchone() == (
            60_000, 60_000)


@pytest.mark.airflow_e2e
def test_a_lost_create_answer_is_not_created_again_on_retry(airflow_db, sandbox, tmp_path, capfd):
    source = write_leads(tmp_path / "leads.csv", 30_000)
    # Zoho creates the second job, then the connection drops before its answer: it may exist, so no retry may
    # create it again; the task stops and says what to check.
    sandbox.add_fault("drop", path_prefix="/crm/bulk/v8/write", after=1, after_processing=True)
    state, states, _ = run_dag(load_dags().submit_dag, {"uri": str(source), "database": str(tmp_path / "r.duckdb")})
    assert state == "failed" and states["submit"] == ("failed", 2)
    assert len(sandbox.write_jobs()) == 2  # the first, and the second whose answer was lost: never a third
    output = "".join(capfd.readouterr())  # the task runner logs to the process's streams
    assert "SubmissionUncertainError" in output and "answer was lost" in output
    assert not (tmp_path / "r.duckdb").exists()  # nothing was loaded


@pytest.mark.airflow_e2e
def test_an_input_changed_between_tries_is_refused_not_mixed(airflow_db, sandbox, tmp_path, capfd):
    source = write_leads(tmp_path / "leads.csv", 30_000)
    changed = write_leads(tmp_path / "changed.csv", 30_000, email_of=lambda n: f"other{n}@example.com")
    sandbox.add_fault("status", count=2, path_prefix="/crm/v8/upload", status=500, after=1)  # try 1 ends there
    state, states, _ = run_dag(load_dags().changing_dag, {"uri": str(source), "changed": str(changed),
                                                          "database": str(tmp_path / "r.duckdb")})
    assert state == "failed" and states["submit"] == ("failed", 2)
    assert len(sandbox.write_jobs()) == 1  # the retry created nothing
    output = "".join(capfd.readouterr())
    assert "SubmissionChangedError" in output and "Leads-00001.csv" in output


@pytest.mark.airflow_e2e
def test_deferred_waits_find_the_jobs_in_the_ledger(airflow_db, sandbox, tmp_path):
    sandbox.configure(job_step_seconds=600)
    source = write_leads(tmp_path / "leads.csv", 30_000)
    stop = threading.Event()

    def move_time_on() -> None:  # every job moves on a step a little after someone looked at it
        seen = 0
        while not stop.wait(0.1):
            polls = sum(1 for r in sandbox.stats()["requests"] if "/bulk/v8/write/" in r["path"])
            if polls > seen:
                seen = polls
                sandbox.advance_clock(600)

    mover = threading.Thread(target=move_time_on, daemon=True)
    mover.start()
    try:
        state, states, xcoms = run_dag(load_dags().deferred_submit_dag,
                                       {"uri": str(source), "database": str(tmp_path / "d.duckdb")})
    finally:
        stop.set()
        mover.join()
    assert state == "success", states
    assert [j["rows"] for j in xcoms["submit"]["jobs"]] == [25_000, 5_000]
    assert sum(xcoms["submit"]["by_status"].values()) == 30_000
    with duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM zoho_bulk_write_results").fetchone()[0] == 30_000


@pytest.mark.airflow_e2e
def test_without_waiting_the_job_ids_come_back_at_once(airflow_db, sandbox, tmp_path):
    sandbox.configure(job_step_seconds=3600)  # the jobs would not finish during the test
    source = write_leads(tmp_path / "leads.csv", 100)
    state, states, xcoms = run_dag(load_dags().no_wait_dag, {"uri": str(source)})
    assert state == "success", states
    jobs = xcoms["submit"]["jobs"]
    assert len(jobs) == 1 and jobs[0]["first_row"] == 1 and jobs[0]["last_row"] == 100
    assert sandbox.job_details(jobs[0]["job_id"])["status"] == "ADDED"
    assert "by_status" not in xcoms["submit"]


# --- bad input: refused before anything is sent -------------------------------------------------------------


class _Ti:
    dag_id, run_id, task_id, map_index = "d", "r", "submit", -1


def execute(operator):
    return operator.execute({"ti": _Ti(), "outlet_events": defaultdict(dict)})


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"operation": "upsert"}, "find_by"),
    ({"operation": "update", "find_by": "Email", "field_mappings": {"Last_Name": "Last_Name", "Email": "Mail"}},
     "Mail"),
    ({"operation": "upsert", "find_by": "Mobile"}, "Mobile"),
])
def test_bad_arguments_are_refused_before_any_upload(sandbox, tmp_path, kwargs, match):
    source = write_leads(tmp_path / "leads.csv", 10)
    operator = ZohoBulkWriteOperator(task_id="submit", module="Leads", source=ObjectStorageSource(str(source)),
                                     **kwargs)
    with pytest.raises(SubmissionInputError, match=match):
        execute(operator)
    assert requests_to(sandbox, "/upload") == []


def test_too_many_columns_and_a_too_long_value_name_the_column_and_row(sandbox, tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"Field_{i}" for i in range(201)) + "\n" + ",".join("x" * 201) + "\n")
    with pytest.raises(SubmissionInputError, match="200"):
        execute(ZohoBulkWriteOperator(task_id="submit", module="Leads", source=ObjectStorageSource(str(wide))))
    long_value = tmp_path / "long.csv"
    rows = ["Last_Name,Email"] + [f"Name {n},lead{n}@example.com" for n in range(1, 40_000)]
    rows[31_234] = "Name," + "x" * 120 + "@example.com"  # input row 31,234
    long_value.write_text("\n".join(rows) + "\n")
    operator = ZohoBulkWriteOperator(task_id="submit", module="Leads", source=ObjectStorageSource(str(long_value)),
                                     limits=_limits(field_max_chars={"Email": 100}))
    with pytest.raises(SubmissionInputError) as info:
        execute(operator)
    assert info.value.row_number == 31_234 and info.value.column == "Email"
    assert requests_to(sandbox, "/upload") == []  # not even the first, valid, file was sent


def _limits(**kwargs):
    from airflow_provider_zohobulk.bulk_write_submit import SubmitLimits

    return SubmitLimits(**kwargs)
