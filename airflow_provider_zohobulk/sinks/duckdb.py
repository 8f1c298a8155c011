"""DuckDBSink: canonical rows into a DuckDB table, replacing the job's earlier rows in one transaction.

A load is one transaction: ``CREATE TABLE IF NOT EXISTS; DELETE FROM t WHERE job_id = ?``, then a single
``INSERT ... SELECT ... FROM <the batches as they arrive>`` (an Arrow stream fed through a small queue
while the archive streams), then ``COMMIT`` once the archive is verified. Nothing is visible before the
commit; a broken archive, a failure or an abort rolls everything back, DDL included (DuckDB's DDL is
transactional), so a failed first load leaves no table and a failed re-run leaves the job's earlier rows
as they were. One INSERT over the whole load lets DuckDB write full row groups to the file as it goes
(one INSERT per batch kept every uncommitted row in memory until COMMIT: 1.7 GB for 5 million rows),
and the load's connection caps DuckDB's buffer pool (``memory_limit``, restored afterwards), which
otherwise keeps written blocks cached up to 80 % of the machine's RAM. Insertion order is not preserved
(``preserve_insertion_order = false``, also restored): DuckDB then converts and compresses on both cores,
and every row carries its ``row_number``.

Why not stage the rows in a file and insert them at commit (what this sink did before): encoding and
decoding the staged Parquet cost more CPU than DuckDB's own insert, and made the load about 1.6x slower
(``benchmarks/results.md``). What that costs instead: the database's write lock (DuckDB admits one
writing process per file) is held for the whole load, not only the INSERT, so parallel tasks writing one
file take turns for their whole loads (``lock_timeout``, or better an Airflow pool of one slot); and the
blocks a rolled-back load had written stay in the file as free space, which DuckDB reuses for the next
writes (as after any DELETE): the table is as it was, the file may be larger. A database file the load
created is removed again when the load does not commit; a process killed mid-load (task timeout, OOM
killer) can leave that new file behind, empty: DuckDB commits nothing it was not told to.

The table keeps the nesting natively: ``errors STRUCT(code VARCHAR, columns VARCHAR[])[]`` and
``source MAP(VARCHAR, VARCHAR)`` (query them with ``unnest(errors)`` and ``source['Email']``), plus
``loaded_at TIMESTAMP WITH TIME ZONE`` (the same instant for every row of a load). Rows are unique on
``(job_id, file_name, row_number)`` by construction, without a PRIMARY KEY (see ``_DuckDBLoad._ddl``).
Many jobs and modules share one table.

Importing this module imports no Airflow.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import duckdb
import pyarrow as pa

from airflow_provider_zohobulk.bulk_result import SOURCE_MAP_TYPE, canonical_schema, source_as_map
from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import StagedLoad, StagedSink, describe_exception
from airflow_provider_zohobulk.sinks.formats import conform_batch
from airflow_provider_zohobulk.sinks.identifiers import quote_ident, quote_table_name, split_table_name

DEFAULT_DATABASE = "zoho_bulk.duckdb"
DEFAULT_TABLE = "zoho_bulk_write_results"
IN_MEMORY = ":memory:"
_LOCK_RETRY_INTERVAL_S = 0.2
#: DuckDB's buffer pool during a load into a file: written blocks are evicted to the file beyond it.
_LOAD_MEMORY_LIMIT = "64MB"
#: The name the INSERT reads the incoming batches by, on the load's own connection.
_INCOMING = "zohobulk_incoming_batches"
#: Batches queued ahead of the INSERT: enough to keep both sides busy, few enough to keep memory flat.
_BATCHES_AHEAD = 2
#: How often a writer waiting on a full queue checks that the INSERT is still alive.
_HAND_OVER_POLL_S = 0.5
_END = object()
_ABORT = object()
#: What the INSERT reads: one Arrow stream has one schema, so ``source`` arrives as the table's MAP,
#: whatever the struct of mapped columns of each CSV (:meth:`_DuckDBLoad.write` converts it).
_STREAM_SCHEMA = canonical_schema(SOURCE_MAP_TYPE)

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
assert list(_COLUMN_TYPES)[:-1] == _STREAM_SCHEMA.names  # the table follows the canonical layout


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
        path = IN_MEMORY if self.database == IN_MEMORY else _local_path(self.database)
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


class _LoadAborted(Exception):
    """Raised inside DuckDB's read of the incoming batches, so that the INSERT stops."""


class _Insert:
    """The load's one INSERT, running on its own thread and reading batches from a bounded queue.

    It holds no reference to the load, so a load dropped without commit or abort (its task died
    elsewhere) is garbage-collected, and the load's finalizer then stops the INSERT, rolls back, and
    releases the file's lock instead of leaving them to the end of the process.
    """

    def __init__(self, connection: duckdb.DuckDBPyConnection, sql: str, parameters: list[Any], name: str) -> None:
        self.connection = connection
        self.incoming: queue.Queue[Any] = queue.Queue(maxsize=_BATCHES_AHEAD)
        self.error: BaseException | None = None
        connection.register(_INCOMING, pa.RecordBatchReader.from_batches(_STREAM_SCHEMA, self._batches()))
        self.thread = threading.Thread(target=self._run, args=(sql, parameters), name=name, daemon=True)
        self.thread.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        """What DuckDB reads, on the INSERT's thread: the batches handed over, until the end or an abort."""
        while True:
            item = self.incoming.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _LoadAborted("the load was aborted")
            yield item

    def _run(self, sql: str, parameters: list[Any]) -> None:
        try:
            self.connection.execute(sql, parameters)
        except BaseException as exc:  # reported on the caller's thread by hand_over() or finish()
            self.error = exc

    def hand_over(self, item: Any) -> None:
        """Queue ``item`` for the INSERT; raises the INSERT's own error if it has died meanwhile."""
        while True:
            if self.error is not None or not self.thread.is_alive():
                raise self.error or RuntimeError("the INSERT ended before the last batch")
            with contextlib.suppress(queue.Full):
                self.incoming.put(item, timeout=_HAND_OVER_POLL_S)
                return

    def finish(self) -> None:
        """Tell the INSERT the load is complete and wait for it; raises its error if it failed."""
        self.hand_over(_END)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Make a running INSERT fail and wait for it to end. Never raises."""
        while self.thread.is_alive():
            with contextlib.suppress(queue.Full):
                self.incoming.put_nowait(_ABORT)
            self.thread.join(timeout=_HAND_OVER_POLL_S)


def _end_uncommitted(insert: _Insert | None, connection: duckdb.DuckDBPyConnection | None,
                     saved_settings: dict[str, str], created_file: str | None) -> None:
    """Undo a load that will not commit: stop its INSERT, roll back, restore the settings, close, and
    remove the database file if the load created it. Never raises. Also the load's finalizer."""
    if insert is not None:
        insert.stop()
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.execute("ROLLBACK")
        _close(connection, saved_settings)
    if created_file is not None:
        for path in (created_file, created_file + ".wal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _close(connection: duckdb.DuckDBPyConnection, saved_settings: dict[str, str]) -> None:
    """Restore the settings the load changed (they belong to the database instance, which other
    connections of this process to the same file share), then close. Never raises."""
    for name, value in saved_settings.items():
        with contextlib.suppress(Exception):
            connection.execute(f"SET {name} = '{value.replace(chr(39), '')}'")
    with contextlib.suppress(Exception):
        connection.unregister(_INCOMING)
    with contextlib.suppress(Exception):
        connection.close()  # closing alone also discards an open transaction


class _DuckDBLoad(StagedLoad):
    """One load: one transaction whose single INSERT reads the batches as :meth:`write` hands them over."""

    def __init__(self, database: str, table: str, job_id: str, lock_timeout: float) -> None:
        self.database = database
        self.table = table
        self.qualified = quote_table_name(table, "duckdb")
        self.schema, self.table_name = split_table_name(table)
        self.job_id = job_id
        self.lock_timeout = lock_timeout
        self.loaded_at = datetime.now(timezone.utc)
        columns = ", ".join(quote_ident(name, "duckdb") for name in _STREAM_SCHEMA.names)
        self.insert_sql = (f"INSERT INTO {self.qualified} ({columns}, {quote_ident('loaded_at', 'duckdb')}) "
                           f"SELECT {columns}, ? FROM {_INCOMING}")
        self.connection: duckdb.DuckDBPyConnection | None = None
        self.insert: _Insert | None = None
        #: Settings this load changed, with their values before: restored when the load ends.
        self.saved_settings: dict[str, str] = {}
        #: The database file, when this load created it: removed again unless the load commits.
        self.created_file: str | None = None
        self._finalizer: weakref.finalize | None = None

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
        """Open the database (waiting for another writer's lock), begin the transaction that replaces the
        job's rows, and start the INSERT that reads every batch :meth:`write` hands over."""
        if self.database != IN_MEMORY and not os.path.exists(_local_path(self.database)):
            self.created_file = _local_path(self.database)
            try:
                os.makedirs(os.path.dirname(self.created_file), exist_ok=True)
            except OSError as exc:
                raise self._failure("creating the folder of", exc) from exc
        self.connection = self._connect()
        self._finalizer = weakref.finalize(self, _end_uncommitted, None, self.connection, self.saved_settings,
                                           self.created_file)
        try:
            self.connection.execute("BEGIN TRANSACTION")
            if self.schema is not None:
                self.connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema, 'duckdb')}")
            self.connection.execute(self._ddl())
            self._tune_for_the_load(self.connection)
            self.connection.execute(
                f"DELETE FROM {self.qualified} WHERE {quote_ident('job_id', 'duckdb')} = ?", [self.job_id])
            self.insert = _Insert(self.connection, self.insert_sql, [self.loaded_at],
                                  name=f"duckdb-insert-{self.job_id}")
        except Exception as exc:
            self.abort()
            raise self._failure("starting the load into", exc) from exc
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _end_uncommitted, self.insert, self.connection,
                                           self.saved_settings, self.created_file)

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        assert self.insert is not None
        batch = conform_batch(batch, job_id=self.job_id, file_name=file_name, destination=self.table)
        if not batch.num_rows:
            return
        try:
            self.insert.hand_over(_with_source_as_map(batch))
        except Exception as exc:
            self.abort()
            raise self._failure("inserting rows into", exc, file_name) from exc

    def commit(self) -> None:
        assert self.connection is not None and self.insert is not None
        action = "inserting rows into"
        try:
            self.insert.finish()
            action = "committing the load into"
            self.connection.execute("COMMIT")
        except Exception as exc:
            self.abort()
            raise self._failure(action, exc) from exc
        if self._finalizer is not None:
            self._finalizer.detach()
        _close(self.connection, self.saved_settings)

    def abort(self) -> None:
        """Stop the INSERT, roll back and close; remove the database file if this load created it. Never raises."""
        if self._finalizer is not None:
            self._finalizer()  # runs once: a later abort() or the garbage collector finds nothing to do

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

    def _tune_for_the_load(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Let DuckDB insert on every core without ordering, and cap its buffer pool unless the table has
        an index or the database is in memory (nowhere to evict to: a cap would only make big loads
        fail); each setting's value before is remembered, to be restored when the load ends."""
        wanted = {"preserve_insertion_order": "false"}
        if self.database != IN_MEMORY and not self._has_index():
            wanted["memory_limit"] = _LOAD_MEMORY_LIMIT
        for name, value in wanted.items():
            row = connection.execute("SELECT current_setting(?)", [name]).fetchone()
            if row is not None:
                self.saved_settings[name] = str(row[0])
            connection.execute(f"SET {name} = '{value}'")

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Connect, waiting while another process holds the file's lock (DuckDB allows one writer)."""
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                return duckdb.connect(self.database if self.database == IN_MEMORY else _local_path(self.database))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise self._failure("opening", exc) from exc
                time.sleep(_LOCK_RETRY_INTERVAL_S)
            except duckdb.Error as exc:
                raise self._failure("opening", exc) from exc

    def _failure(self, action: str, exc: BaseException, file_name: str | None = None) -> SinkError:
        return SinkError(
            f"{action} DuckDB table {self.table!r} in {self.database!r} failed, nothing was changed: "
            f"{describe_exception(exc)}",
            job_id=self.job_id, file_name=file_name)


def _with_source_as_map(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A canonical batch in the stream's layout (:data:`_STREAM_SCHEMA`): its ``source`` struct as a map."""
    source_at = batch.schema.get_field_index("source")
    return pa.RecordBatch.from_arrays(
        [source_as_map(column) if index == source_at else column for index, column in enumerate(batch.columns)],
        schema=_STREAM_SCHEMA)


def _local_path(database: str) -> str:
    return os.path.abspath(os.path.expanduser(database))
