"""A principal scoped to camera A sees nothing of camera B, through every path that reads
or changes a camera: the camera service, each query RPC (filters, summaries, streams,
stats, single events) and the analytics reset."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from its.analytics.v1 import analytics_service_pb2, analytics_service_pb2_grpc
from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc
from its.common.v1 import frame_pb2, time_range_pb2
from its.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from its.query.v1 import query_service_pb2, query_service_pb2_grpc
from tests.security.conftest import SecureHost, running_secure_host

pytestmark = pytest.mark.security

_HOUR = 3600
_BINS = (
    "INSERT INTO analytics_bins (camera_id, scope, scope_id, object_class, direction,"
    " bin_start, bin_seconds, final, volume, speed_count, speed_sum_kmh, speed_sq_sum_kmh2,"
    " speed_hist, headway_count, headway_sum_s, gap_count, gap_sum_s, frames, occupied_frames,"
    " object_frames, density_frames, density_sum_per_km, travel_distance_m, travel_time_s,"
    " queue_frames, queue_sum_m, queue_max_m, dwell_count, dwell_sum_s, dwell_max_s)"
    " SELECT c, 'camera', '', 1, 0, to_timestamp($1 + b * 60), 60, true, 3, 3, 150, 7500,"
    " '{0,3}', 2, 10, 2, 6, 240, 80, 100, 240, 30, 900, 60, 240, 120, 12, 0, 0, 0"
    " FROM unnest($2::text[]) AS c, generate_series(0, 59) AS b"
)
_EVENT = (
    "INSERT INTO analytics_events (event_id, camera_id, type, severity, start_time,"
    " object_class, lane_id, zone_id, description, details, update_time)"
    " VALUES ($1, $2, 1, 1, to_timestamp($3), 1, '', '', '', '{}', now())"
)


@pytest.fixture
async def scoped(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[SecureHost]:
    async with running_secure_host(postgres_dsn, tmp_path, with_inference=False) as served:
        yield served


def _range(start: float, end: float) -> time_range_pb2.TimeRange:
    return time_range_pb2.TimeRange(
        start_time=timestamp_pb2.Timestamp(seconds=int(start)),
        end_time=timestamp_pb2.Timestamp(seconds=int(end)),
    )


async def _denied(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED, caught.value.details()
    assert "cameras/b" in (caught.value.details() or "")  # b, or the b2 it would create


async def test_a_caller_scoped_to_camera_a_sees_nothing_of_camera_b(scoped: SecureHost) -> None:
    start = (time.time() // _HOUR - 2) * _HOUR
    admin = scoped.metadata("admin")
    scoped_a = scoped.metadata("operator", subject="alice", cameras=["cameras/a"])
    async with grpc.aio.insecure_channel(scoped.target) as channel:
        cameras = camera_service_pb2_grpc.CameraServiceStub(channel)
        for camera_id in ("a", "b"):
            await cameras.CreateCamera(
                camera_service_pb2.CreateCameraRequest(
                    camera_id=camera_id,
                    camera=camera_pb2.Camera(source_uri="sim://road", enabled=False),
                ),
                metadata=admin,
            )
        dsn = scoped.host.settings.database.dsn
        assert dsn is not None
        connection = await asyncpg.connect(dsn.get_secret_value())
        try:
            await connection.execute(_BINS, start, ["a", "b"])
            await connection.execute(_EVENT, "ev-a", "a", start + 60)
            await connection.execute(_EVENT, "ev-b", "b", start + 60)
        finally:
            await connection.close()

        # The camera service: lists omit B, B itself is refused.
        listed = await cameras.ListCameras(
            camera_service_pb2.ListCamerasRequest(), metadata=scoped_a
        )
        assert [camera.name for camera in listed.cameras] == ["cameras/a"]
        await _denied(
            cameras.GetCamera(
                camera_service_pb2.GetCameraRequest(name="cameras/b"), metadata=scoped_a
            )
        )
        await _denied(
            cameras.GetCameraStatus(
                camera_service_pb2.GetCameraStatusRequest(name="cameras/b/status"),
                metadata=scoped_a,
            )
        )
        await _denied(
            cameras.DeleteCamera(
                camera_service_pb2.DeleteCameraRequest(name="cameras/b"), metadata=scoped_a
            )
        )
        await _denied(
            cameras.CreateCamera(
                camera_service_pb2.CreateCameraRequest(
                    camera_id="b2", camera=camera_pb2.Camera(source_uri="sim://road", enabled=False)
                ),
                metadata=scoped_a,
            )
        )
        watch = cameras.WatchCameraStatus(
            camera_service_pb2.WatchCameraStatusRequest(), metadata=scoped_a, timeout=2
        )
        watched = await _names_until_deadline(watch)
        assert watched == {"cameras/a/status"}

        # The query service.
        query = query_service_pb2_grpc.QueryServiceStub(channel)
        span = _range(start, start + _HOUR)
        minute = duration_pb2.Duration(seconds=60)
        await _denied(
            query.GetTrafficCounts(
                query_service_pb2.GetTrafficCountsRequest(
                    camera="cameras/b", time_range=span, bin_size=minute
                ),
                metadata=scoped_a,
            )
        )
        counts = await query.GetTrafficCounts(
            query_service_pb2.GetTrafficCountsRequest(
                camera="cameras/a", time_range=span, bin_size=minute
            ),
            metadata=scoped_a,
        )
        assert sum(b.volume for b in counts.bins) > 0
        summary = await query.GetTrafficSummary(
            query_service_pb2.GetTrafficSummaryRequest(time_range=span), metadata=scoped_a
        )
        assert {s.camera for s in summary.summaries} == {"cameras/a"}
        everyone = await query.GetTrafficSummary(
            query_service_pb2.GetTrafficSummaryRequest(time_range=span), metadata=admin
        )
        assert {s.camera for s in everyone.summaries} == {"cameras/a", "cameras/b"}
        await _denied(
            query.GetTrafficSummary(
                query_service_pb2.GetTrafficSummaryRequest(cameras=["cameras/b"], time_range=span),
                metadata=scoped_a,
            )
        )
        events = await query.ListEvents(
            query_service_pb2.ListEventsRequest(parent="cameras/-"), metadata=scoped_a
        )
        assert [e.name for e in events.events] == ["cameras/a/events/ev-a"]
        await _denied(
            query.ListEvents(
                query_service_pb2.ListEventsRequest(parent="cameras/b"), metadata=scoped_a
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await query.GetEvent(
                query_service_pb2.GetEventRequest(name="cameras/b/events/ev-b"), metadata=scoped_a
            )
        assert hidden.value.code() is grpc.StatusCode.NOT_FOUND
        await _denied(
            query.GetCameraStats(
                query_service_pb2.GetCameraStatsRequest(name="cameras/b/stats"), metadata=scoped_a
            )
        )
        await _denied(
            _first(
                query.StreamEvents(
                    query_service_pb2.StreamEventsRequest(camera="cameras/b"), metadata=scoped_a
                )
            )
        )

        # The analytics reset.
        analytics = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
        await _denied(
            analytics.ResetCameraState(
                analytics_service_pb2.ResetCameraStateRequest(camera="cameras/b"), metadata=scoped_a
            )
        )


async def _names_until_deadline(watch: object) -> set[str]:
    names: set[str] = set()
    try:
        async for message in watch:  # type: ignore[attr-defined]
            names.add(message.status.name)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    return names


async def _first(stream: object) -> None:
    async for _ in stream:  # type: ignore[attr-defined]
        return


async def test_a_stream_of_every_camera_carries_only_the_scoped_ones(scoped: SecureHost) -> None:
    scoped_a = scoped.metadata("viewer", subject="alice", cameras=["a"])
    seen: list[str] = []
    async with grpc.aio.insecure_channel(scoped.target) as channel:
        query = query_service_pb2_grpc.QueryServiceStub(channel)

        async def read() -> None:
            while True:  # the stream answers UNAVAILABLE until its first database read
                stream = query.StreamEvents(
                    query_service_pb2.StreamEventsRequest(), metadata=scoped_a
                )
                try:
                    async for message in stream:
                        if message.HasField("event"):
                            seen.append(message.event.name)
                            return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                        raise
                await asyncio.sleep(0.2)

        reader = asyncio.create_task(read())
        dsn = scoped.host.settings.database.dsn
        assert dsn is not None
        connection = await asyncpg.connect(dsn.get_secret_value())
        try:
            # B's event first, each round, until the stream has carried one of A's.
            for round_ in range(50):
                now = time.time()
                await connection.execute(_EVENT, f"ev-b{round_}", "b", now)
                await connection.execute(_EVENT, f"ev-a{round_}", "a", now)
                done, _ = await asyncio.wait([reader], timeout=0.2)
                if done:
                    break
        finally:
            await connection.close()
        await asyncio.wait_for(reader, 10)
    assert len(seen) == 1
    assert seen[0].startswith("cameras/a/events/ev-a")


async def test_detect_on_another_cameras_frames_is_refused(secure_host: SecureHost) -> None:
    scoped_a = secure_host.metadata("operator", subject="alice", cameras=["a"])
    async with grpc.aio.insecure_channel(secure_host.target) as channel:
        inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
        request = inference_service_pb2.DetectRequest(
            camera="cameras/b", frame=frame_pb2.FrameReference(ring_name="its-ring-b")
        )
        await _denied(inference.Detect(request, metadata=scoped_a))
