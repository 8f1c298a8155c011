"""Where the time goes: CPU seconds of each pipeline stage alone, and PostgreSQL's side of COPY.

``python -m benchmarks.stages --rows 1000000``; a Bulk Read export page instead (issue #12):
``python -m benchmarks.stages --bulk-read-records 200000`` (both quoting styles Zoho may use).

``run.py`` measures whole cases by wall clock on a shared 2-core machine, where other work shifts
the numbers from one minute to the next. This script splits our pipeline into its stages and runs
each one alone, in this one thread, from the cached zip on disk (no HTTP, no readahead threads),
timing it by *CPU time* (``time.process_time``, best of ``--repeat``), which other processes on
the machine disturb far less. Each stage's input is materialised by the previous stage first, so a
stage's time is its own. The PostgreSQL part times COPY of pre-encoded bytes (wall clock: the
server does the work), into the sink's table and into variants of it, to show what the server
spends on each feature of the canonical table (JSONB parsing, the primary key).

Stages that belong to a sink repeat what the sink does with its public pieces
(``formats.encode_csv`` for ``SqlSink``'s COPY; ``ParquetEncoder`` for the
Parquet sink), so the numbers follow the code as it changes.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from benchmarks.generate import ensure_result_zip

__all__ = ["bulk_read_stage_costs", "cpu_seconds", "main", "postgres_costs", "stage_costs"]


def file_chunks(path: Path, size: int = 1 << 16) -> Iterator[bytes]:
    with open(path, "rb") as source:
        yield from iter(lambda: source.read(size), b"")


def cpu_seconds(work: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best CPU time of ``repeat`` runs of ``work`` (this process, all threads), and its last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.process_time()
        result = work()
        best = min(best, time.process_time() - started)
    return best, result


def wall_seconds(work: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def stage_costs(zip_path: Path, repeat: int) -> tuple[list[tuple[str, float]], list[pa.RecordBatch], list[bytes]]:
    """CPU seconds per stage; also the canonical batches and the COPY payload, for the PostgreSQL part."""
    from stream_unzip import stream_unzip

    from airflow_provider_zohobulk.bulk_result import ResultStats, to_canonical
    from airflow_provider_zohobulk.sinks.formats import ParquetEncoder, encode_csv
    from airflow_provider_zohobulk.stream.decode import iter_csv_batches

    costs: list[tuple[str, float]] = []

    def unzip() -> list[bytes]:
        return [chunk for _name, _size, member in stream_unzip(file_chunks(zip_path)) for chunk in member]

    seconds, csv_chunks = cpu_seconds(unzip, repeat)
    costs.append(("stream-unzip (deflate + CRC)", seconds))

    def ceiling_decode() -> int:
        names = [n.strip() for n in b"".join(csv_chunks[:1]).split(b"\n", 1)[0].decode("utf-8-sig").split(",")]
        reader = pacsv.open_csv(
            pa.BufferReader(pa.py_buffer(b"".join(csv_chunks))),
            read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())))
        return sum(batch.num_rows for batch in reader)

    seconds, _ = cpu_seconds(ceiling_decode, repeat)
    costs.append(("pyarrow open_csv alone (the ceiling's decoder)", seconds))

    seconds, decoded = cpu_seconds(lambda: list(iter_csv_batches(iter(csv_chunks), file_name="f.csv")), repeat)
    costs.append(("stream/decode iter_csv_batches", seconds))

    def canonical() -> list[pa.RecordBatch]:
        out, next_row = [], 1
        for batch in decoded:
            out.append(to_canonical(batch, job_id="1", file_name="f.csv", first_row_number=next_row))
            next_row += batch.num_rows
        return out

    seconds, canonical_batches = cpu_seconds(canonical, repeat)
    costs.append(("bulk_result to_canonical", seconds))

    def stats() -> None:
        counter = ResultStats()
        for batch in canonical_batches:
            counter.add("f.csv", batch)

    costs.append(("bulk_result ResultStats.add", cpu_seconds(stats, repeat)[0]))

    def parquet() -> None:
        encoder = ParquetEncoder(io.BytesIO())
        for batch in canonical_batches:
            encoder.write(batch)
        encoder.finish()

    costs.append(("sinks/formats ParquetEncoder (zstd, dictionaries on repeated columns)",
                  cpu_seconds(parquet, repeat)[0]))

    def sql_encode() -> list[bytes]:
        out = []
        for batch in canonical_batches:
            out.append(encode_csv(batch, include_header=False).to_pybytes())
        return out

    seconds, payload = cpu_seconds(sql_encode, repeat)
    costs.append(("sinks/formats encode_csv (client side of SqlSink's COPY)", seconds))
    return costs, canonical_batches, [csv_chunks, payload]


def export_page_csv(records: int, *, quote_all: bool, fields: int = 20) -> bytes:
    """One Bulk Read page's CSV of ``records`` Leads, as the sandbox writes it: values quoted only where
    needed (``quote_all=False``) or every one (``quote_all=True``, the sandbox's ``bulk_read_quote_all``)."""
    import csv

    from airflow_provider_zohobulk.sandbox.bulk_read import FIELDS, Dataset

    dataset = Dataset.create("Leads", records)
    names = list(FIELDS["Leads"])[:fields]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    writer.writerow(names)
    writer.writerows(dataset.rows(range(records), names))
    return buffer.getvalue().encode("utf-8")


def bulk_read_stage_costs(records: int, repeat: int, *, quote_all: bool) -> tuple[int, list[tuple[str, float]]]:
    """CPU seconds per stage of one export page (no unzip: it costs what it costs for results), and the
    page's CSV size: the decoder and its stray-quote check alone, the export layout, the Parquet
    encoder of ObjectStorageSink and the COPY payload of SqlSink."""
    from airflow_provider_zohobulk.bulk_read import to_export_layout
    from airflow_provider_zohobulk.sinks.formats import ParquetEncoder, encode_csv
    from airflow_provider_zohobulk.stream.decode import first_stray_quote, iter_csv_batches

    data = export_page_csv(records, quote_all=quote_all)
    chunks = [data[start:start + (1 << 16)] for start in range(0, len(data), 1 << 16)]
    blocks = [data[start:start + (1 << 20)] for start in range(0, len(data), 1 << 20)]
    costs = [("stray-quote check alone (first_stray_quote, 1 MiB blocks)",
              cpu_seconds(lambda: [first_stray_quote(block) for block in blocks], repeat)[0])]
    seconds, decoded = cpu_seconds(
        lambda: list(iter_csv_batches(iter(chunks), file_name="f.csv", empty_as_null=False)), repeat)
    costs.append(("stream/decode iter_csv_batches (export: empty is \"\")", seconds))

    def layout() -> list[pa.RecordBatch]:
        out, next_row = [], 1
        for batch in decoded:
            out.append(to_export_layout(batch, job_id="1", page=1, file_name="f.csv", first_row_number=next_row))
            next_row += batch.num_rows
        return out

    seconds, batches = cpu_seconds(layout, repeat)
    costs.append(("bulk_read to_export_layout", seconds))

    def parquet() -> int:
        stream = io.BytesIO()
        encoder = ParquetEncoder(stream, flat=True)
        for batch in batches:
            encoder.write(batch)
        encoder.finish()
        return stream.tell()

    seconds, size = cpu_seconds(parquet, repeat)
    costs.append((f"sinks/formats ParquetEncoder flat ({size / 1e6:.1f} MB file)", seconds))
    costs.append(("sinks/formats encode_csv flat (client side of SqlSink's COPY)",
                  cpu_seconds(lambda: [encode_csv(batch, include_header=False, flat=True) for batch in batches],
                              repeat)[0]))
    return len(data), costs


_JSONB = "errors jsonb, errors_raw text, source jsonb"
_JSON = "errors json, errors_raw text, source json"
_TEXT = "errors text, errors_raw text, source text"
_KEY = "PRIMARY KEY (job_id, file_name, row_number)"

#: (label, nested columns, key clause inside CREATE TABLE, collation of job_id/file_name, statement after it)
POSTGRES_VARIANTS = (
    ("SqlSink's table: jsonb errors/source + PRIMARY KEY", _JSONB, _KEY, "", ""),
    ("same, without the PRIMARY KEY", _JSONB, "", "", ""),
    ("json (not jsonb) columns + PRIMARY KEY", _JSON, _KEY, "", ""),
    ("json (not jsonb) columns, no PRIMARY KEY", _JSON, "", "", ""),
    ("text instead of jsonb, no PRIMARY KEY", _TEXT, "", "", ""),
    ('jsonb + PRIMARY KEY, key columns COLLATE "C"', _JSONB, _KEY, ' COLLATE "C"', ""),
    ("jsonb, index on job_id only", _JSONB, "", "", "CREATE INDEX ON stage_canonical (job_id)"),
    ("json, index on job_id only", _JSON, "", "", "CREATE INDEX ON stage_canonical (job_id)"),
    ("json, BRIN index on job_id", _JSON, "", "", "CREATE INDEX ON stage_canonical USING brin (job_id)"),
)


def postgres_costs(
    dsn: str, raw_csv: list[bytes], canonical_csv: list[bytes], repeat: int, *, expected_rows: int
) -> list[tuple[str, float]]:
    """Wall seconds of COPY of the same rows into the sink's table and into variants, plus raw CSV.

    Every COPY must load ``expected_rows`` rows (checked), so a variant cannot look fast by loading less.
    """
    import psycopg

    results = []
    with psycopg.connect(dsn, autocommit=True) as connection:
        def copy(table: str, ddl: str, payload: list[bytes], options: str) -> Callable[[], None]:
            def work() -> None:
                connection.execute(f"DROP TABLE IF EXISTS {table}")
                connection.execute(ddl)
                with connection.transaction(), connection.cursor() as cursor:
                    with cursor.copy(f"COPY {table} FROM STDIN ({options})") as writer:
                        for piece in payload:
                            writer.write(piece)
                    if cursor.rowcount != expected_rows:
                        raise RuntimeError(f"COPY into {table} loaded {cursor.rowcount} rows, not {expected_rows}")
            return work

        raw_ddl = "CREATE TABLE stage_raw (last_name text, email text, company text, record_id text, status text, " \
                  "errors text)"
        results.append(("raw CSV bytes into 6 text columns (the raw_copy case)",
                        wall_seconds(copy("stage_raw", raw_ddl, raw_csv, "FORMAT csv, HEADER true"), repeat)))
        for label, nested, key, collate, after in POSTGRES_VARIANTS:
            ddl = (f"CREATE TABLE stage_canonical (job_id text{collate} NOT NULL, file_name text{collate} NOT NULL, "
                   f"row_number bigint NOT NULL, record_id text, status text, {nested}{', ' + key if key else ''})"
                   + (f"; {after}" if after else ""))
            results.append((f"canonical rows: {label}",
                            wall_seconds(copy("stage_canonical", ddl, canonical_csv, "FORMAT csv"), repeat)))
        connection.execute("DROP TABLE IF EXISTS stage_raw")
        connection.execute("DROP TABLE IF EXISTS stage_canonical")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per stage; the best is reported")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL part")
    parser.add_argument("--bulk-read-records", type=int, default=0,
                        help="instead: the stages of one Bulk Read page of this many Leads records, quoted where "
                             "needed and quoted throughout")
    args = parser.parse_args(argv)
    if args.bulk_read_records:
        for quote_all in (False, True):
            size, costs = bulk_read_stage_costs(args.bulk_read_records, args.repeat, quote_all=quote_all)
            print(f"\n{args.bulk_read_records:,} Leads records, 20 fields, {size / 1e6:,.1f} MB of CSV, "
                  f"{'every value quoted' if quote_all else 'quoted where needed'}; CPU seconds, best of "
                  f"{args.repeat}, one thread\n")
            print("| stage | CPU s | MB of CSV per CPU s |\n|---|---:|---:|")
            for label, seconds in costs:
                print(f"| {label} | {seconds:.3f} | {size / 1e6 / seconds:,.0f} |")
        return
    zip_path, manifest = ensure_result_zip(args.rows)
    mb = manifest.csv_bytes / 1e6
    costs, _, (raw_csv, canonical_csv) = stage_costs(zip_path, args.repeat)
    print(f"{manifest.rows:,} rows, {mb:,.1f} MB of CSV; CPU seconds, best of {args.repeat}, one thread\n")
    print("| stage | CPU s | MB of CSV per CPU s |\n|---|---:|---:|")
    for label, seconds in costs:
        print(f"| {label} | {seconds:.2f} | {mb / seconds:,.0f} |")
    if args.no_postgres:
        return
    from tests.fixtures.postgres import throwaway_postgres

    with throwaway_postgres(dbname="zohobulk_bench", synchronous_commit=False) as server:
        print(f"\nPostgreSQL COPY of pre-encoded bytes ({sum(map(len, canonical_csv)) / 1e6:,.1f} MB canonical, "
              f"{mb:,.1f} MB raw); wall seconds, best of {args.repeat}\n")
        print("| COPY into | wall s | rows/s |\n|---|---:|---:|")
        for label, seconds in postgres_costs(server.dsn, raw_csv, canonical_csv, args.repeat,
                                             expected_rows=manifest.rows):
            print(f"| {label} | {seconds:.2f} | {manifest.rows / seconds:,.0f} |")


if __name__ == "__main__":
    main()
