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

Throughput is uncompressed CSV bytes (and data rows) per second of wall-clock time from the first
HTTP request to the commit. Peak memory is the case process's own high-water RSS (``VmHWM``; not
``ru_maxrss``, which Linux carries over from the runner across fork + exec), and includes what the
interpreter and the imports cost (reported separately as "RSS after setup").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.cases import (
    BY_HAND_DUCKDB_FILE,
    BY_HAND_TABLE,
    CANONICAL_PAYLOAD_FILE,
    DLT_DATASET,
    DLT_DUCKDB_FILE,
    DLT_TABLE,
    DLT_WORK_DIR,
    NAIVE_PARQUET_FILE,
    OURS_DUCKDB_FILE,
    OURS_PARQUET_DIR,
    PG_CONN_ID,
    RAW_TABLE,
    RESULTS_TABLE,
    ZOHO_CONN_ID,
    CaseConfig,
    CaseResult,
)
from benchmarks.generate import DEFAULT_ROWS, ResultManifest, ensure_result_zip

__all__ = ["CASE_ORDER", "Measurement", "OutputMismatchError", "TargetCheck", "render_markdown", "run_benchmark",
           "target_checks"]

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
}
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


def clear_destination(case: str, work_dir: Path, pg_dsn: str) -> None:
    """Remove what a case wrote, so the next repetition starts alike and disk use stays small."""
    duckdb_files = (OURS_DUCKDB_FILE, DLT_DUCKDB_FILE, BY_HAND_DUCKDB_FILE)
    for name in (OURS_PARQUET_DIR, NAIVE_PARQUET_FILE, DLT_WORK_DIR, CANONICAL_PAYLOAD_FILE, *duckdb_files,
                 *(f"{name}.wal" for name in duckdb_files)):
        path = work_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if case in ("ours_postgres", "canonical_copy", "raw_copy"):
        import psycopg

        with psycopg.connect(pg_dsn, autocommit=True) as connection:
            connection.execute(f"DROP TABLE IF EXISTS {RAW_TABLE if case == 'raw_copy' else RESULTS_TABLE}")


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
                    continue
            best[case] = measurement
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


def target_checks(measurements: Sequence[Measurement], baseline: Sequence[Measurement] = (),
                  *, rows: int, baseline_rows: int | None = None) -> list[TargetCheck]:
    """Every target of issue #11, in its order, then rows for information (no target).

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
    checks += [speed_check(by_case, ours, reference, None) for ours, reference in SPEED_INFORMATION
               if ours in by_case and reference in by_case]
    return checks


def render_markdown(measurements: Sequence[Measurement], manifest: ResultManifest, *, machine: Sequence[str],
                    repeat: int, notes: Sequence[str] = (), baseline: Sequence[Measurement] = (),
                    baseline_rows: int | None = None) -> str:
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
def serve_from_sandbox(zip_paths: Sequence[Path], env: dict[str, str]) -> Iterator[list[tuple[str, str]]]:
    """Start the Zoho sandbox serving each of ``zip_paths`` as a finished job; yields (job id, download URL)
    for each, in order.

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
        yield [(job_id, hook.get_bulk_write_job(job_id)["result"]["download_url"]) for job_id in job_ids]


def mint_access_token() -> str:
    """Mint (and cache, for the case processes) the token once, so no case pays for it."""
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    return ZohoCrmHook(ZOHO_CONN_ID).get_access_token()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"data rows (default {DEFAULT_ROWS:,})")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is reported")
    parser.add_argument("--cases", default=",".join(CASE_ORDER), help="comma-separated subset of " +
                        ", ".join(CASE_ORDER))
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
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = set(cases) - set(CASE_ORDER)
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
        with (
            throwaway_postgres(dbname="zohobulk_bench", synchronous_commit=False) as postgres,
            serve_from_sandbox([zip_path, *([baseline_input[0]] if baseline_input else [])], env) as jobs,
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
                                   baseline_rows=args.baseline_rows if baseline else None)
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
