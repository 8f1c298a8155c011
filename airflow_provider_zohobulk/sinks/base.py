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
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_zohobulk.arrow_values import bool_scalar, string_scalar
from airflow_provider_zohobulk.bulk_read import EXPORT_META_COLUMNS, RESERVED_EXPORT_COLUMNS
from airflow_provider_zohobulk.errors import SinkConfigurationError, SinkError

#: The ways a warehouse takes in a Bulk Read export (object storage writes one object per page either way).
EXPORT_WRITE_MODES = ("replace", "merge")


@dataclass(frozen=True)
class ExportLoad:
    """What a sink needs to know about one Bulk Read export run, given to :meth:`ResultSink.open_export`.

    An export is not a single job: Zoho runs one job per page, so the run is named after the first
    page's job (``run_id``), which is also what the rows' ``_job_id`` column holds for page 1.
    """

    #: The Zoho module's API name, e.g. ``"Leads"``.
    module: str
    #: The first page's job id: names the run in messages.
    run_id: str
    #: ``"replace"``: the table holds exactly this export after commit; ``"merge"``: rows are
    #: inserted or updated on ``key``, others kept. Object storage ignores it.
    write_mode: str = "replace"
    #: The merge key, a module column (Zoho's record id).
    key: str = "Id"

    def __post_init__(self) -> None:
        if self.write_mode not in EXPORT_WRITE_MODES:
            raise SinkConfigurationError(
                f"write_mode {self.write_mode!r} is not one of {', '.join(map(repr, EXPORT_WRITE_MODES))}",
                job_id=self.run_id or None)
        for name in ("module", "run_id", "key"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise SinkConfigurationError(
                    f"ExportLoad.{name} must be a non-empty string, got {value!r}", job_id=self.run_id or None)


class ResultSink(abc.ABC):
    """A destination for canonical Bulk Write result batches (see ``bulk_result.canonical_schema``: the
    same columns for every batch, ``source`` a struct of the CSV member's own mapped columns), and for
    Bulk Read exports (see ``bulk_read.read_export_page``: the module's own columns, then
    ``_job_id``, ``_page``, ``_row_number``), opened with :meth:`open` and :meth:`open_export`."""

    template_fields: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        """The location fields only (never options such as ``transport_params``): Airflow shows a
        template field's rendered value as its repr, under the task's Rendered Templates."""
        fields = ", ".join(f"{name}={getattr(self, name, None)!r}" for name in self.template_fields)
        return f"{type(self).__name__}({fields})"

    @abc.abstractmethod
    def open(self, job_id: str) -> None:
        """Prepare to receive the rows of ``job_id`` (connect, start a transaction or upload)."""

    def expect_first_row(self, first_row: int) -> None:
        """Each file of the coming load numbers its rows from ``first_row``, not 1: a job this provider
        submitted carries input rows ``first_row`` onwards, and its result's rows say which. A sink that
        checks row numbers starts there; one that does not has nothing to do."""
        return None  # not abstract: a custom sink written before submission keeps working

    def open_export(self, load: ExportLoad) -> None:
        """Prepare to receive every page of one Bulk Read export run; all pages commit together.

        Not abstract, so that a custom sink written for Bulk Write results keeps working; it says
        clearly that it cannot take exports instead.
        """
        raise SinkConfigurationError(
            f"{type(self).__name__} does not load Bulk Read exports (it has no open_export)", job_id=load.run_id)

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



_EXPORT_META_TYPES = (pa.string(), pa.int64(), pa.int64())


def check_export_batch(batch: pa.RecordBatch, *, sink: str, job_id: str, file_name: str,
                       merge_key: str | None = None) -> tuple[str, ...]:
    """The module columns of an export batch, after checking it has the export layout: string
    columns with distinct, non-empty names, then ``_job_id`` (string), ``_page`` and ``_row_number``
    (int64). Raises a SinkError naming what is wrong, so a sink never writes a half-understood batch.

    With ``merge_key`` (a merge load), every row must have that key: a row without one could never be
    matched again, so each re-run would add it once more, and an empty key would match every other."""
    names = tuple(batch.schema.names)
    module_columns = names[: -len(EXPORT_META_COLUMNS)]
    problem = None
    if names[len(module_columns):] != EXPORT_META_COLUMNS:
        problem = f"its last columns are {list(names[-3:])!r}, not {list(EXPORT_META_COLUMNS)!r}"
    elif [batch.schema.field(name).type for name in EXPORT_META_COLUMNS] != list(_EXPORT_META_TYPES):
        problem = "_job_id must be a string column and _page, _row_number int64 columns"
    elif reserved := [name for name in module_columns if name in RESERVED_EXPORT_COLUMNS]:
        problem = f"module column {reserved[0]!r} has a name reserved for the export's own columns"
    elif len(set(names)) != len(names) or "" in module_columns:
        problem = "its column names are not distinct and non-empty"
    elif wrong := [field.name for field in batch.schema if field.name in module_columns
                   and not pa.types.is_string(field.type)]:
        problem = f"module column {wrong[0]!r} is not a string column"
    if problem:
        raise SinkError(f"{sink} got a batch that is not a Bulk Read export page: {problem}",
                        job_id=job_id, file_name=file_name)
    if merge_key is not None:
        if merge_key not in module_columns:
            raise SinkConfigurationError(
                f"{sink} cannot merge: the merge key {merge_key!r} is not a column of this page (its columns: "
                f"{list(module_columns)[:30]}), nothing was changed", job_id=job_id, file_name=file_name)
        empty = pc.fill_null(pc.equal(batch.column(merge_key), string_scalar("")), bool_scalar(True))
        first = pc.index(empty, bool_scalar(True)).as_py()
        if first >= 0:
            raise SinkError(f"{sink} cannot merge a record whose merge key {merge_key!r} is empty, nothing was "
                            "changed", job_id=job_id, file_name=file_name,
                            row_number=batch.column("_row_number")[first].as_py())
    return module_columns


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
    #: The open load's job (an export's run id), the column that numbers its rows (``row_number``
    #: for results, ``_row_number`` for exports), and per file the number its next batch must start at.
    _job_id: str
    _row_column: str
    _next_row: dict[str, int]

    @abc.abstractmethod
    def _start_load(self, job_id: str) -> StagedLoad:
        """Check the rendered settings and start a load of ``job_id`` (connect, begin); raise a SinkError
        after cleaning up if that fails."""

    def _start_export(self, load: ExportLoad) -> StagedLoad:
        """Check the rendered settings and start loading a Bulk Read export run (see :class:`ExportLoad`);
        raise a SinkError after cleaning up if that fails. The shipped sinks all implement it; a custom
        sink that does not is refused clearly."""
        raise SinkConfigurationError(f"{self._describe()} does not load Bulk Read exports", job_id=load.run_id)

    @abc.abstractmethod
    def _describe(self) -> str:
        """The sink and its destination for error messages, e.g. ``DuckDBSink for table 'results'``."""

    def open(self, job_id: str) -> None:
        self._refuse_second_load(job_id)
        self._load = self._start_load(job_id)
        self._job_id, self._row_column, self._next_row, self._first_row = job_id, "row_number", {}, 1

    def expect_first_row(self, first_row: int) -> None:
        self._first_row = first_row

    def open_export(self, load: ExportLoad) -> None:
        self._refuse_second_load(load.run_id)
        self._load = self._start_export(load)
        self._job_id, self._row_column, self._next_row, self._first_row = load.run_id, "_row_number", {}, 1

    def _refuse_second_load(self, job_id: str) -> None:
        if self._load is not None:
            raise SinkError(f"{self._describe()} is already loading a job", job_id=job_id)

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        if self._load is None:
            raise SinkError(f"{self._describe()} got rows before open()", file_name=file_name)
        self._check_row_numbers(file_name, batch)
        self._load.write(file_name, batch)

    def _check_row_numbers(self, file_name: str, batch: pa.RecordBatch) -> None:
        """Each file's rows (an export: each page's) must arrive once, numbered 1, 2, 3, ... (or from
        :meth:`expect_first_row`) across its batches.

        This is what keeps ``(job_id, file_name, row_number)`` unique at every destination without a
        database constraint (DuckDB holds a key's index in memory for every row a transaction adds):
        the load replaces the job's rows, so a duplicate could only come from the stream itself, such
        as a zip holding two members of the same name.
        """
        if not batch.num_rows or self._row_column not in batch.schema.names:
            return  # the layout itself is checked by the load (conform_batch, check_export_batch)
        numbers = batch.column(self._row_column)
        first, last = numbers[0].as_py(), numbers[-1].as_py()
        expected = self._next_row.get(file_name, self._first_row)
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
    sink: ResultSink, job_id: str, batches: Iterable[tuple[str, pa.RecordBatch]], *, first_row: int = 1
) -> list[str]:
    """Drive a sink through one load: open, write each batch, commit; abort on any exception.

    ``first_row``: where each file's row numbers start (see :meth:`ResultSink.expect_first_row`)."""
    sink.open(job_id)
    if first_row != 1:
        sink.expect_first_row(first_row)
    return _write_and_commit(sink, batches)


def load_export_batches(
    sink: ResultSink, load: ExportLoad, batches: Iterable[tuple[str, pa.RecordBatch]]
) -> list[str]:
    """Drive a sink through one Bulk Read export run: open_export, write each page's batches, commit;
    abort on any exception, so a failed page leaves the destination as it was."""
    sink.open_export(load)
    return _write_and_commit(sink, batches)


def _write_and_commit(sink: ResultSink, batches: Iterable[tuple[str, pa.RecordBatch]]) -> list[str]:
    """The part of a load after open: the same for results and exports."""
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
