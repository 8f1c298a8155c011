"""What every Zoho Bulk operator does the same way: the Asset of its sink, the Asset event, waiting for a job
by polling, and OpenLineage facets.

Kept in one place so that the Bulk Write result operator and the Bulk Read export operator cannot drift
apart on any of them (one Asset URI rule, one timeout message, one lineage namespace).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import Asset

from airflow_provider_zohobulk import bulk_job
from airflow_provider_zohobulk.errors import BulkJobNotCompleteError
from airflow_provider_zohobulk.sinks.base import ResultSink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook


def asset_for(sink: ResultSink) -> Asset | None:
    """The Asset a sink's destination stands for, stable across runs (see ``parse_time_asset_uri``)."""
    uri = sink.parse_time_asset_uri()
    if uri is None:
        return None
    try:
        return Asset(uri=uri)
    except Exception:  # a scheme Airflow refuses: no Asset rather than a broken DAG
        return None


def record_asset_event(outlets: Iterable[Any] | None, context: Context, extra: dict[str, Any]) -> None:
    """Put the small facts downstream DAGs want (what, how many rows, where) on each Asset outlet's event."""
    for outlet in outlets or []:
        if isinstance(outlet, Asset):
            context["outlet_events"][outlet].extra = extra


def poll_until_complete(get_job: Callable[[str], dict[str, Any]], job_id: str, *, kind: str, poll_interval: float,
                        wait_timeout: float, log: logging.Logger) -> dict[str, Any]:
    """Ask for the job's details every ``poll_interval`` seconds until it is COMPLETED; raise
    :class:`BulkJobFailedError` (Zoho's code) if it FAILED, :class:`BulkJobNotCompleteError` after
    ``wait_timeout`` seconds. ``kind`` ("Bulk Write", "Bulk Read") names the job in messages."""
    deadline = time.monotonic() + wait_timeout
    while True:
        job = get_job(job_id)
        bulk_job.raise_if_failed(job, job_id, kind)
        if bulk_job.is_complete(job):
            return job
        if time.monotonic() + poll_interval > deadline:
            raise BulkJobNotCompleteError(
                f"the {kind} job was still {job.get('status')!r} after waiting {wait_timeout:.0f}s", job_id=job_id)
        log.info("Zoho %s job %s is %s; checking again in %.0fs", kind, job_id, job.get("status"), poll_interval)
        time.sleep(poll_interval)


def lineage(hook: ZohoCrmHook, input_name: str, sink: ResultSink) -> Any:
    """OpenLineage facets (the OpenLineage provider installed): the Zoho side as input, named
    ``input_name`` in the namespace of the connection's API domain, the sink's destination as output."""
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    source = Dataset(namespace=f"zoho-crm://{urlsplit(hook.endpoints.api_domain).netloc}", name=input_name)
    outputs = []
    if (asset := asset_for(sink)) is not None:
        parts = urlsplit(asset.uri)
        outputs.append(Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=parts.path or "/"))
    return OperatorLineage(inputs=[source], outputs=outputs)
