"""SqlSink: canonical rows into a SQL table, one transaction per load, through an Airflow connection.

Two ways in, chosen by the connection's type when the load opens:

- PostgreSQL (``conn_type`` ``postgres``): a psycopg 3 connection built from the Airflow connection,
  ``DELETE`` of the job's earlier rows, then one ``COPY ... FROM STDIN (FORMAT csv)`` fed batch by
  batch as the archive streams in. COPY is about ten times faster than INSERTs (stack-notes), and
  the whole load is one transaction, so a corrupt archive found at the very end rolls back to the
  table exactly as it was. psycopg2 is not needed.
- Any other Airflow SQL connection (common-sql ``DbApiHook``, SQLite being the tested one): the same
  DELETE-then-insert in one transaction with batched ``executemany``; JSON and timestamps as text,
  portable ``TEXT``/``INTEGER`` columns. Databases whose primary keys cannot be ``TEXT`` (MySQL)
  need the table created beforehand with the same column names.

One table holds many jobs and modules: the mapped columns differ between jobs, so they go into one
JSON column (``source``) instead of table columns, and rows are keyed by
``(job_id, file_name, row_number)``. Loads of different jobs into the same table run concurrently
without waiting for each other; two loads of the same job take turns (an advisory lock) so the
later one cleanly replaces the earlier one's rows.

Bulk Read exports (``open_export``) go to a table of their own, one per module: a ``TEXT`` column per
module field (as Zoho's header names it), then ``_job_id``, ``_page``, ``_row_number`` and
``_loaded_at``. The table is created when missing and gets a column for every field new to it; no
column is ever dropped. ``replace`` leaves exactly this export in it (``DELETE`` of every row, not
``DROP``, so views on the table survive); ``merge`` inserts or updates on the key (``Id``) and keeps
every other row. Either way it is one transaction, DDL included, so a failed page leaves the table as it
was, or absent. PostgreSQL copies a replace (``COPY``) straight into the table and a merge into a temporary
stage that one ``INSERT ... ON CONFLICT`` (or ``DELETE`` + ``INSERT`` without a unique index on the key)
applies at commit; other connections stage every export and apply it at commit (see
:class:`_DbApiExportLoad`). Exports into one PostgreSQL table take turns (an advisory lock), so the
later of two replaces wins whole.

The table name is always quoted (see ``identifiers``), so it is taken literally, case included.

Importing this module does not import Airflow: the Airflow connection is looked up in ``open``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pyarrow as pa

from airflow_provider_zohobulk.bulk_read import EXPORT_META_COLUMNS
from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import (
    ExportLoad,
    StagedLoad,
    StagedSink,
    check_export_batch,
    describe_exception,
    is_templated,
    unwind_as_failed,
)
from airflow_provider_zohobulk.sinks.formats import CSV_SCHEMA, conform_batch, encode_csv, to_csv_batch
from airflow_provider_zohobulk.sinks.identifiers import quote_ident, quote_table_name, split_table_name

if TYPE_CHECKING:
    import psycopg

DEFAULT_TABLE = "zoho_bulk_write_results"

#: Columns loaded, in the order of the COPY / INSERT column list: the CSV layout of ``formats`` (nested
#: columns as JSON text). ``loaded_at`` is not among them: PostgreSQL fills it by its column default,
#: the DB-API path passes it as one more parameter per row.
LOADED_COLUMNS: tuple[str, ...] = tuple(CSV_SCHEMA.names)
_POSTGRES_CONN_TYPES = frozenset({"postgres", "postgresql"})

#: Extra keys of an Airflow postgres connection that are passed to libpq as they are.
_LIBPQ_EXTRA_KEYS = frozenset({
    "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "application_name", "options",
    "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "target_session_attrs", "gssencmode", "channel_binding",
})



# --- the sink -----------------------------------------------------------------------------------------


class SqlSink(StagedSink):
    """Load canonical rows into ``table`` of the Airflow SQL connection ``conn_id``.

    ``table`` is ``table`` or ``schema.table`` (a part may be double-quoted to hold a dot); it is
    validated here, at DAG-parse time (unless it is a Jinja template), and again in :meth:`open`
    after Airflow rendered it.
    ``batch_rows`` bounds how many rows are encoded (COPY) or sent (executemany) at a time.

    :attr:`asset_uri` is ``postgres://host:port/database/schema/table`` for PostgreSQL (Airflow's
    own Asset URI form for postgres, which its provider validates; schema ``public`` when none is
    given) and ``<conn_type>://<conn_id>/<table>`` for other connections. It looks the connection
    up, so it is resolved on first use, not at parse time.
    """

    template_fields = ("conn_id", "table")

    def __init__(self, conn_id: str, table: str = DEFAULT_TABLE, *, batch_rows: int = 10_000) -> None:
        if not conn_id:
            raise SinkConfigurationError("SqlSink needs an Airflow connection id")
        if batch_rows < 1:
            raise SinkConfigurationError(f"batch_rows must be at least 1, got {batch_rows}")
        if not is_templated(table):
            split_table_name(table)
        self.conn_id = conn_id
        self.table = table
        self.batch_rows = batch_rows
        self._asset_uri: str | None = None

    @property
    def asset_uri(self) -> str:
        if self._asset_uri is None:
            self._asset_uri = _asset_uri_for(_get_airflow_connection(self.conn_id), self.conn_id, self.table)
        return self._asset_uri

    def parse_time_asset_uri(self) -> str | None:
        """None: this URI needs the connection (host, database), which a DAG file must not look up."""
        return None

    def _describe(self) -> str:
        return f"SqlSink for table {self.table!r}"

    def _start_load(self, job_id: str) -> _PostgresLoad | _DbApiLoad:
        connection = self._resolve_connection()
        if _is_postgres(connection):
            load: _PostgresLoad | _DbApiLoad = _PostgresLoad(
                _libpq_params(connection), self.table, job_id, self.batch_rows, secret=connection.password
            )
        else:
            load = _DbApiLoad(_get_dbapi_hook(connection, self.conn_id), connection.conn_type or "", self.table,
                              job_id, self.batch_rows, secret=connection.password)
        load.start()
        return load

    def _start_export(self, load: ExportLoad) -> _PostgresExportLoad | _DbApiExportLoad:
        connection = self._resolve_connection()
        if _is_postgres(connection):
            export: _PostgresExportLoad | _DbApiExportLoad = _PostgresExportLoad(
                _libpq_params(connection), self.table, load, self.batch_rows, secret=connection.password)
        else:
            export = _DbApiExportLoad(_get_dbapi_hook(connection, self.conn_id), connection.conn_type or "",
                                      self.table, load, self.batch_rows, secret=connection.password)
        export.start()
        return export

    def _resolve_connection(self) -> Any:
        """The Airflow connection of a load that is opening; checks the rendered table name again (it may
        differ from the one checked at parse time) and fixes :attr:`asset_uri` on the way."""
        split_table_name(self.table)
        connection = _get_airflow_connection(self.conn_id)
        self._asset_uri = _asset_uri_for(connection, self.conn_id, self.table)
        return connection


def _is_postgres(connection: Any) -> bool:
    return (connection.conn_type or "").lower() in _POSTGRES_CONN_TYPES


def _get_airflow_connection(conn_id: str) -> Any:
    """The Airflow connection; imported here so that importing the sink does not import Airflow."""
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException and lookup failures of secrets backends
        raise SinkConfigurationError(f"Airflow connection {conn_id!r} for SqlSink could not be found: "
                                     f"{type(exc).__name__}") from exc


def _get_dbapi_hook(connection: Any, conn_id: str) -> Any:
    try:
        hook = connection.get_hook()
    except Exception as exc:
        raise SinkConfigurationError(
            f"connection {conn_id!r} of type {connection.conn_type!r} has no usable hook (is its provider "
            f"installed?): {type(exc).__name__}"
        ) from exc
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    if not isinstance(hook, DbApiHook):
        raise SinkConfigurationError(
            f"connection {conn_id!r} of type {connection.conn_type!r} is not a SQL (DB-API) connection"
        )
    return hook


def _libpq_params(connection: Any) -> dict[str, Any]:
    """psycopg 3 connection parameters from an Airflow postgres connection (schema is the database)."""
    params: dict[str, Any] = {
        "host": connection.host or "localhost",
        "port": connection.port or 5432,
        "user": connection.login,
        "password": connection.password,
        "dbname": connection.schema or None,
        "connect_timeout": 30,
    }
    extra = connection.extra_dejson if connection.extra else {}
    params.update({key: value for key, value in extra.items() if key in _LIBPQ_EXTRA_KEYS})
    return {key: value for key, value in params.items() if value is not None}


def _asset_uri_for(connection: Any, conn_id: str, table: str) -> str:
    schema, name = split_table_name(table)
    conn_type = (connection.conn_type or "").lower()
    if _is_postgres(connection):
        database = connection.schema or connection.login or "postgres"  # libpq's default is the user name
        path = "/".join(quote(part, safe="") for part in (database, schema or "public", name))
        return f"postgres://{connection.host or 'localhost'}:{connection.port or 5432}/{path}"
    # The parsed parts, not the text: "results" and results are one table, so one Asset.
    path = "/".join(quote(part, safe="") for part in (schema, name) if part is not None)
    return f"{conn_type or 'sql'}://{quote(conn_id, safe='')}/{path}"


def _import_psycopg(job_id: str) -> Any:
    """psycopg 3, or a SinkConfigurationError saying which extra installs it."""
    try:
        import psycopg
    except ImportError as exc:
        raise SinkConfigurationError(
            "loading into PostgreSQL needs psycopg 3: install airflow-provider-zohobulk[postgres]", job_id=job_id
        ) from exc
    return psycopg


def _open_dbapi_connection(hook: Any) -> Any:
    """A DB-API connection of ``hook`` with autocommit off, so a load is one transaction."""
    connection = hook.get_conn()
    if getattr(hook, "supports_autocommit", False):
        hook.set_autocommit(connection, False)
    return connection


def _rollback_and_close(connection: Any) -> None:
    """Roll back and close a DB-API connection, if any; closing alone also rolls back if the rollback
    fails. Never raises: it runs while another error is on its way up."""
    if connection is None:
        return
    with contextlib.suppress(Exception):
        connection.rollback()
    with contextlib.suppress(Exception):
        connection.close()


def _slices(batch: pa.RecordBatch, size: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, batch.num_rows, size):
        yield batch.slice(start, size)


def _failure(table: str, job_id: str, action: str, exc: BaseException, secret: str | None,
             file_name: str | None = None) -> SinkError:
    """A SinkError naming table and job; the original error text with any password blanked out."""
    return SinkError(f"{action} table {table!r} failed, nothing was changed: {describe_exception(exc, secret=secret)}",
                     job_id=job_id, file_name=file_name)


# --- PostgreSQL: DELETE + COPY in one transaction ---------------------------------------------------------


class _PostgresLoad(StagedLoad):
    """One load into PostgreSQL on its own psycopg 3 connection."""

    def __init__(self, params: dict[str, Any], table: str, job_id: str, batch_rows: int, *,
                 secret: str | None) -> None:
        self.params = params
        self.table = table
        self.qualified = quote_table_name(table, "postgres")
        self.job_id = job_id
        self.batch_rows = batch_rows
        self.secret = secret
        self.connection: psycopg.Connection | None = None
        self.copy_scope = contextlib.ExitStack()
        self.copy: psycopg.Copy | None = None

    def start(self) -> None:
        psycopg = _import_psycopg(self.job_id)
        try:
            self.connection = psycopg.connect(**self.params, autocommit=False)
            self._create_table_if_missing()
            cursor = self.connection.cursor()
            # Same job twice at once: the later load waits, then replaces the earlier one's rows.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", (self.qualified, self.job_id))
            cursor.execute(f"DELETE FROM {self.qualified} WHERE job_id = %s", (self.job_id,))
            self.copy = self.copy_scope.enter_context(cursor.copy(
                f"COPY {self.qualified} ({', '.join(LOADED_COLUMNS)}) FROM STDIN (FORMAT csv)"
            ))
        except Exception as exc:
            self.abort()
            raise _failure(self.table, self.job_id, "starting the load into PostgreSQL", exc, self.secret) from exc

    def _create_table_if_missing(self) -> None:
        """In its own short transaction, serialised per table, so concurrent first loads do not collide
        on the catalog (two CREATE TABLE IF NOT EXISTS at once fail with a unique violation)."""
        import psycopg

        assert self.connection is not None
        ddl = (
            f"CREATE TABLE IF NOT EXISTS {self.qualified} ("
            "job_id text NOT NULL, file_name text NOT NULL, row_number bigint NOT NULL, record_id text, "
            "status text, errors jsonb, errors_raw text, source jsonb, loaded_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (job_id, file_name, row_number))"
        )
        for attempt in range(2):
            try:
                self.connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.qualified,))
                self.connection.execute(ddl)
                self.connection.commit()
                return
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                self.connection.rollback()
                if attempt:
                    raise

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        assert self.copy is not None
        batch = conform_batch(batch, job_id=self.job_id, file_name=file_name, destination=self.table)
        try:
            for piece in _slices(batch, self.batch_rows):
                # Every string is quoted, so for COPY (FORMAT csv) "" is an empty string and a bare empty
                # field is NULL, and no value can be mistaken for the \. end marker.
                self.copy.write(memoryview(encode_csv(piece, include_header=False)))
        except Exception as exc:
            raise _failure(self.table, self.job_id, "copying rows into PostgreSQL", exc, self.secret,
                           file_name) from exc

    def commit(self) -> None:
        assert self.connection is not None
        try:
            self.copy_scope.close()  # ends the COPY; constraint violations surface here
            self.connection.commit()
        except Exception as exc:
            self.abort()
            raise _failure(self.table, self.job_id, "committing the load into PostgreSQL", exc, self.secret) from exc
        self.connection.close()

    def abort(self) -> None:
        """Cancel the COPY, roll back, close."""
        unwind_as_failed(self.copy_scope, self.job_id)
        _rollback_and_close(self.connection)


# --- any DB-API connection: DELETE + executemany INSERT in one transaction ------------------------------


class _DbApiLoad(StagedLoad):
    """One load through an Airflow common-sql hook's DB-API connection."""

    def __init__(self, hook: Any, conn_type: str, table: str, job_id: str, batch_rows: int, *,
                 secret: str | None) -> None:
        self.hook = hook
        self.secret = secret
        self.dialect = conn_type.lower()
        self.table = table
        self.qualified = quote_table_name(table, self.dialect)
        self.job_id = job_id
        self.batch_rows = batch_rows
        self.connection: Any = None
        self.loaded_at = datetime.now(timezone.utc).isoformat()
        placeholder = getattr(hook, "placeholder", None) or "%s"
        columns = ", ".join(quote_ident(name, self.dialect) for name in (*LOADED_COLUMNS, "loaded_at"))
        self.insert_sql = (
            f"INSERT INTO {self.qualified} ({columns}) VALUES ({', '.join([placeholder] * (len(LOADED_COLUMNS) + 1))})"
        )
        self.delete_sql = f"DELETE FROM {self.qualified} WHERE {quote_ident('job_id', self.dialect)} = {placeholder}"

    def _ddl(self) -> str:
        def column(name: str, kind: str) -> str:
            return f"{quote_ident(name, self.dialect)} {kind}"

        key = ", ".join(quote_ident(name, self.dialect) for name in ("job_id", "file_name", "row_number"))
        return (
            f"CREATE TABLE IF NOT EXISTS {self.qualified} ("
            f"{column('job_id', 'TEXT NOT NULL')}, {column('file_name', 'TEXT NOT NULL')}, "
            f"{column('row_number', 'INTEGER NOT NULL')}, {column('record_id', 'TEXT')}, {column('status', 'TEXT')}, "
            f"{column('errors', 'TEXT')}, {column('errors_raw', 'TEXT')}, {column('source', 'TEXT')}, "
            f"{column('loaded_at', 'TEXT')}, PRIMARY KEY ({key}))"
        )

    def start(self) -> None:
        try:
            self.connection = _open_dbapi_connection(self.hook)
            cursor = self.connection.cursor()
            cursor.execute(self._ddl())
            self.connection.commit()
            cursor.execute(self.delete_sql, (self.job_id,))
            cursor.close()
        except Exception as exc:
            self.abort()
            raise _failure(self.table, self.job_id, f"starting the load into {self.dialect or 'SQL'}", exc,
                           self.secret) from exc

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        batch = conform_batch(batch, job_id=self.job_id, file_name=file_name, destination=self.table)
        try:
            cursor = self.connection.cursor()
            for piece in _slices(batch, self.batch_rows):
                loadable = to_csv_batch(piece)
                values: list[list[Any]] = [loadable.column(name).to_pylist() for name in LOADED_COLUMNS]
                values.append([self.loaded_at] * loadable.num_rows)
                cursor.executemany(self.insert_sql, list(zip(*values, strict=True)))
            cursor.close()
        except Exception as exc:
            raise _failure(self.table, self.job_id, f"inserting rows into {self.dialect or 'SQL'}", exc, self.secret,
                           file_name) from exc

    def commit(self) -> None:
        try:
            self.connection.commit()
        except Exception as exc:
            self.abort()
            raise _failure(self.table, self.job_id, f"committing the load into {self.dialect or 'SQL'}", exc,
                           self.secret) from exc
        with contextlib.suppress(Exception):
            self.connection.close()  # committed already; a failing close changes nothing

    def abort(self) -> None:
        _rollback_and_close(self.connection)


# --- Bulk Read exports: the module's own columns, replaced or merged in one transaction --------------------


#: SQL types of the export's own columns; every module column is text (Zoho sends strings).
_EXPORT_COLUMN_TYPES = {"_job_id": "TEXT", "_page": "BIGINT", "_row_number": "BIGINT"}
_LOADED_AT = "_loaded_at"
#: The column a merge ranks a key's rows by, so that the last one in the export wins.
_RANK = "_zohobulk_rank"


def _checked_module_columns(batch: pa.RecordBatch, load: ExportLoad, table: str, file_name: str) -> tuple[str, ...]:
    return check_export_batch(batch, sink=f"SqlSink for table {table!r}", job_id=load.run_id, file_name=file_name,
                              merge_key=load.key if load.write_mode == "merge" else None)


def _columns_of(module_columns: list[str] | tuple[str, ...]) -> list[str]:
    """A table's columns for these module columns: them, then the meta columns, then ``_loaded_at``."""
    return [*module_columns, *EXPORT_META_COLUMNS, _LOADED_AT]


class _ExportSql:
    """The statements of an export load, written once for both drivers: they differ only in the
    dialect's quoting, the type of ``_loaded_at`` and how it gets its value (``now()`` or a parameter)."""

    def __init__(self, dialect: str, table: str, load: ExportLoad, *, loaded_at_type: str,
                 loaded_at_default: str | None = None) -> None:
        self.dialect = dialect
        self.target = quote_table_name(table, dialect)
        self.key = self.ident(load.key)
        # A temporary table lives in the load's session only; the random name keeps it clear of any real one.
        self.stage = self.ident(f"zohobulk_stage_{uuid.uuid4().hex[:12]}")
        self.loaded_at_type = loaded_at_type
        self.loaded_at_default = loaded_at_default

    def ident(self, name: str) -> str:
        return quote_ident(name, self.dialect)

    def names(self, columns: list[str] | tuple[str, ...]) -> str:
        return ", ".join(map(self.ident, columns))

    def column_type(self, name: str) -> str:
        return self.loaded_at_type if name == _LOADED_AT else _EXPORT_COLUMN_TYPES.get(name, "TEXT")

    def create_table(self, columns: list[str], *, with_key: bool, if_not_exists: bool = False) -> str:
        """The target table; keyed on the merge key when a merge creates it, so later merges can
        ``INSERT ... ON CONFLICT`` and the key stays unique whatever else writes to the table."""
        definitions = [f"{self.ident(name)} {self.column_type(name)}" for name in columns]
        if self.loaded_at_default and _LOADED_AT in columns:
            position = columns.index(_LOADED_AT)
            definitions[position] += f" DEFAULT {self.loaded_at_default}"
        if with_key:
            definitions.append(f"PRIMARY KEY ({self.key})")
        exists = "IF NOT EXISTS " if if_not_exists else ""
        return f"CREATE TABLE {exists}{self.target} ({', '.join(definitions)})"

    def create_stage(self, columns: list[str] | tuple[str, ...]) -> str:
        definitions = ", ".join(f"{self.ident(name)} {self.column_type(name)}" for name in columns)
        on_commit = " ON COMMIT DROP" if self.dialect in _POSTGRES_CONN_TYPES else ""
        return f"CREATE TEMPORARY TABLE {self.stage} ({definitions}){on_commit}"

    def add_column(self, table_sql: str, name: str) -> str:
        return f"ALTER TABLE {table_sql} ADD COLUMN {self.ident(name)} {self.column_type(name)}"

    def delete_all(self) -> str:
        """Replace empties the table with DELETE, not DROP or TRUNCATE: views, grants and indexes on it
        stay, and readers keep seeing the earlier rows until the load commits."""
        return f"DELETE FROM {self.target}"

    def delete_merged(self) -> str:
        return f"DELETE FROM {self.target} WHERE {self.key} IN (SELECT {self.key} FROM {self.stage})"

    def insert_from_stage(self, columns: list[str], loaded_at: str, *, merge: bool,
                          conflict_defaults: list[str] | None = None) -> str:
        """Copy the stage into the target. A merge takes each key's last row of the export (a record
        edited while the pages were exported can appear twice) and, with ``conflict_defaults`` (the
        target's other columns), updates rows whose key exists: ``INSERT ... ON CONFLICT``, which needs a
        unique index on the key, ends exactly as the DELETE + INSERT without one (the updated row is the
        export's row, a column the export lacks back to its default)."""
        names = self.names(columns)
        source = self.stage
        if merge:
            order = f"{self.ident('_page')} DESC, {self.ident('_row_number')} DESC"
            source = (f"(SELECT {names}, ROW_NUMBER() OVER (PARTITION BY {self.key} ORDER BY {order}) AS {_RANK} "
                      f"FROM {self.stage}) AS ranked WHERE {_RANK} = 1")
        statement = (f"INSERT INTO {self.target} ({names}, {self.ident(_LOADED_AT)}) "
                     f"SELECT {names}, {loaded_at} FROM {source}")
        if conflict_defaults is None:
            return statement
        updates = [f"{self.ident(name)} = EXCLUDED.{self.ident(name)}"
                   for name in (*columns, _LOADED_AT) if self.ident(name) != self.key]
        updates += [f"{self.ident(name)} = DEFAULT" for name in conflict_defaults]
        return f"{statement} ON CONFLICT ({self.key}) DO UPDATE SET {', '.join(updates)}"


@dataclass(frozen=True)
class _PostgresColumn:
    has_default: bool
    #: A generated or identity column: PostgreSQL computes it, a load never assigns it.
    computed: bool = False


class _PostgresExportLoad(StagedLoad):
    """One export run into PostgreSQL, one transaction on its own psycopg 3 connection.

    ``replace``: ``DELETE`` every row when the load opens, then ``COPY`` each page straight into the
    table, whose ``_loaded_at`` takes ``now()`` (the transaction's start) by default. ``merge``: ``COPY``
    into a temporary stage, then at commit ``INSERT ... ON CONFLICT`` on the key (or ``DELETE`` of the
    staged keys + ``INSERT`` when no unique index on the key exists). The table is created, and fields
    new to it added, inside the same transaction, so a failure leaves it exactly as it was, or absent.
    """

    def __init__(self, params: dict[str, Any], table: str, load: ExportLoad, batch_rows: int, *,
                 secret: str | None) -> None:
        self.params = params
        self.table = table
        self.load = load
        self.merge = load.write_mode == "merge"
        self.batch_rows = batch_rows
        self.secret = secret
        self.sql = _ExportSql("postgres", table, load, loaded_at_type="TIMESTAMPTZ", loaded_at_default="now()")
        self.connection: psycopg.Connection | None = None
        #: The target's columns, None while it does not exist; its oid, None when this load created it.
        self.target: dict[str, _PostgresColumn] | None = None
        self.target_oid: int | None = None
        #: The module columns of the export so far, first seen first, and (merge) the stage's columns.
        self.module_columns: list[str] = []
        self.stage_columns: list[str] | None = None
        self.copy_scope = contextlib.ExitStack()
        self.copy: psycopg.Copy | None = None
        self.copy_columns: tuple[str, ...] | None = None

    def start(self) -> None:
        psycopg = _import_psycopg(self.load.run_id)
        try:
            self.connection = psycopg.connect(**self.params, autocommit=False)
            # Exports into one table take turns, each for its whole transaction: two replaces at once
            # would otherwise leave both exports' rows (the later DELETE cannot see the earlier's rows).
            self.connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.sql.target,))
            self._read_target()
            if not self.merge and self.target is not None:
                self.connection.execute(self.sql.delete_all())
        except Exception as exc:
            self.abort()
            raise _failure(self.table, self.load.run_id, "starting the export into PostgreSQL", exc,
                           self.secret) from exc

    def _read_target(self) -> None:
        assert self.connection is not None
        (self.target_oid,) = self.connection.execute("SELECT to_regclass(%s::text)::oid", (self.sql.target,)).fetchone()
        if self.target_oid is None:
            return
        self.target = {
            name: _PostgresColumn(has_default, computed)
            for name, has_default, computed in self.connection.execute(
                "SELECT attname, atthasdef, attgenerated <> '' OR attidentity <> '' FROM pg_attribute "
                "WHERE attrelid = %s::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (self.target_oid,))
        }

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        columns = (*_checked_module_columns(batch, self.load, self.table, file_name), *EXPORT_META_COLUMNS)
        try:
            if columns != self.copy_columns:
                self._copy_into(columns)
            assert self.copy is not None
            for piece in _slices(batch, self.batch_rows):
                # Every string quoted (see _PostgresLoad.write): "" stays an empty string, a bare field is NULL.
                self.copy.write(memoryview(encode_csv(piece, include_header=False, flat=True)))
        except SinkError as exc:  # a column name the database cannot take (quote_ident)
            exc.with_context(job_id=self.load.run_id, file_name=file_name)
            raise
        except Exception as exc:
            raise _failure(self.table, self.load.run_id, "copying rows into PostgreSQL", exc, self.secret,
                           file_name) from exc

    def _copy_into(self, columns: tuple[str, ...]) -> None:
        """End the running COPY and start one for ``columns`` (the first page, or a page whose fields
        differ), creating or widening the table (replace) or the stage (merge) first."""
        assert self.connection is not None
        self._end_copy()
        module_columns = columns[: -len(EXPORT_META_COLUMNS)]
        self.module_columns += [name for name in module_columns if name not in self.module_columns]
        if self.merge:
            destination = self.sql.stage
            if self.stage_columns is None:
                self.connection.execute(self.sql.create_stage(columns))
                self.stage_columns = list(columns)
            for name in (name for name in columns if name not in self.stage_columns):
                self.connection.execute(self.sql.add_column(self.sql.stage, name))
                self.stage_columns.append(name)
        else:
            destination = self.sql.target
            self._widen_target(with_key=False)
        self.copy = self.copy_scope.enter_context(self.connection.cursor().copy(
            f"COPY {destination} ({self.sql.names(columns)}) FROM STDIN (FORMAT csv)"))
        self.copy_columns = columns

    def _end_copy(self) -> None:
        self.copy_scope.close()  # ends the COPY; constraint violations surface here
        self.copy, self.copy_columns = None, None

    def _widen_target(self, *, with_key: bool) -> None:
        """Create the table with the export's columns, or add those it lacks; never drops one."""
        assert self.connection is not None
        wanted = _columns_of(self.module_columns)
        if self.target is None:
            self.connection.execute(self.sql.create_table(wanted, with_key=with_key))
            self.target = {name: _PostgresColumn(has_default=name == _LOADED_AT) for name in wanted}
            return
        for name in (name for name in wanted if name not in self.target):
            self.connection.execute(self.sql.add_column(self.sql.target, name))
            self.target[name] = _PostgresColumn(has_default=False)
        if not self.target[_LOADED_AT].has_default:
            # COPY leaves _loaded_at to its default; rows loaded before the column existed stay null.
            self.connection.execute(
                f"ALTER TABLE {self.sql.target} ALTER COLUMN {self.sql.ident(_LOADED_AT)} SET DEFAULT now()")
            self.target[_LOADED_AT] = _PostgresColumn(has_default=True)

    def _has_unique_key(self) -> bool:
        """Whether ``ON CONFLICT (key)`` has an arbiter: a valid, immediate, non-partial unique index on
        the key column alone (always so when this load created the table)."""
        assert self.connection is not None
        if self.target_oid is None:
            return True
        (found,) = self.connection.execute(
            "SELECT EXISTS (SELECT FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = i.indkey[0] WHERE i.indrelid = %s::oid AND i.indisunique AND i.indimmediate "
            "AND i.indisvalid AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL "
            "AND a.attname = %s)", (self.target_oid, self.load.key)).fetchone()
        return bool(found)

    def _merge_stage(self) -> None:
        assert self.connection is not None and self.stage_columns is not None
        self._widen_target(with_key=True)
        assert self.target is not None
        columns = self.stage_columns
        if self._has_unique_key():
            others = [name for name, column in self.target.items()
                      if name not in columns and name != _LOADED_AT and not column.computed]
            self.connection.execute(self.sql.insert_from_stage(columns, "now()", merge=True, conflict_defaults=others))
        else:
            self.connection.execute(self.sql.delete_merged())
            self.connection.execute(self.sql.insert_from_stage(columns, "now()", merge=True))

    def commit(self) -> None:
        assert self.connection is not None
        try:
            self._end_copy()
            if self.merge and self.stage_columns is not None:
                self._merge_stage()
            self.connection.commit()
        except Exception as exc:
            self.abort()
            raise _failure(self.table, self.load.run_id, "committing the export into PostgreSQL", exc,
                           self.secret) from exc
        self.connection.close()

    def abort(self) -> None:
        """Cancel the COPY, roll back (DDL included), close."""
        unwind_as_failed(self.copy_scope, self.load.run_id)
        _rollback_and_close(self.connection)


class _DbApiExportLoad(StagedLoad):
    """One export run through an Airflow common-sql hook's DB-API connection (SQLite is the tested one).

    Pages go into a temporary stage with batched ``executemany`` as they stream; the table is touched
    only at commit, in one transaction: created or widened, then ``DELETE`` of every row (replace) or of
    the staged keys (merge), and one ``INSERT ... SELECT`` from the stage. So a long export holds no
    write lock on the table (an SQLite file stays writable for others until the commit), and the table's
    DDL comes before its rows change (databases whose DDL commits implicitly, such as MySQL, still
    change no row when a page fails).
    """

    def __init__(self, hook: Any, conn_type: str, table: str, load: ExportLoad, batch_rows: int, *,
                 secret: str | None) -> None:
        self.hook = hook
        self.dialect = conn_type.lower()
        self.table = table
        self.load = load
        self.merge = load.write_mode == "merge"
        self.batch_rows = batch_rows
        self.secret = secret
        self.sql = _ExportSql(self.dialect, table, load, loaded_at_type="TEXT")
        self.placeholder = getattr(hook, "placeholder", None) or "%s"
        self.loaded_at = datetime.now(timezone.utc).isoformat()
        self.connection: Any = None
        self.module_columns: list[str] = []
        self.stage_columns: list[str] | None = None

    @property
    def _driver(self) -> str:
        return self.dialect or "SQL"

    def start(self) -> None:
        try:
            self.connection = _open_dbapi_connection(self.hook)
        except Exception as exc:
            self.abort()
            raise _failure(self.table, self.load.run_id, f"starting the export into {self._driver}", exc,
                           self.secret) from exc

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        columns = (*_checked_module_columns(batch, self.load, self.table, file_name), *EXPORT_META_COLUMNS)
        try:
            cursor = self.connection.cursor()
            self._widen_stage(cursor, columns)
            insert = (f"INSERT INTO {self.sql.stage} ({self.sql.names(columns)}) "
                      f"VALUES ({', '.join([self.placeholder] * len(columns))})")
            for piece in _slices(batch, self.batch_rows):
                values = [piece.column(name).to_pylist() for name in columns]
                cursor.executemany(insert, list(zip(*values, strict=True)))
            cursor.close()
        except SinkError as exc:  # a column name the database cannot take (quote_ident)
            exc.with_context(job_id=self.load.run_id, file_name=file_name)
            raise
        except Exception as exc:
            raise _failure(self.table, self.load.run_id, f"staging rows in {self._driver}", exc, self.secret,
                           file_name) from exc

    def _widen_stage(self, cursor: Any, columns: tuple[str, ...]) -> None:
        self.module_columns += [name for name in columns[: -len(EXPORT_META_COLUMNS)]
                                if name not in self.module_columns]
        if self.stage_columns is None:
            cursor.execute(self.sql.create_stage(columns))
            self.stage_columns = list(columns)
        for name in (name for name in columns if name not in self.stage_columns):
            cursor.execute(self.sql.add_column(self.sql.stage, name))
            self.stage_columns.append(name)

    def _target_columns(self, cursor: Any) -> set[str] | None:
        """The target's column names, case-folded (SQLite and most other databases match column names
        without regard to case), or None when it does not exist."""
        try:
            cursor.execute(f"SELECT * FROM {self.sql.target} WHERE 1 = 0")
        except Exception:
            return None
        names = {description[0].casefold() for description in cursor.description}
        cursor.fetchall()
        return names

    def _widen_target(self, cursor: Any) -> None:
        wanted = _columns_of(self.module_columns)
        cursor.execute(self.sql.create_table(wanted, with_key=self.merge, if_not_exists=True))
        existing = self._target_columns(cursor) or set()
        for name in (name for name in wanted if name.casefold() not in existing):
            cursor.execute(self.sql.add_column(self.sql.target, name))

    def commit(self) -> None:
        try:
            cursor = self.connection.cursor()
            # The staged rows opened the transaction (sqlite3 begins one before the first data change),
            # so the CREATE TABLE and ALTER TABLE below are part of it and roll back with it. (With no
            # row staged, sqlite3 commits the CREATE on its own, but then nothing after it can fail.)
            if self.stage_columns is not None:
                self._widen_target(cursor)
                if self.merge:
                    cursor.execute(self.sql.delete_merged())
                else:
                    cursor.execute(self.sql.delete_all())
                cursor.execute(self.sql.insert_from_stage(self.stage_columns, self.placeholder, merge=self.merge),
                               (self.loaded_at,))
            elif not self.merge and self._target_columns(cursor) is not None:
                cursor.execute(self.sql.delete_all())  # an export without a single page: an empty table
            cursor.close()
            self.connection.commit()
        except Exception as exc:
            self.abort()
            raise _failure(self.table, self.load.run_id, f"committing the export into {self._driver}", exc,
                           self.secret) from exc
        with contextlib.suppress(Exception):
            self.connection.close()  # committed already; closing also drops the temporary stage

    def abort(self) -> None:
        _rollback_and_close(self.connection)
