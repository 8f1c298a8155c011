"""Run every benchmark case against one generated result, in the same run, and write ``results.md``.

``python -m benchmarks.run`` (default: the full 5,000,000 rows) or ``--rows 200000`` for a quick look.

How a run goes: the result zip is generated (or found in the cache), the local Zoho sandbox serves it
over real HTTP as a finished Bulk Write job, a throwaway PostgreSQL cluster starts on 127.0.0.1, and
each case (:mod:`benchmarks.cases`) runs in a fresh process of its own. After each case the
*destination* is read back (Parquet file, DuckDB table, PostgreSQL table) and its row count and rows
per status are compared with the generator's manifest: a case that loses or invents rows fails the
run instead of posting a fast time. Destinations are then removed, so a full run needs little disk.
When ``--rows`` is above :data:`MEMORY_BASELINE_ROWS`, our sink cases run a second time on a zip of
that size (generated once, cached), to tell whether their memory grows with the input.

The Bulk Read cases (:data:`BULK_READ_CASES`, issue #12; only with ``--cases``) export
``--bulk-read-records`` generated Leads records in :data:`BULK_READ_PAGES` pages: the runner seeds the
sandbox, creates the page jobs and downloads each page's zip once from the Bulk Read endpoint (not
timed), then serves those zips from disk like the Bulk Write result. Why not straight from the Bulk
Read endpoint: the sandbox generates a page in Python while sending it (about 60,000 records a second
here), which would make the server, not the client, what every case measures.

Throughput is uncompressed CSV bytes (and data rows) per second of wall-clock time from the first
HTTP request to the commit. Peak memory is the case process's own high-water RSS (``VmHWM``; not
``ru_maxrss``, which Linux carries over from the runner across fork + exec), and includes what the
interpreter and the imports cost (reported separately as "RSS after setup").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.cases import (
    BULK_READ_COPY_TABLE,
    BULK_READ_MODULE,
    BULK_READ_TABLE,
    BY_HAND_DUCKDB_FILE,
    BY_HAND_TABLE,
    CANONICAL_PAYLOAD_FILE,
    DLT_DATASET,
    DLT_DUCKDB_FILE,
    DLT_TABLE,
    DLT_WORK_DIR,
    EXPORT_PAYLOAD_DIR,
    NAIVE_BULK_READ_DIR,
    NAIVE_PARQUET_FILE,
    OURS_BULK_READ_DIR,
    OURS_DUCKDB_FILE,
    OURS_PARQUET_DIR,
    PG_CONN_ID,
    RAW_TABLE,
    RESULTS_TABLE,
    ZOHO_CONN_ID,
    CaseConfig,
    CaseResult,
)
from benchmarks.generate import DATA_DIR, DEFAULT_ROWS, ResultManifest, ensure_result_zip

__all__ = [
    "BULK_READ_CASES",
    "CASE_ORDER",
    "BulkReadExport",
    "Measurement",
    "OutputMismatchError",
    "TargetCheck",
    "prepare_bulk_read_export",
    "render_markdown",
    "run_benchmark",
    "run_bulk_read_benchmark",
    "target_checks",
]

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = Path(__file__).resolve().parent / "results.md"
#: Everything from this line on in results.md is hand-written analysis, kept across runs.
ANALYSIS_MARKER = "<!-- analysis: everything below is kept when run.py rewrites this file -->"
#: Each of our cases next to the ones it is compared with, so that drift in the machine's load
#: between neighbours stays small.
CASE_ORDER = ("ceiling", "ours_parquet", "naive_pandas", "ours_duckdb", "dlt_duckdb", "duckdb_by_hand",
              "raw_copy", "canonical_copy", "ours_postgres")
CASE_LABELS = {
    "ceiling": "ceiling: hook download + stream-unzip + pyarrow CSV, into nothing",
    "ours_parquet": "ours -> Parquet (ObjectStorageSink, local file)",
    "ours_duckdb": "ours -> DuckDB (DuckDBSink)",
    "ours_postgres": "ours -> PostgreSQL (SqlSink, Airflow connection)",
    "naive_pandas": "naive: requests .content + zipfile + pandas.read_csv + to_parquet",
    "dlt_duckdb": "dlt -> DuckDB: resource of the ceiling's Arrow batches, pipeline.run(replace)",
    "duckdb_by_hand": "DuckDB by hand: zip to temp file, unzip to disk, CREATE TABLE AS read_csv",
    "raw_copy": "raw COPY: CSV bytes from stream-unzip into PostgreSQL COPY",
    "canonical_copy": "canonical COPY: SqlSink's pre-encoded bytes into its table and transaction",
    "ours_bulk_read_parquet": "Bulk Read: ours -> Parquet per page (read_export_page, ObjectStorageSink)",
    "naive_bulk_read_pandas": "Bulk Read naive: per page requests .content + zipfile + pandas + to_parquet",
    "bulk_read_copy": "Bulk Read raw COPY: every page's CSV bytes from stream-unzip into one COPY",
    "bulk_read_export_copy": "Bulk Read export COPY: SqlSink's pre-encoded export rows into its table and transaction",
    "ours_bulk_read_postgres": "Bulk Read: ours -> PostgreSQL (SqlSink, replace)",
}
#: The Bulk Read export cases (issue #12), each next to its reference. Not in CASE_ORDER: a run of
#: them at 1,000,000 records takes longer than the 60 s the default run may spend on them (see
#: README), so they run only when ``--cases`` names them.
BULK_READ_CASES = ("ours_bulk_read_parquet", "naive_bulk_read_pandas", "bulk_read_copy", "bulk_read_export_copy",
                   "ours_bulk_read_postgres")
#: Bulk Read cases that load SqlSink's export table (checked for its layout and meta columns too).
BULK_READ_EXPORT_TABLE_CASES = ("bulk_read_export_copy", "ours_bulk_read_postgres")
ALL_CASES = (*CASE_ORDER, *BULK_READ_CASES)
DEFAULT_BULK_READ_RECORDS = 1_000_000
BULK_READ_PAGES = 5
#: The first 20 of the sandbox's 23 Leads fields: "a 20-field module".
BULK_READ_FIELD_COUNT = 20
#: Issue #12's speed targets: (ours, reference, at least this many times the reference's speed). The last
#: is the proposed restatement of its PostgreSQL target: the same 0.8x, against the peer that stores what
#: ours stores (bulk_read_export_copy, as canonical_copy is for Bulk Write results) instead of raw COPY.
BULK_READ_SPEED_TARGETS = (
    ("ours_bulk_read_parquet", "naive_bulk_read_pandas", 3.0),
    ("ours_bulk_read_postgres", "bulk_read_copy", 0.8),
    ("ours_bulk_read_postgres", "bulk_read_export_copy", 0.8),
)
#: The ratio rows of BULK_READ_SPEED_TARGETS marked in the table as proposed restatements of #12's targets.
PROPOSED_RESTATEMENTS = {("ours_bulk_read_postgres", "bulk_read_export_copy")}
#: Our Bulk Read cases, whose peak RSS after the last page must be within this much of it after the first.
BULK_READ_SINK_CASES = ("ours_bulk_read_parquet", "ours_bulk_read_postgres")
FLAT_PAGES_MB = 10
#: Our cases, one per sink: the ones with memory targets.
SINK_CASES = ("ours_parquet", "ours_duckdb", "ours_postgres")
PACKAGES = ("apache-airflow", "pyarrow", "duckdb", "psycopg", "pandas", "stream-unzip", "smart-open", "requests",
            "dlt")
#: Peak RSS of the whole case process (imports included), per sink.
PEAK_RSS_TARGET_MB = {"ours_parquet": 250, "ours_postgres": 250, "ours_duckdb": 300}
#: The smaller input our sink cases also run on, and how far apart their memory above set-up may be.
MEMORY_BASELINE_ROWS = 200_000
FLAT_MEMORY_MB = 30
#: The targets of issue #11 that compare two cases, in its order: (kind, ours, reference, bound).
#: "speed": the reference's seconds / ours must be at least ``bound`` (same input, so seconds compare);
#: "memory": ours's peak RSS / the reference's must be at most ``bound``.
PAIR_TARGETS = (
    ("speed", "ours_duckdb", "dlt_duckdb", 1.5),
    ("memory", "ours_duckdb", "dlt_duckdb", 1.0),
    ("speed", "ours_duckdb", "duckdb_by_hand", 0.8),
    ("speed", "ours_parquet", "naive_pandas", 3.0),
    ("memory", "ours_parquet", "naive_pandas", 0.25),
    ("speed", "ours_parquet", "ceiling", 0.5),
    ("speed", "ours_postgres", "canonical_copy", 0.8),
)
#: Speed ratios shown for information, with no target.
SPEED_INFORMATION = (
    ("ours_postgres", "raw_copy"),
    ("canonical_copy", "raw_copy"),
)


class OutputMismatchError(Exception):
    """A case's destination does not hold what the generated input holds: the run is invalid."""


@dataclass
class Measurement:
    """One case's best run, checked against the input."""

    case: str
    seconds: float
    cpu_seconds: float
    rss_after_setup_bytes: int
    peak_rss_bytes: int
    arrow_peak_bytes: int
    rows: int
    csv_bytes: int
    #: Bulk Read cases: peak RSS after each page, in page order.
    page_peak_rss_bytes: list[int] = field(default_factory=list)

    @property
    def mb_per_second(self) -> float:
        return self.csv_bytes / 1e6 / self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 2**20

    @property
    def peak_above_setup_mb(self) -> float:
        """What the load itself adds to the process: an Airflow worker has paid for the imports already."""
        return (self.peak_rss_bytes - self.rss_after_setup_bytes) / 2**20


# --- checking destinations -------------------------------------------------------------------------


def parquet_status_counts(path: Path, column: str) -> tuple[int, dict[str, int]]:
    """Rows and rows per value of ``column`` in a Parquet file, read batch by batch."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counts: Counter[str] = Counter()
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(columns=[column]):
        for entry in pc.value_counts(batch.column(0)).to_pylist():
            counts[entry["values"] or "(missing)"] += entry["counts"]
    return parquet.metadata.num_rows, dict(counts)


def postgres_status_counts(dsn: str, table: str, status_column: str) -> tuple[int, dict[str, int]]:
    import psycopg

    with psycopg.connect(dsn) as connection:
        found = dict(connection.execute(f"SELECT {status_column}, count(*) FROM {table} GROUP BY 1").fetchall())
    return sum(found.values()), {str(k): int(v) for k, v in found.items()}


def postgres_export_pages(dsn: str, table: str) -> tuple[list[str], list[tuple[int, str, int, int, int, int]]]:
    """SqlSink's export table as stored: its columns in order, and per ``_page`` (in order) the ``_job_id``,
    row count, first and last ``_row_number`` and the rows without a ``_loaded_at``."""
    import psycopg

    with psycopg.connect(dsn) as connection:
        columns = [name for (name,) in connection.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (table,)).fetchall()]
        pages = connection.execute(
            f'SELECT "_page", "_job_id", count(*), min("_row_number"), max("_row_number"), '
            f'count(*) FILTER (WHERE "_loaded_at" IS NULL) FROM {table} GROUP BY 1, 2 ORDER BY 1, 2').fetchall()
    return columns, [tuple(page) for page in pages]


def export_table_problems(export: BulkReadExport, dsn: str, table: str) -> list[str]:
    """What differs between SqlSink's export table and the export: its layout (the module's fields, then
    ``_job_id``, ``_page``, ``_row_number``, ``_loaded_at``) and, per page, its job id, row count, row
    numbers 1..count and a load time on every row. The same check for ours and its COPY peer, so that
    both are known to store the same rows."""
    columns, pages = postgres_export_pages(dsn, table)
    problems = []
    expected_columns = [*export.fields, "_job_id", "_page", "_row_number", "_loaded_at"]
    if columns != expected_columns:
        problems.append(f"table columns {columns} instead of {expected_columns}")
    expected_pages = [(page, job_id, count, 1, count, 0) for page, (job_id, count)
                      in enumerate(zip(export.page_job_ids, export.page_counts, strict=True), 1)]
    if pages != expected_pages:
        problems.append(f"per page (page, job, rows, first and last row number, rows without _loaded_at) "
                        f"{pages} instead of {expected_pages}")
    return problems


def duckdb_status_counts(database: Path, table: str = RESULTS_TABLE,
                         status: str = "status") -> tuple[int, dict[str, int]]:
    """Rows and rows per value of the SQL expression ``status`` in a DuckDB table."""
    import duckdb

    with duckdb.connect(str(database), read_only=True) as connection:
        found = dict(connection.execute(f"SELECT {status}, count(*) FROM {table} GROUP BY 1").fetchall())
    return sum(found.values()), {str(k): int(v) for k, v in found.items()}


def local_path(location: str) -> Path:
    return Path(location.removeprefix("file://"))


def check_destination(result: CaseResult, manifest: ResultManifest, work_dir: Path, pg_dsn: str) -> None:
    """Read the case's destination back and compare rows and rows per status with the manifest."""
    output = result.output
    case = result.case
    if case == "ceiling":
        rows, by_status = output.rows, output.by_status
    elif case in ("ours_parquet", "naive_pandas"):
        if len(output.destination) != 1:
            raise OutputMismatchError(f"{case}: expected one Parquet file, got {output.destination}")
        rows, by_status = parquet_status_counts(local_path(output.destination[0]),
                                                "status" if case == "ours_parquet" else "STATUS")
    elif case == "ours_duckdb":
        rows, by_status = duckdb_status_counts(work_dir / OURS_DUCKDB_FILE)
    elif case == "dlt_duckdb":  # dlt names the CSV's STATUS column in snake case
        rows, by_status = duckdb_status_counts(work_dir / DLT_DUCKDB_FILE, f"{DLT_DATASET}.{DLT_TABLE}",
                                               "upper(status)")
    elif case == "duckdb_by_hand":  # read_csv keeps the header's names
        rows, by_status = duckdb_status_counts(work_dir / BY_HAND_DUCKDB_FILE, BY_HAND_TABLE, 'upper("STATUS")')
    elif case in ("ours_postgres", "canonical_copy"):
        rows, by_status = postgres_status_counts(pg_dsn, RESULTS_TABLE, "status")
    elif case == "raw_copy":
        rows, by_status = postgres_status_counts(pg_dsn, RAW_TABLE, "status")
    else:
        raise ValueError(f"unknown case {case!r}")
    problems = []
    if rows != manifest.rows or output.rows != manifest.rows:
        problems.append(f"{rows} rows at the destination, {output.rows} reported, {manifest.rows} generated")
    if by_status != manifest.by_status:
        problems.append(f"rows per status {by_status} instead of {manifest.by_status}")
    if output.errors_by_code is not None and output.errors_by_code != manifest.errors_by_code:
        problems.append(f"errors per code {output.errors_by_code} instead of {manifest.errors_by_code}")
    if problems:
        raise OutputMismatchError(f"{case}: " + "; ".join(problems))


def check_bulk_read_destination(result: CaseResult, export: BulkReadExport, work_dir: Path, pg_dsn: str) -> None:
    """Read a Bulk Read case's destination back: rows and rows per Lead_Status as the sandbox says the
    export holds (and, per Parquet file, each page's record count)."""
    output = result.output
    case = result.case
    problems = []
    if case in ("ours_bulk_read_parquet", "naive_bulk_read_pandas"):
        files = sorted(output.destination)
        if len(files) != len(export.page_counts):
            raise OutputMismatchError(f"{case}: expected {len(export.page_counts)} Parquet files, got {files}")
        rows, by_status = 0, Counter[str]()
        for page, (path, expected) in enumerate(zip(files, export.page_counts, strict=True), 1):
            page_rows, page_statuses = parquet_status_counts(local_path(path), "Lead_Status")
            if page_rows != expected:
                problems.append(f"page {page} ({path}) holds {page_rows} rows, the sandbox's job {expected}")
            rows += page_rows
            by_status.update(page_statuses)
        by_status_found = dict(by_status)
    elif case in BULK_READ_EXPORT_TABLE_CASES:
        rows, by_status_found = postgres_status_counts(pg_dsn, BULK_READ_TABLE, '"Lead_Status"')
        problems += export_table_problems(export, pg_dsn, BULK_READ_TABLE)
    elif case == "bulk_read_copy":
        rows, by_status_found = postgres_status_counts(pg_dsn, BULK_READ_COPY_TABLE, '"Lead_Status"')
    else:
        raise ValueError(f"unknown Bulk Read case {case!r}")
    if rows != export.records or output.rows != export.records:
        problems.append(f"{rows} rows at the destination, {output.rows} reported, {export.records} exported")
    if by_status_found != export.by_status or (output.by_status and output.by_status != export.by_status):
        problems.append(f"rows per Lead_Status {by_status_found} instead of {export.by_status}")
    if case.startswith("ours_") and len(output.page_peak_rss_bytes) != len(export.page_counts):
        problems.append(f"peak RSS read after {len(output.page_peak_rss_bytes)} pages, not {len(export.page_counts)}")
    if problems:
        raise OutputMismatchError(f"{case}: " + "; ".join(problems))


def clear_destination(case: str, work_dir: Path, pg_dsn: str) -> None:
    """Remove what a case wrote, so the next repetition starts alike and disk use stays small."""
    duckdb_files = (OURS_DUCKDB_FILE, DLT_DUCKDB_FILE, BY_HAND_DUCKDB_FILE)
    for name in (OURS_PARQUET_DIR, NAIVE_PARQUET_FILE, DLT_WORK_DIR, CANONICAL_PAYLOAD_FILE, *duckdb_files,
                 *(f"{name}.wal" for name in duckdb_files), OURS_BULK_READ_DIR, NAIVE_BULK_READ_DIR,
                 EXPORT_PAYLOAD_DIR):
        path = work_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    tables = {"ours_postgres": RESULTS_TABLE, "canonical_copy": RESULTS_TABLE, "raw_copy": RAW_TABLE,
              "ours_bulk_read_postgres": BULK_READ_TABLE, "bulk_read_export_copy": BULK_READ_TABLE,
              "bulk_read_copy": BULK_READ_COPY_TABLE}
    if case in tables:
        import psycopg

        with psycopg.connect(pg_dsn, autocommit=True) as connection:
            connection.execute(f"DROP TABLE IF EXISTS {tables[case]}")


# --- running ---------------------------------------------------------------------------------------


def run_case_process(config: CaseConfig, env: dict[str, str], work_dir: Path,
                     profile_path: Path | None = None) -> CaseResult:
    """Run one case in a fresh interpreter (under py-spy when ``profile_path`` is given).

    The case's stderr is shown when it fails.
    """
    config_path = work_dir / f"{config.case}.config.json"
    result_path = work_dir / f"{config.case}.result.json"
    result_path.unlink(missing_ok=True)
    config.save(config_path)
    command = [sys.executable, "-m", "benchmarks.cases", str(config_path), str(result_path)]
    if profile_path is not None:
        command = [find_py_spy(), "record", "--format", "raw", "--rate", "100", "--output", str(profile_path),
                   "--", *command]
    try:
        completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    finally:
        config_path.unlink(missing_ok=True)  # it holds an access token
    if completed.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"case {config.case} failed with exit code {completed.returncode}:\n"
                           f"{completed.stderr[-6000:]}")
    return CaseResult.load(result_path)


def run_benchmark(
    *,
    zip_path: Path,
    manifest: ResultManifest,
    download_url: str,
    job_id: str,
    access_token: str,
    pg_dsn: str,
    env: dict[str, str],
    work_dir: Path,
    cases: Sequence[str] = CASE_ORDER,
    repeat: int = 1,
    profile_dir: Path | None = None,
    log: Any = print,
) -> list[Measurement]:
    """Run ``cases`` ``repeat`` times (round robin, fresh processes); keep each case's fastest run.

    Round robin rather than case after case: on a shared machine the load drifts, and interleaving
    spreads that drift over every case instead of penalising whichever ran during a busy minute.
    The peak memory kept is the highest seen over the repetitions.

    ``env`` is the complete environment of the case processes: it must hold the Zoho connection
    (``AIRFLOW_CONN_ZOHO_CRM_DEFAULT``), the PostgreSQL one (``AIRFLOW_CONN_BENCH_POSTGRES``), the
    token cache directory and an ``AIRFLOW_HOME``. Raises :class:`OutputMismatchError` when a
    destination does not match the manifest.
    """
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))}
    best: dict[str, Measurement] = {}
    for attempt in range(repeat):
        for case in cases:
            config = CaseConfig(
                case=case, download_url=download_url, job_id=job_id, work_dir=str(work_dir),
                access_token=access_token if case in ("naive_pandas", "duckdb_by_hand") else "",
                pg_dsn=pg_dsn, zip_path=str(zip_path),
            )
            clear_destination(case, work_dir, pg_dsn)
            profile_path = profile_dir / f"{case}.{attempt + 1}.stacks" if profile_dir else None
            result = run_case_process(config, env, work_dir, profile_path)
            check_destination(result, manifest, work_dir, pg_dsn)
            clear_destination(case, work_dir, pg_dsn)
            measurement = Measurement(
                case=case, seconds=result.seconds, cpu_seconds=result.cpu_seconds,
                rss_after_setup_bytes=result.rss_after_setup_bytes, peak_rss_bytes=result.peak_rss_bytes,
                arrow_peak_bytes=result.arrow_peak_bytes, rows=manifest.rows, csv_bytes=manifest.csv_bytes,
            )
            keep_fastest(best, measurement, attempt, log)
    return [best[case] for case in cases]


def keep_fastest(best: dict[str, Measurement], measurement: Measurement, attempt: int, log: Any) -> None:
    """Log one run and keep the case's fastest, with the highest peak memory seen over its runs."""
    case = measurement.case
    log(f"{case} #{attempt + 1}: {measurement.seconds:.1f} s, {measurement.mb_per_second:.1f} MB/s, "
        f"CPU {measurement.cpu_seconds:.1f} s, peak {measurement.peak_rss_mb:.0f} MB, "
        f"load average {os.getloadavg()[0]:.1f}")
    previous = best.get(case)
    if previous is not None:
        measurement.peak_rss_bytes = max(measurement.peak_rss_bytes, previous.peak_rss_bytes)
        measurement.arrow_peak_bytes = max(measurement.arrow_peak_bytes, previous.arrow_peak_bytes)
        if previous.seconds <= measurement.seconds:
            previous.peak_rss_bytes = measurement.peak_rss_bytes
            previous.arrow_peak_bytes = measurement.arrow_peak_bytes
            return
    best[case] = measurement


@dataclass
class BulkReadExport:
    """A Bulk Read export made ready for the cases: each page's job, its zip served from disk, and what
    the sandbox says the export holds."""

    records: int
    fields: list[str]
    page_job_ids: list[str]
    #: Full download URLs of the page zips, served from disk (see the module docstring).
    page_urls: list[str]
    page_counts: list[int]
    #: Records per Lead_Status, from the sandbox's own records (``read_records``), not from the zips.
    by_status: dict[str, int]
    csv_bytes: int
    zip_bytes: int
    #: The page zips on disk, in page order (bulk_read_export_copy encodes its payload from them, untimed).
    page_zip_paths: list[str] = field(default_factory=list)


def prepare_bulk_read_export(sandbox: Any, records: int, pages: int, zip_dir: Path,
                             conn_id: str = ZOHO_CONN_ID) -> BulkReadExport:
    """Seed Leads with ``records`` records, create the ``pages`` page jobs, download each page's zip once
    into ``zip_dir`` (under the sandbox's ``files_dir``) and serve it from there; not timed.

    The Airflow connection ``conn_id`` must reach ``sandbox``.
    """
    import zipfile

    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    if records % pages:
        raise ValueError(f"{records:,} records do not split into {pages} equal pages")
    sandbox.seed_module(BULK_READ_MODULE, records, seed=0)
    sandbox.configure(bulk_read_per_page=records // pages, bulk_read_downloads_per_minute=None,
                      bulk_read_max_active_jobs=None)
    fields = sandbox.read_modules()[BULK_READ_MODULE]["fields"][:BULK_READ_FIELD_COUNT]
    job_ids = [sandbox.create_read_job({"query": {"module": {"api_name": BULK_READ_MODULE}, "fields": fields,
                                                  "page": page}}) for page in range(1, pages + 1)]
    hook = ZohoCrmHook(conn_id)
    zip_dir.mkdir(parents=True, exist_ok=True)
    page_urls, page_counts, page_zip_paths, csv_bytes, zip_bytes = [], [], [], 0, 0
    for page, job_id in enumerate(job_ids, 1):
        details = hook.get_bulk_read_job(job_id)
        path = zip_dir / f"page-{page:05d}.zip"
        with hook.stream_download(details["result"]["download_url"], job_id=job_id) as download, \
                open(path, "wb") as target:
            for chunk in download:
                target.write(chunk)
        with zipfile.ZipFile(path) as archive:
            csv_bytes += sum(info.file_size for info in archive.infolist())
        zip_bytes += path.stat().st_size
        served = sandbox.create_job_from_zip(path)
        page_urls.append(hook.get_bulk_write_job(served)["result"]["download_url"])
        page_counts.append(int(details["result"]["count"]))
        page_zip_paths.append(str(path))
    by_status: Counter[str] = Counter()
    for offset in range(0, records, 100_000):
        chunk = sandbox.read_records(BULK_READ_MODULE, fields=["Lead_Status"], offset=offset, limit=100_000)
        by_status.update(record[0] for record in chunk["records"])
    return BulkReadExport(records=records, fields=list(fields), page_job_ids=job_ids, page_urls=page_urls,
                          page_counts=page_counts, by_status=dict(by_status), csv_bytes=csv_bytes,
                          zip_bytes=zip_bytes, page_zip_paths=page_zip_paths)


def run_bulk_read_benchmark(
    *,
    export: BulkReadExport,
    access_token: str,
    pg_dsn: str,
    env: dict[str, str],
    work_dir: Path,
    cases: Sequence[str] = BULK_READ_CASES,
    repeat: int = 1,
    profile_dir: Path | None = None,
    log: Any = print,
) -> list[Measurement]:
    """Run the Bulk Read ``cases`` like :func:`run_benchmark` runs the others: round robin, fresh
    processes, each destination read back against the export (:class:`OutputMismatchError` otherwise)."""
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))}
    best: dict[str, Measurement] = {}
    for attempt in range(repeat):
        for case in cases:
            config = CaseConfig(
                case=case, download_url="", job_id=export.page_job_ids[0], work_dir=str(work_dir),
                access_token=access_token if case == "naive_bulk_read_pandas" else "", pg_dsn=pg_dsn,
                page_urls=export.page_urls, page_job_ids=export.page_job_ids, fields=export.fields,
                page_zip_paths=export.page_zip_paths if case == "bulk_read_export_copy" else [],
            )
            clear_destination(case, work_dir, pg_dsn)
            profile_path = profile_dir / f"{case}.{attempt + 1}.stacks" if profile_dir else None
            result = run_case_process(config, env, work_dir, profile_path)
            check_bulk_read_destination(result, export, work_dir, pg_dsn)
            clear_destination(case, work_dir, pg_dsn)
            keep_fastest(best, Measurement(
                case=case, seconds=result.seconds, cpu_seconds=result.cpu_seconds,
                rss_after_setup_bytes=result.rss_after_setup_bytes, peak_rss_bytes=result.peak_rss_bytes,
                arrow_peak_bytes=result.arrow_peak_bytes, rows=export.records, csv_bytes=export.csv_bytes,
                page_peak_rss_bytes=result.output.page_peak_rss_bytes,
            ), attempt, log)
    return [best[case] for case in cases]


# --- reporting -------------------------------------------------------------------------------------


def machine_description(pg_version: str | None) -> list[str]:
    """CPU, cores, memory, OS, Python and library versions, as markdown list items."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; RAM {memory}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}; " + ", ".join(versions),
    ]
    if pg_version:
        lines.append(f"- PostgreSQL {pg_version} (throwaway cluster on 127.0.0.1, fsync off)")
    return lines


@dataclass(frozen=True)
class TargetCheck:
    """One row of the ratio table: a comparison, its value in this run, its target and whether it is met.

    ``met`` is None for a comparison this run could not make (a case left out with ``--cases``, or no
    run at the baseline size) and for rows shown for information, which have no target.
    """

    label: str
    value: str
    target: str = ""
    met: bool | None = None

    @property
    def verdict(self) -> str:
        if not self.target:
            return ""
        return "not measured" if self.met is None else "yes" if self.met else "NO"


def speed_check(by_case: dict[str, Measurement], ours: str, reference: str, minimum: float | None) -> TargetCheck:
    """How many times faster ``ours`` ran than ``reference`` (same input, so seconds compare directly)."""
    label = f"{ours} vs {reference}: speed-up (its seconds / ours)"
    target = f">= {minimum}x" if minimum is not None else ""
    if ours not in by_case or reference not in by_case:
        return TargetCheck(label, "not run", target)
    ratio = by_case[reference].seconds / by_case[ours].seconds
    return TargetCheck(label, f"{ratio:.2f}x", target, None if minimum is None else ratio >= minimum)


def memory_share_check(by_case: dict[str, Measurement], ours: str, reference: str, largest: float) -> TargetCheck:
    """``ours``'s peak RSS as a share of ``reference``'s, whole processes."""
    label = f"{ours} vs {reference}: peak RSS, ours / its"
    target = "<= 1.00 (no higher)" if largest == 1 else f"<= {largest:.2f} (1/{1 / largest:.0f} of it)"
    if ours not in by_case or reference not in by_case:
        return TargetCheck(label, "not run", target)
    share = by_case[ours].peak_rss_bytes / by_case[reference].peak_rss_bytes
    return TargetCheck(label, f"{by_case[ours].peak_rss_mb:,.0f} / {by_case[reference].peak_rss_mb:,.0f} MB = "
                              f"{share:.2f}", target, share <= largest)


def flat_memory_check(by_case: dict[str, Measurement], baseline_by_case: dict[str, Measurement], sink: str,
                      rows: int, baseline_rows: int | None) -> TargetCheck:
    """Peak RSS above set-up at ``rows`` against the same at ``baseline_rows``: memory flat in input size."""
    label = f"{sink} peak RSS above set-up, {rows:,} vs {baseline_rows or MEMORY_BASELINE_ROWS:,} rows"
    target = f"within {FLAT_MEMORY_MB} MB"
    if sink not in by_case:
        return TargetCheck(label, "not run", target)
    if sink not in baseline_by_case or baseline_rows is None:
        return TargetCheck(label, f"{by_case[sink].peak_above_setup_mb:,.0f} MB at {rows:,} rows; no run at the "
                                  "smaller size (only when --rows is above it)", target)
    large, small = by_case[sink].peak_above_setup_mb, baseline_by_case[sink].peak_above_setup_mb
    return TargetCheck(label, f"{large:,.0f} vs {small:,.0f} MB: {large - small:+,.0f} MB", target,
                       abs(large - small) <= FLAT_MEMORY_MB)


def peak_memory_check(by_case: dict[str, Measurement], sink: str, limit_mb: int) -> TargetCheck:
    label = f"{sink} peak RSS of the whole task process"
    if sink not in by_case:
        return TargetCheck(label, "not run", f"< {limit_mb} MB")
    return TargetCheck(label, f"{by_case[sink].peak_rss_mb:,.0f} MB", f"< {limit_mb} MB",
                       by_case[sink].peak_rss_mb < limit_mb)


def flat_pages_check(by_case: dict[str, Measurement], case: str) -> TargetCheck:
    """Peak RSS after the last page against after the first: memory flat in the number of pages."""
    label = f"{case} peak RSS after the last page vs after page 1"
    target = f"within {FLAT_PAGES_MB} MB"
    peaks = by_case[case].page_peak_rss_bytes if case in by_case else []
    if len(peaks) < 2:
        return TargetCheck(label, "not run", target)
    first, last = peaks[0] / 2**20, peaks[-1] / 2**20
    return TargetCheck(label, f"{last:,.0f} vs {first:,.0f} MB: {last - first:+,.1f} MB", target,
                       last - first <= FLAT_PAGES_MB)


def bulk_read_checks(by_case: dict[str, Measurement]) -> list[TargetCheck]:
    """Issue #12's targets for Bulk Read exports; none when no Bulk Read case ran."""
    if not set(BULK_READ_CASES) & by_case.keys():
        return []
    speeds = []
    for ours, reference, bound in BULK_READ_SPEED_TARGETS:
        check = speed_check(by_case, ours, reference, bound)
        if (ours, reference) in PROPOSED_RESTATEMENTS:
            check = dataclasses.replace(check, label=f"{check.label}; proposed restatement of #12's PostgreSQL target")
        speeds.append(check)
    return [*speeds, *(flat_pages_check(by_case, case) for case in BULK_READ_SINK_CASES)]


def target_checks(measurements: Sequence[Measurement], baseline: Sequence[Measurement] = (),
                  *, rows: int, baseline_rows: int | None = None) -> list[TargetCheck]:
    """Every target of issue #11, in its order, those of issue #12 when a Bulk Read case ran, then rows for
    information (no target).

    ``baseline`` holds our sink cases measured at ``baseline_rows`` in the same run, for the
    memory-flatness targets.
    """
    by_case = {m.case: m for m in measurements}
    baseline_by_case = {m.case: m for m in baseline}
    checks = [speed_check(by_case, ours, reference, bound) if kind == "speed"
              else memory_share_check(by_case, ours, reference, bound)
              for kind, ours, reference, bound in PAIR_TARGETS]
    checks += [flat_memory_check(by_case, baseline_by_case, sink, rows, baseline_rows) for sink in SINK_CASES]
    checks += [peak_memory_check(by_case, sink, PEAK_RSS_TARGET_MB[sink]) for sink in SINK_CASES]
    checks += bulk_read_checks(by_case)
    checks += [speed_check(by_case, ours, reference, None) for ours, reference in SPEED_INFORMATION
               if ours in by_case and reference in by_case]
    return checks


def render_markdown(measurements: Sequence[Measurement], manifest: ResultManifest, *, machine: Sequence[str],
                    repeat: int, notes: Sequence[str] = (), baseline: Sequence[Measurement] = (),
                    baseline_rows: int | None = None, bulk_read: BulkReadExport | None = None) -> str:
    """The results table, every target with its verdict (yes / NO / not measured), and the machine, as markdown."""
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"Measured {today} with `python -m benchmarks.run --rows {manifest.rows}` "
        f"(best of {repeat} per case; every case's destination checked against the input).",
        "",
        f"Input: one Bulk Write result zip, {manifest.rows:,} rows, {manifest.csv_bytes / 1e6:,.1f} MB of CSV "
        f"deflated to {manifest.zip_bytes / 1e6:,.1f} MB, served by the sandbox over HTTP on 127.0.0.1.",
        "",
        "| case | seconds | CSV MB/s | rows/s | peak RSS MB | RSS after setup MB | Arrow pool peak MB | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if bulk_read is not None:
        lines[5:5] = ["", f"Bulk Read input: {bulk_read.records:,} {BULK_READ_MODULE} records of "
                      f"{len(bulk_read.fields)} fields in {len(bulk_read.page_counts)} pages, "
                      f"{bulk_read.csv_bytes / 1e6:,.1f} MB of CSV deflated to {bulk_read.zip_bytes / 1e6:,.1f} MB "
                      "(the sandbox's page zips, downloaded once, served from disk)."]
    for m in measurements:
        lines.append(
            f"| {CASE_LABELS[m.case]} | {m.seconds:.1f} | {m.mb_per_second:.1f} | {m.rows_per_second:,.0f} | "
            f"{m.peak_rss_mb:,.0f} | {m.rss_after_setup_bytes / 2**20:,.0f} | {m.arrow_peak_bytes / 2**20:,.0f} | "
            f"{m.cpu_seconds:.1f} |"
        )
    if baseline:
        lines += ["", f"Our sinks at {baseline_rows:,} rows (same run), for the memory targets:", "",
                  "| case | seconds | peak RSS MB | RSS after setup MB | peak above setup MB |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {m.case} | {m.seconds:.1f} | {m.peak_rss_mb:,.0f} | {m.rss_after_setup_bytes / 2**20:,.0f} | "
                  f"{m.peak_above_setup_mb:,.0f} |" for m in baseline]
    paged = [m for m in measurements if m.page_peak_rss_bytes]
    if paged:
        lines += ["", "Bulk Read: peak RSS MB after each page:", "",
                  "| case | " + " | ".join(f"page {n}" for n in range(1, len(paged[0].page_peak_rss_bytes) + 1)) + " |",
                  "|---|" + "---:|" * len(paged[0].page_peak_rss_bytes)]
        lines += [f"| {m.case} | " + " | ".join(f"{peak / 2**20:,.1f}" for peak in m.page_peak_rss_bytes) + " |"
                  for m in paged]
    lines += ["", "| ratio | value | target | met |", "|---|---:|---:|---|"]
    for check in target_checks(measurements, baseline, rows=manifest.rows, baseline_rows=baseline_rows):
        lines.append(f"| {check.label} | {check.value} | {check.target} | {check.verdict} |")
    lines += ["", "Machine:", "", *machine, *notes, ""]
    return "\n".join(lines)


def write_results(markdown: str, path: Path = RESULTS_PATH) -> None:
    """Replace the measured part of ``path``, keeping the hand-written analysis after the marker."""
    analysis = ""
    if path.exists():
        text = path.read_text()
        if ANALYSIS_MARKER in text:
            analysis = text[text.index(ANALYSIS_MARKER):]
    path.write_text(markdown + ("\n" + analysis if analysis else "\n" + ANALYSIS_MARKER + "\n"))


# --- the command -----------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_from_sandbox(zip_paths: Sequence[Path], env: dict[str, str]) -> Iterator[tuple[list[tuple[str, str]], Any]]:
    """Start the Zoho sandbox serving each of ``zip_paths`` as a finished job; yields (job id, download URL)
    for each, in order, and the sandbox (for the Bulk Read export).

    The zips (GBs at full size) are streamed from disk, so the sandbox is told their folder as
    ``files_dir``: they must share one. Adds the sandbox's Airflow connection to ``env``.
    """
    from airflow_provider_zohobulk.sandbox import ZohoSandbox

    folders = {path.parent for path in zip_paths}
    if len(folders) != 1:
        raise ValueError(f"the zips must be in one folder, not {sorted(map(str, folders))}")
    with ZohoSandbox(files_dir=folders.pop()) as sandbox:
        job_ids = [sandbox.create_job_from_zip(path) for path in zip_paths]
        env.update(sandbox.airflow_connection_env())
        os.environ.update(sandbox.airflow_connection_env())
        from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

        hook = ZohoCrmHook(ZOHO_CONN_ID)
        yield [(job_id, hook.get_bulk_write_job(job_id)["result"]["download_url"]) for job_id in job_ids], sandbox


def mint_access_token() -> str:
    """Mint (and cache, for the case processes) the token once, so no case pays for it."""
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    return ZohoCrmHook(ZOHO_CONN_ID).get_access_token()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"data rows (default {DEFAULT_ROWS:,})")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is reported")
    parser.add_argument("--cases", default=",".join(CASE_ORDER), help="comma-separated, of " +
                        ", ".join(ALL_CASES) + " (default: all but the Bulk Read ones)")
    parser.add_argument("--bulk-read-records", type=int, default=DEFAULT_BULK_READ_RECORDS,
                        help=f"records the Bulk Read cases export, in {BULK_READ_PAGES} pages "
                             f"(default {DEFAULT_BULK_READ_RECORDS:,})")
    parser.add_argument("--profile", action="store_true",
                        help="sample each case with py-spy (all threads) and print where the time goes; "
                             "implies --no-write")
    parser.add_argument("--no-write", action="store_true", help="print the table but leave results.md alone")
    parser.add_argument("--baseline-rows", type=int, default=MEMORY_BASELINE_ROWS,
                        help="the smaller input our sink cases also run on, for the memory-flatness targets "
                             f"(default {MEMORY_BASELINE_ROWS:,}; only when --rows is larger)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run at --baseline-rows (the memory-flatness targets read 'not measured')")
    args = parser.parse_args(argv)
    if args.profile:
        find_py_spy()  # fail before the long part
        args.no_write = True
    all_cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    cases = [case for case in all_cases if case not in BULK_READ_CASES]
    bulk_read_cases = [case for case in all_cases if case in BULK_READ_CASES]
    unknown = set(cases) - set(ALL_CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")

    load_at_start = os.getloadavg()[0]
    zip_path, manifest = ensure_result_zip(args.rows)
    print(f"input: {zip_path} ({manifest.csv_bytes / 1e6:,.1f} MB of CSV, {manifest.rows:,} rows)")
    baseline_cases = [case for case in cases if case in SINK_CASES]
    baseline_input: tuple[Path, ResultManifest] | None = None
    if baseline_cases and not args.no_baseline and args.rows > args.baseline_rows:
        baseline_input = ensure_result_zip(args.baseline_rows)
        print(f"memory baseline: {baseline_input[0]} ({args.baseline_rows:,} rows) for {', '.join(baseline_cases)}")
    with tempfile.TemporaryDirectory(prefix="zohobulk-bench-") as scratch:
        scratch_dir = Path(scratch)
        work_dir = scratch_dir / "work"
        work_dir.mkdir()
        profile_dir = scratch_dir / "profiles" if args.profile else None
        if profile_dir:
            profile_dir.mkdir()
        own_env = {
            "AIRFLOW_HOME": str(scratch_dir / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "ZOHOBULK_TOKEN_CACHE_DIR": str(scratch_dir / "tokens"),
        }
        os.environ.update(own_env)  # before anything imports Airflow
        env = {**os.environ}
        from tests.fixtures.postgres import throwaway_postgres

        baseline: list[Measurement] = []
        bulk_read: BulkReadExport | None = None
        with (
            throwaway_postgres(dbname="zohobulk_bench", synchronous_commit=False) as postgres,
            serve_from_sandbox([zip_path, *([baseline_input[0]] if baseline_input else [])], env) as (jobs, sandbox),
        ):
            env.update(postgres.airflow_conn_env(PG_CONN_ID))
            import psycopg

            with psycopg.connect(postgres.dsn) as connection:
                pg_version = connection.execute("SHOW server_version").fetchone()[0]
            access_token = mint_access_token()
            (job_id, url), *baseline_jobs = jobs
            measurements = run_benchmark(
                zip_path=zip_path, manifest=manifest, download_url=url, job_id=job_id,
                access_token=access_token, pg_dsn=postgres.dsn, env=env, work_dir=work_dir,
                cases=cases, repeat=args.repeat, profile_dir=profile_dir,
            )
            if bulk_read_cases:
                page_dir = DATA_DIR / f"bulk_read_pages_{os.getpid()}"
                try:
                    print(f"Bulk Read: {args.bulk_read_records:,} records in {BULK_READ_PAGES} pages")
                    bulk_read = prepare_bulk_read_export(sandbox, args.bulk_read_records, BULK_READ_PAGES, page_dir)
                    measurements += run_bulk_read_benchmark(
                        export=bulk_read, access_token=access_token, pg_dsn=postgres.dsn, env=env,
                        work_dir=work_dir, cases=bulk_read_cases, repeat=args.repeat, profile_dir=profile_dir,
                    )
                finally:
                    shutil.rmtree(page_dir, ignore_errors=True)
            if baseline_input is not None:
                (baseline_job_id, baseline_url), = baseline_jobs
                print(f"the same sinks at {args.baseline_rows:,} rows, for the memory targets")
                baseline = run_benchmark(
                    zip_path=baseline_input[0], manifest=baseline_input[1], download_url=baseline_url,
                    job_id=baseline_job_id, access_token=access_token, pg_dsn=postgres.dsn, env=env,
                    work_dir=work_dir, cases=baseline_cases, repeat=args.repeat,
                )
        load_note = (f"- Load average (1 min): {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
                     "(the machine is shared: compare ratios within one run)")
        markdown = render_markdown(measurements, manifest, machine=machine_description(pg_version),
                                   repeat=args.repeat, notes=[load_note], baseline=baseline,
                                   baseline_rows=args.baseline_rows if baseline else None, bulk_read=bulk_read)
        print(markdown)
        if profile_dir:
            print_profiles(profile_dir)
    if not args.no_write:
        write_results(markdown)
        print(f"written to {RESULTS_PATH}")


# --- profiling -------------------------------------------------------------------------------------


def find_py_spy() -> str:
    """The py-spy executable: on PATH, or named by ``$PY_SPY``; py-spy samples every thread."""
    found = (os.environ.get("PY_SPY") or shutil.which("py-spy")
             or shutil.which("py-spy", path=str(Path(sys.executable).parent)))  # the venv's, when not activated
    if not found:
        raise SystemExit("--profile needs py-spy: `pip install py-spy` (or set PY_SPY=/path/to/py-spy)")
    return found


IDLE_FRAMES = frozenset({"wait (threading.py)", "Condition.wait (threading.py)", "Event.wait (threading.py)"})


def frame_name(frame: str) -> str:
    """``to_canonical (airflow_provider_zohobulk/bulk_result.py:203)`` -> ``to_canonical (bulk_result.py)``."""
    function, _, location = frame.partition(" (")
    file_name = location.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{function} ({file_name})" if file_name else function


def summarise_stacks(path: Path, top: int = 20) -> str:
    """Own and inclusive samples per function from py-spy's raw (collapsed) stacks.

    Stacks inside imports are left out (set-up, which is not timed), and so are threads blocked on a
    lock or queue (py-spy cannot always tell those from busy ones: a ``Queue.put`` with a timeout
    wakes up regularly). Samples of all threads are counted, so "own" adds up to 100 % of busy
    samples, not of wall-clock time.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or "_find_and_load" in stack:
            continue
        count = int(count_text)
        frames = [frame_name(frame) for frame in stack.split(";")]
        if frames[-1] in IDLE_FRAMES:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} busy samples (about {total / 100:.1f} CPU s in Python-visible threads)",
             "", "| own % | inclusive % | function |", "|---:|---:|---|"]
    shown = [name for name, _ in own.most_common(top)]
    shown += [name for name, _ in inclusive.most_common(top) if name not in shown]
    for name in sorted(shown, key=lambda n: (-own[n], -inclusive[n]))[:top * 2]:
        lines.append(f"| {100 * own[name] / total:.1f} | {100 * inclusive[name] / total:.1f} | `{name}` |")
    return "\n".join(lines)


def print_profiles(profile_dir: Path) -> None:
    for path in sorted(profile_dir.glob("*.stacks")):
        print(f"\n## where {path.stem} spends its time\n")
        print(summarise_stacks(path))


if __name__ == "__main__":
    main()
