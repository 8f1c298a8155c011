"""A throwaway PostgreSQL cluster for one benchmark run, started like the tests' session fixture.

The tests' fixture (``tests/fixtures/postgres.py``) is a pytest fixture, which a script cannot call,
and its helpers are private (and change), so the same start-up is written here on its own: initdb
into a temporary directory, 127.0.0.1 on a free port, durability off, run as ``postgres`` when we are
root (the server refuses root). The smoke test uses the fixture itself and hands its server's DSN
and connection to :func:`benchmarks.run.run_benchmark`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BenchPostgres", "throwaway_postgres"]

DBNAME = "zohobulk_bench"
SUPERUSER = "zohobulk"
SERVER_USER = "postgres"  # who runs the server when we run as root


@dataclass(frozen=True)
class BenchPostgres:
    """Where the cluster listens and how to log in (superuser with a password)."""

    host: str
    port: int
    user: str
    password: str
    dbname: str

    @property
    def dsn(self) -> str:
        """libpq keyword/value string for psycopg.connect."""
        return f"host={self.host} port={self.port} user={self.user} password={self.password} dbname={self.dbname}"

    def airflow_conn_env(self, conn_id: str) -> dict[str, str]:
        """``{"AIRFLOW_CONN_<ID>": json}`` describing this server as an Airflow ``postgres`` connection."""
        connection = {"conn_type": "postgres", "host": self.host, "port": self.port, "login": self.user,
                      "password": self.password, "schema": self.dbname}
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(connection)}


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding a server, or None."""
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    if not candidates:
        return None
    return max(candidates, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_server_user(argv: list[str]) -> list[str]:
    """Prefix ``argv`` so it runs as the unprivileged server user when we are root."""
    return ["runuser", "-u", SERVER_USER, "--", *argv] if os.geteuid() == 0 else argv


def wait_until_ready(server: BenchPostgres, process: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with psycopg.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                                 dbname="postgres", connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            last_error = exc
            time.sleep(0.1)
    raise RuntimeError(f"PostgreSQL did not accept connections: {last_error}\n{log_path.read_text()[-4000:]}")


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[BenchPostgres]:
    """initdb a cluster in a temporary directory, serve it on 127.0.0.1, remove it all on exit."""
    import psycopg

    bin_dir = find_bin_dir()
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
            as_server_user([
                str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
                "--no-sync",
            ]),
            check=True, capture_output=True, timeout=120,
        )
        server = BenchPostgres(host="127.0.0.1", port=free_port(), user=SUPERUSER, password=password, dbname=DBNAME)
        log_path = base / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                as_server_user([
                    str(bin_dir / "postgres"), "-D", str(data_dir), "-k", str(base), "-h", server.host,
                    "-p", str(server.port), "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=20",
                ]),
                stdout=log, stderr=subprocess.STDOUT,
            )
        wait_until_ready(server, process, log_path)
        with psycopg.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                             dbname="postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{DBNAME}"')
        yield server
    finally:
        if process is not None:
            with contextlib.suppress(Exception):
                subprocess.run(
                    as_server_user([str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate", "-w"]),
                    capture_output=True, timeout=60,
                )
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
