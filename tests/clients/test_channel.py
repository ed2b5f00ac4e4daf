"""The channel's service config against a real server that fails first attempts: what is
retried (reads and idempotent writes on UNAVAILABLE, reads on CANCELLED too) and what is
not (creates), through the client distribution and the CLI's channel alike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.client import SERVICES, aio_channel, service_config
from its_camera_ai.common import (
    InvalidArgumentError,
    Runtime,
    ServiceHost,
    ServiceUnit,
    Settings,
    UnavailableError,
)
from its_camera_ai_client import (
    ApiError,
    TlsOptions,
    connect,
    connect_async,
    paginate,
    retryable_codes,
)
from its_camera_ai_client import UnavailableError as ClientUnavailableError


class FlakyCameras(camera_service_pb2_grpc.CameraServiceServicer):
    """Unavailable (with the RetryInfo every UNAVAILABLE of the services carries) for the
    first ``failures`` calls naming each camera, then answers; cameras named "cancelled-*"
    are cancelled instead, as a draining server cancels calls it never started
    (grpc/grpc#41785)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: dict[str, int] = {}

    async def _fail_first(self, name: str, context: grpc.aio.ServicerContext) -> None:
        self.attempts[name] = self.attempts.get(name, 0) + 1
        if self.attempts[name] > self.failures:
            return
        if name.startswith("cameras/cancelled-"):
            await context.abort(grpc.StatusCode.CANCELLED, "draining")
        raise UnavailableError("warming up", retry_delay_seconds=0.25)

    async def CreateCamera(
        self, request: camera_service_pb2.CreateCameraRequest, context: grpc.aio.ServicerContext
    ) -> camera_service_pb2.CreateCameraResponse:
        name = f"cameras/{request.camera_id}"
        await self._fail_first(name, context)
        return camera_service_pb2.CreateCameraResponse(camera=camera_pb2.Camera(name=name))

    async def GetCamera(
        self, request: camera_service_pb2.GetCameraRequest, context: grpc.aio.ServicerContext
    ) -> camera_service_pb2.GetCameraResponse:
        if request.name == "cameras/bad":
            self.attempts[request.name] = self.attempts.get(request.name, 0) + 1
            raise InvalidArgumentError.for_field("name", "bad")
        await self._fail_first(request.name, context)
        return camera_service_pb2.GetCameraResponse(camera=camera_pb2.Camera(name=request.name))

    async def DeleteCamera(
        self, request: camera_service_pb2.DeleteCameraRequest, context: grpc.aio.ServicerContext
    ) -> camera_service_pb2.DeleteCameraResponse:
        await self._fail_first(request.name, context)
        return camera_service_pb2.DeleteCameraResponse()


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, FlakyCameras]]:
    servicer = FlakyCameras(failures=2)

    async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        camera_service_pb2_grpc.add_CameraServiceServicer_to_server(servicer, server)

    unit = ServiceUnit("cameras", ("its.camera.v1.CameraService",), register)
    host = ServiceHost(
        Settings(grpc={"host": "127.0.0.1", "port": 0}, http={"enabled": False}), [unit]
    )
    await host.start()
    try:
        yield f"127.0.0.1:{host.grpc_port}", servicer
    finally:
        await host.stop()


async def test_reads_and_idempotent_writes_are_retried_after_unavailable(
    flaky: tuple[str, FlakyCameras],
) -> None:
    target, servicer = flaky
    async with connect_async(target) as client:
        reply = await client.cameras.GetCamera(
            camera_service_pb2.GetCameraRequest(name="cameras/a")
        )
        assert reply.camera.name == "cameras/a"
        assert servicer.attempts["cameras/a"] == 3
        await client.cameras.DeleteCamera(camera_service_pb2.DeleteCameraRequest(name="cameras/d"))
        assert servicer.attempts["cameras/d"] == 3

        # Other errors are final.
        with pytest.raises(ApiError) as caught:
            await client.cameras.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/bad"))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert servicer.attempts["cameras/bad"] == 1

    # The CLI's channel is the same channel.
    async with aio_channel(target) as channel:
        stub = camera_service_pb2_grpc.CameraServiceStub(channel)
        await stub.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/cli"))
        assert servicer.attempts["cameras/cli"] == 3

    def synchronously() -> None:
        with connect(target) as client:
            client.cameras.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/sync"))

    await asyncio.to_thread(synchronously)
    assert servicer.attempts["cameras/sync"] == 3


async def test_creates_are_not_retried_and_say_when_to_retry(
    flaky: tuple[str, FlakyCameras],
) -> None:
    target, servicer = flaky
    async with connect_async(target) as client:
        create = camera_service_pb2.CreateCameraRequest(camera_id="c")
        with pytest.raises(ClientUnavailableError) as caught:
            await client.cameras.CreateCamera(create)
        assert servicer.attempts["cameras/c"] == 1
        assert caught.value.reason == "DEPENDENCY_UNAVAILABLE"
        assert caught.value.retry_delay_seconds == 0.25

        # A read cancelled by a draining server is retried; a write cancelled may have been
        # applied: it is the caller's to repeat.
        reply = await client.cameras.GetCamera(
            camera_service_pb2.GetCameraRequest(name="cameras/cancelled-a")
        )
        assert reply.camera.name == "cameras/cancelled-a"
        assert servicer.attempts["cameras/cancelled-a"] == 3
        with pytest.raises(ApiError) as cancelled:
            await client.cameras.CreateCamera(
                camera_service_pb2.CreateCameraRequest(camera_id="cancelled-b")
            )
        assert cancelled.value.code() is grpc.StatusCode.CANCELLED
        assert servicer.attempts["cameras/cancelled-b"] == 1


def test_every_method_is_configured_once_with_deadlines_on_unary_calls_only() -> None:
    blocks = json.loads(service_config())["methodConfig"]
    methods = {(s.full_name, m.name): m for s in SERVICES for m in s.methods}
    covered = [(n["service"], n["method"]) for block in blocks for n in block["name"]]
    assert sorted(covered) == sorted(methods)  # each method once
    for block in blocks:
        kinds = [methods[(n["service"], n["method"])] for n in block["name"]]
        streaming = {m.client_streaming or m.server_streaming for m in kinds}
        assert len(streaming) == 1
        # A watch or a detection stream lives as long as it needs.
        assert block.get("timeout") == (None if streaming == {True} else "10.0s")
        codes = block.get("retryPolicy", {}).get("retryableStatusCodes", [])
        assert all(list(retryable_codes(m)) == codes for m in kinds)


def test_which_methods_are_retried() -> None:
    codes = {m.name: retryable_codes(m) for s in SERVICES for m in s.methods}
    reads = {name for name, c in codes.items() if c == ("UNAVAILABLE", "CANCELLED")}
    writes = {name for name, c in codes.items() if c == ("UNAVAILABLE",)}
    never = {name for name, c in codes.items() if not c}
    assert {"GetCamera", "ListCameras", "WatchCameraStatus", "StreamEvents", "GetModel"} <= reads
    assert not {n for n in reads if not n.startswith(("Get", "List", "Watch", "Stream"))}
    assert writes == {
        "UpdateCamera",
        "DeleteCamera",
        "DeleteApiKey",
        "UpdateFeatureFlag",
        "Detect",
    }
    # No request ids in the protos: a repeated create could make a second resource.
    assert never == {"CreateCamera", "CreateApiKey", "ResetCameraState", "StreamDetectionBatches"}


def test_bad_connection_arguments_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^token, api_key: give one credential"):
        connect_async("127.0.0.1:1", token="a.b.c", api_key="itsk_x")
    with pytest.raises(ValueError, match=r"^api_key: empty"):
        connect("127.0.0.1:1", api_key=" ")
    with pytest.raises(ValueError, match=r"^target: expected host:port"):
        connect_async("")
    with pytest.raises(ValueError, match=r"^tls\.key: a client certificate needs both"):
        TlsOptions(cert=b"PEM")
    with pytest.raises(ValueError, match=r"^tls\.ca: cannot read .*missing\.pem"):
        connect_async("127.0.0.1:1", tls=TlsOptions(ca=tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match=r"^max_attempts: at least 1"):
        connect_async("127.0.0.1:1", max_attempts=0)


def test_every_list_rpc_pages_through_its_items() -> None:
    lists = [m for s in SERVICES for m in s.methods if m.name.startswith("List")]
    assert len(lists) == 5
    for method in lists:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        item_field = next(f for f in method.output_type.fields if f.is_repeated)
        item_class = message_factory.GetMessageClass(item_field.message_type)
        pages = [
            response_class(**{item_field.name: [item_class()] * 2, "next_page_token": "p2"}),
            response_class(**{item_field.name: [item_class()]}),
        ]
        tokens: list[str] = []

        def list_rpc(request: Any, pages: list[Any] = pages, tokens: list[str] = tokens) -> Any:
            tokens.append(request.page_token)
            return pages[len(tokens) - 1]

        assert len(list(paginate(list_rpc, request_class(page_size=2)))) == 3, method.name
        assert tokens == ["", "p2"]
