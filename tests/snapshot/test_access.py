"""Outside dev the snapshot routes take the gRPC port's credentials: none is 401, a
viewer's token 200, a token scoped to another camera 403 (and its listing omits ours)."""

from __future__ import annotations

import grpc
import pytest

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from tests.security.conftest import SecureHost
from tests.snapshot.conftest import CAMERA, http_get

pytestmark = pytest.mark.security


async def test_snapshots_need_a_viewer_scoped_to_the_camera(secured_host: SecureHost) -> None:
    served = secured_host
    async with grpc.aio.insecure_channel(served.target) as channel:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        await cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(
                camera=camera_pb2.Camera(source_uri="sim://road?seed=1", enabled=False),
                camera_id=CAMERA,
            ),
            metadata=served.metadata("operator"),
        )
    port = served.host.http_port
    path = f"/cameras/{CAMERA}/snapshot.jpg"

    refused = await http_get(port, path)
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert (await http_get(port, "/cameras.json")).status == 401
    wrong = await http_get(port, path, Authorization="Bearer not-a-jwt")
    assert wrong.status == 401

    viewer = {"Authorization": f"Bearer {served.token('viewer')}"}
    shown = await http_get(port, path, **viewer)
    assert shown.status == 200
    assert shown.body.startswith(b"\xff\xd8\xff")  # a JPEG
    listing = (await http_get(port, "/cameras.json", **viewer)).json()["cameras"]
    assert [c["camera"] for c in listing] == [CAMERA]

    other = {"Authorization": f"Bearer {served.token('viewer', cameras=['cam-other'])}"}
    forbidden = await http_get(port, path, **other)
    assert forbidden.status == 403
    assert CAMERA in forbidden.json()["error"]
    assert (await http_get(port, "/cameras.json", **other)).json()["cameras"] == []
    # An unknown camera answers only once the caller may know: 404 to a viewer.
    assert (await http_get(port, "/cameras/cam-gone/snapshot.jpg", **viewer)).status == 404
    # The page holds no data: it loads, its script then asks for a credential.
    assert (await http_get(port, "/")).status == 200
