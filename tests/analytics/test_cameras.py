"""Analytics learns camera scenes from a real decoder's CameraService on loopback: a camera
created, then its scene updated, then the decoder gone (last scenes stay in use)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, DecoderSettings, ServiceHost
from its_camera_ai.decoder.server import decoder_unit
from its_camera_ai.scene import SceneSpec
from its_camera_ai.testing import host_settings
from tests.analytics import synth
from tests.analytics.test_service_support import (
    camera_proto,
    stored_records,
    stream,
    to_batches,
    traffic,
)
from tests.decoder.conftest import new_key

CAMERA_ID = "cam-live"
REFRESH_SECONDS = 1.0


def _camera(spec: SceneSpec) -> camera_pb2.Camera:
    camera = camera_proto(spec)
    # Disabled: the decoder keeps the camera without connecting to its source.
    camera.source_uri, camera.enabled = "rtsp://camera.test/stream", False
    return camera


def _renamed_lines(spec: SceneSpec) -> SceneSpec:
    lines = tuple(dataclasses.replace(line, id=f"{line.id}-v2") for line in spec.lines)
    return dataclasses.replace(spec, lines=lines)


async def test_scenes_follow_the_decoder_and_outlive_it(postgres_dsn: str, tmp_path: Path) -> None:
    decoder = ServiceHost(
        host_settings(postgres_dsn), [decoder_unit(DecoderSettings(source_keys=f"k1:{new_key()}"))]
    )
    await decoder.start()
    settings = AnalyticsServiceSettings(
        spool_dir=tmp_path / "spool",
        decoder_target=f"127.0.0.1:{decoder.grpc_port}",
        camera_refresh_seconds=REFRESH_SECONDS,
    )
    analytics = ServiceHost(host_settings(postgres_dsn), [analytics_unit(settings)])
    await analytics.start()
    decoder_channel = grpc.aio.insecure_channel(f"127.0.0.1:{decoder.grpc_port}")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{analytics.grpc_port}")
    cameras = camera_service_pb2_grpc.CameraServiceStub(decoder_channel)
    try:
        batches = to_batches(traffic(), "inference-0/live", camera=CAMERA_ID)
        created = await cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(
                camera=_camera(synth.road_scene()), camera_id=CAMERA_ID
            )
        )
        acks = await stream(channel, batches[:6])
        assert sum(a.accepted_frames for a in acks) == 48  # the new camera is known

        update = _camera(_renamed_lines(synth.road_scene()))
        update.name = created.camera.name
        await cameras.UpdateCamera(
            camera_service_pb2.UpdateCameraRequest(
                camera=update, update_mask=field_mask_pb2.FieldMask(paths=["lines"])
            )
        )
        await asyncio.sleep(3 * REFRESH_SECONDS)  # the next periodic listing has it
        acks = await stream(channel, batches[6:12])
        assert sum(a.accepted_frames for a in acks) == 48

        await decoder.stop()
        acks = await stream(channel, batches[12:])  # the last scene listed stays in use
        assert sum(a.accepted_frames for a in acks) == 8 * len(batches[12:])
        elsewhere = to_batches(traffic(2.0), "inference-0/other", camera="cam-elsewhere")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(channel, elsewhere)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE  # unknown, not refused

        crossings, _ = await stored_records(postgres_dsn, CAMERA_ID)
        line_ids = [c.line_id for c in crossings]
        assert "all" in line_ids  # counted with the scene created...
        assert "all-v2" in line_ids  # ...then with the updated one
        assert line_ids.index("all-v2") > max(i for i, x in enumerate(line_ids) if x == "all")
    finally:
        await channel.close()
        await decoder_channel.close()
        await analytics.stop()
        await decoder.stop()
