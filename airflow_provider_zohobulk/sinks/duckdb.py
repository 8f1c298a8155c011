"""DuckDBSink: canonical rows into a DuckDB table, replacing the job's earlier rows in one transaction.

A load is one transaction: ``CREATE TABLE IF NOT EXISTS; DELETE FROM t WHERE job_id = ?``, then for each
CSV member one ``INSERT ... SELECT ... FROM <its batches as they arrive>`` (an Arrow stream fed through a
small queue while the archive streams), then ``COMMIT`` once the archive is verified. Nothing is visible
before the commit; a broken archive, a failure or an abort rolls everything back, DDL included (DuckDB's
DDL is transactional), so a failed first load leaves no table and a failed re-run leaves the job's
earlier rows as they were. One INSERT over a whole member lets DuckDB write full row groups to the file
as it goes (one INSERT per batch kept every uncommitted row in memory until COMMIT: 1.7 GB for 5 million
rows), and the load's connection caps DuckDB's buffer pool (``memory_limit``, restored afterwards),
which otherwise keeps written blocks cached up to 80 % of the machine's RAM. Insertion order is not
preserved (``preserve_insertion_order = false``, also restored): DuckDB then converts and compresses on
both cores, and every row carries its ``row_number``.

Why not stage the rows in a file and insert them at commit (what this sink did before): encoding and
decoding the staged Parquet cost more CPU than DuckDB's own insert, and made the load about 1.6x slower
(``benchmarks/results.md``). What that costs instead: the database's write lock (DuckDB admits one
writing process per file) is held for the whole load, not only the INSERT, so parallel tasks writing one
file take turns for their whole loads (``lock_timeout``, or better an Airflow pool of one slot); and the
blocks a rolled-back load had written stay in the file as free space, which DuckDB reuses for the next
writes (as after any DELETE): the table is as it was, the file may be larger. A database file the load
created is removed again when the load does not commit; a process killed mid-load (task timeout, OOM
killer) can leave that new file behind, empty: DuckDB commits nothing it was not told to.

The table keeps ``errors`` nested natively, ``STRUCT(code VARCHAR, columns VARCHAR[])[]`` (query it with
``unnest(errors)``), and holds ``source`` as ``JSON``: an object of the mapped columns in header order
(``source->>'Email'``, as in PostgreSQL's jsonb), which DuckDB builds from each member's ``source``
struct with ``to_json`` while it inserts, on every core. A ``MAP(VARCHAR, VARCHAR)`` cost three times as
much CPU to insert as the whole rest of the row (``benchmarks/results.md``). Plus ``loaded_at TIMESTAMP
WITH TIME ZONE`` (the same instant for every row of a load). Rows are unique on ``(job_id, file_name,
row_number)`` by construction, without a PRIMARY KEY (see ``_DuckDBLoad._ddl``). Many jobs and modules
share one table.

A Bulk Read export (:meth:`DuckDBSink.open_export`) goes into a table of its own layout: one ``VARCHAR``
column per module field (named as Zoho's header names it), then ``_job_id VARCHAR``, ``_page BIGINT``,
``_row_number BIGINT`` and ``_loaded_at TIMESTAMP WITH TIME ZONE``. Every page of the run is one
transaction, through the same streaming INSERT (one INSERT for as long as pages keep their fields):
``replace`` deletes the table's rows first (DELETE, so views on it survive); ``merge`` streams into a
temporary table and at commit runs ``DELETE ... USING`` on the key (``Id``) and ``INSERT``. The table
is created when missing, a field it lacks is added (``ALTER TABLE ... ADD COLUMN``), none is dropped
(a field this export lacks is NULL in its rows), all inside the transaction.

Importing this module imports no Airflow.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import duckdb
import pyarrow as pa

from airflow_provider_zohobulk.bulk_read import EXPORT_META_COLUMNS
from airflow_provider_zohobulk.bulk_result import CANONICAL_COLUMNS
from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import (
    ExportLoad,
    StagedLoad,
    StagedSink,
    check_export_batch,
    describe_exception,
)
from airflow_provider_zohobulk.sinks.formats import conform_batch
from airflow_provider_zohobulk.sinks.identifiers import quote_ident, quote_table_name, split_table_name

DEFAULT_DATABASE = "zoho_bulk.duckdb"
DEFAULT_TABLE = "zoho_bulk_write_results"
IN_MEMORY = ":memory:"
_LOCK_RETRY_INTERVAL_S = 0.2
#: DuckDB's buffer pool during a load into a file: written blocks are evicted to the file beyond it.
#: Measured (1 M / 5 M rows, an Airflow task's process): 64 MB peaked at 333 / ~340 MB, 32 MB at 305 /
#: 309 MB, at no measurable cost in time since nothing is read back. 16 MB (288 / 294 MB) once failed a
#: 5 M-row load with "could not allocate block": the two inserting threads pin blocks of every column.
_LOAD_MEMORY_LIMIT = "32MB"
#: The name the INSERT reads the incoming batches by, on the load's own connection.
_INCOMING = "zohobulk_incoming_batches"
#: Batches queued ahead of the INSERT: enough to keep both sides busy, few enough to keep memory flat.
_BATCHES_AHEAD = 2
#: How often a writer waiting on a full queue checks that the INSERT is still alive.
_HAND_OVER_POLL_S = 0.5
_END = object()
_ABORT = object()

_COLUMN_TYPES: dict[str, str] = {
    "job_id": "VARCHAR NOT NULL",
    "file_name": "VARCHAR NOT NULL",
    "row_number": "BIGINT NOT NULL",
    "record_id": "VARCHAR",
    "status": "VARCHAR",
    "errors": "STRUCT(code VARCHAR, columns VARCHAR[])[] NOT NULL",
    "errors_raw": "VARCHAR",
    "source": "JSON NOT NULL",
    "loaded_at": "TIMESTAMP WITH TIME ZONE NOT NULL",
}
assert tuple(_COLUMN_TYPES)[:-1] == CANONICAL_COLUMNS  # the table follows the canonical layout

#: A Bulk Read export table's own columns, after one VARCHAR column per module field.
_EXPORT_COLUMN_TYPES: dict[str, str] = {
    "_job_id": "VARCHAR",
    "_page": "BIGINT",
    "_row_number": "BIGINT",
    "_loaded_at": "TIMESTAMP WITH TIME ZONE",
}
assert tuple(_EXPORT_COLUMN_TYPES)[:-1] == EXPORT_META_COLUMNS
#: The temporary table a merge stages its rows in, on the load's own connection.
_MERGE_STAGE = "temp.main.zohobulk_export_stage"
#: DuckDB's buffer pool while a merge copies its stage into the table (see ``_DuckDBExportLoad._merge_memory_mb``).
_MERGE_MB_PER_COLUMN_AND_THREAD = 2
_MERGE_MEMORY_FLOOR_MB = 64


class DuckDBSink(StagedSink):
    """Load canonical rows into ``table`` of the DuckDB file ``database`` (created when missing).

    ``table`` is ``table`` or ``schema.table`` (a part may be double-quoted to hold a dot); every part
    is quoted, so the name is taken literally, case included, and cannot inject SQL. The schema is
    created when missing. ``database`` may be ``:memory:`` (the rows vanish when the load ends: only
    useful to check a result). ``lock_timeout``: seconds to wait for another process's lock on the file.

    :meth:`open_export` loads a Bulk Read export into ``table`` instead (the module docstring says how);
    such a table holds one module's export, not results.

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

    def _start_export(self, load: ExportLoad) -> _DuckDBExportLoad:
        _check_database(self.database)
        split_table_name(self.table)
        export_load = _DuckDBExportLoad(self.database, self.table, load, self.lock_timeout)
        export_load.start()
        return export_load


def _check_database(database: str) -> None:
    if not isinstance(database, str) or not database.strip():
        raise SinkConfigurationError(f"DuckDB database must be a file path or ':memory:', got {database!r}")
    if "\x00" in database:
        raise SinkConfigurationError(f"DuckDB database path {database!r} contains NUL")


class _LoadAborted(Exception):
    """Raised inside DuckDB's read of the incoming batches, so that the INSERT stops."""


class _Insert:
    """One INSERT of the load (one per CSV member), on its own thread, reading batches from a bounded queue.

    It holds no reference to the load, so a load dropped without commit or abort (its task died
    elsewhere) is garbage-collected, and the load's finalizer then stops the INSERT, rolls back, and
    releases the file's lock instead of leaving them to the end of the process.
    """

    def __init__(self, connection: duckdb.DuckDBPyConnection, schema: pa.Schema, sql: str, parameters: list[Any],
                 name: str) -> None:
        self.connection = connection
        self.incoming: queue.Queue[Any] = queue.Queue(maxsize=_BATCHES_AHEAD)
        self.error: BaseException | None = None
        connection.register(_INCOMING, pa.RecordBatchReader.from_batches(schema, self._batches()))
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
        """Tell the INSERT its member is complete and wait for it; raises its error if it failed."""
        self.hand_over(_END)
        self.thread.join()
        with contextlib.suppress(Exception):
            self.connection.unregister(_INCOMING)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Make a running INSERT fail and wait for it to end. Never raises."""
        while self.thread.is_alive():
            with contextlib.suppress(queue.Full):
                self.incoming.put_nowait(_ABORT)
            self.thread.join(timeout=_HAND_OVER_POLL_S)


@dataclass
class _OpenLoad:
    """What an uncommitted load holds open. Not the load itself, so that the load's finalizer can hold it."""

    connection: duckdb.DuckDBPyConnection
    #: Settings the load changed, with their values before: restored when the load ends.
    saved_settings: dict[str, str] = field(default_factory=dict)
    #: The database file, when the load created it: removed again unless the load commits.
    created_file: str | None = None
    #: The INSERT of the member being loaded.
    insert: _Insert | None = None

    def close(self) -> None:
        """Restore the settings the load changed (they belong to the database instance, which other
        connections of this process to the same file share), then close. Never raises."""
        for name, value in self.saved_settings.items():
            with contextlib.suppress(Exception):
                self.connection.execute(f"SET {name} = '{value.replace(chr(39), '')}'")
        with contextlib.suppress(Exception):
            self.connection.unregister(_INCOMING)
        with contextlib.suppress(Exception):
            self.connection.close()  # closing alone also discards an open transaction

    def end_uncommitted(self) -> None:
        """Undo the load: stop its INSERT, roll back, close, and remove the database file if the load
        created it. Never raises. Also the load's finalizer."""
        if self.insert is not None:
            self.insert.stop()
        with contextlib.suppress(Exception):
            self.connection.execute("ROLLBACK")
        self.close()
        if self.created_file is not None:
            for path in (self.created_file, self.created_file + ".wal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)


class _DuckDBLoad(StagedLoad):
    """One load: one transaction holding one INSERT per CSV member, each reading its batches as they arrive."""

    def __init__(self, database: str, table: str, job_id: str, lock_timeout: float) -> None:
        self.database = database
        self.table = table
        self.qualified = quote_table_name(table, "duckdb")
        self.schema, self.table_name = split_table_name(table)
        self.job_id = job_id
        self.lock_timeout = lock_timeout
        self.loaded_at = datetime.now(timezone.utc)
        self.open: _OpenLoad | None = None
        #: The member whose INSERT is running, and the layout of its batches.
        self.member: tuple[str, pa.Schema] | None = None
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
        """Open the database (waiting for another writer's lock) and begin the transaction that replaces
        the job's rows; the INSERTs start with each member's first rows (:meth:`write`)."""
        created_file = None
        if self.database != IN_MEMORY and not os.path.exists(_local_path(self.database)):
            created_file = _local_path(self.database)
            try:
                os.makedirs(os.path.dirname(created_file), exist_ok=True)
            except OSError as exc:
                raise self._failure("creating the folder of", exc) from exc
        self.open = _OpenLoad(self._connect(), created_file=created_file)
        self._finalizer = weakref.finalize(self, self.open.end_uncommitted)
        connection = self.open.connection
        try:
            connection.execute("BEGIN TRANSACTION")
            if self.schema is not None:
                connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema, 'duckdb')}")
            self._prepare(connection)
        except Exception as exc:
            self.abort()
            raise exc if isinstance(exc, SinkError) else self._failure("starting the load into", exc) from exc

    def _prepare(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Inside the load's transaction: the table, the settings, and the job's earlier rows deleted."""
        connection.execute(self._ddl())
        self._check_source_column(connection)
        self._tune_for_the_load(connection)
        connection.execute(f"DELETE FROM {self.qualified} WHERE {quote_ident('job_id', 'duckdb')} = ?",
                           [self.job_id])

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        assert self.open is not None
        batch = conform_batch(batch, job_id=self.job_id, file_name=file_name, destination=self.table)
        if not batch.num_rows:
            return
        batch = _stream_batch(batch)
        try:
            if self.member != (file_name, batch.schema):
                self._start_insert(file_name, batch.schema)
            assert self.open.insert is not None
            self.open.insert.hand_over(batch)
        except Exception as exc:
            self.abort()
            raise self._failure("inserting rows into", exc, file_name) from exc

    def _start_insert(self, file_name: str, schema: pa.Schema) -> None:
        """Finish the previous member's INSERT and start this one's: one Arrow stream has one schema, and
        each CSV member has its own ``source`` struct, which DuckDB turns into JSON (``to_json``) as it
        inserts, on every core."""
        columns = [quote_ident(name, "duckdb") for name in schema.names]
        selected = [("to_json(source)" if schema.field("source").type.num_fields else "'{}'")
                    if name == "source" else quoted for name, quoted in zip(schema.names, columns, strict=True)]
        sql = (f"INSERT INTO {self.qualified} ({', '.join(columns)}, {quote_ident('loaded_at', 'duckdb')}) "
               f"SELECT {', '.join(selected)}, ? FROM {_INCOMING}")
        self._begin_insert(sql, schema)
        self.member = (file_name, schema)

    def _finish_insert(self) -> None:
        """Wait for the running INSERT to take its last batch; raises its error if it failed."""
        assert self.open is not None
        if self.open.insert is not None:
            self.open.insert.finish()
            self.open.insert = None

    def _begin_insert(self, sql: str, schema: pa.Schema) -> None:
        """Finish the running INSERT, then start ``sql`` (reading :data:`_INCOMING`, with the load's time as
        its one parameter) over batches of ``schema`` handed over by :meth:`_Insert.hand_over`."""
        assert self.open is not None
        self._finish_insert()
        self.open.insert = _Insert(self.open.connection, schema, sql, [self.loaded_at],
                                   name=f"duckdb-insert-{self.job_id}")

    def commit(self) -> None:
        assert self.open is not None
        action = "inserting rows into"
        try:
            self._finish_insert()
            action = "committing the load into"
            self._before_commit(self.open.connection)
            self.open.connection.execute("COMMIT")
        except Exception as exc:
            self.abort()
            raise self._failure(action, exc) from exc
        if self._finalizer is not None:
            self._finalizer.detach()
        self.open.close()

    def _before_commit(self, connection: duckdb.DuckDBPyConnection) -> None:
        """The last statements of the transaction, once every row is in (a result load has none)."""

    def abort(self) -> None:
        """Stop the INSERT, roll back and close; remove the database file if this load created it. Never raises."""
        if self._finalizer is not None:
            self._finalizer()  # runs once: a later abort() or the garbage collector finds nothing to do

    def _check_source_column(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Tables created before ``source`` became JSON hold a MAP; say how to migrate instead of failing on a
        cast in the middle of the load."""
        row = connection.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
            "AND column_name = 'source'", [self.schema or "main", self.table_name]).fetchone()
        if row is not None and str(row[0]).upper() != "JSON":
            raise SinkError(
                f"DuckDB table {self.table!r} in {self.database!r} has source {row[0]}, not JSON (it was created "
                f"by an earlier release); migrate it once with ALTER TABLE {self.qualified} ALTER source TYPE JSON "
                "USING to_json(source), then load again; nothing was changed", job_id=self.job_id)

    def _has_index(self) -> bool:
        """Whether the table (one you created) has a key, UNIQUE constraint or index: DuckDB holds those
        in memory for every row the load adds, so such a load runs without the buffer-pool cap, which
        would make a large one fail at COMMIT."""
        assert self.open is not None
        where = "schema_name = ? AND table_name = ?"
        place = [self.schema or "main", self.table_name]
        row = self.open.connection.execute(
            f"SELECT (SELECT count(*) FROM duckdb_constraints() WHERE {where} "
            f"AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')) "
            f"+ (SELECT count(*) FROM duckdb_indexes() WHERE {where})",
            place + place).fetchone()
        return bool(row and row[0])

    def _tune_for_the_load(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Let DuckDB insert on every core without ordering, and cap its buffer pool unless the table has
        an index or the database is in memory (nowhere to evict to: a cap would only make big loads
        fail); each setting's value before is remembered, to be restored when the load ends."""
        assert self.open is not None
        wanted = {"preserve_insertion_order": "false"}
        if self.database != IN_MEMORY and not self._has_index():
            wanted["memory_limit"] = _LOAD_MEMORY_LIMIT
        for name, value in wanted.items():
            row = connection.execute("SELECT current_setting(?)", [name]).fetchone()
            if row is not None:
                self.open.saved_settings[name] = str(row[0])
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


class _DuckDBExportLoad(_DuckDBLoad):
    """One Bulk Read export run: every page in one transaction, through the same streaming INSERT.

    ``replace``: the table's rows are deleted (DELETE, not DROP: views on it survive) and the pages
    inserted straight into it. ``merge``: the pages are inserted into a temporary table on the load's
    connection, and at commit the table's rows with the same key are deleted and the staged rows
    inserted (``DELETE ... USING`` + ``INSERT``). The table is created with the first page's columns
    when missing; a field it lacks is added (``ALTER TABLE ... ADD COLUMN``) before the first rows that
    have it, all inside the transaction, so a failed run leaves the table as it was, or absent.
    """

    def __init__(self, database: str, table: str, export: ExportLoad, lock_timeout: float) -> None:
        super().__init__(database, table, export.run_id, lock_timeout)
        self.export = export
        #: The table's columns as DuckDB matches them (case-insensitively), once it exists in the load.
        self.table_columns: set[str] | None = None
        #: The merge stage's columns (lower-cased -> as created, in order), once created.
        self.stage_columns: dict[str, str] | None = None
        #: The columns of the batches the running INSERT reads.
        self.inserting: pa.Schema | None = None

    def _prepare(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Check an existing table is an export table, settle the settings; ``replace`` deletes its rows
        now. A missing table is created with the first batch's columns (:meth:`_ensure_columns`)."""
        existing = self._existing_columns(connection)
        if existing is not None:
            wrong = [f"{name} {existing.get(name, 'missing')}" for name, kind in _EXPORT_COLUMN_TYPES.items()
                     if existing.get(name) != kind]
            if wrong:
                raise SinkError(
                    f"DuckDB table {self.table!r} in {self.database!r} is not a Bulk Read export table (it needs "
                    f"{', '.join(f'{name} {kind}' for name, kind in _EXPORT_COLUMN_TYPES.items())}; it has "
                    f"{', '.join(wrong)}); choose another table, nothing was changed", job_id=self.job_id)
            self.table_columns = set(existing)
        self._tune_for_the_load(connection)
        if existing is not None and self.export.write_mode == "replace":
            connection.execute(f"DELETE FROM {self.qualified}")

    def _existing_columns(self, connection: duckdb.DuckDBPyConnection) -> dict[str, str] | None:
        """The table's columns (lower-cased name -> type), or None when it does not exist."""
        rows = connection.execute(
            "SELECT lower(column_name), data_type FROM duckdb_columns() WHERE database_name = current_database() "
            "AND lower(schema_name) = lower(?) AND lower(table_name) = lower(?)",
            [self.schema or "main", self.table_name]).fetchall()
        return {name: str(kind).upper() for name, kind in rows} if rows else None

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        assert self.open is not None
        try:
            module_columns = check_export_batch(
                batch, sink=f"DuckDBSink for table {self.table!r}", job_id=self.job_id, file_name=file_name,
                merge_key=self.export.key if self.export.write_mode == "merge" else None)
        except SinkError:
            self.abort()
            raise
        try:
            if self.inserting is None or not self.inserting.equals(batch.schema):
                self._finish_insert()  # ALTER TABLE waits for no INSERT: the running one ends first
                self._ensure_columns(module_columns)
                self._start_export_insert(batch.schema)
            if batch.num_rows:
                assert self.open.insert is not None
                self.open.insert.hand_over(batch)
        except Exception as exc:
            self.abort()
            raise self._failure("inserting rows into", exc, file_name) from exc

    def _ensure_columns(self, module_columns: tuple[str, ...]) -> None:
        """Create the table (and a merge's stage) with these columns, or add those it lacks."""
        assert self.open is not None
        connection = self.open.connection
        wanted = {name.lower(): name for name in (*module_columns, *_EXPORT_COLUMN_TYPES)}
        if self.table_columns is None:
            connection.execute(f"CREATE TABLE {self.qualified} ({self._column_definitions(wanted.values())})")
            self.table_columns = set(wanted)
        self.table_columns |= set(self._add_columns(self.qualified, self.table_columns, wanted))
        if self.export.write_mode == "merge":
            if self.stage_columns is None:
                connection.execute(f"CREATE TEMP TABLE {_MERGE_STAGE} ({self._column_definitions(wanted.values())})")
                self.stage_columns = dict(wanted)
            self.stage_columns.update(self._add_columns(_MERGE_STAGE, set(self.stage_columns), wanted))

    def _add_columns(self, table: str, has: set[str], wanted: dict[str, str]) -> dict[str, str]:
        """``ALTER TABLE ... ADD COLUMN`` for each wanted column ``table`` lacks (VARCHAR: they are fields);
        returns those added. DuckDB matches column names ignoring case, so ``has`` is lower-cased."""
        assert self.open is not None
        missing = {lowered: name for lowered, name in wanted.items() if lowered not in has}
        for name in missing.values():
            self.open.connection.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(name, 'duckdb')} VARCHAR")
        return missing

    @staticmethod
    def _column_definitions(names: Iterable[str]) -> str:
        return ", ".join(f"{quote_ident(name, 'duckdb')} {_EXPORT_COLUMN_TYPES.get(name, 'VARCHAR')}"
                         for name in names)

    def _start_export_insert(self, schema: pa.Schema) -> None:
        """One INSERT for as long as the batches keep their columns: pages with the same fields share it."""
        target = _MERGE_STAGE if self.export.write_mode == "merge" else self.qualified
        columns = ", ".join(quote_ident(name, "duckdb") for name in schema.names)
        self._begin_insert(f"INSERT INTO {target} ({columns}, {quote_ident('_loaded_at', 'duckdb')}) "
                           f"SELECT {columns}, ? FROM {_INCOMING}", schema)
        self.inserting = schema

    def _before_commit(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Create the table if no batch came; a merge replaces the table's rows of the staged keys."""
        if self.table_columns is None:
            self._ensure_columns(())
        if self.export.write_mode != "merge" or self.stage_columns is None:
            return
        assert self.open is not None
        if "memory_limit" in self.open.saved_settings:  # capped for the load: raised for the copy
            connection.execute(f"SET memory_limit = '{self._merge_memory_mb(connection)}MB'")
        key = quote_ident(self.export.key, "duckdb")
        columns = ", ".join(quote_ident(name, "duckdb") for name in self.stage_columns.values())
        connection.execute(f"DELETE FROM {self.qualified} AS target USING {_MERGE_STAGE} AS incoming "
                           f"WHERE target.{key} = incoming.{key}")
        connection.execute(f"INSERT INTO {self.qualified} ({columns}) SELECT {columns} FROM {_MERGE_STAGE}")
        connection.execute(f"DROP TABLE {_MERGE_STAGE}")

    def _merge_memory_mb(self, connection: duckdb.DuckDBPyConnection) -> int:
        """The buffer pool the copy from the stage into the table needs: DuckDB pins blocks of every
        column, on both sides, per thread, so under the load's 16 MB cap the copy runs out of memory.
        Measured with 24 columns and 1,000,000 rows: 2 threads need 48 MB, 4 need 96 MB, 8 need 192 MB
        (128 MB fails); this allows twice that per column and thread, at least 64 MB. A million-row merge
        of Leads (27 columns, 2 threads: 108 MB) then peaked at 360 MB against 274 MB for a replace."""
        assert self.stage_columns is not None
        row = connection.execute("SELECT current_setting('threads')").fetchone()
        threads = int(row[0]) if row else 1
        return max(_MERGE_MEMORY_FLOOR_MB, _MERGE_MB_PER_COLUMN_AND_THREAD * len(self.stage_columns) * threads)


def _stream_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A canonical batch as its INSERT reads it: a ``source`` without mapped columns (an empty struct,
    which DuckDB cannot read from Arrow) becomes a column of nulls, and the INSERT writes ``{}``."""
    source_at = batch.schema.get_field_index("source")
    if batch.column(source_at).type.num_fields:
        return batch
    return batch.set_column(source_at, "source", pa.nulls(batch.num_rows))


def _local_path(database: str) -> str:
    return os.path.abspath(os.path.expanduser(database))
