"""How the sandbox turns an uploaded CSV into a Bulk Write result, the way Zoho documents it.

Kept apart from the HTTP server because it is pure data work: parse the upload (any of Zoho's
delimiters, a BOM, quoted commas and newlines), decide per row whether Zoho would add, update or skip
it, and write the result CSV with the csv module so quoting round-trips exactly. Failures are a mix
of *earned* ones (an empty mandatory column, a repeated e-mail) and a few *seeded* ones (random per
job id, so a given job always fails the same rows), which gives clients realistic ERRORS values,
including several codes in one cell, without any real CRM behind it.
"""

from __future__ import annotations

import csv
import io
import os
import random
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from airflow_provider_zohobulk.errors import ZohoConfigurationError

RESULT_COLUMNS = ("RECORD_ID", "STATUS", "ERRORS")
STATUS_CASES = ("upper", "lower", "title")


@dataclass(frozen=True)
class ResultLayout:
    """How the result CSV is written: Zoho's usual layout by default, or the variants the reference
    says a client must tolerate (a BOM, Zoho's columns first, the status in another case)."""

    bom: bool = False
    zoho_columns_first: bool = False
    status_case: str = "upper"  # upper | lower | title

    def row(self, mapped: list[str], zoho: list[str]) -> list[str]:
        return zoho + mapped if self.zoho_columns_first else mapped + zoho

    def status(self, status: str) -> str:
        return {"lower": status.lower(), "title": status.title()}.get(self.status_case, status)
UPLOAD_DELIMITERS = (",", ";", ":", "|")

#: Columns Zoho refuses to leave empty, per module; other modules use their first mapped column.
MANDATORY_COLUMNS: dict[str, tuple[str, ...]] = {
    "Leads": ("Company", "Last_Name"),
    "Contacts": ("Last_Name",),
    "Accounts": ("Account_Name",),
    "Deals": ("Deal_Name", "Stage"),
}

#: Default share of otherwise valid rows that the sandbox fails with INVALID_DATA, seeded by the job id.
SEEDED_INVALID_SHARE = 0.02

#: Zoho's limits on one uploaded CSV (reference section 4): records and columns per file.
MAX_UPLOAD_RECORDS = 25_000
MAX_UPLOAD_COLUMNS = 200

#: Longest value (characters) Zoho takes per field API name; a longer value fails its row with
#: ``INVALID_DATA-<column>``. Zoho's single-line text fields take 255, e-mail fields 100, multi-line
#: (Description) 32,000; fields not listed are treated as single-line.
FIELD_MAX_LENGTHS: dict[str, int] = {
    "Email": 100,
    "Secondary_Email": 100,
    "Description": 32_000,
}
DEFAULT_FIELD_MAX_LENGTH = 255


def field_max_length(api_name: str) -> int:
    """How many characters Zoho takes in field ``api_name`` (see :data:`FIELD_MAX_LENGTHS`)."""
    return FIELD_MAX_LENGTHS.get(api_name, DEFAULT_FIELD_MAX_LENGTH)


class UploadRefusedError(ZohoConfigurationError):
    """A zip that is readable but holds a CSV Zoho refuses (too many records or columns, an empty or a
    repeated header); carries the Zoho-style ``code`` and ``details`` the server answers with (HTTP 400)."""

    def __init__(self, code: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.zoho_message = message
        self.details = details


@dataclass
class UploadedCsv:
    """One CSV file as the sandbox read it from an uploaded zip."""

    name: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class ResultFile:
    """A generated result member and the counts the job details must report for it."""

    member_name: str
    csv_bytes: bytes
    counts: dict[str, int] = field(default_factory=dict)


def read_uploaded_zip(zip_bytes: bytes | str | os.PathLike[str]) -> UploadedCsv:
    """The single CSV inside an uploaded zip (bytes or a path); :class:`ZohoConfigurationError` when it
    is not one.

    The server answers that error as Zoho's ``INVALID_FILE_FORMAT``; the Python API lets it propagate.
    """
    source = io.BytesIO(zip_bytes) if isinstance(zip_bytes, bytes | bytearray | memoryview) else zip_bytes
    try:
        with zipfile.ZipFile(source) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if not members:
                raise ZohoConfigurationError("the uploaded zip holds no file")
            csv_members = [info for info in members if info.filename.lower().endswith(".csv")] or members
            info = csv_members[0]
            data = archive.read(info)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ZohoConfigurationError(f"the uploaded file is not a zip: {exc}") from None
    name = info.filename.rsplit("/", 1)[-1]
    return parse_csv(data, name)


def parse_csv(data: bytes, name: str) -> UploadedCsv:
    """Parse an upload: UTF-8 (BOM tolerated), delimiter guessed from the header among Zoho's four."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ZohoConfigurationError(f"{name} is not UTF-8: {exc}") from None
    # Only delimiters outside quotes count: a quoted header such as "Time: Start" names one column.
    # (A quoted header cannot span lines here: Zoho's field names hold no newline.)
    unquoted = "".join(text.split("\n", 1)[0].split('"')[::2])
    delimiter = max(UPLOAD_DELIMITERS, key=unquoted.count)  # a tie, or none at all: the comma
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as exc:
        raise ZohoConfigurationError(f"{name} is not a readable CSV: {exc}") from None
    if not records or not any(records[0]):
        raise ZohoConfigurationError(f"{name} has no header row")
    header, rows = records[0], [row for row in records[1:] if row]
    return UploadedCsv(name=name, header=header, rows=rows)


def check_upload_shape(upload: UploadedCsv, *, max_records: int = MAX_UPLOAD_RECORDS,
                       max_columns: int = MAX_UPLOAD_COLUMNS) -> None:
    """Refuse, as Zoho does, a CSV it will not import: more than 25,000 records or 200 columns, a column
    without a header, or a header twice (columns map by header, so a repeated one is ambiguous).

    Raises :class:`UploadRefusedError` naming the file and the column or count.
    """
    name = upload.name
    if len(upload.header) > max_columns:
        raise UploadRefusedError("LIMIT_EXCEEDED", f"{name} has {len(upload.header)} columns; at most {max_columns} "
                                 "are allowed per file", limit=max_columns, columns=len(upload.header))
    if len(upload.rows) > max_records:
        raise UploadRefusedError("LIMIT_EXCEEDED", f"{name} has {len(upload.rows)} records; at most {max_records} "
                                 "are allowed per file", limit=max_records, records=len(upload.rows))
    seen: set[str] = set()
    for index, column in enumerate(upload.header):
        if not column.strip():
            raise UploadRefusedError("INVALID_DATA", f"column {index + 1} of {name} has an empty header",
                                     column_index=index)
        if column in seen:
            raise UploadRefusedError("DUPLICATE_DATA", f"{name} has the header {column!r} more than once",
                                     column=column)
        seen.add(column)


@dataclass
class ResultPlan:
    """What one resource of a job asks for, resolved against its uploaded CSV."""

    module: str
    operation: str
    upload: UploadedCsv
    mapped_indexes: list[int]
    api_names: list[str]
    find_by: str | None


def resolve_mappings(upload: UploadedCsv, field_mappings: Sequence[dict] | None) -> tuple[list[int], list[str]]:
    """Column indexes and their API names: from ``field_mappings`` when given, else by header."""
    if not field_mappings:
        return list(range(len(upload.header))), list(upload.header)
    indexes, names = [], []
    for mapping in field_mappings:
        index = mapping.get("index")
        if not isinstance(index, int) or not 0 <= index < len(upload.header):
            raise ZohoConfigurationError(
                f"field mapping {mapping.get('api_name')!r} points at column index {index!r}, but {upload.name} "
                f"has {len(upload.header)} columns")
        indexes.append(index)
        names.append(str(mapping.get("api_name") or upload.header[index]))
    return indexes, names


def build_result(
    plan: ResultPlan,
    job_id: str,
    *,
    new_record_id: Callable[[], str],
    find_record: Callable[[str, str, str], str | None],
    remember_record: Callable[[str, str, str, str], None],
    seeded_failure_share: float = SEEDED_INVALID_SHARE,
    layout: ResultLayout = ResultLayout(),
) -> ResultFile:
    """The result CSV for one resource, with counts that match it row for row.

    ``find_record(module, api_name, value)`` and ``remember_record(module, api_name, value, id)``
    connect jobs: a later update/upsert finds the records an earlier insert created.
    ``seeded_failure_share`` of the otherwise valid rows fail with INVALID_DATA; tests that assert
    exact statuses set it to 0, since job ids (the seed) differ from run to run.
    """
    upload = plan.upload
    header = upload.header
    shown = plan.mapped_indexes[:3]
    api_by_index = dict(zip(plan.mapped_indexes, plan.api_names, strict=True))
    mandatory = [c for c in MANDATORY_COLUMNS.get(plan.module, ()) if c in header] or [header[shown[0]]]
    mandatory_indexes = [header.index(c) for c in mandatory]
    email_index = next((i for i, h in enumerate(header) if "email" in h.lower()), None)
    find_by_index = _column_for(plan.find_by, api_by_index, header) if plan.find_by else None
    other_indexes = [i for i in plan.mapped_indexes if i not in mandatory_indexes] or plan.mapped_indexes
    rng = random.Random(f"zoho-sandbox-{job_id}-{plan.module}-{upload.name}")
    seen_emails: set[str] = set()
    counts = {"added_count": 0, "skipped_count": 0, "updated_count": 0, "total_count": 0}

    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(layout.row([header[i] for i in shown], list(RESULT_COLUMNS)))
    for row in upload.rows:
        row = row + [""] * (len(header) - len(row))
        errors: list[str] = []
        empty = [header[i] for i in mandatory_indexes if not row[i].strip()]
        if empty:
            errors.append("MANDATORY_NOT_FOUND-" + ",".join(sorted(empty)))
        if email_index is not None and row[email_index].strip():
            email = row[email_index].strip().lower()
            if email in seen_emails:
                errors.append(f"DUPLICATE_DATA-{header[email_index]}")
            seen_emails.add(email)
        # Drawn for every row (used or not), so a too-long value does not shift which other rows fail.
        seeded = rng.random() < seeded_failure_share
        seeded_column = header[rng.choice(other_indexes)] if seeded else None
        too_long = [header[i] for i in plan.mapped_indexes if len(row[i]) > field_max_length(api_by_index[i])]
        if too_long:
            errors.append("INVALID_DATA-" + ",".join(too_long))
        elif seeded_column is not None:
            errors.append(f"INVALID_DATA-{seeded_column}")

        record_id = ""
        status = "SKIPPED"
        if not errors:
            existing = None
            if find_by_index is not None and row[find_by_index].strip():
                existing = find_record(plan.module, plan.find_by or "", row[find_by_index].strip())
            if plan.operation in ("update", "upsert") and existing:
                record_id, status = existing, "UPDATED"
            elif plan.operation == "update":
                errors.append(f"RESOURCE_NOT_FOUND-{header[find_by_index] if find_by_index is not None else ''}")
            else:
                record_id, status = new_record_id(), "ADDED"
                for index in plan.mapped_indexes:
                    if row[index].strip():
                        remember_record(plan.module, api_by_index[index], row[index].strip(), record_id)
        counts["total_count"] += 1
        counts[{"ADDED": "added_count", "UPDATED": "updated_count"}.get(status, "skipped_count")] += 1
        writer.writerow(layout.row([row[i] for i in shown], [record_id, layout.status(status), ":".join(errors)]))
    encoded = out.getvalue().encode("utf-8")
    return ResultFile(f"{plan.module}-{upload.name}", b"\xef\xbb\xbf" + encoded if layout.bom else encoded, counts)


def _column_for(api_name: str, api_by_index: dict[int, str], header: list[str]) -> int | None:
    for index, name in api_by_index.items():
        if name == api_name:
            return index
    return header.index(api_name) if api_name in header else None


def zip_members(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A deflated zip, as Zoho serves its results."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


#: Values of the upload's own STATUS column (``sample_leads_csv(status_column=True)``).
LEAD_STATUSES = ("Contacted", "Not Contacted", "Qualified", "")


def sample_leads_csv(rows: int = 1000, *, seed: int = 0, status_column: bool = False) -> bytes:
    """Leads as a person would upload them, with the flaws that make Zoho skip rows.

    Some rows lack Last_Name or Company, some repeat an e-mail (and a few do both, which yields
    multi-code ERRORS), and some values need quoting: commas, double quotes, line breaks, non-ASCII.

    ``status_column=True`` adds the upload's own ``STATUS`` column (a lead status, as an export from
    another system has it) second, so it is among the three mapped columns the result echoes: the
    result then has two columns named STATUS, in either layout (``ResultLayout.zoho_columns_first``),
    and a client must take Zoho's. The other columns and values are the same as without it.
    """
    rng = random.Random(seed)
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    header = ["Last_Name", "Email", "Company", "First_Name", "Phone", "Lead_Source"]
    if status_column:
        header.insert(1, "STATUS")
    writer.writerow(header)
    companies = ["Acme, Inc.", "Zürich Consulting", 'The "Best" Co', "Northwind\nTraders", "Globex", "Initech"]
    sources = ["Web", "Cold Call", "Trade Show", "Partner"]
    for i in range(rows):
        last = "" if i % 37 == 5 else f"Lead {i}"
        company = "" if i % 53 == 7 else rng.choice(companies)
        email = f"lead{i - 11}@example.com" if i % 41 == 11 and i >= 11 else f"lead{i}@example.com"
        if i % 97 == 50:  # both mandatory columns empty and a duplicate e-mail: a multi-code ERRORS value
            last, company, email = "", "", "lead0@example.com"
        row = [last, email, company, f"First {i}", f"+1-555-{i % 10000:04d}", rng.choice(sources)]
        if status_column:
            row.insert(1, LEAD_STATUSES[i % len(LEAD_STATUSES)])
        writer.writerow(row)
    return out.getvalue().encode("utf-8")
