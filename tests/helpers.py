"""Small builders and readers shared by the tests (no I/O of their own)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import zstandard

from airflow_provider_zohobulk.bulk_result import CANONICAL_COLUMNS, canonical_schema, source_type
from airflow_provider_zohobulk.sinks.formats import CSV_SCHEMA

JOB = "4150868000004979001"
MEMBER = "Leads-Leads.csv"


def source_names(rows: list[dict]) -> list[str]:
    """The mapped columns of a member holding ``rows``: every key of their ``source``, first seen first."""
    return list(dict.fromkeys(name for row in rows for name in row.get("source") or {}))


def member_rows(rows: list[dict]) -> list[dict]:
    """``rows`` as one CSV member holds them: every ``source`` has all the member's mapped columns, in the
    same order (:func:`source_names`), a column the row did not name being null."""
    names = source_names(rows)
    return [{**row, "source": {name: (row.get("source") or {}).get(name) for name in names}} for row in rows]


def canonical_batch(job_id: str, file_name: str, rows: list[dict], first_row_number: int = 1,
                    names: list[str] | None = None) -> pa.RecordBatch:
    """Build a canonical batch from short row dicts.

    Each row dict may hold ``record_id``, ``status``, ``errors`` (list of {code, columns}),
    ``errors_raw`` and ``source`` (dict header -> value); missing keys get the canonical empty value.
    ``source`` is the struct of the mapped columns ``names`` (by default :func:`source_names` of
    ``rows``), a column a row does not name being null there (:func:`member_rows`).
    """
    names = source_names(rows) if names is None else names
    columns = {
        "job_id": [job_id] * len(rows),
        "file_name": [file_name] * len(rows),
        "row_number": list(range(first_row_number, first_row_number + len(rows))),
        "record_id": [r.get("record_id") for r in rows],
        "status": [r.get("status", "ADDED") for r in rows],
        "errors": [r.get("errors", []) for r in rows],
        "errors_raw": [r.get("errors_raw") for r in rows],
        "source": [{name: (r.get("source") or {}).get(name) for name in names} for r in rows],
    }
    return pa.RecordBatch.from_pydict(columns, schema=canonical_schema(source_type(tuple(names))))


def sample_rows(count: int, *, seed: int = 0) -> list[dict]:
    """Rows with every awkward value a result can carry: nulls, quotes, commas, newlines, unicode."""
    rows = []
    for i in range(count):
        k = (i + seed) % 4
        if k == 0:
            rows.append({"record_id": f"{4150868000005350003 + i}", "status": "ADDED",
                         "source": {"Last_Name": f"Smith {i}", "Email": f"s{i}@example.com", "Company": "Acme, Inc."}})
        elif k == 1:
            rows.append({"record_id": None, "status": "SKIPPED",
                         "errors": [{"code": "MANDATORY_NOT_FOUND", "columns": ["Company", "Last_Name"]},
                                    {"code": "DUPLICATE_DATA", "columns": ["Email"]}],
                         "errors_raw": "MANDATORY_NOT_FOUND-Company,Last_Name:DUPLICATE_DATA-Email",
                         "source": {"Last_Name": None, "Email": f"dup{i}@example.com", "Company": None}})
        elif k == 2:
            rows.append({"record_id": f"{4150868000005350003 + i}", "status": "UPDATED",
                         "source": {"Last_Name": 'Quote "q" here', "Email": "line\nbreak@example.com",
                                    "Company": "Zürich ☃"}})
        else:
            rows.append({"record_id": None, "status": "UNPROCESSED",
                         "errors": [{"code": "INVALID_DATA", "columns": ["Lead-Source"]}],
                         "errors_raw": "INVALID_DATA-Lead-Source",
                         "source": {"Last_Name": "", "Email": None, "Company": "x"}})
    return rows


def batches_of(rows: list[dict], file_name: str = MEMBER, size: int = 3,
               job_id: str = JOB) -> list[tuple[str, pa.RecordBatch]]:
    """Rows split into several canonical batches with continuing row numbers, as the core yields them
    (every batch of the member has the same mapped columns)."""
    names = source_names(rows)
    pieces = [canonical_batch(job_id, file_name, rows[start:start + size], first_row_number=start + 1, names=names)
              for start in range(0, len(rows), size)]
    return [(file_name, piece) for piece in pieces or [canonical_batch(job_id, file_name, [])]]


def expected_rows(pairs: list[tuple[str, pa.RecordBatch]]) -> list[dict]:
    """The input as plain Python rows, ``source`` as a dict (as every format carries it)."""
    return [row for _, batch in pairs for row in batch.to_pylist()]


def decompressed(data: bytes, suffix: str) -> bytes:
    """``data`` decompressed by the codec its file name's last ``suffix`` names (as is otherwise)."""
    openers = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress,
               ".zst": lambda raw: zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()}
    return openers.get(suffix, lambda raw: raw)(data)


def parse_jsonl(data: bytes) -> list[dict]:
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def parse_csv(data: bytes) -> list[dict]:
    """Read back with pyarrow: quoted "" is an empty string, an empty unquoted field is null."""
    table = pa_csv.read_csv(
        io.BytesIO(data),
        convert_options=pa_csv.ConvertOptions(
            column_types={field.name: field.type for field in CSV_SCHEMA},
            strings_can_be_null=True, quoted_strings_can_be_null=False),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
    )
    assert table.column_names == list(CANONICAL_COLUMNS)
    rows = table.to_pylist()
    for row in rows:
        row["errors"] = json.loads(row["errors"])
        row["source"] = json.loads(row["source"])
    return rows


def decoded_rows(name: str, data: bytes) -> list[dict]:
    """Rows of an object's bytes, decoded by the extension of its ``name``, ``source`` as a dict."""
    if name.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        source = table.schema.field("source").type
        if source == pa.null():  # a CSV without mapped columns: Parquet holds no struct without fields
            return [{**row, "source": {}} for row in table.to_pylist()]
        assert table.schema.equals(canonical_schema(source))
        return table.to_pylist()
    plain = decompressed(data, "." + name.rsplit(".", 1)[-1])
    return parse_csv(plain) if ".csv" in name else parse_jsonl(plain)


class CorruptArchive(Exception):
    """Stands for the CRC error the unzip stage raises after a member's last byte."""


def failing_after(pairs: list[tuple[str, pa.RecordBatch]], count: int):
    """The first ``count`` batches, then the archive's integrity error."""
    yield from pairs[:count]
    raise CorruptArchive("CRC32 mismatch at the end of the member")


def job_detail_calls(sandbox: Any, job_id: str) -> int:
    """How many times anyone asked the sandbox for this job's details (the sensor's and trigger's polls)."""
    return sum(1 for request in sandbox.stats()["requests"]
               if request.get("method") == "GET" and request.get("path", "").endswith(f"/write/{job_id}"))
