"""DAG for the test that machines starting together mint one token (``tests/e2e/test_celery_scale_out.py``).

``zoho_celery_token_race``: ``tasks`` mapped tasks, spread over the workers, wait at a barrier (a file
each in ``barrier_dir``, on the disk the test machine's workers share) until all of them run, then ask
the connection ``conn_id`` for an access token at the same instant. Each returns a fingerprint of the
token it got, never the token.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from airflow.sdk import DAG, Param, task

with DAG(dag_id="zoho_celery_token_race", schedule=None, catchup=False, max_active_tasks=64, tags=["zoho", "test"],
         params={"conn_id": Param("zoho_crm_default", type="string"), "tasks": Param(6, type="integer"),
                 "barrier_dir": Param("", type="string")},
         doc_md=__doc__):

    @task
    def members(params=None) -> list[int]:
        return list(range(params["tasks"]))

    @task
    def token_at_the_barrier(member: int, params=None) -> str:
        from airflow_provider_zohobulk.hooks.zoho_crm import ZohoCrmHook

        barrier = Path(params["barrier_dir"])
        (barrier / f"{member}.arrived").touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.glob("*.arrived"))) < params["tasks"]:
            if time.monotonic() > deadline:
                raise TimeoutError("not every task reached the barrier within 120 s")
            time.sleep(0.05)
        token = ZohoCrmHook(params["conn_id"]).get_access_token()
        return hashlib.sha256(token.encode()).hexdigest()[:16]

    token_at_the_barrier.expand(member=members())
