"""The inference service among its real peers: the decoder's cameras coming and going, and
the analytics service going down and coming back mid-stream."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from pathlib import Path

import asyncpg
import grpc

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, DecoderSettings, ServiceHost
from its_camera_ai.decoder.server import decoder_unit
from its_camera_ai.testing import (
    SIM_SIZE,
    RingFeeder,
    host_settings,
    inference_host,
    metric_value,
    recording_analytics,
    sim_frames,
    until,
)
from tests.analytics.test_service_support import serve_cameras
from tests.conftest import free_port


async def test_cameras_created_and_deleted_in_the_decoder_attach_and_detach(
    postgres_dsn: str,
) -> None:
    decoder = DecoderSettings(
        source_keys=f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
        ring_prefix=f"t{uuid.uuid4().hex[:8]}-",
        ring_slots=4,
    )
    # Decoder and inference in one process, as `serve all` runs them: the inference unit
    # finds the decoder on its own server.
    async with (
        recording_analytics() as (recorder, target),
        inference_host(decoder_unit(decoder), dsn=postgres_dsn, analytics_target=target) as host,
    ):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)

        async def create(camera_id: str, seed: int) -> None:
            uri = f"sim://road?seed={seed}&width=320&height=240&fps=15"
            await cameras.CreateCamera(
                camera_service_pb2.CreateCameraRequest(
                    camera=camera_pb2.Camera(source_uri=uri, enabled=True), camera_id=camera_id
                )
            )

        await create("cam-a", 1)
        await recorder.wait_frames("cameras/cam-a", 5)
        await create("cam-b", 2)
        await recorder.wait_frames("cameras/cam-b", 5)
        assert metric_value(host, "inference_cameras_attached") == 2

        await cameras.DeleteCamera(camera_service_pb2.DeleteCameraRequest(name="cameras/cam-a"))
        await until(lambda: metric_value(host, "inference_cameras_attached") == 1, "cam-a detached")
        before = len(recorder.frames["cameras/cam-a"])
        growing_b = len(recorder.frames["cameras/cam-b"])
        await asyncio.sleep(1.0)
        assert len(recorder.frames["cameras/cam-a"]) <= before + 2  # in flight at most
        assert len(recorder.frames["cameras/cam-b"]) > growing_b  # the other goes on
        frames = recorder.frames["cameras/cam-b"].values()
        assert all((f.frame_size.width, f.frame_size.height) == (320, 240) for f in frames)
        await channel.close()


async def test_analytics_down_then_back_loses_no_acknowledged_batch(
    postgres_dsn: str, ring_name: str, tmp_path: Path
) -> None:
    camera = camera_pb2.Camera()
    camera.resolution.width, camera.resolution.height = SIM_SIZE
    port = free_port()
    async with serve_cameras({"cam-a": camera}) as decoder_target:
        await _analytics_down_then_back(postgres_dsn, ring_name, tmp_path, port, decoder_target)


async def _analytics_down_then_back(
    postgres_dsn: str, ring_name: str, tmp_path: Path, port: int, decoder_target: str
) -> None:

    async def start_analytics() -> ServiceHost:
        settings = host_settings(postgres_dsn).model_copy(
            update={"grpc": host_settings().grpc.model_copy(update={"port": port})}
        )
        config = AnalyticsServiceSettings(
            spool_dir=tmp_path / "spool", decoder_target=decoder_target
        )
        analytics = ServiceHost(settings, [analytics_unit(config)])
        await analytics.start()
        return analytics

    feeder = RingFeeder(ring_name, [f for f, _ in sim_frames(10)], fps=15.0, loops=1000)
    analytics: ServiceHost | None = await start_analytics()
    # A failure anywhere below must not leave the feeder writing or analytics serving on
    # its port: later tests would run next to them (and a slow machine is when it fails).
    try:
        async with inference_host(
            cameras={"cam-a": ring_name},
            analytics_target=f"127.0.0.1:{port}",
            reconnect_initial_seconds=0.05,
            reconnect_max_seconds=0.5,
        ) as host:
            acknowledged = "inference_analytics_frames_acknowledged_total"
            feeder.start()
            await until(lambda: metric_value(host, acknowledged) >= 10, "first acknowledgements")
            await analytics.stop()
            analytics = None
            down_at = metric_value(host, acknowledged)
            await asyncio.sleep(2.0)  # frames keep coming; nothing can be acknowledged
            assert metric_value(host, acknowledged) == down_at
            analytics = await start_analytics()
            await asyncio.sleep(1.0)
            feeder.close()
            delivered = "inference_frames_total"
            await until(
                lambda: (
                    metric_value(host, acknowledged) == metric_value(host, delivered, source="ring")
                ),
                "every delivered frame acknowledged",
            )
            assert metric_value(host, acknowledged) > down_at + 20
            assert metric_value(host, "inference_analytics_frames_undelivered_total") == 0
            assert metric_value(host, "inference_analytics_reconnects_total") >= 1
        # Leaving the host drained the producer into analytics, which still runs.
        assert metric_value(host, "inference_analytics_frames_undelivered_total") == 0
        sent = metric_value(host, "inference_analytics_batches_sent_total")
        await analytics.stop()
        analytics = None
    finally:
        feeder.close()
        if analytics is not None:
            await analytics.stop()
    connection = await asyncpg.connect(postgres_dsn)
    try:
        marks = await connection.fetch("SELECT last_sequence FROM analytics_producers")
    finally:
        await connection.close()
    # One producer; its durable mark is the last batch it sent (resends keep their number,
    # so sent batches count some twice).
    assert len(marks) == 1
    assert 0 < marks[0]["last_sequence"] <= sent


async def test_decoder_inference_and_analytics_in_one_process(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """`serve all`'s wiring: a camera created in the decoder is decoded into its ring, read
    and detected by inference and accepted by analytics, with no address configured."""
    decoder = DecoderSettings(
        source_keys=f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
        ring_prefix=f"t{uuid.uuid4().hex[:8]}-",
    )
    analytics = analytics_unit(AnalyticsServiceSettings(spool_dir=tmp_path / "spool"))
    async with inference_host(decoder_unit(decoder), analytics, dsn=postgres_dsn) as host:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        await cameras.CreateCamera(
            camera_service_pb2.CreateCameraRequest(
                camera=camera_pb2.Camera(
                    source_uri="sim://road?seed=4&width=320&height=240&fps=15", enabled=True
                ),
                camera_id="cam-e2e",
            )
        )
        accepted = "analytics_frames_total"
        await until(
            lambda: metric_value(host, accepted, result="accepted") >= 15, "frames analysed"
        )
        assert metric_value(host, accepted, result="rejected") == 0
        assert metric_value(host, "analytics_detections_total") > 0
        await channel.close()
