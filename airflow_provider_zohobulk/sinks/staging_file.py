"""A local file that is invisible while it is written and leaves nothing behind however the process ends.

Why: a load writes its rows to a local file before they may be seen (the archive's integrity is known
only at its end). A named temporary file survives a process that is killed mid-load (an Airflow task
timeout, the OOM killer, a worker restart): the sink's cleanup never runs, and files of hundreds of
megabytes pile up beside the destination, unnoticed.

On Linux the file is created with ``O_TMPFILE``: an inode with no name, which the kernel frees when
its last descriptor closes, including when the process dies. :meth:`StagingFile.publish` gives it its
final name (link to a hidden name, fsync, then ``os.replace`` over the destination, so an existing
file is replaced atomically). Other readers in this process open it through ``/proc/self/fd/N``
(:attr:`StagingFile.reader_path`). Where ``O_TMPFILE`` is missing (macOS, Windows) or the filesystem
refuses it (some network filesystems), the file is a hidden named one, ``.<hint>.<random><suffix>``,
which :meth:`discard`, a garbage-collected object or interpreter exit deletes; only a killed
process leaves it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import weakref
from typing import BinaryIO

__all__ = ["StagingFile", "anonymous_files_supported"]

#: What ``open(..., O_TMPFILE)`` answers where the kernel or the filesystem lacks it.
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP}


def anonymous_files_supported() -> bool:
    """Whether this platform can create unnamed files and name them later (Linux with /proc)."""
    return hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


class StagingFile:
    """A new file in ``directory`` (created with its parents), open for writing and reading as :attr:`stream`.

    The file mode follows the umask, as for any new file. ``hint`` and ``suffix`` name the hidden file
    while it is published (and the named fallback for its whole life).
    """

    def __init__(self, directory: str, hint: str, suffix: str = ".tmp") -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.hint = hint
        self.suffix = suffix
        #: The named fallback's path; ``None`` while the file is anonymous.
        self.named_path: str | None = None
        self.stream: BinaryIO = os.fdopen(self._create(), "w+b")
        # The guard only removes a name: the stream closes itself when collected, and closing it here
        # first would break a writer collected with it (pyarrow's ParquetWriter writes its footer then).
        self._guard = weakref.finalize(self, _remove, self.named_path)

    @property
    def anonymous(self) -> bool:
        return self.named_path is None

    @property
    def reader_path(self) -> str:
        """A path another library in this process can open to read the file (valid until it is published
        or discarded); call :meth:`flush` first."""
        return f"/proc/self/fd/{self.stream.fileno()}" if self.named_path is None else self.named_path

    def flush(self) -> None:
        self.stream.flush()

    def publish(self, final_path: str) -> None:
        """Make the complete file appear as ``final_path``, atomically replacing any file there, durably
        (data synced before the name appears). Closes the file; on failure it is discarded."""
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            if self.named_path is None:
                hidden = self._unused_name()
                # linkat(AT_SYMLINK_FOLLOW) on the /proc link names the unnamed inode; a dir fd forces
                # os.link to use linkat rather than link(2), which would refuse the cross-device link.
                directory_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.link(self.reader_path, hidden, src_dir_fd=directory_fd, follow_symlinks=True)
                finally:
                    os.close(directory_fd)
                self.named_path = hidden
                self._guard.detach()
                self._guard = weakref.finalize(self, _remove, hidden)
            os.replace(self.named_path, final_path)
            self.named_path = None  # nothing of ours to remove any more
            self._guard.detach()
            self.stream.close()
            _sync_directory(os.path.dirname(os.path.abspath(final_path)))
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and forget the file; never raises, and does nothing the second time."""
        with contextlib.suppress(Exception):
            self.stream.close()
        self._guard()

    def _create(self) -> int:
        if anonymous_files_supported():
            try:
                return os.open(self.directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
        while True:
            path = self._unused_name()
            try:
                flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
                descriptor = os.open(path, flags, 0o666)
            except FileExistsError:
                continue
            self.named_path = path
            return descriptor

    def _unused_name(self) -> str:
        return os.path.join(self.directory, f".{self.hint}.{secrets.token_hex(6)}{self.suffix}")


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _sync_directory(directory: str) -> None:
    """Persist a rename (best effort: some platforms cannot open a directory)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
