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
    """Unavailable for the first ``failures`` calls of each camera, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: dict[str, int] = {}

    async def GetCamera(
        self, request: camera_service_pb2.GetCameraRequest, context: grpc.aio.ServicerContext
    ) -> camera_service_pb2.GetCameraResponse:
        self.attempts[request.name] = self.attempts.get(request.name, 0) + 1
        if request.name == "cameras/bad":
            raise InvalidArgumentError.for_field("name", "bad")
        if self.attempts[request.name] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
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


def test_service_config_gives_deadlines_to_unary_calls_only() -> None:
    config = json.loads(service_config())
    unary, streaming = config["methodConfig"]
    assert unary["timeout"] == "10.0s"
    assert "timeout" not in streaming  # a watch or a detection stream lives as long as it needs
    covered = {(n["service"], n["method"]) for block in (unary, streaming) for n in block["name"]}
    every = {(s.full_name, m.name) for s in SERVICES for m in s.methods}
    assert covered == every
    assert {"its.camera.v1.CameraService", "its.admin.v1.AdminService"} <= {s for s, _ in every}
    for block in (unary, streaming):
        assert block["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
