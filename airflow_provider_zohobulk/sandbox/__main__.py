"""``python -m airflow_provider_zohobulk.sandbox``: run the sandbox in the foreground.

Prints ``ZOHO_SANDBOX_URL=...``, ``ZOHO_SANDBOX_ADMIN_TOKEN=...`` (this run's secret for the admin
calls: ``ZohoSandbox.attach(url, admin_token=...)``, or export the line as it is) and with
``--seed-job`` ``ZOHO_SANDBOX_JOB_ID=...`` on stdout, flushed at once, so a script can start it in the
background and parse those lines; request logs go to stderr, one line each, without tokens or secrets
(paths only, never query strings). ``--read-records Leads=1000000`` (repeatable) sizes a Bulk Read module.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from airflow_provider_zohobulk.errors import ZohoConfigurationError
from airflow_provider_zohobulk.sandbox.results import sample_leads_csv
from airflow_provider_zohobulk.sandbox.server import ADMIN_TOKEN_ENV, ZohoSandbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_zohobulk.sandbox",
                                     description="A local Zoho CRM Bulk Write and Bulk Read emulator.")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="loopback only")
    parser.add_argument("--seed-job", action="store_true",
                        help="create a completed job from ~1000 generated Leads with some failing rows")
    parser.add_argument("--seed-rows", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--job-step-seconds", type=float, default=0.0,
                        help="sandbox seconds per job step ADDED -> IN PROGRESS -> COMPLETED")
    parser.add_argument("--state-file", help="keep jobs, uploads and tokens in this JSON file across restarts")
    parser.add_argument("--files-dir", help="the folder create_job_from_zip may serve paths from "
                                            "(without it only zip bytes sent in the call are taken)")
    parser.add_argument("--read-records", action="append", default=[], metavar="MODULE=N",
                        help="generate N records in a Bulk Read module (Leads, Contacts, Deals); repeatable")
    parser.add_argument("--read-seed", type=int, default=0, help="the seed of the generated Bulk Read records")
    args = parser.parse_args(argv)
    read_records = []
    for item in args.read_records:
        module, _, count = item.partition("=")
        if not count.isdigit():
            parser.error(f"--read-records takes MODULE=N, such as Leads=1000000, not {item!r}")
        read_records.append((module, int(count)))

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    try:
        sandbox = ZohoSandbox(args.host, args.port, job_step_seconds=args.job_step_seconds,
                              state_file=args.state_file, files_dir=args.files_dir)
        for module, count in read_records:
            sandbox.seed_module(module, count, seed=args.read_seed)
        sandbox.start()
    except (ZohoConfigurationError, OSError) as exc:  # a non-loopback host, a port in use, a missing folder
        parser.error(str(exc))
    print(f"ZOHO_SANDBOX_URL={sandbox.url}", flush=True)
    print(f"{ADMIN_TOKEN_ENV}={sandbox.admin_token}", flush=True)
    if args.seed_job:
        job_id = sandbox.create_job_from_csv(sample_leads_csv(args.seed_rows))
        print(f"ZOHO_SANDBOX_JOB_ID={job_id}", flush=True)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=sandbox.stop, daemon=True).start()  # shutdown() must not run on the serving thread

    signal.signal(signal.SIGTERM, stop)
    try:
        sandbox.serve_forever()
    except KeyboardInterrupt:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
