"""``AnalyticsService.ResetCameraState`` through gRPC, on a real service and PostgreSQL: a
camera whose persisted state was poisoned (by a capture time far ahead, as accepted before
time sanity) is recovered without a restart; nothing stored is lost; resets interleave
safely with the camera's batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import grpc
import numpy as np
import pytest

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc, detection_batch_pb2
from its.common.v1 import error_reason_pb2
from its_camera_ai.analytics import CameraAnalytics
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsServiceSettings, ServiceHost
from its_camera_ai.scene import scene_from_proto
from its_camera_ai.testing import host_settings
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    Totals,
    camera_proto,
    reference,
    serve_cameras,
    stored,
    stream,
    to_batches,
    traffic,
)
from tests.conftest import rpc_error_details

_NS = 1_000_000_000
_THIRTY_YEARS_NS = 30 * 365 * 86_400 * _NS


@dataclass
class Analytics:
    host: ServiceHost
    channel: grpc.aio.Channel
    dsn: str

    async def reset(self, camera: str) -> analytics_service_pb2.ResetCameraStateResponse:
        stub = analytics_service_pb2_grpc.AnalyticsServiceStub(self.channel)
        request = analytics_service_pb2.ResetCameraStateRequest(camera=camera)
        response: analytics_service_pb2.ResetCameraStateResponse = await stub.ResetCameraState(
            request
        )
        return response


@pytest.fixture
async def analytics(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[Analytics]:
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as decoder:
        settings = AnalyticsServiceSettings(spool_dir=tmp_path / "spool", decoder_target=decoder)
        host = ServiceHost(host_settings(postgres_dsn), [analytics_unit(settings)])
        await host.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}")
        try:
            yield Analytics(host, channel, postgres_dsn)
        finally:
            await channel.close()
            await host.stop()


async def _persisted_state(dsn: str) -> bytes | None:
    connection = await asyncpg.connect(dsn)
    try:
        state = await connection.fetchval(
            "SELECT state FROM analytics_camera_state WHERE camera_id = $1", CAMERA_ID
        )
    finally:
        await connection.close()
    return None if state is None else bytes(state)


async def _persist_state(dsn: str, state: bytes) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO analytics_camera_state (camera_id, state) VALUES ($1, $2)",
            CAMERA_ID,
            state,
        )
    finally:
        await connection.close()


async def test_a_poisoned_camera_is_recovered_without_a_restart(analytics: Analytics) -> None:
    frames = traffic(6.0)
    # The state a build without time sanity persisted: it took a frame 30 years ahead.
    poisoned = CameraAnalytics(CAMERA_ID, scene_from_proto(camera_proto(synth.road_scene())))
    for frame in frames[:20]:
        poisoned.process(frame)
    future_ns = time.time_ns() + _THIRTY_YEARS_NS
    assert poisoned.process(replace(frames[20], capture_time_ns=future_ns)).rejected is None
    poisoned.drain_bins()  # as after every batch: its bins up to the future frame are final
    await _persist_state(analytics.dsn, poisoned.state_bytes())

    batches = to_batches(frames[21:], "inference-0/poisoned", per_batch=10)
    [silenced] = await stream(analytics.channel, batches[:1])
    assert silenced.accepted_frames == 0
    assert {r.cause for r in silenced.rejections} == {
        detection_batch_pb2.FRAME_REJECTION_CAUSE_LATE_DATA
    }

    response = await analytics.reset(f"cameras/{CAMERA_ID}")
    assert response.camera == f"cameras/{CAMERA_ID}"
    assert response.discarded_last_capture_time.ToNanoseconds() == future_ns
    assert await _persisted_state(analytics.dsn) is None

    acks = await stream(analytics.channel, batches[1:])
    assert sum(a.accepted_frames for a in acks) == len(frames) - 31
    assert not any(a.rejections for a in acks)
    assert await _persisted_state(analytics.dsn) is not None
    resets = analytics.host.runtime.metrics.get_sample_value("analytics_camera_resets_total")
    assert resets == 1


def _sum(a: Totals, b: Totals) -> dict[tuple[object, ...], tuple[int, int, int]]:
    out = dict(a.bins)
    for key, values in b.bins.items():
        out[key] = tuple(np.add(out.get(key, (0, 0, 0)), values).tolist())  # type: ignore[assignment]
    return out


async def test_a_reset_keeps_the_stored_bins_and_closes_open_events(analytics: Analytics) -> None:
    frames = traffic()
    half = len(frames) // 2
    batches = to_batches(frames, "inference-0/reset", per_batch=10)
    await stream(analytics.channel, batches[: half // 10])
    before = await stored(analytics.dsn)
    assert before.bins

    response = await analytics.reset(f"cameras/{CAMERA_ID}")
    assert response.discarded_last_capture_time.ToNanoseconds() == frames[half - 1].capture_time_ns
    await stream(analytics.channel, batches[half // 10 :])

    # The fresh engine added to the bins stored before the reset instead of replacing them:
    # each holds what was stored plus what a fresh engine makes of the rest of the frames.
    after_reset = reference(frames[half:], synth.road_scene())
    assert (await stored(analytics.dsn)).bins == _sum(before, after_reset)


async def test_resets_between_batches_lose_no_batch(analytics: Analytics) -> None:
    frames = traffic()
    batches = to_batches(frames, "inference-0/busy", per_batch=4)
    streaming = asyncio.create_task(stream(analytics.channel, batches))
    resets = 0
    while not streaming.done():
        await analytics.reset(f"cameras/{CAMERA_ID}")
        resets += 1
        await asyncio.sleep(0.02)
    acks = await streaming
    assert [a.acknowledged_sequence for a in acks] == [b.sequence for b in batches]
    assert sum(a.accepted_frames for a in acks) == len(frames)
    assert resets >= 2
    # The persisted state is the engine after the last batch, or none (a reset after it).
    state = await _persisted_state(analytics.dsn)
    if state is not None:
        assert CameraAnalytics.from_state_bytes(state).last_ns == frames[-1].capture_time_ns
    metrics = analytics.host.runtime.metrics
    assert metrics.get_sample_value("analytics_camera_resets_total") == resets


@pytest.mark.parametrize("camera", ["", "road-1", "cameras/", "cameras/a/b", "projects/x"])
async def test_a_malformed_camera_name_is_invalid_argument(
    analytics: Analytics, camera: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await analytics.reset(camera)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error_details(caught.value) == ("INVALID_FIELD", ["camera"])


async def test_an_unknown_camera_is_not_found(analytics: Analytics) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await analytics.reset("cameras/nowhere")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert rpc_error_details(caught.value)[0] == error_reason_pb2.ErrorReason.Name(
        error_reason_pb2.ERROR_REASON_RESOURCE_NOT_FOUND
    ).removeprefix("ERROR_REASON_")
