"""Capture-time sanity through the real service (issue #19, item 1): a frame whose capture
time is ahead of analytics' clock by more than the allowed skew, or older than the largest
bin, is rejected on its own, counted by reason, and never moves the camera's clock, so one
bad client cannot silence a camera (and the state persisted after it stays sound)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from its.analytics.v1 import detection_batch_pb2
from its.common.v1 import error_reason_pb2
from its_camera_ai.analytics import FrameInput
from its_camera_ai.analytics.server import analytics_unit
from its_camera_ai.common import AnalyticsEngineSettings, AnalyticsServiceSettings, ServiceHost
from its_camera_ai.testing import host_settings
from tests.analytics import synth
from tests.analytics.test_service_support import (
    CAMERA_ID,
    camera_proto,
    serve_cameras,
    stream,
    to_batches,
    traffic,
)

_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
_YEAR_NS = 365 * _DAY_NS
_LATE = error_reason_pb2.ERROR_REASON_LATE_DATA
_INVALID = error_reason_pb2.ERROR_REASON_INVALID_FIELD
_Cause = detection_batch_pb2.FrameRejectionCause
_FUTURE = detection_batch_pb2.FRAME_REJECTION_CAUSE_CAPTURE_TIME_IN_FUTURE
_TOO_OLD = detection_batch_pb2.FRAME_REJECTION_CAUSE_CAPTURE_TIME_TOO_OLD


@pytest.fixture
async def decoder() -> AsyncIterator[str]:
    async with serve_cameras({CAMERA_ID: camera_proto(synth.road_scene())}) as target:
        yield target


class Analytics:
    """An analytics service on loopback that can be restarted on the same database."""

    def __init__(self, dsn: str, settings: AnalyticsServiceSettings) -> None:
        self.dsn = dsn
        self.settings = settings
        self.host: ServiceHost | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> grpc.aio.Channel:
        self.host = ServiceHost(host_settings(self.dsn), [analytics_unit(self.settings)])
        await self.host.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.host.grpc_port}")
        return self.channel

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.host is not None:
            await self.host.stop()
        self.host = self.channel = None

    def rejected(self, reason: str) -> float | None:
        assert self.host is not None
        return self.host.runtime.metrics.get_sample_value(
            "analytics_frames_total", {"result": "rejected", "reason": reason}
        )


@pytest.fixture
async def analytics(postgres_dsn: str, decoder: str, tmp_path: Path) -> AsyncIterator[Analytics]:
    service = Analytics(
        postgres_dsn, AnalyticsServiceSettings(spool_dir=tmp_path / "spool", decoder_target=decoder)
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def _shifted(frame: FrameInput, capture_ns: int) -> FrameInput:
    return replace(frame, capture_time_ns=capture_ns)


def _batch(
    frames: list[FrameInput], producer: str, sequence: int
) -> detection_batch_pb2.DetectionBatch:
    batch = to_batches(frames, producer, per_batch=len(frames))[0]
    batch.sequence = sequence
    return batch


async def test_future_capture_times_are_rejected_and_never_silence_the_camera(
    analytics: Analytics,
) -> None:
    frames = traffic(6.0)
    now = time.time_ns()
    day_ahead = _shifted(frames[20], now + _DAY_NS)
    years_ahead = _shifted(frames[21], now + 30 * _YEAR_NS)
    batches = [
        _batch(frames[:20], "inference-0/future", 1),
        _batch([day_ahead], "inference-0/future", 2),
        _batch([years_ahead], "inference-0/future", 3),
        _batch(frames[22:40], "inference-0/future", 4),
    ]
    assert analytics.channel is not None
    acks = await stream(analytics.channel, batches)

    assert [a.accepted_frames for a in acks] == [20, 0, 0, 18]
    for ack, frame in ((acks[1], day_ahead), (acks[2], years_ahead)):
        [rejection] = ack.rejections
        assert rejection.frame_sequence == frame.frame_sequence
        assert rejection.reason == _INVALID
        assert rejection.cause == _FUTURE
        assert "capture_time" in rejection.message
    assert analytics.rejected("capture_time_in_future") == 2

    # The state persisted after the bad frames is sound: after a restart the camera's
    # current frames are still accepted.
    await analytics.stop()
    channel = await analytics.start()
    acks = await stream(channel, [_batch(frames[40:], "inference-0/future-2", 1)])
    assert acks[0].accepted_frames == len(frames) - 40
    assert not acks[0].rejections


async def test_capture_times_older_than_the_largest_bin_are_rejected_and_never_move_the_clock(
    analytics: Analytics,
) -> None:
    frames = traffic(4.0)
    now = time.time_ns()
    horizon_ns = max(AnalyticsEngineSettings().bin_seconds) * _NS
    batches = [
        _batch([_shifted(frames[0], now - 30 * _YEAR_NS)], "inference-0/old", 1),
        _batch([_shifted(frames[1], now - horizon_ns - 60 * _NS)], "inference-0/old", 2),
        # Inside the horizon: accepted, although older than the frames above claimed to be.
        _batch([_shifted(frames[2], now - horizon_ns + 60 * _NS)], "inference-0/old", 3),
        _batch(frames[3:], "inference-0/old", 4),
    ]
    assert analytics.channel is not None
    acks = await stream(analytics.channel, batches)

    assert [a.accepted_frames for a in acks] == [0, 0, 1, len(frames) - 3]
    for ack in acks[:2]:
        [rejection] = ack.rejections
        assert rejection.reason == _LATE
        assert rejection.cause == _TOO_OLD
    assert analytics.rejected("capture_time_too_old") == 2
    assert analytics.rejected("capture_time_in_future") is None


async def test_the_allowed_skew_is_configurable(
    postgres_dsn: str, decoder: str, tmp_path: Path
) -> None:
    settings = AnalyticsServiceSettings(
        spool_dir=tmp_path / "spool",
        decoder_target=decoder,
        engine=AnalyticsEngineSettings(max_capture_skew_seconds=120.0),
    )
    service = Analytics(postgres_dsn, settings)
    channel = await service.start()
    try:
        frames = traffic(2.0)
        now = time.time_ns()
        ahead = [_shifted(frames[0], now + 60 * _NS), _shifted(frames[1], now + 180 * _NS)]
        acks = await stream(channel, [_batch(ahead, "inference-0/skew", 1)])
        assert acks[0].accepted_frames == 1
        assert [r.frame_sequence for r in acks[0].rejections] == [frames[1].frame_sequence]
    finally:
        await service.stop()
