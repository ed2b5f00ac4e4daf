#!/usr/bin/env bash
# Validate the Grafana dashboards (helm/its-camera-ai/files/dashboards/).
#
#   scripts/validate_dashboards.sh                            # structure only
#   scripts/validate_dashboards.sh --prometheus http://127.0.0.1:9090
#   scripts/validate_dashboards.sh --dir path/to/dashboards
#
# Structure: every dashboard JSON parses, uids are unique, panel ids are unique within each
# dashboard, each has the DS_PROMETHEUS datasource variable. With --prometheus URL, every
# panel query ($namespace and $camera as "All", $__rate_interval 15s) is evaluated by that
# Prometheus's /api/v1/query and each one returning no data is listed (NO DATA).
# scripts/dashboards.py does the work (the dashboards test uses the same code).
# Python: ${ITS_PYTHON:-.venv/bin/python}.
#
# Exit codes: 0 all valid (and every query answered); 1 a structural problem, or a query
# rejected or without data; 2 bad usage, no Python, or Prometheus unreachable.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

die() {
  echo "validate_dashboards: $*" >&2
  exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
python=${ITS_PYTHON:-.venv/bin/python}
args=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --prometheus | --dir)
      (($# >= 2)) || die "$1 needs a value"
      args+=("$1" "$2")
      shift 2 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ -x "$python" ]] || die "no Python at $python (set ITS_PYTHON to the project's venv python)"

exec "$python" "$here/dashboards.py" "${args[@]}"
