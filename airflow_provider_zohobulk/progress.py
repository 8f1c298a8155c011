"""Progress reporting for long transfers: bytes, rows and rates, logged every few seconds.

Wraps the pipeline's iterators instead of living inside them, so the streaming core stays free of
logging policy and the numbers come from what actually flowed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import pyarrow as pa

T = TypeVar("T")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


class Progress:
    """Counts bytes and rows passing through, and logs a line at most every ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0, total_bytes: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.interval = interval
        self.total_bytes = total_bytes
        self.clock = clock
        self.bytes = 0
        self.rows = 0
        self.started = clock()
        self._last_report = self.started

    def count_bytes(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.bytes += len(chunk)
            self._maybe_report()
            yield chunk

    def count_rows(self, batches: Iterable[tuple[str, pa.RecordBatch]]) -> Iterator[tuple[str, pa.RecordBatch]]:
        for file_name, batch in batches:
            self.rows += batch.num_rows
            self._maybe_report()
            yield file_name, batch

    def _maybe_report(self) -> None:
        now = self.clock()
        if now - self._last_report >= self.interval:
            self._last_report = now
            self.report("progress")

    def report(self, label: str) -> None:
        elapsed = max(self.clock() - self.started, 1e-9)
        of_total = f" of {_mb(self.total_bytes)} ({100 * self.bytes / self.total_bytes:.0f}%)" \
            if self.total_bytes else ""
        self.log.info(
            "%s: %s downloaded%s, %s rows, %.1f MB/s, %s rows/s, %.0fs elapsed",
            label, _mb(self.bytes), of_total, f"{self.rows:,}", self.bytes / elapsed / 1e6,
            f"{self.rows / elapsed:,.0f}", elapsed,
        )
