"""Bulk job details: one reading of Zoho's several spellings, shared by hook, sensor and trigger.

Zoho spells the same state ``IN PROGRESS`` or ``INPROGRESS`` depending on the source, and nests the
interesting parts (per-resource status, file counts, download URL) a few levels deep. Every caller
reads job details through these functions so that the variants are handled in one place.

Bulk Write and Bulk Read jobs share the machinery: a Bulk Read job's ``state`` is normalised into
``status`` too (:func:`normalise_read_job`), so :func:`is_complete` and :func:`raise_if_failed` serve
both kinds, and the page of an export is read with :func:`read_page`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_zohobulk.errors import BulkJobFailedError, ZohoMalformedResponseError

ADDED = "ADDED"
QUEUED = "QUEUED"
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
SKIPPED = "SKIPPED"

_SPELLINGS = {
    "ADDED": ADDED,
    "QUEUED": QUEUED,
    "INPROGRESS": IN_PROGRESS,
    "COMPLETED": COMPLETED,
    "FAILED": FAILED,
    "SKIPPED": SKIPPED,
}


def normalise_status(value: Any) -> str | None:
    """``'In Progress'``, ``'INPROGRESS'`` and ``'in_progress'`` all become ``'IN PROGRESS'``."""
    if value is None:
        return None
    text = str(value).strip().upper()
    key = text.replace(" ", "").replace("_", "").replace("-", "")
    return _SPELLINGS.get(key, text)


_JSON_KINDS = {dict: "a JSON object", list: "a JSON list", str: "a JSON string", bool: "a JSON boolean",
               int: "a JSON number", float: "a JSON number", type(None): "null"}


def _json_kind(value: Any) -> str:
    kind = _JSON_KINDS.get(type(value), type(value).__name__)
    return f"{kind} ({value!r:.60})" if isinstance(value, str | int | float) and not isinstance(value, bool) else kind


def _expect(value: Any, kinds: tuple[type, ...], where: str, expected: str) -> None:
    """``value`` (at ``where`` in the job details) is one of ``kinds`` or absent, or the body is malformed."""
    if value is not None and not isinstance(value, kinds):
        raise ZohoMalformedResponseError(
            f"expected {where} to be {expected} in the job's details, got {_json_kind(value)}")


def check_job_shape(job: Any) -> None:
    """Raise :class:`ZohoMalformedResponseError`, naming the field, unless ``job`` has the shape every
    reader here relies on; so the readers never meet a string where a JSON object belongs."""
    if not isinstance(job, dict):
        raise ZohoMalformedResponseError(f"expected a JSON object with the job's details, got {_json_kind(job)}")
    _expect(job.get("status"), (str,), "status", "a string")
    _expect(job.get("resource"), (list,), "resource", "a JSON list")
    for index, resource in enumerate(job.get("resource") or []):
        where = f"resource[{index}]"
        if not isinstance(resource, dict):
            raise ZohoMalformedResponseError(
                f"expected {where} to be a JSON object in the job's details, got {_json_kind(resource)}")
        _expect(resource.get("status"), (str,), f"{where}.status", "a string")
        _expect(resource.get("module"), (dict, str), f"{where}.module", "a JSON object or a string")
        _expect(resource.get("file"), (dict,), f"{where}.file", "a JSON object")
        _expect((resource.get("file") or {}).get("status"), (str,), f"{where}.file.status", "a string")
    _expect(job.get("result"), (dict,), "result", "a JSON object")
    _expect((job.get("result") or {}).get("download_url"), (str,), "result.download_url", "a string")


def normalise_job(job: dict[str, Any]) -> dict[str, Any]:
    """A copy of the job details with every status (job, resources, files) normalised.

    Checks the shape first (:func:`check_job_shape`), since every caller reads the details through here.
    """
    check_job_shape(job)
    job = copy.deepcopy(job)
    if "status" in job:
        job["status"] = normalise_status(job["status"])
    for resource in job.get("resource") or []:
        if isinstance(resource, dict):
            for key in ("status", "code"):
                if key in resource and isinstance(resource[key], str):
                    resource[key] = normalise_status(resource[key])
            file = resource.get("file")
            if isinstance(file, dict) and "status" in file:
                file["status"] = normalise_status(file["status"])
    return job


def normalise_read_job(job: Any) -> dict[str, Any]:
    """A copy of a Bulk Read job's details (one item of Zoho's ``data`` list) with its ``state`` normalised
    and copied to ``status``, after checking the shape the readers rely on."""
    if not isinstance(job, dict):
        raise ZohoMalformedResponseError(f"expected a JSON object with the job's details, got {_json_kind(job)}")
    _expect(job.get("state"), (str,), "state", "a string")
    _expect(job.get("status"), (str,), "status", "a string")
    result = job.get("result")
    _expect(result, (dict,), "result", "a JSON object")
    for key, kinds, expected in (("download_url", (str,), "a string"), ("page", (int,), "a number"),
                                 ("count", (int,), "a number"), ("per_page", (int,), "a number"),
                                 ("more_records", (bool,), "true or false"),
                                 ("next_page_token", (str,), "a string")):
        _expect((result or {}).get(key), kinds, f"result.{key}", expected)
    job = copy.deepcopy(job)
    job["status"] = normalise_status(job.get("state") if job.get("state") is not None else job.get("status"))
    return job


@dataclass(frozen=True)
class ReadPage:
    """What a COMPLETED Bulk Read job says of its page: where to download it and how to ask for the next."""

    page: int
    count: int
    download_url: str
    more_records: bool
    next_page_token: str | None


def read_page(job: dict[str, Any], job_id: str) -> ReadPage:
    """The page of a COMPLETED Bulk Read job, or :class:`ZohoMalformedResponseError` naming what is missing."""
    result = job.get("result") or {}
    if not result.get("download_url"):
        raise ZohoMalformedResponseError(
            "expected result.download_url in the details of a COMPLETED Bulk Read job", job_id=job_id)
    more = bool(result.get("more_records"))
    return ReadPage(page=int(result.get("page") or 1), count=int(result.get("count") or 0),
                    download_url=result["download_url"], more_records=more,
                    next_page_token=result.get("next_page_token") if more else None)


def is_complete(job: dict[str, Any]) -> bool:
    return normalise_status(job.get("status")) == COMPLETED


def download_url(job: dict[str, Any]) -> str | None:
    result = job.get("result") or {}
    return result.get("download_url") if isinstance(result, dict) else None


def raise_if_failed(job: dict[str, Any], job_id: str, kind: str = "Bulk Write") -> None:
    """Raise :class:`BulkJobFailedError` with Zoho's code and message if the job or a resource failed."""
    if normalise_status(job.get("status")) == FAILED:
        # Zoho's reason is on the job, in its result, or (Bulk Read) in an "error" object.
        result = job.get("result") if isinstance(job.get("result"), dict) else {}
        error = job.get("error") if isinstance(job.get("error"), dict) else {}
        detail = (job.get("message") or error.get("message") or result.get("message")
                  or job.get("code") or error.get("code") or result.get("code"))
        raise BulkJobFailedError(
            f"Zoho reports the {kind} job FAILED: {detail or 'no detail'}",
            code=job.get("code") or error.get("code") or result.get("code"),
            job_id=job_id,
        )
    for index, resource in enumerate(job.get("resource") or []):
        if not isinstance(resource, dict):
            continue
        file = resource.get("file") or {}
        states = {normalise_status(resource.get("status")), normalise_status(file.get("status"))}
        if FAILED in states:
            module = (resource.get("module") or {})
            name = module.get("api_name") if isinstance(module, dict) else module
            detail = resource.get("message") or resource.get("code") or "no detail"
            raise BulkJobFailedError(
                f"resource {index} ({name or 'unknown module'}) of the Bulk Write job FAILED: {detail}",
                code=resource.get("code"),
                job_id=job_id,
                file_name=file.get("name"),
            )


def expected_counts(job: dict[str, Any]) -> dict[str, int] | None:
    """Rows per status Zoho claims, summed over resources; ``None`` when Zoho gives no counts."""
    totals = {"ADDED": 0, "UPDATED": 0, "SKIPPED": 0}
    seen = False
    for resource in job.get("resource") or []:
        file = (resource or {}).get("file") or {}
        for status, key in (("ADDED", "added_count"), ("UPDATED", "updated_count"), ("SKIPPED", "skipped_count")):
            if isinstance(file.get(key), int):
                totals[status] += file[key]
                seen = True
    return totals if seen else None


def job_id_from_download_url(url: str) -> str | None:
    """Zoho's result URLs end in ``/bulk-write/<job_id>/<job_id>.zip``; the id names the rows loaded.

    ``None`` for anything else, including a URL ``urlsplit`` cannot read: the download itself then
    says what is wrong with it."""
    if not isinstance(url, str) or "\\" in url:
        return None
    try:
        path = urlsplit(url).path
    except ValueError:  # "Invalid IPv6 URL"
        return None
    match = re.search(r"/bulk-write/(\d+)/[^/]*\.zip$", path)
    return match.group(1) if match else None
