"""A throwaway PostgreSQL cluster for one benchmark run, started like the tests' session fixture.

The tests' fixture (``tests/fixtures/postgres.py``) is a pytest fixture, which a script cannot call,
so the start-up sequence is repeated here with that module's helpers (same flags: 127.0.0.1, a free
port, durability off, the ``postgres`` user when running as root). The smoke test uses the fixture
itself and hands its server to :func:`benchmarks.run.run_benchmark`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.fixtures.postgres import (
    SERVER_USER,
    SUPERUSER,
    PostgresServer,
    _as_server_user,
    _find_bin_dir,
    _free_port,
    _wait_until_ready,
)

__all__ = ["PostgresServer", "throwaway_postgres"]

DBNAME = "zohobulk_bench"


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """initdb a cluster in a temporary directory, serve it on 127.0.0.1, remove it all on exit."""
    import psycopg

    bin_dir = _find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin")
    base = Path(tempfile.mkdtemp(prefix="zohobulk-bench-pg-"))
    data_dir = base / "data"
    password = secrets.token_urlsafe(16)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVER_USER)
        os.chown(base, account.pw_uid, account.pw_gid)
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    process: subprocess.Popen | None = None
    try:
        subprocess.run(
            _as_server_user([
                str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
                "--no-sync",
            ]),
            check=True, capture_output=True, timeout=120,
        )
        server = PostgresServer(host="127.0.0.1", port=_free_port(), user=SUPERUSER, password=password,
                                dbname=DBNAME, data_dir=data_dir)
        log_path = base / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                _as_server_user([
                    str(bin_dir / "postgres"), "-D", str(data_dir), "-k", str(base), "-h", server.host,
                    "-p", str(server.port), "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=20",
                ]),
                stdout=log, stderr=subprocess.STDOUT,
            )
        _wait_until_ready(server, process, log_path)
        with psycopg.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                             dbname="postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{DBNAME}"')
        yield server
    finally:
        if process is not None:
            with contextlib.suppress(Exception):
                subprocess.run(
                    _as_server_user([str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate", "-w"]),
                    capture_output=True, timeout=60,
                )
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
