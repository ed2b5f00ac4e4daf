"""The embedded PostgreSQL supervised: restarted with backoff when its postmaster is killed
(health and metrics follow), and never orphaned by a host that was itself SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.cli import service_units
from its_camera_ai.common import ServiceHost
from its_camera_ai.testing import host_settings, metric_value
from tests.common.test_server import REPO, wait_for_health
from tests.conftest import free_port

pytestmark = pytest.mark.reliability

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split()[0])


def live_postgres_of(data_dir: Path) -> list[int]:
    """Pids of running (not zombie) postgres processes started on ``data_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and b"postgres" in cmdline[0] and str(data_dir).encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
async def embedded_decoder(embedded_data_dir: Path) -> AsyncIterator[ServiceHost]:
    settings = host_settings(None, embedded_data_dir=str(embedded_data_dir))
    host = ServiceHost(settings, service_units("decoder"))
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


async def test_killed_postmaster_is_restarted_and_health_follows(
    embedded_decoder: ServiceHost, embedded_data_dir: Path
) -> None:
    host = embedded_decoder
    (service,) = host.service_names
    assert metric_value(host, "database_up") == 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=service))
        assert (await watch.read()).status == SERVING

        os.kill(postmaster_pid(embedded_data_dir), signal.SIGKILL)
        started = time.monotonic()
        assert (await watch.read()).status == NOT_SERVING
        assert metric_value(host, "database_up") == 0
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == NOT_SERVING

        back = await asyncio.wait_for(watch.read(), timeout=30)
        assert back.status == SERVING
        recovered_s = time.monotonic() - started
        assert recovered_s < 30
        print(f"\nembedded PostgreSQL SIGKILLed: SERVING again after {recovered_s:.1f} s")
        watch.cancel()
        assert metric_value(host, "database_up") == 1
        assert metric_value(host, "database_restarts_total") == 1
        assert live_postgres_of(embedded_data_dir)

        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        camera = camera_pb2.Camera(source_uri="rtsp://cam.example/stream", enabled=False)
        await cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(camera=camera, camera_id="north-gate"),
            timeout=10,
        )
        listed = await cameras.ListCameras(camera_service_pb2.ListCamerasRequest(), timeout=10)
        assert [c.name for c in listed.cameras] == ["cameras/north-gate"]


def serve_decoder(data_dir: Path) -> tuple[subprocess.Popen[str], int]:
    grpc_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ITS_")},
        "ITS_GRPC__PORT": str(grpc_port),
        "ITS_HTTP__PORT": str(free_port()),
        "ITS_DATABASE__EMBEDDED_DATA_DIR": str(data_dir),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "its_camera_ai", "serve", "decoder"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, grpc_port


def test_host_killed_then_restarted_leaves_no_orphan_postgres(embedded_data_dir: Path) -> None:
    handles = embedded_data_dir / ".handle_pids.json"
    first, port = serve_decoder(embedded_data_dir)
    second = None
    try:
        wait_for_health(port, first, deadline_s=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        # The killed host's pid stays behind in the handle file; its server runs on.
        assert first.pid in json.loads(handles.read_text())
        assert live_postgres_of(embedded_data_dir)

        second, port = serve_decoder(embedded_data_dir)
        wait_for_health(port, second, deadline_s=60)
        assert json.loads(handles.read_text()) == [second.pid]
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        log = second.stderr.read() if second.stderr else ""
        assert "reclaimed embedded PostgreSQL handles" in log

        assert not (embedded_data_dir / "postmaster.pid").exists()
        assert live_postgres_of(embedded_data_dir) == []
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        for pid in live_postgres_of(embedded_data_dir):
            os.kill(pid, signal.SIGKILL)
