"""Static security checks CI runs: bandit on the code, pip-audit on the installed packages.

    .venv/bin/python scripts/security_scan.py            # what CI runs
    .venv/bin/python scripts/security_scan.py --strict   # also fail when nothing could be audited

bandit: any finding of high severity in ``src/`` or the client package
(``clients/python/its_camera_ai_client``) fails (lower ones are printed by ``bandit -r src``
for review). pip-audit: any known vulnerability in an installed
distribution fails. pip-audit asks PyPI's JSON API for advisories; where that service is not
reachable (a mirror that serves only the simple index, as on this project's build machines)
it reports every package as "not found on PyPI": the scan then says the packages were not
audited, loudly, and fails only with ``--strict``, so a mirror never passes for "clean".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _bandit() -> bool:
    result = subprocess.run(
        [
            str(BIN / "bandit"),
            "-q",
            "-r",
            "src",
            "clients/python/its_camera_ai_client",
            "--severity-level",
            "high",
            "-f",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout or "{}")
    findings = report.get("results", [])
    for finding in findings:
        print(
            f"bandit: {finding['filename']}:{finding['line_number']}: {finding['test_id']}"
            f" {finding['issue_text']}"
        )
    print(f"bandit: {len(findings)} high-severity finding(s) in src/")
    return not findings and result.returncode in (0, 1)


def _pip_audit(strict: bool) -> bool:
    result = subprocess.run(
        [str(BIN / "pip-audit"), "--skip-editable", "--progress-spinner", "off", "-f", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit failed to run:\n{result.stderr}")
        return False
    dependencies = report.get("dependencies", [])
    vulnerable = [d for d in dependencies if d.get("vulns")]
    audited = [d for d in dependencies if "skip_reason" not in d]
    for dependency in vulnerable:
        ids = ", ".join(v["id"] for v in dependency["vulns"])
        print(f"pip-audit: {dependency['name']} {dependency['version']}: {ids}")
    print(
        f"pip-audit: {len(audited)} of {len(dependencies)} distributions audited,"
        f" {len(vulnerable)} with known vulnerabilities"
    )
    if dependencies and not audited:
        print(
            "pip-audit: WARNING: no distribution could be audited (the vulnerability service"
            " is not reachable from here); run this where PyPI's JSON API answers"
        )
        return not strict
    return not vulnerable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strict", action="store_true", help="fail when nothing was audited")
    args = parser.parse_args()
    ok = _bandit()
    ok = _pip_audit(args.strict) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
