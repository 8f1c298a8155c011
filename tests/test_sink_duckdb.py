"""DuckDBSink against real DuckDB files: layout, replace-per-job, rollback, names, locking."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import load_batches
from airflow_provider_zohobulk.sinks.duckdb import DuckDBSink
from tests.helpers import JOB, CorruptArchive, batches_of, canonical_batch, expected_rows, failing_after, sample_rows

OTHER_JOB = "4150868000004979777"
COLUMNS = "job_id, file_name, row_number, record_id, status, errors, errors_raw, source"


def rows_in(database: Path, table: str = "zoho_bulk_write_results", job_id: str | None = None) -> list[dict]:
    """The table's canonical columns as dicts, ordered as loaded (``source``'s JSON parsed into a dict)."""
    with duckdb.connect(str(database), read_only=True) as con:
        where = "WHERE job_id = ?" if job_id else ""
        cursor = con.execute(f"SELECT {COLUMNS} FROM {table} {where} ORDER BY job_id, file_name DESC, row_number",
                             [job_id] if job_id else [])
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        row["source"] = json.loads(row["source"])
    return rows


def snapshot(database: Path, table: str = "zoho_bulk_write_results") -> list[tuple]:
    with duckdb.connect(str(database), read_only=True) as con:
        return con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "zoho.duckdb"


def test_first_load_creates_the_table_and_keeps_every_field(database: Path) -> None:
    rows = sample_rows(12)
    pairs = batches_of(rows[:7], "Leads-Leads.csv") + batches_of(rows[7:], "Contacts-Contacts.csv")
    written = load_batches(DuckDBSink(str(database)), JOB, pairs)
    assert written == [f"duckdb://{database}/zoho_bulk_write_results"]
    assert rows_in(database) == expected_rows(pairs)
    with duckdb.connect(str(database), read_only=True) as con:
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'zoho_bulk_write_results'").fetchall())
        loaded_at = con.execute("SELECT DISTINCT loaded_at FROM zoho_bulk_write_results").fetchall()
        indexed = con.execute("SELECT count(*) FROM duckdb_constraints() "
                              "WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE')").fetchone()
    assert types["errors"] == "STRUCT(code VARCHAR, \"columns\" VARCHAR[])[]"
    assert types["source"] == "JSON"
    assert types["loaded_at"] == "TIMESTAMP WITH TIME ZONE"
    assert len(loaded_at) == 1 and isinstance(loaded_at[0][0], datetime) and loaded_at[0][0].tzinfo is not None
    assert indexed == (0,)  # unique by construction: an in-memory key index grows with the load


def test_members_with_different_mapped_columns_share_the_json_column(database: Path) -> None:
    """Each CSV's ``source`` is a struct of its own columns: each member gets its own INSERT, and DuckDB
    writes the struct as a JSON object, keys in header order, null values kept as JSON null."""
    leads = batches_of(sample_rows(5), "Leads-Leads.csv", size=2)
    deals = batches_of([{"source": {"Deal_Name": "Big", "Amount": None}}], "Deals-Deals.csv")
    notes = batches_of([{"status": "SKIPPED"}], "Notes-Notes.csv")  # no mapped column at all
    load_batches(DuckDBSink(str(database)), JOB, leads + deals + notes)
    with duckdb.connect(str(database), read_only=True) as con:
        found = con.execute("SELECT file_name, row_number, source::VARCHAR "
                            "FROM zoho_bulk_write_results ORDER BY file_name, row_number").fetchall()
        amount = con.execute("SELECT source->>'Deal_Name', source->>'Amount', json_type(source, '$.Amount') "
                             "FROM zoho_bulk_write_results WHERE file_name = 'Deals-Deals.csv'").fetchone()
    expected = expected_rows(leads + deals + notes)
    assert [(name, number, list(json.loads(text).items())) for name, number, text in found] == sorted(
        (row["file_name"], row["row_number"], list(row["source"].items())) for row in expected)
    assert [text for name, _, text in found if name == "Notes-Notes.csv"] == ["{}"]
    assert amount == ("Big", None, "NULL")


def test_a_table_with_the_earlier_map_column_is_refused_with_its_migration(database: Path) -> None:
    """Tables created before ``source`` became JSON hold a MAP: the load says how to migrate, changes
    nothing, and the migration it names works."""
    database.parent.mkdir(parents=True)
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE zoho_bulk_write_results (job_id VARCHAR, file_name VARCHAR, row_number BIGINT, "
                    "record_id VARCHAR, status VARCHAR, errors STRUCT(code VARCHAR, columns VARCHAR[])[], "
                    "errors_raw VARCHAR, source MAP(VARCHAR, VARCHAR), loaded_at TIMESTAMPTZ)")
        con.execute("INSERT INTO zoho_bulk_write_results VALUES ('1', 'A.csv', 1, NULL, 'ADDED', [], NULL, "
                    "MAP(['Email'], ['a@example.com']), now())")
    before = snapshot(database)
    with pytest.raises(SinkError, match=r"source MAP\(VARCHAR, VARCHAR\), not JSON.*ALTER TABLE") as caught:
        load_batches(DuckDBSink(str(database)), JOB, batches_of(sample_rows(3)))
    assert snapshot(database) == before
    migration = re.search(r"(ALTER TABLE .*?USING to_json\(source\))", str(caught.value)).group(1)
    with duckdb.connect(str(database)) as con:
        con.execute(migration)
    load_batches(DuckDBSink(str(database)), JOB, batches_of(sample_rows(3)))
    with duckdb.connect(str(database), read_only=True) as con:
        assert con.execute("SELECT source->>'Email' FROM zoho_bulk_write_results WHERE job_id = '1'").fetchone() == (
            "a@example.com",)
    assert rows_in(database, job_id=JOB) == expected_rows(batches_of(sample_rows(3)))


def test_rerun_replaces_the_jobs_rows_and_other_jobs_stay(database: Path) -> None:
    sink = DuckDBSink(str(database))
    load_batches(sink, JOB, batches_of(sample_rows(9)))
    other = batches_of(sample_rows(4), job_id=OTHER_JOB)
    load_batches(sink, OTHER_JOB, other)
    rerun = batches_of(sample_rows(5, seed=1))
    load_batches(sink, JOB, rerun)
    assert rows_in(database, job_id=JOB) == expected_rows(rerun)
    assert rows_in(database, job_id=OTHER_JOB) == expected_rows(other)


def test_failed_rerun_leaves_the_previous_rows_exactly(database: Path) -> None:
    sink = DuckDBSink(str(database))
    load_batches(sink, JOB, batches_of(sample_rows(9)))
    before = snapshot(database)
    with pytest.raises(CorruptArchive):
        load_batches(sink, JOB, failing_after(batches_of(sample_rows(20, seed=2)), 3))
    assert snapshot(database) == before


def test_a_broken_archive_leaves_no_database_where_there_was_none(database: Path) -> None:
    with pytest.raises(CorruptArchive):
        load_batches(DuckDBSink(str(database), "analytics.results"), JOB, failing_after(batches_of(sample_rows(6)), 1))
    assert os.listdir(database.parent) == []


def test_a_dropped_sink_rolls_back_and_releases_the_file(database: Path) -> None:
    """A sink garbage-collected between open and commit (a task killed by an exception elsewhere): its
    INSERT is stopped, the transaction rolled back, the lock released, the database it created removed."""
    database.parent.mkdir(parents=True)
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE other (x INT)")
    sink = DuckDBSink(str(database))
    sink.open(JOB)
    for name, batch in batches_of(sample_rows(5)):
        sink.write(name, batch)
    del sink
    gc.collect()
    with duckdb.connect(str(database)) as con:  # would fail with "Conflicting lock" while the load lived
        tables = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    assert tables == [("other",)]

    fresh = database.parent / "fresh.duckdb"
    sink = DuckDBSink(str(fresh))
    sink.open(JOB)
    for name, batch in batches_of(sample_rows(5)):
        sink.write(name, batch)
    del sink
    gc.collect()
    assert not fresh.exists()


def test_failure_inside_the_insert_leaves_no_table(database: Path) -> None:
    """Schema and table were created and the job's rows deleted in the transaction, then DuckDB refused a
    row (a null ``source``, which the table declares NOT NULL): all of it rolls back."""
    database.parent.mkdir(parents=True)
    duckdb.connect(str(database)).close()
    good = batches_of(sample_rows(6))
    name, batch = good[0]
    source_at = batch.schema.get_field_index("source")
    broken = batch.set_column(source_at, batch.schema.field(source_at),
                              pa.array([None] * batch.num_rows, batch.schema.field(source_at).type))
    sink = DuckDBSink(str(database), "analytics.results")
    with pytest.raises(SinkError, match=r"inserting rows into DuckDB table 'analytics\.results'") as caught:
        load_batches(sink, JOB, [(name, broken)])
    assert caught.value.job_id == JOB
    with duckdb.connect(str(database), read_only=True) as con:
        tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall()
    assert tables == []
    assert os.listdir(database.parent) == [database.name]


KILLED_LOAD = textwrap.dedent("""
    import sys, time
    from airflow_provider_zohobulk.sinks.duckdb import DuckDBSink
    from tests.helpers import JOB, batches_of, sample_rows

    sink = DuckDBSink(sys.argv[1])
    sink.open(JOB)
    for name, batch in batches_of(sample_rows(2000)):
        sink.write(name, batch)
    print("inserting", flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("existing", [True, False], ids=["existing database", "new database"])
def test_a_killed_load_leaves_the_database_as_it_was(database: Path, existing: bool) -> None:
    """SIGKILL mid-load (a task timeout, the OOM killer): no cleanup code runs. An existing database keeps
    its tables and rows and gains no file beside it; a database the load was creating is at most an empty
    one (DuckDB needs the file to exist to write into it; it commits nothing it was not told to)."""
    database.parent.mkdir(parents=True)
    if existing:
        load_batches(DuckDBSink(str(database)), OTHER_JOB, batches_of(sample_rows(4), job_id=OTHER_JOB))
        before = snapshot(database)
    process = subprocess.Popen([sys.executable, "-c", KILLED_LOAD, str(database)], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "inserting"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert os.listdir(database.parent) == [database.name]
    if existing:
        assert snapshot(database) == before
    else:
        with duckdb.connect(str(database), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM information_schema.tables").fetchone() == (0,)


def test_rows_arriving_twice_roll_everything_back(database: Path) -> None:
    """Two zip members of one name would repeat row numbers; without a key in the table, the sink refuses."""
    sink = DuckDBSink(str(database))
    load_batches(sink, JOB, batches_of(sample_rows(4)))
    before = snapshot(database)
    duplicate = canonical_batch(JOB, "Leads-Leads.csv", sample_rows(2))  # row numbers 1, 2 twice
    refused = r"zoho_bulk_write_results.*rows 1\.\.2 of 'Leads-Leads.csv' where row 3"
    with pytest.raises(SinkError, match=refused) as caught:
        load_batches(sink, JOB, [("Leads-Leads.csv", duplicate), ("Leads-Leads.csv", duplicate)])
    assert (caught.value.job_id, caught.value.file_name, caught.value.row_number) == (JOB, "Leads-Leads.csv", 1)
    assert snapshot(database) == before


def create_keyed_table(database: Path, row_number_check: str = "") -> None:
    """The sink's table as a user might create it beforehand: with a primary key (and a CHECK if given)."""
    database.parent.mkdir(parents=True)
    with duckdb.connect(str(database)) as con:
        con.execute(f"CREATE TABLE zoho_bulk_write_results (job_id VARCHAR, file_name VARCHAR, row_number BIGINT "
                    f"{row_number_check}, record_id VARCHAR, status VARCHAR, "
                    "errors STRUCT(code VARCHAR, columns VARCHAR[])[], errors_raw VARCHAR, "
                    "source JSON, loaded_at TIMESTAMPTZ, PRIMARY KEY (job_id, file_name, row_number))")


def test_constraint_of_a_users_table_fails_the_load_and_rolls_back(database: Path) -> None:
    """A table created beforehand keeps its own constraints; DuckDB's refusal inside the streaming INSERT
    is reported in the caller's thread and the table stays as it was."""
    create_keyed_table(database, row_number_check="CHECK (row_number < 4)")
    sink = DuckDBSink(str(database))
    load_batches(sink, JOB, batches_of(sample_rows(3)))
    before = snapshot(database)
    with pytest.raises(SinkError, match="inserting rows into DuckDB table 'zoho_bulk_write_results'") as caught:
        load_batches(sink, JOB, batches_of(sample_rows(6, seed=3)))
    assert caught.value.job_id == JOB and "CHECK" in str(caught.value).upper()
    assert snapshot(database) == before


@pytest.mark.parametrize(
    ("table", "schema", "name"),
    [
        ('analytics."Zoho Results"', "analytics", "Zoho Results"),
        ('"my.schema"."odd""name"', "my.schema", 'odd"name'),
        ("Results", "main", "Results"),
        ('"results; DROP TABLE victim"', "main", "results; DROP TABLE victim"),  # quoted: a literal name
    ],
)
def test_quoted_and_schema_qualified_names(database: Path, table: str, schema: str, name: str) -> None:
    database.parent.mkdir(parents=True)
    with duckdb.connect(str(database)) as con:
        con.execute("CREATE TABLE victim (x INT)")
    pairs = batches_of(sample_rows(3))
    sink = DuckDBSink(str(database), table)
    load_batches(sink, JOB, pairs)
    with duckdb.connect(str(database), read_only=True) as con:
        tables = set(con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall())
    assert tables == {("main", "victim"), (schema, name)}
    quoted = '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'
    assert rows_in(database, quoted) == expected_rows(pairs)


@pytest.mark.parametrize("table", ['x"; DROP TABLE victim; --', "results; DROP TABLE victim", "a.b.c", "bad\x00name",
                                   "", 'sch."t', "a..b"])
def test_names_outside_the_grammar_are_refused_at_parse_time(table: str) -> None:
    with pytest.raises(SinkConfigurationError):
        DuckDBSink("unused.duckdb", table)


def test_rendered_name_is_checked_again_at_open(database: Path) -> None:
    sink = DuckDBSink(str(database), "{{ params.table }}")
    sink.table = "a.b.c"  # what a careless rendering could produce
    with pytest.raises(SinkConfigurationError, match="more than two"):
        sink.open(JOB)
    assert not database.exists()


def test_in_memory_database_loads_and_names_itself() -> None:
    sink = DuckDBSink(":memory:", "main.results")
    assert load_batches(sink, JOB, batches_of(sample_rows(3))) == ["duckdb:///:memory:/main/results"]


def test_batch_of_another_job_is_refused(database: Path) -> None:
    with pytest.raises(SinkError, match="another job"):
        load_batches(DuckDBSink(str(database)), JOB, [("X.csv", canonical_batch(OTHER_JOB, "X.csv", sample_rows(1)))])


def test_asset_uri_is_accepted_by_airflow(database: Path) -> None:
    from airflow.sdk import Asset

    sink = DuckDBSink(str(database), 'analytics."Zoho Results"')
    assert sink.asset_uri == f"duckdb://{database}/analytics/Zoho%20Results"
    # the table, not its spelling: "Results" and Results are one table, one Asset
    assert DuckDBSink(str(database), '"Results"').asset_uri == DuckDBSink(str(database), "Results").asset_uri
    # Airflow keeps it, dropping the empty host: "duckdb:/tmp/..." (the same for a user's own Asset(...)).
    assert Asset(sink.asset_uri).uri == "duckdb:" + sink.asset_uri.removeprefix("duckdb://")


def test_a_locked_database_is_waited_for_then_loaded(database: Path) -> None:
    """Another process holding the file: no wait -> a clear SinkError; with a wait -> loads once released."""
    database.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys; c = duckdb.connect(sys.argv[1]); c.execute('CREATE TABLE held (x INT)'); "
         "print('ready', flush=True); sys.stdin.readline(); c.close()", str(database)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(SinkError, match="lock"):
            load_batches(DuckDBSink(str(database), lock_timeout=0), JOB, batches_of(sample_rows(3)))
        # The load waits for the lock when it opens, and loads once the holder lets go.

        outcome: dict[str, object] = {}

        def load() -> None:
            try:
                outcome["written"] = load_batches(DuckDBSink(str(database), lock_timeout=120), JOB,
                                                  batches_of(sample_rows(3)))
            except Exception as exc:  # reported by the assertion below
                outcome["error"] = exc

        loader = threading.Thread(target=load)
        loader.start()
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        loader.join(timeout=150)
        assert outcome.get("error") is None and outcome.get("written") == [DuckDBSink(str(database)).asset_uri]
    finally:
        holder.kill()
        holder.wait()
    assert rows_in(database) == expected_rows(batches_of(sample_rows(3)))


@pytest.mark.parametrize("keyed", [False, True])
def test_buffer_pool_is_capped_during_a_load_unless_the_table_has_an_index(
        database: Path, keyed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap keeps memory flat, but DuckDB holds a key's index in memory for every row a load adds:
    with a cap, a large load into a keyed table would fail at COMMIT, so such a table loads uncapped."""
    if keyed:
        create_keyed_table(database)
    seen: list[str] = []
    connect = duckdb.connect

    class NotingTheLimit:
        """The load's connection, noting DuckDB's memory_limit when the INSERT starts."""

        def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
            self.connection = connection

        def execute(self, sql: str, *args):
            if sql.startswith("INSERT"):
                seen.append(self.connection.execute("SELECT current_setting('memory_limit')").fetchone()[0])
            return self.connection.execute(sql, *args)

        def __getattr__(self, name: str):
            return getattr(self.connection, name)

    monkeypatch.setattr(duckdb, "connect", lambda *args, **kwargs: NotingTheLimit(connect(*args, **kwargs)))
    load_batches(DuckDBSink(str(database)), JOB, batches_of(sample_rows(3)))
    monkeypatch.undo()
    with duckdb.connect(str(database)) as con:
        after = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert len(seen) == 1
    assert (seen[0] == "30.5 MiB") is not keyed
    assert rows_in(database) == expected_rows(batches_of(sample_rows(3)))
    assert after != "30.5 MiB"  # restored when the load ends
