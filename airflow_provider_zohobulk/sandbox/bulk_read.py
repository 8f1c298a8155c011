"""Bulk Read for the sandbox: generated module records, Zoho's criteria, pages, page tokens, and each
page's zip generated while it is sent.

Why generated records: an export is only interesting at sizes no fixture file can hold (a page is up to
200,000 records, a module millions), so every record is a pure function of ``(module, seed, index)``:
a 64-bit mix of the index (the splitmix64 finaliser, as ``benchmarks/generate.py`` does) whose bit
ranges pick each value from fixed pools. Nothing is stored, so a million-record module costs no memory,
any record can be computed on its own (a page starts anywhere), and the same seed gives the same bytes
in every run. Pools hold what makes CSV hard: commas, double quotes, line breaks, non-ASCII text, empty
values, 19-digit ids.

A page is "the records matching the criteria, in Id order, slice N". Ids grow with the index, so a page
is a range of indexes; it is planned when the job is created (start, end, count, whether more records
follow), and its zip is generated block by block when downloaded: CSV rows through ``csv.writer``,
deflated with zlib, CRC-32 and sizes counted on the way and written in a data descriptor after the
data, zip64 when the page could pass 4 GiB. A page never exists whole in memory.

Standard library only, like the rest of the sandbox. The facts come from ``reference/zoho-bulk-api.md``
section 5 and Zoho's published samples; what no source states (the shape of a FAILED job, the error
codes of a bad query or token) is marked "unconfirmed" in the docstrings.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

from airflow_provider_zohobulk.errors import ZohoConfigurationError

#: Zoho's page size; the sandbox's default for ``bulk_read_per_page``.
DEFAULT_PER_PAGE = 200_000
#: A module may be seeded with at most this many records (each module's ids stay in their own range).
MAX_RECORDS = 100_000_000
PAGE_TOKEN_TTL_SECONDS = 24 * 3600.0
#: The org's time zone: Zoho writes date-times in it, with the offset (``2026-01-01T05:30:00+05:30``).
ORG_UTC_OFFSET_SECONDS = 5 * 3600 + 30 * 60
ORG_UTC_OFFSET = "+05:30"
DAY = 86400
#: Where Modified_Time values fall unless ``seed_module`` is told otherwise: [from, to).
DEFAULT_MODIFIED_FROM = "2025-07-01T00:00:00+00:00"
DEFAULT_MODIFIED_TO = "2026-07-01T00:00:00+00:00"
DEFAULT_RECORDS = 1000
FILE_TYPES = ("csv", "ics")
JOB_STATES = ("ADDED", "QUEUED", "IN PROGRESS", "COMPLETED", "FAILED")
BLOCK_ROWS = 2000  # rows per CSV block handed to the compressor
ZLIB_LEVEL = 1  # fast: a 1,000,000-record page is generated, not stored, on every download

MASK64 = (1 << 64) - 1
Maker = Callable[[int, int, int], str]  # (index, h1, h2) -> the value as text
Predicate = Callable[[int, int, int], bool]


def org_time(epoch: float) -> str:
    """An instant as Zoho writes it: ISO 8601 in the org's time zone, seconds, with the offset.

    Called twice per generated record, so the date part is cached per day (a few hundred days a module).
    """
    day, second = divmod(int(epoch) + ORG_UTC_OFFSET_SECONDS, DAY)
    date = _DATES.get(day)
    if date is None:
        if len(_DATES) > 100_000:
            _DATES.clear()
        t = time.gmtime(day * DAY)
        date = _DATES[day] = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
    hour, rest = divmod(second, 3600)
    minute, sec = divmod(rest, 60)
    return f"{date}{hour:02d}:{minute:02d}:{sec:02d}{ORG_UTC_OFFSET}"


_DATES: dict[int, str] = {}


def _org_date(epoch: int) -> str:
    t = time.gmtime(epoch + ORG_UTC_OFFSET_SECONDS)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"


def parse_instant(value: Any) -> int | None:
    """Epoch seconds of an ISO 8601 date-time *with* an offset (``Z`` allowed), else None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None or "T" not in text:
        return None
    return int(parsed.timestamp())


def _mix(x: int) -> int:
    """splitmix64's finaliser: every output bit depends on every input bit."""
    x = (x * 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


# --- the generated modules ---------------------------------------------------------------------------

OWNERS = ("4150868000000225013", "4150868000000225021", "4150868000000231001", "4150868000000231017")
FIRST_NAMES = ("Ann", "Bob", "Chen", "Dora", "Emil", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lin",
               "María", "Zoë", "Łukasz", "Søren", "Nguyễn")
#: ASCII forms of FIRST_NAMES, position for position, for e-mail addresses.
FIRST_NAME_SLUGS = ("ann", "bob", "chen", "dora", "emil", "fatima", "gus", "hana", "ivan", "jo", "kemal", "lin",
                    "maria", "zoe", "lukasz", "soren", "nguyen")
LAST_NAMES = ("Smith", "Johnson", "Williams", "Brown", "Garcia", "Miller", "Davis", "Martinez", "Lee", "Müller",
              "Østergaard", "O'Brien", "Smith, Jr.", 'The "Rock" Johnson', "Żółć", "Nakamura", "Okafor", "Dubois",
              "Rossi")
COMPANIES = ("Acme, Inc.", "Globex Corporation", "Initech", "Umbrella Corp", "Stark Industries, Ltd.",
             'Cyberdyne "Systems"', "Zürich Versicherungs AG", "北京贸易有限公司", "Hooli", "Soylent",
             "Tyrell Corporation", "Wayne Enterprises", "Northwind\nTraders", "Los Pollos Hermanos, S.A.")
DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "sales.acme.example", "eu.initech.example")
LEAD_STATUSES = ("Attempted to Contact", "Contact in Future", "Contacted", "Junk Lead", "Lost Lead", "Not Contacted",
                 "Pre-Qualified", "Not Qualified")
LEAD_SOURCES = ("Advertisement", "Cold Call", "Employee Referral", "External Referral", "Online Store", "Partner",
                "Public Relations", "Seminar Partner", "Trade Show", "Web Download", "Web Research", "Chat")
INDUSTRIES = ("ASP (Application Service Provider)", "Data/Telecom OEM", "ERP (Enterprise Resource Planning)",
              "Government/Military", "Large Enterprise", "Management ISV", "Network Equipment Enterprise",
              "Non-management ISV", "Optical Networking", "Service Provider", "Small/Medium Enterprise",
              "Storage Equipment", "Storage Service Provider", "Systems Integrator", "Wireless Industry")
RATINGS = ("Acquired", "Active", "Market Failed", "Project Cancelled", "Shut Down")
PLACES = (("Chennai", "Tamil Nadu", "India", "600001"), ("Austin", "Texas", "United States", "73301"),
          ("München", "Bayern", "Germany", "80331"), ("São Paulo", "SP", "Brazil", "01000-000"),
          ("Zürich", "ZH", "Switzerland", "8001"), ("Osaka", "Osaka", "Japan", "530-0001"),
          ("Lagos", "Lagos", "Nigeria", "100001"), ("Toronto", "Ontario", "Canada", "M5H 2N2"))
STREETS = ("1 Main Street", "221B Baker Street", "Flat 4, 12 High Road", "Königstraße 7", "Rua Augusta, 1500",
           "PO Box 42\nStation A")
DESCRIPTIONS = ("Met at the booth, wants a demo.", 'Said "call me in Q3", then hung up.', "Line one\nLine two",
                "Budget approved;\r\nfollow up with the CFO, then legal.", "Prefers e-mail. Ça va? Très bien.",
                "Interested in: CRM, ERP, BI", 'Referred by "Ann"; priority: high', "日本語のメモ",
                "Plain note without anything special")
TITLES = ("CEO", "CTO", "VP Sales", "Head of Data, EMEA", "Purchasing Manager", "Engineer", 'Chief "Fun" Officer')
DEPARTMENTS = ("Sales", "Marketing", "IT", "Finance", "Operations", "R&D")
DEAL_STAGES = (("Qualification", "10"), ("Needs Analysis", "20"), ("Value Proposition", "40"),
               ("Identify Decision Makers", "60"), ("Proposal/Price Quote", "75"), ("Negotiation/Review", "90"),
               ("Closed Won", "100"), ("Closed Lost", "0"))
DEAL_TYPES = ("New Business", "Existing Business")
DEAL_PRODUCTS = ("CRM rollout", "Support renewal", "Data migration, phase 2", "Licences (50 seats)", "Training")
NEXT_STEPS = ("Send proposal", "Schedule demo", "Call back, after the holidays", "Wait for PO", "")

#: First Id of each module: Id = base + index, 19 digits, so Id order is index order.
ID_BASES = {"Leads": 4_150_868_000_100_000_000, "Contacts": 4_150_868_000_200_000_000,
            "Deals": 4_150_868_000_300_000_000}
ACCOUNT_ID_BASE = 4_150_868_000_400_000_000
TIME_FIELDS = ("Created_Time", "Modified_Time")
BIRTH_DATES_FROM = -631152000  # 1950-01-01
CLOSING_DATES_FROM = 1767225600  # 2026-01-01


def _longest(pool: Iterable[str]) -> int:
    return max(len(value.encode()) for value in pool)


def _text(pool: tuple[str, ...], shift: int, empty_per_mille: int = 0) -> tuple[Callable[[Dataset], Maker], int]:
    """A field picking from ``pool`` with bits ``shift..`` of h2, empty ``empty_per_mille`` of the time."""
    size = len(pool)

    def build(dataset: Dataset) -> Maker:
        if not empty_per_mille:
            return lambda i, h1, h2: pool[(h2 >> shift) % size]
        return lambda i, h1, h2: "" if (h1 >> shift) % 1000 < empty_per_mille else pool[(h2 >> shift) % size]

    return build, _longest(pool)


def _fixed(make: Maker, longest: int) -> tuple[Callable[[Dataset], Maker], int]:
    return (lambda dataset: make), longest


def _time_fields() -> dict[str, tuple[Callable[[Dataset], Maker], int]]:
    def created(dataset: Dataset) -> Maker:
        epoch = dataset.created_epoch
        return lambda i, h1, h2: org_time(epoch(h1, h2))

    def modified(dataset: Dataset) -> Maker:
        epoch = dataset.modified_epoch
        return lambda i, h1, h2: org_time(epoch(h1))

    return {"Created_Time": (created, 25), "Modified_Time": (modified, 25)}


def _id_field() -> tuple[Callable[[Dataset], Maker], int]:
    return (lambda ds: (lambda base: lambda i, h1, h2: str(base + i))(ID_BASES[ds.module])), 19


def _email(i: int, h1: int, h2: int) -> str:
    return f"{FIRST_NAME_SLUGS[(h2 >> 8) % len(FIRST_NAMES)]}.{i}@{DOMAINS[(h2 >> 40) % len(DOMAINS)]}"


def _account_id(h2: int) -> str:
    """A lookup to one of 50,000 accounts (the sandbox generates no Accounts module: ids only)."""
    return str(ACCOUNT_ID_BASE + (h2 >> 31) % 50000)


def _birth_date(h2: int) -> str:
    return _org_date(BIRTH_DATES_FROM + (h2 >> 20) % 1700 * 10 * DAY)  # 1950 to 1996


_EMAIL_LONGEST = _longest(FIRST_NAME_SLUGS) + 1 + 9 + 1 + _longest(DOMAINS)
_place = PLACES.__getitem__

#: Each module's fields in their export order: api name -> (builder for a dataset, longest value in bytes).
FIELDS: dict[str, dict[str, tuple[Callable[[Dataset], Maker], int]]] = {
    "Leads": {
        "Id": _id_field(),
        "Owner": _text(OWNERS, 2),
        "Company": _text(COMPANIES, 5),
        "First_Name": _text(FIRST_NAMES, 8, empty_per_mille=50),
        "Last_Name": _text(LAST_NAMES, 13),
        "Email": _fixed(lambda i, h1, h2: "" if (h1 >> 26) % 10 == 0 else _email(i, h1, h2), _EMAIL_LONGEST),
        "Phone": _fixed(lambda i, h1, h2: "" if (h1 >> 30) % 8 == 0 else f"+1-555-{(h2 >> 17) % 10000:04d}", 11),
        "Mobile": _fixed(lambda i, h1, h2: "" if (h1 >> 33) % 3 == 0 else f"+44 7700 9{(h2 >> 21) % 100000:05d}",
                         16),
        "Lead_Status": _text(LEAD_STATUSES, 25),
        "Lead_Source": _text(LEAD_SOURCES, 28, empty_per_mille=100),
        "Industry": _text(INDUSTRIES, 32, empty_per_mille=200),
        "Annual_Revenue": _fixed(lambda i, h1, h2: "" if (h1 >> 36) % 7 == 0 else str((h2 >> 36) % 5000 * 1000), 7),
        "No_of_Employees": _fixed(lambda i, h1, h2: "" if (h1 >> 39) % 9 == 0 else str(1 + (h2 >> 44) % 5000), 4),
        "Rating": _text(RATINGS, 48, empty_per_mille=300),
        "Email_Opt_Out": _fixed(lambda i, h1, h2: "true" if (h2 >> 51) % 10 == 0 else "false", 5),
        "Description": _text(DESCRIPTIONS, 53, empty_per_mille=300),
        "Street": _text(STREETS, 57, empty_per_mille=100),
        "City": _fixed(lambda i, h1, h2: _place((h2 >> 59) % len(PLACES))[0], _longest(p[0] for p in PLACES)),
        "State": _fixed(lambda i, h1, h2: _place((h2 >> 59) % len(PLACES))[1], _longest(p[1] for p in PLACES)),
        "Zip_Code": _fixed(lambda i, h1, h2: _place((h2 >> 59) % len(PLACES))[3], _longest(p[3] for p in PLACES)),
        "Country": _fixed(lambda i, h1, h2: _place((h2 >> 59) % len(PLACES))[2], _longest(p[2] for p in PLACES)),
        **_time_fields(),
    },
    "Contacts": {
        "Id": _id_field(),
        "Owner": _text(OWNERS, 2),
        "First_Name": _text(FIRST_NAMES, 8, empty_per_mille=50),
        "Last_Name": _text(LAST_NAMES, 13),
        "Email": _fixed(lambda i, h1, h2: "" if (h1 >> 26) % 12 == 0 else _email(i, h1, h2), _EMAIL_LONGEST),
        "Phone": _fixed(lambda i, h1, h2: "" if (h1 >> 30) % 8 == 0 else f"+1-555-{(h2 >> 17) % 10000:04d}", 11),
        "Mobile": _fixed(lambda i, h1, h2: "" if (h1 >> 33) % 3 == 0 else f"+44 7700 9{(h2 >> 21) % 100000:05d}",
                         16),
        "Title": _text(TITLES, 25, empty_per_mille=150),
        "Department": _text(DEPARTMENTS, 28, empty_per_mille=250),
        "Account_Name": _fixed(lambda i, h1, h2: "" if (h1 >> 36) % 5 == 0 else _account_id(h2), 19),
        "Lead_Source": _text(LEAD_SOURCES, 40, empty_per_mille=100),
        "Date_of_Birth": _fixed(lambda i, h1, h2: "" if (h1 >> 40) % 5 < 2 else _birth_date(h2), 10),
        "Mailing_Street": _text(STREETS, 46, empty_per_mille=100),
        "Mailing_City": _fixed(lambda i, h1, h2: _place((h2 >> 59) % len(PLACES))[0], _longest(p[0] for p in PLACES)),
        "Mailing_State": _fixed(lambda i, h1, h2: _place((h2 >> 59) % len(PLACES))[1],
                                _longest(p[1] for p in PLACES)),
        "Mailing_Zip": _fixed(lambda i, h1, h2: _place((h2 >> 59) % len(PLACES))[3], _longest(p[3] for p in PLACES)),
        "Mailing_Country": _fixed(lambda i, h1, h2: _place((h2 >> 59) % len(PLACES))[2],
                                  _longest(p[2] for p in PLACES)),
        "Email_Opt_Out": _fixed(lambda i, h1, h2: "true" if (h2 >> 51) % 10 == 0 else "false", 5),
        "Description": _text(DESCRIPTIONS, 53, empty_per_mille=400),
        **_time_fields(),
    },
    "Deals": {
        "Id": _id_field(),
        "Owner": _text(OWNERS, 2),
        "Deal_Name": _fixed(lambda i, h1, h2: f"{COMPANIES[(h2 >> 5) % len(COMPANIES)]} - "
                                              f"{DEAL_PRODUCTS[(h2 >> 9) % len(DEAL_PRODUCTS)]}",
                            _longest(COMPANIES) + 3 + _longest(DEAL_PRODUCTS)),
        "Account_Name": _fixed(lambda i, h1, h2: _account_id(h2), 19),
        "Contact_Name": _fixed(lambda i, h1, h2: "" if (h1 >> 36) % 5 == 0 else
                               str(ID_BASES["Contacts"] + (h2 >> 13) % 1000), 19),
        "Amount": _fixed(lambda i, h1, h2: "" if (h1 >> 40) % 10 == 0 else str((h2 >> 36) % 2000 * 500), 6),
        "Stage": _fixed(lambda i, h1, h2: DEAL_STAGES[(h2 >> 23) % len(DEAL_STAGES)][0],
                        _longest(s[0] for s in DEAL_STAGES)),
        "Probability": _fixed(lambda i, h1, h2: DEAL_STAGES[(h2 >> 23) % len(DEAL_STAGES)][1], 3),
        "Closing_Date": _fixed(lambda i, h1, h2: _org_date(CLOSING_DATES_FROM + (h2 >> 27) % 365 * DAY), 10),
        "Type": _text(DEAL_TYPES, 44, empty_per_mille=200),
        "Lead_Source": _text(LEAD_SOURCES, 47, empty_per_mille=100),
        "Next_Step": _text(NEXT_STEPS, 50),
        "Description": _text(DESCRIPTIONS, 53, empty_per_mille=500),
        **_time_fields(),
    },
}
MODULES = tuple(FIELDS)


# --- a module's records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """What a module holds: ``records`` generated records of ``seed``, Modified_Time in [from, to).

    Jobs and page tokens keep the dataset they started with, so re-seeding a module never shifts the
    pages of a query already under way.
    """

    module: str
    records: int
    seed: int = 0
    modified_from: int = parse_instant(DEFAULT_MODIFIED_FROM) or 0
    modified_to: int = parse_instant(DEFAULT_MODIFIED_TO) or 1

    @classmethod
    def create(cls, module: str, records: int, seed: int = 0, modified_from: str | None = None,
               modified_to: str | None = None) -> Dataset:
        """A checked dataset; :class:`ZohoConfigurationError` naming the bad argument otherwise."""
        if module not in FIELDS:
            raise ZohoConfigurationError(f"the sandbox generates records for {list(MODULES)} only, not {module!r}")
        if isinstance(records, bool) or not isinstance(records, int) or not 0 <= records <= MAX_RECORDS:
            raise ZohoConfigurationError(f"{module}: records must be an integer from 0 to {MAX_RECORDS}, "
                                         f"not {records!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ZohoConfigurationError(f"{module}: seed must be an integer, not {seed!r}")
        bounds = []
        for name, value, default in (("modified_from", modified_from, DEFAULT_MODIFIED_FROM),
                                     ("modified_to", modified_to, DEFAULT_MODIFIED_TO)):
            instant = parse_instant(value if value is not None else default)
            if instant is None:
                raise ZohoConfigurationError(f"{module}: {name} must be an ISO 8601 date-time with an offset, "
                                             f"such as 2026-01-01T00:00:00+00:00, not {value!r}")
            bounds.append(instant)
        if bounds[1] <= bounds[0]:
            raise ZohoConfigurationError(f"{module}: modified_to ({modified_to}) must be after modified_from "
                                         f"({modified_from})")
        return cls(module, records, seed, bounds[0], bounds[1])

    @property
    def salt(self) -> int:
        return _mix((zlib.crc32(self.module.encode()) << 32) ^ (self.seed & MASK64))

    def hashes(self, index: int, salt: int) -> tuple[int, int]:
        """Record ``index``'s two 64-bit hashes (``salt`` is :attr:`salt`, passed in to keep loops fast):
        every value of the record is picked by some bits of them."""
        h1 = _mix((index + salt) & MASK64)
        return h1, _mix(h1 ^ 0xD1B54A32D192ED03)

    def modified_epoch(self, h1: int) -> int:
        return self.modified_from + h1 % (self.modified_to - self.modified_from)

    def created_epoch(self, h1: int, h2: int) -> int:
        """Up to 180 days before the record's Modified_Time, never after it."""
        return self.modified_epoch(h1) - (h2 >> 3) % (180 * DAY)

    def makers(self, fields: list[str]) -> list[Maker]:
        spec = FIELDS[self.module]
        return [spec[name][0](self) for name in fields]

    def max_row_bytes(self, fields: list[str]) -> int:
        """An upper bound on one CSV row's size: every value quoted with every byte a doubled quote."""
        spec = FIELDS[self.module]
        return sum(2 * spec[name][1] + 3 for name in fields) + 2

    def describe(self) -> dict[str, Any]:
        return {"module": self.module, "records": self.records, "seed": self.seed,
                "modified_from": org_time(self.modified_from), "modified_to": org_time(self.modified_to),
                "fields": list(FIELDS[self.module]), "first_id": str(ID_BASES[self.module]),
                "last_id": str(ID_BASES[self.module] + self.records - 1) if self.records else None}

    def matching(self, predicate: Predicate | None, start: int = 0) -> Iterator[int]:
        """Indexes from ``start`` on whose records match ``predicate``, in Id order."""
        if predicate is None:
            yield from range(start, self.records)
            return
        salt, hashes = self.salt, self.hashes
        for index in range(start, self.records):
            h1, h2 = hashes(index, salt)
            if predicate(index, h1, h2):
                yield index

    def rows(self, indexes: Iterable[int], fields: list[str]) -> Iterator[list[str]]:
        makers = self.makers(fields)
        salt, hashes = self.salt, self.hashes
        for index in indexes:
            h1, h2 = hashes(index, salt)
            yield [make(index, h1, h2) for make in makers]


def default_datasets() -> dict[str, Dataset]:
    return {module: Dataset(module, DEFAULT_RECORDS) for module in MODULES}


# --- the request -----------------------------------------------------------------------------------------


class ReadRequestError(ZohoConfigurationError):
    """A Bulk Read request Zoho would refuse: carries the Zoho error body's code and details, and the
    HTTP status to answer with (400, or 429 for the concurrency limit)."""

    def __init__(self, code: str, message: str, status: int = 400, retry_after: int | None = None,
                 **details: Any) -> None:
        named = ", ".join(f"{key}={value}" for key, value in details.items())
        super().__init__(f"Bulk Read request refused: {code}: {message}" + (f" ({named})" if named else ""))
        self.code = code
        self.zoho_message = message
        self.status = status
        self.retry_after = retry_after
        self.details = details


@dataclass
class ReadQuery:
    """A create-job body, checked: what the job reads."""

    module: str
    fields: list[str]
    fields_given: bool
    criteria: dict[str, Any] | None
    page: int | None
    page_token: str | None
    file_type: str
    callback: dict[str, Any] | None

    @property
    def criteria_key(self) -> str:
        """The criteria in one canonical text, to tell whether a page token belongs to this query."""
        return json.dumps(self.criteria, sort_keys=True, separators=(",", ":"))


def parse_read_request(request: Any) -> ReadQuery:
    """Zoho's rules for a Bulk Read create body; :class:`ReadRequestError` naming the offending key.

    Codes for a body Zoho refuses are unconfirmed; the sandbox uses ``MANDATORY_NOT_FOUND``,
    ``INVALID_DATA``, ``INVALID_MODULE`` and (for fields and criteria) ``INVALID_QUERY``, each with the
    key's ``api_name`` and ``json_path`` in ``details``.
    """
    if not isinstance(request, dict):
        raise ReadRequestError("INVALID_DATA", "the body must be a JSON object", api_name="body", json_path="$")
    query = request.get("query")
    if not isinstance(query, dict):
        raise ReadRequestError("MANDATORY_NOT_FOUND", "required field not found", api_name="query",
                               json_path="$.query")
    module_field = query.get("module")
    module = module_field.get("api_name") if isinstance(module_field, dict) else module_field
    if not module or not isinstance(module, str):
        raise ReadRequestError("MANDATORY_NOT_FOUND", "required field not found", api_name="module",
                               json_path="$.query.module")
    if module not in FIELDS:
        raise ReadRequestError("INVALID_MODULE", "the module name given seems to be invalid", api_name=module,
                               json_path="$.query.module")
    known = FIELDS[module]
    fields_in = query.get("fields")
    if fields_in is not None and (not isinstance(fields_in, list) or not all(isinstance(f, str) for f in fields_in)):
        raise ReadRequestError("INVALID_DATA", "fields must be a list of field API names", api_name="fields",
                               json_path="$.query.fields")
    fields: list[str] = []
    for position, name in enumerate(fields_in or []):
        if name not in known:
            raise ReadRequestError("INVALID_QUERY", f"the field {name!r} is not a field of {module}", api_name=name,
                                   json_path=f"$.query.fields[{position}]")
        if name not in fields:
            fields.append(name)
    criteria = query.get("criteria")
    if criteria is not None:
        compile_criteria(module, criteria)  # refuse a bad query now, not when the job runs
    page_in, token = query.get("page"), query.get("page_token")
    if page_in is not None and token is not None:
        raise ReadRequestError("INVALID_DATA", "give page or page_token, not both", api_name="page_token",
                               json_path="$.query.page_token")
    if page_in is not None and (isinstance(page_in, bool) or not isinstance(page_in, int) or page_in < 1):
        raise ReadRequestError("INVALID_DATA", f"page must be an integer from 1, not {page_in!r}", api_name="page",
                               json_path="$.query.page")
    if token is not None and (not isinstance(token, str) or not token):
        raise ReadRequestError("INVALID_DATA", "page_token must be the next_page_token of an earlier job",
                               api_name="page_token", json_path="$.query.page_token")
    file_type = request.get("file_type", query.get("file_type", "csv"))
    if file_type not in FILE_TYPES:
        raise ReadRequestError("INVALID_DATA", f"file_type must be csv or ics, not {file_type!r}",
                               api_name="file_type", json_path="$.file_type")
    if file_type == "ics":
        raise ReadRequestError("INVALID_DATA", "file_type ics is only for the Events module", api_name="file_type",
                               json_path="$.file_type")
    callback = request.get("callback")
    if callback is not None and not (isinstance(callback, dict) and isinstance(callback.get("url"), str)):
        raise ReadRequestError("INVALID_DATA", "callback must be {\"url\": ..., \"method\": \"post\"}",
                               api_name="callback", json_path="$.callback")
    return ReadQuery(module, fields or list(known), bool(fields), criteria, page_in, token, file_type, callback)


# --- criteria ------------------------------------------------------------------------------------------------

DATETIME_COMPARATORS = ("equal", "not_equal", "greater_than", "greater_equal", "less_than", "less_equal", "between")
TEXT_COMPARATORS = ("equal", "not_equal", "in")
GROUP_OPERATORS = ("and", "or")


def compile_criteria(module: str, criteria: Any, dataset: Dataset | None = None,
                     json_path: str = "$.query.criteria") -> Predicate:
    """A predicate over ``(index, h1, h2)`` for Zoho's criteria JSON; :class:`ReadRequestError` if invalid.

    Supported: ``{"field": {"api_name": F}, "comparator": C, "value": V}`` (also ``"api_name": F``) and
    ``{"group_operator": "and"|"or", "group": [...]}`` nested freely. Created_Time and Modified_Time take
    equal, not_equal, greater_than, greater_equal, less_than, less_equal and between (both ends
    included; values are ISO 8601 date-times with an offset); other fields take equal, not_equal and in
    on their text. Anything else is ``INVALID_QUERY`` naming the field and where it is.
    """
    dataset = dataset or Dataset(module, 0)
    if not isinstance(criteria, dict):
        raise ReadRequestError("INVALID_QUERY", "a criteria must be an object", api_name="criteria",
                               json_path=json_path)
    if "group" in criteria or "group_operator" in criteria:
        operator = str(criteria.get("group_operator", "")).lower()
        group = criteria.get("group")
        if operator not in GROUP_OPERATORS:
            raise ReadRequestError("INVALID_QUERY", f"group_operator must be and or or, not "
                                   f"{criteria.get('group_operator')!r}", api_name="group_operator",
                                   json_path=f"{json_path}.group_operator")
        if not isinstance(group, list) or not group:
            raise ReadRequestError("INVALID_QUERY", "group must be a non-empty list of criteria", api_name="group",
                                   json_path=f"{json_path}.group")
        parts = [compile_criteria(module, part, dataset, f"{json_path}.group[{n}]") for n, part in enumerate(group)]
        if operator == "and":
            return lambda i, h1, h2: all(part(i, h1, h2) for part in parts)
        return lambda i, h1, h2: any(part(i, h1, h2) for part in parts)

    field_in = criteria.get("field")
    api_name = field_in.get("api_name") if isinstance(field_in, dict) else criteria.get("api_name")
    comparator, value = criteria.get("comparator"), criteria.get("value")
    if not isinstance(api_name, str) or not api_name:
        raise ReadRequestError("INVALID_QUERY", "a criteria needs field.api_name", api_name="field",
                               json_path=f"{json_path}.field")
    if api_name not in FIELDS[module]:
        raise ReadRequestError("INVALID_QUERY", f"the field {api_name!r} is not a field of {module}",
                               api_name=api_name, json_path=f"{json_path}.field")
    if api_name in TIME_FIELDS:
        return _datetime_predicate(dataset, api_name, comparator, value, json_path)
    if comparator not in TEXT_COMPARATORS:
        raise ReadRequestError("INVALID_QUERY", f"the comparator {comparator!r} is not supported for {api_name} "
                               f"(supported: {', '.join(TEXT_COMPARATORS)})", api_name=api_name,
                               json_path=f"{json_path}.comparator")
    make = dataset.makers([api_name])[0]
    if comparator == "in":
        if not isinstance(value, list) or not value:
            raise ReadRequestError("INVALID_QUERY", "the in comparator needs a non-empty list value",
                                   api_name=api_name, json_path=f"{json_path}.value")
        allowed = frozenset(str(v) for v in value)
        return lambda i, h1, h2: make(i, h1, h2) in allowed
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ReadRequestError("INVALID_QUERY", f"{comparator} needs a text or number value", api_name=api_name,
                               json_path=f"{json_path}.value")
    wanted = str(value)
    if comparator == "equal":
        return lambda i, h1, h2: make(i, h1, h2) == wanted
    return lambda i, h1, h2: make(i, h1, h2) != wanted


def _datetime_predicate(dataset: Dataset, api_name: str, comparator: Any, value: Any, json_path: str) -> Predicate:
    if comparator not in DATETIME_COMPARATORS:
        raise ReadRequestError("INVALID_QUERY", f"the comparator {comparator!r} is not supported for {api_name} "
                               f"(supported: {', '.join(DATETIME_COMPARATORS)})", api_name=api_name,
                               json_path=f"{json_path}.comparator")
    values = value if comparator == "between" else [value]
    if comparator == "between" and not (isinstance(value, list) and len(value) == 2):
        raise ReadRequestError("INVALID_QUERY", "between needs a list of two date-times", api_name=api_name,
                               json_path=f"{json_path}.value")
    instants = [parse_instant(v) for v in values]
    if any(instant is None for instant in instants):
        raise ReadRequestError("INVALID_QUERY", f"{api_name} values must be ISO 8601 date-times with an offset, "
                               f"such as 2026-01-01T00:00:00+05:30, not {value!r}", api_name=api_name,
                               json_path=f"{json_path}.value")
    if api_name == "Modified_Time":
        def epoch(i: int, h1: int, h2: int) -> int:
            return dataset.modified_epoch(h1)
    else:
        def epoch(i: int, h1: int, h2: int) -> int:
            return dataset.created_epoch(h1, h2)
    low = int(instants[0] or 0)
    high = int(instants[-1] or 0)
    tests: dict[str, Predicate] = {
        "equal": lambda i, h1, h2: epoch(i, h1, h2) == low,
        "not_equal": lambda i, h1, h2: epoch(i, h1, h2) != low,
        "greater_than": lambda i, h1, h2: epoch(i, h1, h2) > low,
        "greater_equal": lambda i, h1, h2: epoch(i, h1, h2) >= low,
        "less_than": lambda i, h1, h2: epoch(i, h1, h2) < low,
        "less_equal": lambda i, h1, h2: epoch(i, h1, h2) <= low,
        "between": lambda i, h1, h2: low <= epoch(i, h1, h2) <= high,
    }
    return tests[comparator]


def select_records(dataset: Dataset, criteria: Any = None, fields: list[str] | None = None, offset: int = 0,
                   limit: int = 1000) -> dict[str, Any]:
    """Records of ``dataset`` matching ``criteria`` (``offset``/``limit`` over the matches, Id order) and the
    number matching: the expected content of an export, for tests, without downloading it."""
    query = parse_read_request({"query": {"module": {"api_name": dataset.module}, "fields": fields,
                                          "criteria": criteria}})
    predicate = compile_criteria(dataset.module, criteria, dataset) if criteria is not None else None
    selected, matching = [], 0
    for index in dataset.matching(predicate):
        if offset <= matching < offset + limit:
            selected.append(index)
        matching += 1
    return {"fields": query.fields, "records": list(dataset.rows(selected, query.fields)), "matching": matching}


# --- pages and jobs -------------------------------------------------------------------------------------------


@dataclass
class PagePlan:
    """Where one page lies: indexes [start_index, end_index) hold its ``count`` matching records."""

    page: int
    start_index: int
    end_index: int
    count: int
    more_records: bool


def plan_page(dataset: Dataset, predicate: Predicate | None, per_page: int, *, page: int,
              start_index: int | None = None) -> PagePlan:
    """Page ``page``: from ``start_index`` (a page token's cursor) or after (page - 1) * per_page matches.

    ``end_index`` is just past the page's last record: where the next page's token starts.
    """
    if predicate is None:
        start = min(start_index if start_index is not None else (page - 1) * per_page, dataset.records)
        end = min(start + per_page, dataset.records)
        return PagePlan(page, start, end, end - start, end < dataset.records)
    matches = dataset.matching(predicate, start_index or 0)
    if start_index is None:
        for _ in islice(matches, (page - 1) * per_page):
            pass  # the earlier pages' records
    first: int | None = start_index
    count, end = 0, start_index or 0
    for index in matches:
        if count == per_page:
            return PagePlan(page, first or 0, end, count, True)  # ``index`` matches, past this page
        first = index if first is None else first
        count, end = count + 1, index + 1
    if first is None:  # nothing left to read
        return PagePlan(page, dataset.records, dataset.records, 0, False)
    return PagePlan(page, first, end, count, False)


@dataclass
class PageCursor:
    """What a ``next_page_token`` stands for: where the next page of one query starts, and since when."""

    dataset: Dataset
    criteria_key: str
    next_index: int
    next_page: int
    issued_at: float  # sandbox clock; the token is refused PAGE_TOKEN_TTL_SECONDS later

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PageCursor:
        return cls(**{**data, "dataset": Dataset(**data["dataset"])})


@dataclass
class ReadJob:
    """One Bulk Read job: its query, its planned page, and how it progresses on the sandbox clock."""

    job_id: str
    api_version: str
    created_at: float  # sandbox clock
    step_seconds: float
    dataset: Dataset
    fields: list[str]
    fields_given: bool
    criteria: dict[str, Any] | None
    per_page: int
    plan: PagePlan
    file_type: str = "csv"
    callback: dict[str, Any] | None = None
    created_by: dict[str, str] = field(default_factory=dict)
    page_token: str | None = None  # the token this job was created with
    next_page_token: str | None = None
    failure: dict[str, Any] | None = None  # set when the job is to end FAILED
    downloads: int = 0

    def state_at(self, now: float) -> str:
        """ADDED, QUEUED, IN PROGRESS, then COMPLETED (or FAILED), one step every ``step_seconds``."""
        steps = 3 if self.step_seconds <= 0 else int((now - self.created_at) // self.step_seconds)
        if steps < 3:
            return JOB_STATES[max(steps, 0)]
        return "FAILED" if self.failure else "COMPLETED"

    def finished_at(self) -> float:
        return self.created_at + 3 * max(self.step_seconds, 0.0)

    def details(self, now: float, *, module_id: str, in_progress_spelling: str = "IN PROGRESS") -> dict[str, Any]:
        """One entry of ``GET /crm/bulk/v8/read/<id>``'s ``data`` list, as Zoho's samples show it.

        A FAILED job's shape is unconfirmed: the sandbox adds ``error`` ({code, message, details}), and
        a client should rely on ``state`` only.
        """
        state = self.state_at(now)
        query: dict[str, Any] = {"module": {"id": module_id, "api_name": self.dataset.module}, "page": self.plan.page}
        if self.fields_given:
            query["fields"] = list(self.fields)
        if self.criteria is not None:
            query["criteria"] = self.criteria
        if self.page_token:
            query["page_token"] = self.page_token
        entry: dict[str, Any] = {
            "id": self.job_id, "operation": "read",
            "state": in_progress_spelling if state == "IN PROGRESS" else state,
            "query": query, "created_by": self.created_by, "created_time": org_time(self.created_at),
            "file_type": self.file_type,
        }
        if self.callback:
            entry["callback"] = self.callback
        if state == "COMPLETED":
            result: dict[str, Any] = {
                "page": self.plan.page, "count": self.plan.count,
                "download_url": f"/crm/bulk/v{self.api_version}/read/{self.job_id}/result",
                "per_page": self.per_page, "more_records": self.plan.more_records}
            if self.next_page_token:
                result["next_page_token"] = self.next_page_token
            entry["result"] = result
        elif state == "FAILED":
            entry["error"] = {"code": "INTERNAL_ERROR", "message": "the bulk read job failed", "details": {},
                              **(self.failure or {})}
        return entry

    def summary(self, now: float) -> dict[str, Any]:
        """What ``read_jobs()`` lists: enough for a test to check what a client asked and fetched."""
        return {"id": self.job_id, "module": self.dataset.module, "state": self.state_at(now), "page": self.plan.page,
                "count": self.plan.count, "more_records": self.plan.more_records, "fields": list(self.fields),
                "criteria": self.criteria, "page_token": self.page_token, "next_page_token": self.next_page_token,
                "downloads": self.downloads}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReadJob:
        return cls(**{**data, "dataset": Dataset(**data["dataset"]), "plan": PagePlan(**data["plan"])})


# --- the page zip ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipFaults:
    """How a download is to go wrong: stop after a share of the rows (``row_share`` < 1) without the
    zip's end (``complete=False``), or carry a wrong CRC-32 (``corrupt_crc``)."""

    row_share: float = 1.0
    complete: bool = True
    corrupt_crc: bool = False


def csv_blocks(job: ReadJob, *, quote_all: bool = False, row_limit: int | None = None) -> Iterator[bytes]:
    """The page's CSV, header first, as UTF-8 blocks of :data:`BLOCK_ROWS` rows."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    writer.writerow(job.fields)
    indexes = job.dataset.matching(
        compile_criteria(job.dataset.module, job.criteria, job.dataset) if job.criteria is not None else None,
        job.plan.start_index)
    limit = job.plan.count if row_limit is None else min(row_limit, job.plan.count)
    rows = job.dataset.rows(islice(indexes, limit), job.fields)
    while True:
        block = list(islice(rows, BLOCK_ROWS))
        writer.writerows(block)
        text = buffer.getvalue()
        if text:
            yield text.encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
        if len(block) < BLOCK_ROWS:
            return


def page_zip(job: ReadJob, *, quote_all: bool = False, faults: ZipFaults = ZipFaults()) -> Iterator[bytes]:
    """The page's zip holding ``<job_id>.csv``, generated as it is consumed."""
    row_limit = None if faults.row_share >= 1 else int(job.plan.count * max(faults.row_share, 0.0))
    bound = (job.plan.count + 1) * job.dataset.max_row_bytes(job.fields)
    zip64 = bound + bound // 500 + 65536 >= 0xFFFFFFFF  # deflate can grow incompressible data a little
    return zip_stream(f"{job.job_id}.csv", csv_blocks(job, quote_all=quote_all, row_limit=row_limit),
                      zip64=zip64, modified=job.finished_at(), complete=faults.complete,
                      corrupt_crc=faults.corrupt_crc)


def zip_stream(member_name: str, blocks: Iterable[bytes], *, zip64: bool, modified: float, complete: bool = True,
               corrupt_crc: bool = False) -> Iterator[bytes]:
    """A one-member deflated zip written front to back: local header, data, data descriptor (flag bit 3,
    so sizes and CRC-32 follow the data), central directory, end records (zip64 ones when ``zip64``).

    ``complete=False`` stops after the data, flushed so far (a body cut short); ``corrupt_crc`` writes a
    CRC-32 that does not match, so the data decodes fine and only the check at the end fails.
    """
    name = member_name.encode()
    t = time.gmtime(int(modified) + ORG_UTC_OFFSET_SECONDS)
    dos_time = (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)
    dos_date = ((max(t.tm_year, 1980) - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    version, flags = (45 if zip64 else 20), 0x08
    sizes_mark = 0xFFFFFFFF if zip64 else 0
    local_extra = struct.pack("<HHQQ", 0x0001, 16, 0, 0) if zip64 else b""
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, version, flags, 8, dos_time, dos_date, 0, sizes_mark,
                        sizes_mark, len(name), len(local_extra)) + name + local_extra
    yield local
    crc, raw_size, packed_size = 0, 0, 0
    compressor = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, -15)
    for block in blocks:
        crc = zlib.crc32(block, crc)
        raw_size += len(block)
        packed = compressor.compress(block)
        if packed:
            packed_size += len(packed)
            yield packed
    if not complete:
        tail = compressor.flush(zlib.Z_SYNC_FLUSH)
        if tail:
            yield tail
        return
    tail = compressor.flush()
    packed_size += len(tail)
    if tail:
        yield tail
    if corrupt_crc:
        crc ^= 0xFF
    descriptor = (struct.pack("<IIQQ", 0x08074B50, crc, packed_size, raw_size) if zip64
                  else struct.pack("<IIII", 0x08074B50, crc, packed_size, raw_size))
    central_offset = len(local) + packed_size + len(descriptor)
    central_extra = struct.pack("<HHQQ", 0x0001, 16, raw_size, packed_size) if zip64 else b""
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | version, version, flags, 8, dos_time, dos_date,
                          crc, 0xFFFFFFFF if zip64 else packed_size, 0xFFFFFFFF if zip64 else raw_size, len(name),
                          len(central_extra), 0, 0, 0, 0o100644 << 16, 0) + name + central_extra
    end = b""
    if zip64:
        zip64_end_offset = central_offset + len(central)
        end += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, (3 << 8) | 45, 45, 0, 0, 1, 1, len(central),
                           central_offset)
        end += struct.pack("<IIQI", 0x07064B50, 0, zip64_end_offset, 1)
    end += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), min(central_offset, 0xFFFFFFFF), 0)
    yield descriptor + central + end
