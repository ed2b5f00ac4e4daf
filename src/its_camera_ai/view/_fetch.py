"""One refresh of the view: everything it shows, fetched through the public API like any
client (CameraService on the decoder, QueryService on the query service) and, where the
processes' HTTP ports are known, their ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import duration_pb2

from its.camera.v1 import camera_pb2, camera_service_pb2, camera_status_pb2
from its.common.v1 import detection_pb2, geometry_pb2, time_range_pb2
from its.query.v1 import event_pb2, query_service_pb2, traffic_pb2
from its_camera_ai.view._metrics import MetricsWindow, scrape
from its_camera_ai.view._model import CameraRow, IncidentRow, LineCount, ViewSnapshot
from its_camera_ai_client import ApiError, AsyncClient, paginate_async

__all__ = ["ViewFetcher", "enum_label"]

_Answer = TypeVar("_Answer")
_DIRECTIONS = {
    geometry_pb2.CROSSING_DIRECTION_LEFT_TO_RIGHT: "left-to-right",
    geometry_pb2.CROSSING_DIRECTION_RIGHT_TO_LEFT: "right-to-left",
}
# Every class, not the API's default of motor vehicles: a bicycle lane's line counts too.
_ALL_CLASSES = [value for value in detection_pb2.ObjectClass.values() if value != 0]
_BIN_SECONDS = 60


def enum_label(enum: object, value: int, prefix: str) -> str:
    """``CAMERA_STATE_BACKING_OFF`` -> ``backing_off``."""
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix).lower()


def _class_counts(counts: list[traffic_pb2.ClassCount]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for count in counts:
        label = enum_label(detection_pb2.ObjectClass, count.object_class, "OBJECT_CLASS_")
        totals[label] = totals.get(label, 0) + count.count
    return totals


def _milliseconds(duration: duration_pb2.Duration) -> float:
    return duration.ToNanoseconds() / 1e6


class ViewFetcher:
    """Fetches a ``ViewSnapshot``; keeps the metrics scrapes of the last minute between
    refreshes (latency quantiles and rates need a window)."""

    def __init__(
        self,
        cameras: AsyncClient,
        query: AsyncClient,
        *,
        source: str,
        http_targets: Mapping[str, str] | None = None,
        count_window_minutes: int = 60,
        incidents: int = 8,
    ) -> None:
        self._cameras = cameras
        self._query = query
        self._source = source
        self._http = dict(http_targets or {})
        self._count_window_minutes = count_window_minutes
        self._incidents_shown = incidents
        self._metrics = MetricsWindow()
        self._problems: dict[str, None] = {}  # ordered, without repeats

    async def _call(self, what: str, call: Awaitable[_Answer]) -> _Answer | None:
        """The call's answer, or None with its error noted (one line per distinct error)."""
        try:
            return await call
        except ApiError as exc:
            self._problems[f"{what}: {exc}"] = None
            return None

    async def fetch(self) -> ViewSnapshot:
        self._problems = {}
        metrics = asyncio.create_task(scrape(self._http)) if self._http else None
        cameras = await self._list_cameras()
        rows, line_counts, incidents = await asyncio.gather(
            asyncio.gather(*(self._camera_row(camera) for camera in cameras)),
            asyncio.gather(*(self._line_counts(camera) for camera in cameras)),
            self._incidents(),
        )
        if metrics is not None:
            sample, problems = await metrics
            self._metrics.add(sample)
            self._problems.update(dict.fromkeys(problems))
        return ViewSnapshot(
            taken_at=datetime.now(UTC),
            source=self._source,
            count_window_minutes=self._count_window_minutes,
            cameras=tuple(rows),
            lines=tuple(line for lines in line_counts for line in lines),
            incidents=incidents,
            stages=self._metrics.stages(),
            detections_per_second=self._metrics.detections_per_second(),
            problems=tuple(self._problems),
        )

    async def _list_cameras(self) -> list[camera_pb2.Camera]:
        async def every_page() -> list[camera_pb2.Camera]:
            request = camera_service_pb2.ListCamerasRequest(page_size=200)
            return [c async for c in paginate_async(self._cameras.cameras.ListCameras, request)]

        return await self._call("CameraService.ListCameras", every_page()) or []

    async def _camera_row(self, camera: camera_pb2.Camera) -> CameraRow:
        status_call = self._cameras.cameras.GetCameraStatus(
            camera_service_pb2.GetCameraStatusRequest(name=f"{camera.name}/status")
        )
        stats_call = self._query.query.GetCameraStats(
            query_service_pb2.GetCameraStatsRequest(name=f"{camera.name}/stats")
        )
        answers = await asyncio.gather(
            self._call("CameraService.GetCameraStatus", status_call),
            self._call("QueryService.GetCameraStats", stats_call),
        )
        status = answers[0].status if answers[0] is not None else None
        stats = answers[1].stats if answers[1] is not None else None
        # All zero and no frame time: analytics has received nothing for this camera.
        analysed = stats if stats is not None and stats.HasField("last_frame_time") else None
        return CameraRow(
            camera_id=camera.name.removeprefix("cameras/"),
            display_name=camera.display_name,
            enabled=camera.enabled,
            state="unknown"
            if status is None
            else enum_label(camera_status_pb2.CameraState, status.state, "CAMERA_STATE_"),
            source_fps=status.measured_fps if status is not None else 0.0,
            processed_fps=stats.processed_fps if stats is not None else None,
            active_tracks=stats.active_tracks if stats is not None else None,
            counts_last_minute=_class_counts(list(stats.counts_last_minute)) if stats else {},
            latency_p50_ms=_milliseconds(analysed.latency_p50) if analysed else None,
            latency_p99_ms=_milliseconds(analysed.latency_p99) if analysed else None,
            last_error=status.last_error if status is not None else "",
        )

    def _count_window(self) -> time_range_pb2.TimeRange:
        # Aligned to the bin, so that every refresh of a minute (and every operator) asks
        # the same question, which the query service answers from its cache.
        now = time.time_ns()
        end = now - now % (_BIN_SECONDS * 10**9) + _BIN_SECONDS * 10**9
        window = time_range_pb2.TimeRange()
        window.end_time.FromNanoseconds(end)
        window.start_time.FromNanoseconds(end - self._count_window_minutes * 60 * 10**9)
        return window

    async def _line_counts(self, camera: camera_pb2.Camera) -> list[LineCount]:
        window = self._count_window()
        wanted = [
            (line.id, direction)
            for line in camera.lines
            for direction in _DIRECTIONS
            if line.direction in (geometry_pb2.CROSSING_DIRECTION_UNSPECIFIED, direction)
        ]
        requests = []
        for line_id, direction in wanted:
            request = query_service_pb2.GetTrafficCountsRequest(
                camera=camera.name, time_range=window, line_id=line_id,
                direction=direction, classes=_ALL_CLASSES,
            )  # fmt: skip
            request.bin_size.FromSeconds(_BIN_SECONDS)
            call = self._query.query.GetTrafficCounts(request)
            requests.append(self._call("QueryService.GetTrafficCounts", call))
        answers = await asyncio.gather(*requests)
        counts = []
        for (line_id, direction), answer in zip(wanted, answers, strict=True):
            if answer is None:
                continue
            counts.append(
                LineCount(
                    camera_id=camera.name.removeprefix("cameras/"),
                    line_id=line_id,
                    direction=_DIRECTIONS[direction],
                    total=sum(b.volume for b in answer.bins),
                    by_class=_class_counts([c for b in answer.bins for c in b.class_counts]),
                )
            )
        return counts

    async def _incidents(self) -> tuple[IncidentRow, ...]:
        request = query_service_pb2.ListEventsRequest(
            parent="cameras/-", page_size=self._incidents_shown
        )
        answer = await self._call("QueryService.ListEvents", self._query.query.ListEvents(request))
        if answer is None:
            return ()
        return tuple(
            IncidentRow(
                camera_id=event.name.split("/")[1],
                event_type=enum_label(event_pb2.EventType, event.type, "EVENT_TYPE_"),
                severity=enum_label(event_pb2.Severity, event.severity, "SEVERITY_"),
                start_time=event.start_time.ToDatetime(tzinfo=UTC)
                if event.HasField("start_time")
                else None,
                ongoing=not event.HasField("end_time"),
                where=event.lane_id or event.zone_id,
                description=event.description,
            )
            for event in answer.events
        )
