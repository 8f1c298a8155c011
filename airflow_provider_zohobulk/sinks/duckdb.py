"""DuckDBSink: canonical rows into a DuckDB table, replacing the job's earlier rows in one transaction.

While the archive streams, the rows are staged in a Parquet file beside the database (zstd, one row
group per batch: memory stays a few batches). Only at commit, once the archive is verified, is the
database opened, and one transaction runs ``CREATE TABLE IF NOT EXISTS; DELETE FROM t WHERE job_id = ?;
INSERT ... SELECT ... FROM read_parquet(staged file); COMMIT``; the staged file is deleted in every
case. So a broken archive never touches the database, and the file's write lock (DuckDB admits one
writing process) is held for the INSERT only, not for the whole download. One INSERT over the whole
file lets DuckDB append full row groups to the database as it goes (one INSERT per batch inside one
transaction kept every uncommitted row in memory until COMMIT: 1.7 GB for 5 million rows). The load's
connection caps DuckDB's buffer pool (``memory_limit``, restored afterwards), which otherwise keeps
written blocks cached up to 80 % of the machine's RAM. DuckDB's DDL is transactional too, so a failed
first load leaves no empty table behind, and a failed re-run leaves the job's earlier rows as they were.

The table keeps the nesting natively: ``errors STRUCT(code VARCHAR, columns VARCHAR[])[]`` and
``source MAP(VARCHAR, VARCHAR)`` (query them with ``unnest(errors)`` and ``source['Email']``), plus
``loaded_at TIMESTAMP WITH TIME ZONE`` (the same instant for every row of a load). Rows are unique on
``(job_id, file_name, row_number)`` by construction, without a PRIMARY KEY (see ``_DuckDBLoad._ddl``).
Many jobs and modules share one table.

Parallel Airflow tasks writing to the same file take turns: at commit, opening the database retries for
up to ``lock_timeout`` seconds while another process holds the lock. The staged file needs disk space
beside the database of about 13 MB per million rows. It is a
:class:`~airflow_provider_zohobulk.sinks.staging_file.StagingFile`: on Linux it has no name, so even a
process killed mid-load leaves nothing behind; elsewhere it is ``.<database name>.zohobulk.*.parquet``
until the load ends.

Importing this module imports no Airflow.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from datetime import datetime, timezone
from urllib.parse import quote

import duckdb
import pyarrow as pa

from airflow_provider_zohobulk.bulk_result import CANONICAL_SCHEMA
from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import StagedLoad, StagedSink, describe_exception
from airflow_provider_zohobulk.sinks.formats import ParquetEncoder, conform_batch
from airflow_provider_zohobulk.sinks.identifiers import quote_ident, quote_table_name, split_table_name
from airflow_provider_zohobulk.sinks.staging_file import StagingFile

DEFAULT_DATABASE = "zoho_bulk.duckdb"
DEFAULT_TABLE = "zoho_bulk_write_results"
IN_MEMORY = ":memory:"
_LOCK_RETRY_INTERVAL_S = 0.2
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


class _DuckDBLoad(StagedLoad):
    """One load: rows staged in a Parquet file while the archive streams, then one transaction at commit."""

    def __init__(self, database: str, table: str, job_id: str, lock_timeout: float) -> None:
        self.database = database
        self.table = table
        self.qualified = quote_table_name(table, "duckdb")
        self.schema, self.table_name = split_table_name(table)
        self.job_id = job_id
        self.lock_timeout = lock_timeout
        self.loaded_at = datetime.now(timezone.utc)
        columns = ", ".join(quote_ident(name, "duckdb") for name in CANONICAL_SCHEMA.names)
        self.insert_sql = (f"INSERT INTO {self.qualified} ({columns}, {quote_ident('loaded_at', 'duckdb')}) "
                           f"SELECT {columns}, ? FROM read_parquet(?)")
        #: The staged rows; it deletes itself if the load is dropped without commit or abort.
        self.stage: StagingFile | None = None
        self.encoder: ParquetEncoder | None = None
        self.rows_staged = 0
        self.connection: duckdb.DuckDBPyConnection | None = None
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
        """Create the staging file beside the database (same disk, same permissions); nothing of the
        database is touched yet, so a broken archive never opens it."""
        directory = tempfile.gettempdir() if self.database == IN_MEMORY else os.path.dirname(_local_path(self.database))
        try:
            self.stage = StagingFile(directory, f"{os.path.basename(self.database)}.zohobulk", ".parquet")
            self.encoder = ParquetEncoder(self.stage.stream)
        except Exception as exc:
            self.abort()
            raise self._failure("staging rows for", exc) from exc

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        assert self.encoder is not None
        batch = conform_batch(batch, job_id=self.job_id, file_name=file_name, destination=self.table)
        try:
            self.encoder.write(batch)
        except Exception as exc:  # a full disk
            raise self._failure("staging rows for", exc, file_name) from exc
        self.rows_staged += batch.num_rows

    def commit(self) -> None:
        assert self.stage is not None and self.encoder is not None
        try:
            self.encoder.finish()  # the Parquet footer
            self.stage.flush()
        except Exception as exc:
            self.abort()
            raise self._failure("staging rows for", exc) from exc
        self.connection = self._connect()  # waits for another writer's lock; raises after cleaning up
        action = "starting the load into"
        try:
            self.connection.execute("BEGIN TRANSACTION")
            if self.schema is not None:
                self.connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema, 'duckdb')}")
            self.connection.execute(self._ddl())
            if not self._has_index():
                self._limit_memory(self.connection)
            self.connection.execute(
                f"DELETE FROM {self.qualified} WHERE {quote_ident('job_id', 'duckdb')} = ?", [self.job_id])
            action = "inserting rows into"
            if self.rows_staged:
                self.connection.execute(self.insert_sql, [self.loaded_at, self.stage.reader_path])
            action = "committing the load into"
            self.connection.execute("COMMIT")
        except Exception as exc:
            self.abort()
            raise self._failure(action, exc) from exc
        self._restore_memory_limit(self.connection)
        with contextlib.suppress(Exception):
            self.connection.close()
        self._remove_stage()

    def abort(self) -> None:
        """Roll back and close if the database was opened; delete the staged rows. Never raises."""
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.execute("ROLLBACK")
            self._restore_memory_limit(self.connection)
            with contextlib.suppress(Exception):
                self.connection.close()  # closing alone also discards an open transaction
        self._remove_stage()

    def _remove_stage(self) -> None:
        if self.encoder is not None:
            with contextlib.suppress(Exception):
                self.encoder.finish()  # else the Parquet writer would write its footer to a closed file when collected
        if self.stage is not None:
            self.stage.discard()

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

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Connect, waiting while another process holds the file's lock (DuckDB allows one writer)."""
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                return duckdb.connect(self.database if self.database == IN_MEMORY else _local_path(self.database))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                    self.abort()
                    raise self._failure("opening", exc) from exc
                time.sleep(_LOCK_RETRY_INTERVAL_S)
            except duckdb.Error as exc:
                self.abort()
                raise self._failure("opening", exc) from exc

    def _failure(self, action: str, exc: BaseException, file_name: str | None = None) -> SinkError:
        return SinkError(
            f"{action} DuckDB table {self.table!r} in {self.database!r} failed, nothing was changed: "
            f"{describe_exception(exc)}",
            job_id=self.job_id, file_name=file_name)


def _local_path(database: str) -> str:
    return os.path.abspath(os.path.expanduser(database))
