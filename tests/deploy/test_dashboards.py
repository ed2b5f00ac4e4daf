"""Every Grafana panel's queries return data from a real deployment.

One ``its-camera-ai serve all`` (TLS with certificates minted here, a fresh database on the
machine's PostgreSQL, Redis, a simulated camera) is scraped every second by a real
Prometheus; each target expression of each dashboard, template variables filled in, is
evaluated through Prometheus' HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.security import mint_dev_certificates
from tests.conftest import POSTGRES_ADMIN_DSN, REDIS_URL, free_port

DASHBOARDS = Path(__file__).resolve().parents[2] / "helm" / "its-camera-ai" / "files" / "dashboards"
CAMERA = "simcam"
# Grafana's variables as the test fills them in ($namespace's "All" is its allValue).
VARIABLES = {
    "$__rate_interval": "15s",
    "$namespace": ".*",
    "$camera": CAMERA,
    "${DS_PROMETHEUS}": "prometheus",
}
DATA_WITHIN_S = 60.0


@dataclass(frozen=True)
class Target:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def query(self) -> str:
        query = self.expr
        for variable, value in VARIABLES.items():
            query = query.replace(variable, value)
        return query

    @property
    def gpu_only(self) -> bool:
        return "gpu_" in self.expr


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def targets() -> list[Target]:
    return [
        Target(name, panel["title"], target["refId"], target["expr"])
        for name, board in dashboards().items()
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (a quantile of no observations is NaN)."""
    return any(series["value"][1] != "NaN" for series in result)


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


class Deployment:
    """``its-camera-ai serve all`` on free loopback ports with its own database."""

    def __init__(self, directory: Path, dsn: str) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        unique = uuid.uuid4().hex[:8]
        # TLS as in production, so that the certificate-expiry series exist.
        self.certificates = mint_dev_certificates(directory / "certs", clients=("inference",))
        peer_cert, peer_key = self.certificates.clients["inference"]
        env = {
            **os.environ,
            "ITS_GRPC__HOST": "127.0.0.1",
            "ITS_GRPC__PORT": str(self.grpc_port),
            "ITS_GRPC__DRAIN_SECONDS": "1",
            "ITS_HTTP__HOST": "127.0.0.1",
            "ITS_HTTP__PORT": str(self.http_port),
            "ITS_LOGGING__LEVEL": "WARNING",
            "ITS_DATABASE__DSN": dsn,
            "ITS_REDIS__URL": REDIS_URL,
            # Its own channels on the shared Redis (query reads analytics' prefix).
            "ITS_ANALYTICS__REDIS_PREFIX": f"its-dash-{unique}",
            "ITS_DECODER__RING_PREFIX": f"d{unique}-",
            # Batches wait for company long enough that a 10 fps camera's queued frame is
            # replaced by its next one: real "superseded" skips for the skip panels.
            "ITS_INFERENCE__MAX_QUEUE_DELAY_MS": "250",
            "ITS_SECURITY__TLS__CERT_FILE": str(self.certificates.server_cert),
            "ITS_SECURITY__TLS__KEY_FILE": str(self.certificates.server_key),
            "ITS_SECURITY__PEER_TLS__ENABLED": "true",
            "ITS_SECURITY__PEER_TLS__CA_FILE": str(self.certificates.ca_cert),
            "ITS_SECURITY__PEER_TLS__CERT_FILE": str(peer_cert),
            "ITS_SECURITY__PEER_TLS__KEY_FILE": str(peer_key),
        }
        self.log = directory / "serve.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "its_camera_ai.cli", "serve", "all"],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )

    def wait_serving(self, channel: grpc.Channel) -> None:
        deadline = time.monotonic() + DATA_WITHIN_S
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return
            except grpc.FutureTimeoutError:
                continue
        raise AssertionError(f"serve all is not serving: {self.log.read_text()[-2000:]}")

    def add_camera_and_fail_a_call(self) -> None:
        trust = grpc.ssl_channel_credentials(self.certificates.ca_cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{self.grpc_port}", trust) as channel:
            self.wait_serving(channel)
            cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
            source = "sim://road?width=320&height=240&fps=10"
            cameras.CreateCamera(
                camera_service_pb2.CreateCameraRequest(
                    camera_id=CAMERA, camera=camera_pb2.Camera(source_uri=source, enabled=True)
                ),
                timeout=10,
            )
            # A client error, so that the errors-by-RPC panels have a series to show.
            with pytest.raises(grpc.RpcError) as failed:
                cameras.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/absent"))
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    database = f"its_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
    dsn = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
    # Not pytest's tmp_path: a module fixture's directory must outlive the other pytest
    # sessions of this machine, which prune the shared base directory.
    directory = Path(tempfile.mkdtemp(prefix="its-test-dashboards-"))
    (directory / "serve").mkdir()
    (directory / "prometheus").mkdir()
    deployment = Deployment(directory / "serve", dsn)
    server = Prometheus(directory / "prometheus", f"127.0.0.1:{deployment.http_port}")
    try:
        server.wait_ready()
        deployment.add_camera_and_fail_a_call()
        yield server
    finally:
        server.stop()
        deployment.stop()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def results(prometheus: Prometheus) -> dict[Target, list[dict[str, Any]]]:
    """Every target's result, polled until all that must have data have it (or time's up)."""
    has_gpu = bool(prometheus.query("gpu_utilization_ratio"))
    awaited = [t for t in targets() if has_gpu or not t.gpu_only]
    deadline = time.monotonic() + DATA_WITHIN_S
    found: dict[Target, list[dict[str, Any]]] = {}
    while True:
        for target in awaited:
            if not has_data(found.get(target, [])):
                found[target] = prometheus.query(target.query)
        if all(map(has_data, found.values())) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for target in targets():
        if target not in found:
            found[target] = prometheus.query(target.query)
    return found


@pytest.mark.parametrize("target", [target_param(t) for t in targets()])
def test_panel_target_returns_data(
    target: Target, prometheus: Prometheus, results: dict[Target, list[dict[str, Any]]]
) -> None:
    if target.gpu_only and not prometheus.query("gpu_utilization_ratio"):
        pytest.skip("GPU-only panel: no GPU here, so the services export no gpu_* metrics")
    assert has_data(results[target]), f"no data for {target.query}: {results[target]}"


def test_camera_variable_lists_the_simulated_camera(prometheus: Prometheus) -> None:
    variable = next(
        v for v in dashboards()["camera.json"]["templating"]["list"] if v["name"] == "camera"
    )
    assert variable["definition"].startswith("label_values(decoder_fps")
    series = prometheus.query('decoder_fps{namespace=~".*"}')
    assert {s["metric"]["camera"] for s in series} == {CAMERA}


def test_dashboards_are_grafana_documents_on_the_prometheus_variable() -> None:
    boards = dashboards()
    assert {"system.json", "application.json", "sla.json", "camera.json"} <= set(boards)
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        assert board["__inputs"][0]["name"] == "DS_PROMETHEUS", name
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"DS_PROMETHEUS", "namespace"} <= variables, name
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert 'namespace=~"$namespace"' in target["expr"], (name, panel["title"])
