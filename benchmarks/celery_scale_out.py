"""Loads per minute on Airflow's CeleryExecutor with one worker, then two: what scaling out buys here.

    .venv/bin/python -m benchmarks.celery_scale_out            # 20 jobs x 2 destinations = 40 loads per run
    .venv/bin/python -m benchmarks.celery_scale_out --jobs 40 --repeat 2

Starts the same cluster as the scale-out tests (``tests.fixtures.celery_airflow.celery_airflow_cluster``:
Redis, PostgreSQL, moto's S3, the Zoho sandbox, api-server, scheduler, dag-processor, triggerer and two
Celery workers of ``--concurrency`` slots) with the ``zoho_bulk`` pool at Zoho's 10. A warm-up run, then
for each repeat: the ``zoho_celery_scale_out`` DAG over ``--jobs`` finished Bulk Write jobs into
PostgreSQL and S3 with worker-2 stopped, and again with both workers. Loads per minute are the mapped
loads divided by the run's duration as Airflow records it (queued to end: scheduling and start-up
included, as a user sees it). Every run is checked: all loads succeeded, every row once.

The jobs are small (about 150 rows): this measures the cost of a task on the cluster (scheduling,
process start, token, Zoho calls, commit), which dominates at Zoho's usual job sizes; the streaming
speed of one large load is ``benchmarks.run``'s subject.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from airflow_provider_zohobulk.sandbox import sample_leads_csv  # noqa: E402
from tests.fixtures.celery_airflow import CeleryAirflow, celery_airflow_cluster  # noqa: E402
from tests.fixtures.postgres import throwaway_postgres  # noqa: E402
from tests.fixtures.s3 import S3Server  # noqa: E402

DAG_ID = "zoho_celery_scale_out"
LOADS = ("load_to_postgres", "load_to_s3")


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def run_once(cluster: CeleryAirflow, jobs: int, seed: int) -> dict[str, Any]:
    """One run over ``jobs`` new jobs into PostgreSQL and S3; its figures, after checking every row landed once."""
    sizes = [120 + 7 * (n % 10) for n in range(jobs)]
    job_rows = {cluster.sandbox.create_job_from_csv(sample_leads_csv(size, seed=seed + n)): size
                for n, size in enumerate(sizes)}
    bucket = cluster.s3.new_bucket("bench")
    table = f"bench_{uuid.uuid4().hex[:10]}"
    run_id = cluster.airflow.trigger_dag(DAG_ID, {"job_ids": list(job_rows), "targets": ["postgres", "s3"],
                                                  "bucket": bucket, "table": table})["dag_run_id"]
    run = cluster.airflow.wait_for_run(DAG_ID, run_id, timeout=1800)
    if run["state"] != "success":
        raise SystemExit(f"run {run_id} ended {run['state']}:\n{cluster.failure_report(DAG_ID, run_id)}")
    loads = [ti for ti in cluster.task_instances(DAG_ID, run_id) if ti["task_id"] in LOADS and ti["map_index"] >= 0]
    with cluster.postgres.connect() as con:
        counts = dict(con.execute(f'SELECT job_id, count(*) FROM "{table}" GROUP BY job_id').fetchall())
    if counts != job_rows or len(loads) != 2 * jobs or {ti["state"] for ti in loads} != {"success"}:
        raise SystemExit(f"run {run_id}: rows or loads are not what was expected")
    seconds = _seconds(run["queued_at"], run["end_date"])
    durations = sorted(ti["duration"] for ti in loads)
    return {"loads": len(loads), "seconds": round(seconds, 1), "loads_per_minute": round(len(loads) / seconds * 60, 1),
            "median_task_seconds": round(durations[len(durations) // 2], 2),
            "workers_used": sorted({ti["hostname"] for ti in loads})}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20, help="Bulk Write jobs per run (two loads each)")
    parser.add_argument("--concurrency", type=int, default=4, help="slots per Celery worker")
    parser.add_argument("--pool-slots", type=int, default=10, help="the zoho_bulk pool (Zoho's bulk concurrency)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)

    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    results: list[dict[str, Any]] = []
    try:
        with throwaway_postgres() as postgres, celery_airflow_cluster(
                postgres, S3Server(f"http://{host}:{port}"), workers=2, worker_concurrency=args.concurrency,
                pool_slots=args.pool_slots, log_name="celery_benchmark") as cluster:
            run_once(cluster, 4, seed=1)  # warm-up: worker pools, token, DAG parsed in every process
            for repeat in range(args.repeat):
                cluster.stop("worker-2")
                one = run_once(cluster, args.jobs, seed=1000 * (repeat + 1))
                cluster.start_workers("worker-2")
                two = run_once(cluster, args.jobs, seed=1000 * (repeat + 1) + 500)
                for workers, figures in ((1, one), (2, two)):
                    results.append({"workers": workers, "slots": workers * args.concurrency, **figures})
                    print(json.dumps(results[-1]), flush=True)
    finally:
        moto.stop()
    print(f"\nTwo-core machine, {args.jobs * 2} loads per run, pool {args.pool_slots}, "
          f"{args.concurrency} slots per worker, {time.strftime('%Y-%m-%d')}:")
    print("| workers | slots | loads | seconds | loads/min | median task s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['slots']} | {r['loads']} | {r['seconds']} | {r['loads_per_minute']} | "
              f"{r['median_task_seconds']} |")


if __name__ == "__main__":
    main()
