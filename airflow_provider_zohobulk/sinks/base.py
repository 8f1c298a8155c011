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
from collections.abc import Iterable
from typing import ClassVar

import pyarrow as pa


class ResultSink(abc.ABC):
    """A destination for canonical Bulk Write result batches (see ``bulk_result.CANONICAL_SCHEMA``)."""

    template_fields: ClassVar[tuple[str, ...]] = ()

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
