"""Every Grafana panel's queries return data from a real deployment.

One ``its-camera-ai serve all`` (TLS with certificates minted here, a fresh database on the
machine's PostgreSQL, Redis, a simulated camera) is scraped every second by a real
Prometheus; each target expression of each dashboard, template variables filled in, is
evaluated through Prometheus' HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.dashboards import (
    GRAFANA_VARIABLES,
    Target,
    dashboards,
    has_data,
    panels,
    structural_problems,
    targets,
)
from tests.conftest import POSTGRES_ADMIN_DSN, free_port
from tests.deploy.deployment import CAMERA, DATA_WITHIN_S, Deployment, admin_sql

# Grafana's variables as the test fills them in: the simulated camera rather than "All".
VARIABLES = {**GRAFANA_VARIABLES, "$camera": CAMERA}


def target_param(target: Target) -> Any:
    return pytest.param(target, id=f"{target.dashboard}:{target.panel}:{target.ref}")


class Prometheus:
    """/usr/bin/prometheus scraping one target every second, on a free loopback port."""

    def __init__(self, directory: Path, scrape: str) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed (.ci/run: apt-get install -y prometheus)"
        self.url = f"http://127.0.0.1:{free_port()}"
        config = directory / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "its-camera-ai", "static_configs": [{"targets": [scrape]}]}
                    ],
                }
            )
        )
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "prometheus.log").open("wb"),
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a bad expression: 400 with the reason
            raise AssertionError(f"{expr}: {error.read().decode()}") from error
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: a module fixture's directory must outlive the other pytest
    # sessions of this machine, which prune the shared base directory.
    directory = Path(tempfile.mkdtemp(prefix="its-test-dashboards-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(workdir: Path) -> Iterator[Deployment]:
    database = f"its_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_sql(f'CREATE DATABASE "{database}"'))
    dsn = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
    (workdir / "serve").mkdir()
    served = Deployment(workdir / "serve", dsn)
    try:
        yield served
    finally:
        served.stop()
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def prometheus(workdir: Path, deployment: Deployment) -> Iterator[Prometheus]:
    (workdir / "prometheus").mkdir()
    server = Prometheus(workdir / "prometheus", f"127.0.0.1:{deployment.http_port}")
    try:
        server.wait_ready()
        deployment.add_camera()  # after Prometheus is up: it sees the camera's series start
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def results(prometheus: Prometheus, deployment: Deployment) -> dict[Target, list[dict[str, Any]]]:
    """Every target's result, polled under a client's traffic until all that must have
    data have it (or time's up)."""
    has_gpu = bool(prometheus.query("gpu_utilization_ratio"))
    awaited = [t for t in targets() if has_gpu or not t.gpu_only]
    deadline = time.monotonic() + DATA_WITHIN_S
    found: dict[Target, list[dict[str, Any]]] = {}
    while True:
        deployment.call_like_a_client()
        for target in awaited:
            if not has_data(found.get(target, [])):
                found[target] = prometheus.query(target.query(VARIABLES))
        if all(map(has_data, found.values())) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for target in targets():
        if target not in found:
            found[target] = prometheus.query(target.query(VARIABLES))
    return found


@pytest.mark.parametrize("target", [target_param(t) for t in targets()])
def test_panel_target_returns_data(
    target: Target, prometheus: Prometheus, results: dict[Target, list[dict[str, Any]]]
) -> None:
    if target.gpu_only and not prometheus.query("gpu_utilization_ratio"):
        pytest.skip("GPU-only panel: no GPU here, so the services export no gpu_* metrics")
    assert has_data(results[target]), f"no data for {target.query(VARIABLES)}: {results[target]}"


def test_camera_variable_lists_the_simulated_camera(prometheus: Prometheus) -> None:
    variable = next(
        v for v in dashboards()["camera.json"]["templating"]["list"] if v["name"] == "camera"
    )
    assert variable["definition"].startswith("label_values(decoder_fps")
    series = prometheus.query('decoder_fps{namespace=~".*"}')
    assert {s["metric"]["camera"] for s in series} == {CAMERA}


def test_dashboards_are_grafana_documents_on_the_prometheus_variable() -> None:
    assert structural_problems() == []  # unique uids and panel ids, the datasource variable
    boards = dashboards()
    assert {"system.json", "application.json", "sla.json", "camera.json"} <= set(boards)
    for name, board in boards.items():
        assert board["__inputs"][0]["name"] == "DS_PROMETHEUS", name
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"DS_PROMETHEUS", "namespace"} <= variables, name
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert 'namespace=~"$namespace"' in target["expr"], (name, panel["title"])
