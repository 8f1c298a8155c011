"""StagingFile, and what it buys the local sinks: nothing is left behind, even by a killed process."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.sinks import staging_file
from airflow_provider_zohobulk.sinks.staging_file import StagingFile


def test_publish_replaces_the_destination_and_leaves_only_it(tmp_path: Path, staging_mode: str) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    staged = StagingFile(str(tmp_path), "out.bin")
    assert staged.anonymous == (staging_mode == "anonymous")
    staged.stream.write(b"new contents")
    assert target.read_bytes() == b"old"
    staged_name = [] if staging_mode == "anonymous" else [Path(staged.reader_path).name]
    assert sorted(os.listdir(tmp_path)) == sorted(["out.bin", *staged_name])
    staged.publish(str(target))
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["out.bin"]
    assert staged.stream.closed


def test_discard_leaves_nothing_and_can_repeat(tmp_path: Path, staging_mode: str) -> None:
    staged = StagingFile(str(tmp_path / "made" / "here"), "x")
    staged.stream.write(b"rows")
    staged.discard()
    staged.discard()
    assert os.listdir(tmp_path / "made" / "here") == []


def test_reader_path_opens_the_written_bytes(tmp_path: Path, staging_mode: str) -> None:
    """DuckDB reads the staged Parquet through this path while the file is still open."""
    staged = StagingFile(str(tmp_path), "rows", ".parquet")
    pq.write_table(pa.table({"n": [1, 2, 3]}), staged.stream)
    staged.flush()
    assert pq.read_table(staged.reader_path).column("n").to_pylist() == [1, 2, 3]
    staged.discard()


def test_the_file_mode_follows_the_umask(tmp_path: Path, staging_mode: str) -> None:
    previous = os.umask(0o027)
    try:
        staged = StagingFile(str(tmp_path), "out")
    finally:
        os.umask(previous)
    staged.publish(str(tmp_path / "out"))
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o640


@pytest.mark.parametrize(("error", "falls_back"),
                         [(errno.EOPNOTSUPP, True), (errno.EISDIR, True), (errno.EACCES, False)])
def test_only_a_missing_feature_falls_back_to_a_named_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, falls_back: bool) -> None:
    """A filesystem without O_TMPFILE (EOPNOTSUPP; EISDIR from old kernels): the load goes on with a
    named file. Any other error (no permission) is the user's to see."""
    real_open = os.open
    tmpfile_flag = getattr(os, "O_TMPFILE", 0o20000000)

    def open_without_tmpfile(path, flags, *args, **kwargs):
        if flags & tmpfile_flag == tmpfile_flag:
            raise OSError(error, os.strerror(error))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(staging_file, "anonymous_files_supported", lambda: True)
    monkeypatch.setattr(staging_file.os, "O_TMPFILE", tmpfile_flag, raising=False)
    monkeypatch.setattr(staging_file.os, "open", open_without_tmpfile)
    if not falls_back:
        with pytest.raises(PermissionError):
            StagingFile(str(tmp_path), "out")
        return
    staged = StagingFile(str(tmp_path), "out")
    assert not staged.anonymous
    staged.publish(str(tmp_path / "out"))
    assert os.listdir(tmp_path) == ["out"]


KILLED_LOAD = textwrap.dedent("""
    import sys, time
    from airflow_provider_zohobulk.sinks.object_storage import ObjectStorageSink
    from tests.helpers import JOB, batches_of, sample_rows

    directory = sys.argv[1]
    sinks = [ObjectStorageSink(directory + "/out.parquet"), ObjectStorageSink(directory + "/out.csv.gz")]
    for sink in sinks:
        sink.open(JOB)
        for name, batch in batches_of(sample_rows(50)):
            sink.write(name, batch)
    print("staged", flush=True)
    time.sleep(600)
""")


@pytest.mark.skipif(not staging_file.anonymous_files_supported(), reason="needs O_TMPFILE (Linux)")
def test_a_killed_load_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGKILL mid-load (a task timeout, the OOM killer): no cleanup code runs, yet no staged file remains."""
    process = subprocess.Popen([sys.executable, "-c", KILLED_LOAD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "staged"
        assert os.listdir(tmp_path) == []
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert os.listdir(tmp_path) == []
