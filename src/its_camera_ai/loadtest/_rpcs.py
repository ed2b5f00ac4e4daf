"""The calls a load run makes: QueryService reads and CameraService reads, each with a few
distinct requests (per camera, as a dashboard asks them), serialised once before the run."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from its.camera.v1 import camera_service_pb2
from its.common.v1 import time_range_pb2
from its.query.v1 import query_service_pb2

__all__ = ["GROUPS", "RPCS", "PlannedCall", "plan_calls"]

_NS = 1_000_000_000
_QUARTER_NS = 900 * _NS
_QUERY = "/its.query.v1.QueryService/"
_CAMERAS = "/its.camera.v1.CameraService/"


@dataclass(frozen=True)
class PlannedCall:
    """One RPC of a run: its name in reports, its method path and the serialised requests
    it picks from at random (several: a dashboard asks about several cameras)."""

    name: str
    method: str
    requests: tuple[bytes, ...]

    def pick(self, chooser: random.Random) -> bytes:
        return self.requests[chooser.randrange(len(self.requests))]


def _range(end_ns: int, seconds: int) -> time_range_pb2.TimeRange:
    time_range = time_range_pb2.TimeRange()
    time_range.start_time.FromNanoseconds(end_ns - seconds * _NS)
    time_range.end_time.FromNanoseconds(end_ns)
    return time_range


def _counts(camera: str, end_ns: int) -> Message:
    # The last 24 h in 15-minute bins, up to the bin being filled (a live dashboard).
    request = query_service_pb2.GetTrafficCountsRequest(
        camera=camera, time_range=_range(end_ns, 86_400)
    )
    request.bin_size.FromSeconds(900)
    return request


def _summary(camera: str, end_ns: int) -> Message:
    return query_service_pb2.GetTrafficSummaryRequest(
        cameras=[camera], time_range=_range(end_ns, 3600)
    )


def _events(camera: str, end_ns: int) -> Message:
    return query_service_pb2.ListEventsRequest(parent=camera, page_size=50)


def _stats(camera: str, end_ns: int) -> Message:
    return query_service_pb2.GetCameraStatsRequest(name=f"{camera}/stats")


def _list_cameras(camera: str, end_ns: int) -> Message:
    return camera_service_pb2.ListCamerasRequest(page_size=50)


def _get_camera(camera: str, end_ns: int) -> Message:
    return camera_service_pb2.GetCameraRequest(name=camera)


def _camera_status(camera: str, end_ns: int) -> Message:
    return camera_service_pb2.GetCameraStatusRequest(name=f"{camera}/status")


_Builder = Callable[[str, int], Message]
# RPC name -> (method path, request for a camera "cameras/{id}" and a range end).
RPCS: dict[str, tuple[str, _Builder]] = {
    "GetTrafficCounts": (_QUERY + "GetTrafficCounts", _counts),
    "GetTrafficSummary": (_QUERY + "GetTrafficSummary", _summary),
    "ListEvents": (_QUERY + "ListEvents", _events),
    "GetCameraStats": (_QUERY + "GetCameraStats", _stats),
    "ListCameras": (_CAMERAS + "ListCameras", _list_cameras),
    "GetCamera": (_CAMERAS + "GetCamera", _get_camera),
    "GetCameraStatus": (_CAMERAS + "GetCameraStatus", _camera_status),
}
# `its-camera-ai loadtest query|cameras`: the RPCs each mixes by default.
GROUPS: dict[str, tuple[str, ...]] = {
    "query": ("GetTrafficCounts", "GetTrafficSummary", "ListEvents", "GetCameraStats"),
    "cameras": ("ListCameras", "GetCamera", "GetCameraStatus"),
}


def plan_calls(rpcs: Sequence[str], cameras: Sequence[str]) -> list[PlannedCall]:
    """The calls of ``rpcs`` over ``cameras`` (ids or "cameras/{id}" names); ranges end at
    the next 15-minute boundary, so repeated runs ask what a dashboard asks."""
    unknown = [name for name in rpcs if name not in RPCS]
    if unknown:
        raise ValueError(f"rpc: unknown {', '.join(unknown)} (one of {', '.join(RPCS)})")
    if not cameras:
        raise ValueError("cameras: at least one camera is needed to build requests")
    names = [c if c.startswith("cameras/") else f"cameras/{c}" for c in cameras]
    now = time.time_ns()
    end_ns = now - now % _QUARTER_NS + _QUARTER_NS
    planned = []
    for name in rpcs:
        method, build = RPCS[name]
        requests = dict.fromkeys(build(camera, end_ns).SerializeToString() for camera in names)
        planned.append(PlannedCall(name, method, tuple(requests)))
    return planned
