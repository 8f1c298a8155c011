"""The one interface every destination implements: open, write batches, then commit or abort.

Why a staged interface instead of "write everything": zip integrity is only known at the end of a
member (CRC and sizes), so no sink may make rows visible before :meth:`ResultSink.commit`. A sink
that cannot stage (a plain local file) writes to a temporary place and renames on commit.

Sinks are plain objects built at DAG-parse time, so ``__init__`` must do no I/O; connections are
resolved in :meth:`open`. Airflow renders the attributes named in ``template_fields`` of a sink that
is passed to an operator, so a sink's location can use Jinja (``{{ params.job_id }}``).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable
from typing import ClassVar

import pyarrow as pa

from airflow_provider_zohobulk.errors import SinkError


class ResultSink(abc.ABC):
    """A destination for canonical Bulk Write result batches (see ``bulk_result.canonical_schema``: the
    same columns for every batch, ``source`` a struct of the CSV member's own mapped columns)."""

    template_fields: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        """The location fields only (never options such as ``transport_params``): Airflow shows a
        template field's rendered value as its repr, under the task's Rendered Templates."""
        fields = ", ".join(f"{name}={getattr(self, name, None)!r}" for name in self.template_fields)
        return f"{type(self).__name__}({fields})"

    @abc.abstractmethod
    def open(self, job_id: str) -> None:
        """Prepare to receive the rows of ``job_id`` (connect, start a transaction or upload)."""

    @abc.abstractmethod
    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        """Stage one canonical batch from CSV member ``file_name``; nothing may become visible yet.

        Every member yields at least one batch, possibly with zero rows, so that a header-only
        result still produces its (empty) output.
        """

    @abc.abstractmethod
    def commit(self) -> list[str]:
        """Make everything written visible at once; returns the locations written (URIs or tables)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything staged; the destination stays exactly as it was. Never raises."""

    @property
    @abc.abstractmethod
    def asset_uri(self) -> str:
        """A stable URI naming the destination, used for the Airflow Asset and lineage."""

    def parse_time_asset_uri(self) -> str | None:
        """The destination's URI as a DAG file can know it: without I/O, before templates are rendered.

        Operators declare their Asset outlets when the DAG is parsed, so this must not open
        connections. A location that still holds Jinja is cut back to its fixed prefix (the folder
        before the first template), so every run updates the same Asset; ``None`` when nothing
        stable is left. Sinks whose URI needs a connection lookup return ``None``.
        """
        raw = {name: str(getattr(self, name, "") or "") for name in self.template_fields}
        templated = [name for name, value in raw.items() if is_templated(value)]
        if not templated:
            uri = self.asset_uri
        elif templated == ["uri"]:
            uri = raw["uri"]
        else:
            return None
        cut = min((i for i in (uri.find("{{"), uri.find("{%"), uri.find("{")) if i >= 0), default=-1)
        if cut >= 0:
            uri = uri[:cut].rsplit("/", 1)[0] + "/"
        # Something fixed must remain after the scheme: "gs://{{ bucket }}/x" or "file://{{ dir }}/x"
        # would otherwise all collapse into one root Asset shared by unrelated tasks.
        scheme, separator, rest = uri.partition("://")
        return uri if separator and scheme and rest.strip("/") else None



class StagedLoad(abc.ABC):
    """The state of one open..commit/abort cycle: a connection and transaction, or staged uploads.

    Kept apart from the sink because the sink is built at DAG-parse time and rendered by Airflow,
    while this holds what exists only during one load (connections, temporary files); a sink
    creates a fresh one per :meth:`ResultSink.open` and drops it at commit or abort.
    """

    @abc.abstractmethod
    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        """Stage one canonical batch from CSV member ``file_name`` (see :meth:`ResultSink.write`)."""

    @abc.abstractmethod
    def commit(self) -> list[str] | None:
        """Make everything visible; the locations written, or None when that is just the sink's asset URI.

        On failure it must leave the destination as it was (aborting itself) and raise a SinkError.
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything staged. Never raises."""


class StagedSink(ResultSink):
    """A sink whose loads are :class:`StagedLoad` objects: the open/write/commit/abort bookkeeping, once.

    A subclass says how a load starts (:meth:`_start_load`) and how the sink is named in messages
    (:meth:`_describe`). One sink object runs one load at a time; a second ``open`` before commit or
    abort is refused instead of silently dropping the first load's staged rows.
    """

    #: The load between open and commit/abort; None otherwise.
    _load: StagedLoad | None = None
    #: The open load's job, and per CSV file the row_number its next batch must start at.
    _job_id: str
    _next_row: dict[str, int]

    @abc.abstractmethod
    def _start_load(self, job_id: str) -> StagedLoad:
        """Check the rendered settings and start a load of ``job_id`` (connect, begin); raise a SinkError
        after cleaning up if that fails."""

    @abc.abstractmethod
    def _describe(self) -> str:
        """The sink and its destination for error messages, e.g. ``DuckDBSink for table 'results'``."""

    def open(self, job_id: str) -> None:
        if self._load is not None:
            raise SinkError(f"{self._describe()} is already loading a job", job_id=job_id)
        self._load = self._start_load(job_id)
        self._job_id = job_id
        self._next_row = {}

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        if self._load is None:
            raise SinkError(f"{self._describe()} got rows before open()", file_name=file_name)
        self._check_row_numbers(file_name, batch)
        self._load.write(file_name, batch)

    def _check_row_numbers(self, file_name: str, batch: pa.RecordBatch) -> None:
        """Each file's rows must arrive once, numbered 1, 2, 3, ... across its batches.

        This is what keeps ``(job_id, file_name, row_number)`` unique at every destination without a
        database constraint (DuckDB holds a key's index in memory for every row a transaction adds):
        the load replaces the job's rows, so a duplicate could only come from the stream itself, such
        as a zip holding two members of the same name.
        """
        if not batch.num_rows or "row_number" not in batch.schema.names:
            return  # the layout itself is checked by the load (conform_batch)
        numbers = batch.column("row_number")
        first, last = numbers[0].as_py(), numbers[-1].as_py()
        expected = self._next_row.get(file_name, 1)
        if first != expected or last != first + batch.num_rows - 1:
            raise SinkError(
                f"{self._describe()} got rows {first}..{last} of {file_name!r} where row {expected} was due: "
                "the archive repeats or reorders that file's rows, so nothing was loaded",
                job_id=self._job_id, file_name=file_name, row_number=first)
        self._next_row[file_name] = last + 1

    def commit(self) -> list[str]:
        if self._load is None:
            raise SinkError(f"{self._describe()} committed before open()")
        load, self._load = self._load, None
        written = load.commit()
        return [self.asset_uri] if written is None else written

    def abort(self) -> None:
        load, self._load = self._load, None
        if load is not None:
            load.abort()


def is_templated(text: str) -> bool:
    """True while ``text`` still holds Jinja (``{{ params.table }}``): at DAG-parse time such a setting
    can only be checked once Airflow rendered it, in ``open``."""
    return "{{" in text or "{%" in text


def describe_exception(exc: BaseException, *, secret: str | None = None) -> str:
    """``Type: message`` of an underlying error, for a SinkError's message; ``secret`` blanked out,
    because database drivers may echo a connection string, password included."""
    detail = f"{type(exc).__name__}: {exc}".strip()
    return detail.replace(secret, "***") if secret else detail


def unwind_as_failed(scope: contextlib.ExitStack, job_id: str) -> None:
    """Exit ``scope`` as if an exception were raised, so that what it holds cancels instead of
    finishing (a smart-open upload is discarded, a psycopg COPY is failed); never raises."""
    cancelled = SinkError("load aborted", job_id=job_id)
    with contextlib.suppress(BaseException):
        scope.__exit__(SinkError, cancelled, None)


def load_batches(
    sink: ResultSink, job_id: str, batches: Iterable[tuple[str, pa.RecordBatch]]
) -> list[str]:
    """Drive a sink through one load: open, write each batch, commit; abort on any exception."""
    sink.open(job_id)
    try:
        for file_name, batch in batches:
            sink.write(file_name, batch)
    except BaseException:
        sink.abort()
        raise
    try:
        return sink.commit()
    except BaseException:
        sink.abort()
        raise
