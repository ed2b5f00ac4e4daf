"""QueryService requests checked and typed: every bad field is INVALID_ARGUMENT naming it.

Times become integer nanoseconds since the epoch, classes and directions the wire enums'
numbers. Bounds keep every query's work proportional to what a person can look at: a counts
series of at most ``max_count_bins`` bins, a summary over at most ``max_summary_days`` and
``max_summary_camera_days`` (cameras x days), raw crossings over at most ``max_summary_days``.
A request beyond them is refused before any SQL runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import duration_pb2, timestamp_pb2

from its.common.v1 import detection_pb2, geometry_pb2, time_range_pb2
from its.query.v1 import event_pb2, query_service_pb2
from its_camera_ai.common import (
    InvalidArgumentError,
    QueryServiceSettings,
    is_resource_id,
    parse_camera_name,
)
from its_camera_ai.scene import ID_RULE

__all__ = [
    "BIN_SECONDS",
    "CountsQuery",
    "StreamQuery",
    "SummaryQuery",
    "check_summary_budget",
    "counts_query",
    "stream_query",
    "summary_query",
]

_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
# Series bin widths a client may ask for: 1 min, 15 min, 1 h, 1 day.
BIN_SECONDS = (60, 900, 3600, 86_400)
# Timestamps a client may name: 1970 up to (not including) the year 10000, RFC 3339's range.
_MAX_SECONDS = 253_402_300_800
_MAX_SUMMARY_CAMERAS = 500
# Classes a filter may name (UNSPECIFIED is "all", never a class of its own).
_CLASSES = frozenset(v for v in detection_pb2.ObjectClass.values() if v != 0)
_DIRECTIONS = frozenset(geometry_pb2.CrossingDirection.values())
_EVENT_TYPES = frozenset(v for v in event_pb2.EventType.values() if v != 0)
_SEVERITIES = frozenset(event_pb2.Severity.values())


@dataclass(frozen=True, slots=True)
class CountsQuery:
    camera_id: str
    start_ns: int
    end_ns: int
    bin_seconds: int
    line_id: str
    direction: int
    lane_id: str
    classes: tuple[int, ...]

    @property
    def span_ns(self) -> tuple[int, int]:
        """The capture times the series covers: from its first bin's start to its last's end.
        The answer depends on these only, so requests inside the same bins share it."""
        width = self.bin_seconds * _NS
        first = self.start_ns - self.start_ns % width
        last = (self.end_ns - 1) - (self.end_ns - 1) % width
        return first, last + width

    @property
    def uses_crossings(self) -> bool:
        """Counted from raw crossings (bins do not break these filters down)."""
        return bool(self.lane_id and self.line_id) or bool(
            self.direction and (self.lane_id or not self.line_id)
        )


@dataclass(frozen=True, slots=True)
class SummaryQuery:
    # Ids in name order; empty: every camera the caller may see.
    camera_ids: tuple[str, ...]
    start_ns: int
    end_ns: int
    classes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StreamQuery:
    camera_id: str  # empty: every camera
    types: frozenset[int]  # empty: every type
    min_severity: int
    resume_token: str


def _timestamp(value: timestamp_pb2.Timestamp, field: str) -> int:
    if not 0 <= value.seconds < _MAX_SECONDS or not 0 <= value.nanos < _NS:
        raise InvalidArgumentError.for_field(
            field, "must be a time between 1970-01-01 and 9999-12-31 (UTC)"
        )
    return value.seconds * _NS + value.nanos


def _time_range(
    time_range: time_range_pb2.TimeRange, present: bool, max_ns: int | None = None
) -> tuple[int, int]:
    if not present:
        raise InvalidArgumentError.for_field("time_range", "is required")
    for bound in ("start_time", "end_time"):
        if not time_range.HasField(bound):
            raise InvalidArgumentError.for_field(
                f"time_range.{bound}", "is required (ranges are bounded)"
            )
    start = _timestamp(time_range.start_time, "time_range.start_time")
    end = _timestamp(time_range.end_time, "time_range.end_time")
    if end <= start:
        raise InvalidArgumentError.for_field(
            "time_range.end_time", "must be after time_range.start_time"
        )
    if max_ns is not None and end - start > max_ns:
        raise InvalidArgumentError.for_field(
            "time_range", f"may span at most {max_ns / _DAY_NS:g} days"
        )
    return start, end


def _classes(values: object, field: str) -> tuple[int, ...]:
    classes = tuple(sorted(set(values)))  # type: ignore[call-overload]
    for value in classes:
        if value not in _CLASSES:
            raise InvalidArgumentError.for_field(field, f"{value} is not an object class")
    return classes


def _scene_id(value: str, field: str) -> str:
    if value and not is_resource_id(value):
        raise InvalidArgumentError.for_field(field, ID_RULE)
    return value


def _bin_seconds(size: duration_pb2.Duration, present: bool) -> int:
    if not present:
        raise InvalidArgumentError.for_field("bin_size", "is required")
    if size.nanos != 0 or size.seconds not in BIN_SECONDS:
        allowed = ", ".join(f"{s}s" for s in BIN_SECONDS)
        raise InvalidArgumentError.for_field("bin_size", f"must be one of {allowed}")
    return size.seconds


def counts_query(
    request: query_service_pb2.GetTrafficCountsRequest, settings: QueryServiceSettings
) -> CountsQuery:
    camera_id = parse_camera_name(request.camera, "camera")
    start, end = _time_range(request.time_range, request.HasField("time_range"))
    seconds = _bin_seconds(request.bin_size, request.HasField("bin_size"))
    query = CountsQuery(
        camera_id=camera_id,
        start_ns=start,
        end_ns=end,
        bin_seconds=seconds,
        line_id=_scene_id(request.line_id, "line_id"),
        direction=int(request.direction),
        lane_id=_scene_id(request.lane_id, "lane_id"),
        classes=_classes(request.classes, "classes"),
    )
    if query.direction not in _DIRECTIONS:
        raise InvalidArgumentError.for_field("direction", f"{query.direction} is not a direction")
    first, last = query.span_ns
    bins = (last - first) // (seconds * _NS)
    if bins > settings.max_count_bins:
        raise InvalidArgumentError.for_field(
            "time_range",
            f"covers {bins} bins of {seconds}s; at most {settings.max_count_bins}"
            " (use a longer bin_size or a shorter range)",
        )
    if query.uses_crossings and end - start > settings.max_summary_days * _DAY_NS:
        raise InvalidArgumentError.for_field(
            "time_range",
            f"may span at most {settings.max_summary_days:g} days when counting by lane"
            " together with a line or a direction (these come from individual crossings)",
        )
    return query


def summary_query(
    request: query_service_pb2.GetTrafficSummaryRequest, settings: QueryServiceSettings
) -> SummaryQuery:
    if len(request.cameras) > _MAX_SUMMARY_CAMERAS:
        raise InvalidArgumentError.for_field(
            "cameras", f"at most {_MAX_SUMMARY_CAMERAS} cameras per request"
        )
    camera_ids = sorted({parse_camera_name(name, "cameras") for name in request.cameras})
    start, end = _time_range(
        request.time_range, request.HasField("time_range"), int(settings.max_summary_days * _DAY_NS)
    )
    query = SummaryQuery(tuple(camera_ids), start, end, _classes(request.classes, "classes"))
    check_summary_budget(query, len(camera_ids), settings)
    return query


def check_summary_budget(query: SummaryQuery, cameras: int, settings: QueryServiceSettings) -> None:
    """Refuse a summary over more camera-days than allowed (checked again once "every
    camera" is resolved to a number)."""
    days = (query.end_ns - query.start_ns) / _DAY_NS
    if cameras * days > settings.max_summary_camera_days:
        raise InvalidArgumentError.for_field(
            "time_range",
            f"{cameras} cameras over {days:.1f} days exceeds"
            f" {settings.max_summary_camera_days:g} camera-days: split the request",
        )


def stream_query(request: query_service_pb2.StreamEventsRequest) -> StreamQuery:
    camera_id = parse_camera_name(request.camera, "camera") if request.camera else ""
    types = frozenset(request.types)
    for value in types:
        if value not in _EVENT_TYPES:
            raise InvalidArgumentError.for_field("types", f"{value} is not an event type")
    if request.min_severity not in _SEVERITIES:
        raise InvalidArgumentError.for_field(
            "min_severity", f"{request.min_severity} is not a severity"
        )
    return StreamQuery(camera_id, types, int(request.min_severity), request.resume_token)
