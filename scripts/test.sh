#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k sandbox -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
export PYTHONUNBUFFERED=1
.venv/bin/ruff check airflow_provider_zohobulk dags tests benchmarks scripts
exec .venv/bin/python -m pytest "$@"
