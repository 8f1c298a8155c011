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

The table name is always quoted (see ``identifiers``), so it is taken literally, case included.

Importing this module does not import Airflow: the Airflow connection is looked up in ``open``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pyarrow as pa

from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError
from airflow_provider_zohobulk.sinks.base import (
    StagedLoad,
    StagedSink,
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
        split_table_name(self.table)  # the rendered name may differ from the one checked at parse time
        connection = _get_airflow_connection(self.conn_id)
        self._asset_uri = _asset_uri_for(connection, self.conn_id, self.table)
        if (connection.conn_type or "").lower() in _POSTGRES_CONN_TYPES:
            load: _PostgresLoad | _DbApiLoad = _PostgresLoad(
                _libpq_params(connection), self.table, job_id, self.batch_rows, secret=connection.password
            )
        else:
            load = _DbApiLoad(_get_dbapi_hook(connection, self.conn_id), connection.conn_type or "", self.table,
                              job_id, self.batch_rows, secret=connection.password)
        load.start()
        return load


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
    if conn_type in _POSTGRES_CONN_TYPES:
        database = connection.schema or connection.login or "postgres"  # libpq's default is the user name
        path = "/".join(quote(part, safe="") for part in (database, schema or "public", name))
        return f"postgres://{connection.host or 'localhost'}:{connection.port or 5432}/{path}"
    # The parsed parts, not the text: "results" and results are one table, so one Asset.
    path = "/".join(quote(part, safe="") for part in (schema, name) if part is not None)
    return f"{conn_type or 'sql'}://{quote(conn_id, safe='')}/{path}"


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
        try:
            import psycopg
        except ImportError as exc:
            raise SinkConfigurationError(
                "loading into PostgreSQL needs psycopg 3: install airflow-provider-zohobulk[postgres]",
                job_id=self.job_id,
            ) from exc
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
            self.connection = self.hook.get_conn()
            if getattr(self.hook, "supports_autocommit", False):
                self.hook.set_autocommit(self.connection, False)
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
