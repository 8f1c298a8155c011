"""Issue #13's submission benchmark at a small size, so it cannot rot: what reaches the sandbox is
checked, timings never.

The whole benchmark runs as ``python -m benchmarks.submit`` runs it (the sandbox on 127.0.0.1, each
case in a fresh process, the sandbox asked after each case what it received), at 5,000 rows cut into
files of 2,000 records so that there are several files and jobs. The checker itself is tested against
a real sandbox holding other uploads than the case claims, so it is known to fail when it should.
"""

from __future__ import annotations

import gc
import io
import os
import zipfile

import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.sandbox import ZohoSandbox
from benchmarks.submit import (
    OutputMismatchError,
    SubmitResult,
    ensure_leads_parquet,
    leads_batch,
    leads_schema,
    render_markdown,
    run_submit_benchmark,
    target_checks,
    verify_case,
)

ROWS = 5_000
BASELINE_ROWS = 2_000
MAX_RECORDS = 2_000
FILES = -(-ROWS // MAX_RECORDS)  # 3: 2,000 + 2,000 + 1,000


def test_generated_leads_are_a_function_of_the_row_index(tmp_path):
    whole = leads_batch(0, 300)
    assert leads_batch(0, 300) == whole
    assert leads_batch(100, 300) == whole.slice(100)  # any slice, in any order, gives the same rows
    assert whole.schema == leads_schema()
    assert len(set(whole.column("Email").to_pylist())) == 300  # unique, so the sandbox skips none as duplicates
    assert whole.column("Last_Name").null_count == 0  # Zoho's mandatory field for Leads
    assert 0 < whole.column("No_of_Employees").null_count < 300
    assert any("\n" in text or '"' in text for text in whole.column("Description").to_pylist())

    path = ensure_leads_parquet(1_234, data_dir=tmp_path)
    written = pq.ParquetFile(path)
    assert written.metadata.num_rows == 1_234
    assert written.schema_arrow == leads_schema()
    assert written.read().to_batches()[0] == leads_batch(0, written.metadata.row_group(0).num_rows)
    modified = path.stat().st_mtime_ns
    assert ensure_leads_parquet(1_234, data_dir=tmp_path) == path  # cached, not written again
    assert path.stat().st_mtime_ns == modified


def test_the_benchmark_uploads_every_file_and_row_and_leaves_the_process_as_it_was(tmp_path):
    environ_before = dict(os.environ)
    gc_before = gc.isenabled()

    measured = run_submit_benchmark(rows=ROWS, baseline_rows=BASELINE_ROWS, repeat=1, scratch=tmp_path,
                                    data_dir=tmp_path / "data", max_records=MAX_RECORDS, log=lambda line: None)

    assert dict(os.environ) == environ_before
    assert gc.isenabled() == gc_before
    # The pair at both sizes, then at the full size the uploads alone, hook and requests alternating.
    assert [(r.rows, r.case, r.interleaved) for r in measured.results] == [
        (BASELINE_ROWS, "ours_submit_parquet", False), (BASELINE_ROWS, "raw_upload_requests", False),
        (ROWS, "ours_submit_parquet", False), (ROWS, "raw_upload_requests", False),
        (ROWS, "ours_upload_only", True), (ROWS, "raw_upload_requests", True),
        (ROWS, "raw_upload_requests", True), (ROWS, "ours_upload_only", True)]
    ours, raw = measured.find(1, ROWS, "ours_submit_parquet"), measured.find(1, ROWS, "raw_upload_requests")
    assert [f["rows"] for f in ours.files] == [2_000, 2_000, 1_000]
    assert [f["name"] for f in raw.files] == [f["name"] for f in ours.files] == [
        "Leads-00001.zip", "Leads-00002.zip", "Leads-00003.zip"]
    assert raw.bytes_uploaded == ours.bytes_uploaded == sum(f["bytes"] for f in ours.files) > 0
    assert len({f["job_id"] for f in ours.files}) == FILES
    # What the sandbox said it received, checked by the runner right after each case.
    checks = {(c["rows"], c["case"]): c for c in measured.checks}
    assert len(measured.checks) == len(measured.results)  # every case checked
    assert checks[ROWS, "ours_submit_parquet"] == {"run": 1, "rows": ROWS, "case": "ours_submit_parquet",
                                                   "files": FILES, "records": ROWS, "jobs": FILES, "job_rows": ROWS}
    assert checks[ROWS, "raw_upload_requests"] == {"run": 1, "rows": ROWS, "case": "raw_upload_requests",
                                                   "files": FILES, "records": ROWS, "jobs": 0, "job_rows": 0}
    assert checks[ROWS, "ours_upload_only (interleaved)"] == {
        "run": 1, "rows": ROWS, "case": "ours_upload_only (interleaved)", "files": FILES, "records": ROWS, "jobs": 0,
        "job_rows": 0}
    for result in measured.interleaved(1, "ours_upload_only") + measured.interleaved(1, "raw_upload_requests"):
        assert [(f["name"], f["bytes"]) for f in result.files] == [(f["name"], f["bytes"]) for f in ours.files]
    assert checks[BASELINE_ROWS, "ours_submit_parquet"]["records"] == BASELINE_ROWS
    assert checks[BASELINE_ROWS, "ours_submit_parquet"]["files"] == 1
    for result in measured.results:
        assert result.peak_rss_bytes >= result.rss_after_setup_bytes > 0
    assert ours.build_seconds > 0 and ours.create_seconds > 0

    verdicts = target_checks(measured)
    targets = [check for check in verdicts if check.target]
    assert len(targets) == 2  # issue #13's two targets, each decided
    assert all(check.met is not None for check in targets)
    markdown = render_markdown(measured)
    assert "| run 1: upload throughput at 5,000 rows, ours / raw requests |" in markdown
    assert "| run 1: uploads alone, interleaved (hook, requests, requests, hook), hook / requests |" in markdown
    assert "python -m benchmarks.submit --rows 5000 --repeat 1" in markdown


def _zip(csv_text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Leads-00001.csv", csv_text)
    return buffer.getvalue()


def test_the_check_fails_when_the_sandbox_did_not_receive_what_the_case_claims():
    first, second = _zip("Last_Name,Email\nA,a@x.example\nB,b@x.example\n"), _zip("Last_Name,Email\nC,c@x.example\n")
    with ZohoSandbox() as sandbox:
        ids = [sandbox.upload_file(data, file_name=name) for data, name in ((first, "one.zip"), (second, "two.zip"))]
        files = [{"name": "one.zip", "bytes": len(first), "rows": None, "file_id": ids[0], "job_id": None},
                 {"name": "two.zip", "bytes": len(second), "rows": None, "file_id": ids[1], "job_id": None}]

        def raw(sent: list[dict]) -> SubmitResult:
            return SubmitResult(case="raw_upload_requests", rows=3, seconds=1, build_seconds=0, upload_seconds=1,
                                create_seconds=0, bytes_uploaded=0, cpu_seconds=0, rss_after_setup_bytes=1,
                                peak_rss_bytes=1, files=sent)

        assert verify_case(raw(files), sandbox, 3) == {"files": 2, "records": 3, "jobs": 0, "job_rows": 0}
        with pytest.raises(OutputMismatchError, match="3 records uploaded, the input holds 4"):
            verify_case(raw(files), sandbox, 4)
        with pytest.raises(OutputMismatchError, match="the sandbox holds 2 uploads, the case sent 1"):
            verify_case(raw(files[:1]), sandbox, 3)
        with pytest.raises(OutputMismatchError, match="unknown to the sandbox"):
            verify_case(raw([files[0], {**files[1], "file_id": "1234567890"}]), sandbox, 3)
        with pytest.raises(OutputMismatchError, match="did not send the files the submission built"):
            verify_case(raw(files), sandbox, 3, expected_files=[{**files[0], "rows": 2}])
        ours = raw([{**f, "rows": rows, "job_id": "none"} for f, rows in zip(files, (2, 1), strict=True)])
        ours.case = "ours_submit_parquet"
        with pytest.raises(OutputMismatchError, match="0 Bulk Write jobs created for 2 files"):
            verify_case(ours, sandbox, 3)
