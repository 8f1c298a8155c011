"""Write a realistic Zoho Bulk Write result zip for the benchmarks, streaming, cached on disk.

Why generated rather than a fixture file: the interesting size (millions of rows, hundreds of MB of
CSV) is too big to commit, and a generator makes every run reproducible from its parameters. The
zip is cached under ``benchmarks/.data/`` keyed by those parameters (and :data:`GENERATOR_VERSION`,
bumped whenever the content changes), next to a JSON manifest of what it holds (row counts per
status, error codes, bytes): the benchmark and its smoke test check every pipeline's output
against that manifest, so a fast-but-wrong pipeline cannot win.

The rows are what Zoho writes and what makes CSV decoding hard: quoted commas, quoted newlines,
doubled quotes, non-ASCII text, 19-digit record ids (which must stay text), about 10 % SKIPPED rows
with multi-error ``ERRORS`` such as ``MANDATORY_NOT_FOUND-Company,Last_Name:DUPLICATE_DATA-Email``,
CRLF line ends. Values are picked by a multiplicative hash of the row index (no RNG state), so
generation runs at a few million rows a minute and the CSV never exists whole in memory: it is
written block by block into a deflated zip member.

Run ``python -m benchmarks.generate --rows 100000`` to build (or find) one and print its manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_ROWS",
    "GENERATOR_VERSION",
    "MEMBER_NAME",
    "RESULT_HEADER",
    "ResultManifest",
    "csv_blocks",
    "ensure_result_zip",
]

DATA_DIR = Path(__file__).resolve().parent / ".data"
DEFAULT_ROWS = 5_000_000
#: Bump when the generated content changes, so stale cached zips are not reused.
GENERATOR_VERSION = 1
MEMBER_NAME = "Leads-bulkwrite.csv"
RESULT_HEADER = ("Last_Name", "Email", "Company", "RECORD_ID", "STATUS", "ERRORS")
BLOCK_ROWS = 20_000
FIRST_RECORD_ID = 4_150_868_000_005_350_003  # 19 digits, like Zoho's

# Pools of values, already CSV-escaped (quoted and quote-doubled where RFC 4180 requires it), so the
# hot loop only concatenates. Sizes are co-prime-ish so combinations do not repeat in lockstep.
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
    '"Smith, Jr."', '"O\'Brien, III"', '"The ""Rock"" Johnson"', "Müller", "Østergaard", "Nguyễn", "Żółć",
)
FIRST_NAMES = ("ann", "bob", "chen", "dora", "emil", "fatima", "gus", "hana", "ivan", "jo", "kemal", "lin", "maria")
DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "sales.acme.example", "globex.example.co.uk",
           "eu.initech-solutions.example")
COMPANIES = (
    '"Acme, Inc."', "Globex Corporation", "Initech", "Umbrella Corp", '"Stark Industries, Ltd."', "Wayne Enterprises",
    "Hooli", '"Vandelay Industries, Import/Export"', "Zürich Versicherungs AG", "Soylent", "Tyrell Corporation",
    '"Cyberdyne ""Systems"""', "Massive Dynamic", "Oscorp", "Aperture Science", "Black Mesa", "Wonka Industries",
    "Gringotts", "Duff Beer", '"Los Pollos Hermanos, S.A."', "北京贸易有限公司", "Pied Piper", "Dunder Mifflin",
)
#: Quoted newlines (CRLF and bare LF) inside a value: the row continues on the next physical line.
MULTILINE_COMPANIES = ('"Initech\r\nBranch office 7"', '"Acme, Inc.\nAttn: Accounts Payable"')
#: SKIPPED rows' ERRORS texts, as Zoho writes them, with the codes each one holds (for the manifest).
ERROR_TEXTS = (
    ('"MANDATORY_NOT_FOUND-Company,Last_Name:DUPLICATE_DATA-Email"', ("MANDATORY_NOT_FOUND", "DUPLICATE_DATA")),
    ("DUPLICATE_DATA-Email", ("DUPLICATE_DATA",)),
    ("INVALID_DATA-Email", ("INVALID_DATA",)),
    ("MANDATORY_NOT_FOUND-Last_Name", ("MANDATORY_NOT_FOUND",)),
    ('"INVALID_DATA-Email,Company:LIMIT_EXCEEDED-Company"', ("INVALID_DATA", "LIMIT_EXCEEDED")),
    ("NOT_APPROVED", ("NOT_APPROVED",)),
    ("BLOCKED_RECORD:CANNOT_PROCESS-Email", ("BLOCKED_RECORD", "CANNOT_PROCESS")),
)
# STATUS by hash bucket out of 1000: 60 % ADDED, 29.5 % UPDATED, 10 % SKIPPED, 0.5 % UNPROCESSED.
STATUS_BUCKETS = (("ADDED", 600), ("UPDATED", 895), ("SKIPPED", 995), ("UNPROCESSED", 1000))
MULTILINE_PER_MILLE = 10  # 1 % of rows carry a quoted newline
MASK64 = (1 << 64) - 1


@dataclass
class ResultManifest:
    """What a generated result zip holds: the truth every benchmark case is checked against."""

    rows: int
    seed: int
    generator_version: int
    member_name: str
    header: list[str]
    csv_bytes: int = 0
    zip_bytes: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    errors_by_code: dict[str, int] = field(default_factory=dict)
    rows_with_quoted_newlines: int = 0

    @classmethod
    def load(cls, path: Path) -> ResultManifest:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def status_for_bucket(bucket: int) -> str:
    for status, upper in STATUS_BUCKETS:
        if bucket < upper:
            return status
    raise AssertionError(f"bucket {bucket} outside 0..999")


STATUS_BY_BUCKET = tuple(status_for_bucket(bucket) for bucket in range(1000))


def csv_blocks(rows: int, seed: int, manifest: ResultManifest) -> Iterator[bytes]:
    """The result CSV (header first) as encoded blocks of :data:`BLOCK_ROWS` rows; fills ``manifest``.

    Row ``i``'s values come from a 64-bit mix of ``i + seed`` (the splitmix64 finaliser, shortened):
    different bit ranges of it pick each column, so every row is a pure function of ``(i, seed)``.
    """
    status_counts: Counter[str] = Counter()
    error_text_counts: Counter[int] = Counter()
    multiline = 0
    yield (",".join(RESULT_HEADER) + "\r\n").encode()
    for start in range(0, rows, BLOCK_ROWS):
        lines = []
        append = lines.append
        for i in range(start, min(start + BLOCK_ROWS, rows)):
            h = ((i + seed) * 0x9E3779B97F4A7C15) & MASK64
            h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            h ^= h >> 31
            status = STATUS_BY_BUCKET[h % 1000]
            first = FIRST_NAMES[(h >> 10) % len(FIRST_NAMES)]
            last = LAST_NAMES[(h >> 14) % len(LAST_NAMES)]
            email = f"{first}.{i:08d}@{DOMAINS[(h >> 20) % len(DOMAINS)]}"
            if (h >> 24) % 1000 < MULTILINE_PER_MILLE:
                company = MULTILINE_COMPANIES[(h >> 34) % len(MULTILINE_COMPANIES)]
                multiline += 1
            else:
                company = COMPANIES[(h >> 34) % len(COMPANIES)]
            if status == "SKIPPED":
                which = (h >> 40) % len(ERROR_TEXTS)
                error_text_counts[which] += 1
                if which in (0, 3):  # the mandatory field really is missing
                    last = ""
                append(f"{last},{email},{company},,SKIPPED,{ERROR_TEXTS[which][0]}\r\n")
            elif status == "UNPROCESSED":
                append(f"{last},{email},{company},,UNPROCESSED,\r\n")
            else:
                append(f"{last},{email},{company},{FIRST_RECORD_ID + i},{status},\r\n")
            status_counts[status] += 1
        yield "".join(lines).encode()
    manifest.by_status = dict(sorted(status_counts.items()))
    errors_by_code: Counter[str] = Counter()
    for which, count in error_text_counts.items():
        for code in ERROR_TEXTS[which][1]:
            errors_by_code[code] += count
    manifest.errors_by_code = dict(sorted(errors_by_code.items()))
    manifest.rows_with_quoted_newlines = multiline


def cache_stem(rows: int, seed: int) -> str:
    return f"bulk_write_result_r{rows}_s{seed}_v{GENERATOR_VERSION}"


def ensure_result_zip(
    rows: int = DEFAULT_ROWS, *, seed: int = 0, data_dir: Path = DATA_DIR
) -> tuple[Path, ResultManifest]:
    """The cached zip and its manifest for ``(rows, seed)``, generating them if missing.

    The zip is written to a temporary name and renamed, manifest last, so an interrupted run never
    leaves a zip that looks complete.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, not {rows}")
    data_dir.mkdir(parents=True, exist_ok=True)
    zip_path = data_dir / f"{cache_stem(rows, seed)}.zip"
    manifest_path = data_dir / f"{cache_stem(rows, seed)}.json"
    if zip_path.exists() and manifest_path.exists():
        return zip_path, ResultManifest.load(manifest_path)
    manifest = ResultManifest(rows=rows, seed=seed, generator_version=GENERATOR_VERSION,
                              member_name=MEMBER_NAME, header=list(RESULT_HEADER))
    partial = zip_path.with_name(f"{zip_path.name}.{os.getpid()}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            info = zipfile.ZipInfo(MEMBER_NAME, date_time=(2024, 5, 11, 12, 38, 29))
            info.compress_type = zipfile.ZIP_DEFLATED
            # zip64 only when the member may pass 4 GiB (about 100 bytes a row), as most zippers do.
            with archive.open(info, "w", force_zip64=rows * 100 > 0xFFFF_FFFF) as member:
                for block in csv_blocks(rows, seed, manifest):
                    member.write(block)
                    manifest.csv_bytes += len(block)
        manifest.zip_bytes = partial.stat().st_size
        os.replace(partial, zip_path)
    finally:
        partial.unlink(missing_ok=True)
    manifest.save(manifest_path)
    return zip_path, manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"data rows (default {DEFAULT_ROWS:,})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    zip_path, manifest = ensure_result_zip(args.rows, seed=args.seed)
    print(zip_path)
    print(json.dumps(asdict(manifest), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
