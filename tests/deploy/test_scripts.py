"""The production-readiness checklist's operator scripts, each run for real.

``production_health_check.sh`` against a real ``its-camera-ai serve all`` (TLS, its own
database on the machine's PostgreSQL), then against the same host stopped;
``security_scan.sh`` on this repository and on a temporary git repository with a planted
key; ``test_alerting.sh`` and ``validate_dashboards.sh`` on the shipped files and on broken
copies.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from its_camera_ai.security import mint_dev_certificates
from tests.conftest import POSTGRES_ADMIN_DSN
from tests.deploy.deployment import Deployment, admin_sql

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
FILES = ROOT / "helm" / "its-camera-ai" / "files"
SCRIPT_NAMES = (
    "production_health_check.sh",
    "security_scan.sh",
    "test_alerting.sh",
    "validate_dashboards.sh",
)
PYTHON_ENV = {**os.environ, "ITS_PYTHON": str(ROOT / ".venv" / "bin" / "python")}


def run_script(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / name), *args],
        cwd=ROOT,
        env=env or PYTHON_ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def repository_scan() -> Iterator[subprocess.Popen[str]]:
    """The whole security scan of this repository, started first: pip-audit spends most of
    its half minute waiting on the network, so it runs beside the other tests."""
    scan = subprocess.Popen(
        [str(SCRIPTS / "security_scan.sh")],
        cwd=ROOT,
        env=PYTHON_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield scan
    if scan.poll() is None:
        scan.kill()
        scan.communicate()


@pytest.fixture(scope="module")
def serve_all(repository_scan: subprocess.Popen[str]) -> Iterator[Deployment]:
    database = f"its_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_sql(f'CREATE DATABASE "{database}"'))
    dsn = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
    directory = Path(tempfile.mkdtemp(prefix="its-test-scripts-"))
    deployment = Deployment(directory, dsn)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{deployment.http_port}/health"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert deployment.process.poll() is None, deployment.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "serve all did not become healthy"
            time.sleep(0.3)
        yield deployment
    finally:
        deployment.stop()
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        shutil.rmtree(directory, ignore_errors=True)


def health_check_args(deployment: Deployment) -> list[str]:
    client_cert, client_key = deployment.certificates.clients["inference"]
    return [
        "--grpc",
        f"127.0.0.1:{deployment.grpc_port}",
        "--http",
        f"127.0.0.1:{deployment.http_port}",
        "--cacert",
        str(deployment.certificates.ca_cert),
        "--cert",
        str(client_cert),
        "--key",
        str(client_key),
    ]


def test_health_check_passes_against_a_running_host(serve_all: Deployment) -> None:
    result = run_script("production_health_check.sh", *health_check_args(serve_all))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")], result.stdout
    grpc = f"PASS grpc 127.0.0.1:{serve_all.grpc_port} health"
    assert any(line.startswith(grpc) for line in lines), result.stdout
    for check in ("/live", "/health", "/metrics", "certificate server"):
        assert any(line.startswith("PASS http") and check in line for line in lines), check
    assert lines[-1].endswith(", 0 failed")


def test_health_check_reads_an_up_file(serve_all: Deployment, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("not-a-metrics-token\n")
    up_file = {
        # serve all hosts every unit: up's per-unit addresses all name it.
        "grpc": {unit: f"127.0.0.1:{serve_all.grpc_port}" for unit in ("decoder", "query")},
        "http": {"decoder": f"127.0.0.1:{serve_all.http_port}"},
        "token_file": str(tmp_path / "token"),
    }
    (tmp_path / "up.json").write_text(json.dumps(up_file))
    tls = health_check_args(serve_all)[4:]
    result = run_script("production_health_check.sh", "--up-dir", str(tmp_path), *tls)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS grpc 127.0.0.1:{serve_all.grpc_port} health" in result.stdout


def test_health_check_rejects_a_broken_up_file(tmp_path: Path) -> None:
    (tmp_path / "up.json").write_text(json.dumps({"grpc": {"decoder": "nowhere"}}))
    result = run_script("production_health_check.sh", "--up-dir", str(tmp_path))
    assert result.returncode == 2
    assert "grpc.decoder: expected HOST:PORT, got 'nowhere'" in result.stderr


def test_health_check_fails_against_a_stopped_host(serve_all: Deployment) -> None:
    serve_all.stop()
    result = run_script("production_health_check.sh", *health_check_args(serve_all))
    assert result.returncode == 1, result.stdout
    assert f"FAIL grpc 127.0.0.1:{serve_all.grpc_port} health: UNAVAILABLE" in result.stdout
    assert f"FAIL http http://127.0.0.1:{serve_all.http_port} /live: unreachable" in (result.stdout)
    assert "SUMMARY: 0 passed, 2 failed" in result.stdout


def git_repository(directory: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(directory)], check=True)
    (directory / "README.md").write_text("itsk_ is the prefix of API keys\n")
    return directory


def git_add(directory: Path) -> None:
    subprocess.run(["git", "-C", str(directory), "add", "-A"], check=True)


def test_key_scan_passes_a_clean_repository(tmp_path: Path) -> None:
    repository = git_repository(tmp_path / "repo")
    git_add(repository)
    result = run_script("security_scan.sh", "--keys-only", "--repo", str(repository))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("secret", ["private key", "api key"])
def test_key_scan_finds_a_committed_secret(tmp_path: Path, secret: str) -> None:
    repository = git_repository(tmp_path / "repo")
    if secret == "private key":
        mint_dev_certificates(repository / "deploy", clients=())
        planted = "deploy/ca.key:1"
    else:
        key = "itsk_" + secrets.token_urlsafe(32)
        (repository / "settings.env").write_text(f"# ours\nITS_API_KEY={key}\n")
        planted = "settings.env:2"
    git_add(repository)
    result = run_script("security_scan.sh", "--keys-only", "--repo", str(repository))
    assert result.returncode == 1, result.stdout
    assert f"  {planted}" in result.stdout.splitlines()
    assert "FAIL no private key or API key" in result.stdout
    assert "PRIVATE KEY-----" not in result.stdout
    assert "ITS_API_KEY" not in result.stdout


def test_alerting_passes_on_the_shipped_rules() -> None:
    result = run_script("test_alerting.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS promtool check rules" in result.stdout
    assert "PASS promtool test rules" in result.stdout


def test_alerting_fails_on_a_broken_rule(tmp_path: Path) -> None:
    shutil.copy(FILES / "alerts.yaml", tmp_path)
    shutil.copy(FILES / "alerts_test.yaml", tmp_path)
    document = yaml.safe_load((tmp_path / "alerts.yaml").read_text())
    document["groups"][0]["rules"][0]["expr"] = "rate(latency_capture_to_detections_seconds"
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(document))
    result = run_script("test_alerting.sh", "--rules", str(tmp_path))
    assert result.returncode == 1
    assert f"FAIL promtool check rules {tmp_path}/alerts.yaml" in result.stdout


def test_alerting_says_when_promtool_is_missing(tmp_path: Path) -> None:
    (tmp_path / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    env = {**PYTHON_ENV, "PATH": str(tmp_path)}
    result = subprocess.run(
        ["/bin/bash", str(SCRIPTS / "test_alerting.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "promtool is not installed: apt-get install -y prometheus" in result.stderr


def test_dashboards_pass_structurally() -> None:
    result = run_script("validate_dashboards.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS structure: 4 dashboards")


def test_dashboards_fail_on_a_duplicate_panel_id(tmp_path: Path) -> None:
    for board in (FILES / "dashboards").glob("*.json"):
        shutil.copy(board, tmp_path)
    document = json.loads((tmp_path / "camera.json").read_text())
    document["panels"][1]["id"] = document["panels"][0]["id"]
    (tmp_path / "camera.json").write_text(json.dumps(document))
    result = run_script("validate_dashboards.sh", "--dir", str(tmp_path))
    assert result.returncode == 1
    duplicate = document["panels"][0]["id"]
    assert f"FAIL camera.json: duplicate panel ids {duplicate}" in result.stdout


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_documents_itself_and_refuses_unknown_options(name: str) -> None:
    assert "Exit codes:" in run_script(name, "--help").stdout
    result = run_script(name, "--no-such-option")
    assert result.returncode == 2
    assert "unknown argument --no-such-option" in result.stderr


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed (.ci/run: apt-get install -y shellcheck)"
    result = subprocess.run(
        [shellcheck, *(str(SCRIPTS / name) for name in SCRIPT_NAMES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_security_scan_passes_on_the_repository(
    repository_scan: subprocess.Popen[str],
) -> None:
    output, _ = repository_scan.communicate(timeout=120)
    assert repository_scan.returncode == 0, output
    for check in ("no private key or API key", "bandit and pip-audit", "buf lint"):
        assert f"PASS {check}" in output, output
