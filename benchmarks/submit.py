"""Issue #13's benchmark: Bulk Write submission of a Parquet file, against plain ``requests`` uploads.

``python -m benchmarks.submit --rows 1000000`` (``--rows 20000`` for a quick look; ``--no-write`` to
leave ``results_submit.md`` alone).

What a run does: a Leads-like Parquet file of ``--rows`` rows (and one of ``--baseline-rows``, for the
memory target) is generated once and cached under ``benchmarks/.data``; the local Zoho sandbox starts
in this process on 127.0.0.1; then, ``--repeat`` times, for each size, two cases run, each in a fresh
Python process of its own (peak memory is per process):

* ``ours_submit_parquet``: the core path of ``ZohoBulkWriteOperator`` (``ObjectStorageSource.batches``
  -> ``plan_submission`` -> ``write_upload_files`` -> per file ``ZohoCrmHook.upload_bulk_write_file``
  and ``create_bulk_write_job``, insert). Its zips are kept for the next case. The operator's
  ledger (an Airflow Variable, saved twice per file) is left out: it needs Airflow's database, and is
  not what the issue measures.
* ``raw_upload_requests``: the very same zips uploaded with what a user writes by hand,
  ``requests.post(url, files={"file": open(path, "rb")}, headers=...)``, same sandbox, same token.

At the full size the uploads alone are then compared once more, side by side: ``ours_upload_only``
(the hook's ``upload_bulk_write_file`` over the same zips, no jobs) and raw, in the order A B B A,
so that a drift in the machine's load weighs on both alike.

After each case the sandbox is asked what it received (``uploaded_files()``, ``write_jobs()``, each
job's counts): the right files, every record, one job per file, or the run stops with
``OutputMismatchError``. The sandbox is reset before every case.

Upload throughput is zipped MB (10^6 bytes) per second of time spent in the upload calls (for ours,
the sum over the ``upload_bulk_write_file`` calls; for raw, over the ``requests.post`` calls); the
CPU time the client spends in those calls is reported too, since the machine's load does not move
it. Peak memory is the case process's ``VmHWM`` (see :func:`benchmarks.cases.peak_rss_bytes`).
Both sides pay the same sandbox on the other end of the socket, which parses every upload in Python
(most of an upload's time): the ratio tells how much the client adds, not what Zoho would take. The
sandbox answers a job creation at once and computes the result in a background thread, as Zoho
processes a file after answering; the garbage collector of the process it runs in, a habit Zoho does
not share, is switched off while the benchmark runs and put back after (:func:`isolated_environment`);
``--sandbox-gc`` keeps it, to see what it costs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.cases import JsonConfig, arrow_pool_peak, current_rss_bytes, peak_rss_bytes
from benchmarks.generate import DATA_DIR
from benchmarks.run import TargetCheck

__all__ = [
    "CASES",
    "SubmitConfig",
    "SubmitResult",
    "ensure_leads_parquet",
    "main",
    "render_markdown",
    "run_submit_benchmark",
    "target_checks",
    "verify_case",
]

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = Path(__file__).resolve().parent / "results_submit.md"
ZOHO_CONN_ID = "zoho_crm_default"
MODULE = "Leads"
DEFAULT_ROWS = 1_000_000
BASELINE_ROWS = 100_000
#: Zoho's records per upload file (the operator's default).
MAX_RECORDS = 25_000
#: Issue #13's targets: peak RSS at --rows within this of --baseline-rows; ours's upload MB/s at least
#: this share of raw requests'.
FLAT_MEMORY_MB = 30
UPLOAD_RATIO_TARGET = 0.8
CASE_ORDER = ("ours_submit_parquet", "raw_upload_requests", "ours_upload_only")
CASE_LABELS = {
    "ours_submit_parquet": "ours: Parquet -> ObjectStorageSource -> write_upload_files -> hook upload + create job",
    "raw_upload_requests": "raw: requests.post(url, files={'file': open(zip)}) of the same zips",
    "ours_upload_only": "the same zips uploaded with ZohoCrmHook.upload_bulk_write_file alone (no jobs)",
}
#: After the pair, at the full size only: the uploads alone, hook and requests alternating
#: (A B B A, so a drift in the machine's load weighs on both alike), for the client's own cost.
INTERLEAVED = ("ours_upload_only", "raw_upload_requests", "raw_upload_requests", "ours_upload_only")
#: Bump when the generated content changes, so stale cached files are not reused.
GENERATOR_VERSION = 1
#: Rows per Parquet row group: ObjectStorageSource decodes one at a time, so this bounds its memory.
ROW_GROUP_ROWS = 50_000


# --- the input ------------------------------------------------------------------------------------------

LAST_NAMES = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
              "Martinez", "Lopez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson", "Lee", "Perez",
              "Smith, Jr.", "O'Brien", 'The "Rock" Johnson', "Müller", "Østergaard", "Nguyễn", "Żółć")
FIRST_NAMES = ("Ann", "Bob", "Chen", "Dora", "Emil", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lin", "Maria")
COMPANIES = ("Acme Corp", "Globex", "Initech", "Umbrella, Inc.", "Stark Industries", "Wayne Enterprises",
             "Hooli", "Vandelay Industries", "Soylent", "Tyrell Corp", "Cyberdyne Systems", "Wonka & Sons",
             "Ñandú Logística", "Müller GmbH")
CITIES = ("Berlin", "Chennai", "Austin", "São Paulo", "Zürich", "Tokyo", "Lagos", "Kraków", "Toronto",
          "Melbourne", "Paris", "Seattle")
LEAD_SOURCES = ("Advertisement", "Cold Call", "Employee Referral", "External Referral", "Online Store",
                "Partner", "Public Relations", "Sales Email Alias", "Seminar Partner", "Trade Show", "Web Download")
DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "sales.acme.example", "globex.example.co.uk")
DESCRIPTIONS = (
    "Met at the spring trade show; wants a demo of the reporting module.",
    'Asked for "enterprise" pricing, 50 seats, decision in Q3.',
    "Two-line note:\nfollow up after the budget review, not before.",
    "Referred by an existing customer, very interested in the API, integrations and SSO",
    "Prefers e-mail; do not call before 10:00 CET. Speaks Deutsch, English, Français.",
    "",
    "Downloaded the white paper twice; visited pricing page 4 times this week.",
)


def leads_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("Last_Name", pa.string()), ("First_Name", pa.string()), ("Email", pa.string()), ("Company", pa.string()),
        ("Phone", pa.string()), ("City", pa.string()), ("Lead_Source", pa.string()), ("Description", pa.string()),
        ("No_of_Employees", pa.int32()), ("Follow_Up_Date", pa.date32()),
        ("Last_Activity_Time", pa.timestamp("ms", tz="Europe/Berlin")),
    ])


def leads_batch(start: int, stop: int, seed: int = 0) -> Any:
    """Rows ``start`` to ``stop - 1`` of the generated Leads: a function of the row index (and ``seed``)
    alone, vectorised, so any slice can be made in any order and the same rows always come out."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    index = np.arange(start, stop, dtype=np.int64)
    mixed = (index * 2_654_435_761 + seed * 40_503 + 12_345) % (1 << 32)

    def pick(pool: Sequence[str], salt: int) -> Any:
        return pa.array(pool, pa.string()).take(pa.array((mixed // (salt + 1) + salt) % len(pool)))

    last, first = pick(LAST_NAMES, 0), pick(FIRST_NAMES, 3)
    number = pa.array(index.astype(str))
    local = pc.utf8_lower(pc.replace_substring_regex(last, pattern="[^A-Za-z]", replacement=""))
    email = pc.binary_join_element_wise(pc.utf8_lower(first), ".", local, number, "@", pick(DOMAINS, 7), "")
    phone = pc.binary_join_element_wise("+1 555 ", pa.array(((mixed % 9_000_000) + 1_000_000).astype(str)), "")
    employees = pa.array((mixed % 5_000).astype(np.int32))
    employees = pc.if_else(pa.array(mixed % 17 == 0), pa.nulls(len(index), pa.int32()), employees)
    follow_up = pa.array((19_000 + mixed % 2_000).astype(np.int32)).cast(pa.date32())
    activity = pa.array(1_700_000_000_000 + (mixed % 60_000_000_000).astype(np.int64) * 1_000,
                        pa.timestamp("ms", tz="Europe/Berlin"))
    return pa.RecordBatch.from_arrays(
        [last, first, email, pick(COMPANIES, 11), phone, pick(CITIES, 5), pick(LEAD_SOURCES, 13),
         pick(DESCRIPTIONS, 2), employees, follow_up, activity], schema=leads_schema())


def ensure_leads_parquet(rows: int, *, seed: int = 0, data_dir: Path = DATA_DIR) -> Path:
    """The Parquet file of ``rows`` generated Leads, written once (row group by row group, so memory is one
    row group) and found in the cache afterwards."""
    import pyarrow.parquet as pq

    if rows < 1:
        raise ValueError(f"rows must be at least 1, not {rows}")
    path = data_dir / f"submit_leads_r{rows}_s{seed}_v{GENERATOR_VERSION}.parquet"
    if path.exists():
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    try:
        with pq.ParquetWriter(partial, leads_schema(), compression="zstd") as writer:
            for start in range(0, rows, ROW_GROUP_ROWS):
                writer.write_batch(leads_batch(start, min(start + ROW_GROUP_ROWS, rows), seed),
                                   row_group_size=ROW_GROUP_ROWS)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# --- the cases (each in its own process) -----------------------------------------------------------------


@dataclass
class SubmitConfig(JsonConfig):
    """What a case process needs, written as JSON by the parent (0600: it may hold a token; never logged)."""

    case: str
    rows: int
    parquet_path: str
    zip_dir: str
    upload_url: str = ""
    org_id: str = ""
    access_token: str = ""
    #: raw_upload_requests: the zips to upload, in order.
    zip_paths: list[str] = field(default_factory=list)
    max_records: int = 25_000


@dataclass
class SubmitResult:
    """One case's measurements from inside its process, and what it sent (for the parent to check)."""

    case: str
    rows: int
    seconds: float
    build_seconds: float
    upload_seconds: float
    create_seconds: float
    bytes_uploaded: int
    cpu_seconds: float
    rss_after_setup_bytes: int
    peak_rss_bytes: int
    arrow_peak_bytes: int = 0
    upload_cpu_seconds: float = 0.0
    #: One of the upload-only comparisons (:data:`INTERLEAVED`), not the pair the targets are read from.
    interleaved: bool = False
    #: Per file, in order: name, path, rows, zipped bytes, Zoho's file id and (ours) job id.
    files: list[dict[str, Any]] = field(default_factory=list)
    run: int = 1

    @property
    def upload_mb_per_second(self) -> float:
        return self.bytes_uploaded / 1e6 / self.upload_seconds if self.upload_seconds else 0.0

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 2**20

    @property
    def peak_above_setup_mb(self) -> float:
        return (self.peak_rss_bytes - self.rss_after_setup_bytes) / 2**20

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SubmitResult:
        return cls(**raw)


@dataclass
class Timings:
    build: float = 0.0
    upload: float = 0.0
    create: float = 0.0
    #: CPU seconds this process spent inside the upload calls: the client's own cost, which the machine's
    #: load and the server's speed do not change.
    upload_cpu: float = 0.0
    files: list[dict[str, Any]] = field(default_factory=list)


def ours_submit_parquet(config: SubmitConfig) -> Callable[[], Timings]:
    """The operator's core path; set-up (imports, the hook, its token from the cache) is not timed."""
    import itertools

    from airflow_provider_zohobulk.bulk_write_submit import SubmitLimits, plan_submission, write_upload_files
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
    from airflow_provider_zohobulk.sources import ObjectStorageSource

    hook = ZohoCrmHook(ZOHO_CONN_ID)
    hook.get_access_token()  # from the cache the parent filled: no case pays for minting
    source = ObjectStorageSource(config.parquet_path)
    limits = SubmitLimits(max_records=config.max_records)

    def run() -> Timings:
        timings = Timings()
        started = time.perf_counter()
        batches = iter(source.batches())
        first = next(batches)
        plan = plan_submission(first.schema, module=MODULE, operation="insert", limits=limits)
        files = write_upload_files(itertools.chain([first], batches), plan, work_dir=config.zip_dir, limits=limits,
                                   name_prefix=MODULE)
        timings.build = time.perf_counter() - started
        for upload in files:
            began, cpu = time.perf_counter(), time.process_time()
            file_id = hook.upload_bulk_write_file(upload.path, file_name=f"{Path(upload.name).stem}.zip")
            uploaded = time.perf_counter()
            timings.upload_cpu += time.process_time() - cpu
            job_id = hook.create_bulk_write_job(module=plan.module, operation=plan.operation, file_id=file_id,
                                                find_by=plan.find_by, field_mappings=plan.zoho_field_mappings())
            timings.upload += uploaded - began
            timings.create += time.perf_counter() - uploaded
            timings.files.append({"name": f"{Path(upload.name).stem}.zip", "path": upload.path, "rows": upload.rows,
                                  "bytes": upload.zipped_bytes, "file_id": file_id, "job_id": job_id,
                                  "upload_seconds": uploaded - began})
        return timings

    return run


def raw_upload_requests(config: SubmitConfig) -> Callable[[], Timings]:
    """What a user writes by hand: one ``requests.post`` with ``files=`` per zip (requests reads each
    file whole to build the multipart body)."""
    import requests

    headers = {"Authorization": f"Zoho-oauthtoken {config.access_token}", "feature": "bulk-write",
               "X-CRM-ORG": config.org_id}

    def run() -> Timings:
        timings = Timings()
        for path in config.zip_paths:
            began, cpu = time.perf_counter(), time.process_time()
            with open(path, "rb") as zipped:
                response = requests.post(config.upload_url, files={"file": zipped}, headers=headers, timeout=300)
            response.raise_for_status()
            file_id = response.json()["details"]["file_id"]
            took = time.perf_counter() - began
            timings.upload_cpu += time.process_time() - cpu
            timings.upload += took
            timings.files.append({"name": os.path.basename(path), "path": path, "rows": None,
                                  "bytes": os.path.getsize(path), "file_id": file_id, "job_id": None,
                                  "upload_seconds": took})
        return timings

    return run


def ours_upload_only(config: SubmitConfig) -> Callable[[], Timings]:
    """The hook's upload of the given zips, one after the other, without creating jobs: the upload
    phase of ``ours_submit_parquet`` on its own, to compare with raw requests side by side."""
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    hook = ZohoCrmHook(ZOHO_CONN_ID)
    hook.get_access_token()

    def run() -> Timings:
        timings = Timings()
        for path in config.zip_paths:
            began, cpu = time.perf_counter(), time.process_time()
            file_id = hook.upload_bulk_write_file(path, file_name=os.path.basename(path))
            took = time.perf_counter() - began
            timings.upload += took
            timings.upload_cpu += time.process_time() - cpu
            timings.files.append({"name": os.path.basename(path), "path": path, "rows": None,
                                  "bytes": os.path.getsize(path), "file_id": file_id, "job_id": None,
                                  "upload_seconds": took})
        return timings

    return run


CASES: dict[str, Callable[[SubmitConfig], Callable[[], Timings]]] = {
    "ours_submit_parquet": ours_submit_parquet,
    "raw_upload_requests": raw_upload_requests,
    "ours_upload_only": ours_upload_only,
}


def run_case(config: SubmitConfig) -> SubmitResult:
    run = CASES[config.case](config)
    rss_after_setup = current_rss_bytes()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    timings = run()
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return SubmitResult(
        case=config.case, rows=config.rows, seconds=seconds, build_seconds=timings.build,
        upload_seconds=timings.upload, create_seconds=timings.create,
        bytes_uploaded=sum(f["bytes"] for f in timings.files), cpu_seconds=cpu,
        rss_after_setup_bytes=rss_after_setup, peak_rss_bytes=peak_rss_bytes(), arrow_peak_bytes=arrow_pool_peak(),
        upload_cpu_seconds=timings.upload_cpu, files=timings.files,
    )


def case_main(config_path: str, result_path: str) -> None:
    result = run_case(SubmitConfig.load(Path(config_path)))
    Path(result_path).write_text(json.dumps(asdict(result)))


# --- the parent: running and checking -------------------------------------------------------------------


class OutputMismatchError(Exception):
    """The sandbox did not receive what the case says it sent, or not the whole input: the run is invalid."""


def run_case_process(config: SubmitConfig, env: dict[str, str], scratch: Path) -> SubmitResult:
    """Run one case in a fresh interpreter; its stderr is shown when it fails."""
    config_path = scratch / f"{config.case}.config.json"
    result_path = scratch / f"{config.case}.result.json"
    result_path.unlink(missing_ok=True)
    config.save(config_path)
    command = [sys.executable, "-m", "benchmarks.submit", "--run-case", str(config_path), str(result_path)]
    try:
        completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    finally:
        config_path.unlink(missing_ok=True)  # it may hold an access token
    if completed.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"case {config.case} failed with exit code {completed.returncode}:\n"
                           f"{completed.stderr[-6000:]}")
    return SubmitResult.from_dict(json.loads(result_path.read_text()))


def verify_case(result: SubmitResult, sandbox: Any, expected_rows: int,
                expected_files: Sequence[dict[str, Any]] | None = None) -> dict[str, int]:
    """Compare what the sandbox received with what the case sent and the input holds; returns the facts
    checked (files, records, jobs). ``expected_files``: the files the raw case must have sent (ours's).

    Checked: one upload per file, in order, with the file's name, size and record count; all of them
    together hold every input row; ours made one insert job per upload, over that upload, and the jobs'
    counts add up to the input's rows; raw made no job.
    """
    problems: list[str] = []
    uploads = sandbox.uploaded_files()
    sent = result.files
    if len(uploads) != len(sent):
        problems.append(f"the sandbox holds {len(uploads)} uploads, the case sent {len(sent)} files")
    by_id = {upload["file_id"]: upload for upload in uploads}
    for entry in sent:
        upload = by_id.get(entry["file_id"])
        if upload is None:
            problems.append(f"{entry['name']}: file id {entry['file_id']} unknown to the sandbox")
            continue
        if upload["size"] != entry["bytes"]:
            problems.append(f"{entry['name']}: {upload['size']} bytes received, {entry['bytes']} sent")
        if upload["file_name"] != entry["name"]:
            problems.append(f"{entry['name']}: received as {upload['file_name']!r}")
        if entry["rows"] is not None and upload["records"] != entry["rows"]:
            problems.append(f"{entry['name']}: {upload['records']} records received, {entry['rows']} written")
    if expected_files is not None:
        if [(f["name"], f["bytes"]) for f in sent] != [(f["name"], f["bytes"]) for f in expected_files]:
            problems.append("the raw case did not send the files the submission built")
        for entry, built in zip(sent, expected_files, strict=False):
            upload = by_id.get(entry["file_id"])
            if upload is not None and upload["records"] != built["rows"]:
                problems.append(f"{entry['name']}: {upload['records']} records received, {built['rows']} built")
    records = sum(upload["records"] for upload in uploads)
    if records != expected_rows:
        problems.append(f"{records} records uploaded, the input holds {expected_rows}")
    jobs = sandbox.write_jobs()
    job_rows = 0
    if result.case == "ours_submit_parquet":
        if len(jobs) != len(sent):
            problems.append(f"{len(jobs)} Bulk Write jobs created for {len(sent)} files")
        job_files = {job["job_id"]: [r["file_id"] for r in job["resources"]] for job in jobs}
        for entry in sent:
            if job_files.get(entry["job_id"]) != [entry["file_id"]]:
                problems.append(f"{entry['name']}: job {entry['job_id']} is not one job over file {entry['file_id']}")
        wrong = [job["job_id"] for job in jobs if job["operation"] != "insert"
                 or any(r["module"] != MODULE for r in job["resources"])]
        if wrong:
            problems.append(f"jobs {wrong} are not {MODULE} inserts")
        for job in jobs:
            details = sandbox.job_details(job["job_id"]) or {}
            job_rows += sum(int(((r.get("file") or {}).get("total_count")) or 0) for r in details.get("resource", []))
        if job_rows != expected_rows:
            problems.append(f"the jobs' total_count adds up to {job_rows}, the input holds {expected_rows}")
    elif jobs:
        problems.append(f"the raw case created {len(jobs)} jobs; it only uploads")
    if problems:
        raise OutputMismatchError(f"{result.case} at {expected_rows:,} rows: " + "; ".join(problems))
    return {"files": len(uploads), "records": records, "jobs": len(jobs), "job_rows": job_rows}


@dataclass
class SubmitRun:
    """Everything one invocation measured: results per (run, size, case), and the inputs."""

    rows: int
    baseline_rows: int
    repeat: int
    results: list[SubmitResult]
    checks: list[dict[str, Any]]
    parquet_bytes: dict[int, int]
    machine: list[str]
    notes: list[str] = field(default_factory=list)

    def find(self, run: int, rows: int, case: str) -> SubmitResult | None:
        """The case of the pair (not an interleaved repetition)."""
        return next((r for r in self.results
                     if r.run == run and r.rows == rows and r.case == case and not r.interleaved), None)

    def interleaved(self, run: int, case: str) -> list[SubmitResult]:
        return [r for r in self.results if r.run == run and r.rows == self.rows and r.case == case and r.interleaved]


def run_submit_benchmark(
    *,
    rows: int,
    baseline_rows: int | None,
    repeat: int,
    scratch: Path,
    data_dir: Path = DATA_DIR,
    log: Callable[[str], Any] = print,
    sandbox_gc: bool = False,
    max_records: int = MAX_RECORDS,
) -> SubmitRun:
    """Start the sandbox, run every case at each size ``repeat`` times (round robin), check each.

    ``AIRFLOW_HOME``, the token cache directory (both under ``scratch``) and the Zoho connection are set
    in this process's environment while it runs (the hook and the case processes read them), and put
    back afterwards, as is the garbage collector (:func:`isolated_environment`). ``max_records``: records
    per upload file (Zoho's 25,000; lower makes several files of a small input, for the smoke test).
    """
    from airflow_provider_zohobulk.sandbox import ZohoSandbox

    sizes = [baseline_rows, rows] if baseline_rows and baseline_rows < rows else [rows]
    inputs = {size: ensure_leads_parquet(size, data_dir=data_dir) for size in sizes}
    results: list[SubmitResult] = []
    checks: list[dict[str, Any]] = []
    with isolated_environment(scratch, sandbox_gc=sandbox_gc), ZohoSandbox() as sandbox:
        os.environ.update(sandbox.airflow_connection_env(ZOHO_CONN_ID))
        for attempt in range(1, repeat + 1):
            for size in sizes:
                pair, pair_checks = run_pair(sandbox, attempt, size, inputs[size], scratch, log, max_records,
                                             INTERLEAVED if size == rows else ())
                results += pair
                checks += pair_checks
    from benchmarks.run import machine_description

    return SubmitRun(rows=rows, baseline_rows=sizes[0], repeat=repeat, results=results, checks=checks,
                     parquet_bytes={size: path.stat().st_size for size, path in inputs.items()},
                     machine=machine_description(None))


@contextlib.contextmanager
def isolated_environment(scratch: Path, *, sandbox_gc: bool) -> Iterator[None]:
    """The benchmark's process settings, undone on exit (so a test session running it is left as it was).

    The garbage collector: the sandbox serves from this process's threads and remembers every inserted
    value (millions of tuples at 1 M rows, for later updates to find). With the collector on (one run,
    ``--sandbox-gc``) the uploads inside the operator's path took a median 274 ms per file against 130 ms
    for raw requests, while the hook's uploads without jobs matched raw's: the collections pay for the
    state that job creation leaves. Zoho has no such pauses, so it is off unless ``sandbox_gc``.
    """
    from airflow_provider_zohobulk.sandbox import server

    saved_environ = dict(os.environ)
    # One log line per request would drown the results (and cost the server's threads time).
    sandbox_log = logging.getLogger(server.__name__)
    log_level = sandbox_log.level
    sandbox_log.setLevel(logging.WARNING)
    gc_was_enabled = gc.isenabled()
    os.environ.update({
        "AIRFLOW_HOME": str(scratch / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "ZOHOBULK_TOKEN_CACHE_DIR": str(scratch / "tokens"),
    })
    if not sandbox_gc:
        gc.disable()
    try:
        yield
    finally:
        sandbox_log.setLevel(log_level)
        os.environ.clear()
        os.environ.update(saved_environ)
        if gc_was_enabled:
            gc.enable()


def run_pair(sandbox: Any, attempt: int, size: int, parquet: Path, scratch: Path, log: Callable[[str], Any],
             max_records: int = MAX_RECORDS, interleaved: Sequence[str] = ()
             ) -> tuple[list[SubmitResult], list[dict[str, Any]]]:
    """Ours, then raw on ours's zips, then the ``interleaved`` upload-only cases on them, each on a
    freshly reset sandbox and checked right after; the zips are removed at the end."""
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    hook = ZohoCrmHook(ZOHO_CONN_ID)
    token = hook.get_access_token()  # minted once (then cached, also for the case processes)
    zip_dir = scratch / f"zips-{size}"
    shutil.rmtree(zip_dir, ignore_errors=True)
    zip_dir.mkdir()
    checks: list[dict[str, Any]] = []
    try:
        sandbox.reset()
        ours = run_case_process(SubmitConfig("ours_submit_parquet", size, str(parquet), str(zip_dir),
                                             max_records=max_records), env, scratch)
        ours.run = attempt
        checks.append({"run": attempt, "rows": size, "case": ours.case, **verify_case(ours, sandbox, size)})
        log_result(ours, log)
        sandbox.reset()
        results = [ours]
        for position, case in enumerate(("raw_upload_requests", *interleaved)):
            sandbox.reset()
            result = run_case_process(SubmitConfig(
                case, size, str(parquet), str(zip_dir), upload_url=hook.endpoints.upload_url,
                org_id=str(hook.settings.org_id), access_token=token if case == "raw_upload_requests" else "",
                zip_paths=[f["path"] for f in ours.files]), env, scratch)
            result.run = attempt
            result.interleaved = position > 0
            checks.append({"run": attempt, "rows": size, "case": case + (" (interleaved)" if position else ""),
                           **verify_case(result, sandbox, size, expected_files=ours.files)})
            log_result(result, log)
            results.append(result)
    finally:
        sandbox.reset()
        shutil.rmtree(zip_dir, ignore_errors=True)
    return results, checks


def log_result(result: SubmitResult, log: Callable[[str], Any]) -> None:
    log(f"run {result.run}, {result.rows:,} rows, {result.case}: {result.seconds:.1f} s (build "
        f"{result.build_seconds:.1f}, upload {result.upload_seconds:.1f}, create {result.create_seconds:.1f}), "
        f"{len(result.files)} files, {result.bytes_uploaded / 1e6:.1f} MB, {result.upload_mb_per_second:.1f} MB/s "
        f"upload, peak RSS {result.peak_rss_mb:.0f} MB, load average {os.getloadavg()[0]:.1f}")


# --- reporting ----------------------------------------------------------------------------------------------


def target_checks(measured: SubmitRun) -> list[TargetCheck]:
    """Per run: issue #13's two targets at ``rows`` (the upload ratio, the memory flatness), then for
    information the interleaved upload-only comparison, the client's CPU, and the end-to-end ratios."""
    checks: list[TargetCheck] = []
    rows, base = measured.rows, measured.baseline_rows
    for attempt in range(1, measured.repeat + 1):
        ours = measured.find(attempt, rows, "ours_submit_parquet")
        raw = measured.find(attempt, rows, "raw_upload_requests")
        if ours is None or raw is None:
            continue
        ratio = ours.upload_mb_per_second / raw.upload_mb_per_second if raw.upload_mb_per_second else 0.0
        checks.append(TargetCheck(
            f"run {attempt}: upload throughput at {rows:,} rows, ours / raw requests",
            f"{ours.upload_mb_per_second:.1f} / {raw.upload_mb_per_second:.1f} MB/s = {ratio:.2f}",
            f">= {UPLOAD_RATIO_TARGET}", ratio >= UPLOAD_RATIO_TARGET))
        small = measured.find(attempt, base, "ours_submit_parquet") if base != rows else None
        if small is None:
            checks.append(TargetCheck(f"run {attempt}: peak RSS, {rows:,} vs {base:,} rows", "-",
                                      f"within {FLAT_MEMORY_MB} MB", None))
        else:
            grown = ours.peak_rss_mb - small.peak_rss_mb
            checks.append(TargetCheck(
                f"run {attempt}: peak RSS, {rows:,} vs {base:,} rows",
                f"{ours.peak_rss_mb:.0f} vs {small.peak_rss_mb:.0f} MB = {grown:+.1f} MB "
                f"(above set-up: {ours.peak_above_setup_mb - small.peak_above_setup_mb:+.1f})",
                f"within {FLAT_MEMORY_MB} MB", abs(grown) <= FLAT_MEMORY_MB))
        hook_runs, raw_runs = measured.interleaved(attempt, "ours_upload_only"), measured.interleaved(
            attempt, "raw_upload_requests")
        if hook_runs and raw_runs:
            hook_rate, raw_rate = upload_rate(hook_runs), upload_rate(raw_runs)
            checks.append(TargetCheck(
                f"run {attempt}: uploads alone, interleaved (hook, requests, requests, hook), hook / requests",
                f"{hook_rate:.1f} / {raw_rate:.1f} MB/s = {hook_rate / raw_rate:.2f}"))
            checks.append(TargetCheck(
                f"run {attempt}: client CPU in the upload calls per zipped MB, hook / requests",
                f"{cpu_per_mb(hook_runs) * 1e3:.1f} / {cpu_per_mb(raw_runs) * 1e3:.1f} ms"))
        checks.append(TargetCheck(
            f"run {attempt}: median seconds per file upload, raw requests / ours",
            f"{median_upload(raw) * 1e3:.0f} / {median_upload(ours) * 1e3:.0f} ms = "
            f"{median_upload(raw) / median_upload(ours):.2f}"))
        checks.append(TargetCheck(
            f"run {attempt}: end to end, raw upload seconds / ours (build + upload + create jobs)",
            f"{raw.seconds:.1f} / {ours.seconds:.1f} s = {raw.seconds / ours.seconds:.2f}"))
        checks.append(TargetCheck(
            f"run {attempt}: raw upload seconds / ours without job creation (build + upload)",
            f"{raw.seconds:.1f} / {ours.build_seconds + ours.upload_seconds:.1f} s = "
            f"{raw.seconds / (ours.build_seconds + ours.upload_seconds):.2f}"))
    pairs = [(measured.find(n, rows, "ours_submit_parquet"), measured.find(n, rows, "raw_upload_requests"))
             for n in range(1, measured.repeat + 1)]
    pairs = [(ours, raw) for ours, raw in pairs if ours is not None and raw is not None]
    if len(pairs) > 1:
        ours_rate, raw_rate = upload_rate([p[0] for p in pairs]), upload_rate([p[1] for p in pairs])
        checks.append(TargetCheck(
            f"all {len(pairs)} runs together: upload throughput at {rows:,} rows, ours / raw requests",
            f"{ours_rate:.1f} / {raw_rate:.1f} MB/s = {ours_rate / raw_rate:.2f}",
            f">= {UPLOAD_RATIO_TARGET}", ours_rate / raw_rate >= UPLOAD_RATIO_TARGET))
    return checks


def median_upload(result: SubmitResult) -> float:
    """The median seconds of one file's upload call: less moved by a burst of load from elsewhere."""
    return statistics.median(f["upload_seconds"] for f in result.files) if result.files else 0.0


def upload_rate(results: Sequence[SubmitResult]) -> float:
    """Zipped MB per second of upload calls, over several runs of a case together."""
    seconds = sum(r.upload_seconds for r in results)
    return sum(r.bytes_uploaded for r in results) / 1e6 / seconds if seconds else 0.0


def cpu_per_mb(results: Sequence[SubmitResult]) -> float:
    """CPU seconds the client spent in its upload calls per zipped MB."""
    uploaded = sum(r.bytes_uploaded for r in results) / 1e6
    return sum(r.upload_cpu_seconds for r in results) / uploaded if uploaded else 0.0


def render_markdown(measured: SubmitRun) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Bulk Write submission benchmark (issue #13)",
        "",
        f"Measured {today} with `python -m benchmarks.submit --rows {measured.rows} --repeat {measured.repeat}` "
        f"(every run listed; after each case the sandbox's uploads and jobs were checked against the input).",
        "",
        "Input: generated Leads-like Parquet files (7 text columns with commas, quotes, newlines and non-ASCII, "
        "an int32 with nulls, a date, a time-zoned timestamp), "
        + ", ".join(f"{size:,} rows ({nbytes / 1e6:.1f} MB)" for size, nbytes in sorted(measured.parquet_bytes.items()))
        + "; uploads to the local Zoho sandbox over HTTP on 127.0.0.1, in the runner's process.",
        "",
        "| run | rows | case | files | zipped MB | total s | build s | upload s | create jobs s | upload MB/s "
        "| client CPU in uploads s | peak RSS MB | RSS after setup MB | CPU s |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in measured.results:  # in the order they ran
        lines.append(
            f"| {r.run} | {r.rows:,} | {r.case}{' (interleaved)' if r.interleaved else ''} | {len(r.files)} | "
            f"{r.bytes_uploaded / 1e6:.1f} | {r.seconds:.1f} | "
            f"{r.build_seconds:.1f} | {r.upload_seconds:.1f} | {r.create_seconds:.1f} | {r.upload_mb_per_second:.1f} | "
            f"{r.upload_cpu_seconds:.2f} | "
            f"{r.peak_rss_mb:.0f} | {r.rss_after_setup_bytes / 2**20:.0f} | {r.cpu_seconds:.1f} |")
    lines += ["", "Cases: " + "; ".join(f"`{case}`: {label}" for case, label in CASE_LABELS.items()) + ".",
              "", "Checked in the sandbox after each case (files, records received, jobs, the jobs' total_count):",
              "", "| run | rows | case | files | records | jobs | jobs' total_count |",
              "|---:|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {c['run']} | {c['rows']:,} | {c['case']} | {c['files']} | {c['records']:,} | {c['jobs']} | "
              f"{c['job_rows']:,} |" for c in measured.checks]
    lines += ["", "| comparison | value | target | met |", "|---|---:|---:|---|"]
    lines += [f"| {c.label} | {c.value} | {c.target} | {c.verdict} |" for c in target_checks(measured)]
    lines += ["", "Machine:", "", *measured.machine, *measured.notes, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--run-case"]:
        if len(args_in) != 3:
            raise SystemExit("usage: python -m benchmarks.submit --run-case CONFIG.json RESULT.json")
        case_main(args_in[1], args_in[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"input rows (default {DEFAULT_ROWS:,})")
    parser.add_argument("--baseline-rows", type=int, default=BASELINE_ROWS,
                        help=f"the smaller input for the memory target (default {BASELINE_ROWS:,})")
    parser.add_argument("--repeat", type=int, default=2, help="runs of every case at every size (default 2)")
    parser.add_argument("--no-write", action="store_true", help="print the results but leave results_submit.md alone")
    parser.add_argument("--sandbox-gc", action="store_true",
                        help="keep the garbage collector on in the process serving the sandbox (see results_submit.md)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    args = parser.parse_args(args_in)
    load_at_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zohobulk-submit-bench-") as scratch:
        measured = run_submit_benchmark(rows=args.rows, baseline_rows=args.baseline_rows, repeat=args.repeat,
                                        scratch=Path(scratch), sandbox_gc=args.sandbox_gc)
    measured.notes.append(f"- Load average (1 min): {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at "
                          f"the end; the whole benchmark took {time.perf_counter() - started:.0f} s "
                          "(input generation excluded when cached)")
    markdown = render_markdown(measured)
    print(markdown)
    if args.json:
        args.json.write_text(json.dumps({**asdict(measured), "results": [asdict(r) for r in measured.results]},
                                        indent=1, default=str))
    if not args.no_write:
        from benchmarks.run import write_results

        write_results(markdown, RESULTS_PATH)
        print(f"written to {RESULTS_PATH}")


if __name__ == "__main__":
    main()
