"""ObjectStorageSink: canonical rows as Parquet, CSV or JSON Lines files in S3, GCS, Azure or locally.

Why staging matters here: an archive's integrity is only known when its last byte has been read, so
no object may appear before :meth:`ObjectStorageSink.commit`, and an object already at the location
must survive a failed load. How each place guarantees it:

- S3 (``s3://``): smart-open's multipart upload; completing it (on commit) is what makes the object
  appear, atomically, replacing any earlier object only then. Abort cancels the upload. A
  smart-open writer that is garbage-collected unclosed *completes* its upload (measured; see
  stack-notes), so the sink keeps every writer referenced until commit or abort, and a
  ``weakref.finalize`` guard cancels whatever is still staged if the sink itself is dropped or the
  interpreter exits without either.
- GCS (``gs://``): google-cloud-storage's resumable upload; chunks go up as they fill and the object
  appears only with the last chunk, sent on commit. Abort sends no last chunk, so nothing appears;
  the unfinalised session is left for GCS to discard after a week (google-cloud-storage's cancel
  sends its DELETE to the upload's initiation URL, not to the session).
- Azure (``azure://``): blocks are staged as they fill and the blob is made of them only when the
  block list is committed, on commit. Abort commits nothing; the staged blocks stay uncommitted
  until Azure discards them after a week, and an existing blob keeps its content.
- Both writers, like S3's, finish their upload when garbage-collected unclosed; the same guard
  cancels them. Their chunk or block size, and so their memory per open object, is the sink's
  ``min_part_size`` (16 MiB) like S3's part size, not smart-open's defaults (50 MiB for GCS, 64 MiB
  for Azure), unless ``transport_params`` sets ``min_part_size``.
- Local paths and ``file://``: a :class:`~airflow_provider_zohobulk.sinks.staging_file.StagingFile`
  in the destination directory (created with its parents): on Linux a file with no name, so nothing
  is left even when the process is killed; on commit it is synced and renamed over the destination
  with ``os.replace``; abort closes it.

When an archive holds several CSV files, each goes to its own object (``{file}`` in the URI); these
objects become visible one after the other at commit: each one atomically, not all together. Without
``{file}`` a second CSV is refused, whatever its columns: its rows would replace the first one's, and
a Parquet file's schema is one CSV's own (``source`` is the struct of its mapped columns).

A Bulk Read export (:meth:`ObjectStorageSink.open_export`) is loaded the same way, one object per page
(the operator names pages ``<module>-<page>``, so ``{file}`` becomes ``Leads-00001``; required when
the export has several pages), all of them published at commit, once every page has been read and
verified. The objects hold the export's own columns, one per field, not the canonical layout
(:mod:`airflow_provider_zohobulk.sinks.formats` describes each format).

Compression (``.gz``, ``.bz2``, ``.xz``, ``.zst`` after the format's extension) is applied here, on
the byte stream, instead of by smart-open's by-extension wrappers: the sink must finish a
compressed member (write its trailer) without closing the upload under it, and smart-open's
``.zst`` support needs ``backports.zstd`` on Python < 3.14 where this project uses ``zstandard``.
Encodings of the formats are described in :mod:`airflow_provider_zohobulk.sinks.formats`.

Importing this module imports no Airflow: connections are resolved in :meth:`ObjectStorageSink.open`.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import re
import weakref
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

import pyarrow as pa

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
from airflow_provider_zohobulk.sinks.formats import (
    FORMAT_BY_EXTENSION,
    PARQUET,
    BatchEncoder,
    check_format,
    check_parquet_codec,
    conform_batch,
    make_encoder,
)
from airflow_provider_zohobulk.sinks.staging_file import StagingFile

FILE_PLACEHOLDER = "{file}"
COMPRESSION_EXTENSIONS: tuple[str, ...] = (".gz", ".bz2", ".xz", ".zst")
REMOTE_SCHEMES: tuple[str, ...] = ("s3", "gs", "azure")
MIB = 1 << 20
#: S3 rejects multipart parts under 5 MiB (except the last).
S3_MIN_PART_SIZE = 5 * MIB
#: GCS resumable uploads send chunks in multiples of this size.
GCS_CHUNK_MULTIPLE = 256 * 1024

# A single-brace group such as {file} or {filename}; Jinja's {{ ... }} is left alone.
_PLACEHOLDER = re.compile(r"(?<!\{)\{([^{}]*)\}(?!\})")
_AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


@dataclass(frozen=True)
class StorageLocation:
    """What a (rendered) URI means: where, in which format, compressed how. Sinks write to one
    (:class:`Destination`), sources read from one."""

    uri: str
    scheme: str  # "" for a local path
    format: str
    compression: str | None  # one of COMPRESSION_EXTENSIONS

    @property
    def is_local(self) -> bool:
        return self.scheme in ("", "file")


@dataclass(frozen=True)
class Destination(StorageLocation):
    """A sink's location, which may name one object per CSV member with ``{file}``."""

    @property
    def per_file(self) -> bool:
        return FILE_PLACEHOLDER in self.uri

    def target_for(self, stem: str) -> str:
        """The location named for a CSV member: ``{file}`` replaced by its :func:`member_stem`."""
        return self.uri.replace(FILE_PLACEHOLDER, stem)


def uri_suffixes(uri: str) -> tuple[str, str | None]:
    """The format extension and the compression extension of a URI's last segment, lower case with the
    dot: ``s3://b/Leads.CSV.gz`` -> ``(".csv", ".gz")``; ``""`` and None where there is none. Sinks and
    sources read a location's format the same way."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    compression = next((ext for ext in COMPRESSION_EXTENSIONS if name.endswith(ext)), None)
    if compression:
        name = name[: -len(compression)]
    return ("." + name.rsplit(".", 1)[-1] if "." in name else ""), compression


def member_stem(member_name: str) -> str:
    """``Leads-Leads.csv`` -> ``Leads-Leads``; directories inside the zip are dropped, so a member
    name can never climb out of the destination (``../x.csv`` -> ``x``). Characters that a URI would
    decode or cut (``%``, ``#``, ``?``) and control characters become ``_``: in a ``file://`` URI,
    ``..%2Fx`` would otherwise decode to a path one directory up.

    A stem starting with ``~`` is refused (:class:`SinkError`): a path starting with it names a home
    directory. :func:`local_path` already puts the stem in only after expanding ``~``; this keeps
    such a name out of every destination, local or remote, in case a path is ever built another way.
    """
    base = PurePosixPath(member_name.replace("\\", "/")).name
    stem = base[: -len(".csv")] if base.lower().endswith(".csv") else base
    if stem.startswith("~"):
        raise SinkError(
            f"the name of CSV file {member_name!r} starts with '~', which a local path reads as a home "
            "directory; refusing to name a destination after it", file_name=member_name)
    stem = _URI_UNSAFE.sub("_", stem)
    return stem if stem not in ("", ".", "..") else "result"


_URI_UNSAFE = re.compile(r"[%#?\x00-\x1f\x7f]")


def parse_destination(uri: str, format_name: str | None) -> Destination:
    """Check a URI (and the explicit format, if any) and say what it means; no I/O.

    Raises :class:`SinkConfigurationError` for an unsupported scheme, an unknown or conflicting
    format, a compressed Parquet name, or a single-brace placeholder other than ``{file}``.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise SinkConfigurationError(f"ObjectStorageSink needs a destination URI, got {uri!r}")
    unknown = sorted({f"{{{name}}}" for name in _PLACEHOLDER.findall(uri) if name != "file"})
    if unknown:
        raise SinkConfigurationError(
            f"URI {uri!r} holds the placeholder(s) {', '.join(unknown)}; the only placeholder is {{file}} "
            "(the CSV file's name without .csv); use Jinja ({{ ... }}) for anything else"
        )
    scheme = _scheme_of(uri)
    if scheme not in ("", "file", *REMOTE_SCHEMES):
        raise SinkConfigurationError(
            f"URI {uri!r} has the unsupported scheme {scheme!r}; use s3://, gs://, azure://, file:// or a local path"
        )
    extension, compression = uri_suffixes(uri)
    from_extension = FORMAT_BY_EXTENSION.get(extension)
    if format_name is not None:
        chosen = check_format(format_name)
        if from_extension is not None and from_extension != chosen:
            raise SinkConfigurationError(
                f"URI {uri!r} ends in {extension!r} ({from_extension}) but format={format_name!r} was given"
            )
    elif from_extension is None:
        raise SinkConfigurationError(
            f"cannot tell the output format of {uri!r}: end it in .parquet, .csv, .jsonl or .ndjson "
            f"(optionally followed by {', '.join(COMPRESSION_EXTENSIONS)}), or pass format="
        )
    else:
        chosen = from_extension
    if chosen == PARQUET and compression:
        raise SinkConfigurationError(
            f"URI {uri!r} asks for a {compression} compressed Parquet file; Parquet compresses itself "
            "(parquet_codec=), so drop the extension"
        )
    return Destination(uri=uri, scheme=scheme, format=chosen, compression=compression)


def _scheme_of(uri: str) -> str:
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    return match.group(1).lower() if match else ""


def local_path(uri: str, file_stem: str | None = None) -> str:
    """The absolute local path of a plain path or ``file://`` URI, ``{file}`` replaced by ``file_stem``
    when one is given.

    The stem goes in only after the user's URI has been expanded (``~``) and decoded (``%xx``), so
    a member's name is only ever a name: ``~.csv`` with ``{file}/out.csv`` would otherwise be
    ``$HOME/out.csv``, and ``%2e%2e`` in a ``file://`` URI would be ``..``.
    """
    if _scheme_of(uri) == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise SinkConfigurationError(f"file URI {uri!r} names the host {parts.netloc!r}; only local files work")
        pieces = [unquote(piece) for piece in parts.path.split(FILE_PLACEHOLDER)]
    else:
        pieces = os.path.expanduser(uri).split(FILE_PLACEHOLDER)
    return os.path.abspath((FILE_PLACEHOLDER if file_stem is None else file_stem).join(pieces))


class ObjectStorageSink(StagedSink):
    """Write canonical rows to ``uri`` as Parquet, CSV or JSON Lines; visible only after :meth:`commit`.

    ``uri``: ``s3://bucket/key``, ``gs://bucket/name``, ``azure://container/blob``, ``file:///path``
    or a local path. The format comes from its extension (``.parquet``, ``.csv``, ``.jsonl`` /
    ``.ndjson``, the latter two optionally compressed by a further ``.gz``, ``.bz2``, ``.xz`` or
    ``.zst``) or from ``format``. ``{file}`` in the URI is replaced by the CSV member's name without
    ``.csv`` (``Leads-Leads``); it is required when an archive holds several CSV files. A Bulk Read
    export (:meth:`open_export`) writes one object per page, ``{file}`` being the page's name
    (``Leads-00001``), with the export's own columns.

    ``conn_id``: an Airflow connection whose credentials reach the store: ``aws`` for ``s3://``
    (endpoint URL, region and keys taken from it), ``google_cloud_platform`` for ``gs://``,
    ``wasb`` for ``azure://``. Without one, the libraries' default credentials are used, or a
    ``client`` given in ``transport_params`` (passed to smart-open as is).
    ``min_part_size``: the S3 multipart part, GCS upload chunk (a multiple of 256 KiB) or Azure
    block size, at least 5 MiB, which is also about the memory each open object needs.
    ``parquet_codec``: Parquet's internal compression.

    :attr:`asset_uri` is the URI with ``{file}`` kept as it is (one stable Asset per destination,
    whatever the files in a given archive); local paths become absolute ``file://`` URIs.
    """

    template_fields = ("uri",)

    def __init__(
        self,
        uri: str,
        *,
        format: str | None = None,
        conn_id: str | None = None,
        transport_params: dict[str, Any] | None = None,
        min_part_size: int = 16 * MIB,
        parquet_codec: str = "zstd",
    ) -> None:
        if min_part_size < S3_MIN_PART_SIZE:
            raise SinkConfigurationError(
                f"min_part_size must be at least {S3_MIN_PART_SIZE} bytes (S3's smallest part), got {min_part_size}"
            )
        check_parquet_codec(parquet_codec)
        if not is_templated(uri):
            parse_destination(uri, format)
        elif format is not None:
            check_format(format)
        self.uri = uri
        self.format = format
        self.conn_id = conn_id
        self.transport_params = dict(transport_params or {})
        self.min_part_size = min_part_size
        self.parquet_codec = parquet_codec

    @property
    def asset_uri(self) -> str:
        if _scheme_of(self.uri) in REMOTE_SCHEMES:
            return self.uri
        return "file://" + quote(local_path(self.uri), safe="/{}:")

    def _describe(self) -> str:
        return f"ObjectStorageSink for {self.uri!r}"

    def _start_load(self, job_id: str) -> _Load:
        return self._start(job_id, None)

    def _start_export(self, load: ExportLoad) -> _Load:
        """An export: one object per page, the export's own columns (``write_mode`` does not apply: each
        run writes its pages' objects, replacing objects of the same names)."""
        return self._start(load.run_id, load)

    def _start(self, job_id: str, export: ExportLoad | None) -> _Load:
        destination = parse_destination(self.uri, self.format)
        if destination.compression == ".zst":
            _require_zstandard(self.uri)
        return _Load(self, destination, job_id, self._resolve_transport_params(destination), export)

    def _resolve_transport_params(self, destination: Destination) -> dict[str, Any]:
        params = dict(self.transport_params)
        if not destination.is_local:
            params.setdefault("min_part_size", self.min_part_size)
            if destination.scheme == "gs" and params["min_part_size"] % GCS_CHUNK_MULTIPLE:
                raise SinkConfigurationError(
                    f"min_part_size for gs:// must be a multiple of 256 KiB (GCS's upload chunk), got "
                    f"{params['min_part_size']}")
        if self.conn_id is None:
            return params
        if destination.is_local:
            raise SinkConfigurationError(
                f"conn_id {self.conn_id!r} was given for the local destination {self.uri!r}, which needs none"
            )
        if "client" in params:
            raise SinkConfigurationError(
                f"give either conn_id or a client in transport_params for {self.uri!r}, not both"
            )
        params["client"] = _client_from_connection(destination.scheme, self.conn_id)
        return params


# --- one load: staged objects, committed or discarded together ------------------------------------------


@dataclass
class _StagedObject:
    """One destination object being written. ``scope`` closes, in this order: the encoder (format
    ending), the compressor (its trailer), then the writer (completing the upload); exiting it with
    an exception cancels the upload instead."""

    uri: str
    scope: contextlib.ExitStack
    encoder: BatchEncoder
    local: StagingFile | None = None  # local destinations only
    final_path: str | None = None
    #: An export's object: the columns of its first batch, which every later batch must have.
    columns: tuple[str, ...] | None = None


class _Load(StagedLoad):
    """The state of one open..commit/abort cycle of an :class:`ObjectStorageSink`."""

    def __init__(self, sink: ObjectStorageSink, destination: Destination, job_id: str,
                 transport_params: dict[str, Any], export: ExportLoad | None = None) -> None:
        self.destination = destination
        self.job_id = job_id
        #: Set for a Bulk Read export: flat objects, one per page.
        self.export = export
        self.transport_params = transport_params
        self.parquet_codec = sink.parquet_codec
        self.staged: list[_StagedObject] = []
        self.by_member: dict[str, _StagedObject] = {}
        # Cancels the uploads if the sink is dropped (or the interpreter exits) without commit/abort.
        self.guard = weakref.finalize(sink, _discard_all, self.staged, job_id)

    def write(self, file_name: str, batch: pa.RecordBatch) -> None:
        staged = self.by_member.get(file_name) or self._stage_member(file_name)
        if self.export is None:
            batch = conform_batch(batch, job_id=self.job_id, file_name=file_name, destination=staged.uri)
        else:
            self._check_export_columns(staged, file_name, batch)
        try:
            staged.encoder.write(batch)
        except Exception as exc:
            raise SinkError(f"writing to {staged.uri!r} failed: {describe_exception(exc)}",
                            job_id=self.job_id, file_name=file_name) from exc

    def _check_export_columns(self, staged: _StagedObject, file_name: str, batch: pa.RecordBatch) -> None:
        """An export batch has the export layout, and the columns of the object's (the page's) first batch:
        an object holds one page, whose header names its columns once."""
        check_export_batch(batch, sink=f"ObjectStorageSink for {staged.uri!r}", job_id=self.job_id,
                           file_name=file_name)
        columns = tuple(batch.schema.names)
        if staged.columns is None:
            staged.columns = columns
        elif staged.columns != columns:
            raise SinkError(f"the batches of {file_name!r} for {staged.uri!r} do not all have the same columns "
                            f"({list(staged.columns)} then {list(columns)}); one object holds one page",
                            job_id=self.job_id, file_name=file_name)

    def _stage_member(self, file_name: str) -> _StagedObject:
        if self.by_member and not self.destination.per_file:
            first = next(iter(self.by_member))
            what = "export has several pages" if self.export is not None else "archive holds several CSV files"
            raise SinkConfigurationError(
                f"the {what} ({first!r}, {file_name!r}) but {self.destination.uri!r} has no "
                "{file} placeholder, so they would overwrite each other; put {file} in the URI",
                job_id=self.job_id, file_name=file_name)
        try:
            stem = member_stem(file_name)
        except SinkError as exc:
            raise exc.with_context(job_id=self.job_id) from None
        target = self.destination.target_for(stem)
        clash = next((member for member, obj in self.by_member.items() if obj.uri == target), None)
        if clash is not None:
            raise SinkConfigurationError(
                f"CSV files {clash!r} and {file_name!r} would both be written to {target!r}",
                job_id=self.job_id, file_name=file_name)
        staged = self._open_object(target, file_name, stem)
        self.by_member[file_name] = staged
        return staged

    def _open_object(self, target: str, file_name: str | None, stem: str | None = None) -> _StagedObject:
        """Start writing ``target``: the destination URI with ``{file}`` replaced by ``stem``."""
        scope = contextlib.ExitStack()
        local = final_path = None
        try:
            if self.destination.is_local:
                final_path = local_path(self.destination.uri, stem)  # not from target: see local_path
                directory, name = os.path.split(final_path)
                # Not smart-open: it would only forward to the builtin open for a local path.
                local = StagingFile(directory, name)
                raw: BinaryIO = local.stream  # stays open after the scope: publish() closes it
            else:
                import smart_open  # here, not at the top: with boto3 installed it costs ~40 MB and 1 s to import

                raw = scope.enter_context(
                    smart_open.open(target, "wb", compression="disable", transport_params=self.transport_params))
            stream = raw
            compressor = _compressor(raw, self.destination.compression)
            if compressor is not None:
                scope.callback(compressor.close)
                stream = compressor
            encoder = make_encoder(self.destination.format, stream, parquet_codec=self.parquet_codec,
                                   flat=self.export is not None)
            scope.callback(encoder.finish)
        except Exception as exc:
            unwind_as_failed(scope, self.job_id)
            if local is not None:
                local.discard()
            if isinstance(exc, SinkError):
                raise
            raise SinkError(f"opening {target!r} for writing failed: {describe_exception(exc)}",
                            job_id=self.job_id, file_name=file_name) from exc
        staged = _StagedObject(target, scope, encoder, local, final_path)
        self.staged.append(staged)
        return staged

    def commit(self) -> list[str]:
        published: list[str] = []
        current = self.destination.uri
        try:
            if not self.staged and not self.destination.per_file:
                # No CSV member at all: the one destination still reflects the (empty) result.
                self._open_object(self.destination.uri, None)
            # Local files are all finished before the first is published, so a failure in any of them publishes none.
            for staged in self.staged:
                current = staged.uri
                staged.scope.close()  # remote: the object appears here
                if staged.local is None:
                    published.append(staged.uri)
            for staged in self.staged:
                if staged.local is not None and staged.final_path is not None:
                    current = staged.uri
                    staged.local.publish(staged.final_path)
                    staged.local = None
                    published.append(staged.uri)
        except Exception as exc:
            self.abort()
            outcome = f"already published: {published}" if published else "nothing was published"
            raise SinkError(f"committing {current!r} failed ({outcome}): {describe_exception(exc)}",
                            job_id=self.job_id) from exc
        self.guard.detach()
        return [staged.uri for staged in self.staged]

    def abort(self) -> None:
        self.guard()  # runs _discard_all once, then never again


def _discard_all(staged_objects: list[_StagedObject], job_id: str) -> None:
    """Cancel every staged upload and delete every temporary file; never raises."""
    for staged in staged_objects:
        unwind_as_failed(staged.scope, job_id)
        if staged.local is not None:
            staged.local.discard()
            staged.local = None


def _compressor(raw: BinaryIO, compression: str | None) -> BinaryIO | None:
    """A compressing writer over ``raw`` whose ``close`` writes the trailer but leaves ``raw`` open."""
    if compression is None:
        return None
    if compression == ".gz":
        # filename="" and mtime=0: the temporary name and the time stay out of the header.
        return gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0)
    if compression == ".bz2":
        return bz2.BZ2File(raw, "wb")
    if compression == ".xz":
        return lzma.LZMAFile(raw, "wb")
    import zstandard

    return zstandard.ZstdCompressor().stream_writer(raw, closefd=False)


def _require_zstandard(uri: str) -> None:
    try:
        import zstandard  # noqa: F401
    except ImportError as exc:
        raise SinkConfigurationError(
            f"{uri!r} ends in .zst, which needs the zstandard package: pip install 'airflow-provider-zohobulk[zstd]'"
        ) from exc


# --- credentials from Airflow connections (imported only when used) ----------------------------------


def _client_from_connection(scheme: str, conn_id: str) -> Any:
    """The storage client built from Airflow connection ``conn_id`` by its provider's hook.

    The connection is looked up first on purpose: the Amazon hook silently falls back to the
    machine's default credentials for an unknown id, so a typo would write with someone else's rights.
    """
    try:
        from airflow.sdk import BaseHook

        BaseHook.get_connection(conn_id)
        if scheme == "s3":
            return _s3_client(conn_id)
        if scheme == "gs":
            from airflow.providers.google.cloud.hooks.gcs import GCSHook

            return GCSHook(gcp_conn_id=conn_id).get_conn()
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        return WasbHook(wasb_conn_id=conn_id).get_conn()
    except ImportError as exc:
        extra = {"s3": "amazon", "gs": "google"}.get(scheme, "azure")
        raise SinkConfigurationError(
            f"{scheme}:// destinations with conn_id {conn_id!r} need the Airflow {extra} provider: "
            f"pip install 'airflow-provider-zohobulk[{extra}]'"
        ) from exc
    except SinkError:
        raise
    except Exception as exc:  # connection missing, or unusable: the type names the problem, no secrets
        # from None: the driver's own message may quote the connection string, key included, and a
        # chained cause would be printed with the traceback in the task log.
        raise SinkConfigurationError(
            f"Airflow connection {conn_id!r} for {scheme}:// could not be used: {type(exc).__name__}"
        ) from None


def _s3_client(conn_id: str) -> Any:
    """boto3 S3 client from an ``aws`` connection. For endpoints other than AWS's own, checksums are
    only sent when required: boto3 >= 1.36 sends new default checksums that S3-compatible servers
    often reject."""
    import botocore.config
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=conn_id)
    endpoint = hook.conn_config.get_service_endpoint_url("s3")
    host = (urlsplit(endpoint).hostname or "") if endpoint else ""
    if not endpoint or host.endswith(_AWS_HOST_SUFFIXES):
        return hook.get_conn()
    config = hook.config.merge(botocore.config.Config(
        request_checksum_calculation="when_required", response_checksum_validation="when_required"))
    return hook.get_client_type(config=config)
