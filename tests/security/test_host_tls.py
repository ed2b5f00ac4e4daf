"""A whole host behind mTLS: client certificates verified and mapped to principals, the
units calling each other over the same TLS port, and certificate-less clients refused.

In-process, the minimum stays TLS 1.2: the 1.3 minimum needs gRPC's cipher setting before
gRPC is imported (``test_tls.py`` proves it in a process of its own).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its.query.v1 import query_service_pb2, query_service_pb2_grpc
from its_camera_ai.security import DevCertificates
from tests.security.conftest import SecureHost, mtls_channel

pytestmark = pytest.mark.security


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_client_certificates_are_principals_and_units_call_each_other_over_mtls(
    mtls_host: tuple[SecureHost, DevCertificates],
) -> None:
    served, certs = mtls_host
    create = camera_service_pb2.CreateCameraRequest(
        camera_id="gate", camera=camera_pb2.Camera(source_uri="sim://road", enabled=False)
    )
    listing = camera_service_pb2.ListCamerasRequest()

    # A mapped certificate is a service principal without any token.
    async with mtls_channel(served.target, certs, "inference") as channel:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        assert await _code(cameras.ListCameras(listing)) is grpc.StatusCode.OK
        assert await _code(cameras.CreateCamera(create)) is grpc.StatusCode.PERMISSION_DENIED

    # An unmapped one authenticates the connection only: its calls need a credential.
    async with mtls_channel(served.target, certs, "operator") as channel:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        assert await _code(cameras.ListCameras(listing)) is grpc.StatusCode.UNAUTHENTICATED
        token = served.metadata("operator")
        assert await _code(cameras.CreateCamera(create, metadata=token)) is grpc.StatusCode.OK
        # The query unit reaches the decoder unit through the TLS port (its directory
        # lists the new camera), presenting its certificate and the host's own key.
        query = query_service_pb2_grpc.QueryServiceStub(channel)
        stats = query.GetCameraStats(
            query_service_pb2.GetCameraStatsRequest(name="cameras/gate/stats"),
            metadata=served.metadata("viewer"),
        )
        assert await _code(stats) is grpc.StatusCode.OK

    # No certificate, or plaintext: no connection at all.
    async with mtls_channel(served.target, certs, None) as channel:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        assert await _code(cameras.ListCameras(listing, timeout=5)) is grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(served.target) as channel:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        assert await _code(cameras.ListCameras(listing, timeout=5)) is grpc.StatusCode.UNAVAILABLE


async def test_certificate_expiry_is_exported_for_the_alert(
    mtls_host: tuple[SecureHost, DevCertificates],
) -> None:
    served, _ = mtls_host
    url = f"http://127.0.0.1:{served.host.http_port}/metrics"

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    expiries = {
        sample.labels["certificate"]: sample.value
        for family in text_string_to_metric_families(await asyncio.to_thread(scrape))
        if family.name == "tls_certificate_expiry_timestamp_seconds"
        for sample in family.samples
    }
    assert set(expiries) == {"server", "client_ca", "peer_client", "peer_ca"}
    # mint_dev_certificates issues for one year.
    year_ahead = time.time() + 365 * 86400
    assert all(abs(expires - year_ahead) < 2 * 86400 for expires in expiries.values())
