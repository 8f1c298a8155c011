"""ObjectStorageSink on local files: formats, compressions, {file}, atomicity, configuration errors.

Files are read back with independent readers (pyarrow.parquet, pyarrow.csv, DuckDB, json) and every
field is compared with the input, including nested errors, null versus empty string, unicode and
newlines inside values.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.bulk_result import CANONICAL_COLUMNS, canonical_schema, source_type
from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import load_batches
from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink, local_path, member_stem
from tests.helpers import (
    JOB,
    MEMBER,
    batches_of,
    canonical_batch,
    decompressed,
    expected_rows,
    parse_csv,
    parse_jsonl,
    sample_rows,
)


def read_jsonl(path: Path) -> list[dict]:
    return parse_jsonl(decompressed(path.read_bytes(), path.suffix))


def read_csv(path: Path) -> list[dict]:
    return parse_csv(decompressed(path.read_bytes(), path.suffix))


@pytest.fixture
def rows() -> list[dict]:
    return sample_rows(10)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".ndjson.zst", ".jsonl.bz2", ".jsonl.xz"])
def test_jsonl_round_trip_every_field(tmp_path: Path, rows: list[dict], suffix: str) -> None:
    pairs = batches_of(rows)
    target = tmp_path / f"out{suffix}"
    written = load_batches(ObjectStorageSink(str(target)), JOB, pairs)
    assert written == [str(target)]
    assert read_jsonl(target) == expected_rows(pairs)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".csv.zst", ".csv.bz2", ".csv.xz"])
def test_csv_round_trip_every_field(tmp_path: Path, rows: list[dict], suffix: str) -> None:
    pairs = batches_of(rows)
    target = tmp_path / f"out{suffix}"
    load_batches(ObjectStorageSink(str(target)), JOB, pairs)
    assert read_csv(target) == expected_rows(pairs)
    header_lines = decompressed(target.read_bytes(), target.suffix).decode().count('"job_id"')
    assert header_lines == 1  # one header, whatever the batches


def test_csv_gz_reads_back_in_duckdb_with_nulls_and_empty_strings(tmp_path: Path, rows: list[dict]) -> None:
    pairs = batches_of(rows)
    target = tmp_path / "out.csv.gz"
    load_batches(ObjectStorageSink(str(target)), JOB, pairs)
    found = duckdb.connect().execute(
        "SELECT row_number, record_id, errors_raw, json_extract_string(source, '$.Last_Name'), "
        "source::JSON->>'$.Email' FROM read_csv(?, all_varchar = true) ORDER BY row_number::INT", [str(target)]
    ).fetchall()
    expected = [(str(r["row_number"]), r["record_id"], r["errors_raw"], r["source"]["Last_Name"], r["source"]["Email"])
                for r in expected_rows(pairs)]
    assert found == expected
    assert any(row[3] == "" for row in found) and any(row[3] is None for row in found)


@pytest.mark.parametrize("codec", ["zstd", "snappy"])
def test_parquet_round_trip_keeps_the_canonical_schema(tmp_path: Path, rows: list[dict], codec: str) -> None:
    pairs = batches_of(rows)
    target = tmp_path / "out.parquet"
    load_batches(ObjectStorageSink(str(target), parquet_codec=codec), JOB, pairs)
    table = pq.read_table(target)
    assert table.schema.equals(canonical_schema(source_type(("Last_Name", "Email", "Company"))))
    assert table.to_pylist() == [row for _, batch in pairs for row in batch.to_pylist()]
    assert pq.ParquetFile(target).metadata.row_group(0).column(0).compression.lower() == codec


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl.gz"])
def test_header_only_member_gives_a_valid_empty_file(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"empty{suffix}"
    header_only = canonical_batch(JOB, MEMBER, [], names=["Last_Name", "Email"])
    load_batches(ObjectStorageSink(str(target)), JOB, [(MEMBER, header_only)])
    if suffix == ".parquet":
        table = pq.read_table(target)
        assert table.num_rows == 0 and table.schema.equals(header_only.schema)  # the columns, even without rows
    elif suffix == ".csv":
        assert target.read_text() == ",".join(f'"{name}"' for name in CANONICAL_COLUMNS) + "\n"
    else:
        assert read_jsonl(target) == []


def test_archive_without_csv_members_still_replaces_the_single_destination(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    assert load_batches(ObjectStorageSink(str(target)), JOB, []) == [str(target)]
    assert read_csv(target) == []
    parquet = tmp_path / "out.parquet"  # no member, so no mapped columns: source is a column of nulls
    assert load_batches(ObjectStorageSink(str(parquet)), JOB, []) == [str(parquet)]
    assert pq.read_table(parquet).schema.field("source").type == pa.null()
    per_file = ObjectStorageSink(str(tmp_path / "{file}.csv"))
    assert load_batches(per_file, JOB, []) == []


def test_file_placeholder_writes_one_file_per_member(tmp_path: Path, rows: list[dict]) -> None:
    leads = batches_of(rows[:5], "Leads-Leads.csv")
    contacts = batches_of(rows[5:], "Contacts-Contacts.csv")
    sink = ObjectStorageSink(f"file://{tmp_path}/nested/{{file}}.jsonl")
    written = load_batches(sink, JOB, leads + contacts)
    assert written == [f"file://{tmp_path}/nested/Leads-Leads.jsonl", f"file://{tmp_path}/nested/Contacts-Contacts.jsonl"]
    assert read_jsonl(tmp_path / "nested" / "Leads-Leads.jsonl") == expected_rows(leads)
    assert read_jsonl(tmp_path / "nested" / "Contacts-Contacts.jsonl") == expected_rows(contacts)
    assert sink.asset_uri == f"file://{tmp_path}/nested/{{file}}.jsonl"


@pytest.mark.parametrize("second_columns", ["same", "other"])
def test_several_members_without_placeholder_fail_and_publish_nothing(
        tmp_path: Path, rows: list[dict], second_columns: str) -> None:
    """One object per CSV: a Parquet file's ``source`` is the struct of one CSV's columns, and members
    with the same columns would still overwrite each other's rows, so both cases are refused."""
    target = tmp_path / "out.parquet"
    pq.write_table(pa.table({"old": [1]}), target)
    before = target.read_bytes()
    contacts = rows[5:] if second_columns == "same" else [{"source": {"First_Name": "Ann"}}]
    pairs = batches_of(rows[:5], "Leads-Leads.csv") + batches_of(contacts, "Contacts-Contacts.csv")
    with pytest.raises(SinkConfigurationError) as caught:
        load_batches(ObjectStorageSink(str(target)), JOB, pairs)
    message = str(caught.value)
    assert str(target) in message and "Leads-Leads.csv" in message and "Contacts-Contacts.csv" in message
    assert "{file}" in message
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.parquet"]  # no temporary file left behind


def test_members_with_the_same_stem_are_refused(tmp_path: Path, rows: list[dict]) -> None:
    pairs = batches_of(rows[:2], "a/Leads.csv") + batches_of(rows[2:4], "b/Leads.csv")
    with pytest.raises(SinkConfigurationError, match="would both be written"):
        load_batches(ObjectStorageSink(str(tmp_path / "{file}.csv")), JOB, pairs)
    assert os.listdir(tmp_path) == []


def test_failure_mid_archive_keeps_the_existing_file(tmp_path: Path, rows: list[dict]) -> None:
    target = tmp_path / "out.jsonl.gz"
    load_batches(ObjectStorageSink(str(target)), JOB, batches_of(rows[:2]))
    before = target.read_bytes()

    class CorruptArchive(Exception):
        pass

    def failing_stream():
        yield from batches_of(rows)[:2]
        raise CorruptArchive("CRC mismatch at the end of the member")

    with pytest.raises(CorruptArchive):
        load_batches(ObjectStorageSink(str(target)), JOB, failing_stream())
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.jsonl.gz"]


def test_rerun_replaces_the_file(tmp_path: Path, rows: list[dict]) -> None:
    target = tmp_path / "out.csv"
    sink = ObjectStorageSink(str(target))
    load_batches(sink, JOB, batches_of(rows))
    load_batches(sink, JOB, batches_of(rows[:3]))
    assert read_csv(target) == expected_rows(batches_of(rows[:3]))


def test_sink_dropped_without_commit_or_abort_leaves_nothing(
        tmp_path: Path, rows: list[dict], staging_mode: str) -> None:
    sink = ObjectStorageSink(str(tmp_path / "out.parquet"))
    sink.open(JOB)
    for name, batch in batches_of(rows):
        sink.write(name, batch)
    assert len(os.listdir(tmp_path)) == (0 if staging_mode == "anonymous" else 1)  # the staging file
    del sink
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_batch_of_another_layout_or_job_is_refused(tmp_path: Path, rows: list[dict]) -> None:
    sink = ObjectStorageSink(str(tmp_path / "out.csv"))
    with pytest.raises(SinkError, match="canonical layout"):
        load_batches(sink, JOB, [(MEMBER, pa.record_batch({"job_id": [JOB]}))])
    with pytest.raises(SinkError, match="another job"):
        load_batches(sink, JOB, [(MEMBER, canonical_batch("other-job", MEMBER, rows[:1]))])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("uri", "kwargs", "complaint"),
    [
        ("/tmp/x/out.txt", {}, "cannot tell the output format"),
        ("/tmp/x/out.parquet.gz", {}, "Parquet compresses itself"),
        ("/tmp/x/out.csv", {"format": "parquet"}, "but format='parquet'"),
        ("/tmp/x/out", {"format": "xml"}, "unknown output format"),
        ("/tmp/x/{filename}.csv", {}, "{filename}"),
        ("http://example.com/out.csv", {}, "unsupported scheme"),
        ("s3://bucket/out.csv", {"min_part_size": 1024}, "min_part_size"),
        ("/tmp/x/out.parquet", {"parquet_codec": "lzo9"}, "unknown Parquet codec 'lzo9'"),
    ],
)
def test_configuration_errors_are_caught_without_io(uri: str, kwargs: dict, complaint: str) -> None:
    with pytest.raises(SinkConfigurationError) as caught:
        ObjectStorageSink(uri, **kwargs)
    assert complaint in str(caught.value)


def test_jinja_is_left_for_rendering_and_checked_at_open(tmp_path: Path) -> None:
    sink = ObjectStorageSink(str(tmp_path / "{{ params.job_id }}" / "{file}.{{ params.ext }}"))
    sink.uri = str(tmp_path / "42" / "{file}.txt")  # what Airflow's rendering could produce
    with pytest.raises(SinkConfigurationError, match="cannot tell the output format"):
        sink.open(JOB)
    sink.uri = str(tmp_path / "42" / "{file}.csv")
    assert load_batches(sink, JOB, batches_of([])) == [str(tmp_path / "42" / "Leads-Leads.csv")]


def test_format_given_for_a_name_without_extension_and_other_braces_kept(tmp_path: Path, rows: list[dict]) -> None:
    target = tmp_path / "{{literal}}-out"
    load_batches(ObjectStorageSink(str(target), format="ndjson"), JOB, batches_of(rows))
    assert read_jsonl(target) == expected_rows(batches_of(rows))


def test_local_destination_refuses_a_connection(tmp_path: Path) -> None:
    sink = ObjectStorageSink(str(tmp_path / "out.csv"), conn_id="aws_default")
    with pytest.raises(SinkConfigurationError, match="needs none"):
        sink.open(JOB)


def test_member_stem_cannot_escape_the_destination() -> None:
    assert member_stem("Leads-Leads.csv") == "Leads-Leads"
    assert member_stem("../../etc/passwd.CSV") == "passwd"
    assert member_stem("dir\\Deals.csv") == "Deals"
    assert member_stem("..") == "result"


def test_member_names_that_a_uri_would_decode_stay_inside_the_destination(tmp_path: Path, rows: list[dict]) -> None:
    """In a file:// URI the path is percent-decoded, and '#' starts a fragment: a member named
    ``..%2F..%2Fescaped.csv`` must not become ``../../escaped``, nor ``Leads#1.csv`` a file ``Leads``."""
    out = tmp_path / "a" / "b" / "out"
    pairs = batches_of(rows[:2], "..%2F..%2Fescaped.csv") + batches_of(rows[2:4], "Leads#1?.csv")
    load_batches(ObjectStorageSink(f"file://{out}/{{file}}.jsonl"), JOB, pairs)
    assert sorted(os.listdir(out)) == [".._2F.._2Fescaped.jsonl", "Leads_1_.jsonl"]
    assert sorted(os.listdir(tmp_path)) == ["a"] and os.listdir(tmp_path / "a") == ["b"]
    assert read_jsonl(out / "Leads_1_.jsonl") == expected_rows(batches_of(rows[2:4], "Leads#1?.csv"))


@pytest.fixture
def home_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An empty $HOME and an empty working directory, both inside tmp_path."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return home, work


@pytest.mark.parametrize("member", ["~.csv", "dir/~.csv", "~other.CSV"])
def test_a_member_named_like_a_home_directory_is_refused_and_home_left_alone(
        home_and_cwd: tuple[Path, Path], rows: list[dict], member: str) -> None:
    """``{file}`` used to be substituted before ``~`` was expanded: ``~.csv`` with ``{file}/out.csv``
    wrote ``$HOME/out.csv``."""
    home, work = home_and_cwd
    with pytest.raises(SinkError, match=r"starts with '~'") as caught:
        load_batches(ObjectStorageSink("{file}/out.jsonl"), JOB, batches_of(rows[:2], member))
    assert caught.value.file_name == member and caught.value.job_id == JOB
    assert list(home.iterdir()) == [] and list(work.iterdir()) == []


def test_the_user_s_tilde_is_expanded_before_the_member_name_goes_in(
        home_and_cwd: tuple[Path, Path], rows: list[dict]) -> None:
    home, work = home_and_cwd
    leads = batches_of(rows[:2], "Leads.csv")
    assert load_batches(ObjectStorageSink("~/zoho/{file}.jsonl"), JOB, leads) == ["~/zoho/Leads.jsonl"]
    assert read_jsonl(home / "zoho" / "Leads.jsonl") == expected_rows(leads)
    assert local_path("{file}/out.csv", "~root") == str(work / "~root" / "out.csv")  # a name, not a home
    assert local_path("~/{file}.csv", "~") == str(home / "~.csv")
    assert local_path(f"file://{work}/%7E/{{file}}.csv", "%7E") == str(work / "~" / "%7E.csv")


@pytest.mark.parametrize("member", [
    "../../escaped.csv", "..\\..\\escaped.csv", "/tmp/escaped.csv", "C:\\escaped.csv", "...csv", "..csv", ".csv",
])
@pytest.mark.parametrize("template", ["{out}/{{file}}.jsonl", "file://{out}/{{file}}.jsonl"])
def test_path_tricks_in_member_names_stay_inside_the_destination(
        home_and_cwd: tuple[Path, Path], rows: list[dict], member: str, template: str) -> None:
    home, work = home_and_cwd
    out = work / "a" / "out"
    load_batches(ObjectStorageSink(template.format(out=out)), JOB, batches_of(rows[:2], member))
    written = [path for path in home.parent.rglob("*") if path.is_file()]
    assert len(written) == 1 and written[0].parent == out
    assert written[0].name in ("escaped.jsonl", "result.jsonl")


def test_asset_uris_are_accepted_by_airflow(tmp_path: Path) -> None:
    from airflow.sdk import Asset

    relative = ObjectStorageSink("out/{file}.parquet")
    assert relative.asset_uri == f"file://{os.path.abspath('out')}/{{file}}.parquet"
    for sink in (relative, ObjectStorageSink("s3://lake/zoho/{{ params.job_id }}/{file}.csv.gz")):
        assert Asset(sink.asset_uri).uri == sink.asset_uri


def test_gcs_chunk_size_must_be_a_multiple_of_256_kib():
    """Caught before any upload starts, naming the rule (GCS would reject the first chunk mid-load)."""
    sink = ObjectStorageSink("gs://bucket/{file}.csv", transport_params={"client": object(), "min_part_size": 300_000})
    with pytest.raises(SinkConfigurationError, match="multiple of 256 KiB"):
        sink.open("J1")


# --- source: a struct of the CSV's mapped columns -----------------------------------------------------


def test_parquet_source_is_a_struct_with_a_column_per_mapped_column(tmp_path: Path, rows: list[dict]) -> None:
    """Each file has its CSV's columns as ``source``'s fields, in header order: engines read
    ``source.Email`` as a Parquet column of its own."""
    leads = batches_of(rows, "Leads-Leads.csv")
    deals = batches_of([{"source": {"Deal_Name": "Big", "Amount": "10.5"}}, {"source": {"Deal_Name": None}}],
                       "Deals-Deals.csv")
    load_batches(ObjectStorageSink(str(tmp_path / "{file}.parquet")), JOB, leads + deals)
    leads_file, deals_file = tmp_path / "Leads-Leads.parquet", tmp_path / "Deals-Deals.parquet"
    assert pq.read_schema(leads_file).field("source").type == pa.struct(
        [("Last_Name", pa.string()), ("Email", pa.string()), ("Company", pa.string())])
    assert pq.read_schema(deals_file).field("source").type == pa.struct(
        [("Deal_Name", pa.string()), ("Amount", pa.string())])
    leaves = [column.path for column in pq.ParquetFile(leads_file).schema]
    assert [leaf for leaf in leaves if leaf.startswith("source.")] == [
        "source.Last_Name", "source.Email", "source.Company"]
    found = duckdb.connect().execute(
        "SELECT source.Email FROM read_parquet(?) WHERE source.Company IS NULL ORDER BY row_number",
        [str(leads_file)]).fetchall()
    assert found == [(row["source"]["Email"],) for row in expected_rows(leads) if row["source"]["Company"] is None]
    assert pq.read_table(deals_file).column("source").to_pylist() == [
        {"Deal_Name": "Big", "Amount": "10.5"}, {"Deal_Name": None, "Amount": None}]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_csv_without_mapped_columns_is_written_in_every_format(tmp_path: Path, suffix: str) -> None:
    """A result of only RECORD_ID, STATUS, ERRORS is valid: JSON and CSV hold ``{}``; Parquet cannot
    store a struct without fields (pyarrow refuses to write one), so there ``source`` is a column of
    nulls."""
    bare = [{"record_id": "1", "status": "ADDED"}, {"status": "SKIPPED", "errors_raw": "CANNOT_PROCESS"}]
    pairs = batches_of(bare, size=1)
    assert pairs[0][1].schema.field("source").type == pa.struct([])
    target = tmp_path / f"out{suffix}"
    load_batches(ObjectStorageSink(str(target)), JOB, pairs)
    if suffix == ".parquet":
        table = pq.read_table(target)
        assert table.schema.field("source").type == pa.null() and table.column_names == list(CANONICAL_COLUMNS)
        assert table.to_pylist() == [{**row, "source": None} for row in expected_rows(pairs)]
    else:
        written = read_csv(target) if suffix == ".csv" else read_jsonl(target)
        assert written == expected_rows(pairs) and [row["source"] for row in written] == [{}, {}]


def test_a_parquet_file_refuses_a_batch_of_other_columns(tmp_path: Path, rows: list[dict]) -> None:
    """The core gives every batch of a CSV the same columns; batches from elsewhere that change them
    midway cannot share one Parquet schema: refused, and nothing is published."""
    target = tmp_path / "out.parquet"
    first = canonical_batch(JOB, MEMBER, rows[:2])
    other = canonical_batch(JOB, MEMBER, [{"source": {"Email": "x@example.com"}}], first_row_number=3)
    with pytest.raises(SinkError, match=r"\['Last_Name', 'Email', 'Company'\].*\['Email'\]") as caught:
        load_batches(ObjectStorageSink(str(target)), JOB, [(MEMBER, first), (MEMBER, other)])
    assert caught.value.file_name == MEMBER and caught.value.job_id == JOB
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("source", "complaint"), [
    (pa.array([[("Email", "x")]], pa.map_(pa.string(), pa.string())), "not a struct of string fields"),
    (pa.array([{"Amount": 1}], pa.struct([("Amount", pa.int64())])), r"fields \['Amount'\] are not strings"),
    (pa.StructArray.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["Email", "Email"]),
     r"repeats the field names \['Email'\]"),
])
def test_a_batch_whose_source_is_not_a_struct_of_text_is_refused(
        tmp_path: Path, rows: list[dict], source: pa.Array, complaint: str) -> None:
    batch = canonical_batch(JOB, MEMBER, rows[:1])
    batch = batch.set_column(batch.schema.get_field_index("source"), pa.field("source", source.type), source)
    with pytest.raises(SinkError, match=complaint):
        load_batches(ObjectStorageSink(str(tmp_path / "out.jsonl")), JOB, [(MEMBER, batch)])
    assert os.listdir(tmp_path) == []
