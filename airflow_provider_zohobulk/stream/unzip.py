"""Byte chunks of a zip archive -> its members, streamed, with zip-bomb limits and typed errors.

Built on ``stream_unzip`` because it reads a zip front to back (local headers, data descriptors,
zip64) without seeking, so a download never has to touch the disk. Three things it does not do, and
this module adds:

* **limits**: it has no zip-bomb guard, so decompressed bytes, the compression ratio and the member
  count are counted here (:class:`UnzipLimits`);
* **the central directory**: it reads the directory at the end without checking it; here the
  archive must end with a whole end record, the directory must end exactly where the end records
  begin, and its names and sizes must match the members read (a CRC covers a member's data, not
  the name in its header);
* **errors a person can act on**: its exceptions are translated into the package's hierarchy
  (:mod:`airflow_provider_zohobulk.errors`), and a body that is not a zip at all (Zoho answers an
  expired link with a small JSON document, proxies answer with HTML) is described instead of being
  reported as a "bad signature".

Integrity (CRC32, sizes) is only known at the *end* of each member: everything a member yields is
provisional until its iterator is exhausted, which is why every sink stages and commits at the end.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain

import stream_unzip

from airflow_provider_zohobulk.errors import (
    ArchiveError,
    ArchiveLimitError,
    CorruptArchiveError,
    EncryptedArchiveError,
    NotAZipError,
    ResultLayoutError,
    TruncatedArchiveError,
    UnsupportedArchiveError,
    ZohoBulkError,
)

__all__ = ["UnzipLimits", "ZipMember", "iter_csv_members", "iter_members"]

GiB = 1 << 30
MiB = 1 << 20

LOCAL_FILE_HEADER = b"PK\x03\x04"
# An archive with no members at all is nothing but its end-of-central-directory record.
EMPTY_ARCHIVE = b"PK\x05\x06"
# The end-of-central-directory record: 22 bytes plus a comment of up to 65535 bytes.
MAX_END_RECORD_BYTES = 22 + 0xFFFF
# The central directory is kept (as the end of the input) up to this size to check it against the
# members read: 1000 members (the default limit) with 100-byte names take ~150 KiB. A larger one is
# refused (ArchiveLimitError), never left unchecked.
MAX_DIRECTORY_BYTES = 512 * 1024
CENTRAL_DIRECTORY_ENTRY = b"PK\x01\x02"
ZIP64_END_RECORD = b"PK\x06\x06"
ZIP64_END_LOCATOR = b"PK\x06\x07"
# A zip64 archive ends with: directory, zip64 end record (56 bytes without extensible data), its
# locator (20 bytes), then the plain end record.
ZIP64_END_RECORD_BYTES = 56
ZIP64_END_LOCATOR_BYTES = 20
# The input's last bytes kept to check the central directory: the largest directory checked, both
# zip64 records and the largest end record.
TAIL_BYTES = MAX_DIRECTORY_BYTES + ZIP64_END_RECORD_BYTES + ZIP64_END_LOCATOR_BYTES + MAX_END_RECORD_BYTES
# Enough of a non-zip body to recognise it and to quote a short excerpt.
SNIFF_BYTES = 512
EXCERPT_CHARS = 160
# The ratio is meaningless on tiny amounts (a few header bytes skew it), so it is judged only after
# this much has been decompressed.
RATIO_GRACE_BYTES = MiB


@dataclass(frozen=True)
class UnzipLimits:
    """Safety limits against zip bombs; the defaults pass any genuine Zoho result.

    A 200k-row Bulk Read page is a few hundred MB of CSV and a CSV zips about 9:1, so the defaults
    leave ample room; raise them for exceptionally large exports.

    :param max_total_bytes: decompressed bytes over all members.
    :param max_member_bytes: decompressed bytes of any one member.
    :param max_ratio: decompressed / compressed bytes so far, judged once 1 MiB has come out.
    :param max_members: number of members (directories included).
    :param max_columns: fields in any CSV row, header or data (checked by the decoder): a Zoho result
        has at most 203, and decoding costs memory in proportion to the columns.
    """

    max_total_bytes: int = 20 * GiB
    max_member_bytes: int = 10 * GiB
    max_ratio: float = 200.0
    max_members: int = 1000
    max_columns: int = 4096


class ZipMember:
    """One member of the archive, whose bytes are streamed.

    :attr:`chunks` must be consumed before the next member is requested; a member left
    unconsumed is drained (and still checked) by the iterator that produced it.
    """

    def __init__(self, name: str, size: int | None, chunks: Iterator[bytes]) -> None:
        self.name = name
        #: Uncompressed size from the local header; None when only a data descriptor carries it.
        self.size = size
        self.chunks = chunks

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    @property
    def is_csv(self) -> bool:
        return not self.is_dir and self.name.lower().endswith(".csv")

    def __repr__(self) -> str:
        return f"ZipMember(name={self.name!r}, size={self.size!r})"


def decode_member_name(raw: bytes) -> str:
    """Member names are UTF-8 (flag bit 11) or, in old archivers, cp437.

    stream_unzip hands over the raw bytes without the flag, so UTF-8 is tried first: a cp437 name
    with non-ASCII bytes is almost never valid UTF-8, so the guess is right in practice.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def describe_non_zip(head: bytes) -> str:
    """Say what a body that is not a zip looks like, with a short excerpt that is safe to log.

    Only the first bytes of the *response body* are quoted (never request headers or tokens); Zoho's
    error documents are short JSON objects whose text is the most useful part of the message.
    """
    if not head:
        return "the download is empty (0 bytes), not a zip archive"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    excerpt = text[:EXCERPT_CHARS].replace("\r", " ").replace("\n", " ")
    if len(text) > EXCERPT_CHARS:
        excerpt += "..."
    lowered = text[:200].lower()
    if text.startswith(("{", "[")):
        try:
            document = json.loads(text)
        except ValueError:
            return f"the download is a JSON body (possibly cut short), not a zip archive: {excerpt!r}"
        return f"the download is a JSON body, not a zip archive: {json.dumps(document)[:EXCERPT_CHARS]}"
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered:
        return f"the download is an HTML page, not a zip archive: {excerpt!r}"
    if lowered.startswith("<?xml") or lowered.startswith("<"):
        return f"the download is an XML/markup document, not a zip archive: {excerpt!r}"
    if head[:4] in (b"PK\x01\x02", b"PK\x07\x08", b"PK\x06\x06"):
        return f"the download starts inside a zip archive (signature {head[:4]!r}): it was cut at the front"
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head[:64])
    if printable >= 0.9 * min(len(head), 64):
        return f"the download is text, not a zip archive: {excerpt!r}"
    return f"the download is binary data that is not a zip archive (starts with {head[:8].hex(' ')})"


def sniff(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Check the body starts like a zip, then give back the same bytes unchanged.

    Raises :class:`NotAZipError` before anything is decompressed, so an error page served instead
    of the file is reported as such rather than as a corrupt archive.
    """
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    if not (head.startswith(LOCAL_FILE_HEADER) or head.startswith(EMPTY_ARCHIVE)):
        raise NotAZipError(describe_non_zip(head[:SNIFF_BYTES]))
    return chain((head,), iterator)


class ArchiveMeter:
    """Counts compressed bytes in and decompressed bytes out, and enforces :class:`UnzipLimits`."""

    def __init__(self, limits: UnzipLimits) -> None:
        self.limits = limits
        self.compressed_in = 0
        self.total_out = 0
        self.members = 0
        #: The last input chunks, just enough to hold the central directory and the end record.
        self.tail_chunks: deque[bytes] = deque()
        self.tail_bytes = 0
        #: (raw name, decompressed bytes) of every member read to its end, in archive order.
        self.read: list[tuple[bytes, int]] = []

    def count_input(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Count the compressed bytes and keep the last ones: the central directory and end record."""
        for chunk in chunks:
            self.compressed_in += len(chunk)
            self.tail_chunks.append(chunk)
            self.tail_bytes += len(chunk)
            while self.tail_bytes - len(self.tail_chunks[0]) >= TAIL_BYTES:
                self.tail_bytes -= len(self.tail_chunks.popleft())
            yield chunk

    def tail(self) -> bytes:
        """The last bytes of the input (at least the directory and end record, when they fit)."""
        return b"".join(self.tail_chunks)

    def end_record_at(self, tail: bytes) -> int:
        """Where in ``tail`` (:meth:`tail`) the end-of-central-directory record starts, or -1 when the
        archive does not end with a whole one.

        stream_unzip reads the central directory without checking it, so an archive cut inside its
        directory (all members complete) would otherwise pass as whole.
        """
        position = tail.rfind(EMPTY_ARCHIVE, max(len(tail) - MAX_END_RECORD_BYTES, 0))
        while position >= 0:
            if len(tail) >= position + 22:
                comment_length = little_endian(tail, position + 20, 2)
                if position + 22 + comment_length == len(tail):
                    return position
            position = tail.rfind(EMPTY_ARCHIVE, max(len(tail) - MAX_END_RECORD_BYTES, 0), position)
        return -1

    def check_directory(self, tail: bytes, end_record: int) -> None:
        """Compare the central directory with the members read: names, decompressed sizes and count.

        A member's CRC covers its data, not its local header: a damaged name (``A.csv`` read as
        ``A.csw``) would make a CSV look like another file, skipped, and the load would commit without
        its rows. The central directory holds a second copy of every name and size. Never skipped:
        a directory that cannot be located exactly, or is too large to keep, is an error.
        """
        entries = read_central_directory(tail, end_record, self.compressed_in - len(tail))
        if len(entries) != len(self.read):
            raise CorruptArchiveError(
                f"the archive's central directory lists {len(entries)} members but {len(self.read)} were read")
        for number, ((listed_name, listed_size), (read_name, read_size)) in enumerate(
                zip(entries, self.read, strict=True), start=1):
            if listed_name != read_name:
                raise CorruptArchiveError(
                    f"member {number} is named {decode_member_name(read_name)!r} in its header but "
                    f"{decode_member_name(listed_name)!r} in the central directory: the archive is damaged",
                    file_name=decode_member_name(listed_name))
            if listed_size != read_size:
                raise CorruptArchiveError(
                    f"the central directory gives {listed_size} bytes but {read_size} were decompressed",
                    file_name=decode_member_name(listed_name))

    def start_member(self, name: str, declared_size: int | None) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveLimitError(
                f"the archive has more than max_members={self.limits.max_members} members", file_name=name)
        if declared_size is not None and declared_size > self.limits.max_member_bytes:
            raise ArchiveLimitError(
                f"the member declares {declared_size} bytes uncompressed, over "
                f"max_member_bytes={self.limits.max_member_bytes}", file_name=name)

    def count_output(self, name: str, member_out: int, produced: int) -> None:
        self.total_out += produced
        limits = self.limits
        if member_out > limits.max_member_bytes:
            raise ArchiveLimitError(
                f"the member decompresses to more than max_member_bytes={limits.max_member_bytes} bytes",
                file_name=name)
        if self.total_out > limits.max_total_bytes:
            raise ArchiveLimitError(
                f"the archive decompresses to more than max_total_bytes={limits.max_total_bytes} bytes",
                file_name=name)
        if self.total_out >= RATIO_GRACE_BYTES and self.compressed_in:
            ratio = self.total_out / self.compressed_in
            if ratio > limits.max_ratio:
                raise ArchiveLimitError(
                    f"compression ratio {ratio:.0f}:1 ({self.total_out} bytes out of {self.compressed_in} "
                    f"compressed) exceeds max_ratio={limits.max_ratio:g}", file_name=name)


def read_central_directory(tail: bytes, end_record: int, tail_offset: int) -> list[tuple[bytes, int]]:
    """``(raw name, uncompressed size)`` of every central-directory entry, zip64 included.

    ``tail`` holds the archive's last bytes from archive offset ``tail_offset`` and ``end_record`` is
    where the end record starts in it. The directory's declared offset plus size must meet the end
    records exactly (the zip64 end record when there is one, else the plain end record): a damaged
    size or offset would otherwise send the check elsewhere, or nowhere, and a member whose header
    name is damaged too would be skipped without a word. Raises :class:`CorruptArchiveError` when
    they do not meet, and :class:`ArchiveLimitError` for a directory too large to keep and check.
    """
    def number(at: int, size: int) -> int:
        return little_endian(tail, at, size)

    count, size, offset = number(end_record + 10, 2), number(end_record + 12, 4), number(end_record + 16, 4)
    directory_end = tail_offset + end_record
    locator = end_record - ZIP64_END_LOCATOR_BYTES
    has_locator = locator >= 0 and tail[locator:locator + 4] == ZIP64_END_LOCATOR
    # Like zipfile, a locator right before the end record means zip64 even without 0xFFFF markers:
    # some writers add the zip64 records whether or not they are needed.
    if count == 0xFFFF or 0xFFFFFFFF in (size, offset) or has_locator:
        if not has_locator:
            raise CorruptArchiveError("the archive's end record points to a zip64 record that is not there")
        directory_end = number(locator + 8, 8)
        record = directory_end - tail_offset
        if record < 0:
            from_end = tail_offset + len(tail) - directory_end
            raise CorruptArchiveError(
                f"the archive's zip64 end record is not where its locator says ({from_end} bytes before the "
                f"archive's end, further back than the {TAIL_BYTES} bytes this reader keeps)")
        if record + ZIP64_END_RECORD_BYTES > locator or tail[record:record + 4] != ZIP64_END_RECORD:
            raise CorruptArchiveError("the archive's zip64 end record is not where its locator says")
        count, size, offset = number(record + 32, 8), number(record + 40, 8), number(record + 48, 8)
    if offset + size != directory_end:
        raise CorruptArchiveError(
            f"the archive's central directory ({size} bytes at offset {offset}, as its end record says) does "
            f"not end where its end record starts (offset {directory_end}): the archive is damaged")
    if size > MAX_DIRECTORY_BYTES:
        raise ArchiveLimitError(
            f"the archive's central directory is {size} bytes, over the {MAX_DIRECTORY_BYTES} this reader "
            "keeps to check it against the members read")
    start = offset - tail_offset
    if start < 0:  # only a zip64 end record with a large extensible-data block gets here
        raise ArchiveLimitError(
            f"the archive's central directory starts {tail_offset + len(tail) - offset} bytes before the "
            f"archive's end, further back than the {TAIL_BYTES} bytes this reader keeps to check it")
    entries: list[tuple[bytes, int]] = []
    at = start
    for _ in range(count):
        if tail[at:at + 4] != CENTRAL_DIRECTORY_ENTRY:
            raise CorruptArchiveError(f"the archive's central directory is damaged (entry {len(entries) + 1})")
        uncompressed = number(at + 24, 4)  # CRCs and compressed sizes are stream_unzip's to check
        name_length, extra_length, comment_length = number(at + 28, 2), number(at + 30, 2), number(at + 32, 2)
        name = tail[at + 46:at + 46 + name_length]
        if uncompressed == 0xFFFFFFFF:  # the real size is the first field of the zip64 extra block
            extra, position = tail[at + 46 + name_length:at + 46 + name_length + extra_length], 0
            while position + 4 <= len(extra):
                field_id, field_size = little_endian(extra, position, 2), little_endian(extra, position + 2, 2)
                if field_id == 0x0001 and field_size >= 8:
                    uncompressed = little_endian(extra, position + 4, 8)
                    break
                position += 4 + field_size
        entries.append((bytes(name), uncompressed))
        at += 46 + name_length + extra_length + comment_length
    return entries


def little_endian(data: bytes, at: int, size: int) -> int:
    """The unsigned little-endian integer of ``size`` bytes at ``at`` (zip's byte order)."""
    return int.from_bytes(data[at:at + size], "little")


def translate(exc: stream_unzip.UnzipError, file_name: str | None, where: str = "") -> ArchiveError:
    """Map a stream_unzip exception onto the package's typed errors, with a plain-words message.

    ``where`` locates a failure that belongs to no member (between members, or at the end).
    """
    error_class, message = classify(exc)
    return error_class(f"{message} {where}" if where else message, file_name=file_name)


def classify(exc: stream_unzip.UnzipError) -> tuple[type[ArchiveError], str]:
    kind = type(exc).__name__
    if isinstance(exc, stream_unzip.TruncatedDataError):
        return TruncatedArchiveError, "the archive ends before it is complete (truncated download?)"
    if isinstance(exc, stream_unzip.CRC32IntegrityError):
        return CorruptArchiveError, "CRC32 mismatch: the member's data is corrupt"
    if isinstance(exc, stream_unzip.SizeIntegrityError):
        return CorruptArchiveError, f"size mismatch ({kind}): the member's data does not match its recorded size"
    if isinstance(exc, stream_unzip.UncompressError):
        return CorruptArchiveError, f"the compressed data cannot be decompressed ({kind})"
    if isinstance(exc, (stream_unzip.MissingPasswordError, stream_unzip.PasswordError)):
        return EncryptedArchiveError, "the member is password-protected; Zoho result files never are"
    if isinstance(exc, stream_unzip.NotStreamUnzippable):
        return UnsupportedArchiveError, ("the member is stored uncompressed with its size only in a trailing data "
                              "descriptor, which cannot be read as a stream")
    if isinstance(exc, stream_unzip.UnsupportedCompressionTypeError):
        method = exc.args[0] if exc.args else "?"
        return UnsupportedArchiveError, f"the member uses an unsupported compression method ({method})"
    if isinstance(exc, stream_unzip.UnsupportedFeatureError):
        return UnsupportedArchiveError, f"the member uses an unsupported zip feature ({kind})"
    if isinstance(exc, stream_unzip.UnexpectedSignatureError):
        return CorruptArchiveError, "malformed zip structure: unexpected record signature"
    return CorruptArchiveError, f"malformed zip archive ({kind})"


def iter_members(
    chunks: Iterable[bytes], *, limits: UnzipLimits = UnzipLimits(), chunk_size: int = 65536
) -> Iterator[ZipMember]:
    """Yield the members of the zip whose bytes arrive as ``chunks``, in archive order.

    Each member's :attr:`ZipMember.chunks` yields at most ``chunk_size`` bytes at a time, so memory
    is bounded whatever the member's size. A member the caller does not drain is drained here
    before the next one (its CRC is still checked). Every error is an
    :class:`~airflow_provider_zohobulk.errors.ArchiveError` subclass naming the member when known.
    """
    meter = ArchiveMeter(limits)
    raw_members = stream_unzip.stream_unzip(
        meter.count_input(sniff(chunks)), chunk_size=chunk_size, allow_zip64=True)
    previous: Iterator[bytes] | None = None
    previous_name: str | None = None
    while True:
        if previous is not None:
            for _ in previous:
                pass
        try:
            raw_name, size, raw_chunks = next(raw_members)
        except StopIteration:
            tail = meter.tail()
            end_record = meter.end_record_at(tail)
            if end_record < 0:
                where = f"after member {previous_name!r}" if previous_name else "at the start of the archive"
                raise TruncatedArchiveError(
                    f"the archive ends before it is complete: its central directory is cut short ({where})"
                ) from None
            meter.check_directory(tail, end_record)
            return
        except stream_unzip.UnzipError as exc:
            # A failure between members is about the next one's header, or the end of the archive.
            where = f"after member {previous_name!r}" if previous_name else "at the start of the archive"
            raise translate(exc, None, where) from exc
        name = decode_member_name(raw_name)
        meter.start_member(name, size)
        previous = checked_chunks(raw_chunks, name, meter, raw_name)
        previous_name = name
        yield ZipMember(name, size, previous)


def checked_chunks(raw_chunks: Iterable[bytes], name: str, meter: ArchiveMeter, raw_name: bytes) -> Iterator[bytes]:
    """A member's chunks, counted against the limits, with stream_unzip errors translated."""
    member_out = 0
    try:
        for chunk in raw_chunks:
            member_out += len(chunk)
            meter.count_output(name, member_out, len(chunk))
            yield chunk
        meter.read.append((raw_name, member_out))
    except stream_unzip.UnzipError as exc:
        raise translate(exc, name) from exc
    except ZohoBulkError as exc:
        raise exc.with_context(file_name=name) from None


def iter_csv_members(
    chunks: Iterable[bytes],
    *,
    limits: UnzipLimits = UnzipLimits(),
    on_skip: Callable[[str, int], None] | None = None,
) -> Iterator[ZipMember]:
    """Yield only the ``.csv`` members; drain every other member and report it via ``on_skip``.

    ``on_skip(name, size)`` receives the decompressed size actually read (directories: 0). An
    archive without any CSV member raises :class:`ResultLayoutError` naming what it did hold.
    """
    seen: list[str] = []
    found_csv = False
    for member in iter_members(chunks, limits=limits):
        seen.append(member.name)
        if member.is_csv:
            found_csv = True
            yield member
            continue
        skipped_bytes = sum(len(chunk) for chunk in member.chunks)
        if on_skip is not None and not member.is_dir:
            on_skip(member.name, skipped_bytes)
    if not found_csv:
        held = ", ".join(repr(name) for name in seen[:20]) or "no members at all"
        if len(seen) > 20:
            held += f", ... ({len(seen)} members)"
        raise ResultLayoutError(f"the result archive holds no .csv file: it holds {held}")
