"""Shared by the analytics service tests: a CameraService serving fixed cameras, batches built
from synthetic traffic, the totals an undisturbed engine computes from them, and what the
tables hold. (A module of helpers, no tests: the service and reliability tests import it.)"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import grpc
import numpy as np

from its.analytics.v1 import (
    analytics_service_pb2,
    analytics_service_pb2_grpc,
    detection_batch_pb2,
)
from its.camera.v1 import camera_pb2, camera_service_pb2, camera_service_pb2_grpc, camera_status_pb2
from its.common.v1 import detection_pb2, geometry_pb2
from its_camera_ai.analytics import (
    CameraAnalytics,
    EventRecord,
    EventType,
    FrameInput,
    LineCrossing,
    ObjectClass,
    Severity,
)
from its_camera_ai.scene import Direction, SceneSpec, scene_from_proto
from tests.analytics import synth

CAMERA_ID = synth.CAMERA
_NS = 1_000_000_000
# Analytics refuses capture times older than its largest bin (15 min) or ahead of its clock:
# test traffic ends this long before the moment it is made.
_RECENT_MARGIN_S = 30


def recent_start_ns(duration_s: float) -> int:
    """A capture time for traffic of ``duration_s`` made now: it ends ``_RECENT_MARGIN_S``
    before now, well inside what analytics accepts (and retention keeps)."""
    return time.time_ns() - round((duration_s + _RECENT_MARGIN_S) * _NS)


def camera_proto(spec: SceneSpec, size: tuple[int, int] = (synth.W, synth.H)) -> camera_pb2.Camera:
    camera = camera_pb2.Camera()
    camera.resolution.width, camera.resolution.height = size
    for line in spec.lines:
        camera.lines.add(id=line.id, segment={"start": dict(zip("xy", line.start, strict=True)),
                                              "end": dict(zip("xy", line.end, strict=True))},
                         direction=int(line.direction))  # fmt: skip
    for lane in spec.lanes:
        camera.lanes.add(
            id=lane.id,
            polygon={"vertices": [dict(zip("xy", p, strict=True)) for p in lane.polygon]},
            travel_direction={"start": dict(zip("xy", lane.travel_start, strict=True)),
                              "end": dict(zip("xy", lane.travel_end, strict=True))},
        )  # fmt: skip
    if spec.calibration is not None:
        for image, world in zip(spec.calibration.image_points, spec.calibration.world_points,
                                strict=True):  # fmt: skip
            camera.calibration.points.add(
                image_point=dict(zip("xy", image, strict=True)),
                world_point=dict(zip("xy", world, strict=True)),
            )
    return camera


class FixedCameraService(camera_service_pb2_grpc.CameraServiceServicer):
    """The decoder's CameraService as analytics uses it (ListCameras, WatchCameraStatus),
    serving fixed cameras: no decoding, and scenes the decoder's frame checks would refuse
    (the simulator's lanes reach beyond the image) are served as given."""

    def __init__(self, cameras: dict[str, camera_pb2.Camera]) -> None:
        self.cameras = cameras

    async def ListCameras(
        self, request: camera_service_pb2.ListCamerasRequest, context: Any
    ) -> camera_service_pb2.ListCamerasResponse:
        listed = []
        for camera_id, camera in sorted(self.cameras.items()):
            named = camera_pb2.Camera(name=f"cameras/{camera_id}")
            named.MergeFrom(camera)
            listed.append(named)
        return camera_service_pb2.ListCamerasResponse(cameras=listed)

    async def WatchCameraStatus(
        self, request: camera_service_pb2.WatchCameraStatusRequest, context: Any
    ) -> AsyncIterator[camera_service_pb2.WatchCameraStatusResponse]:
        for camera_id in sorted(self.cameras):
            status = camera_status_pb2.CameraStatus(name=f"cameras/{camera_id}/status")
            yield camera_service_pb2.WatchCameraStatusResponse(status=status)
        await asyncio.Event().wait()  # no changes: open until the client goes


@contextlib.asynccontextmanager
async def serve_cameras(cameras: dict[str, camera_pb2.Camera]) -> AsyncIterator[str]:
    """A ``FixedCameraService`` on loopback; yields its target (``host:port``)."""
    server = grpc.aio.server()
    camera_service_pb2_grpc.add_CameraServiceServicer_to_server(FixedCameraService(cameras), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def traffic(
    duration_s: float = 24.0, fps: float = 10.0, start_ns: int | None = None
) -> list[FrameInput]:
    """Cars in both directions, a few seconds apart, crossing the "all" line at x = 40 m;
    captured from ``start_ns`` (default: recent, made now)."""
    agents = [synth.Agent(synth.straight(0.0, -1.75, 54.0, t_start=1.5 * i)) for i in range(6)] + [
        synth.Agent(synth.straight(0.0, -5.25, 72.0, t_start=2.0 + 3.0 * i)) for i in range(4)
    ]
    if start_ns is None:
        start_ns = recent_start_ns(duration_s)
    return synth.frames(agents, duration_s, fps=fps, start_ns=start_ns)


def _class(number: float) -> detection_pb2.ObjectClass.ValueType:
    return detection_pb2.ObjectClass.ValueType(int(number))


def to_batches(
    frames: Sequence[FrameInput], producer: str, per_batch: int = 8, camera: str = CAMERA_ID
) -> list[detection_batch_pb2.DetectionBatch]:
    out = []
    for i in range(0, len(frames), per_batch):
        batch = detection_batch_pb2.DetectionBatch(
            producer_id=producer,
            sequence=i // per_batch + 1,
            camera=f"cameras/{camera}",
            model="models/yolo",
            model_version=frames[i].model_version or "1",
        )
        for f in frames[i : i + per_batch]:
            wire = batch.frames.add(frame_sequence=f.frame_sequence,
                                    frame_size={"width": f.width, "height": f.height})  # fmt: skip
            wire.capture_time.FromNanoseconds(f.capture_time_ns)
            for x0, y0, x1, y1, score, cls in f.detections.tolist():
                wire.detections.append(detection_pb2.Detection(
                    box=geometry_pb2.BoundingBox(x_min=x0, y_min=y0, x_max=x1, y_max=y1),
                    score=score, object_class=_class(cls)))  # fmt: skip
        out.append(batch)
    return out


@dataclass
class Totals:
    """What the tables hold (or an undisturbed engine computes): comparable as a whole."""

    bins: dict[tuple[Any, ...], tuple[int, int, int]]  # key -> (volume, frames, speed_count)
    crossings: int
    events: set[str]


def reference(frames: Iterable[FrameInput], spec: SceneSpec) -> Totals:
    engine = CameraAnalytics(CAMERA_ID, scene_from_proto(camera_proto(spec)))
    crossings = 0
    events: set[str] = set()
    for f in frames:
        # As the service sees it: float32 scores on the wire, the batches' model version.
        det = f.detections.copy()
        det[:, 4] = det[:, 4].astype(np.float32)
        outcome = engine.process(replace(f, detections=det, model_version="1"))
        crossings += len(outcome.crossings)
        events |= {e.event_id for e in outcome.events}
    bins = {
        (r.key.scope.value, r.key.scope_id, int(r.key.object_class), int(r.key.direction),
         r.key.bin_start_ns, r.key.bin_seconds): (r.volume, r.frames, r.speed_count)
        for r in engine.drain_bins()
    }  # fmt: skip
    return Totals(bins, crossings, events)


async def stored(dsn: str, camera_id: str | None = None) -> Totals:
    """What the tables hold: for every camera, or for ``camera_id`` alone."""
    where, args = ("", ()) if camera_id is None else (" WHERE camera_id = $1", (camera_id,))
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT scope, scope_id, object_class, direction,"
            " (extract(epoch FROM bin_start) * 1e9)::bigint AS start_ns, bin_seconds,"
            " volume, frames, speed_count FROM analytics_bins" + where,
            *args,
        )
        crossings = await connection.fetchval(
            "SELECT count(*) FROM analytics_crossings" + where, *args
        )
        events = await connection.fetch("SELECT event_id FROM analytics_events" + where, *args)
    finally:
        await connection.close()
    bins = {
        (r["scope"], r["scope_id"], r["object_class"], r["direction"], r["start_ns"],
         r["bin_seconds"]): (r["volume"], r["frames"], r["speed_count"])
        for r in rows
    }  # fmt: skip
    return Totals(bins, crossings, {r["event_id"] for r in events})


_US = "(extract(epoch FROM {}) * 1000000)::bigint"


async def stored_records(
    dsn: str, camera_id: str
) -> tuple[list[LineCrossing], dict[str, EventRecord]]:
    """The camera's crossings and events as the tables hold them (times to the microsecond,
    as stored; events without their evidence)."""
    connection = await asyncpg.connect(dsn)
    try:
        crossings = await connection.fetch(
            f"SELECT line_id, track_id, object_class, direction, {_US.format('crossing_time')}"
            " AS t_us, speed_kmh, lane_id FROM analytics_crossings WHERE camera_id = $1"
            " ORDER BY crossing_time, line_id, track_id",
            camera_id,
        )
        events = await connection.fetch(
            f"SELECT event_id, type, severity, {_US.format('start_time')} AS start_us,"
            f" {_US.format('end_time')} AS end_us, track_id, object_class, lane_id, zone_id,"
            f" description, {_US.format('update_time')} AS update_us"
            " FROM analytics_events WHERE camera_id = $1",
            camera_id,
        )
    finally:
        await connection.close()
    return [
        LineCrossing(r["line_id"], r["track_id"], ObjectClass(r["object_class"]),
                     Direction(r["direction"]), r["t_us"] * 1000, r["speed_kmh"], r["lane_id"])
        for r in crossings
    ], {
        r["event_id"]: EventRecord(
            r["event_id"], camera_id, EventType(r["type"]), Severity(r["severity"]),
            r["start_us"] * 1000, None if r["end_us"] is None else r["end_us"] * 1000,
            r["track_id"], ObjectClass(r["object_class"]), r["lane_id"], r["zone_id"], None,
            r["description"], r["update_us"] * 1000)
        for r in events
    }  # fmt: skip


async def producer_mark(dsn: str, producer: str) -> int | None:
    connection = await asyncpg.connect(dsn)
    try:
        mark = await connection.fetchval(
            "SELECT last_sequence FROM analytics_producers WHERE producer_id = $1", producer
        )
    finally:
        await connection.close()
    return None if mark is None else int(mark)


async def _requests(
    batches: Iterable[detection_batch_pb2.DetectionBatch],
) -> AsyncIterator[analytics_service_pb2.StreamDetectionBatchesRequest]:
    for batch in batches:
        yield analytics_service_pb2.StreamDetectionBatchesRequest(batch=batch)


async def stream(
    channel: grpc.aio.Channel, batches: Iterable[detection_batch_pb2.DetectionBatch]
) -> list[analytics_service_pb2.StreamDetectionBatchesResponse]:
    """Send the batches on one stream, collect every acknowledgement (raises on a stream
    error)."""
    stub = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
    call = stub.StreamDetectionBatches(_requests(batches))
    return [ack async for ack in call]
