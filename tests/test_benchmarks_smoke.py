"""The benchmark code at a small size, so it cannot rot: outputs are checked, timings never.

The generator is checked against an independent reading of its zip (stdlib ``zipfile`` + strict
``csv``), and every benchmark case is run the way ``benchmarks.run`` runs it (a fresh process each,
the sandbox serving the zip over HTTP, a real PostgreSQL), with each destination read back and
compared with the generator's manifest. The ratio table is checked to give every target of issue #11
a verdict, computed from the measurements (with made-up ones, so that the verdicts are known).
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.cases import (
    BULK_READ_TABLE,
    BY_HAND_DUCKDB_FILE,
    BY_HAND_TABLE,
    DLT_DATASET,
    DLT_DUCKDB_FILE,
    DLT_TABLE,
    CaseOutput,
    CaseResult,
)
from benchmarks.generate import MEMBER_NAME, RESULT_HEADER, ensure_result_zip
from benchmarks.run import (
    BULK_READ_CASES,
    CASE_LABELS,
    CASE_ORDER,
    PAIR_TARGETS,
    PEAK_RSS_TARGET_MB,
    SINK_CASES,
    Measurement,
    OutputMismatchError,
    check_bulk_read_destination,
    check_destination,
    prepare_bulk_read_export,
    render_markdown,
    run_benchmark,
    run_bulk_read_benchmark,
    target_checks,
)
from benchmarks.stages import POSTGRES_VARIANTS, postgres_costs, stage_costs

ROWS = 4_000
#: The smaller input of the memory-flatness targets, scaled down like ROWS.
BASELINE_ROWS = 1_000
#: Every target of issue #11 has one row in the ratio table: the pairs, then per sink flatness and peak.
TARGET_COUNT = len(PAIR_TARGETS) + 2 * len(SINK_CASES)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return ensure_result_zip(ROWS, seed=7, data_dir=tmp_path_factory.mktemp("bench-data"))


def read_back(zip_path: Path) -> tuple[list[str], list[list[str]], int]:
    """Header, rows and CSV size, read with the standard library only."""
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == [MEMBER_NAME]
        assert archive.getinfo(MEMBER_NAME).compress_type == zipfile.ZIP_DEFLATED
        raw = archive.read(MEMBER_NAME)
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), strict=True)
    header = next(reader)
    return header, list(reader), len(raw)


def test_generated_zip_holds_what_its_manifest_says(generated):
    zip_path, manifest = generated
    header, rows, csv_bytes = read_back(zip_path)

    assert header == list(RESULT_HEADER)
    assert all(len(row) == len(RESULT_HEADER) for row in rows)
    assert len(rows) == manifest.rows == ROWS
    assert csv_bytes == manifest.csv_bytes
    assert zip_path.stat().st_size == manifest.zip_bytes
    assert dict(Counter(row[4] for row in rows)) == manifest.by_status
    assert sum("\n" in row[2] for row in rows) == manifest.rows_with_quoted_newlines > 0
    codes = Counter(segment.split("-", 1)[0] for row in rows if row[5] for segment in row[5].split(":"))
    assert dict(codes) == manifest.errors_by_code
    # What makes the data realistic: ids of 19 digits where a record exists, errors only on SKIPPED.
    assert all(len(row[3]) == 19 and row[3].isdigit() for row in rows if row[4] in ("ADDED", "UPDATED"))
    assert all(bool(row[5]) == (row[4] == "SKIPPED") for row in rows)
    assert any("," in row[2] for row in rows) and any('"' in row[0] for row in rows)
    assert any(row[5] == "MANDATORY_NOT_FOUND-Company,Last_Name:DUPLICATE_DATA-Email" for row in rows)


def test_generation_is_cached_and_keyed_by_its_parameters(generated, tmp_path):
    zip_path, manifest = generated
    modified = zip_path.stat().st_mtime_ns
    again_path, again = ensure_result_zip(ROWS, seed=7, data_dir=zip_path.parent)
    assert (again_path, again, again_path.stat().st_mtime_ns) == (zip_path, manifest, modified)

    other_path, other = ensure_result_zip(ROWS, seed=8, data_dir=zip_path.parent)
    assert other_path != zip_path
    assert other.rows == ROWS and other.by_status != manifest.by_status  # different rows, same size
    assert not list(zip_path.parent.glob("*.partial"))


def fake_result(case: str, output: CaseOutput) -> CaseResult:
    return CaseResult(case=case, seconds=1.0, cpu_seconds=1.0, rss_after_setup_bytes=1, peak_rss_bytes=1,
                      output=output)


def test_a_destination_that_disagrees_with_the_input_fails_the_run(generated, tmp_path):
    _, manifest = generated
    wrong = dict(manifest.by_status, ADDED=manifest.by_status["ADDED"] - 1)
    with pytest.raises(OutputMismatchError, match=r"ceiling: .*rows per status"):
        check_destination(fake_result("ceiling", CaseOutput(rows=manifest.rows, by_status=wrong)),
                          manifest, tmp_path, pg_dsn="")

    # A Parquet file one row short, while the case itself claims the right count.
    statuses = [status for status, count in manifest.by_status.items() for _ in range(count)][1:]
    short = tmp_path / "naive.parquet"
    pq.write_table(pa.table({"STATUS": statuses}), short)
    claimed = CaseOutput(rows=manifest.rows, by_status=manifest.by_status, destination=[str(short)])
    with pytest.raises(OutputMismatchError, match=f"{manifest.rows - 1} rows at the destination"):
        check_destination(fake_result("naive_pandas", claimed), manifest, tmp_path, pg_dsn="")


def write_duckdb_statuses(database: Path, table: str, column: str, statuses: list[str]) -> None:
    import duckdb

    with duckdb.connect(str(database)) as connection:
        if "." in table:
            connection.execute(f"CREATE SCHEMA {table.split('.')[0]}")
        connection.execute(f'CREATE TABLE {table} ("{column}" VARCHAR)')
        connection.executemany(f"INSERT INTO {table} VALUES (?)", [[status] for status in statuses])


@pytest.mark.parametrize(("case", "database", "table", "column"), [
    ("dlt_duckdb", DLT_DUCKDB_FILE, f"{DLT_DATASET}.{DLT_TABLE}", "status"),
    ("duckdb_by_hand", BY_HAND_DUCKDB_FILE, BY_HAND_TABLE, "STATUS"),
])
def test_the_duckdb_tables_of_dlt_and_by_hand_are_read_back(generated, tmp_path, case, database, table, column):
    _, manifest = generated
    statuses = [status for status, count in manifest.by_status.items() for _ in range(count)]
    claimed = CaseOutput(rows=manifest.rows, by_status={})
    # Statuses are counted upper-cased, as our pipeline normalises them: "added" is an ADDED row.
    write_duckdb_statuses(tmp_path / database, table, column, [statuses[0].lower(), *statuses[1:]])
    check_destination(fake_result(case, claimed), manifest, tmp_path, pg_dsn="")

    # One row with another status than the input's, the count unchanged: the table is wrong.
    (tmp_path / database).unlink()
    other = "UPDATED" if statuses[0] != "UPDATED" else "ADDED"
    write_duckdb_statuses(tmp_path / database, table, column, [other, *statuses[1:]])
    with pytest.raises(OutputMismatchError, match=f"{case}: rows per status"):
        check_destination(fake_result(case, claimed), manifest, tmp_path, pg_dsn="")


def measured(case: str, seconds: float, peak_mb: float, setup_mb: float = 150) -> Measurement:
    return Measurement(case=case, seconds=seconds, cpu_seconds=seconds, rss_after_setup_bytes=int(setup_mb * 2**20),
                       peak_rss_bytes=int(peak_mb * 2**20), arrow_peak_bytes=0, rows=1, csv_bytes=1)


def test_every_target_gets_its_verdict_from_the_measurements():
    run = [measured("ceiling", 2.0, 200), measured("ours_parquet", 3.9, 240),  # 0.51x of the ceiling: met
           measured("naive_pandas", 11.0, 960),  # 2.8x slower only (NO); ours at exactly 1/4 of its memory (met)
           measured("ours_duckdb", 4.0, 301), measured("dlt_duckdb", 6.0, 300),  # exactly 1.5x; 1 MB more: NO
           measured("duckdb_by_hand", 3.2, 400),  # 0.8x: met
           measured("canonical_copy", 3.0, 180), measured("ours_postgres", 4.0, 249)]  # 0.75x: NO
    smaller = [measured("ours_parquet", 1.0, 240 - 30), measured("ours_duckdb", 1.0, 301 - 31),
               measured("ours_postgres", 1.0, 249 - 5)]
    checks = target_checks(run, smaller, rows=5_000_000, baseline_rows=200_000)
    verdicts = {check.label: check.verdict for check in checks if check.target}

    assert len(verdicts) == TARGET_COUNT
    assert verdicts == {
        "ours_duckdb vs dlt_duckdb: speed-up (its seconds / ours)": "yes",
        "ours_duckdb vs dlt_duckdb: peak RSS, ours / its": "NO",
        "ours_duckdb vs duckdb_by_hand: speed-up (its seconds / ours)": "yes",
        "ours_parquet vs naive_pandas: speed-up (its seconds / ours)": "NO",
        "ours_parquet vs naive_pandas: peak RSS, ours / its": "yes",
        "ours_parquet vs ceiling: speed-up (its seconds / ours)": "yes",
        "ours_postgres vs canonical_copy: speed-up (its seconds / ours)": "NO",
        "ours_parquet peak RSS above set-up, 5,000,000 vs 200,000 rows": "yes",  # +30 MB
        "ours_duckdb peak RSS above set-up, 5,000,000 vs 200,000 rows": "NO",  # +31 MB
        "ours_postgres peak RSS above set-up, 5,000,000 vs 200,000 rows": "yes",
        "ours_parquet peak RSS of the whole task process": "yes",
        "ours_duckdb peak RSS of the whole task process": "NO",  # 301 MB, the limit is < 300
        "ours_postgres peak RSS of the whole task process": "yes",
    }
    assert PEAK_RSS_TARGET_MB == {"ours_parquet": 250, "ours_postgres": 250, "ours_duckdb": 300}

    # Without the smaller run, or without a case, a target is "not measured", never a silent "yes".
    without = target_checks([m for m in run if m.case != "dlt_duckdb"], rows=5_000_000)
    assert {check.label: check.verdict for check in without if check.target}.keys() == verdicts.keys()
    assert [check.verdict for check in without if "dlt_duckdb" in check.label or "above set-up" in check.label] \
        == ["not measured"] * 5


@pytest.mark.postgres
@pytest.mark.slow
def test_every_case_loads_exactly_the_generated_rows(generated, postgres_server, tmp_path, monkeypatch):
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
    from airflow_provider_zohobulk.sandbox import ZohoSandbox

    zip_path, manifest = generated
    small_zip, small_manifest = ensure_result_zip(BASELINE_ROWS, seed=7, data_dir=zip_path.parent)
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    with ZohoSandbox(files_dir=zip_path.parent) as sandbox:  # served from disk, as the benchmark does
        job_id, small_job_id = sandbox.create_job_from_zip(zip_path), sandbox.create_job_from_zip(small_zip)
        for name, value in sandbox.airflow_connection_env().items():
            monkeypatch.setenv(name, value)
        hook = ZohoCrmHook()
        env = {**os.environ, **postgres_server.airflow_conn_env("bench_postgres")}
        common = {"access_token": hook.get_access_token(), "pg_dsn": postgres_server.dsn, "env": env,
                  "work_dir": work_dir, "log": lambda line: None}
        measurements = run_benchmark(
            zip_path=zip_path, manifest=manifest, job_id=job_id,
            download_url=hook.get_bulk_write_job(job_id)["result"]["download_url"], **common,
        )
        baseline = run_benchmark(  # what the runner does when --rows is above the baseline size
            zip_path=small_zip, manifest=small_manifest, job_id=small_job_id, cases=SINK_CASES,
            download_url=hook.get_bulk_write_job(small_job_id)["result"]["download_url"], **common,
        )
        downloads = [r for r in sandbox.stats()["requests"] if r["path"].endswith(".zip")]

    # Every case ran in order, and run_benchmark read each destination back against the manifest.
    assert [m.case for m in measurements] == list(CASE_ORDER)
    assert {"dlt_duckdb", "duckdb_by_hand", "canonical_copy", "naive_pandas", "ceiling"} <= set(CASE_ORDER)
    assert [m.case for m in baseline] == list(SINK_CASES)
    assert all(m.rows == manifest.rows and m.csv_bytes == manifest.csv_bytes for m in measurements)
    assert all(m.rows == BASELINE_ROWS for m in baseline)
    assert all(m.peak_rss_bytes >= m.rss_after_setup_bytes > 0 for m in [*measurements, *baseline])
    assert all(m.arrow_peak_bytes > 0 for m in measurements if m.case == "ceiling" or m.case.startswith("ours_"))
    # Each case downloaded over HTTP with the OAuth header, except canonical_copy: its set-up encodes
    # SqlSink's COPY payload from the zip on disk, and its timed part only loads PostgreSQL.
    assert len(downloads) == len(CASE_ORDER) - 1 + len(SINK_CASES)
    assert all(d["authorized"] and d["status"] == 200 for d in downloads)
    assert sorted(p.name for p in work_dir.iterdir() if not p.name.endswith(".json")) == []  # cleaned up

    markdown = render_markdown(measurements, manifest, machine=["- test machine"], repeat=1,
                               baseline=baseline, baseline_rows=BASELINE_ROWS)
    for case in CASE_ORDER:
        assert CASE_LABELS[case] in markdown
    assert f"{manifest.rows:,} rows" in markdown
    ratio_table = markdown[markdown.index("| ratio |"):markdown.index("Machine:")]
    verdicts = [line.rsplit("|", 2)[1].strip() for line in ratio_table.splitlines()[2:] if line.startswith("|")]
    targets = [verdict for verdict in verdicts if verdict]  # information rows have none
    assert len(targets) == TARGET_COUNT and set(targets) <= {"yes", "NO"}, ratio_table
    assert f"{ROWS:,} vs {BASELINE_ROWS:,} rows" in ratio_table
    for ours, reference in (("ours_duckdb", "dlt_duckdb"), ("ours_duckdb", "duckdb_by_hand"),
                            ("ours_postgres", "canonical_copy"), ("ours_parquet", "naive_pandas")):
        assert f"{ours} vs {reference}" in ratio_table


@pytest.mark.postgres
@pytest.mark.slow
def test_bulk_read_cases_load_exactly_the_exported_records(generated, postgres_server, tmp_path, monkeypatch):
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
    from airflow_provider_zohobulk.sandbox import ZohoSandbox

    _, manifest = generated
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    with ZohoSandbox(files_dir=tmp_path) as sandbox:
        for name, value in sandbox.airflow_connection_env().items():
            monkeypatch.setenv(name, value)
        export = prepare_bulk_read_export(sandbox, 5_000, 5, tmp_path / "pages")
        env = {**os.environ, **postgres_server.airflow_conn_env("bench_postgres")}
        measurements = run_bulk_read_benchmark(
            export=export, access_token=ZohoCrmHook().get_access_token(), pg_dsn=postgres_server.dsn, env=env,
            work_dir=work_dir, log=lambda line: None)
        jobs = sandbox.read_jobs()

    # Five page jobs of 1,000 records of 20 fields; run_bulk_read_benchmark read every destination back
    # against the sandbox's own records (it raises OutputMismatchError otherwise).
    assert export.page_counts == [1_000] * 5 and len(export.fields) == 20 and sum(export.by_status.values()) == 5_000
    assert [job["page"] for job in jobs] == [1, 2, 3, 4, 5] and all(job["downloads"] == 1 for job in jobs)
    assert [m.case for m in measurements] == list(BULK_READ_CASES)
    assert "bulk_read_export_copy" in BULK_READ_CASES  # ours's peer: the same rows, pre-encoded, same table
    assert all(m.rows == 5_000 for m in measurements)
    assert [len(m.page_peak_rss_bytes) for m in measurements] == [5, 0, 0, 0, 5]  # ours, per page
    assert len(export.page_zip_paths) == 5  # bulk_read_export_copy encoded its payload from them, untimed
    assert sorted(p.name for p in work_dir.iterdir() if not p.name.endswith(".json")) == []  # cleaned up

    # The export table's check catches what a row count cannot: the right number of rows, but one page's
    # rows under another page's job id and without a load time.
    import psycopg

    fields = ", ".join(f'"{name}" text' for name in export.fields)
    statuses = [status for status, count in export.by_status.items() for _ in range(count)]
    with psycopg.connect(postgres_server.dsn, autocommit=True) as connection:
        connection.execute(f'CREATE TABLE {BULK_READ_TABLE} ({fields}, "_job_id" text, "_page" bigint, '
                           '"_row_number" bigint, "_loaded_at" timestamptz)')
        with connection.cursor().copy(f'COPY {BULK_READ_TABLE} ("Lead_Status", "_job_id", "_page", '
                                      '"_row_number") FROM STDIN') as copy:
            for index, status in enumerate(statuses):
                page = index // 1_000 + 1
                copy.write_row((status, export.page_job_ids[0], page, index % 1_000 + 1))
        try:
            claimed = CaseOutput(rows=5_000, by_status={})
            with pytest.raises(OutputMismatchError, match=r"bulk_read_export_copy: per page .* instead of"):
                check_bulk_read_destination(fake_result("bulk_read_export_copy", claimed), export, work_dir,
                                            postgres_server.dsn)
        finally:
            connection.execute(f"DROP TABLE {BULK_READ_TABLE}")

    markdown = render_markdown(measurements, manifest, machine=["- test machine"], repeat=1, bulk_read=export)
    assert "5,000 Leads records of 20 fields in 5 pages" in markdown
    ratio_table = markdown[markdown.index("| ratio |"):markdown.index("Machine:")]
    rows = {line.split("|")[1].strip(): line.rsplit("|", 2)[1].strip() for line in ratio_table.splitlines()[2:]
            if line.startswith("|")}
    for label in ("ours_bulk_read_parquet vs naive_bulk_read_pandas: speed-up (its seconds / ours)",
                  "ours_bulk_read_postgres vs bulk_read_copy: speed-up (its seconds / ours)",
                  "ours_bulk_read_postgres vs bulk_read_export_copy: speed-up (its seconds / ours); "
                  "proposed restatement of #12's PostgreSQL target",
                  "ours_bulk_read_parquet peak RSS after the last page vs after page 1",
                  "ours_bulk_read_postgres peak RSS after the last page vs after page 1"):
        assert rows[label] in {"yes", "NO"}, ratio_table


@pytest.mark.postgres
def test_stage_breakdown_runs_every_stage_on_the_whole_input(generated, postgres_server):
    zip_path, manifest = generated
    costs, canonical_batches, (raw_csv, canonical_csv) = stage_costs(zip_path, repeat=1)

    labels = [label for label, _ in costs]
    assert any("ParquetEncoder" in label for label in labels) and any("to_canonical" in label for label in labels)
    assert all(seconds >= 0 for _, seconds in costs)
    assert sum(batch.num_rows for batch in canonical_batches) == manifest.rows
    assert sum(map(len, raw_csv)) == manifest.csv_bytes  # the unzip stage saw the whole CSV
    # Every COPY variant loads every row (postgres_costs raises otherwise), raw and canonical.
    timings = postgres_costs(postgres_server.dsn, raw_csv, canonical_csv, repeat=1, expected_rows=manifest.rows)
    assert len(timings) == 1 + len(POSTGRES_VARIANTS)
    with pytest.raises(RuntimeError, match=f"not {manifest.rows + 1}"):
        postgres_costs(postgres_server.dsn, raw_csv, canonical_csv, repeat=1, expected_rows=manifest.rows + 1)
