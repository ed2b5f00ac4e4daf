"""Decoder fixtures: a real decoder on loopback gRPC with real PostgreSQL, sample videos
encoded here with PyAV, and helpers to wait for a camera's status and read its ring."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import grpc
import numpy as np
import pytest

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its.camera.v1 import camera_status_pb2 as status_pb2
from its_camera_ai import shm
from its_camera_ai.common import DecoderSettings, ServiceHost
from its_camera_ai.decoder.server import decoder_unit
from its_camera_ai.testing import host_settings

SAMPLE_SIZE = (320, 240)
SAMPLE_FPS = 30


def encode_sample(
    path: Path,
    codec: str,
    *,
    seconds: float = 2.0,
    fmt: str | None = None,
    size: tuple[int, int] = SAMPLE_SIZE,
) -> Path:
    """A small moving test pattern: a bright bar sweeping down over a changing colour."""
    width, height = size
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=SAMPLE_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        if codec == "libx265":
            stream.options = {"preset": "ultrafast", "x265-params": "log-level=error"}
        for index in range(round(seconds * SAMPLE_FPS)):
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[..., 0] = index * 4 % 256
            row = index * 4 % height
            rgb[row : row + 16, :, 1] = 255
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, SAMPLE_FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with h264.mp4, h265.mp4 and h264.ts (320x240, 2 s, 30 fps)."""
    root = tmp_path_factory.mktemp("samples")
    encode_sample(root / "h264.mp4", "libx264")
    encode_sample(root / "h265.mp4", "libx265")
    encode_sample(root / "h264.ts", "libx264", fmt="mpegts")
    return root


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def decoder_settings(samples: Path) -> DecoderSettings:
    return DecoderSettings(
        source_keys=f"k1:{new_key()}",
        file_roots=(samples,),
        # Unique per test: rings are host-wide objects.
        ring_prefix=f"t{uuid.uuid4().hex[:8]}-",
        ring_slots=4,
        connect_timeout_seconds=3.0,
        read_timeout_seconds=1.5,
        stall_timeout_seconds=3.0,
        backoff_initial_seconds=0.2,
        backoff_max_seconds=1.0,
    )


@dataclass
class Decoder:
    host: ServiceHost
    stub: camera_service_pb2_grpc.CameraServiceStub
    settings: DecoderSettings
    dsn: str

    def ring(self, camera_id: str) -> str:
        return self.settings.ring_prefix + camera_id

    async def create(self, camera_id: str, source_uri: str, **fields: object) -> camera_pb2.Camera:
        camera = camera_pb2.Camera(source_uri=source_uri, **fields)  # type: ignore[arg-type]
        reply = await self.stub.CreateCamera(
            camera_service_pb2.CreateCameraRequest(camera=camera, camera_id=camera_id)
        )
        return reply.camera

    async def status(self, camera_id: str) -> status_pb2.CameraStatus:
        reply = await self.stub.GetCameraStatus(
            camera_service_pb2.GetCameraStatusRequest(name=f"cameras/{camera_id}/status")
        )
        return reply.status

    async def wait_for(
        self,
        camera_id: str,
        done: Callable[[status_pb2.CameraStatus], bool],
        within: float = 15.0,
    ) -> status_pb2.CameraStatus:
        deadline = time.monotonic() + within
        while True:
            status = await self.status(camera_id)
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"status never got there: {status}")
            await asyncio.sleep(0.05)


async def start_decoder(
    settings: DecoderSettings, dsn: str
) -> tuple[ServiceHost, grpc.aio.Channel]:
    host = ServiceHost(host_settings(dsn), [decoder_unit(settings)])
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
    return host, channel


def ring_leftovers(prefix: str) -> list[str]:
    """Objects in /dev/shm of rings named with ``prefix``: rings, semaphores, temporaries."""
    return sorted(
        entry
        for entry in os.listdir(shm.SHM_DIR)
        if entry.startswith((f"its-ring-{prefix}", f"sem.its-ring-{prefix}"))
    )


@pytest.fixture
async def decoder(postgres_dsn: str, decoder_settings: DecoderSettings) -> AsyncIterator[Decoder]:
    host, channel = await start_decoder(decoder_settings, postgres_dsn)
    try:
        yield Decoder(
            host, camera_service_pb2_grpc.CameraServiceStub(channel), decoder_settings, postgres_dsn
        )
    finally:
        await channel.close()
        await host.stop()
    # A stopped decoder has unlinked every ring it wrote, and the tests' readers left no
    # semaphore behind (as one re-attaching while its ring closed used to).
    left = ring_leftovers(decoder_settings.ring_prefix)
    for entry in left:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(shm.SHM_DIR, entry))
    assert not left, f"left in {shm.SHM_DIR}: {left}"


def streaming(status: status_pb2.CameraStatus) -> bool:
    return status.state == status_pb2.CAMERA_STATE_STREAMING and status.frames_decoded >= 3


async def read_until_told(reader: shm.RingReader) -> None:
    """Read a ring until its reader is told the writer is gone (raises that error)."""
    while True:
        frame = await asyncio.to_thread(reader.read_latest, 2.0)
        if frame is not None:
            frame.release()


def read_frames(ring: str, count: int, timeout: float = 10.0) -> list[tuple[int, int, int, int]]:
    """(sequence, width, height, capture_ns) of ``count`` consecutive frames of a ring."""
    reader = shm.attach(ring)
    frames = []
    deadline = time.monotonic() + timeout
    try:
        while len(frames) < count and time.monotonic() < deadline:
            frame = reader.read_next(timeout=1.0)
            if frame is None:
                continue
            with frame:
                frames.append(
                    (frame.sequence, frame.geometry.width, frame.geometry.height, frame.capture_ns)
                )
                assert frame.array.any(), "an all-black frame: nothing was copied in"
    finally:
        reader.close()
    return frames
