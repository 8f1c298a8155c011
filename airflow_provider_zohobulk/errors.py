"""One exception hierarchy for the whole package.

Every error a user can meet derives from :class:`ZohoBulkError`, so a DAG author can catch one class,
and every error says *where* it happened (job, file, row) because that is the first thing a person
debugging a failed load needs. Secrets never go into these messages: callers pass only ids, names,
codes and Zoho's own message texts.
"""

from __future__ import annotations


class ZohoBulkError(Exception):
    """Base class; carries optional location context that is appended to the message."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        file_name: str | None = None,
        row_number: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.file_name = file_name
        self.row_number = row_number

    def with_context(
        self, *, job_id: str | None = None, file_name: str | None = None, row_number: int | None = None
    ) -> ZohoBulkError:
        """Fill in location fields that are still unknown; returns self so it can be re-raised."""
        self.job_id = self.job_id or job_id
        self.file_name = self.file_name or file_name
        self.row_number = self.row_number or row_number
        return self

    def __str__(self) -> str:
        where = []
        if self.job_id:
            where.append(f"job {self.job_id}")
        if self.file_name:
            where.append(f"file {self.file_name!r}")
        if self.row_number is not None:
            where.append(f"row {self.row_number}")
        return f"{self.message} ({', '.join(where)})" if where else self.message

    def __reduce__(self):  # keep context when pickled across processes
        return (
            _rebuild,
            (type(self), self.args, self.__dict__.copy()),
        )


def _rebuild(cls, args, state):
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


# --- configuration ---------------------------------------------------------------------------------


class ZohoConfigurationError(ZohoBulkError):
    """The connection or operator arguments are incomplete or contradictory."""


class UnsafeTokenCacheError(ZohoConfigurationError):
    """The token cache's fallback folder in the shared temporary directory is not private to this user
    (a link, another user's, or writable by others), so tokens cached there could be planted or swapped."""


# --- OAuth ----------------------------------------------------------------------------------------


class ZohoAuthError(ZohoBulkError):
    """Minting an access token failed. ``error`` is Zoho's error key (``invalid_code``, ...)."""

    def __init__(self, message: str, *, error: str | None = None, **context) -> None:
        super().__init__(message, **context)
        self.error = error


class InvalidRefreshTokenError(ZohoAuthError):
    """``invalid_code``: the refresh token is wrong, revoked, or from another data centre."""


class InvalidClientError(ZohoAuthError):
    """``invalid_client``: unknown client id, most often a connection pointed at the wrong data centre."""


class InvalidClientSecretError(ZohoAuthError):
    """``invalid_client_secret``: the client secret does not match the client id."""


class TokenThrottledError(ZohoAuthError):
    """Zoho's ``Access Denied`` throttle (10 tokens per refresh token per 10 minutes) did not lift in time."""


# --- CRM API ----------------------------------------------------------------------------------------


class ZohoApiError(ZohoBulkError):
    """A CRM API call answered with an error body; ``code`` and ``zoho_message`` are Zoho's own."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        zoho_message: str | None = None,
        status_code: int | None = None,
        **context,
    ) -> None:
        super().__init__(message, **context)
        self.code = code
        self.zoho_message = zoho_message
        self.status_code = status_code


class ZohoScopeError(ZohoApiError):
    """``OAUTH_SCOPE_MISMATCH``: the refresh token lacks a scope; refreshing cannot fix it."""


class ZohoTokenRejectedError(ZohoApiError):
    """``INVALID_TOKEN`` / ``AUTHENTICATION_FAILURE`` even after minting a fresh token."""


class ZohoNotFoundError(ZohoApiError):
    """``RESOURCE_NOT_FOUND``: for example an unknown Bulk job id."""


class ZohoRateLimitError(ZohoApiError):
    """HTTP 429 / ``TOO_MANY_REQUESTS`` still answered after the bounded retries."""


class ZohoServerError(ZohoApiError):
    """HTTP 5xx / ``INTERNAL_ERROR`` still answered after the bounded retries."""


class ZohoMalformedResponseError(ZohoApiError):
    """Zoho answered without an error status but with a body the call cannot read (HTML, an empty
    answer, a JSON list where an object belongs, a field of the wrong type); the message names what
    was expected. Delivered intact, so asking again would get the same: not transient."""


class ZohoConnectionError(ZohoBulkError):
    """The network failed (refused, reset, timed out) on every bounded retry."""


# --- downloads ------------------------------------------------------------------------------------


class DisallowedHostError(ZohoBulkError):
    """A URL points at a host outside the connection's data centre: the token is never sent there."""


class DownloadError(ZohoBulkError):
    """The result download failed or did not answer with a file."""


class DownloadLinkExpiredError(DownloadError):
    """Zoho says the download link is no longer valid; a fresh job-details call gives a new one."""


# --- Bulk jobs -------------------------------------------------------------------------------------


class BulkJobError(ZohoBulkError):
    """Base for problems with the state of a Bulk job."""


class BulkJobNotCompleteError(BulkJobError):
    """The job has not finished yet, so it has no result to load."""


class BulkJobFailedError(BulkJobError):
    """The job, or one of its resources, ended FAILED."""

    def __init__(self, message: str, *, code: str | None = None, **context) -> None:
        super().__init__(message, **context)
        self.code = code


# --- the result archive and its CSV -----------------------------------------------------------------


class ResultFileError(ZohoBulkError):
    """Base for anything wrong with the downloaded result (archive or CSV content)."""


class ArchiveError(ResultFileError):
    """Base for zip-level problems."""


class NotAZipError(ArchiveError):
    """The body is not a zip at all (often an HTML or JSON error page served instead of the file)."""


class CorruptArchiveError(ArchiveError):
    """CRC32 or size mismatch, or a malformed zip structure."""


class TruncatedArchiveError(ArchiveError):
    """The archive ended before its last member was complete."""


class EncryptedArchiveError(ArchiveError):
    """A member is password-protected; Zoho never sends those."""


class UnsupportedArchiveError(ArchiveError):
    """A zip feature a streaming reader cannot handle (unknown compression, stored member without sizes)."""


class ArchiveLimitError(ArchiveError):
    """A safety limit (decompressed bytes, ratio, member count) was exceeded: a possible zip bomb."""


class CsvFormatError(ResultFileError):
    """The CSV inside is malformed: ragged row, bad quoting, invalid UTF-8, oversize field."""


class ColumnLimitError(CsvFormatError):
    """A row has more columns than ``UnzipLimits.max_columns``: far wider than any Zoho result (at most
    200 mapped columns plus Zoho's three), and decoding costs memory in proportion to the columns."""


class ResultLayoutError(ResultFileError):
    """The CSV is well-formed but is not a Bulk Write result (for example no STATUS column)."""


# --- destinations ---------------------------------------------------------------------------------


class SinkError(ZohoBulkError):
    """Writing to the destination failed; the destination was left as it was before."""


class SinkConfigurationError(SinkError):
    """The sink's arguments cannot work (bad table name, unknown format, missing ``{file}``)."""


# --- Bulk Write submission (rows into Zoho) ---------------------------------------------------------


class SourceError(ZohoBulkError):
    """Reading the rows to submit failed (missing object, bad query, unreadable file); nothing was sent."""


class SourceConfigurationError(SourceError):
    """The source's arguments cannot work (unknown format, unsupported scheme or connection type)."""


class SubmissionInputError(ZohoBulkError):
    """The rows cannot be submitted as they are (missing ``find_by``, unknown mapped column, too many
    columns, a value longer than Zoho allows, a type Zoho cannot take). Raised before anything is sent.

    ``column`` names the offending column when there is one; ``row_number`` (from the base class) is the
    1-based row of the input.
    """

    def __init__(self, message: str, *, column: str | None = None, row_number: int | None = None,
                 file_name: str | None = None) -> None:
        super().__init__(message, row_number=row_number, file_name=file_name)
        self.column = column

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} [column {self.column!r}]" if self.column else text


class SubmissionChangedError(ZohoBulkError):
    """A retried submission found input different from what an earlier try already submitted to Zoho,
    so resuming would mix two inputs; the message names the file and both fingerprints."""


class SubmissionUncertainError(ZohoBulkError):
    """An earlier try asked Zoho to create a file's job and never got the answer, so the job may exist;
    creating it again could write the rows twice. The message says how to tell the task which it is."""


#: Failures a task that waits for a job outlives: they arrive after the hook's own bounded retries,
#: and the next poll (the sensor's timeout bounds them all) may well succeed. A malformed answer is
#: among them: Zoho's maintenance pages are HTML served with HTTP 200, and a wait of hours should not
#: end on one.
TRANSIENT_ERRORS: tuple[type[ZohoBulkError], ...] = (
    ZohoServerError, ZohoRateLimitError, ZohoConnectionError, TokenThrottledError, ZohoMalformedResponseError)
