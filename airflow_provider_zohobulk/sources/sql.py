"""SqlSource and DuckDBSource: the rows of a query, streamed as Arrow batches.

SqlSource runs a query through an Airflow SQL connection, found as :class:`~airflow_provider_zohobulk.sinks.sql.SqlSink`
finds it (the same lookup, the same psycopg parameters):

- PostgreSQL (``conn_type`` ``postgres``): psycopg 3 with a **server-side (named) cursor**, ``fetchmany``
  of ``batch_rows`` rows at a time, so the server keeps the result and the task holds one batch: a
  client-side cursor would pull the whole result into memory at ``execute``. The query runs in a
  read-only transaction, rolled back at the end: a source reads, it never changes the database.
- Any other Airflow DB-API connection (SQLite is the tested one): ``hook.get_conn()``, a cursor,
  ``fetchmany``. Whether that streams is the driver's business (SQLite's does; some drivers buffer the
  whole result at ``execute`` unless told otherwise); the transaction is rolled back at the end.

``parameters`` are passed to ``cursor.execute`` as they are, in the driver's style (``%(name)s`` for
psycopg, ``?`` or ``:name`` for SQLite).

Types: a DB-API row is Python values, and the batches of one source must share one schema, so each
column's Arrow type is fixed once, before the first batch: from PostgreSQL's type (booleans, integers,
floats, dates, timestamps, bytea; numeric, json, uuid and everything else as text), otherwise from the
values of the first batch (a column only of ``int`` is int64, of ``int`` and ``float`` float64, of
``str`` string, of naive ``datetime`` a timestamp, of aware ones a UTC timestamp...; a column of mixed
or unknown types, or only NULLs, is string). Text is written exactly: ``Decimal`` without an exponent
(``1E+2`` is ``100``), JSON as JSON, dates and times in ISO 8601. A later value that does not fit its
column's type (SQLite has no column types) is a SourceError naming the column and rows; a ``CAST`` in
the query fixes it.

DuckDBSource runs a query on a DuckDB database (a file, opened read-only, or ``:memory:`` to read
files with ``read_parquet``/``read_csv``) and streams DuckDB's own Arrow reader, with DuckDB's types.

Importing this module imports neither Airflow nor psycopg nor DuckDB: each is imported in ``batches``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from airflow_provider_zohobulk.errors import SinkError, SourceConfigurationError, SourceError
from airflow_provider_zohobulk.sinks.base import describe_exception
from airflow_provider_zohobulk.sinks.sql import _get_dbapi_hook, _is_postgres, _libpq_params
from airflow_provider_zohobulk.sources.base import (
    DEFAULT_BATCH_ROWS,
    RowSource,
    check_batch_rows,
    check_text,
    is_templated,
    sql_excerpt,
    stable_batches,
)
from airflow_provider_zohobulk.stream.decode import unique_column_names

IN_MEMORY = ":memory:"

# Column kinds: an Arrow type each, and how a Python value of the driver becomes one.
_BOOL, _INT, _FLOAT, _TEXT, _BINARY, _DATE, _TIMESTAMP, _TIMESTAMPTZ = (
    "bool", "int", "float", "text", "binary", "date", "timestamp", "timestamptz")
_ARROW_TYPES: dict[str, pa.DataType] = {
    _BOOL: pa.bool_(), _INT: pa.int64(), _FLOAT: pa.float64(), _TEXT: pa.string(), _BINARY: pa.binary(),
    _DATE: pa.date32(), _TIMESTAMP: pa.timestamp("us"), _TIMESTAMPTZ: pa.timestamp("us", tz="UTC"),
}
#: PostgreSQL type OIDs -> kind; any other type is text.
_POSTGRES_KINDS: dict[int, str] = {
    16: _BOOL, 20: _INT, 21: _INT, 23: _INT, 26: _INT, 700: _FLOAT, 701: _FLOAT, 17: _BINARY,
    1082: _DATE, 1114: _TIMESTAMP, 1184: _TIMESTAMPTZ,
}


class SqlSource(RowSource):
    """Stream the rows of ``sql`` run on the Airflow SQL connection ``conn_id`` (see the module docstring).

    ``parameters``: bound by the driver (never formatted into the text). ``batch_rows``: the rows
    fetched, and so held, at a time.
    """

    template_fields = ("conn_id", "sql", "parameters")
    repr_fields = ("conn_id", "sql")

    def __init__(self, conn_id: str, sql: str, *, parameters: dict[str, Any] | Sequence[Any] | None = None,
                 batch_rows: int = DEFAULT_BATCH_ROWS) -> None:
        self.conn_id = check_text(conn_id, "SqlSource's conn_id")
        self.sql = check_text(sql, "SqlSource's sql")
        self.parameters = parameters
        self.batch_rows = check_batch_rows(batch_rows)
        #: The connection's type once :meth:`batches` looked it up, for :meth:`describe`.
        self._conn_type: str | None = None

    def describe(self) -> str:
        return f"{self._conn_type or 'SQL'} conn {self.conn_id!r}: {sql_excerpt(self.sql)}"

    def batches(self) -> Iterator[pa.RecordBatch]:
        connection = _get_airflow_connection(self.conn_id)
        self._conn_type = (connection.conn_type or "sql").lower()
        rows = self._postgres_batches(connection) if _is_postgres(connection) else self._dbapi_batches(connection)
        yield from stable_batches(rows, where=self.describe())

    def _postgres_batches(self, connection: Any) -> Iterator[pa.RecordBatch]:
        try:
            import psycopg
        except ImportError:
            raise SourceConfigurationError(
                "reading from PostgreSQL needs psycopg 3: install airflow-provider-zohobulk[postgres]") from None
        secret = connection.password
        try:
            db = psycopg.connect(**_libpq_params(connection))
        except Exception as exc:
            raise self._failure("connecting", exc, secret) from None
        try:
            db.read_only = True
            # Named: DECLARE ... CURSOR on the server, each fetchmany a FETCH of batch_rows rows.
            cursor = db.cursor(name=f"zohobulk_source_{uuid.uuid4().hex[:12]}")
            try:
                cursor.execute(self.sql, self.parameters)
                description = cursor.description
            except Exception as exc:
                raise self._failure("running the query", exc, secret) from None
            converter = _RowConverter(description, self.describe(), postgres=True)
            yield from self._fetch(cursor, converter, secret)
        finally:
            with contextlib.suppress(Exception):
                db.rollback()
            with contextlib.suppress(Exception):
                db.close()

    def _dbapi_batches(self, connection: Any) -> Iterator[pa.RecordBatch]:
        try:
            hook = _get_dbapi_hook(connection, self.conn_id)
        except SinkError as exc:  # the sink's lookup and wording, the source's error type
            raise SourceConfigurationError(exc.message) from None
        secret = connection.password
        try:
            db = hook.get_conn()
        except Exception as exc:
            raise self._failure("connecting", exc, secret) from None
        try:
            cursor = db.cursor()
            try:
                if self.parameters is None:
                    cursor.execute(self.sql)
                else:
                    cursor.execute(self.sql, self.parameters)
                description = cursor.description
            except Exception as exc:
                raise self._failure("running the query", exc, secret) from None
            converter = _RowConverter(description, self.describe(), postgres=False)
            try:
                yield from self._fetch(cursor, converter, secret)
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        finally:
            with contextlib.suppress(Exception):
                db.rollback()
            with contextlib.suppress(Exception):
                db.close()

    def _fetch(self, cursor: Any, converter: _RowConverter, secret: str | None) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                rows = cursor.fetchmany(self.batch_rows)
            except Exception as exc:
                raise self._failure("fetching rows", exc, secret) from None
            if not rows:
                return
            yield converter.batch(rows)

    def _failure(self, action: str, exc: BaseException, secret: str | None) -> SourceError:
        """The driver's message, with the password blanked out (drivers may echo a connection string)."""
        return SourceError(f"{action} failed on {self.describe()}: {describe_exception(exc, secret=secret)}")


class DuckDBSource(RowSource):
    """Stream the rows of ``sql`` run on the DuckDB ``database`` (a file, opened read-only, or ``:memory:``),
    through DuckDB's Arrow reader, with DuckDB's types."""

    template_fields = ("sql", "database")
    repr_fields = ("database", "sql")

    def __init__(self, sql: str, *, database: str = IN_MEMORY, batch_rows: int = DEFAULT_BATCH_ROWS) -> None:
        self.sql = check_text(sql, "DuckDBSource's sql")
        self.database = check_text(database, "DuckDBSource's database")
        self.batch_rows = check_batch_rows(batch_rows)

    def describe(self) -> str:
        return f"DuckDB {self.database!r}: {sql_excerpt(self.sql)}"

    def parse_time_asset_uri(self) -> str | None:
        """``duckdb:///<absolute path>`` of a database file (the sink's form without a table); None in
        memory or while templated."""
        if self.database == IN_MEMORY or is_templated(self.database):
            return None
        path = os.path.abspath(os.path.expanduser(self.database))
        return f"duckdb://{quote('/' + path.lstrip('/'), safe='/:')}"

    def batches(self) -> Iterator[pa.RecordBatch]:
        import duckdb

        where = self.describe()
        if self.database == IN_MEMORY:
            target, read_only = IN_MEMORY, False
        else:
            target, read_only = os.path.abspath(os.path.expanduser(self.database)), True
            if not os.path.isfile(target):
                raise SourceError(f"the DuckDB database {target!r} does not exist ({where})")
        try:
            db = duckdb.connect(target, read_only=read_only)
        except duckdb.Error as exc:
            raise SourceError(f"opening failed on {where}: {describe_exception(exc)}") from None
        try:
            try:
                relation = db.sql(self.sql)
                if relation is None:
                    raise SourceError(f"the statement returns no rows (is it a query?) on {where}")
                reader = relation.to_arrow_reader(self.batch_rows)
            except duckdb.Error as exc:
                raise SourceError(f"running the query failed on {where}: {describe_exception(exc)}") from None
            yield from stable_batches(_read_all(reader, where), where=where)
        finally:
            db.close()


def _read_all(reader: pa.RecordBatchReader, where: str) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except Exception as exc:  # a DuckDB error surfaces through Arrow's stream
            raise SourceError(f"reading the rows failed on {where}: {describe_exception(exc)}") from None
        yield batch


def _get_airflow_connection(conn_id: str) -> Any:
    """The Airflow connection; imported here so that importing the source does not import Airflow."""
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException and lookup failures of secrets backends
        raise SourceConfigurationError(
            f"Airflow connection {conn_id!r} for SqlSource could not be found: {type(exc).__name__}") from None


# --- DB-API rows -> Arrow ------------------------------------------------------------------------------


class _RowConverter:
    """Turns ``fetchmany`` results into batches of one schema (see the module docstring for the types)."""

    def __init__(self, description: Sequence[Any] | None, where: str, *, postgres: bool) -> None:
        if not description:
            raise SourceError(f"the statement returns no rows (is it a query?) on {where}")
        self.where = where
        self.names = unique_column_names([str(column[0]) for column in description])
        #: Kinds known before any row (PostgreSQL's types); None: decided from the first batch's values.
        self.kinds: list[str | None] = [
            _POSTGRES_KINDS.get(column[1], _TEXT) if postgres and isinstance(column[1], int) else None
            for column in description]
        self.schema: pa.Schema | None = None
        self.rows_done = 0

    def batch(self, rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self.names]
        if self.schema is None:
            kinds = [kind or _kind_of(values) for kind, values in zip(self.kinds, columns, strict=True)]
            self.kinds = list(kinds)
            self.schema = pa.schema([pa.field(name, _ARROW_TYPES[kind]) for name, kind in zip(self.names, kinds,
                                                                                                strict=True)])
        arrays = [self._array(name, kind, values)  # type: ignore[arg-type]
                  for name, kind, values in zip(self.names, self.kinds, columns, strict=True)]
        self.rows_done += len(rows)
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _array(self, name: str, kind: str, values: Sequence[Any]) -> pa.Array:
        arrow_type = _ARROW_TYPES[kind]
        try:
            return pa.array(values, type=arrow_type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            if kind == _TEXT:
                return pa.array([None if value is None else _text(value) for value in values], type=arrow_type)
            if kind == _BINARY:
                with contextlib.suppress(TypeError, ValueError):
                    return pa.array([None if value is None else bytes(value) for value in values], type=arrow_type)
            first, last = self.rows_done + 1, self.rows_done + len(values)
            raise SourceError(
                f"column {name!r} holds a value that is not {kind} (as the first rows made it) in rows "
                f"{first}..{last} of {self.where}: {type(exc).__name__}: {str(exc)[:200]}; CAST it in the query",
                row_number=first) from None


def _kind_of(values: Sequence[Any]) -> str:
    """The kind of a column from its first batch's values: one Python type throughout, or text."""
    types = {type(value) for value in values if value is not None}
    if not types:
        return _TEXT
    if types == {bool}:
        return _BOOL
    if types == {int}:
        return _INT
    if types <= {int, float}:
        return _FLOAT
    if types <= {bytes, bytearray, memoryview}:
        return _BINARY
    if types == {dt.date}:
        return _DATE
    if types == {dt.datetime}:
        aware = {value.tzinfo is not None and value.utcoffset() is not None for value in values if value is not None}
        if aware == {True}:
            return _TIMESTAMPTZ
        if aware == {False}:
            return _TIMESTAMP
    return _TEXT


def _text(value: Any) -> str:
    """A driver's value as the text it means (see the module docstring)."""
    if isinstance(value, str):
        return value
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)
