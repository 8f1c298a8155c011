"""``arrow_values`` and the reason for it: a whole load never makes pyarrow import pandas.

pyarrow imports pandas (when installed) at a process's first conversion of a Python object to Arrow,
which costs ~50 MB and ~0.4 s in a task that never uses pandas. The load runs in a fresh interpreter
here, since this test process has long imported pandas itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.arrow_values import (
    bool_scalar,
    int_array,
    int_scalar,
    null_scalar,
    string_array,
    string_scalar,
)
from airflow_provider_zohobulk.bulk_result import ERROR_TYPE, errors_array
from tests.fixtures.zips import SAMPLE_RESULT_ROWS, make_result_csv, zip_with_zipfile


@pytest.mark.parametrize("values", [[], ["a"], ["a", None, "Zürich ☃", ""], [None] * 9, ["x" * 70_000, None] * 5])
def test_string_array_equals_pyarrows_conversion(values):
    built = string_array(values)
    assert built.equals(pa.array(values, pa.string()))
    built.validate(full=True)


@pytest.mark.parametrize("kind", [pa.int32(), pa.int64()])
def test_int_array_and_scalars(kind):
    assert int_array([0, -5, 2**31 - 1], kind).equals(pa.array([0, -5, 2**31 - 1], kind))
    assert int_scalar(7, kind).equals(pa.scalar(7, kind))
    assert string_scalar("é").equals(pa.scalar("é", pa.string()))
    assert bool_scalar(True).as_py() is True and bool_scalar(False).as_py() is False
    assert null_scalar(kind).type == kind and not null_scalar(kind).is_valid


def test_int_array_refuses_other_types():
    with pytest.raises(ValueError, match="int32 or int64"):
        int_array([1], pa.int8())


def test_errors_array_equals_pyarrows_conversion():
    rows = [(), (("MANDATORY_NOT_FOUND", ("Company", "Last_Name")), ("DUPLICATE_DATA", ("Email",))),
            (("CANNOT_PROCESS", ()),), ()]
    expected = pa.array([[{"code": code, "columns": list(columns)} for code, columns in row] for row in rows],
                        pa.list_(ERROR_TYPE))
    built = errors_array(rows)
    built.validate(full=True)
    assert built.equals(expected)
    assert pc.list_value_length(errors_array([(), ()])).to_pylist() == [0, 0]


LOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    from airflow_provider_zohobulk.bulk_result import ResultStats, read_bulk_write_result, use_lean_memory_pool
    from airflow_provider_zohobulk.sinks import DuckDBSink, ObjectStorageSink, SqlSink
    from airflow_provider_zohobulk.sinks.base import load_batches

    use_lean_memory_pool()  # as the operator does
    kind, target, archive = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
    sink = {"object": lambda: ObjectStorageSink(target), "duckdb": lambda: DuckDBSink(target, "results"),
            "sql": lambda: SqlSink(target, "results")}[kind]()
    stats = ResultStats()

    def counted(batches):
        for file_name, batch in batches:
            stats.add(file_name, batch)
            yield file_name, batch

    load_batches(sink, "4150868000005349001", counted(read_bulk_write_result([archive], job_id="4150868000005349001")))
    print(json.dumps({"summary": stats.as_dict(), "pandas_imported": "pandas" in sys.modules}))
""")


@pytest.mark.parametrize("target", ["{file}.parquet", "{file}.csv.gz", "{file}.jsonl", "duckdb", "sqlite", "postgres"])
def test_a_load_never_imports_pandas(target, tmp_path, request):
    pytest.importorskip("pandas")  # the test proves nothing where pandas is not installed
    # Errors to parse, nulls, a control character to escape for JSON, a header-only second member.
    rows = [*SAMPLE_RESULT_ROWS, ("Ctl", "bell\x07@example.com", "x", "1", "ADDED", "")]
    archive = tmp_path / "result.zip"
    archive.write_bytes(zip_with_zipfile({"Leads.csv": make_result_csv(rows),
                                          "Empty.csv": make_result_csv([])}))
    env = dict(os.environ)
    if target == "duckdb":
        kind, where = "duckdb", str(tmp_path / "results.duckdb")
    elif target == "sqlite":
        kind, where = "sql", "probe_sqlite"
        env["AIRFLOW_CONN_PROBE_SQLITE"] = json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "r.db")})
    elif target == "postgres":
        server = request.getfixturevalue("postgres_server")
        kind, where = "sql", "probe_postgres"
        env.update(server.airflow_conn_env("probe_postgres"))
    else:
        kind, where = "object", str(tmp_path / target)
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, kind, where, str(archive)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["summary"]["rows"] == len(rows)
    assert report["summary"]["files"] == ["Leads.csv", "Empty.csv"]
    assert report["pandas_imported"] is False
    if target == "{file}.parquet":
        table = pq.read_table(tmp_path / "Leads.parquet")
        assert table.column("status").to_pylist() == ["ADDED", "SKIPPED", "UPDATED", "UNPROCESSED", "ADDED"]
        assert pq.read_table(tmp_path / "Empty.parquet").num_rows == 0
