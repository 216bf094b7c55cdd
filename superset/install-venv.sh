#!/usr/bin/env bash
# Creates Superset's own virtualenv (default .venv-superset at the repository root) from the
# pinned set in superset/constraints.txt. Superset 6.1 pins SQLAlchemy < 2 and an older
# pandas, so it cannot live in .venv. Used by .ci/setup and by `dwh up` when it is missing;
# does nothing when the venv is complete for this constraints file.
#   install-venv.sh [VENV]           install if needed
#   install-venv.sh --check [VENV]   exit 0 if nothing needs installing
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
check=false
if [[ ${1:-} == --check ]]; then check=true; shift; fi
venv=${1:-$here/../.venv-superset}
python=${PYTHON:-python3}
stamp=$venv/.dwh-installed
if [[ -f $stamp && -x $venv/bin/gunicorn && -x $venv/bin/superset && ! $here/constraints.txt -nt $stamp ]]; then
    exit 0
fi
$check && exit 1
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
# rich, cachetools: superset imports them without declaring them (cachetools: every engine
# spec is loaded, aws_iam among them, on the first database import); flask-caching 2.3.1:
# newer releases pass ignore_delete_many_errors to SupersetMetastoreCache, which 6.1 rejects.
"$venv/bin/pip" install -q --disable-pip-version-check -c "$here/constraints.txt" \
    apache-superset==6.1.0 rich cachetools flask-caching==2.3.1 psycopg2-binary
touch "$stamp"
