"""A whole system in one process on loopback, as `serve all` runs it (dev: open on
loopback): decoder, inference and analytics, a fresh database, and a simulated camera with
a counting line, a zone and a lane."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its.common.v1 import geometry_pb2
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import (
    AnalyticsServiceSettings,
    DecoderSettings,
    InferenceSettings,
    ServiceHost,
    Settings,
)
from its_camera_ai.decoder.server import decoder_unit
from its_camera_ai.inference.server import inference_unit

CAMERA = "cam-snap"
WIDTH, HEIGHT = 320, 240
LINE = ((160.0, 40.0), (160.0, 230.0))


def _point(x: float, y: float) -> geometry_pb2.Point:
    return geometry_pb2.Point(x=x, y=y)


def _polygon(*xy: tuple[float, float]) -> geometry_pb2.Polygon:
    return geometry_pb2.Polygon(vertices=[_point(x, y) for x, y in xy])


def sim_camera(fps: int = 5) -> camera_pb2.Camera:
    return camera_pb2.Camera(
        source_uri=f"sim://road?seed=5&width={WIDTH}&height={HEIGHT}&fps={fps}",
        enabled=True,
        lines=[
            camera_pb2.CountingLine(
                id="stop-line",
                segment=geometry_pb2.LineSegment(start=_point(*LINE[0]), end=_point(*LINE[1])),
            )
        ],
        zones=[camera_pb2.Zone(id="kerb", polygon=_polygon((5, 5), (60, 5), (60, 30), (5, 30)))],
        lanes=[
            camera_pb2.Lane(
                id="east",
                polygon=_polygon((0, 239), (319, 239), (319, 200), (0, 200)),
                travel_direction=geometry_pb2.LineSegment(
                    start=_point(10, 220), end=_point(300, 220)
                ),
            )
        ],
    )


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _get(url: str, headers: dict[str, str]) -> Response:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return Response(answer.status, dict(answer.headers), answer.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, dict(exc.headers), exc.read())


async def http_get(port: int, path: str, **headers: str) -> Response:
    """GET on the side port from a thread: the host serves on this very event loop."""
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}", headers)


async def camera_json(port: int, **headers: str) -> dict[str, Any]:
    """The camera's entry in ``/cameras.json`` (empty until analytics knows the camera)."""
    listing = (await http_get(port, "/cameras.json", **headers)).json()["cameras"]
    found: dict[str, Any] = next((c for c in listing if c["camera"] == CAMERA), {})
    return found


async def wait_for_track(port: int, within: float = 60.0) -> dict[str, Any]:
    """The camera's JSON once its engine holds a track."""
    deadline = time.monotonic() + within
    while True:
        described = await camera_json(port)
        if described.get("tracks"):
            return described
        assert time.monotonic() < deadline, f"no track within {within} s: {described}"
        await asyncio.sleep(0.2)


@dataclass
class System:
    host: ServiceHost
    cameras: camera_service_pb2_grpc.CameraServiceStub

    @property
    def http_port(self) -> int:
        return self.host.http_port


@pytest.fixture
async def system(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[System]:
    settings = Settings(
        grpc={"host": "127.0.0.1", "port": 0, "drain_seconds": 0.5},
        http={"host": "127.0.0.1", "port": 0},
        database={"dsn": postgres_dsn},
        decoder=DecoderSettings(
            source_keys=f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
            ring_prefix=f"s{uuid.uuid4().hex[:8]}-",
        ),
    )
    units = [
        decoder_unit(),
        analytics_unit(AnalyticsServiceSettings(spool_dir=tmp_path / "spool")),
        inference_unit(InferenceSettings(max_queue_delay_ms=2.0)),
    ]
    host = ServiceHost(settings, units)
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    try:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        await cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(camera=sim_camera(), camera_id=CAMERA)
        )
        yield System(host, cameras)
    finally:
        await channel.close()
        await host.stop()
