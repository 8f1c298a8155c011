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
* ``raw_copy``: the same CSV bytes piped straight into PostgreSQL ``COPY ... (FORMAT csv)``: the
  ceiling for loading PostgreSQL.
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
from typing import Any

__all__ = ["CASES", "CaseConfig", "CaseResult", "main", "run_case"]

#: Canonical columns of the raw COPY table: the CSV's own header, as text.
RAW_COPY_COLUMNS = ("last_name", "email", "company", "record_id", "status", "errors")
ZOHO_CONN_ID = "zoho_crm_default"
PG_CONN_ID = "bench_postgres"
#: The table our sinks load into (DuckDB and PostgreSQL); the raw COPY case has its own.
RESULTS_TABLE = "bulk_write_results"
RAW_TABLE = "raw_copy_results"
CHUNK_SIZE = 1 << 16


@dataclass
class CaseConfig:
    """Everything a case process needs, written as JSON by the parent (never logged: holds a token)."""

    case: str
    download_url: str
    job_id: str
    work_dir: str
    access_token: str = ""
    pg_dsn: str = ""

    @classmethod
    def load(cls, path: Path) -> CaseConfig:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.touch(mode=0o600)
        path.write_text(json.dumps(asdict(self)))


@dataclass
class CaseOutput:
    """What ``run`` saw go through; ``destination`` is where the rows are, for the parent to check."""

    rows: int
    by_status: dict[str, int]
    errors_by_code: dict[str, int] | None = None
    destination: list[str] = field(default_factory=list)


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


def ceiling(config: CaseConfig) -> Callable[[], CaseOutput]:
    """Download + unzip + pyarrow's own streaming CSV reader (all columns text), into nothing."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from stream_unzip import stream_unzip

    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

    hook = ZohoCrmHook(ZOHO_CONN_ID)
    block_size = 1 << 20

    def run() -> CaseOutput:
        rows = 0
        by_status: Counter[str] = Counter()
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
                    for batch in reader:
                        rows += batch.num_rows
                        status_counts(by_status, batch.column("STATUS"))
                finally:
                    reader.close()
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

    return ours(config, lambda: ObjectStorageSink(str(Path(config.work_dir) / "ours" / "{file}.parquet")))


def ours_duckdb(config: CaseConfig) -> Callable[[], CaseOutput]:
    from airflow_provider_zohobulk.sinks.duckdb import DuckDBSink

    return ours(config, lambda: DuckDBSink(str(Path(config.work_dir) / "ours.duckdb"), RESULTS_TABLE))


def ours_postgres(config: CaseConfig) -> Callable[[], CaseOutput]:
    from airflow_provider_zohobulk.sinks.sql import SqlSink

    return ours(config, lambda: SqlSink(PG_CONN_ID, RESULTS_TABLE))


def naive_pandas(config: CaseConfig) -> Callable[[], CaseOutput]:
    """The hand-written way: whole body in memory, zipfile, pandas, to_parquet."""
    import zipfile

    import pandas
    import requests

    target = Path(config.work_dir) / "naive.parquet"

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


CASES: dict[str, Callable[[CaseConfig], Callable[[], CaseOutput]]] = {
    "ceiling": ceiling,
    "ours_parquet": ours_parquet,
    "ours_duckdb": ours_duckdb,
    "ours_postgres": ours_postgres,
    "naive_pandas": naive_pandas,
    "raw_copy": raw_copy,
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
