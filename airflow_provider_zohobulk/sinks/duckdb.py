"""DuckDBSink: canonical rows into a DuckDB table, replacing the job's earlier rows in one transaction.

One load is ``BEGIN; CREATE TABLE IF NOT EXISTS; DELETE FROM t WHERE job_id = ?; INSERT ... SELECT``
from each Arrow batch (registered with DuckDB, read without copying); ``COMMIT`` at the end, or
``ROLLBACK`` when the archive turns out to be broken. DuckDB's DDL is transactional too, so a failed
first load leaves no empty table behind, and a failed re-run leaves the job's earlier rows as they were.

The table keeps the nesting natively: ``errors STRUCT(code VARCHAR, columns VARCHAR[])[]`` and
``source MAP(VARCHAR, VARCHAR)`` (query them with ``unnest(errors)`` and ``source['Email']``), plus
``loaded_at TIMESTAMP WITH TIME ZONE`` (the same instant for every row of a load) and the primary key
``(job_id, file_name, row_number)``. Many jobs and modules share one table.

A DuckDB file accepts one writing process at a time (it is locked while open). Parallel Airflow tasks
writing to the same file therefore take turns: opening retries for up to ``lock_timeout`` seconds
while another process holds the lock.

Importing this module imports no Airflow.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from datetime import datetime, timezone
from urllib.parse import quote

import duckdb
import pyarrow as pa

from airflow_provider_zohobulk.bulk_result import CANONICAL_SCHEMA
from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import StagedLoad, StagedSink, describe_exception
from airflow_provider_zohobulk.sinks.formats import conform_batch
from airflow_provider_zohobulk.sinks.identifiers import quote_ident, quote_table_name, split_table_name

DEFAULT_DATABASE = "zoho_bulk.duckdb"
DEFAULT_TABLE = "zoho_bulk_write_results"
IN_MEMORY = ":memory:"
_LOCK_RETRY_INTERVAL_S = 0.2

_COLUMN_TYPES: dict[str, str] = {
    "job_id": "VARCHAR NOT NULL",
    "file_name": "VARCHAR NOT NULL",
    "row_number": "BIGINT NOT NULL",
    "record_id": "VARCHAR",
    "status": "VARCHAR",
    "errors": "STRUCT(code VARCHAR, columns VARCHAR[])[] NOT NULL",
    "errors_raw": "VARCHAR",
    "source": "MAP(VARCHAR, VARCHAR) NOT NULL",
    "loaded_at": "TIMESTAMP WITH TIME ZONE NOT NULL",
}
assert list(_COLUMN_TYPES)[:-1] == CANONICAL_SCHEMA.names  # the table follows the canonical layout


class DuckDBSink(StagedSink):
    """Load canonical rows into ``table`` of the DuckDB file ``database`` (created when missing).

    ``table`` is ``table`` or ``schema.table`` (a part may be double-quoted to hold a dot); every part
    is quoted, so the name is taken literally, case included, and cannot inject SQL. The schema is
    created when missing. ``database`` may be ``:memory:`` (the rows vanish when the load ends: only
    useful to check a result). ``lock_timeout``: seconds to wait for another process's lock on the file.

    :attr:`asset_uri` is ``duckdb://<absolute database path>/<table>`` with the table name as given,
    percent-encoded (``duckdb:///data/zoho.duckdb/main.results``); ``duckdb:///:memory:/<table>``
    in memory.
    """

    template_fields = ("database", "table")

    def __init__(self, database: str = DEFAULT_DATABASE, table: str = DEFAULT_TABLE, *,
                 lock_timeout: float = 60.0) -> None:
        _check_database(database)
        split_table_name(table)
        if lock_timeout < 0:
            raise SinkConfigurationError(f"lock_timeout must not be negative, got {lock_timeout}")
        self.database = database
        self.table = table
        self.lock_timeout = lock_timeout

    @property
    def asset_uri(self) -> str:
        path = IN_MEMORY if self.database == IN_MEMORY else os.path.abspath(os.path.expanduser(self.database))
        return f"duckdb://{quote('/' + path.lstrip('/'), safe='/:')}/{quote(self.table, safe='')}"

    def _describe(self) -> str:
        return f"DuckDBSink for table {self.table!r}"

    def _start_load(self, job_id: str) -> _DuckDBLoad:
        _check_database(self.database)  # the rendered values may differ from those checked at parse time
        split_table_name(self.table)
        load = _DuckDBLoad(self.database, self.table, job_id, self.lock_timeout)
        load.start()
        return load


def _check_database(database: str) -> None:
    if not isinstance(database, str) or not database.strip():
        raise SinkConfigurationError(f"DuckDB database must be a file path or ':memory:', got {database!r}")
    if "\x00" in database:
        raise SinkConfigurationError(f"DuckDB database path {database!r} contains NUL")


class _DuckDBLoad(StagedLoad):
    """One load on its own DuckDB connection, inside one transaction from start to commit/abort."""

    def __init__(self, database: str, table: str, job_id: str, lock_timeout: float) -> None:
        self.database = database
        self.table = table
        self.qualified = quote_table_name(table, "duckdb")
        self.schema, _ = split_table_name(table)
        self.job_id = job_id
        self.lock_timeout = lock_timeout
        self.connection: duckdb.DuckDBPyConnection | None = None
        self.loaded_at = datetime.now(timezone.utc)
        columns = ", ".join(quote_ident(name, "duckdb") for name in CANONICAL_SCHEMA.names)
        # Completed with the batch's view name per write (by concatenation: the table name may hold braces).
        self.insert_sql_head = (
            f"INSERT INTO {self.qualified} ({columns}, {quote_ident('loaded_at', 'duckdb')}) SELECT {columns}, ? FROM "
        )

    def _ddl(self) -> str:
        columns = ", ".join(f"{quote_ident(name, 'duckdb')} {kind}" for name, kind in _COLUMN_TYPES.items())
        key = ", ".join(quote_ident(name, "duckdb") for name in ("job_id", "file_name", "row_number"))
        return f"CREATE TABLE IF NOT EXISTS {self.qualified} ({columns}, PRIMARY KEY ({key}))"

    def start(self) -> None:
        self.connection = self._connect()
        try:
            self.connection.execute("BEGIN TRANSACTION")
            if self.schema is not None:
                self.connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema, 'duckdb')}")
            self.connection.execute(self._ddl())
            self.connection.execute(
                f"DELETE FROM {self.qualified} WHERE {quote_ident('job_id', 'duckdb')} = ?", [self.job_id])
        except Exception as exc:
            self.abort()
            raise self._failure("starting the load into", exc) from exc

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Connect, waiting while another process holds the file's lock (DuckDB allows one writer)."""
        if self.database != IN_MEMORY:
            directory = os.path.dirname(os.path.abspath(os.path.expanduser(self.database)))
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise self._failure("creating the directory of", exc) from exc
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                return duckdb.connect(os.path.expanduser(self.database))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise self._failure("opening", exc) from exc
                time.sleep(_LOCK_RETRY_INTERVAL_S)
            except duckdb.Error as exc:
                raise self._failure("opening", exc) from exc

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        assert self.connection is not None
        batch = conform_batch(batch, job_id=self.job_id, file_name=file_name, destination=self.table)
        if not batch.num_rows:
            return
        view = f"zoho_bulk_batch_{secrets.token_hex(6)}"
        try:
            self.connection.register(view, batch)
            try:
                self.connection.execute(self.insert_sql_head + quote_ident(view, "duckdb"), [self.loaded_at])
            finally:
                self.connection.unregister(view)
        except Exception as exc:
            raise self._failure("inserting rows into", exc, file_name) from exc

    def commit(self) -> None:
        assert self.connection is not None
        try:
            self.connection.execute("COMMIT")
        except Exception as exc:
            self.abort()
            raise self._failure("committing the load into", exc) from exc
        with contextlib.suppress(Exception):
            self.connection.close()

    def abort(self) -> None:
        """Roll back and close; closing alone also discards an open transaction if the rollback fails."""
        if self.connection is None:
            return
        with contextlib.suppress(Exception):
            self.connection.execute("ROLLBACK")
        with contextlib.suppress(Exception):
            self.connection.close()

    def _failure(self, action: str, exc: BaseException, file_name: str | None = None) -> SinkError:
        return SinkError(
            f"{action} DuckDB table {self.table!r} in {self.database!r} failed, nothing was changed: "
            f"{describe_exception(exc)}",
            job_id=self.job_id, file_name=file_name)
