"""What the view shows, as plain data: one ``ViewSnapshot`` per refresh, fetched through the
API (and the services' ``/metrics``), rendered by a pure function."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["CameraRow", "IncidentRow", "LineCount", "StageLatency", "ViewSnapshot"]


@dataclass(frozen=True)
class CameraRow:
    """One camera: its decoder's status (CameraService) and live analytics (CameraStats;
    ``None`` where analytics has nothing for it)."""

    camera_id: str
    display_name: str
    enabled: bool
    state: str  # CameraState without its prefix, lower case: "streaming", "backing_off"...
    source_fps: float
    processed_fps: float | None = None
    active_tracks: int | None = None
    counts_last_minute: Mapping[str, int] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    last_error: str = ""


@dataclass(frozen=True)
class LineCount:
    """Crossings of one counting line in one direction over the view's count window."""

    camera_id: str
    line_id: str
    direction: str  # "left-to-right" or "right-to-left"
    total: int
    by_class: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class IncidentRow:
    camera_id: str
    event_type: str  # EventType without its prefix, lower case
    severity: str
    start_time: datetime | None
    ongoing: bool
    where: str  # lane or zone id, "" if none
    description: str


@dataclass(frozen=True)
class StageLatency:
    """A pipeline stage's latency over the metrics window (``None``: nothing observed)."""

    stage: str
    p50_ms: float | None
    p99_ms: float | None
    observations: int


@dataclass(frozen=True)
class ViewSnapshot:
    """Everything one refresh fetched. ``problems`` are the parts that could not be fetched
    (shown, never raised: the view keeps running while a service restarts)."""

    taken_at: datetime
    source: str
    count_window_minutes: int
    cameras: tuple[CameraRow, ...] = ()
    lines: tuple[LineCount, ...] = ()
    incidents: tuple[IncidentRow, ...] = ()
    stages: tuple[StageLatency, ...] = ()
    detections_per_second: float | None = None
    problems: tuple[str, ...] = ()
