"""The alerting rules: valid for Prometheus' own checker, each alert unit-tested with promtool
at the edge of its ``for:`` window, labelled, and pointing at its runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "helm" / "its-camera-ai" / "files"
ALERTS = FILES / "alerts.yaml"
ALERT_TESTS = FILES / "alerts_test.yaml"
RUNBOOK = ROOT / "docs" / "operations" / "RUNBOOK.md"
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str, cwd: Path = FILES) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed (.ci/run: apt-get install -y prometheus)"
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_before_and_after_its_window() -> None:
    """Each alert has an evaluation with no firing alert and a later one where it fires."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    quiet: dict[str, list[str]] = {}
    firing: dict[str, list[str]] = {}
    for case in tests:
        for check in case.get("alert_rule_test", []):
            outcome = firing if check.get("exp_alerts") else quiet
            outcome.setdefault(check["alertname"], []).append(check["eval_time"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names == set(firing), "alerts without a firing test, or tests of unknown alerts"
    assert names <= set(quiet), f"alerts never checked quiet: {sorted(names - set(quiet))}"


def test_every_alert_has_a_severity_a_window_and_its_runbook_section() -> None:
    sections = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule.get("for"), f"{name} has no for: window"
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/operations/RUNBOOK.md", f"{name}: runbook_url {url}"
        assert anchor in sections, f"{name}: RUNBOOK.md has no section #{anchor}"


def test_a_broken_rule_fails_the_check(tmp_path: Path) -> None:
    document = yaml.safe_load(ALERTS.read_text())
    document["groups"][0]["rules"][0]["expr"] = "histogram_quantile(0.99, sum by (le) (rate("
    broken = tmp_path / "alerts.yaml"
    broken.write_text(yaml.safe_dump(document))
    result = promtool("check", "rules", broken.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr)


@pytest.mark.parametrize("field", ["alert", "expr"])
def test_a_rule_missing_a_field_fails_the_check(tmp_path: Path, field: str) -> None:
    document = yaml.safe_load(ALERTS.read_text())
    del document["groups"][0]["rules"][0][field]
    broken = tmp_path / "alerts.yaml"
    broken.write_text(yaml.safe_dump(document))
    result = promtool("check", "rules", broken.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
