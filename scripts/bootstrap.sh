#!/usr/bin/env bash
# Create .venv and install the package with what the demo (or, with "test", the test suite) needs.
# Idempotent and quick when nothing changed: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# pip here is configured with local wheel folders that do not all exist: drop its noise about them.
quiet_pip() {
  .venv/bin/python -m pip "$@" 2>&1 | { grep -v -e 'is ignored: it is neither a file nor a directory' \
    -e 'BuildBackendWarning' || true; }
  return "${PIPESTATUS[0]}"
}
stamp=".venv/.installed-${extras}-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== installing airflow-provider-zohobulk[${extras}] into .venv (first run takes a few minutes)"
  if [ "$extras" = "test" ]; then
    quiet_pip install --quiet -e ".[test]"
  else
    quiet_pip install --quiet -e .
  fi
  rm -f .venv/.installed-"${extras}"-*
  touch "$stamp"
fi

if [ "$extras" = "test" ]; then
  # The PostgreSQL server binaries (Debian's package); the tests start their own cluster on 127.0.0.1.
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "== installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  fi
  # Redis from Debian's package: the Celery broker of the scale-out tests, which start their own server on
  # 127.0.0.1 (a service the package may have started is not used).
  if ! command -v redis-server >/dev/null; then
    echo "== installing Redis from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
  fi
  # Azurite, Microsoft's Azure Storage emulator, from npm for the azure:// sink tests. 3.35.0 is the
  # newest release that runs on Node.js 20 (3.36 needs 21, 3.37 needs 22); Debian's nodejs suffices.
  azurite_version="3.35.0"
  azurite_dir=".cache/azurite"
  installed_azurite="$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' \
    "$azurite_dir/node_modules/azurite/package.json" 2>/dev/null | head -n 1 || true)"
  if [ "$installed_azurite" != "$azurite_version" ]; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
      echo "== installing Node.js and npm from Debian's packages"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq nodejs npm >/dev/null
    fi
    echo "== installing Azurite ${azurite_version} from npm into ${azurite_dir}"
    mkdir -p "$azurite_dir"
    npm install --prefix "$azurite_dir" --no-audit --no-fund --omit=dev --loglevel=error \
      "azurite@${azurite_version}" >/dev/null
  fi
  # Headless Chromium for the browser test (Debian's package: playwright drives it through
  # executable_path, so "playwright install", which downloads its own browser, is never needed).
  if [ ! -x /usr/bin/chromium ]; then
    echo "== installing Chromium from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium fonts-liberation >/dev/null
  fi
fi
