#!/usr/bin/env bash
# The demo, from a fresh clone: installs, starts the local Zoho sandbox with a seeded Bulk Write job,
# runs the example DAG with Airflow's own runner (airflow dags test) into DuckDB and local Parquet,
# then prints the task's XCom summary and a few rows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh demo
ROOT="$PWD"
DEMO="$ROOT/.demo"
rm -rf "$DEMO/output" "$DEMO/sandbox.log"
mkdir -p "$DEMO"
export AIRFLOW_HOME="$DEMO/airflow"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export ZOHOBULK_OUTPUT_DIR="$DEMO/output"
export ZOHOBULK_TOKEN_CACHE_DIR="$DEMO/tokens"
PY="$ROOT/.venv/bin/python"

echo "== preparing Airflow's metadata database in $AIRFLOW_HOME"
"$ROOT/.venv/bin/airflow" db migrate >"$DEMO/db-migrate.log" 2>&1 || { cat "$DEMO/db-migrate.log"; exit 1; }

echo "== starting the Zoho sandbox"
"$PY" -u -m airflow_provider_zohobulk.sandbox --port 0 --seed-job >"$DEMO/sandbox.log" 2>&1 &
SANDBOX_PID=$!
trap 'kill $SANDBOX_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q '^ZOHO_SANDBOX_JOB_ID=' "$DEMO/sandbox.log" 2>/dev/null && break
  kill -0 $SANDBOX_PID 2>/dev/null || { cat "$DEMO/sandbox.log"; exit 1; }
  sleep 0.1
done
SANDBOX_URL=$(sed -n 's/^ZOHO_SANDBOX_URL=//p' "$DEMO/sandbox.log" | head -1)
JOB_ID=$(sed -n 's/^ZOHO_SANDBOX_JOB_ID=//p' "$DEMO/sandbox.log" | head -1)
echo "   sandbox at $SANDBOX_URL, Bulk Write job $JOB_ID"
# The sandbox's admin calls need the per-run token it printed; the client reads it from this variable,
# set for that one command only.
ADMIN_TOKEN=$(sed -n 's/^ZOHO_SANDBOX_ADMIN_TOKEN=//p' "$DEMO/sandbox.log" | head -1)
AIRFLOW_CONN_ZOHO_CRM_DEFAULT=$(ZOHO_SANDBOX_ADMIN_TOKEN="$ADMIN_TOKEN" "$PY" -c "
import json, sys
from airflow_provider_zohobulk.sandbox import ZohoSandbox
print(json.dumps(ZohoSandbox.attach(sys.argv[1]).airflow_connection()))" "$SANDBOX_URL")
export AIRFLOW_CONN_ZOHO_CRM_DEFAULT

echo "== airflow dags test zoho_bulk_write_result (job $JOB_ID)"
CONF=$(printf '{"job_id": "%s", "destination": "file://%s", "duckdb_database": "%s/zoho_bulk.duckdb"}' \
  "$JOB_ID" "$DEMO/output" "$DEMO/output")
"$ROOT/.venv/bin/airflow" dags test zoho_bulk_write_result -c "$CONF" >"$DEMO/dags-test.log" 2>&1 \
  || { tail -80 "$DEMO/dags-test.log"; echo "the DAG run failed; full log: $DEMO/dags-test.log"; exit 1; }
echo "   run log: $DEMO/dags-test.log"

"$PY" "$ROOT/scripts/show_demo_result.py" --output "$DEMO/output" --job-id "$JOB_ID"
