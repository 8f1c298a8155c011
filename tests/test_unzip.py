"""stream/unzip.py: members out of zip bytes, limits, and one typed error per way a download goes wrong."""

from __future__ import annotations

import io
import zipfile

import pytest

from airflow_provider_zohobulk.errors import (
    ArchiveLimitError,
    CorruptArchiveError,
    EncryptedArchiveError,
    NotAZipError,
    ResultLayoutError,
    TruncatedArchiveError,
)
from airflow_provider_zohobulk.stream.unzip import (
    TAIL_BYTES,
    ZIP64_END_RECORD_BYTES,
    ArchiveMeter,
    UnzipLimits,
    iter_csv_members,
    iter_members,
    read_central_directory,
)
from tests.fixtures.zips import (
    SAMPLE_RESULT_ROWS,
    chunked,
    corrupt_crc_field,
    corrupt_first_member,
    make_result_csv,
    mark_zipcrypto_encrypted,
    stream_zip_chunks,
    truncate,
    zip_with_stream_zip,
    zip_with_zipfile,
)

CSV = make_result_csv(SAMPLE_RESULT_ROWS * 50)
MEMBERS = {"Leads-bulkwrite.csv": CSV, "notes/readme.txt": b"not a result\n", "Contacts-bulkwrite.CSV": CSV[:300]}


def read_all(archive: bytes, chunk_size: int = 4096, **kwargs) -> dict[str, bytes]:
    return {m.name: b"".join(m.chunks) for m in iter_members(chunked(archive, chunk_size), **kwargs)}


ARCHIVERS = {
    "zipfile-deflate": lambda members: zip_with_zipfile(members),
    "zipfile-stored": lambda members: zip_with_zipfile(members, compression="stored"),
    "zipfile-zip64": lambda members: zip_with_zipfile(members, force_zip64=True),
    "zipfile-bzip2": lambda members: zip_with_zipfile(members, compression="bzip2"),
    "stream_zip-data-descriptor": lambda members: zip_with_stream_zip(members),
    "stream_zip-zip64": lambda members: zip_with_stream_zip(members, zip64=True),
    "stream_zip-stored": lambda members: zip_with_stream_zip(members, compression="stored"),
}


@pytest.mark.parametrize("archiver", ARCHIVERS.values(), ids=ARCHIVERS.keys())
def test_every_archive_layout_round_trips_all_members_in_order(archiver):
    archive = archiver(MEMBERS)
    assert read_all(archive) == MEMBERS
    assert list(read_all(archive)) == list(MEMBERS)


def test_one_byte_chunks_give_the_same_members():
    archive = zip_with_stream_zip(MEMBERS)
    assert read_all(archive, chunk_size=1) == MEMBERS


def test_member_attributes_size_name_and_csv_detection():
    archive = zip_with_zipfile({"dir/": b"", "A.CSV": b"a\n", "b.csv.txt": b"x", "Zürich.csv": b"z\n"})
    members = []
    for member in iter_members(chunked(archive, 100)):
        members.append((member.name, member.size, member.is_csv))
        b"".join(member.chunks)
    assert members == [("dir/", 0, False), ("A.CSV", 2, True), ("b.csv.txt", 1, False), ("Zürich.csv", 2, True)]


def test_size_is_unknown_when_only_a_data_descriptor_carries_it():
    archive = zip_with_stream_zip({"a.csv": b"x,y\n"})
    sizes = [(m.size, b"".join(m.chunks)) for m in iter_members([archive])]
    assert sizes == [(None, b"x,y\n")]


def test_cp437_member_names_are_decoded():
    # A name with the UTF-8 flag cleared and a non-UTF-8 byte: 0x81 is 'ü' in cp437.
    archive = zip_with_zipfile({"Zxrich.csv": b"a\n"}, compression="stored")
    archive = archive.replace(b"Zxrich.csv", b"Z\x81rich.csv")  # local header and central directory
    names = [m.name for m in iter_members([archive])]
    assert names == ["Zürich.csv"]


def test_undrained_members_are_drained_and_still_checked():
    archive = zip_with_stream_zip(MEMBERS)
    names = [member.name for member in iter_members(chunked(archive, 1000))]  # never touch .chunks
    assert names == list(MEMBERS)
    broken = corrupt_crc_field(zip_with_zipfile(MEMBERS, compression="stored"))
    with pytest.raises(CorruptArchiveError) as caught:
        [member.name for member in iter_members([broken])]
    assert caught.value.file_name == "Leads-bulkwrite.csv"


def test_output_chunks_are_bounded_by_chunk_size():
    archive = zip_with_zipfile({"big.csv": CSV * 20})
    sizes = [len(c) for m in iter_members(chunked(archive, 1 << 20), chunk_size=1000) for c in m.chunks]
    assert max(sizes) <= 1000
    assert sum(sizes) == len(CSV) * 20


# --- only CSV members ----------------------------------------------------------------------------


def test_csv_members_only_and_the_others_reported_with_their_size():
    skipped: list[tuple[str, int]] = []
    archive = zip_with_stream_zip(MEMBERS)
    names = [m.name for m in iter_csv_members(chunked(archive, 512), on_skip=lambda n, s: skipped.append((n, s)))]
    assert names == ["Leads-bulkwrite.csv", "Contacts-bulkwrite.CSV"]
    assert skipped == [("notes/readme.txt", len(b"not a result\n"))]


def test_archive_without_csv_names_what_it_holds():
    archive = zip_with_zipfile({"report.xlsx": b"PK..", "readme.txt": b"hello"})
    with pytest.raises(ResultLayoutError, match=r"no \.csv file.*'report\.xlsx', 'readme\.txt'"):
        list(iter_csv_members([archive]))


def test_empty_archive_is_a_layout_error_not_a_non_zip():
    archive = zip_with_zipfile({})
    assert archive.startswith(b"PK\x05\x06")
    with pytest.raises(ResultLayoutError, match="no members at all"):
        list(iter_csv_members([archive]))


# --- not a zip -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", r"empty \(0 bytes\)"),
        (b'{"info": "Forbidden", "x-info": "Link not valid"}', r'JSON body.*"x-info": "Link not valid"'),
        (b'{"code": "INVALID_TOKEN", "message": "invalid oauth token"', r"JSON body \(possibly cut short\)"),
        (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title>", r"HTML page.*502 Bad Gateway"),
        (b"Last_Name,Email\nSmith,s@example.com\n", r"text, not a zip.*Last_Name,Email"),
        (bytes(range(200, 256)) * 4, r"binary data.*starts with c8 c9"),
    ],
    ids=["empty", "zoho-json", "truncated-json", "html", "plain-csv", "binary"],
)
def test_a_body_that_is_not_a_zip_says_what_it_looks_like(body, expected):
    with pytest.raises(NotAZipError, match=expected):
        list(iter_members(chunked(body, 3)))


def test_not_a_zip_excerpt_is_short():
    body = b"<html>" + b"x" * 10_000
    with pytest.raises(NotAZipError) as caught:
        list(iter_members([body]))
    assert len(str(caught.value)) < 300


# --- integrity ------------------------------------------------------------------------------------


def test_crc_mismatch_is_raised_only_after_the_members_data():
    archive = corrupt_first_member(zip_with_zipfile(MEMBERS, compression="stored"), offset_in_data=5)
    received = bytearray()
    with pytest.raises(CorruptArchiveError, match="CRC32") as caught:
        for member in iter_members(chunked(archive, 1024)):
            for chunk in member.chunks:
                received += chunk
    assert caught.value.file_name == "Leads-bulkwrite.csv"
    assert len(received) == len(CSV)  # every byte arrived before the check failed: data is provisional


def test_corrupt_deflate_stream_is_a_corrupt_archive():
    archive = zip_with_zipfile({"Leads.csv": CSV})
    broken = corrupt_first_member(archive, offset_in_data=0)
    with pytest.raises(CorruptArchiveError) as caught:
        read_all(broken)
    assert caught.value.file_name == "Leads.csv"


def test_garbage_between_members_is_a_corrupt_structure():
    first = zip_with_zipfile({"a.csv": b"x\n"}, compression="stored")
    local = first[: first.index(b"PK\x01\x02")]
    with pytest.raises(CorruptArchiveError, match=r"unexpected record signature after member 'a\.csv'"):
        read_all(local + b"JUNKJUNK")


@pytest.mark.parametrize("keep", [10, 0.3, 0.6, 0.95, -10], ids=["in-header", "30%", "60%", "95%", "in-directory"])
@pytest.mark.parametrize("archiver", [zip_with_zipfile, zip_with_stream_zip], ids=["zipfile", "stream_zip"])
def test_truncated_archive(archiver, keep):
    archive = archiver({"Leads.csv": CSV, "Contacts.csv": CSV})
    cut = truncate(archive, keep if keep != -10 else len(archive) - 10)
    with pytest.raises(TruncatedArchiveError, match="ends before it is complete"):
        read_all(cut)


def test_truncation_inside_a_member_names_it():
    archive = zip_with_stream_zip({"Leads.csv": CSV})
    with pytest.raises(TruncatedArchiveError) as caught:
        read_all(truncate(archive, 0.5))
    assert caught.value.file_name == "Leads.csv"


def test_zipcrypto_member_is_an_encrypted_archive_error():
    archive = mark_zipcrypto_encrypted(zip_with_zipfile({"Leads.csv": CSV}))
    with pytest.raises(EncryptedArchiveError, match="password-protected"):
        read_all(archive)


@pytest.mark.filterwarnings("ignore:PBKDF2:DeprecationWarning")
def test_aes_member_is_an_encrypted_archive_error():
    archive = zip_with_stream_zip({"Leads.csv": CSV}, password="secret")
    with pytest.raises(EncryptedArchiveError):
        read_all(archive)


def test_zipfile_still_reads_our_fixtures():
    """Guard on the fixtures themselves: the broken variants above are broken, the others are not."""
    import io

    good = zip_with_stream_zip(MEMBERS)
    assert zipfile.ZipFile(io.BytesIO(good)).testzip() is None


# --- limits ------------------------------------------------------------------------------------------


def test_too_many_members():
    archive = zip_with_zipfile({f"f{i}.csv": b"a\n" for i in range(5)})
    assert len(read_all(archive, limits=UnzipLimits(max_members=5))) == 5
    with pytest.raises(ArchiveLimitError, match="max_members=4") as caught:
        read_all(archive, limits=UnzipLimits(max_members=4))
    assert caught.value.file_name == "f4.csv"


def test_member_over_max_member_bytes_when_declared_up_front():
    archive = zip_with_zipfile({"Leads.csv": CSV})
    with pytest.raises(ArchiveLimitError, match=rf"declares {len(CSV)} bytes.*max_member_bytes=1000") as caught:
        read_all(archive, limits=UnzipLimits(max_member_bytes=1000))
    assert caught.value.file_name == "Leads.csv"


def test_member_over_max_member_bytes_while_streaming():
    archive = zip_with_stream_zip({"Leads.csv": CSV})  # size only known at the end
    with pytest.raises(ArchiveLimitError, match="max_member_bytes=1000"):
        read_all(archive, limits=UnzipLimits(max_member_bytes=1000))
    assert read_all(archive, limits=UnzipLimits(max_member_bytes=len(CSV)))["Leads.csv"] == CSV


def test_total_over_max_total_bytes_across_members():
    archive = zip_with_stream_zip({"a.csv": CSV, "b.csv": CSV})
    limit = len(CSV) + 100
    with pytest.raises(ArchiveLimitError, match=f"max_total_bytes={limit}") as caught:
        read_all(archive, limits=UnzipLimits(max_total_bytes=limit))
    assert caught.value.file_name == "b.csv"


def test_zip_bomb_ratio():
    zeros = b"0" * (4 << 20)  # deflates about 1000:1
    bomb = zip_with_stream_zip({"bomb.csv": zeros})
    with pytest.raises(ArchiveLimitError, match=r"compression ratio \d+:1.*max_ratio=200"):
        read_all(bomb)
    assert read_all(bomb, limits=UnzipLimits(max_ratio=5000))["bomb.csv"] == zeros


def test_ratio_is_not_judged_before_a_mebibyte_came_out():
    small_bomb = zip_with_stream_zip({"zeros.csv": b"0" * 500_000})
    assert len(read_all(small_bomb)["zeros.csv"]) == 500_000


def varied_rows(start: int, count: int) -> list[tuple[str, ...]]:
    return [(f"Name {i}", f"user{i}@example.com", "Acme", str(4150868000005350003 + i), "ADDED", "")
            for i in range(start, start + count)]


def test_genuine_result_passes_default_limits_lazily():
    blocks = [make_result_csv(varied_rows(i * 20_000, 20_000), header=None) for i in range(5)]
    total = sum(len(c) for m in iter_members(stream_zip_chunks([("Leads.csv", iter(blocks))])) for c in m.chunks)
    assert total == sum(map(len, blocks))


# --- the central directory, a second copy of every name and size ------------------------------------


def directory_of(archive: bytes) -> list[tuple[bytes, int]]:
    meter = ArchiveMeter(UnzipLimits())
    for _ in meter.count_input([archive]):
        pass
    tail = meter.tail()
    return read_central_directory(tail, meter.end_record_at(tail), meter.compressed_in - len(tail))


@pytest.mark.parametrize("build", [
    lambda m: zip_with_zipfile(m), lambda m: zip_with_zipfile(m, compression="stored"),
    lambda m: zip_with_zipfile(m, force_zip64=True), lambda m: zip_with_stream_zip(m),
    lambda m: zip_with_stream_zip(m, zip64=True), lambda m: zip_with_stream_zip(m, compression="stored", zip64=True),
], ids=["zipfile", "zipfile-stored", "zipfile-zip64", "stream-zip", "stream-zip-64", "stream-zip-stored-64"])
def test_the_central_directory_is_read_in_every_layout_and_matches(build):
    archive = build(MEMBERS)
    assert directory_of(archive) == [(name.encode(), len(data)) for name, data in MEMBERS.items()]
    assert [member.name for member in iter_members(chunked(archive, 999))] == list(MEMBERS)


def test_a_member_name_damaged_in_its_header_is_caught_by_the_directory():
    """CRCs cover data, not names: 'Leads.csv' read as 'Leads.csw' would be skipped as a non-CSV file
    and the load would commit without its rows."""
    archive = zip_with_zipfile({"Leads.csv": CSV, "Deals.csv": CSV[:200]})
    damaged = archive.replace(b"Leads.csv", b"Leads.csw", 1)  # the local header comes first
    skipped: list[str] = []
    expected = r"'Leads\.csw' in its header but 'Leads\.csv' in the central"
    with pytest.raises(CorruptArchiveError, match=expected) as caught:
        for member in iter_csv_members(chunked(damaged, 500), on_skip=lambda name, size: skipped.append(name)):
            for _ in member.chunks:
                pass
    assert caught.value.file_name == "Leads.csv"
    assert skipped == ["Leads.csw"]  # what used to be the whole story


def test_a_size_or_a_member_count_that_disagrees_with_the_directory_is_an_error():
    archive = bytearray(zip_with_zipfile({"Leads.csv": CSV}, compression="stored"))
    directory = archive.rindex(b"PK\x01\x02")
    archive[directory + 24:directory + 28] = (len(CSV) + 1).to_bytes(4, "little")
    with pytest.raises(CorruptArchiveError, match=f"gives {len(CSV) + 1} bytes but {len(CSV)} were decompressed"):
        list(iter_members([bytes(archive)]))
    two = zip_with_zipfile({"Leads.csv": CSV, "Deals.csv": CSV})
    with pytest.raises(CorruptArchiveError, match="central directory"):
        list(iter_members([two[:two.rindex(b"PK\x01\x02")] + two[two.rindex(b"PK\x05\x06"):]]))


# --- where the central directory ends: the end record's size and offset must meet it ------------------

BIG = bytes(range(256)) * 3000  # 768 KB stored: more than the tail the reader keeps, so the directory's offset
# in the archive is past the first byte of that tail


def end_record_of(archive: bytes | bytearray) -> int:
    return bytes(archive).rindex(b"PK\x05\x06")


def with_end_record(archive: bytes, *, size: int | None = None, offset: int | None = None,
                    count: int | None = None) -> bytes:
    """The archive with its end record's directory count, size or offset replaced."""
    patched, at = bytearray(archive), end_record_of(archive)
    for value, field, width in ((count, 10, 2), (count, 8, 2), (size, 12, 4), (offset, 16, 4)):
        if value is not None:
            patched[at + field:at + field + width] = value.to_bytes(width, "little")
    return bytes(patched)


def with_zip64_record(archive: bytes, *, size: int | None = None, offset: int | None = None) -> bytes:
    """The archive with its zip64 end record's directory size or offset replaced."""
    patched, at = bytearray(archive), archive.rindex(b"PK\x06\x06")
    for value, field in ((size, 40), (offset, 48)):
        if value is not None:
            patched[at + field:at + field + 8] = value.to_bytes(8, "little")
    return bytes(patched)


def directory_span(archive: bytes) -> tuple[int, int]:
    """(offset, size) of the central directory, read from the archive itself."""
    offset = archive.index(b"PK\x01\x02")
    end = archive.rindex(b"PK\x06\x06") if b"PK\x06\x07" in archive[-100:] else end_record_of(archive)
    return offset, end - offset


def test_a_directory_size_damaged_beyond_the_cap_no_longer_hides_a_renamed_csv():
    """The directory used to be left unchecked when the end record claimed one over the size cap: one
    damaged size field, and a CSV whose header name was also damaged was skipped without a word."""
    archive = zip_with_zipfile({"Leads.csv": CSV, "Deals.csv": CSV[:200]})
    damaged = with_end_record(archive.replace(b"Leads.csv", b"Leads.csw", 1), size=0x7FFFFFF0)
    skipped: list[str] = []
    with pytest.raises(CorruptArchiveError, match=r"central directory .* does not end where its end record starts"):
        for member in iter_csv_members(chunked(damaged, 500), on_skip=lambda name, size: skipped.append(name)):
            for _ in member.chunks:
                pass
    assert skipped == ["Leads.csw"]  # the error came after it, instead of a load without Leads.csv


def damaged_layouts() -> dict[str, bytes]:
    small, big = zip_with_zipfile(MEMBERS), zip_with_zipfile({**MEMBERS, "big.bin": BIG}, compression="stored")
    small64 = zip_with_stream_zip(MEMBERS, zip64=True)
    big64 = zip_with_stream_zip({**MEMBERS, "big.bin": BIG}, compression="stored", zip64=True)
    return {
        "size-over-cap": with_end_record(small, size=0x7FFFFFF0),
        "size-one-too-many": with_end_record(small, size=directory_span(small)[1] + 1),
        "size-one-too-few": with_end_record(small, size=directory_span(small)[1] - 1),
        "offset-before-the-kept-tail": with_end_record(big, offset=0),
        "zip64-size-over-cap": with_zip64_record(small64, size=1 << 40),
        "zip64-size-one-too-many": with_zip64_record(small64, size=directory_span(small64)[1] + 1),
        "zip64-offset-before-the-kept-tail": with_zip64_record(big64, offset=0),
    }


@pytest.mark.parametrize("name", list(damaged_layouts()))
def test_a_directory_that_does_not_meet_its_end_record_is_corrupt(name):
    damaged = damaged_layouts()[name]
    with pytest.raises(CorruptArchiveError, match="does not end where its end record starts"):
        list(iter_csv_members(chunked(damaged, 4096)))


def test_a_zip64_locator_pointing_before_the_kept_tail_is_corrupt():
    archive = bytearray(zip_with_stream_zip({**MEMBERS, "big.bin": BIG}, compression="stored", zip64=True))
    locator = bytes(archive).rindex(b"PK\x06\x07")
    archive[locator + 8:locator + 16] = (0).to_bytes(8, "little")
    with pytest.raises(CorruptArchiveError, match="zip64 end record is not where its locator says"):
        list(iter_csv_members(chunked(bytes(archive), 4096)))


def test_a_directory_pushed_out_of_the_kept_tail_by_zip64_extensible_data_is_refused():
    """The spec lets a zip64 end record carry extensible data; so much of it that the directory falls
    out of the bytes kept is refused rather than left unchecked."""
    members = {f"{'m' * 150}{number}.csv": b"a\n" for number in range(100)}
    archive = zip_with_stream_zip(members, zip64=True)
    record, locator = archive.rindex(b"PK\x06\x06"), archive.rindex(b"PK\x06\x07")
    # The record starts 2000 bytes inside the kept tail; the ~20 KB directory before it does not fit.
    extensible = b"\0" * (TAIL_BYTES - 2000 - (len(archive) - locator) - ZIP64_END_RECORD_BYTES)
    grown = bytearray(archive[:locator] + extensible + archive[locator:])
    grown[record + 4:record + 12] = (44 + len(extensible)).to_bytes(8, "little")
    with pytest.raises(ArchiveLimitError, match="further back than the"):
        list(iter_csv_members(chunked(bytes(grown), 4096)))


def test_a_consistent_directory_over_the_cap_is_refused_not_skipped():
    """A directory too large to keep and check (never seen from Zoho) is a limit, not a pass."""
    archive = zip_with_zipfile({f"{'n' * 3000}{number}.csv": b"a\n" for number in range(200)}, compression="stored")
    assert directory_span(archive)[1] > 512 * 1024
    with pytest.raises(ArchiveLimitError, match=r"central directory is \d+ bytes, over the 524288"):
        list(iter_csv_members(chunked(archive, 65536)))


def zip64_records_without_markers(archive: bytes) -> bytes:
    """A zip64 archive whose plain end record carries the real count, size and offset (no 0xFFFF
    markers): some writers add the zip64 records whether or not they are needed."""
    offset, size = directory_span(archive)
    return with_end_record(archive, count=3, size=size, offset=offset)


def with_comment(archive: bytes, comment: bytes) -> bytes:
    at = end_record_of(archive)
    return archive[:at + 20] + len(comment).to_bytes(2, "little") + comment


@pytest.mark.parametrize("build", [
    lambda: with_comment(zip_with_zipfile(MEMBERS), b"c" * 65535),
    lambda: with_comment(zip_with_stream_zip(MEMBERS, zip64=True), b"a comment"),
    lambda: zip_with_zipfile({**MEMBERS, "big.bin": BIG}, compression="stored", force_zip64=True),
    lambda: zip_with_stream_zip({**MEMBERS, "big.bin": BIG}, zip64=True),
    lambda: zip_with_stream_zip({**MEMBERS, "big.bin": BIG}, compression="stored", zip64=True),
    lambda: zip64_records_without_markers(zip_with_stream_zip(MEMBERS, zip64=True)),
    lambda: zip_with_zipfile({f"member-{number:04}.csv": b"a,b\n1,2\n" for number in range(1000)}),
], ids=["max-comment", "zip64-comment", "zipfile-zip64-big", "data-descriptors-big", "stored-zip64-big",
        "zip64-records-without-markers", "1000-members"])
def test_valid_archives_still_pass_the_directory_check(build):
    archive = build()
    assert zipfile.ZipFile(io.BytesIO(archive)).testzip() is None
    expected = {info.filename: zipfile.ZipFile(io.BytesIO(archive)).read(info) for info in
                zipfile.ZipFile(io.BytesIO(archive)).infolist()}
    for chunk_size in (1, 4096, 1 << 20) if len(archive) < 200_000 else (4096, 1 << 20):
        if chunk_size == 1 and len(archive) > 20_000:
            continue
        assert read_all(archive, chunk_size=chunk_size) == expected
