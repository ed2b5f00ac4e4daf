#!/usr/bin/env bash
# Security checks before a release, as the production-readiness checklist runs them.
#
#   scripts/security_scan.sh              # everything
#   scripts/security_scan.sh --strict     # pip-audit must actually audit (passed through)
#   scripts/security_scan.sh --keys-only --repo DIR   # only the committed-secret scan, on DIR
#
# 1. scripts/security_scan.py: bandit (high severity) and pip-audit (known vulnerabilities);
#    --strict also fails when pip-audit could not reach its vulnerability service.
# 2. buf lint on protos/ (tools/buf/node_modules/.bin/buf, or buf on PATH).
# 3. No private key or API key committed: the files git tracks in --repo (default: this
#    repository) hold no PEM private key block and no issued API key (itsk_ + 43 characters).
#    Matches are named by file and line, never printed.
# Python: ${ITS_PYTHON:-.venv/bin/python}.
#
# Exit codes: 0 every check passed; 1 a check failed; 2 bad usage or a tool missing.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

die() {
  echo "security_scan: $*" >&2
  exit 2
}

root=$(cd "$(dirname "$0")/.." && pwd)
python=${ITS_PYTHON:-.venv/bin/python}
repo=$root
strict=()
keys_only=false
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --strict) strict=(--strict); shift ;;
    --keys-only) keys_only=true; shift ;;
    --repo)
      (($# >= 2)) || die "--repo needs a directory"
      repo=$2
      shift 2 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 || die "--repo: $repo is not a git repository"

status=0
result() { # result PASSED NAME
  if [[ "$1" == 0 ]]; then echo "PASS $2"; else echo "FAIL $2"; status=1; fi
}

# PEM private keys of any kind (PKCS#8, RSA, EC, OpenSSH, encrypted) and issued API keys
# (exactly 43 base64url characters after the prefix, as AdminService mints them).
secret_pattern='-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----|(^|[^A-Za-z0-9_-])itsk_[A-Za-z0-9_-]{43}([^A-Za-z0-9_-]|$)'
found=$(git -C "$repo" grep -nIE -e "$secret_pattern" | cut -d: -f1,2 || true)
if [[ -n "$found" ]]; then
  echo "committed secrets (file:line):"
  while IFS= read -r match; do echo "  $match"; done <<<"$found"
fi
result "$([[ -z "$found" ]]; echo $?)" "no private key or API key in the files git tracks in $repo"
if $keys_only; then
  exit "$status"
fi

[[ -x "$python" ]] || die "no Python at $python (set ITS_PYTHON to the project's venv python)"
cd "$root"
scan=0
"$python" scripts/security_scan.py "${strict[@]}" || scan=$?
result "$scan" "bandit and pip-audit (scripts/security_scan.py ${strict[*]})"

buf=tools/buf/node_modules/.bin/buf
[[ -x "$buf" ]] || buf=$(command -v buf) ||
  die "buf is not installed: npm ci --prefix tools/buf (or put buf on PATH)"
lint=0
"$buf" lint || lint=$?
result "$lint" "buf lint"
exit "$status"
