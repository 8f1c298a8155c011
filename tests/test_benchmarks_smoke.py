"""The benchmark code at a small size, so it cannot rot: outputs are checked, timings never.

The generator is checked against an independent reading of its zip (stdlib ``zipfile`` + strict
``csv``), and every benchmark case is run the way ``benchmarks.run`` runs it (a fresh process each,
the sandbox serving the zip over HTTP, a real PostgreSQL), with each destination read back and
compared with the generator's manifest.
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

from benchmarks.cases import CaseOutput, CaseResult
from benchmarks.generate import MEMBER_NAME, RESULT_HEADER, ensure_result_zip
from benchmarks.run import (
    CASE_LABELS,
    CASE_ORDER,
    OutputMismatchError,
    check_destination,
    render_markdown,
    run_benchmark,
)
from benchmarks.stages import POSTGRES_VARIANTS, postgres_costs, stage_costs

ROWS = 4_000


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


@pytest.mark.postgres
@pytest.mark.slow
def test_every_case_loads_exactly_the_generated_rows(generated, postgres_server, tmp_path, monkeypatch):
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
    from airflow_provider_zohobulk.sandbox import ZohoSandbox

    zip_path, manifest = generated
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    with ZohoSandbox(files_dir=zip_path.parent) as sandbox:  # served from disk, as the benchmark does
        job_id = sandbox.create_job_from_zip(zip_path)
        for name, value in sandbox.airflow_connection_env().items():
            monkeypatch.setenv(name, value)
        hook = ZohoCrmHook()
        download_url = hook.get_bulk_write_job(job_id)["result"]["download_url"]
        env = {**os.environ, **postgres_server.airflow_conn_env("bench_postgres")}
        measurements = run_benchmark(
            zip_path=zip_path, manifest=manifest, download_url=download_url, job_id=job_id,
            access_token=hook.get_access_token(), pg_dsn=postgres_server.dsn, env=env, work_dir=work_dir,
            log=lambda line: None,
        )
        downloads = [r for r in sandbox.stats()["requests"] if r["path"].endswith(".zip")]

    # Every case ran in order, and run_benchmark read each destination back against the manifest.
    assert [m.case for m in measurements] == list(CASE_ORDER)
    assert all(m.rows == manifest.rows and m.csv_bytes == manifest.csv_bytes for m in measurements)
    assert all(m.peak_rss_bytes >= m.rss_after_setup_bytes > 0 for m in measurements)
    assert all(m.arrow_peak_bytes > 0 for m in measurements if m.case == "ceiling" or m.case.startswith("ours_"))
    assert len(downloads) == len(CASE_ORDER)  # each case downloaded over HTTP, with the OAuth header
    assert all(d["authorized"] and d["status"] == 200 for d in downloads)
    assert sorted(p.name for p in work_dir.iterdir() if not p.name.endswith(".json")) == []  # cleaned up

    markdown = render_markdown(measurements, manifest, machine=["- test machine"], repeat=1)
    for case in CASE_ORDER:
        assert CASE_LABELS[case] in markdown
    assert "ours_parquet / ceiling throughput" in markdown
    assert "ours_postgres / raw_copy throughput" in markdown
    assert f"{manifest.rows:,} rows" in markdown


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
