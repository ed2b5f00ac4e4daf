"""The client channel's service config, against a real server built from the generated stubs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.client import SERVICES, aio_channel, service_config
from its_camera_ai.common import InvalidArgumentError, Runtime, ServiceHost, ServiceUnit, Settings


class FlakyCameras(camera_service_pb2_grpc.CameraServiceServicer):
    """Unavailable for the first ``failures`` calls of each camera, then answers; cameras
    named "cancelled-*" are cancelled instead, as a draining server cancels calls it never
    started (grpc/grpc#41785)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: dict[str, int] = {}

    def _fail_first(self, name: str) -> grpc.StatusCode | None:
        self.attempts[name] = self.attempts.get(name, 0) + 1
        if self.attempts[name] > self.failures:
            return None
        if name.startswith("cameras/cancelled-"):
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.UNAVAILABLE

    async def CreateCamera(
        self, request: camera_service_pb2.CreateCameraRequest, context: grpc.aio.ServicerContext
    ) -> camera_service_pb2.CreateCameraResponse:
        name = f"cameras/{request.camera_id}"
        code = self._fail_first(name)
        if code is not None:
            await context.abort(code, "draining")
        return camera_service_pb2.CreateCameraResponse(camera=camera_pb2.Camera(name=name))

    async def GetCamera(
        self, request: camera_service_pb2.GetCameraRequest, context: grpc.aio.ServicerContext
    ) -> camera_service_pb2.GetCameraResponse:
        if request.name == "cameras/bad":
            self.attempts[request.name] = self.attempts.get(request.name, 0) + 1
            raise InvalidArgumentError.for_field("name", "bad")
        code = self._fail_first(request.name)
        if code is not None:
            await context.abort(code, "warming up")
        return camera_service_pb2.GetCameraResponse(camera=camera_pb2.Camera(name=request.name))


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[ServiceHost, FlakyCameras]]:
    servicer = FlakyCameras(failures=2)

    async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        camera_service_pb2_grpc.add_CameraServiceServicer_to_server(servicer, server)

    unit = ServiceUnit("cameras", ("its.camera.v1.CameraService",), register)
    host = ServiceHost(
        Settings(grpc={"host": "127.0.0.1", "port": 0}, http={"enabled": False}), [unit]
    )
    await host.start()
    try:
        yield host, servicer
    finally:
        await host.stop()


async def test_unavailable_is_retried_and_other_errors_are_not(
    flaky: tuple[ServiceHost, FlakyCameras],
) -> None:
    host, servicer = flaky
    async with aio_channel(f"127.0.0.1:{host.grpc_port}") as channel:
        stub = camera_service_pb2_grpc.CameraServiceStub(channel)
        reply = await stub.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/a"))
        assert reply.camera.name == "cameras/a"
        assert servicer.attempts["cameras/a"] == 3

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/bad"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert servicer.attempts["cameras/bad"] == 1


async def test_reads_are_retried_when_cancelled_and_writes_are_not(
    flaky: tuple[ServiceHost, FlakyCameras],
) -> None:
    host, servicer = flaky
    async with aio_channel(f"127.0.0.1:{host.grpc_port}") as channel:
        stub = camera_service_pb2_grpc.CameraServiceStub(channel)
        reply = await stub.GetCamera(
            camera_service_pb2.GetCameraRequest(name="cameras/cancelled-a")
        )
        assert reply.camera.name == "cameras/cancelled-a"
        assert servicer.attempts["cameras/cancelled-a"] == 3

        # A write cancelled may have been applied: it is the caller's to repeat.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateCamera(camera_service_pb2.CreateCameraRequest(camera_id="cancelled-b"))
        assert caught.value.code() == grpc.StatusCode.CANCELLED
        assert servicer.attempts["cameras/cancelled-b"] == 1
        # UNAVAILABLE is retried for every method.
        await stub.CreateCamera(camera_service_pb2.CreateCameraRequest(camera_id="c"))
        assert servicer.attempts["cameras/c"] == 3


def test_service_config_gives_deadlines_to_unary_calls_only() -> None:
    blocks = json.loads(service_config())["methodConfig"]
    methods = {(s.full_name, m.name): m for s in SERVICES for m in s.methods}
    covered = [(n["service"], n["method"]) for block in blocks for n in block["name"]]
    assert sorted(covered) == sorted(methods)  # each method once
    assert {"its.camera.v1.CameraService", "its.admin.v1.AdminService"} <= {s for s, _ in covered}
    reads = set()
    for block in blocks:
        kinds = [methods[(n["service"], n["method"])] for n in block["name"]]
        streaming = {m.client_streaming or m.server_streaming for m in kinds}
        assert len(streaming) == 1
        # A watch or a detection stream lives as long as it needs.
        assert block.get("timeout") == (None if streaming == {True} else "10.0s")
        codes = block["retryPolicy"]["retryableStatusCodes"]
        assert codes in (["UNAVAILABLE"], ["UNAVAILABLE", "CANCELLED"])
        if "CANCELLED" in codes:
            reads |= {m.name for m in kinds}
    assert {"GetCamera", "ListCameras", "WatchCameraStatus", "StreamEvents"} <= reads
    assert not reads & {"CreateCamera", "DeleteCamera", "Detect", "StreamDetectionBatches"}
