"""SqlSink against a real PostgreSQL server: round trip, re-runs, rollback, concurrency, lost connections."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest

from airflow_provider_zohobulk.errors import CorruptArchiveError, SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import load_batches
from airflow_provider_zohobulk.sinks.sql import SqlSink
from tests.helpers import canonical_batch, member_rows, sample_rows

pytestmark = pytest.mark.postgres

CONN_ID = "zoho_pg_results"


@pytest.fixture
def pg_conn_env(postgres_server, monkeypatch):
    """The test server as the Airflow connection ``CONN_ID``."""
    for name, value in postgres_server.airflow_conn_env(CONN_ID).items():
        monkeypatch.setenv(name, value)
    return postgres_server


@pytest.fixture
def db(postgres_server) -> Iterator[psycopg.Connection]:
    with postgres_server.connect() as connection:
        yield connection


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_rows(db: psycopg.Connection, qualified: str, job_id: str | None = None) -> list[tuple]:
    """Rows as tuples without loaded_at, ordered by key (jsonb comes back as Python objects)."""
    where = "WHERE job_id = %s" if job_id else ""
    return db.execute(
        f"SELECT job_id, file_name, row_number, record_id, status, errors, errors_raw, source FROM {qualified} "
        f"{where} ORDER BY job_id, file_name, row_number",
        (job_id,) if job_id else None,
    ).fetchall()


def expected_rows(job_id: str, file_name: str, rows: list[dict], first: int = 1) -> list[tuple]:
    return [
        (job_id, file_name, first + i, r.get("record_id"), r.get("status", "ADDED"), r.get("errors", []),
         r.get("errors_raw"), r.get("source") or {})
        for i, r in enumerate(rows)
    ]


def load(table: str, job_id: str, files: dict[str, list[dict]], **kwargs) -> list[str]:
    batches = [(name, canonical_batch(job_id, name, rows)) for name, rows in files.items()]
    return load_batches(SqlSink(CONN_ID, table, **kwargs), job_id, batches)


AWKWARD = [
    {"record_id": "1", "status": "ADDED", "source": {"Last_Name": "", "Email": None, "Note": 'say "hi",\r\nbye'}},
    {"record_id": None, "status": "SKIPPED", "errors_raw": "", "source": {"Last_Name": "\\N", "Email": "\\."}},
    {"record_id": "", "status": "UPDATED", "source": {"Größe ☃": "日本語\ttab", "ctl": "bell\x07"}},
]


def test_round_trip_keeps_every_field(pg_conn_env, db, pg_table_name):
    rows = member_rows(sample_rows(9) + AWKWARD)  # one CSV: every row has all its mapped columns
    written = load(pg_table_name, "J1", {"Leads_1.csv": rows, "Leads_2.csv": sample_rows(3, seed=1)}, batch_rows=4)

    assert written == [f"postgres://127.0.0.1:{pg_conn_env.port}/{pg_conn_env.dbname}/public/{pg_table_name}"]
    assert table_rows(db, pg_table_name) == (
        expected_rows("J1", "Leads_1.csv", rows) + expected_rows("J1", "Leads_2.csv", sample_rows(3, seed=1))
    )
    # NULL and empty string stay distinct; jsonb and the key are what the layout promises.
    nulls = db.execute(
        f"SELECT record_id IS NULL, errors_raw IS NULL FROM {pg_table_name} WHERE file_name = 'Leads_1.csv' "
        "AND row_number > 9 ORDER BY row_number"
    ).fetchall()
    assert nulls == [(False, True), (True, False), (False, True)]
    types = dict(db.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", (pg_table_name,)
    ).fetchall())
    assert types["errors"] == types["source"] == "jsonb"
    assert types["loaded_at"] == "timestamp with time zone"
    assert db.execute(f"SELECT count(*) FROM {pg_table_name} WHERE loaded_at IS NULL").fetchone() == (0,)


def test_rerun_replaces_only_that_jobs_rows(pg_conn_env, db, pg_table_name):
    load(pg_table_name, "J1", {"a.csv": sample_rows(10)})
    load(pg_table_name, "J2", {"a.csv": sample_rows(4)})
    load(pg_table_name, "J1", {"a.csv": sample_rows(10)})
    assert db.execute(f"SELECT job_id, count(*) FROM {pg_table_name} GROUP BY 1 ORDER BY 1").fetchall() == [
        ("J1", 10), ("J2", 4)
    ]
    load(pg_table_name, "J1", {"b.csv": sample_rows(2, seed=2)})
    assert table_rows(db, pg_table_name, "J1") == expected_rows("J1", "b.csv", sample_rows(2, seed=2))
    assert len(table_rows(db, pg_table_name, "J2")) == 4


def test_failure_at_the_end_leaves_previous_rows(pg_conn_env, db, pg_table_name):
    load(pg_table_name, "J1", {"a.csv": sample_rows(6)})
    before = table_rows(db, pg_table_name)

    def batches_then_corrupt():
        yield "a.csv", canonical_batch("J1", "a.csv", sample_rows(50, seed=3))
        yield "b.csv", canonical_batch("J1", "b.csv", sample_rows(50))
        raise CorruptArchiveError("CRC32 mismatch", job_id="J1", file_name="b.csv")

    with pytest.raises(CorruptArchiveError):
        load_batches(SqlSink(CONN_ID, pg_table_name), "J1", batches_then_corrupt())
    assert table_rows(db, pg_table_name) == before


def test_abort_of_the_first_load_creates_no_rows(pg_conn_env, db, pg_table_name):
    sink = SqlSink(CONN_ID, pg_table_name)
    sink.open("J1")
    sink.write("a.csv", canonical_batch("J1", "a.csv", sample_rows(5)))
    sink.abort()
    assert table_rows(db, pg_table_name) == []
    assert db.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%%' AND state <> 'idle'"
                      ).fetchone() == (0,)


def test_concurrent_first_loads_into_a_new_table_all_succeed(pg_conn_env, db, pg_table_name):
    jobs = [f"J{i}" for i in range(4)]
    start_together = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job_id: str) -> None:
        try:
            sink = SqlSink(CONN_ID, pg_table_name)
            start_together.wait(timeout=30)
            sink.open(job_id)
            for n in range(3):
                sink.write(f"{n}.csv", canonical_batch(job_id, f"{n}.csv", sample_rows(200, seed=n)))
            sink.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a load blocked (deadlock?)"
    assert errors == []
    assert db.execute(f"SELECT job_id, count(*) FROM {pg_table_name} GROUP BY 1 ORDER BY 1").fetchall() == [
        (job, 600) for job in jobs
    ]


def test_a_load_commits_while_another_jobs_load_is_open(pg_conn_env, db, pg_table_name):
    slow = SqlSink(CONN_ID, pg_table_name)
    slow.open("SLOW")
    slow.write("a.csv", canonical_batch("SLOW", "a.csv", sample_rows(10)))
    outcome: list[object] = []
    # Run in a thread so that a lock wait shows up as a timeout instead of a hung test.
    thread = threading.Thread(target=lambda: outcome.append(load(pg_table_name, "FAST", {"a.csv": sample_rows(3)})))
    thread.start()
    thread.join(timeout=30)
    try:
        assert not thread.is_alive(), "the second job waited for the first one's transaction"
        assert len(table_rows(db, pg_table_name, "FAST")) == 3
        assert table_rows(db, pg_table_name, "SLOW") == []  # not visible before its commit
    finally:
        slow.write("b.csv", canonical_batch("SLOW", "b.csv", sample_rows(2)))
        slow.commit()
    assert len(table_rows(db, pg_table_name, "SLOW")) == 12


def test_same_job_twice_at_once_the_later_load_wins(pg_conn_env, db, pg_table_name):
    first = SqlSink(CONN_ID, pg_table_name)
    first.open("J1")
    first.write("a.csv", canonical_batch("J1", "a.csv", sample_rows(5)))
    second_done = threading.Event()
    failures: list[BaseException] = []

    def second_load() -> None:
        try:
            load(pg_table_name, "J1", {"b.csv": sample_rows(2)})
        except BaseException as exc:
            failures.append(exc)
        second_done.set()

    thread = threading.Thread(target=second_load)
    thread.start()
    try:
        waiting = 0
        for _ in range(600):  # until the second load is seen waiting on the job's advisory lock
            waiting = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' "
                "AND datname = current_database()"
            ).fetchone()[0]
            if waiting or second_done.is_set():
                break
            time.sleep(0.05)
        assert not second_done.is_set(), "the second load of the same job did not wait for the first"
        assert waiting == 1
    except BaseException:
        first.abort()
        raise
    first.commit()
    thread.join(timeout=30)
    assert failures == []
    assert table_rows(db, pg_table_name, "J1") == expected_rows("J1", "b.csv", sample_rows(2))


def test_connection_killed_mid_copy_raises_sink_error_and_changes_nothing(pg_conn_env, db, pg_table_name):
    load(pg_table_name, "J1", {"a.csv": sample_rows(4)})
    before = table_rows(db, pg_table_name)

    def batches_with_a_kill():
        yield "a.csv", canonical_batch("J1", "a.csv", sample_rows(100))
        pids = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
            (f"COPY %{pg_table_name}%",),
        ).fetchall()
        assert len(pids) == 1
        assert db.execute("SELECT pg_terminate_backend(%s)", pids[0]).fetchone() == (True,)
        for n in range(5):
            yield "a.csv", canonical_batch("J1", "a.csv", sample_rows(2000), first_row_number=101 + 2000 * n)

    with pytest.raises(SinkError) as caught:
        load_batches(SqlSink(CONN_ID, pg_table_name, batch_rows=500), "J1", batches_with_a_kill())
    message = str(caught.value)
    assert pg_table_name in message and "job J1" in message
    assert pg_conn_env.password not in message
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    assert table_rows(db, pg_table_name) == before


def test_jobs_with_different_mapped_columns_share_the_table(pg_conn_env, db, pg_table_name):
    leads = [{"record_id": "1", "source": {"Last_Name": "Ng", "Company": "Acme"}}]
    deals = [{"record_id": "2", "source": {"Deal_Name": "Big", "Amount": "10.5", "Stage": "Won"}}]
    load(pg_table_name, "LEADS", {"Leads.csv": leads})
    load(pg_table_name, "DEALS", {"Deals.csv": deals})
    assert db.execute(f"SELECT job_id, source FROM {pg_table_name} ORDER BY job_id").fetchall() == [
        ("DEALS", deals[0]["source"]), ("LEADS", leads[0]["source"])
    ]
    assert db.execute(f"SELECT source->>'Amount' FROM {pg_table_name} WHERE job_id = 'DEALS'").fetchone() == ("10.5",)


def test_schema_qualified_and_quoted_names(pg_conn_env, db, pg_table_name):
    schema = f"Zoho Stage {pg_table_name[-6:]}"
    db.execute(f"CREATE SCHEMA {quoted(schema)}")
    names = {
        f"{quoted(schema)}.{quoted('Résultats 2026')}": (schema, "Résultats 2026"),
        f"{pg_table_name}.Mixed": None,  # a schema that does not exist: a clear SinkError
        f"Mixed_{pg_table_name}": ("public", f"Mixed_{pg_table_name}"),
        f'"odd ""quote"" {pg_table_name}"': ("public", f'odd "quote" {pg_table_name}'),
    }
    for name, location in names.items():
        if location is None:
            with pytest.raises(SinkError, match="does not exist"):
                load(name, "J1", {"a.csv": sample_rows(1)})
            continue
        written = load(name, "J1", {"a.csv": sample_rows(2)})
        target = f"{quoted(location[0])}.{quoted(location[1])}"
        assert len(table_rows(db, target)) == 2
        assert written[0].endswith("/" + "/".join(quote(part, safe="") for part in location))


def test_injection_attempts_run_nothing_but_the_load(pg_conn_env, db, pg_table_name):
    canary = f"canary_{pg_table_name}"
    db.execute(f"CREATE TABLE {canary} (x int)")

    hostile = f"{pg_table_name}; DROP TABLE {canary}"
    with pytest.raises(SinkConfigurationError, match="looks like SQL"):
        SqlSink(CONN_ID, hostile)
    load(f'"{hostile}"', "J1", {"a.csv": sample_rows(2)})  # quoted: a table with that literal name
    assert len(table_rows(db, quoted(hostile))) == 2
    with pytest.raises(SinkConfigurationError):
        SqlSink(CONN_ID, f'{pg_table_name}"; DROP TABLE {canary}; --')
    with pytest.raises(SinkConfigurationError):
        SqlSink(CONN_ID, f"{pg_table_name}\x00")
    assert db.execute("SELECT to_regclass(%s) IS NOT NULL", (canary,)).fetchone() == (True,)


def test_rendered_table_name_is_checked_again_at_open(pg_conn_env):
    sink = SqlSink(CONN_ID, "{{ params.table }}")
    sink.table = 'a.b.c'  # what Airflow would set after rendering
    with pytest.raises(SinkConfigurationError, match="more than two"):
        sink.open("J1")


def test_wrong_password_is_a_sink_error_without_the_password(postgres_server, monkeypatch, pg_table_name):
    env = postgres_server.airflow_conn_env(CONN_ID)
    (name, value), = env.items()
    connection = json.loads(value)
    connection["password"] = "not-the-Secret-123"
    monkeypatch.setenv(name, json.dumps(connection))
    with pytest.raises(SinkError) as caught:
        load(pg_table_name, "J1", {"a.csv": sample_rows(1)})
    assert "password authentication failed" in str(caught.value)
    assert "not-the-Secret-123" not in str(caught.value)
    assert pg_table_name in str(caught.value)


def test_constraint_violation_during_the_copy_rolls_everything_back(pg_conn_env, db, pg_table_name):
    """The server refusing a row (here a CHECK the table's owner added) ends the COPY: SinkError, nothing changed."""
    load(pg_table_name, "J1", {"a.csv": sample_rows(3)})
    db.execute(f'ALTER TABLE "{pg_table_name}" ADD CONSTRAINT few_rows CHECK (row_number < 5)')
    db.commit()
    before = table_rows(db, pg_table_name)
    with pytest.raises(SinkError, match="few_rows") as caught:
        load_batches(SqlSink(CONN_ID, pg_table_name), "J1", [("a.csv", canonical_batch("J1", "a.csv", sample_rows(6)))])
    assert isinstance(caught.value.__cause__, psycopg.errors.CheckViolation)
    assert table_rows(db, pg_table_name) == before


def test_rows_arriving_twice_are_refused_before_the_database(pg_conn_env, db, pg_table_name):
    load(pg_table_name, "J1", {"a.csv": sample_rows(3)})
    before = table_rows(db, pg_table_name)
    same_rows_twice = [("a.csv", canonical_batch("J1", "a.csv", sample_rows(5)))] * 2
    with pytest.raises(SinkError, match=r"rows 1\.\.5 of 'a\.csv' where row 6 was due"):
        load_batches(SqlSink(CONN_ID, pg_table_name), "J1", same_rows_twice)
    assert table_rows(db, pg_table_name) == before


def test_server_restart_mid_load_raises_sink_error_and_changes_nothing(pg_conn_env, pg_table_name):
    load(pg_table_name, "J1", {"a.csv": sample_rows(4)})
    with pg_conn_env.connect() as db:
        before = table_rows(db, pg_table_name)

    def batches_with_a_restart():
        yield "a.csv", canonical_batch("J1", "a.csv", sample_rows(100))
        pg_conn_env.restart()
        for n in range(5):
            yield "a.csv", canonical_batch("J1", "a.csv", sample_rows(2000), first_row_number=101 + 2000 * n)

    with pytest.raises(SinkError) as caught:
        load_batches(SqlSink(CONN_ID, pg_table_name), "J1", batches_with_a_restart())
    assert pg_table_name in str(caught.value) and "job J1" in str(caught.value)
    with pg_conn_env.connect() as db:
        assert table_rows(db, pg_table_name) == before
