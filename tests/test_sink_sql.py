"""SqlSink's generic DB-API path (SQLite through Airflow's sqlite provider), table names, JSON encoding."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_provider_zohobulk.bulk_result import source_type
from airflow_provider_zohobulk.errors import CorruptArchiveError, SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import load_batches
from airflow_provider_zohobulk.sinks.formats import errors_to_json, source_to_json
from airflow_provider_zohobulk.sinks.identifiers import quote_ident, quote_table_name, split_table_name
from airflow_provider_zohobulk.sinks.sql import SqlSink
from tests.helpers import canonical_batch, member_rows, sample_rows

CONN_ID = "zoho_sqlite_results"
TABLE = "zoho_bulk_write_results"


@pytest.fixture
def sqlite_db(tmp_path, monkeypatch) -> Path:
    """An SQLite file behind the Airflow connection ``CONN_ID`` (conn_type sqlite, host = path)."""
    path = tmp_path / "results.db"
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


def read_rows(path: Path, table: str = TABLE) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            f"SELECT job_id, file_name, row_number, record_id, status, errors, errors_raw, source FROM {table} "
            "ORDER BY job_id, file_name, row_number"
        ).fetchall()
    return [(*row[:5], json.loads(row[5]), row[6], json.loads(row[7])) for row in rows]


def expected_rows(job_id: str, file_name: str, rows: list[dict]) -> list[tuple]:
    return [
        (job_id, file_name, i + 1, r.get("record_id"), r.get("status", "ADDED"), r.get("errors", []),
         r.get("errors_raw"), r.get("source") or {})
        for i, r in enumerate(rows)
    ]


def load(job_id: str, files: dict[str, list[dict]], table: str = TABLE, **kwargs) -> list[str]:
    batches = [(name, canonical_batch(job_id, name, rows)) for name, rows in files.items()]
    return load_batches(SqlSink(CONN_ID, table, **kwargs), job_id, batches)


# --- the generic DB-API path ------------------------------------------------------------------------------


def test_sqlite_round_trip(sqlite_db):
    # One CSV: every row has all five mapped columns, the first seven rows null in the last two.
    rows = member_rows([*sample_rows(7),
                        {"record_id": "", "source": {"Größe": "a\x01b", "Empty": ""}, "errors_raw": ""}])
    written = load("J1", {"a.csv": rows, "b.csv": sample_rows(2)}, batch_rows=3)
    assert written == [f"sqlite://{CONN_ID}/{TABLE}"]
    assert read_rows(sqlite_db) == expected_rows("J1", "a.csv", rows) + expected_rows("J1", "b.csv", sample_rows(2))
    with sqlite3.connect(sqlite_db) as connection:
        (loaded_at,) = connection.execute(f"SELECT DISTINCT loaded_at FROM {TABLE}").fetchone()
        key = [row[1] for row in connection.execute(f"PRAGMA table_info({TABLE})") if row[5]]
    assert loaded_at.endswith("+00:00")
    assert key == ["job_id", "file_name", "row_number"]


def test_sqlite_rerun_replaces_the_jobs_rows(sqlite_db):
    load("J1", {"a.csv": sample_rows(6)})
    load("J2", {"a.csv": sample_rows(2)})
    load("J1", {"a.csv": sample_rows(6)})
    load("J1", {"c.csv": sample_rows(3, seed=1)})
    rows = read_rows(sqlite_db)
    assert [r for r in rows if r[0] == "J1"] == expected_rows("J1", "c.csv", sample_rows(3, seed=1))
    assert len([r for r in rows if r[0] == "J2"]) == 2


def test_sqlite_failure_at_the_end_rolls_back(sqlite_db):
    load("J1", {"a.csv": sample_rows(4)})
    before = read_rows(sqlite_db)

    def batches_then_corrupt():
        yield "a.csv", canonical_batch("J1", "a.csv", sample_rows(30, seed=2))
        raise CorruptArchiveError("CRC32 mismatch", job_id="J1", file_name="a.csv")

    with pytest.raises(CorruptArchiveError):
        load_batches(SqlSink(CONN_ID, TABLE), "J1", batches_then_corrupt())
    assert read_rows(sqlite_db) == before


def test_sqlite_database_error_is_a_sink_error_and_rolls_back(sqlite_db):
    load("J1", {"a.csv": sample_rows(4)})
    with sqlite3.connect(sqlite_db) as connection:  # the table's owner limits it; SQLite cannot ADD CHECK
        connection.execute(f"CREATE TRIGGER few_rows BEFORE INSERT ON {TABLE} WHEN NEW.row_number > 4 "
                           "BEGIN SELECT RAISE(ABORT, 'at most 4 rows per file'); END")
    before = read_rows(sqlite_db)
    with pytest.raises(SinkError, match="at most 4 rows per file") as caught:
        load_batches(SqlSink(CONN_ID, TABLE), "J1", [("a.csv", canonical_batch("J1", "a.csv", sample_rows(6)))])
    assert TABLE in str(caught.value) and "job J1" in str(caught.value) and "'a.csv'" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert read_rows(sqlite_db) == before


def test_sqlite_quoted_names_and_injection(sqlite_db):
    hostile = "results; DROP TABLE canary"
    with sqlite3.connect(sqlite_db) as connection:
        connection.execute("CREATE TABLE canary (x INTEGER)")
    with pytest.raises(SinkConfigurationError, match="looks like SQL"):
        SqlSink(CONN_ID, hostile)
    written = load("J1", {"a.csv": sample_rows(2)}, table=f'"{hostile}"')  # quoted: taken as a literal name
    assert written == [f"sqlite://{CONN_ID}/results%3B%20DROP%20TABLE%20canary"]
    assert len(read_rows(sqlite_db, '"results; DROP TABLE canary"')) == 2
    load("J1", {"a.csv": sample_rows(1)}, table='"Mixed ""Case"" ☃"')
    assert len(read_rows(sqlite_db, '"Mixed ""Case"" ☃"')) == 1
    with sqlite3.connect(sqlite_db) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"canary", hostile, 'Mixed "Case" ☃'}


def test_batch_of_another_job_is_refused(sqlite_db):
    sink = SqlSink(CONN_ID, TABLE)
    sink.open("J1")
    with pytest.raises(SinkError, match="another job"):
        sink.write("a.csv", canonical_batch("J2", "a.csv", sample_rows(1)))
    sink.abort()
    assert not sqlite_db.exists() or read_rows(sqlite_db) == []


def test_unknown_connection_is_a_configuration_error(monkeypatch):
    with pytest.raises(SinkConfigurationError, match="no_such_conn"):
        SqlSink("no_such_conn").open("J1")


def test_non_sql_connection_is_refused(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_NOT_SQL", json.dumps({"conn_type": "http", "host": "example.invalid"}))
    with pytest.raises(SinkConfigurationError, match="not_sql"):
        SqlSink("not_sql").open("J1")


def test_constructor_does_no_io_and_declares_templates():
    sink = SqlSink("connection_that_does_not_exist", "{{ params.schema }}.results")
    assert SqlSink.template_fields == ("conn_id", "table")
    assert sink.table == "{{ params.schema }}.results"
    with pytest.raises(SinkConfigurationError):
        SqlSink("c", batch_rows=0)
    with pytest.raises(SinkConfigurationError, match="more than two"):
        SqlSink("c", "a.b.c")  # a literal name is refused at parse time


def test_importing_the_sink_does_not_import_airflow():
    code = ("import sys; import airflow_provider_zohobulk.sinks.sql; "
            "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


# --- table names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "parts"), [
    ("results", (None, "results")),
    ("stage.results", ("stage", "results")),
    ('"My Schema"."Résultats 2026"', ("My Schema", "Résultats 2026")),
    ('"a.b".c', ("a.b", "c")),
    ('"say ""hi"""', (None, 'say "hi"')),
    ("MixedCase", (None, "MixedCase")),
    ('"results; DROP TABLE x"', (None, "results; DROP TABLE x")),  # quoted: a literal, harmless name
    ("Zoho Results", (None, "Zoho Results")),
])
def test_split_table_name(name, parts):
    assert split_table_name(name) == parts


@pytest.mark.parametrize(("name", "problem"), [
    ("", "non-empty"),
    ("a.b.c", "more than two"),
    ('"unclosed', "unbalanced"),
    ('res"ults', "unbalanced"),
    ('x"; DROP TABLE y; --', "unbalanced"),
    ('"a"b', "after a closing quote"),
    ("a..b", "empty part"),
    (".a", "empty part"),
    ("a.", "empty part"),
    ("nul\x00byte", "control character"),
    ("line\nbreak", "control character"),
    ("results; DROP TABLE x", "looks like SQL"),
    ("results -- comment", "looks like SQL"),
    ("results/* c */", "looks like SQL"),
    ("o'brien", "looks like SQL"),
    ('"stage".x;y', "looks like SQL"),
])
def test_split_table_name_refuses(name, problem):
    with pytest.raises(SinkConfigurationError, match=problem):
        split_table_name(name)


def test_quoting_per_dialect():
    assert quote_table_name('"My ""S"""."t"', "postgres") == '"My ""S"""."t"'
    assert quote_ident("we`ird", "mysql") == "`we``ird`"
    assert quote_ident("plain", "duckdb") == '"plain"'
    with pytest.raises(SinkConfigurationError, match="63 bytes"):
        quote_ident("é" * 32, "postgres")
    assert quote_ident("é" * 32, "sqlite") == '"' + "é" * 32 + '"'


# --- nested columns as JSON -----------------------------------------------------------------------------


def test_json_encoding_matches_the_values_on_slices_and_nulls():
    rows = [*sample_rows(8), {"source": {"k\x1fey": 'v\\"\t\r\n\x00', "": None},
                              "errors": [{"code": None, "columns": ['x"y', None]}, {"code": "C", "columns": None}]}]
    batch = canonical_batch("J", "a.csv", rows)
    for piece in (batch, batch.slice(3, 4), batch.slice(8)):
        errors = errors_to_json(piece.column("errors")).to_pylist()
        sources = source_to_json(piece.column("source")).to_pylist()
        assert [json.loads(text) for text in errors] == piece.column("errors").to_pylist()
        # Objects with the struct's keys in header order (dicts from json.loads keep the text's order).
        assert [list(json.loads(text).items()) for text in sources] == [
            list(source.items()) for source in piece.column("source").to_pylist()]
    nullable = pa.array([[{"code": "A", "columns": []}], None, []], batch.schema.field("errors").type)
    assert errors_to_json(nullable.slice(1)).to_pylist() == [None, "[]"]


def test_source_json_is_exact_for_null_rows_awkward_keys_and_no_mapped_columns():
    fields = list(source_type(("A", 'q"uote')))
    source = pa.StructArray.from_arrays([pa.array(["1", None, "3"]), pa.array([None, "x", "é\n"])], fields=fields,
                                        mask=pa.array([False, True, False]))
    assert source_to_json(source).to_pylist() == ['{"A":"1","q\\"uote":null}', None, '{"A":"3","q\\"uote":"é\\n"}']
    assert source_to_json(source.slice(1)).to_pylist() == [None, '{"A":"3","q\\"uote":"é\\n"}']
    no_columns = canonical_batch("J", "a.csv", [{}, {}]).column("source")
    assert no_columns.type == pa.struct([]) and source_to_json(no_columns).to_pylist() == ["{}", "{}"]
