"""Row sources for Bulk Write submissions: files (local, S3 via moto), PostgreSQL, SQLite, DuckDB."""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import json
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.errors import SourceConfigurationError, SourceError
from airflow_provider_zohobulk.sources import DuckDBSource, ObjectStorageSource, RowSource, SqlSource

PG_CONN = "zoho_pg_source"
SQLITE_CONN = "zoho_sqlite_source"
S3_CONN = "zoho_lake_source"


def collect(source: RowSource) -> list[pa.RecordBatch]:
    batches = list(source.batches())
    assert all(batch.num_rows > 0 for batch in batches), "no batch may be empty"
    assert len({batch.schema for batch in batches}) <= 1, "one schema for every batch"
    return batches


def rows_of(source: RowSource) -> list[dict]:
    return [row for batch in collect(source) for row in batch.to_pylist()]


# --- CSV ----------------------------------------------------------------------------------------------

AWKWARD_CSV = (
    "\ufeffId,Last_Name,Zip,Note,Empty\r\n"
    '007,"Smith, Jr.",01234,"line one\r\nline two",\r\n'
    '0012345678901234567,Müller,00000,"say ""hi""",""\r\n'
    "\r\n"
    '3,日本,9,,x\r\n'
)
AWKWARD_ROWS = [
    {"Id": "007", "Last_Name": "Smith, Jr.", "Zip": "01234", "Note": "line one\r\nline two", "Empty": ""},
    {"Id": "0012345678901234567", "Last_Name": "Müller", "Zip": "00000", "Note": 'say "hi"', "Empty": ""},
    {"Id": "3", "Last_Name": "日本", "Zip": "9", "Note": "", "Empty": "x"},
]


def test_csv_values_are_text_exactly_as_written(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_bytes(AWKWARD_CSV.encode())
    batches = collect(ObjectStorageSource(str(path)))
    assert batches[0].schema.names == ["Id", "Last_Name", "Zip", "Note", "Empty"]  # BOM dropped
    assert all(pa.types.is_string(field.type) for field in batches[0].schema)
    assert [row for batch in batches for row in batch.to_pylist()] == AWKWARD_ROWS


@pytest.mark.parametrize("suffix, compress", [(".csv.gz", gzip.compress), (".csv.bz2", bz2.compress)])
def test_compressed_csv(tmp_path: Path, suffix: str, compress) -> None:
    path = tmp_path / f"leads{suffix}"
    path.write_bytes(compress(AWKWARD_CSV.encode()))
    assert rows_of(ObjectStorageSource(f"file://{path}")) == AWKWARD_ROWS


def test_csv_with_another_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "leads.txt"
    path.write_bytes(AWKWARD_CSV.replace(",", ";").replace('"Smith; Jr."', '"Smith; Jr.\nII"').encode())
    rows = rows_of(ObjectStorageSource(str(path), format="csv", delimiter=";"))
    expected = [dict(row) for row in AWKWARD_ROWS]
    expected[0]["Last_Name"] = "Smith; Jr.\nII"
    assert rows == expected


def test_csv_duplicate_and_empty_header_names_are_made_unique(tmp_path: Path) -> None:
    path = tmp_path / "dups.csv"
    path.write_text("Email,Email,\na,b,c\n")
    assert collect(ObjectStorageSource(str(path)))[0].schema.names == ["Email", "Email_2", "column_3"]


@pytest.mark.parametrize("content", [b"", b"\r\n\n", b"\xef\xbb\xbf", b"Id,Name\r\n", b"Id,Name"])
def test_csv_without_rows_yields_no_batches(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    assert collect(ObjectStorageSource(str(path))) == []


def test_ragged_csv_is_a_source_error_naming_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(SourceError) as caught:
        collect(ObjectStorageSource(str(path)))
    assert "ragged row" in str(caught.value)
    assert str(path) in str(caught.value) and caught.value.row_number == 2


def test_unclosed_quote_with_another_delimiter_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "open.csv"
    path.write_text('a;b\n1;"never closed\n')
    with pytest.raises(SourceError, match="unclosed quote"):
        collect(ObjectStorageSource(str(path), delimiter=";"))


def test_a_truncated_gzip_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    whole = gzip.compress(("a,b\n" + "".join(f"{i},{i * 7919 % 10007}\n" for i in range(100_000))).encode())
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SourceError, match="reading the input failed") as caught:
        collect(ObjectStorageSource(str(path)))
    assert str(path) in str(caught.value)


def test_a_large_csv_streams_in_many_batches_with_bounded_arrow_memory(tmp_path: Path) -> None:
    """40 MB of CSV, batch_rows=1000: 200 batches, and Arrow never holds more than a few MB of it."""
    path = tmp_path / "big.csv.gz"
    row_count = 200_000
    filler = "x" * 180
    with gzip.open(path, "wt", compresslevel=1) as out:
        out.write("Id,Zip,Note\n")
        for i in range(row_count):
            out.write(f"{i:08d},0{i % 1000:04d},{filler}\n")
    source = ObjectStorageSource(str(path), batch_rows=1000)
    baseline = pa.total_allocated_bytes()
    peak = count = rows = 0
    last_id = None
    for batch in source.batches():
        count += 1
        rows += batch.num_rows
        assert batch.num_rows <= 1000
        last_id = batch.column("Id")[-1].as_py()
        peak = max(peak, pa.total_allocated_bytes() - baseline)
        del batch
    assert rows == row_count and count == 200 and last_id == f"{row_count - 1:08d}"
    assert peak < 8 << 20, f"Arrow held {peak} bytes at once for a 40 MB input"


# --- Parquet ------------------------------------------------------------------------------------------


def test_parquet_keeps_its_types_and_batches(tmp_path: Path) -> None:
    path = tmp_path / "leads.parquet"
    table = pa.table({"Id": pa.array(range(2500), pa.int64()), "Name": [f"n{i}" for i in range(2500)],
                      "When": pa.array([dt.date(2024, 1, 1)] * 2500)})
    pq.write_table(table, path, row_group_size=1000)
    batches = collect(ObjectStorageSource(str(path), batch_rows=600))
    assert all(batch.num_rows <= 600 for batch in batches) and len(batches) >= 5
    assert pa.Table.from_batches(batches).equals(table)


def test_a_parquet_without_rows_yields_no_batches(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"Id": pa.array([], pa.int64())}), path)
    assert collect(ObjectStorageSource(str(path))) == []


def test_a_file_that_is_not_parquet_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("Id,Name\n1,a\n")
    with pytest.raises(SourceError, match="not a readable Parquet file") as caught:
        collect(ObjectStorageSource(str(path)))
    assert str(path) in str(caught.value)


# --- JSON Lines ---------------------------------------------------------------------------------------


def test_jsonl_types_blank_lines_and_nesting(tmp_path: Path) -> None:
    path = tmp_path / "leads.ndjson"
    path.write_text('{"Id": "007", "Score": 1, "Tags": ["a"], "Owner": {"id": 5}}\n\n'
                    '{"Id": "8", "Score": 2.5, "Tags": [], "Owner": null}\n')
    assert rows_of(ObjectStorageSource(str(path))) == [
        {"Id": "007", "Score": 1.0, "Tags": ["a"], "Owner": {"id": 5}},
        {"Id": "8", "Score": 2.5, "Tags": [], "Owner": None},
    ]


def test_jsonl_types_drifting_between_blocks_keep_one_schema(tmp_path: Path) -> None:
    """Block 1 sees Phone only null and Score as integers; later blocks bring numbers and floats."""
    lines = [{"Id": i, "Phone": None, "Score": i} for i in range(5)]
    lines += [{"Id": 5, "Phone": 5551234, "Score": 2.0}, {"Id": 6, "Score": None}]
    path = tmp_path / "drift.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode()))
    batches = collect(ObjectStorageSource(str(path), batch_rows=5))
    assert len(batches) == 2
    assert batches[0].schema == pa.schema([("Id", pa.int64()), ("Phone", pa.string()), ("Score", pa.int64())])
    assert batches[1].to_pylist() == [{"Id": 5, "Phone": "5551234", "Score": 2},
                                      {"Id": 6, "Phone": None, "Score": None}]


def test_jsonl_value_that_cannot_be_cast_names_column_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"Score": 1}\n{"Score": 2}\n{"Score": "high"}\n')
    with pytest.raises(SourceError, match="column 'Score'") as caught:
        collect(ObjectStorageSource(str(path), batch_rows=2))
    assert "rows 3..3" in str(caught.value)


def test_jsonl_key_appearing_late_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    path.write_text('{"Id": 1}\n{"Id": 2, "Email": "a@b"}\n')
    with pytest.raises(SourceError, match=r"column 'Email' first appears in rows 2\.\.2"):
        collect(ObjectStorageSource(str(path), batch_rows=1))


def test_invalid_json_line_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"Id": 1}\n{"Id": \n')
    with pytest.raises(SourceError, match="not valid JSON Lines"):
        collect(ObjectStorageSource(str(path)))


def test_a_large_jsonl_streams_in_many_batches(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with open(path, "w") as out:
        for i in range(50_000):
            out.write(json.dumps({"Id": i, "Name": f"name {i}", "Note": "y" * 100}) + "\n")
    batches = collect(ObjectStorageSource(str(path), batch_rows=2000))
    assert len(batches) == 25 and sum(b.num_rows for b in batches) == 50_000
    assert batches[-1].column("Id")[-1].as_py() == 49_999


def test_an_empty_jsonl_yields_no_batches(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert collect(ObjectStorageSource(str(path))) == []


# --- object storage configuration and errors ---------------------------------------------------------


def test_a_missing_local_file_is_a_source_error_naming_it(tmp_path: Path) -> None:
    for name in ("nope.csv", "nope.parquet", "nope.jsonl"):
        missing = tmp_path / name
        with pytest.raises(SourceError, match="does not exist") as caught:
            collect(ObjectStorageSource(str(missing)))
        assert str(missing) in str(caught.value)
        assert not isinstance(caught.value, SourceConfigurationError)


@pytest.mark.parametrize("uri, kwargs, message", [
    ("/data/leads.xml", {}, "cannot tell the format"),
    ("/data/leads.csv", {"format": "xml"}, "unknown input format 'xml'"),
    ("/data/leads.csv", {"format": "parquet"}, "but format='parquet' was given"),
    ("/data/leads.parquet.gz", {}, "compressed Parquet"),
    ("ftp://host/leads.csv", {}, "unsupported scheme 'ftp'"),
    ("/data/leads.csv", {"batch_rows": 0}, "batch_rows"),
    ("/data/leads.csv", {"delimiter": ";;"}, "delimiter"),
    ("", {}, "non-empty string"),
])
def test_bad_settings_are_refused_at_parse_time(uri: str, kwargs: dict, message: str) -> None:
    with pytest.raises(SourceConfigurationError, match=message):
        ObjectStorageSource(uri, **kwargs)


def test_templated_uri_is_checked_when_read(tmp_path: Path) -> None:
    source = ObjectStorageSource("{{ params.path }}", format="csv")
    assert source.parse_time_asset_uri() is None
    source.uri = str(tmp_path / "x.weird")  # as Airflow renders it
    path = Path(source.uri)
    path.write_text("a\n1\n")
    assert rows_of(source) == [{"a": "1"}]
    source.uri = str(tmp_path / "x.csv")
    source.format = "jsonl"
    with pytest.raises(SourceConfigurationError, match="format='jsonl'"):
        collect(source)


def test_conn_id_for_a_local_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("a\n1\n")
    with pytest.raises(SourceConfigurationError, match="needs none"):
        collect(ObjectStorageSource(str(path), conn_id="aws_default"))


def test_repr_describe_and_asset_hide_secrets(tmp_path: Path) -> None:
    source = ObjectStorageSource("s3://AKIA:verysecret@bucket/in/leads.csv", conn_id="lake",
                                 transport_params={"client": "secret-client"})
    for text in (repr(source), source.describe(), source.parse_time_asset_uri()):
        assert "verysecret" not in text and "secret-client" not in text
    assert repr(source) == "ObjectStorageSource(uri='s3://***@bucket/in/leads.csv', conn_id='lake', format=None)"
    assert source.template_fields == ("uri", "conn_id")
    local = ObjectStorageSource(str(tmp_path / "a b.csv"))
    assert local.parse_time_asset_uri() == f"file://{tmp_path}/a%20b.csv"


def test_importing_the_sources_imports_no_airflow_nor_clients() -> None:
    code = ("import sys\n"
            "import airflow_provider_zohobulk.sources.object_storage, airflow_provider_zohobulk.sources.sql\n"
            "from airflow_provider_zohobulk.sources import ObjectStorageSource, SqlSource, DuckDBSource\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('airflow', 'smart_open', 'psycopg', 'duckdb')]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- S3 (moto) --------------------------------------------------------------------------------------------


@pytest.fixture
def s3_conn(moto_s3, monkeypatch):
    for name, value in moto_s3.airflow_conn_env(S3_CONN).items():
        monkeypatch.setenv(name, value)
    return moto_s3


@pytest.mark.s3
def test_csv_gz_and_parquet_from_s3_through_an_airflow_connection(s3_conn) -> None:
    bucket = s3_conn.new_bucket("src")
    client = s3_conn.client()
    client.put_object(Bucket=bucket, Key="in/leads.csv.gz", Body=gzip.compress(AWKWARD_CSV.encode()))
    assert rows_of(ObjectStorageSource(f"s3://{bucket}/in/leads.csv.gz", conn_id=S3_CONN)) == AWKWARD_ROWS

    table = pa.table({"Id": list(range(3000)), "Name": [f"n{i}" for i in range(3000)]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=1000)
    client.put_object(Bucket=bucket, Key="in/leads.parquet", Body=sink.getvalue().to_pybytes())
    batches = collect(ObjectStorageSource(f"s3://{bucket}/in/leads.parquet", conn_id=S3_CONN, batch_rows=1000))
    assert len(batches) == 3 and pa.Table.from_batches(batches).equals(table)

    client.put_object(Bucket=bucket, Key="in/leads.jsonl", Body=b'{"Id": "01"}\n{"Id": "02"}\n')
    assert rows_of(ObjectStorageSource(f"s3://{bucket}/in/leads.jsonl",
                                       transport_params={"client": client})) == [{"Id": "01"}, {"Id": "02"}]


@pytest.mark.s3
def test_a_missing_s3_object_is_a_source_error_naming_it(s3_conn) -> None:
    bucket = s3_conn.new_bucket("src")
    for key in ("missing.csv", "missing.parquet"):
        with pytest.raises(SourceError, match="does not exist") as caught:
            collect(ObjectStorageSource(f"s3://{bucket}/{key}", conn_id=S3_CONN))
        assert f"s3://{bucket}/{key}" in str(caught.value)


def test_an_unknown_connection_is_a_configuration_error(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_LAKE", raising=False)
    with pytest.raises(SourceConfigurationError, match="no_such_lake"):
        collect(ObjectStorageSource("s3://bucket/x.csv", conn_id="no_such_lake"))


# --- PostgreSQL -----------------------------------------------------------------------------------------


@pytest.fixture
def pg_conn(postgres_server, monkeypatch):
    for name, value in postgres_server.airflow_conn_env(PG_CONN).items():
        monkeypatch.setenv(name, value)
    return postgres_server


def _source_backends(server) -> list[str]:
    """The queries of other sessions that are running a source's named cursor."""
    with server.connect() as db:
        return [row[0] for row in db.execute(
            "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE '%zohobulk_source_%'")]


def _wait_for_no_source_backend(server, attempts: int = 100) -> bool:
    """True once no session runs a source's cursor; a closed connection's backend exits asynchronously,
    so this polls (a bounded number of times) instead of asserting on the first look."""
    for _ in range(attempts):
        if not _source_backends(server):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.postgres
def test_postgres_streams_through_a_server_side_cursor(pg_conn) -> None:
    source = SqlSource(PG_CONN, "SELECT g AS id, 'lead ' || g AS name FROM generate_series(1, 50000) AS g",
                       batch_rows=10_000)
    batches = source.batches()
    first = next(batches)
    # While the first batch is in hand, the server holds the rest: the session's last statement is a FETCH.
    running = _source_backends(pg_conn)
    assert len(running) == 1 and running[0].startswith("FETCH FORWARD 10000 FROM"), running
    rest = list(batches)
    assert [b.num_rows for b in [first, *rest]] == [10_000] * 5
    assert first.schema == pa.schema([("id", pa.int64()), ("name", pa.string())])
    assert rest[-1].to_pylist()[-1] == {"id": 50_000, "name": "lead 50000"}
    assert _wait_for_no_source_backend(pg_conn)  # the connection is closed at the end
    assert source.describe().startswith("postgres conn 'zoho_pg_source': SELECT g AS id")


@pytest.mark.postgres
def test_postgres_closing_early_releases_the_connection(pg_conn) -> None:
    batches = SqlSource(PG_CONN, "SELECT g FROM generate_series(1, 1000) g", batch_rows=10).batches()
    next(batches)
    assert len(_source_backends(pg_conn)) == 1
    batches.close()
    assert _wait_for_no_source_backend(pg_conn)


@pytest.mark.postgres
def test_postgres_types_parameters_and_a_stable_schema(pg_conn) -> None:
    sql = """
        SELECT g AS n, (g * 1.5)::numeric(10,2) AS amount, g %% 2 = 0 AS even,
               CASE WHEN g > 2 THEN 'x' END AS late_text, CASE WHEN g > 2 THEN g END AS late_int,
               timestamptz '2024-01-01 12:00:00+02' AS at, date '2024-02-29' AS day,
               jsonb_build_object('k', g) AS doc, '007'::text AS code, NULL AS nothing, g AS n
        FROM generate_series(1, %(last)s) AS g
    """
    batches = collect(SqlSource(PG_CONN, sql, parameters={"last": 4}, batch_rows=2))
    assert len(batches) == 2
    assert batches[0].schema.names == ["n", "amount", "even", "late_text", "late_int", "at", "day", "doc", "code",
                                       "nothing", "n_2"]
    types = dict(zip(batches[0].schema.names, batches[0].schema.types, strict=True))
    assert types["late_int"] == pa.int64() and types["late_text"] == pa.string()  # from the type, not the NULLs
    assert types["at"] == pa.timestamp("us", tz="UTC") and types["amount"] == pa.string()
    row = batches[1].to_pylist()[1]
    assert row["amount"] == "6.00" and row["late_int"] == 4 and row["late_text"] == "x" and row["even"] is True
    assert row["at"] == dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone.utc)
    assert row["day"] == dt.date(2024, 2, 29) and json.loads(row["doc"]) == {"k": 4}
    assert row["code"] == "007" and row["nothing"] is None


@pytest.mark.postgres
def test_postgres_bad_sql_names_the_connection_not_the_password(pg_conn) -> None:
    with pytest.raises(SourceError) as caught:
        collect(SqlSource(PG_CONN, "SELECT * FROM no_such_table"))
    message = str(caught.value)
    assert "postgres conn 'zoho_pg_source'" in message and "no_such_table" in message
    assert pg_conn.password not in message
    assert not isinstance(caught.value, SourceConfigurationError)


@pytest.mark.postgres
def test_postgres_wrong_password_is_a_source_error_without_it(pg_conn, monkeypatch) -> None:
    secret = "hunter2-wrong-secret"
    env = json.loads(pg_conn.airflow_conn_env(PG_CONN)[f"AIRFLOW_CONN_{PG_CONN.upper()}"])
    monkeypatch.setenv(f"AIRFLOW_CONN_{PG_CONN.upper()}", json.dumps({**env, "password": secret}))
    with pytest.raises(SourceError, match="connecting failed") as caught:
        collect(SqlSource(PG_CONN, "SELECT 1"))
    assert secret not in str(caught.value) and caught.value.__cause__ is None


@pytest.mark.postgres
def test_postgres_query_runs_read_only(pg_conn, pg_table_name) -> None:
    with pg_conn.connect() as db:
        db.execute(f"CREATE TABLE {pg_table_name} (id int)")
    with pytest.raises(SourceError, match="read-only"):
        collect(SqlSource(PG_CONN, f"SELECT id FROM {pg_table_name} FOR UPDATE"))


@pytest.mark.postgres
def test_postgres_query_without_rows_yields_no_batches(pg_conn) -> None:
    assert collect(SqlSource(PG_CONN, "SELECT 1 AS x WHERE false")) == []


# --- SQLite and other DB-API connections -------------------------------------------------------------


@pytest.fixture
def sqlite_conn(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "crm.db"
    monkeypatch.setenv(f"AIRFLOW_CONN_{SQLITE_CONN.upper()}", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE leads (id INTEGER, name TEXT, score REAL, blob BLOB, note TEXT)")
        db.executemany("INSERT INTO leads VALUES (?, ?, ?, ?, ?)",
                       [(i, f"n{i}", i / 2, b"\x00\x01", None if i < 5 else "late") for i in range(1, 26)])
    return path


def test_sqlite_through_an_airflow_connection(sqlite_conn) -> None:
    source = SqlSource(SQLITE_CONN, "SELECT id, name, score, blob, note FROM leads WHERE id > ? ORDER BY id",
                       parameters=[0], batch_rows=4)
    batches = collect(source)
    assert [b.num_rows for b in batches] == [4] * 6 + [1]
    assert batches[0].schema == pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64()),
                                           ("blob", pa.binary()), ("note", pa.string())])
    rows = [row for batch in batches for row in batch.to_pylist()]
    assert rows[0] == {"id": 1, "name": "n1", "score": 0.5, "blob": b"\x00\x01", "note": None}
    assert rows[-1]["note"] == "late" and len(rows) == 25
    assert source.describe().startswith("sqlite conn 'zoho_sqlite_source': SELECT id")
    assert Path(sqlite_conn).exists()


def test_sqlite_value_not_fitting_the_first_rows_type_names_the_column(sqlite_conn) -> None:
    with sqlite3.connect(sqlite_conn) as db:
        db.execute("INSERT INTO leads VALUES ('abc', 'x', 1, NULL, NULL)")
    with pytest.raises(SourceError, match="column 'id' holds a value that is not int") as caught:
        collect(SqlSource(SQLITE_CONN, "SELECT id FROM leads ORDER BY rowid", batch_rows=10))
    assert "rows 21..26" in str(caught.value) and "CAST" in str(caught.value)


def test_sqlite_bad_sql_names_the_connection(sqlite_conn) -> None:
    with pytest.raises(SourceError, match=r"sqlite conn 'zoho_sqlite_source'.*no such table"):
        collect(SqlSource(SQLITE_CONN, "SELECT * FROM nowhere"))


def test_a_statement_without_rows_is_a_source_error(sqlite_conn) -> None:
    with pytest.raises(SourceError, match="returns no rows"):
        collect(SqlSource(SQLITE_CONN, "UPDATE leads SET name = 'x'"))
    with sqlite3.connect(sqlite_conn) as db:  # rolled back
        assert db.execute("SELECT count(*) FROM leads WHERE name = 'x'").fetchone() == (0,)


def test_connection_without_a_dbapi_hook_is_a_configuration_error(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ZOHO_NOT_SQL", json.dumps({"conn_type": "aws", "login": "a", "password": "b"}))
    with pytest.raises(SourceConfigurationError, match="not a SQL"):
        collect(SqlSource("zoho_not_sql", "SELECT 1"))


def test_an_unknown_connection_is_a_configuration_error_for_sql(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_ZOHO_NO_SUCH_DB", raising=False)
    with pytest.raises(SourceConfigurationError, match="'zoho_no_such_db'"):
        collect(SqlSource("zoho_no_such_db", "SELECT 1"))


def test_sql_source_settings_and_repr() -> None:
    source = SqlSource("db", "SELECT *\n  FROM t WHERE x = %(x)s", parameters={"x": "private"})
    assert source.template_fields == ("conn_id", "sql", "parameters")
    assert "private" not in repr(source) and repr(source).startswith("SqlSource(conn_id='db', sql=")
    assert source.describe() == "SQL conn 'db': SELECT * FROM t WHERE x = %(x)s"
    assert source.parse_time_asset_uri() is None
    with pytest.raises(SourceConfigurationError):
        SqlSource("", "SELECT 1")
    with pytest.raises(SourceConfigurationError):
        SqlSource("db", "SELECT 1", batch_rows=-1)


def test_driver_values_become_exact_text() -> None:
    from airflow_provider_zohobulk.sources.sql import _text

    assert _text(Decimal("1E+2")) == "100" and _text(Decimal("0.10")) == "0.10"
    assert _text({"a": [1, "é"]}) == '{"a": [1, "é"]}' and _text(dt.time(9, 30)) == "09:30:00"


# --- DuckDB ---------------------------------------------------------------------------------------------------


def test_duckdb_file_is_read_only_and_batched(tmp_path: Path) -> None:
    path = tmp_path / "crm.duckdb"
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE leads AS SELECT range AS id, 'n' || range AS name, DATE '2024-01-01' AS d "
                   "FROM range(25000)")
    source = DuckDBSource("SELECT * FROM leads ORDER BY id", database=str(path), batch_rows=10_000)
    batches = collect(source)
    assert sum(b.num_rows for b in batches) == 25_000 and len(batches) >= 3
    assert all(b.num_rows <= 10_000 for b in batches)
    assert batches[0].schema.field("d").type == pa.date32()
    assert source.parse_time_asset_uri() == f"duckdb://{path}"
    with pytest.raises(SourceError, match="read-only"):
        collect(DuckDBSource("DELETE FROM leads RETURNING id", database=str(path)))


def test_duckdb_in_memory_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"Id": ["01", "02"]}), path)
    source = DuckDBSource(f"SELECT * FROM read_parquet('{path}')")
    assert rows_of(source) == [{"Id": "01"}, {"Id": "02"}] and source.parse_time_asset_uri() is None


def test_duckdb_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.duckdb"
    with pytest.raises(SourceError, match="does not exist") as caught:
        collect(DuckDBSource("SELECT 1", database=str(missing)))
    assert str(missing) in str(caught.value) and not missing.exists()
    with pytest.raises(SourceError, match="nosuch"):
        collect(DuckDBSource("SELECT * FROM nosuch"))
    assert collect(DuckDBSource("SELECT 1 AS x WHERE false")) == []
    assert repr(DuckDBSource("SELECT 1")) == "DuckDBSource(database=':memory:', sql='SELECT 1')"
