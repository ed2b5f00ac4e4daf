#!/usr/bin/env bash
# Check the alerting rules with Prometheus's own tool.
#
#   scripts/test_alerting.sh                      # helm/its-camera-ai/files/alerts.yaml
#   scripts/test_alerting.sh --rules DIR          # a copy: DIR/alerts.yaml, DIR/alerts_test.yaml
#
# Runs `promtool check rules alerts.yaml` (syntax, expressions) and `promtool test rules
# alerts_test.yaml` (each alert's unit tests: fires within its for: window, not before).
# promtool comes from Debian's `prometheus` package (apt-get install -y prometheus).
#
# Exit codes: 0 both pass; 1 a check or a unit test failed; 2 bad usage, promtool missing or
# a rules file missing.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

die() {
  echo "test_alerting: $*" >&2
  exit 2
}

rules_dir="$(cd "$(dirname "$0")/.." && pwd)/helm/its-camera-ai/files"
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --rules)
      (($# >= 2)) || die "--rules needs a directory"
      rules_dir=$2
      shift 2 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

command -v promtool >/dev/null ||
  die "promtool is not installed: apt-get install -y prometheus (Debian) or put it on PATH"
for file in alerts.yaml alerts_test.yaml; do
  [[ -f "$rules_dir/$file" ]] || die "--rules: no $file in $rules_dir"
done

# promtool test resolves rule_files relative to the test file: run beside them.
cd "$rules_dir"
status=0
if promtool check rules alerts.yaml; then
  echo "PASS promtool check rules $rules_dir/alerts.yaml"
else
  echo "FAIL promtool check rules $rules_dir/alerts.yaml"
  status=1
fi
if promtool test rules alerts_test.yaml; then
  echo "PASS promtool test rules $rules_dir/alerts_test.yaml"
else
  echo "FAIL promtool test rules $rules_dir/alerts_test.yaml"
  status=1
fi
exit "$status"
