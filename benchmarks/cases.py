"""The benchmark cases, each run alone in a fresh process: ``python -m benchmarks.cases CONFIG RESULT``.

Why a process per case: peak memory (``VmHWM``) is per process, so only a fresh process tells
what one way of loading costs; and imports stay per case too (the naive case never imports Airflow,
the ceiling never imports a sink), so the baseline each one pays is its own.

Every case is split in two: ``setup`` (imports, objects, connections: not timed) returns ``run``
(download, unzip, decode, write, commit: timed). ``run`` returns what went through, and the parent
(:mod:`benchmarks.run`) checks it, and the destination itself, against the generated input.

The cases:

* ``ceiling``: the hook's HTTP download + stream-unzip + pyarrow's streaming CSV reader, into nothing.
  As fast as the libraries go: what any pipeline built on them can at best approach.
* ``ours_parquet`` / ``ours_duckdb`` / ``ours_postgres``: the provider's pipeline exactly as the
  operator drives it (``read_bulk_write_result`` + ``ResultStats`` + ``load_batches`` into a sink).
* ``naive_pandas``: what people write by hand: ``requests.get(...).content``, ``zipfile``,
  ``pandas.read_csv(dtype=str)``, ``to_parquet``. Everything in memory.
* ``dlt_duckdb``: what a Python engineer writes with dlt (its ``duckdb`` extra): a ``dlt.resource``
  yielding the ceiling's Arrow batches, ``pipeline.run(..., write_disposition="replace")`` into a
  DuckDB file. dlt's working directories stay inside the case's work directory; telemetry is off.
* ``duckdb_by_hand``: what an expert writes without us: ``requests`` streams the zip to a temporary
  file, ``zipfile`` extracts the CSV to disk, DuckDB's ``read_csv(..., all_varchar = true)`` (all its
  threads) loads it with ``CREATE TABLE ... AS``.
* ``raw_copy``: the same CSV bytes piped straight into PostgreSQL ``COPY ... (FORMAT csv)``: the
  server's own speed on the raw CSV, for reference.
* ``canonical_copy``: the exact bytes SqlSink sends to ``COPY`` for these rows, encoded before the
  clock starts, copied into SqlSink's own table in SqlSink's own transaction: the ceiling for any
  loader of the canonical layout into PostgreSQL.

Bulk Read exports (issue #12): a module's records in several page zips, one job each.

* ``ours_bulk_read_parquet`` / ``ours_bulk_read_postgres``: the pages downloaded one after the other
  with the hook, read with ``read_export_page`` and loaded with ``load_export_batches`` in one load,
  as ``ZohoBulkReadOperator`` does (pages named ``<module>-<page:05d>.csv``), into ObjectStorageSink
  (one Parquet file per page) or SqlSink (``replace``). The peak RSS is read after each page.
* ``naive_bulk_read_pandas``: per page ``requests.get(...).content``, ``zipfile``,
  ``pandas.read_csv(dtype=str)``, ``to_parquet``.
* ``bulk_read_copy``: every page's CSV bytes from stream-unzip straight into one PostgreSQL ``COPY``
  into a table of text columns: the server's own speed on the raw CSV, for reference (it checks and
  adds nothing, and its table has none of the export's own columns).
* ``bulk_read_export_copy``: the export's rows exactly as SqlSink stores them (module columns, ``_job_id``,
  ``_page``, ``_row_number``; ``_loaded_at`` from the table's default), encoded as SqlSink's COPY bytes
  before the clock starts, one file per page, and copied into SqlSink's own export table in SqlSink's
  own replace transaction: the ceiling for any loader of the export layout into PostgreSQL, as
  ``canonical_copy`` is for the Bulk Write result (the peer of ``ours_bulk_read_postgres``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

__all__ = ["CASES", "CaseConfig", "CaseResult", "main", "run_case"]

#: Canonical columns of the raw COPY table: the CSV's own header, as text.
RAW_COPY_COLUMNS = ("last_name", "email", "company", "record_id", "status", "errors")
ZOHO_CONN_ID = "zoho_crm_default"
PG_CONN_ID = "bench_postgres"
#: The table our sinks load into (DuckDB and PostgreSQL, and canonical_copy: SqlSink's table); the
#: raw COPY case and the DuckDB cases that are not ours have their own.
RESULTS_TABLE = "bulk_write_results"
RAW_TABLE = "raw_copy_results"
#: dlt's table, inside its dataset (a DuckDB schema); dlt names the CSV's columns in snake case.
DLT_DATASET = "bench"
DLT_TABLE = "dlt_results"
BY_HAND_TABLE = "by_hand_results"
#: What each case leaves in its work directory, removed by the runner after the destination is checked.
OURS_PARQUET_DIR = "ours"
OURS_DUCKDB_FILE = "ours.duckdb"
NAIVE_PARQUET_FILE = "naive.parquet"
DLT_DUCKDB_FILE = "dlt.duckdb"
DLT_WORK_DIR = "dlt"
BY_HAND_DUCKDB_FILE = "by_hand.duckdb"
CANONICAL_PAYLOAD_FILE = "canonical_copy.csv"
CHUNK_SIZE = 1 << 16
#: Bulk Read: the module exported, our export table, the raw COPY table, and the cases' outputs.
BULK_READ_MODULE = "Leads"
BULK_READ_TABLE = "bulk_read_leads"
BULK_READ_COPY_TABLE = "bulk_read_copy_leads"
OURS_BULK_READ_DIR = "ours_bulk_read"
NAIVE_BULK_READ_DIR = "naive_bulk_read"
#: bulk_read_export_copy's pre-encoded COPY payload, one file per page.
EXPORT_PAYLOAD_DIR = "bulk_read_export_copy"


class JsonConfig:
    """A dataclass a parent hands to a case's process as a JSON file, readable by this user only: it may
    hold a token, so it is never logged."""

    @classmethod
    def load(cls, path: Path) -> Self:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.touch(mode=0o600)
        path.write_text(json.dumps(asdict(self)))


@dataclass
class CaseConfig(JsonConfig):
    """Everything a case process needs, written as JSON by the parent (never logged: holds a token)."""

    case: str
    download_url: str
    job_id: str
    work_dir: str
    access_token: str = ""
    pg_dsn: str = ""
    #: The result zip on disk: only canonical_copy reads it, to encode its COPY payload before the clock starts.
    zip_path: str = ""
    #: Bulk Read cases: each page's download path and job id, in page order, and the exported fields.
    page_urls: list[str] = field(default_factory=list)
    page_job_ids: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    #: Bulk Read: each page's zip on disk, in page order; only bulk_read_export_copy reads them, to encode
    #: its COPY payload before the clock starts.
    page_zip_paths: list[str] = field(default_factory=list)


@dataclass
class CaseOutput:
    """What ``run`` saw go through; ``destination`` is where the rows are, for the parent to check."""

    rows: int
    by_status: dict[str, int]
    errors_by_code: dict[str, int] | None = None
    destination: list[str] = field(default_factory=list)
    #: Bulk Read cases: the process's peak RSS (``VmHWM``) after each page was loaded, in page order.
    page_peak_rss_bytes: list[int] = field(default_factory=list)


@dataclass
class CaseResult:
    """One case's measurements, from inside its process."""

    case: str
    seconds: float
    cpu_seconds: float
    rss_after_setup_bytes: int
    peak_rss_bytes: int
    output: CaseOutput
    #: The most Arrow's memory pool held at once (0 when the case does not use pyarrow): tells how
    #: much of the peak is Arrow buffers (batches in flight) and how much is everything else.
    arrow_peak_bytes: int = 0

    @classmethod
    def load(cls, path: Path) -> CaseResult:
        raw = json.loads(path.read_text())
        raw["output"] = CaseOutput(**raw["output"])
        return cls(**raw)


def status_counts(counter: Counter[str], values: Any) -> None:
    """Add a pyarrow string array's value counts to ``counter`` (vectorised)."""
    import pyarrow.compute as pc

    for entry in pc.value_counts(values).to_pylist():
        counter[entry["values"] or "(missing)"] += entry["counts"]


class ChunkReader(io.RawIOBase):
    """A read-only raw stream over an iterator of byte chunks, for readers that want a file."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks: Iterator[bytes] = iter(chunks)
        self.pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = memoryview(chunk)
        count = min(len(buffer), len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        return count


# --- the cases ------------------------------------------------------------------------------------


def streamed_csv_batches(config: CaseConfig) -> Callable[[], Iterator[Any]]:
    """Set up the ceiling's path; each call of the returned function downloads the zip and yields its batches.

    The path: ``ZohoCrmHook.stream_download`` + ``stream_unzip`` + pyarrow's streaming CSV reader with
    every column as text. The ceiling counts the batches; the dlt case hands them to dlt. Imports and
    the hook happen here, in set-up, so that the timed part pays for none of them.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from stream_unzip import stream_unzip

    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    hook = ZohoCrmHook(ZOHO_CONN_ID)
    block_size = 1 << 20

    def batches() -> Iterator[Any]:
        with hook.stream_download(config.download_url, job_id=config.job_id) as download:
            for _name, _size, member in stream_unzip(download, chunk_size=CHUNK_SIZE):
                source = io.BufferedReader(ChunkReader(member), buffer_size=block_size)
                # Column types are given by name, so the header is read first (peek leaves it in place).
                header_line = source.peek(1 << 16).split(b"\n", 1)[0].decode("utf-8-sig")
                header = next(csv.reader([header_line.rstrip("\r")]))
                reader = pacsv.open_csv(
                    source,
                    read_options=pacsv.ReadOptions(block_size=block_size, use_threads=False),
                    parse_options=pacsv.ParseOptions(newlines_in_values=True),
                    convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string())),
                )
                try:
                    yield from reader
                finally:
                    reader.close()

    return batches


def ceiling(config: CaseConfig) -> Callable[[], CaseOutput]:
    """Download + unzip + pyarrow's own streaming CSV reader (all columns text), into nothing."""
    batches = streamed_csv_batches(config)

    def run() -> CaseOutput:
        rows = 0
        by_status: Counter[str] = Counter()
        for batch in batches():
            rows += batch.num_rows
            status_counts(by_status, batch.column("STATUS"))
        return CaseOutput(rows=rows, by_status=dict(by_status))

    return run


def ours(config: CaseConfig, make_sink: Callable[[], Any]) -> Callable[[], CaseOutput]:
    """The provider's pipeline, driven the way ``ZohoBulkWriteResultOperator`` drives it."""
    from airflow_provider_zohobulk.bulk_result import ResultStats, read_bulk_write_result, use_lean_memory_pool
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
    from airflow_provider_zohobulk.sinks.base import load_batches

    use_lean_memory_pool()  # as the operator does
    hook = ZohoCrmHook(ZOHO_CONN_ID)
    sink = make_sink()

    def run() -> CaseOutput:
        stats = ResultStats()

        def counted(batches: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
            for file_name, batch in batches:
                stats.add(file_name, batch)
                yield file_name, batch

        with hook.stream_download(config.download_url, job_id=config.job_id) as download:
            destination = load_batches(sink, config.job_id,
                                       counted(read_bulk_write_result(download, job_id=config.job_id)))
        summary = stats.as_dict()
        return CaseOutput(rows=summary["rows"], by_status=summary["by_status"],
                          errors_by_code=summary["errors_by_code"], destination=list(destination))

    return run


def ours_parquet(config: CaseConfig) -> Callable[[], CaseOutput]:
    from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink

    return ours(config, lambda: ObjectStorageSink(str(Path(config.work_dir) / OURS_PARQUET_DIR / "{file}.parquet")))


def ours_duckdb(config: CaseConfig) -> Callable[[], CaseOutput]:
    from airflow_provider_zohobulk.sinks.duckdb import DuckDBSink

    return ours(config, lambda: DuckDBSink(str(Path(config.work_dir) / OURS_DUCKDB_FILE), RESULTS_TABLE))


def ours_postgres(config: CaseConfig) -> Callable[[], CaseOutput]:
    from airflow_provider_zohobulk.sinks.sql import SqlSink

    return ours(config, lambda: SqlSink(PG_CONN_ID, RESULTS_TABLE))


def naive_pandas(config: CaseConfig) -> Callable[[], CaseOutput]:
    """The hand-written way: whole body in memory, zipfile, pandas, to_parquet."""
    import zipfile

    import pandas
    import requests

    target = Path(config.work_dir) / NAIVE_PARQUET_FILE

    def run() -> CaseOutput:
        response = requests.get(config.download_url,
                                headers={"Authorization": f"Zoho-oauthtoken {config.access_token}"}, timeout=600)
        response.raise_for_status()
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".csv"))
            with archive.open(name) as member:
                frame = pandas.read_csv(member, dtype=str)
        frame.to_parquet(target)
        by_status = {str(k): int(v) for k, v in frame["STATUS"].value_counts(dropna=False).items()}
        return CaseOutput(rows=len(frame), by_status=by_status, destination=[str(target)])

    return run


def raw_copy(config: CaseConfig) -> Callable[[], CaseOutput]:
    """The CSV bytes straight into ``COPY ... FROM STDIN (FORMAT csv, HEADER true)``; the server parses."""
    import psycopg
    from stream_unzip import stream_unzip

    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    hook = ZohoCrmHook(ZOHO_CONN_ID)
    connection = psycopg.connect(config.pg_dsn)
    columns = ", ".join(f"{name} text" for name in RAW_COPY_COLUMNS)
    connection.execute(f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} ({columns})")
    connection.commit()

    def run() -> CaseOutput:
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {RAW_TABLE}")
            with hook.stream_download(config.download_url, job_id=config.job_id) as download, cursor.copy(
                f"COPY {RAW_TABLE} FROM STDIN (FORMAT csv, HEADER true)"
            ) as copy:
                for _name, _size, member in stream_unzip(download, chunk_size=CHUNK_SIZE):
                    first = True
                    for chunk in member:
                        if first and chunk.startswith(b"\xef\xbb\xbf"):
                            chunk = chunk[3:]
                        first = False
                        copy.write(chunk)
            rows = cursor.rowcount
        connection.close()
        # The server's row count is what COPY reports; the parent counts statuses in the table.
        return CaseOutput(rows=rows, by_status={}, destination=[RAW_TABLE])

    return run


def dlt_duckdb(config: CaseConfig) -> Callable[[], CaseOutput]:
    """dlt as a Python engineer uses it: a resource of the ceiling's Arrow batches, run into a DuckDB file.

    dlt's defaults otherwise (extract to load-package files, normalize, load with its thread pool);
    its pipelines and data directories go to the work directory, and its telemetry is off (no network
    here, and a benchmark must not report anywhere).
    """
    work_dir = Path(config.work_dir) / DLT_WORK_DIR
    os.environ["DLT_DATA_DIR"] = str(work_dir / "data")  # read when dlt is imported
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    import dlt

    batches = streamed_csv_batches(config)
    database = Path(config.work_dir) / DLT_DUCKDB_FILE
    pipeline = dlt.pipeline(
        pipeline_name="zohobulk_bench", pipelines_dir=str(work_dir / "pipelines"), dataset_name=DLT_DATASET,
        destination=dlt.destinations.duckdb(str(database)),
    )

    rows = 0

    @dlt.resource(name=DLT_TABLE)
    def bulk_write_result() -> Iterator[Any]:
        nonlocal rows
        for batch in batches():
            rows += batch.num_rows
            yield batch

    def run() -> CaseOutput:
        pipeline.run(bulk_write_result(), write_disposition="replace").raise_on_failed_jobs()
        # The rows handed to dlt; the parent counts the rows and statuses in the table.
        return CaseOutput(rows=rows, by_status={}, destination=[str(database)])

    return run


def duckdb_by_hand(config: CaseConfig) -> Callable[[], CaseOutput]:
    """The expert's way without us: zip to a temporary file, CSV extracted to disk, DuckDB's own reader.

    ``requests`` streams the body to disk (with the OAuth header, as ``naive_pandas`` sends it),
    ``zipfile`` extracts the CSV member, and ``CREATE TABLE ... AS SELECT * FROM read_csv(...)``
    loads it with every column as text and all of DuckDB's threads. The temporary files are removed
    inside the timed part, as the script would.
    """
    import tempfile
    import zipfile

    import duckdb
    import requests

    database = Path(config.work_dir) / BY_HAND_DUCKDB_FILE

    def run() -> CaseOutput:
        with tempfile.TemporaryDirectory(dir=config.work_dir) as scratch:
            zip_file = Path(scratch) / "result.zip"
            with requests.get(config.download_url, stream=True, timeout=600,
                              headers={"Authorization": f"Zoho-oauthtoken {config.access_token}"}) as response:
                response.raise_for_status()
                with open(zip_file, "wb") as target:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        target.write(chunk)
            with zipfile.ZipFile(zip_file) as archive:
                name = next(n for n in archive.namelist() if n.endswith(".csv"))
                csv_path = archive.extract(name, scratch)
            with duckdb.connect(str(database)) as connection:
                csv_literal = "'" + csv_path.replace("'", "''") + "'"
                loaded = connection.execute(f"CREATE TABLE {BY_HAND_TABLE} AS "
                                            f"SELECT * FROM read_csv({csv_literal}, all_varchar = true)").fetchone()
        # The parent counts the statuses in the table.
        return CaseOutput(rows=int(loaded[0]) if loaded else 0, by_status={}, destination=[str(database)])

    return run


def write_sql_sink_copy_payload(zip_path: str, job_id: str, target: str) -> int:
    """Write the bytes SqlSink's PostgreSQL load sends to ``COPY`` for this zip's rows; returns the row count.

    The pipeline's canonical batches (``read_bulk_write_result``), each checked with ``conform_batch``
    and encoded with ``encode_csv(include_header=False)``, exactly as ``SqlSink`` does in its
    PostgreSQL ``write`` (which slices a batch into ``batch_rows`` pieces first: CSV rows are encoded
    one by one, so the bytes are the same). Runs in a child process of the case (see
    :func:`canonical_copy`), so that the case's own peak memory is its COPY's alone.
    """
    from airflow_provider_zohobulk.bulk_result import read_bulk_write_result
    from airflow_provider_zohobulk.sinks.formats import conform_batch, encode_csv
    from benchmarks.stages import file_chunks

    rows = 0
    with open(target, "wb") as payload:
        for file_name, batch in read_bulk_write_result(file_chunks(Path(zip_path)), job_id=job_id):
            conformed = conform_batch(batch, job_id=job_id, file_name=file_name, destination=RESULTS_TABLE)
            payload.write(encode_csv(conformed, include_header=False))
            rows += batch.num_rows
    return rows


def canonical_copy(config: CaseConfig) -> Callable[[], CaseOutput]:
    """SqlSink's PostgreSQL load with the rows already encoded: the ceiling for the canonical layout.

    Set-up (not timed) encodes the payload in a child process (:func:`write_sql_sink_copy_payload`)
    and looks the Airflow connection up. The timed part is SqlSink's own PostgreSQL session: ``open``
    connects, creates the table (its DDL, its key), takes the job's lock, deletes the job's earlier
    rows and starts the same ``COPY`` statement; the payload's bytes are written into that COPY and
    ``commit`` ends it in the one transaction. SqlSink has no public way to send bytes that are
    already encoded, so the case writes to its open load's ``copy``; it fails loudly if that changes.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from airflow_provider_zohobulk.sinks.sql import SqlSink

    payload = Path(config.work_dir) / CANONICAL_PAYLOAD_FILE
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as encoder:
        rows = encoder.submit(write_sql_sink_copy_payload, config.zip_path, config.job_id, str(payload)).result()
    sink = SqlSink(PG_CONN_ID, RESULTS_TABLE)
    _ = sink.asset_uri  # imports Airflow's connection lookup and resolves the connection now, in set-up

    def run() -> CaseOutput:
        sink.open(config.job_id)
        try:
            copy = getattr(getattr(sink, "_load", None), "copy", None)
            if copy is None:
                raise RuntimeError("SqlSink's PostgreSQL load no longer exposes its COPY as `_load.copy`: "
                                   "update benchmarks.cases.canonical_copy")
            with open(payload, "rb") as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    copy.write(block)
        except BaseException:
            sink.abort()
            raise
        destination = sink.commit()
        # The rows encoded; the parent counts the rows and statuses in the table.
        return CaseOutput(rows=rows, by_status={}, destination=destination)

    return run


# --- Bulk Read exports ------------------------------------------------------------------------------


def page_file_name(page: int) -> str:
    """The name the operator gives a page for the sink (``Leads-00001.csv``): ObjectStorageSink names
    the page's object after it."""
    return f"{BULK_READ_MODULE}-{page:05d}.csv"


def ours_bulk_read(config: CaseConfig, make_sink: Callable[[], Any]) -> Callable[[], CaseOutput]:
    """The provider's export pipeline, driven the way ``ZohoBulkReadOperator`` loads its pages."""
    from airflow_provider_zohobulk.bulk_read import read_export_page
    from airflow_provider_zohobulk.bulk_result import use_lean_memory_pool
    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook
    from airflow_provider_zohobulk.sinks.base import ExportLoad, load_export_batches

    use_lean_memory_pool()  # as the operator does
    hook = ZohoCrmHook(ZOHO_CONN_ID)
    sink = make_sink()
    load = ExportLoad(BULK_READ_MODULE, config.page_job_ids[0], "replace")

    def run() -> CaseOutput:
        rows = 0
        by_status: Counter[str] = Counter()
        page_peaks: list[int] = []

        def every_page() -> Iterator[tuple[str, Any]]:
            nonlocal rows
            for page, (url, job_id) in enumerate(zip(config.page_urls, config.page_job_ids, strict=True), 1):
                with hook.stream_download(url, job_id=job_id) as download:
                    for _member, batch in read_export_page(download, job_id=job_id, page=page):
                        rows += batch.num_rows
                        status_counts(by_status, batch.column("Lead_Status"))
                        yield page_file_name(page), batch
                # Resumed after the sink wrote the page's last batch: the page is loaded.
                page_peaks.append(peak_rss_bytes())

        destination = load_export_batches(sink, load, every_page())
        return CaseOutput(rows=rows, by_status=dict(by_status), destination=list(destination),
                          page_peak_rss_bytes=page_peaks)

    return run


def ours_bulk_read_parquet(config: CaseConfig) -> Callable[[], CaseOutput]:
    from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink

    return ours_bulk_read(
        config, lambda: ObjectStorageSink(str(Path(config.work_dir) / OURS_BULK_READ_DIR / "{file}.parquet")))


def ours_bulk_read_postgres(config: CaseConfig) -> Callable[[], CaseOutput]:
    from airflow_provider_zohobulk.sinks.sql import SqlSink

    return ours_bulk_read(config, lambda: SqlSink(PG_CONN_ID, BULK_READ_TABLE))


def naive_bulk_read_pandas(config: CaseConfig) -> Callable[[], CaseOutput]:
    """The hand-written way, page by page: whole body in memory, zipfile, pandas, one Parquet file per page."""
    import zipfile

    import pandas
    import requests

    target_dir = Path(config.work_dir) / NAIVE_BULK_READ_DIR

    def run() -> CaseOutput:
        target_dir.mkdir(exist_ok=True)
        rows = 0
        by_status: Counter[str] = Counter()
        destination = []
        for page, url in enumerate(config.page_urls, 1):
            response = requests.get(url, timeout=600,
                                    headers={"Authorization": f"Zoho-oauthtoken {config.access_token}"})
            response.raise_for_status()
            with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
                name = next(n for n in archive.namelist() if n.endswith(".csv"))
                with archive.open(name) as member:
                    frame = pandas.read_csv(member, dtype=str)
            target = target_dir / f"page-{page:05d}.parquet"
            frame.to_parquet(target)
            rows += len(frame)
            by_status.update({str(k): int(v) for k, v in frame["Lead_Status"].value_counts(dropna=False).items()})
            destination.append(str(target))
        return CaseOutput(rows=rows, by_status=dict(by_status), destination=destination)

    return run


def bulk_read_copy(config: CaseConfig) -> Callable[[], CaseOutput]:
    """Every page's CSV bytes into one ``COPY ... (FORMAT csv, HEADER true)`` of a text-column table."""
    import psycopg
    from stream_unzip import stream_unzip

    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    hook = ZohoCrmHook(ZOHO_CONN_ID)
    connection = psycopg.connect(config.pg_dsn)
    columns = ", ".join(f'"{name}" text' for name in config.fields)
    connection.execute(f"CREATE TABLE IF NOT EXISTS {BULK_READ_COPY_TABLE} ({columns})")
    connection.commit()

    def run() -> CaseOutput:
        rows = 0
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {BULK_READ_COPY_TABLE}")
            for url, job_id in zip(config.page_urls, config.page_job_ids, strict=True):
                with hook.stream_download(url, job_id=job_id) as download, cursor.copy(
                    f"COPY {BULK_READ_COPY_TABLE} FROM STDIN (FORMAT csv, HEADER true)"
                ) as copy:
                    for _name, _size, member in stream_unzip(download, chunk_size=CHUNK_SIZE):
                        for chunk in member:
                            copy.write(chunk)
                rows += cursor.rowcount
        connection.close()
        # The parent counts the statuses in the table.
        return CaseOutput(rows=rows, by_status={}, destination=[BULK_READ_COPY_TABLE])

    return run


def write_export_copy_payloads(page_zip_paths: list[str], page_job_ids: list[str], target_dir: str,
                               table: str) -> tuple[int, list[str]]:
    """Write, one file per page, the bytes SqlSink's PostgreSQL export load sends to ``COPY`` for these
    pages; returns the row count and the COPY's columns (module columns, then the meta columns).

    Each page's batches come from ``read_export_page`` (the page's own job id and number, as the
    operator reads them), are checked with ``check_export_batch`` and encoded with
    ``encode_csv(include_header=False, flat=True)``, as ``_PostgresExportLoad.write`` does (it slices a
    batch into ``batch_rows`` pieces first: CSV rows are encoded one by one, so the bytes are the same).
    Runs in a child process of the case (see :func:`bulk_read_export_copy`), so that the case's own
    peak memory is its COPY's alone.
    """
    from airflow_provider_zohobulk.bulk_read import EXPORT_META_COLUMNS, read_export_page
    from airflow_provider_zohobulk.sinks.base import check_export_batch
    from airflow_provider_zohobulk.sinks.formats import encode_csv
    from benchmarks.stages import file_chunks

    rows = 0
    columns: list[str] | None = None
    for page, (zip_path, job_id) in enumerate(zip(page_zip_paths, page_job_ids, strict=True), 1):
        with open(Path(target_dir) / f"page-{page:05d}.csv", "wb") as payload:
            for file_name, batch in read_export_page(file_chunks(Path(zip_path)), job_id=job_id, page=page):
                module_columns = check_export_batch(batch, sink=f"SqlSink for table {table!r}", job_id=job_id,
                                                    file_name=file_name)
                page_columns = [*module_columns, *EXPORT_META_COLUMNS]
                if columns is None:
                    columns = page_columns
                elif page_columns != columns:  # ours would start a second COPY; this peer models one
                    raise RuntimeError(f"page {page} has the columns {page_columns}, page 1 {columns}")
                payload.write(encode_csv(batch, include_header=False, flat=True))
                rows += batch.num_rows
    if columns is None:
        raise RuntimeError("no page to encode")
    return rows, columns


def bulk_read_export_copy(config: CaseConfig) -> Callable[[], CaseOutput]:
    """SqlSink's PostgreSQL export load (replace) with the rows already encoded: the ceiling for the
    export layout, as :func:`canonical_copy` is for the canonical one.

    Set-up (not timed) encodes each page's payload in a child process
    (:func:`write_export_copy_payloads`) and looks the Airflow connection up. The timed part is SqlSink's
    own export session: ``open_export`` connects, takes the table's lock and empties the table when it
    exists (``DELETE``); the load's ``_copy_into`` (what its first ``write`` calls) creates the table with
    SqlSink's DDL, in the transaction, and starts the same ``COPY ... FROM STDIN (FORMAT csv)`` of the
    same columns; every page's bytes are written into that one COPY and ``commit`` ends it in the one
    transaction. SqlSink has no public way to send bytes that are already encoded, so the case uses its
    open load's ``_copy_into`` and ``copy``; it fails loudly if they change.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from airflow_provider_zohobulk.sinks.base import ExportLoad
    from airflow_provider_zohobulk.sinks.sql import SqlSink

    payload_dir = Path(config.work_dir) / EXPORT_PAYLOAD_DIR
    payload_dir.mkdir(exist_ok=True)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as encoder:
        rows, columns = encoder.submit(write_export_copy_payloads, config.page_zip_paths, config.page_job_ids,
                                       str(payload_dir), BULK_READ_TABLE).result()
    payloads = sorted(payload_dir.glob("page-*.csv"))
    sink = SqlSink(PG_CONN_ID, BULK_READ_TABLE)
    _ = sink.asset_uri  # imports Airflow's connection lookup and resolves the connection now, in set-up
    load = ExportLoad(BULK_READ_MODULE, config.page_job_ids[0], "replace")

    def run() -> CaseOutput:
        sink.open_export(load)
        try:
            export = getattr(sink, "_load", None)
            start_copy = getattr(export, "_copy_into", None)
            if start_copy is None:
                raise RuntimeError("SqlSink's PostgreSQL export load no longer has `_copy_into`: "
                                   "update benchmarks.cases.bulk_read_export_copy")
            start_copy(tuple(columns))
            copy = getattr(export, "copy", None)
            if copy is None:
                raise RuntimeError("SqlSink's PostgreSQL export load no longer exposes its COPY as `copy`: "
                                   "update benchmarks.cases.bulk_read_export_copy")
            for path in payloads:
                with open(path, "rb") as source:
                    while block := source.read(1 << 20):
                        copy.write(block)
        except BaseException:
            sink.abort()
            raise
        destination = sink.commit()
        # The rows encoded; the parent counts the rows, statuses and pages in the table.
        return CaseOutput(rows=rows, by_status={}, destination=destination)

    return run


CASES: dict[str, Callable[[CaseConfig], Callable[[], CaseOutput]]] = {
    "ceiling": ceiling,
    "ours_parquet": ours_parquet,
    "ours_duckdb": ours_duckdb,
    "ours_postgres": ours_postgres,
    "naive_pandas": naive_pandas,
    "raw_copy": raw_copy,
    "dlt_duckdb": dlt_duckdb,
    "duckdb_by_hand": duckdb_by_hand,
    "canonical_copy": canonical_copy,
    "ours_bulk_read_parquet": ours_bulk_read_parquet,
    "ours_bulk_read_postgres": ours_bulk_read_postgres,
    "naive_bulk_read_pandas": naive_bulk_read_pandas,
    "bulk_read_copy": bulk_read_copy,
    "bulk_read_export_copy": bulk_read_export_copy,
}


def arrow_pool_peak() -> int:
    pyarrow = sys.modules.get("pyarrow")
    return int(pyarrow.default_memory_pool().max_memory() or 0) if pyarrow is not None else 0


def peak_rss_bytes() -> int:
    """This process's own high-water RSS (``VmHWM``).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark over ``fork`` + ``execve`` into
    the child's ``ru_maxrss`` (measured: every case "peaked" at the runner's size), while ``VmHWM``
    belongs to the address space the case itself built.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(config: CaseConfig) -> CaseResult:
    """Set the case up, then time its ``run``."""
    run = CASES[config.case](config)
    rss_after_setup = current_rss_bytes()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    output = run()
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return CaseResult(
        case=config.case, seconds=seconds, cpu_seconds=cpu, rss_after_setup_bytes=rss_after_setup,
        peak_rss_bytes=peak_rss_bytes(),
        output=output,
        arrow_peak_bytes=arrow_pool_peak(),
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m benchmarks.cases CONFIG.json RESULT.json")
    config = CaseConfig.load(Path(args[0]))
    result = run_case(config)
    Path(args[1]).write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
