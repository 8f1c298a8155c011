"""The provider on Airflow's CeleryExecutor: mapped loads spread over two workers, and the faults of a
distributed deployment (a worker killed mid-load, the broker restarted, the triggerer restarted).

One cluster (``tests/fixtures/celery_airflow.py``) serves every test of the module, in order; each test
leaves it with two live workers. What each test checks is what a user scaling out relies on: every row
lands exactly once whatever the faults, Zoho sees one token mint for the connection however many
workers run its tasks (the ``oauth_cache=variable`` store), and no more Zoho calls at once than the
``zoho_bulk`` pool allows. The pool (4 slots) is smaller than the workers' 8 slots, so it is the pool
that limits, not the workers.
"""

from __future__ import annotations

import io
import json
import signal
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest

from airflow_provider_zohobulk.hooks.token_cache import cache_key
from airflow_provider_zohobulk.sandbox import sample_leads_csv
from tests.fixtures.celery_airflow import POOL, CeleryAirflow
from tests.helpers import job_detail_calls

# The per-test timeout counts the cluster's start in the first test; a loaded CI machine needs room.
pytestmark = [pytest.mark.celery, pytest.mark.airflow_e2e, pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow,
              pytest.mark.timeout(600)]

SCALE_DAG = "zoho_celery_scale_out"
WAIT_DAG = "zoho_celery_wait_and_load"
RACE_DAG = "zoho_celery_token_race"
#: The secrets of the connections the tests make at run time, which no log may show either.
CONNECTION_SECRETS: list[str] = []
LOADS = ("load_to_postgres", "load_to_s3", "load_to_files")
POOL_SLOTS = 4
JOBS = 20  # x 2 destinations = 40 mapped loads
MODULES = ["Leads", "Contacts"]


# --- helpers ------------------------------------------------------------------------------------------


def create_jobs(sandbox: Any, count: int, *, first_seed: int, rows: int = 120) -> dict[str, int]:
    """``count`` Bulk Write jobs of varied sizes: job id -> rows of its result (one per input row)."""
    sizes = [rows + 7 * n for n in range(count)]
    return {sandbox.create_job_from_csv(sample_leads_csv(size, seed=first_seed + n)): size
            for n, size in enumerate(sizes)}


def run_dag(cluster: CeleryAirflow, dag_id: str, conf: dict[str, Any], timeout: float = 300) -> str:
    """Trigger a run, wait for its end, fail with every task's state and log unless it succeeded."""
    run_id = cluster.airflow.trigger_dag(dag_id, conf)["dag_run_id"]
    run = cluster.airflow.wait_for_run(dag_id, run_id, timeout=timeout)
    assert run["state"] == "success", cluster.failure_report(dag_id, run_id)
    return run_id


def postgres_counts(cluster: CeleryAirflow, table: str) -> dict[str, tuple[int, int]]:
    """job id -> (rows, distinct (file, row number)) in the warehouse table."""
    with cluster.postgres.connect() as con:
        return {job: (rows, distinct) for job, rows, distinct in con.execute(
            f'SELECT job_id, count(*), count(DISTINCT (file_name, row_number)) FROM "{table}" GROUP BY job_id')}


def s3_objects(cluster: CeleryAirflow, bucket: str, prefix: str) -> dict[str, int]:
    """key -> Parquet rows, for every object under ``prefix``."""
    client = cluster.s3.client()
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return {key: pq.ParquetFile(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read())).metadata.num_rows
            for key in keys}


def unfinished_uploads(cluster: CeleryAirflow, bucket: str) -> list[str]:
    """Multipart uploads started and neither completed nor aborted (staged data left in the bucket)."""
    return [upload["Key"] for upload in cluster.s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def max_overlap(intervals: list[tuple[str, str]]) -> int:
    """The most intervals open at one instant (ISO timestamps of one format sort as times; an end at the
    instant another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def pool_intervals(cluster: CeleryAirflow, dag_id: str, run_id: str) -> list[tuple[str, str]]:
    """(start, end) of every try of every task of the run that ran in the ``zoho_bulk`` pool."""
    intervals = []
    for ti in cluster.task_instances(dag_id, run_id):
        if ti["pool"] != POOL or not ti["start_date"]:
            continue
        tries = cluster.tries(dag_id, run_id, ti["task_id"], ti["map_index"]) if ti["try_number"] > 1 else [ti]
        intervals += [(t["start_date"], t["end_date"]) for t in tries if t["start_date"] and t["end_date"]]
    return intervals


def new_zoho_connection(cluster: CeleryAirflow) -> tuple[str, str, str]:
    """A Zoho connection made at run time, with credentials nothing has cached: (conn id, client id, the
    token cache key of its credentials)."""
    sandbox = cluster.sandbox
    suffix = uuid.uuid4().hex[:8]
    client_id, secret, refresh = f"client-{suffix}", f"secret-{suffix}", f"refresh-{suffix}"
    sandbox.add_client(client_id, secret, refresh)
    CONNECTION_SECRETS.extend((secret, refresh))
    conn_id = f"zoho_{suffix}"
    cluster.airflow.api("POST", "/connections", expect=201, json={
        "connection_id": conn_id, "conn_type": "zoho_crm", "login": client_id, "password": secret,
        "extra": json.dumps({**sandbox.connection_extra(), "refresh_token": refresh, "oauth_cache": "variable"})})
    return conn_id, client_id, cache_key(sandbox.url, client_id, secret, refresh)


def variable_keys(cluster: CeleryAirflow) -> list[str]:
    return [v["key"] for v in cluster.airflow.api("GET", "/variables", params={"limit": 1000})["variables"]]


def assert_one_token(cluster: CeleryAirflow) -> None:
    minted = cluster.sandbox.stats()["tokens_minted_by_client"].get(cluster.sandbox.client_id, 0)
    assert minted <= 1, f"Zoho minted {minted} access tokens for one connection; the variable store should share one"


@pytest.fixture
def table() -> str:
    return f"celery_results_{uuid.uuid4().hex[:10]}"


# --- the tests, in the order they run -----------------------------------------------------------------


def test_mapped_loads_spread_over_both_workers_each_row_once(celery_airflow: CeleryAirflow, table: str) -> None:
    cluster, sandbox = celery_airflow, celery_airflow.sandbox
    jobs = create_jobs(sandbox, JOBS, first_seed=100)
    assert all(sum(resource["file"]["total_count"] for resource in sandbox.job_details(job)["resource"]) == rows
               for job, rows in jobs.items())
    bucket = cluster.s3.new_bucket("scale-out")
    started = time.monotonic()
    run_id = run_dag(cluster, SCALE_DAG, {"job_ids": list(jobs), "targets": ["postgres", "s3"], "modules": MODULES,
                                          "bucket": bucket, "table": table})
    elapsed = time.monotonic() - started

    instances = cluster.task_instances(SCALE_DAG, run_id)
    loads = [ti for ti in instances if ti["task_id"] in LOADS and ti["map_index"] >= 0]
    assert len(loads) == 2 * JOBS
    assert {ti["state"] for ti in loads} == {"success"}
    # Both workers took loads: the run really was distributed. (Which worker takes how many is Celery's call.)
    by_worker = Counter(ti["hostname"] for ti in loads)
    assert set(by_worker) == set(cluster.workers), by_worker
    # The Zoho-calling tasks stayed within the pool, though the workers had room for twice as many.
    assert all(ti["pool"] == POOL for ti in loads)
    assert max_overlap(pool_intervals(cluster, SCALE_DAG, run_id)) <= POOL_SLOTS
    # And Zoho's side agrees: the sandbox never served more Bulk API calls at once than the pool has slots.
    in_flight = sandbox.stats()["max_bulk_calls_in_flight"]
    assert 1 <= in_flight <= POOL_SLOTS, in_flight

    # Every row once in PostgreSQL, per job.
    assert postgres_counts(cluster, table) == {job: (rows, rows) for job, rows in jobs.items()}
    # One object per job in S3 with all its rows, and nothing staged left over.
    assert s3_objects(cluster, bucket, "bulk_write/") == {
        f"bulk_write/{job}/Leads-Leads.parquet": rows for job, rows in jobs.items()}
    # The Bulk Read exports: one page each, every record of the module.
    exported = s3_objects(cluster, bucket, "bulk_read/")
    assert exported == {f"bulk_read/{module}/{module}-00001.parquet":
                        sandbox.read_records(module, fields=["Id"], limit=0)["matching"] for module in MODULES}
    assert unfinished_uploads(cluster, bucket) == []

    # Forty loads over two workers, one token: the first task minted it, every other one found it shared.
    assert sandbox.stats()["tokens_minted_by_client"] == {sandbox.client_id: 1}
    print(f"\n{2 * JOBS} loads + {len(MODULES)} exports on {len(cluster.workers)} workers in {elapsed:.0f}s "
          f"({2 * JOBS / elapsed * 60:.0f} loads/min); by worker: {dict(by_worker)}")


def test_tasks_starting_together_on_both_workers_mint_one_token(celery_airflow: CeleryAirflow, tmp_path: Path) -> None:
    """No task runs first to warm the cache: every task asks at once, on both workers, while Zoho is slow."""
    cluster, sandbox = celery_airflow, celery_airflow.sandbox
    tasks = 2 * cluster.worker_concurrency
    conn_id, client_id, _ = new_zoho_connection(cluster)
    # Each mint takes 3 s: without an agreement between machines, both workers' first tasks would mint.
    sandbox.add_fault("slow_answer", count=tasks, path_prefix="/oauth/v2/token", delay=3.0)
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    run_id = run_dag(cluster, RACE_DAG, {"conn_id": conn_id, "tasks": tasks, "barrier_dir": str(barrier)})

    instances = [ti for ti in cluster.task_instances(RACE_DAG, run_id) if ti["task_id"] == "token_at_the_barrier"]
    assert len(instances) == tasks
    assert {ti["hostname"] for ti in instances} == set(cluster.workers)  # all at once, so both workers ran some
    fingerprints = {cluster.airflow.api("GET", f"/dags/{RACE_DAG}/dagRuns/{run_id}/taskInstances/"
                                               "token_at_the_barrier/xcomEntries/return_value",
                                        params={"map_index": ti["map_index"], "deserialize": "true"})["value"]
                    for ti in instances}
    assert len(fingerprints) == 1, fingerprints  # every task got the same token
    assert sandbox.stats()["tokens_minted_by_client"][client_id] == 1
    sandbox.clear_faults()
    # The claim the machines agreed through is released; only the token is left in the store.
    assert not [key for key in variable_keys(cluster) if key.endswith("_minting")]


def test_a_claim_left_by_a_machine_that_died_lapses(celery_airflow: CeleryAirflow, tmp_path: Path) -> None:
    """A machine killed while minting leaves its claim; the others wait for its lease to end, then one mints."""
    cluster, sandbox = celery_airflow, celery_airflow.sandbox
    conn_id, client_id, key = new_zoho_connection(cluster)
    claim, lapses_at = f"zohobulk_token_{key}_minting", time.time() + 15
    cluster.airflow.api("POST", "/variables", expect=201, json={
        "key": claim, "value": json.dumps({"owner": "a-machine-that-died", "until": lapses_at})})
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    run_id = run_dag(cluster, RACE_DAG, {"conn_id": conn_id, "tasks": 2, "barrier_dir": str(barrier)})

    assert sandbox.stats()["tokens_minted_by_client"][client_id] == 1
    ends = [datetime.fromisoformat(ti["end_date"]).timestamp() for ti in cluster.task_instances(RACE_DAG, run_id)
            if ti["task_id"] == "token_at_the_barrier"]
    assert len(ends) == 2 and min(ends) >= lapses_at  # nobody minted while the dead machine's claim held
    keys = variable_keys(cluster)
    assert f"zohobulk_token_{key}" in keys and claim not in keys


def test_worker_killed_mid_load_is_retried_on_the_other_worker(celery_airflow: CeleryAirflow, table: str) -> None:
    cluster, sandbox = celery_airflow, celery_airflow.sandbox
    jobs = create_jobs(sandbox, 1, first_seed=200, rows=1000)
    (job_id, rows), = jobs.items()
    bucket = cluster.s3.new_bucket("worker-killed")
    # The three loads' downloads crawl (512 bytes every half second, about 15 s), so they are surely
    # mid-load when the worker dies; the retries' downloads are not slowed.
    download_path = urlsplit(sandbox.job_details(job_id)["result"]["download_url"]).path
    sandbox.add_fault("slow_body", count=len(LOADS), path_prefix=download_path, delay=0.5, chunk_size=512)
    run_id = cluster.airflow.trigger_dag(SCALE_DAG, {"job_ids": [job_id], "targets": ["postgres", "s3", "files"],
                                                     "bucket": bucket, "table": table})["dag_run_id"]

    def every_load_downloading() -> dict[str, dict[str, Any]] | None:
        running = {ti["task_id"]: ti for ti in cluster.task_instances(SCALE_DAG, run_id)
                   if ti["task_id"] in LOADS and ti["state"] == "running" and ti["hostname"]}
        downloads = [r for r in sandbox.stats()["requests"] if r["path"] == download_path and r["status"] == 200]
        return running if len(running) == len(LOADS) and len(downloads) == len(LOADS) else None
    running = cluster.airflow.wait_for("every load to be downloading", every_load_downloading, timeout=120,
                                       interval=0.5)

    victim = running["load_to_postgres"]["hostname"]
    survivor = next(name for name in cluster.workers if name != victim)
    killed = sorted(task for task, ti in running.items() if ti["hostname"] == victim)
    cluster.stop(victim, signal.SIGKILL)
    try:
        run = cluster.airflow.wait_for_run(SCALE_DAG, run_id, timeout=240)
    finally:
        cluster.start_workers(victim)  # the next tests want two workers again
    assert run["state"] == "success", cluster.failure_report(SCALE_DAG, run_id)

    for task in killed:
        tries = cluster.tries(SCALE_DAG, run_id, task, 0)
        assert [(t["try_number"], t["hostname"]) for t in tries] == [(1, victim), (2, survivor)], tries
        assert tries[0]["state"] != "success" and tries[1]["state"] == "success", tries

    # Exactly once in PostgreSQL: the killed try's open COPY transaction died with its connection.
    assert postgres_counts(cluster, table) == {job_id: (rows, rows)}
    with cluster.postgres.connect() as con:
        idle_in_transaction = con.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state LIKE 'idle in transaction%%'",
            [cluster.postgres.dbname]).fetchone()[0]
    assert idle_in_transaction == 0
    # Exactly one file with every row, and no staging file of the killed try anywhere in the lake.
    lake = cluster.airflow.output_dir / "lake"
    files = sorted(str(path.relative_to(lake)) for path in lake.rglob("*") if path.is_file())
    assert files == [f"{job_id}/Leads-Leads.parquet"], files
    assert pq.ParquetFile(lake / job_id / "Leads-Leads.parquet").metadata.num_rows == rows
    # Exactly one object in S3. A process killed mid-upload cannot abort its multipart upload: if the
    # killed try had started one (the sink opens it with the first decoded batch, so a kill during a small
    # download finds none yet), it stays, invisible, until the bucket's lifecycle rule
    # (AbortIncompleteMultipartUpload, see the README) aborts it. Never one of a finished load.
    key = f"bulk_write/{job_id}/Leads-Leads.parquet"
    assert s3_objects(cluster, bucket, "bulk_write/") == {key: rows}
    assert set(unfinished_uploads(cluster, bucket)) <= ({key} if "load_to_s3" in killed else set())
    assert_one_token(cluster)


def test_broker_restart_mid_run(celery_airflow: CeleryAirflow, table: str) -> None:
    cluster, sandbox = celery_airflow, celery_airflow.sandbox
    jobs = create_jobs(sandbox, 10, first_seed=300)
    bucket = cluster.s3.new_bucket("broker-restart")
    run_id = cluster.airflow.trigger_dag(SCALE_DAG, {"job_ids": list(jobs), "targets": ["postgres", "s3"],
                                                     "bucket": bucket, "table": table})["dag_run_id"]

    def some_loads_done() -> bool:
        done = [ti for ti in cluster.task_instances(SCALE_DAG, run_id)
                if ti["task_id"] in LOADS and ti["state"] == "success"]
        return len(done) >= 3
    cluster.airflow.wait_for("the first loads to finish", some_loads_done, timeout=180, interval=0.5)
    cluster.redis.stop()
    time.sleep(5)  # down long enough for the scheduler and the workers to notice
    cluster.redis.start()

    run = cluster.airflow.wait_for_run(SCALE_DAG, run_id, timeout=300)
    assert run["state"] == "success", cluster.failure_report(SCALE_DAG, run_id)
    loads = [ti for ti in cluster.task_instances(SCALE_DAG, run_id) if ti["task_id"] in LOADS and ti["map_index"] >= 0]
    # All done, and none spent a retry on the outage: the fixture's BROKER_OUTAGE_SETTINGS make the
    # scheduler retry a publish the broker refused instead of failing the task (see the README).
    assert [(ti["state"], ti["try_number"]) for ti in loads] == [("success", 1)] * 20
    assert postgres_counts(cluster, table) == {job: (rows, rows) for job, rows in jobs.items()}
    assert s3_objects(cluster, bucket, "bulk_write/") == {
        f"bulk_write/{job}/Leads-Leads.parquet": rows for job, rows in jobs.items()}
    assert unfinished_uploads(cluster, bucket) == []
    assert_one_token(cluster)


def test_triggerer_restarts_while_loads_are_deferred(celery_airflow: CeleryAirflow, table: str) -> None:
    cluster, sandbox = celery_airflow, celery_airflow.sandbox
    # Jobs that stay ADDED, then IN PROGRESS, for 300 sandbox seconds each: only the test moves them on.
    sandbox.configure(job_step_seconds=300)
    try:
        jobs = create_jobs(sandbox, 4, first_seed=400)
    finally:
        sandbox.configure(job_step_seconds=0)
    run_id = cluster.airflow.trigger_dag(WAIT_DAG, {"job_ids": list(jobs), "table": table})["dag_run_id"]

    def deferred_under_a_new_triggerer(previous: set[int]) -> Any:
        def probe() -> set[int] | None:
            tis = [ti for ti in cluster.task_instances(WAIT_DAG, run_id) if ti["task_id"] == "wait_and_load"]
            if len(tis) != len(jobs) or any(ti["state"] != "deferred" or not ti.get("triggerer_job") for ti in tis):
                return None
            triggerers = {ti["triggerer_job"]["id"] for ti in tis}
            return triggerers if not triggerers & previous else None
        return probe

    first = cluster.airflow.wait_for("every wait_and_load task to be deferred", deferred_under_a_new_triggerer(set()),
                                     timeout=180)
    seen = set(first)
    for sig in (signal.SIGTERM, signal.SIGKILL):  # a deployment's restart, then a crash
        cluster.restart_triggerer(sig)
        seen |= cluster.airflow.wait_for(f"a new triggerer to take the triggers after {sig.name}",
                                         deferred_under_a_new_triggerer(seen), timeout=120)
        polls = sum(job_detail_calls(sandbox, job) for job in jobs)
        cluster.airflow.wait_for("the new triggerer to poll every job", lambda p=polls: sum(
            job_detail_calls(sandbox, job) for job in jobs) >= p + len(jobs), timeout=60)

    sandbox.advance_clock(600)  # ADDED -> IN PROGRESS -> COMPLETED
    run = cluster.airflow.wait_for_run(WAIT_DAG, run_id, timeout=180)
    assert run["state"] == "success", cluster.failure_report(WAIT_DAG, run_id)
    loads = [ti for ti in cluster.task_instances(WAIT_DAG, run_id) if ti["task_id"] == "wait_and_load"]
    # Resumed from the deferral, not failed and retried.
    assert [(ti["state"], ti["try_number"]) for ti in loads] == [("success", 1)] * len(jobs)
    assert postgres_counts(cluster, table) == {job: (rows, rows) for job, rows in jobs.items()}
    assert_one_token(cluster)


def test_no_secret_in_any_log(celery_airflow: CeleryAirflow) -> None:
    """Every process's log and every task's, after all of the above."""
    logs = "".join(path.read_text(errors="replace") for path in Path(celery_airflow.log_dir).rglob("*.log"))
    assert logs
    for secret in (celery_airflow.sandbox.client_secret, celery_airflow.sandbox.refresh_token,
                   celery_airflow.postgres.password, *CONNECTION_SECRETS):
        assert secret not in logs
