#!/usr/bin/env bash
# Health of a running ITS Camera AI system: a `serve all`, an `up` instance or deployed pods.
#
#   scripts/production_health_check.sh --grpc 127.0.0.1:50051 --http 127.0.0.1:8000
#   scripts/production_health_check.sh --up-dir var/up
#   scripts/production_health_check.sh --grpc svc:50051 --cacert ca.crt --cert c.crt --key c.key \
#       --http svc:8000 --token "$METRICS_TOKEN"
#
# Checks, one PASS/FAIL line each (scripts/health_probe.py does them):
#   every gRPC health service SERVING (grpc.health.v1 List, TLS with --cacert/--cert/--key);
#   /live 200; /health 200 with every dependency up; /metrics carrying the families of the
#   units the process hosts (bearer --token if /metrics is guarded); each certificate in
#   tls_certificate_expiry_timestamp_seconds valid for more than 14 days.
# With no address: --up-dir var/up when up.json is there, else 127.0.0.1:50051 and :8000.
# Python: ${ITS_PYTHON:-.venv/bin/python} (needs the project installed).
#
# Exit codes: 0 every check passed; 1 at least one check failed; 2 bad usage or no Python.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

die() {
  echo "production_health_check: $*" >&2
  exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
python=${ITS_PYTHON:-.venv/bin/python}
probe="$here/health_probe.py"
grpc_targets=()
http_targets=()
up_dir=""
token=""
tls=()

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --grpc | --http | --up-dir | --token | --cacert | --cert | --key)
      (($# >= 2)) || die "$1 needs a value"
      case "$1" in
        --grpc) grpc_targets+=("$2") ;;
        --http) http_targets+=("$2") ;;
        --up-dir) up_dir=$2 ;;
        --token) token=$2 ;;
        *) [[ -r "$2" ]] || die "$1: cannot read $2"; tls+=("$1" "$2") ;;
      esac
      shift 2 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[[ -x "$python" ]] || die "no Python at $python (set ITS_PYTHON to the project's venv python)"

if [[ -z "$up_dir" && ${#grpc_targets[@]} -eq 0 && ${#http_targets[@]} -eq 0 ]]; then
  if [[ -f var/up/up.json ]]; then
    up_dir=var/up
  else
    grpc_targets=(127.0.0.1:50051)
    http_targets=(127.0.0.1:8000)
  fi
fi

if [[ -n "$up_dir" ]]; then
  endpoints=$("$python" "$probe" endpoints --up-dir "$up_dir") || die "cannot read $up_dir"
  while read -r kind address; do
    if [[ "$kind" == grpc ]]; then grpc_targets+=("$address"); else http_targets+=("$address"); fi
  done <<<"$endpoints"
fi

passed=0
failed=0
run_probe() {
  # The probe prints its own PASS/FAIL lines; count them.
  local output status=0
  output=$("$python" "$probe" "$@" 2>&1) || status=$?
  [[ -n "$output" ]] && echo "$output"
  passed=$((passed + $(grep -c '^PASS ' <<<"$output" || true)))
  failed=$((failed + $(grep -c '^FAIL ' <<<"$output" || true)))
  if ((status != 0)) && ! grep -q '^FAIL ' <<<"$output"; then
    failed=$((failed + 1))
    echo "FAIL $1 $2: the probe itself failed (exit $status)"
  fi
}

for target in "${grpc_targets[@]}"; do
  run_probe grpc "$target" "${tls[@]}"
done
token_args=()
[[ -n "$token" ]] && token_args=(--token "$token")
for target in "${http_targets[@]}"; do
  run_probe http "$target" "${token_args[@]}"
done

echo "SUMMARY: $passed passed, $failed failed"
((failed == 0))
