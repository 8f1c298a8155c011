"""Bulk Write job details: one reading of Zoho's several spellings, shared by hook, sensor and trigger.

Zoho spells the same state ``IN PROGRESS`` or ``INPROGRESS`` depending on the source, and nests the
interesting parts (per-resource status, file counts, download URL) a few levels deep. Every caller
reads job details through these functions so that the variants are handled in one place.
"""

from __future__ import annotations

import copy
from typing import Any

from airflow_provider_zohobulk.errors import BulkJobFailedError

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


def normalise_job(job: dict[str, Any]) -> dict[str, Any]:
    """A copy of the job details with every status (job, resources, files) normalised."""
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


def is_complete(job: dict[str, Any]) -> bool:
    return normalise_status(job.get("status")) == COMPLETED


def download_url(job: dict[str, Any]) -> str | None:
    result = job.get("result") or {}
    return result.get("download_url") if isinstance(result, dict) else None


def raise_if_failed(job: dict[str, Any], job_id: str) -> None:
    """Raise :class:`BulkJobFailedError` with Zoho's code and message if the job or a resource failed."""
    if normalise_status(job.get("status")) == FAILED:
        raise BulkJobFailedError(
            f"Zoho reports the Bulk Write job FAILED: {job.get('message') or job.get('code') or 'no detail'}",
            code=job.get("code"),
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
    """Zoho's result URLs end in ``/bulk-write/<job_id>/<job_id>.zip``; the id names the rows loaded."""
    import re
    from urllib.parse import urlsplit

    match = re.search(r"/bulk-write/(\d+)/[^/]*\.zip$", urlsplit(url).path)
    return match.group(1) if match else None
