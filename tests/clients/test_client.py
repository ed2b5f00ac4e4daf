"""The client distribution (``its_camera_ai_client``) against a whole secured host on
loopback behind mTLS: credentials, client certificates, typed errors, pagination, for the
asyncio client and the synchronous one (run in a thread: the server shares this loop)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from its.admin.v1 import admin_service_pb2, api_key_pb2
from its.camera.v1 import camera_pb2, camera_service_pb2
from its_camera_ai.security import DevCertificates
from its_camera_ai_client import (
    ApiError,
    AsyncClient,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    TlsOptions,
    UnauthenticatedError,
    connect,
    connect_async,
    paginate,
    paginate_async,
)
from tests.security.conftest import SecureHost

pytestmark = pytest.mark.security

CAMERAS = [f"cam-{i}" for i in range(7)]
PAGE_SIZE = 2  # 7 cameras: 4 pages


def _tls(certs: DevCertificates, client: str = "operator") -> TlsOptions:
    cert, key = certs.clients[client]
    return TlsOptions(ca=certs.ca_cert, cert=cert, key=key)


async def _create_cameras(client: AsyncClient) -> None:
    for camera_id in reversed(CAMERAS):
        await client.cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(
                camera_id=camera_id,
                camera=camera_pb2.Camera(source_uri="sim://road", enabled=False),
            )
        )


async def test_token_and_api_key_over_mtls_and_typed_refusals(
    mtls_host: tuple[SecureHost, DevCertificates],
) -> None:
    host, certs = mtls_host
    listing = camera_service_pb2.ListCamerasRequest()
    async with connect_async(host.target, token=host.token("admin"), tls=_tls(certs)) as admin:
        created = await admin.admin.CreateApiKey(
            admin_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_VIEWER), api_key_id="reader"
            )
        )
    async with connect_async(host.target, api_key=created.secret, tls=_tls(certs)) as viewer:
        assert list((await viewer.cameras.ListCameras(listing)).cameras) == []
        with pytest.raises(PermissionDeniedError) as denied:
            await viewer.cameras.DeleteCamera(
                camera_service_pb2.DeleteCameraRequest(name="cameras/a")
            )
        assert denied.value.reason == "PERMISSION_DENIED"
        assert denied.value.domain == "its-camera-ai.dev"

    # A certificate the server maps to a role is a credential of its own.
    async with connect_async(host.target, tls=_tls(certs, "inference")) as service:
        await service.cameras.ListCameras(listing)

    # An unmapped certificate only opens the connection: no credential, typed refusal.
    async with connect_async(host.target, tls=_tls(certs)) as nobody:
        with pytest.raises(UnauthenticatedError) as refused:
            await nobody.cameras.ListCameras(listing)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.reason == "UNAUTHENTICATED"
        assert isinstance(refused.value, grpc.aio.AioRpcError)  # what older code catches

    # Without the client certificate the handshake fails: UNAVAILABLE, no reason.
    no_cert = TlsOptions(ca=certs.ca_cert.read_bytes())
    async with connect_async(
        host.target, token=host.token("admin"), tls=no_cert, max_attempts=1
    ) as c:
        with pytest.raises(ApiError) as failed:
            await c.cameras.ListCameras(listing, timeout=5)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert failed.value.reason == ""


async def test_pagination_and_typed_errors_async(
    mtls_host: tuple[SecureHost, DevCertificates],
) -> None:
    host, certs = mtls_host
    async with connect_async(host.target, token=host.token("operator"), tls=_tls(certs)) as client:
        await _create_cameras(client)
        request = camera_service_pb2.ListCamerasRequest(page_size=PAGE_SIZE, order_by="name")
        names = [
            camera.name async for camera in paginate_async(client.cameras.ListCameras, request)
        ]
        assert names == [f"cameras/{c}" for c in CAMERAS]
        assert request.page_token == ""  # the caller's request is left as it was

        with pytest.raises(InvalidArgumentError) as invalid:
            await client.cameras.ListCameras(camera_service_pb2.ListCamerasRequest(page_size=-1))
        assert [v.field for v in invalid.value.field_violations] == ["page_size"]
        assert invalid.value.reason == "INVALID_FIELD"

        with pytest.raises(NotFoundError) as missing:
            await client.cameras.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/nope"))
        assert missing.value.reason == "RESOURCE_NOT_FOUND"
        assert "cameras/nope" in str(missing.value)

        # A stream fails at its first read, typed as well.
        watch = client.cameras.WatchCameraStatus(
            camera_service_pb2.WatchCameraStatusRequest(camera="cameras/nope")
        )
        with pytest.raises(NotFoundError):
            async for _ in watch:
                pass
        assert await watch.code() is grpc.StatusCode.NOT_FOUND


async def test_the_synchronous_client(mtls_host: tuple[SecureHost, DevCertificates]) -> None:
    host, certs = mtls_host
    async with connect_async(host.target, token=host.token("operator"), tls=_tls(certs)) as client:
        await _create_cameras(client)
    token = host.token("viewer")

    def use_it() -> None:
        with connect(host.target, token=token, tls=_tls(certs)) as client:
            request = camera_service_pb2.ListCamerasRequest(page_size=PAGE_SIZE)
            names = [c.name for c in paginate(client.cameras.ListCameras, request)]
            assert names == [f"cameras/{c}" for c in CAMERAS]
            with pytest.raises(NotFoundError) as missing:
                client.cameras.GetCamera(camera_service_pb2.GetCameraRequest(name="cameras/nope"))
            assert missing.value.reason == "RESOURCE_NOT_FOUND"
            with pytest.raises(InvalidArgumentError) as invalid:
                client.cameras.ListCameras(camera_service_pb2.ListCamerasRequest(page_size=-1))
            assert [v.field for v in invalid.value.field_violations] == ["page_size"]
            stream = client.cameras.WatchCameraStatus(
                camera_service_pb2.WatchCameraStatusRequest(camera="cameras/nope")
            )
            with pytest.raises(NotFoundError):
                next(iter(stream))
        with connect(host.target, tls=_tls(certs)) as nobody:
            with pytest.raises(UnauthenticatedError) as refused:
                nobody.cameras.ListCameras(camera_service_pb2.ListCamerasRequest())
            assert refused.value.reason == "UNAUTHENTICATED"

    await asyncio.to_thread(use_it)
