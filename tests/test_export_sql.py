"""SqlSink taking Bulk Read exports: PostgreSQL (COPY) and SQLite (generic DB-API), replace and merge.

Export batches are built here with pyarrow in the layout of ``bulk_read.read_export_page``: the
module's columns (strings, "" for an empty cell, null where the column is absent), then ``_job_id``,
``_page``, ``_row_number``. Every test runs against both databases unless its name says otherwise.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from airflow_provider_zohobulk.bulk_read import EXPORT_META_COLUMNS, read_export_page
from airflow_provider_zohobulk.errors import CorruptArchiveError, SinkError
from airflow_provider_zohobulk.sinks.base import ExportLoad, load_export_batches
from airflow_provider_zohobulk.sinks.sql import SqlSink
from tests.fixtures.zips import chunked
from tests.test_bulk_read_core import expected_export_rows
from tests.test_bulk_read_core import export_pages as sandbox_pages

PG_CONN_ID = "zoho_pg_exports"
SQLITE_CONN_ID = "zoho_sqlite_exports"
MODULE = "Leads"
COLUMNS = ["Id", "Last_Name", "Email", "Company"]


# --- building exports -------------------------------------------------------------------------------------


def lead(number: int, *, version: int = 0, **fields: str | None) -> dict[str, str | None]:
    """A Leads record; ``version`` changes its values (a record edited in Zoho between two exports)."""
    record = {"Id": f"41508680000{number:08d}", "Last_Name": f"Smith {number} v{version}",
              "Email": f"s{number}@example.com", "Company": "Acme, Inc."}
    return {**record, **fields}


def page_batch(job_id: str, page: int, records: list[dict], columns: list[str], first_row: int = 1) -> pa.RecordBatch:
    """One batch of an export page: the module columns (a record lacking one is null there), then the meta columns."""
    arrays = [pa.array([record.get(name) for record in records], pa.string()) for name in columns]
    arrays += [pa.array([job_id] * len(records), pa.string()), pa.array([page] * len(records), pa.int64()),
               pa.array(range(first_row, first_row + len(records)), pa.int64())]
    return pa.RecordBatch.from_arrays(arrays, names=[*columns, *EXPORT_META_COLUMNS])


def export_pages(run_id: str, pages: list[list[dict]], columns: list[str] | list[list[str]] = COLUMNS,
                 *, batch_rows: int = 3) -> Iterator[tuple[str, pa.RecordBatch]]:
    """(file name, batch) per page, each page cut into batches of ``batch_rows`` as the decoder does.
    Page n is job ``run_id-n`` (one Zoho job per page); ``columns`` may differ per page."""
    for number, records in enumerate(pages, start=1):
        page_columns = columns[number - 1] if isinstance(columns[0], list) else columns
        job_id = run_id if number == 1 else f"{run_id}-{number}"
        file_name = f"{MODULE}-{number:05d}.csv"
        if not records:
            yield file_name, page_batch(job_id, number, [], page_columns)
        for start in range(0, len(records), batch_rows):
            yield file_name, page_batch(job_id, number, records[start:start + batch_rows], page_columns, start + 1)


def expected(run_id: str, pages: list[list[dict]], columns: list[str]) -> list[tuple]:
    """The table rows an export of ``pages`` leaves, as (columns..., _job_id, _page, _row_number)."""
    rows = []
    for number, records in enumerate(pages, start=1):
        job_id = run_id if number == 1 else f"{run_id}-{number}"
        rows += [(*(record.get(name) for name in columns), job_id, number, row)
                 for row, record in enumerate(records, start=1)]
    return rows


# --- the two databases ------------------------------------------------------------------------------------


@dataclass
class Database:
    """One database behind an Airflow connection, with what the tests read from it."""

    kind: str
    conn_id: str
    default_table: str
    connect: Any
    created: list[str] = field(default_factory=list)

    def sink(self, table: str | None = None, **kwargs) -> SqlSink:
        return SqlSink(self.conn_id, table or self.default_table, **kwargs)

    def export(self, pages: list[list[dict]], *, run_id: str = "R1", mode: str = "replace",
               columns: list[str] | list[list[str]] = COLUMNS, table: str | None = None, key: str = "Id",
               batch_rows: int = 3, **sink_kwargs) -> list[str]:
        load = ExportLoad(module=MODULE, run_id=run_id, write_mode=mode, key=key)
        return load_export_batches(self.sink(table, **sink_kwargs), load,
                                   export_pages(run_id, pages, columns, batch_rows=batch_rows))

    def query(self, sql: str) -> list[tuple]:
        connection = self.connect()
        try:
            return [tuple(row) for row in connection.execute(sql).fetchall()]
        finally:
            connection.close()

    def execute(self, *statements: str) -> None:
        connection = self.connect()
        try:
            for statement in statements:
                connection.execute(statement)
            connection.commit()
        finally:
            connection.close()

    def rows(self, columns: list[str], table: str | None = None) -> list[tuple]:
        """The table's rows without _loaded_at, in export order."""
        names = ", ".join(quoted(name) for name in [*columns, *EXPORT_META_COLUMNS])
        return self.query(f"SELECT {names} FROM {table or quoted(self.default_table)} ORDER BY _page, _row_number")

    def by_id(self, columns: list[str], table: str | None = None) -> list[tuple]:
        names = ", ".join(quoted(name) for name in [*columns, *EXPORT_META_COLUMNS])
        return self.query(f'SELECT {names} FROM {table or quoted(self.default_table)} ORDER BY "Id"')

    def columns(self, table: str | None = None) -> list[str]:
        """The table's column names in table order."""
        name = table or self.default_table
        if self.kind == "sqlite":
            return [row[1] for row in self.query(f"PRAGMA table_info({quoted(name)})")]
        return [row[0] for row in self.query(
            f"SELECT attname FROM pg_attribute WHERE attrelid = '{quoted(name)}'::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum")]

    def exists(self, table: str | None = None) -> bool:
        name = table or self.default_table
        if self.kind == "sqlite":
            return bool(self.query(f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{name}'"))
        return self.query(f"SELECT to_regclass('{quoted(name)}') IS NOT NULL") == [(True,)]


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture
def sqlite_database(tmp_path: Path, monkeypatch) -> Database:
    path = tmp_path / "exports.db"
    monkeypatch.setenv(f"AIRFLOW_CONN_{SQLITE_CONN_ID.upper()}", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return Database("sqlite", SQLITE_CONN_ID, "zoho_leads", lambda: sqlite3.connect(path))


@pytest.fixture
def postgres_database(postgres_server, monkeypatch, pg_table_name) -> Database:
    for name, value in postgres_server.airflow_conn_env(PG_CONN_ID).items():
        monkeypatch.setenv(name, value)
    return Database("postgres", PG_CONN_ID, pg_table_name, lambda: postgres_server.connect(autocommit=False))


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def database(request) -> Database:
    return request.getfixturevalue(f"{request.param}_database")


# --- replace ----------------------------------------------------------------------------------------------


def test_replace_loads_every_page_with_the_meta_columns(database):
    pages = [[lead(n) for n in range(1, 6)], [lead(n) for n in range(6, 13)], [lead(13)], []]
    written = database.export(pages, batch_rows=2)

    assert written == [database.sink().asset_uri]
    assert database.columns() == [*COLUMNS, *EXPORT_META_COLUMNS, "_loaded_at"]
    assert database.rows(COLUMNS) == expected("R1", pages, COLUMNS)
    # One load, one instant: every row carries the same _loaded_at.
    (loaded_at,) = database.query(f"SELECT DISTINCT _loaded_at FROM {quoted(database.default_table)}")
    if database.kind == "postgres":
        types = dict(database.query(
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_name = '{database.default_table}'"))
        assert types == {**dict.fromkeys(COLUMNS, "text"), "_job_id": "text", "_page": "bigint",
                         "_row_number": "bigint", "_loaded_at": "timestamp with time zone"}
        assert loaded_at[0] is not None
    else:
        assert loaded_at[0].endswith("+00:00")


def test_replace_twice_holds_exactly_the_last_export(database):
    database.export([[lead(n) for n in range(1, 9)], [lead(n) for n in range(9, 15)]], run_id="R1")
    last = [[lead(n, version=1) for n in (2, 3)], [lead(20)]]
    database.export(last, run_id="R2")
    assert database.rows(COLUMNS) == expected("R2", last, COLUMNS)


def test_empty_string_and_null_stay_distinct(database):
    awkward = [
        lead(1, Email="", Company=None),
        lead(2, Email=None, Company=""),
        lead(3, Last_Name='say "hi",\r\nbye', Email="\\N", Company="\\."),
        lead(4, Last_Name="Größe ☃ 日本語\ttab", Email="bell\x07", Company=","),
    ]
    database.export([awkward[:2], awkward[2:]])
    assert database.rows(COLUMNS) == expected("R1", [awkward[:2], awkward[2:]], COLUMNS)
    table = quoted(database.default_table)
    assert database.query(f'SELECT "Email" IS NULL, "Company" IS NULL FROM {table} ORDER BY "Id" LIMIT 2') == [
        (False, True), (True, False)]


def test_a_view_on_the_table_survives_replace(database):
    database.export([[lead(1), lead(2)]], run_id="R1")
    database.execute(f'CREATE VIEW "v_{database.default_table}" AS SELECT "Id", "Email" '
                     f"FROM {quoted(database.default_table)}")
    database.export([[lead(3)]], run_id="R2")
    assert database.query(f'SELECT "Id" FROM "v_{database.default_table}"') == [(lead(3)["Id"],)]


# --- merge ------------------------------------------------------------------------------------------------


def test_merge_is_idempotent_updates_inserts_and_keeps_the_others(database):
    first = [[lead(n) for n in range(1, 5)], [lead(n) for n in range(5, 8)]]
    database.export(first, run_id="R1", mode="merge")
    once = database.by_id(COLUMNS)
    database.export(first, run_id="R1", mode="merge")
    assert database.by_id(COLUMNS) == once == sorted(expected("R1", first, COLUMNS))

    # The next day: record 2 was edited, record 9 is new; the others are not in the export.
    second = [[lead(2, version=1), lead(9)]]
    database.export(second, run_id="R2", mode="merge")
    kept = [row for row in expected("R1", first, COLUMNS) if row[0] not in {lead(2)["Id"], lead(9)["Id"]}]
    assert database.by_id(COLUMNS) == sorted(kept + expected("R2", second, COLUMNS))
    database.export(second, run_id="R2", mode="merge")
    assert database.by_id(COLUMNS) == sorted(kept + expected("R2", second, COLUMNS))


def test_merge_creates_the_table_keyed_on_the_merge_key(database):
    database.export([[lead(1)]], mode="merge")
    if database.kind == "sqlite":
        key = [row[1] for row in database.query(f"PRAGMA table_info({quoted(database.default_table)})") if row[5]]
    else:
        key = [row[0] for row in database.query(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            f"AND a.attnum = ANY(i.indkey) WHERE i.indrelid = '{quoted(database.default_table)}'::regclass "
            "AND i.indisprimary")]
    assert key == ["Id"]


def test_merge_into_a_table_replace_created_has_no_key_and_still_merges(database):
    database.export([[lead(1), lead(2), lead(3)]], run_id="R1")
    second = [[lead(2, version=1), lead(4)]]
    for _ in range(2):
        database.export(second, run_id="R2", mode="merge")
    assert database.by_id(COLUMNS) == sorted(expected("R1", [[lead(1), lead(2), lead(3)]], COLUMNS)[0::2]
                                             + expected("R2", second, COLUMNS))


def test_merge_into_a_table_with_a_unique_index_nulls_fields_the_export_lacks(database):
    wide = [*COLUMNS, "Phone"]
    database.export([[lead(1, Phone="111"), lead(2, Phone="222")]], run_id="R1", columns=wide)
    database.execute(f'CREATE UNIQUE INDEX "u_{database.default_table}" ON {quoted(database.default_table)} ("Id")')
    # This export has no Phone: the row it updates holds the export's row (Phone null), the other keeps its own.
    database.export([[lead(2, version=1)]], run_id="R2", mode="merge")
    assert database.by_id(wide) == [
        (*lead(1).values(), "111", "R1", 1, 1),
        (*lead(2, version=1).values(), None, "R2", 1, 1),
    ]


def test_merge_keeps_the_last_of_a_key_that_appears_twice(database):
    pages = [[lead(1), lead(2)], [lead(2, version=1), lead(3)]]
    database.export(pages, mode="merge")
    assert database.by_id(COLUMNS) == [
        (*lead(1).values(), "R1", 1, 1),
        (*lead(2, version=1).values(), "R1-2", 2, 1),
        (*lead(3).values(), "R1-2", 2, 2),
    ]


@pytest.mark.parametrize("bad_key", [None, ""])
def test_merge_refuses_a_record_without_a_key(database, bad_key):
    database.export([[lead(1)]], mode="merge")
    before = database.by_id(COLUMNS)
    with pytest.raises(SinkError, match="merge key 'Id'") as caught:
        database.export([[lead(5)], [lead(6), lead(7, Id=bad_key)]], run_id="R2", mode="merge")
    assert (caught.value.file_name, caught.value.row_number) == (f"{MODULE}-00002.csv", 2)
    assert database.by_id(COLUMNS) == before


def test_merge_refuses_an_export_without_the_key_column(database):
    with pytest.raises(SinkError, match="merge key 'Record_Id' is not a column"):
        database.export([[lead(1)]], mode="merge", key="Record_Id")
    assert not database.exists()


# --- the table follows the module's fields -----------------------------------------------------------------


def test_a_field_added_between_runs_becomes_a_column(database):
    database.export([[lead(1), lead(2)]], run_id="R1", mode="merge")
    wide = [*COLUMNS, "Phone"]
    database.export([[lead(2, version=1, Phone=""), lead(3, Phone="333")]], run_id="R2", mode="merge", columns=wide)
    assert database.columns() == [*COLUMNS, *EXPORT_META_COLUMNS, "_loaded_at", "Phone"]
    assert database.by_id(wide) == [
        (*lead(1).values(), None, "R1", 1, 1),
        (*lead(2, version=1).values(), "", "R2", 1, 1),
        (*lead(3).values(), "333", "R2", 1, 2),
    ]


@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_a_field_that_appears_on_a_later_page_is_null_on_the_earlier_ones(database, mode):
    wide = [*COLUMNS, "Phone"]
    pages = [[lead(1), lead(2)], [lead(3, Phone="333")]]
    database.export(pages, mode=mode, columns=[COLUMNS, wide])
    assert database.rows(wide) == expected("R1", pages, wide)
    # A later export without the field keeps the column; its rows are null there.
    database.export([[lead(4)]], run_id="R2", mode=mode)
    assert "Phone" in database.columns()
    assert database.query(f'SELECT "Phone" FROM {quoted(database.default_table)} WHERE "Id" = \'{lead(4)["Id"]}\'') == [
        (None,)]


def test_a_table_created_beforehand_gets_the_missing_columns_and_keeps_its_rows_key(database):
    table = quoted(database.default_table)
    database.execute(f'CREATE TABLE {table} ("Id" TEXT PRIMARY KEY, "Last_Name" TEXT)',
                     f"INSERT INTO {table} VALUES ('{lead(8)['Id']}', 'loaded by hand')")
    database.export([[lead(1)], [lead(2)]], mode="merge")
    database.export([[lead(2, version=1)]], run_id="R2", mode="merge")
    assert database.by_id(COLUMNS) == [
        (*lead(1).values(), "R1", 1, 1),
        (*lead(2, version=1).values(), "R2", 1, 1),
        (lead(8)["Id"], "loaded by hand", None, None, None, None, None),
    ]
    # Loaded rows carry their load time; the row from before the column existed has none.
    assert database.query(f'SELECT "Id", _loaded_at IS NULL FROM {table} ORDER BY "Id"') == [
        (lead(1)["Id"], False), (lead(2)["Id"], False), (lead(8)["Id"], True)]
    database.export([[lead(3)]], run_id="R3")  # replace: COPY leaves _loaded_at to the column's default
    assert database.query(f"SELECT _loaded_at IS NULL FROM {table}") == [(False,)]


# --- failures ---------------------------------------------------------------------------------------------


def corrupt_on_page_3(run_id: str) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Pages 1 and 2, then page 3 (with a new field) whose zip turns out corrupt; page 4 never comes."""
    yield from export_pages(run_id, [[lead(n) for n in range(1, 5)], [lead(n, version=9) for n in range(5, 9)]])
    yield f"{MODULE}-00003.csv", page_batch(f"{run_id}-3", 3, [lead(9, Phone="1")], [*COLUMNS, "Phone"])
    raise CorruptArchiveError("CRC32 mismatch", job_id=f"{run_id}-3", file_name=f"{MODULE}-00003.csv")


@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_a_failure_on_page_3_of_4_leaves_the_table_as_it_was(database, mode):
    database.export([[lead(n) for n in range(3, 7)]], run_id="R1", mode=mode)
    before, columns_before = database.by_id(COLUMNS), database.columns()

    with pytest.raises(CorruptArchiveError):
        load_export_batches(database.sink(), ExportLoad(MODULE, "R2", write_mode=mode), corrupt_on_page_3("R2"))
    assert database.by_id(COLUMNS) == before
    assert database.columns() == columns_before  # the ALTER TABLE for page 3's new field rolled back too


@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_a_failure_on_page_3_of_4_leaves_an_absent_table_absent(database, mode):
    with pytest.raises(CorruptArchiveError):
        load_export_batches(database.sink(), ExportLoad(MODULE, "R1", write_mode=mode), corrupt_on_page_3("R1"))
    assert not database.exists()


def test_a_database_error_is_a_sink_error_that_names_table_and_run_and_changes_nothing(database):
    database.export([[lead(1), lead(2)]], run_id="R1")
    before = database.rows(COLUMNS)
    table = quoted(database.default_table)
    if database.kind == "sqlite":  # SQLite cannot add a CHECK constraint to a table
        database.execute(f"CREATE TRIGGER no_x BEFORE INSERT ON {table} WHEN NEW.\"Company\" = 'X' "
                         "BEGIN SELECT RAISE(ABORT, 'no company X'); END")
    else:
        database.execute(f"ALTER TABLE {table} ADD CONSTRAINT no_x CHECK (\"Company\" <> 'X')")
    with pytest.raises(SinkError) as caught:
        database.export([[lead(3)], [lead(4, Company="X")]], run_id="R2")
    assert database.default_table in str(caught.value) and caught.value.job_id == "R2"
    assert database.rows(COLUMNS) == before


def test_a_batch_without_the_export_layout_is_refused(database):
    batch = page_batch("R1", 1, [lead(1)], COLUMNS).drop_columns(["_page"])
    with pytest.raises(SinkError, match="not a Bulk Read export page"):
        load_export_batches(database.sink(), ExportLoad(MODULE, "R1"), [(f"{MODULE}-00001.csv", batch)])
    assert not database.exists()


# --- names ------------------------------------------------------------------------------------------------


def test_odd_table_and_column_names_are_quoted(database):
    odd_columns = ["Id", 'Größe "q"', "a,b", "select", "Email; DROP TABLE x", "Name\nwith newline", "Rate %s %"]
    records = [{name: f"{name}-{n}" for name in odd_columns} | {"Id": str(n)} for n in range(3)]
    if database.kind == "postgres":
        schema = f"odd schema {uuid.uuid4().hex[:6]}"
        database.execute(f"CREATE SCHEMA {quoted(schema)}")
        table_sql = f'{quoted(schema)}."Odd ""Name"" x.y"'
    else:
        table_sql = 'main."Odd ""Name"" x.y"'
    for mode in ("replace", "merge", "merge"):
        database.export([records[:2], records[2:]], columns=odd_columns, table=table_sql, mode=mode)
    assert database.rows(odd_columns, table=table_sql) == expected("R1", [records[:2], records[2:]], odd_columns)


# --- a real export: sandbox pages through the core ----------------------------------------------------------


def test_sandbox_export_pages_through_read_export_page_merge_twice(database, zoho_sandbox):
    pages = sandbox_pages(zoho_sandbox, records=2500, per_page=1000, seed=3)
    run_id = pages[0][0]

    def batches() -> Iterator[tuple[str, pa.RecordBatch]]:
        for job_id, page, archive in pages:  # as the operator names them: one file per page
            for _, batch in read_export_page(chunked(archive, 1 << 16), job_id=job_id, page=page, block_size=64 << 10):
                yield f"{MODULE}-{page:05d}.csv", batch

    for _ in range(2):
        load_export_batches(database.sink(batch_rows=700), ExportLoad(MODULE, run_id, write_mode="merge"), batches())
    records = expected_export_rows(zoho_sandbox, records=2500)
    fields = list(records[0])
    assert len(pages) == 3 and any("" in record.values() for record in records)  # empty cells included
    assert database.by_id(fields) == sorted(
        (*record.values(), pages[index // 1000][0], index // 1000 + 1, index % 1000 + 1)
        for index, record in enumerate(records))


# --- memory: no pandas -------------------------------------------------------------------------------------


PANDAS_PROBE = textwrap.dedent("""
    import json, sys
    import pyarrow as pa
    from airflow_provider_zohobulk.arrow_values import int_array, string_array
    from airflow_provider_zohobulk.sinks import ExportLoad, SqlSink, load_export_batches

    def page(number, ids):
        columns = [string_array(ids), string_array(["", None][: len(ids)]), string_array(["J%d" % number] * len(ids)),
                   int_array([number] * len(ids)), int_array(range(1, len(ids) + 1))]
        return "Leads-%05d.csv" % number, pa.RecordBatch.from_arrays(
            columns, names=["Id", "Email", "_job_id", "_page", "_row_number"])

    for mode in ("replace", "merge"):
        load_export_batches(SqlSink(sys.argv[1], sys.argv[2]), ExportLoad("Leads", "J1", write_mode=mode),
                            [page(1, ["1", "2"]), page(2, ["3"])])
    print(json.dumps({"pandas_imported": "pandas" in sys.modules}))
""")


def test_an_export_load_never_imports_pandas(database):
    """pyarrow imports pandas (~50 MB) at a process's first conversion of a Python object: the merge key
    check and the COPY encoding must not make one (run in a fresh interpreter: this one has pandas)."""
    pytest.importorskip("pandas")
    result = subprocess.run([sys.executable, "-c", PANDAS_PROBE, database.conn_id, database.default_table],
                            env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"pandas_imported": False}
    assert database.query(f'SELECT "Id", "Email" FROM {quoted(database.default_table)} ORDER BY "Id"') == [
        ("1", ""), ("2", None), ("3", "")]


# --- SQLite only ------------------------------------------------------------------------------------------


def test_sqlite_export_stages_without_locking_the_database_file_until_commit(sqlite_database, tmp_path):
    sink = sqlite_database.sink()
    sink.open_export(ExportLoad(MODULE, "R1"))
    try:
        for file_name, batch in export_pages("R1", [[lead(1), lead(2)], [lead(3)]]):
            sink.write(file_name, batch)
        other = sqlite3.connect(tmp_path / "exports.db", timeout=0)  # fails at once if the file were locked
        other.execute("CREATE TABLE other_writer (x)")
        other.commit()
        other.close()
    except BaseException:
        sink.abort()
        raise
    sink.commit()
    assert sqlite_database.rows(COLUMNS) == expected("R1", [[lead(1), lead(2)], [lead(3)]], COLUMNS)


# --- PostgreSQL only --------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_exports_into_one_table_take_turns_so_the_later_replace_wins(postgres_database):
    database = postgres_database
    database.export([[lead(1)]], run_id="R0")
    first_started, second_may_commit = threading.Event(), threading.Event()
    outcome: list[Any] = []

    def first_export() -> Iterator[tuple[str, pa.RecordBatch]]:
        yield from export_pages("R1", [[lead(n) for n in range(10, 14)]])
        first_started.set()
        second_may_commit.wait(timeout=30)

    def run_first() -> None:
        try:
            outcome.append(load_export_batches(database.sink(), ExportLoad(MODULE, "R1"), first_export()))
        except BaseException as exc:  # reported by the assertion below
            outcome.append(exc)

    thread = threading.Thread(target=run_first)
    thread.start()
    assert first_started.wait(timeout=30)
    # The second export opens while the first holds its transaction: it waits, then replaces it whole.
    second = threading.Thread(target=lambda: outcome.append(database.export([[lead(20), lead(21)]], run_id="R2")))
    second.start()
    waiting: list[tuple] = []
    for _ in range(600):  # until the second export's session waits for a lock the first one holds
        waiting = database.query("SELECT wait_event FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        if waiting:
            break
        time.sleep(0.05)
    second_may_commit.set()
    thread.join(timeout=60)
    second.join(timeout=60)
    assert waiting, "the second export never waited for the first"
    assert len(outcome) == 2 and not any(isinstance(item, BaseException) for item in outcome), outcome
    assert database.rows(COLUMNS) == expected("R2", [[lead(20), lead(21)]], COLUMNS)


@pytest.mark.postgres
def test_postgres_failure_message_never_holds_the_password(postgres_database, postgres_server):
    database = postgres_database
    database.export([[lead(1)]])
    database.execute(f"ALTER TABLE {quoted(database.default_table)} ADD CONSTRAINT pw CHECK "
                     f"(\"Email\" <> '{postgres_server.password}')")
    with pytest.raises(SinkError) as caught:
        database.export([[lead(2, Email=postgres_server.password)]], run_id="R2")
    assert postgres_server.password not in str(caught.value)
    assert database.rows(COLUMNS) == expected("R1", [[lead(1)]], COLUMNS)


@pytest.mark.postgres
def test_postgres_merge_updates_in_place_rows_other_tables_refer_to(postgres_database):
    database = postgres_database
    database.export([[lead(1), lead(2)]], mode="merge")  # creates the table keyed on "Id"
    child = f"{database.default_table}_notes"
    database.execute(f'CREATE TABLE "{child}" (lead_id text REFERENCES {quoted(database.default_table)} ("Id"))',
                     f"INSERT INTO \"{child}\" VALUES ('{lead(1)['Id']}')")
    # ON CONFLICT updates the referenced row; deleting and re-inserting it would break the reference.
    database.export([[lead(1, version=1), lead(3)]], run_id="R2", mode="merge")
    assert database.by_id(COLUMNS) == [
        (*lead(1, version=1).values(), "R2", 1, 1),
        (*lead(2).values(), "R1", 1, 2),
        (*lead(3).values(), "R2", 1, 2),
    ]
