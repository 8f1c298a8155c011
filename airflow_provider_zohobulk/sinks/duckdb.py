"""DuckDBSink: canonical rows into a DuckDB table, replacing the job's earlier rows in one transaction.

One load is ``BEGIN; CREATE TABLE IF NOT EXISTS; DELETE FROM t WHERE job_id = ?;`` then ONE
``INSERT ... SELECT`` over every batch of the load, ``COMMIT`` at the end, or ``ROLLBACK`` when the
archive turns out to be broken. The single INSERT reads a ``pyarrow.RecordBatchReader`` fed through a
small bounded queue while a background thread runs the statement: one ``INSERT`` per batch inside one
transaction kept every uncommitted row in DuckDB's memory until COMMIT (1.7 GB for 5 million rows),
whereas one long INSERT appends full row groups that DuckDB writes to the database file as it goes.
The load's connection also caps DuckDB's buffer pool (``memory_limit``, restored afterwards), which
otherwise keeps those written blocks cached up to 80 % of the machine's RAM. DuckDB's DDL is
transactional too, so a failed first load leaves no empty table behind, and a failed re-run leaves the
job's earlier rows as they were.

The table keeps the nesting natively: ``errors STRUCT(code VARCHAR, columns VARCHAR[])[]`` and
``source MAP(VARCHAR, VARCHAR)`` (query them with ``unnest(errors)`` and ``source['Email']``), plus
``loaded_at TIMESTAMP WITH TIME ZONE`` (the same instant for every row of a load). Rows are unique on
``(job_id, file_name, row_number)`` by construction, without a PRIMARY KEY (see ``_DuckDBLoad._ddl``).
Many jobs and modules share one table.

A DuckDB file accepts one writing process at a time (it is locked while open). Parallel Airflow tasks
writing to the same file therefore take turns: opening retries for up to ``lock_timeout`` seconds
while another process holds the lock.

Importing this module imports no Airflow.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator
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
#: Batches waiting for the INSERT thread: enough to keep it busy, few enough to bound memory.
_QUEUE_DEPTH = 2
#: How often a blocked hand-off looks whether the INSERT thread died (seconds).
_HANDOFF_POLL_S = 0.1
#: DuckDB's buffer pool during a load into a file: written blocks are evicted to the file beyond it.
_LOAD_MEMORY_LIMIT = "64MB"

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
        # The parsed parts, not the text: "results" and results are one table, so one Asset.
        table_path = "/".join(quote(part, safe="") for part in split_table_name(self.table) if part is not None)
        return f"duckdb://{quote('/' + path.lstrip('/'), safe='/:')}/{table_path}"

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
        self.schema, self.table_name = split_table_name(table)
        self.job_id = job_id
        self.lock_timeout = lock_timeout
        self.connection: duckdb.DuckDBPyConnection | None = None
        self.loaded_at = datetime.now(timezone.utc)
        columns = ", ".join(quote_ident(name, "duckdb") for name in CANONICAL_SCHEMA.names)
        # Completed with the batch's view name per write (by concatenation: the table name may hold braces).
        self.insert_sql_head = (
            f"INSERT INTO {self.qualified} ({columns}, {quote_ident('loaded_at', 'duckdb')}) SELECT {columns}, ? FROM "
        )
        self.pending: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self.cancelled = threading.Event()
        self.inserter: threading.Thread | None = None
        self.insert_error: BaseException | None = None
        #: The file of the last batch handed to the INSERT, named when the INSERT fails.
        self.last_file_name: str | None = None
        self.previous_memory_limit: str | None = None

    def _ddl(self) -> str:
        """No PRIMARY KEY: DuckDB keeps a key's index in memory for every row the transaction adds, so a
        capped load of 5 million rows failed at COMMIT ("could not allocate block") and an uncapped one
        grew with the file. The key stays unique by construction (the job's rows are deleted and
        re-inserted in one transaction, DuckDB admits one writer, and ``StagedSink`` refuses a file's
        rows arriving twice); the DELETE finds a job's rows through DuckDB's per-row-group min/max,
        since a load's rows are stored together."""
        columns = ", ".join(f"{quote_ident(name, 'duckdb')} {kind}" for name, kind in _COLUMN_TYPES.items())
        return f"CREATE TABLE IF NOT EXISTS {self.qualified} ({columns})"

    def start(self) -> None:
        self.connection = self._connect()
        try:
            self.connection.execute("BEGIN TRANSACTION")
            if self.schema is not None:
                self.connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema, 'duckdb')}")
            self.connection.execute(self._ddl())
            if not self._has_index():
                self._limit_memory(self.connection)
            self.connection.execute(
                f"DELETE FROM {self.qualified} WHERE {quote_ident('job_id', 'duckdb')} = ?", [self.job_id])
        except Exception as exc:
            self.abort()
            raise self._failure("starting the load into", exc) from exc
        self.inserter = threading.Thread(target=self._insert_all, name="zohobulk-duckdb-insert", daemon=True)
        self.inserter.start()

    def _has_index(self) -> bool:
        """Whether the table (one you created) has a key, UNIQUE constraint or index: DuckDB holds those
        in memory for every row the load adds, so such a load runs without the buffer-pool cap, which
        would make a large one fail at COMMIT."""
        assert self.connection is not None
        where = "schema_name = ? AND table_name = ?"
        place = [self.schema or "main", self.table_name]
        row = self.connection.execute(
            f"SELECT (SELECT count(*) FROM duckdb_constraints() WHERE {where} "
            f"AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')) "
            f"+ (SELECT count(*) FROM duckdb_indexes() WHERE {where})",
            place + place).fetchone()
        return bool(row and row[0])

    def _limit_memory(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Cap the buffer pool for this load, remembering the setting to restore: it is per database
        instance, which other connections of this process to the same file share."""
        if self.database == IN_MEMORY:  # nowhere to evict to: a cap would only make big loads fail
            return
        row = connection.execute("SELECT current_setting('memory_limit')").fetchone()
        self.previous_memory_limit = None if row is None else str(row[0])
        connection.execute(f"SET memory_limit = '{_LOAD_MEMORY_LIMIT}'")

    def _restore_memory_limit(self, connection: duckdb.DuckDBPyConnection) -> None:
        if self.previous_memory_limit is not None:
            with contextlib.suppress(Exception):
                connection.execute(f"SET memory_limit = '{self.previous_memory_limit.replace(chr(39), '')}'")

    def _queued_batches(self) -> Iterator[pa.RecordBatch]:
        """What the INSERT reads: the batches :meth:`write` hands over, until commit's end marker.

        Raising here (abort) makes DuckDB fail the INSERT, which leaves the transaction to roll back.
        """
        while True:
            batch = self.pending.get()
            if batch is None:
                if self.cancelled.is_set():
                    raise SinkError("load aborted", job_id=self.job_id)
                return
            yield batch

    def _insert_all(self) -> None:
        """The one INSERT of the load, run in its own thread while the caller keeps writing batches."""
        assert self.connection is not None
        view = f"zoho_bulk_batches_{secrets.token_hex(6)}"
        reader = pa.RecordBatchReader.from_batches(CANONICAL_SCHEMA, self._queued_batches())
        try:
            self.connection.register(view, reader)
            try:
                self.connection.execute(self.insert_sql_head + quote_ident(view, "duckdb"), [self.loaded_at])
            finally:  # in an aborted transaction this fails too, and must not replace the real error
                with contextlib.suppress(duckdb.Error):
                    self.connection.unregister(view)
        except BaseException as exc:  # reported by write/commit in the caller's thread
            self.insert_error = exc
            self._drain()

    def _drain(self) -> None:
        """Empty the queue after a failed INSERT, so that a writer blocked on it wakes up."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.pending.get_nowait()

    def _hand_over(self, batch: pa.RecordBatch | None) -> None:
        """Queue ``batch`` (None: the end) for the INSERT thread, unless that thread already stopped."""
        assert self.inserter is not None
        while self.inserter.is_alive():
            try:
                self.pending.put(batch, timeout=_HANDOFF_POLL_S)
                return
            except queue.Full:
                continue

    def _raise_if_insert_failed(self) -> None:
        """Report a failed INSERT (a constraint violation, a full disk) in the caller's thread."""
        if self.insert_error is not None:
            error = self.insert_error
            raise self._failure("inserting rows into", error, self.last_file_name) from error

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
        self._raise_if_insert_failed()
        if not batch.num_rows:
            return
        self.last_file_name = file_name
        self._hand_over(batch)
        self._raise_if_insert_failed()

    def commit(self) -> None:
        assert self.connection is not None and self.inserter is not None
        self._hand_over(None)
        self.inserter.join()
        try:
            self._raise_if_insert_failed()
        except SinkError:
            self.abort()
            raise
        try:
            self.connection.execute("COMMIT")
        except Exception as exc:
            self.abort()
            raise self._failure("committing the load into", exc) from exc
        self._restore_memory_limit(self.connection)
        with contextlib.suppress(Exception):
            self.connection.close()

    def abort(self) -> None:
        """Roll back and close; closing alone also discards an open transaction if the rollback fails."""
        if self.connection is None:
            return
        if self.inserter is not None and self.inserter.is_alive():
            self.cancelled.set()
            self._drain()  # room for the end marker, which now means "fail the INSERT"
            self._hand_over(None)
            self.inserter.join()
        with contextlib.suppress(Exception):
            self.connection.execute("ROLLBACK")
        self._restore_memory_limit(self.connection)
        with contextlib.suppress(Exception):
            self.connection.close()

    def _failure(self, action: str, exc: BaseException, file_name: str | None = None) -> SinkError:
        return SinkError(
            f"{action} DuckDB table {self.table!r} in {self.database!r} failed, nothing was changed: "
            f"{describe_exception(exc)}",
            job_id=self.job_id, file_name=file_name)
