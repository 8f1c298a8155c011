"""Small builders shared by the sink tests (no I/O)."""

from __future__ import annotations

import pyarrow as pa

from airflow_provider_zohobulk.bulk_result import CANONICAL_SCHEMA


def canonical_batch(job_id: str, file_name: str, rows: list[dict], first_row_number: int = 1) -> pa.RecordBatch:
    """Build a canonical batch from short row dicts.

    Each row dict may hold ``record_id``, ``status``, ``errors`` (list of {code, columns}),
    ``errors_raw`` and ``source`` (dict header -> value); missing keys get the canonical empty value.
    """
    columns = {
        "job_id": [job_id] * len(rows),
        "file_name": [file_name] * len(rows),
        "row_number": list(range(first_row_number, first_row_number + len(rows))),
        "record_id": [r.get("record_id") for r in rows],
        "status": [r.get("status", "ADDED") for r in rows],
        "errors": [r.get("errors", []) for r in rows],
        "errors_raw": [r.get("errors_raw") for r in rows],
        "source": [list((r.get("source") or {}).items()) for r in rows],
    }
    return pa.RecordBatch.from_pydict(columns, schema=CANONICAL_SCHEMA)


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
