"""The analytics engine's typed surface: what goes in, what comes out, what storage keeps.

Plain dataclasses and int enums, no protobuf: the servicer converts at the edge, and storage
upserts records by their key. Enum values equal the wire enums of the same meaning
(``its.common.v1.ObjectClass``, ``CrossingDirection``, ``ErrorReason``,
``its.query.v1.EventType``, ``Severity``, ``LevelOfService``) so conversion is ``int(x)``.

Every record carries full cumulative values, never deltas: writing the same record twice, or a
newer version of it over an older one, leaves storage right. That is what makes replays after a
restart harmless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum, StrEnum

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.scene import Direction

__all__ = [
    "MOTOR_CLASSES",
    "NUM_CLASSES",
    "SPEED_BINS",
    "SPEED_BIN_KMH",
    "BinKey",
    "BinRecord",
    "CameraStats",
    "DetectionIssue",
    "Direction",
    "EventEvidence",
    "EventRecord",
    "EventType",
    "FrameInput",
    "FrameOutcome",
    "FrameReject",
    "LevelOfService",
    "LineCrossing",
    "ObjectClass",
    "Scope",
    "Severity",
    "histogram_percentile",
    "level_of_service",
]


class ObjectClass(IntEnum):
    """``its.common.v1.ObjectClass``; 0 in a record means "all classes together"."""

    UNSPECIFIED = 0
    CAR = 1
    TRUCK = 2
    BUS = 3
    MOTORCYCLE = 4
    BICYCLE = 5
    PERSON = 6


NUM_CLASSES = 7
# Only these enter lane occupancy, density, queues and the vehicle incidents (traffic.proto).
MOTOR_CLASSES = (ObjectClass.CAR, ObjectClass.TRUCK, ObjectClass.BUS, ObjectClass.MOTORCYCLE)


class Scope(StrEnum):
    """What a bin record measures."""

    CAMERA = "camera"  # distinct tracks counted by any line (TrafficMetrics.volume)
    LINE = "line"
    LANE = "lane"
    ZONE = "zone"


class EventType(IntEnum):
    """``its.query.v1.EventType``."""

    UNSPECIFIED = 0
    STOPPED_VEHICLE = 1
    WRONG_WAY = 2
    PEDESTRIAN_ON_ROADWAY = 3
    CONGESTION = 4
    MODEL_DRIFT = 5


class Severity(IntEnum):
    """``its.query.v1.Severity``."""

    UNSPECIFIED = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


class LevelOfService(IntEnum):
    """``its.query.v1.LevelOfService``."""

    UNSPECIFIED = 0
    A = 1
    B = 2
    C = 3
    D = 4
    E = 5
    F = 6


# Upper density bounds (veh/km/lane) of LOS A..E, as documented on the wire enum.
_LOS_BOUNDS = (7.0, 11.0, 16.0, 22.0, 28.0)


def level_of_service(density_vehicles_per_km: float | None) -> LevelOfService:
    """HCM-style level of service from density; UNSPECIFIED when density is unknown."""
    if density_vehicles_per_km is None or not math.isfinite(density_vehicles_per_km):
        return LevelOfService.UNSPECIFIED
    for i, bound in enumerate(_LOS_BOUNDS):
        if density_vehicles_per_km <= bound:
            return LevelOfService(i + 1)
    return LevelOfService.F


class FrameReject(StrEnum):
    """Why a whole frame was refused. ``error_reason`` gives the wire ErrorReason."""

    WRONG_CAMERA = "wrong_camera"
    DUPLICATE_FRAME = "duplicate_frame"
    LATE_DATA = "late_data"
    TIME_BACKWARDS = "time_backwards"
    BAD_FRAME = "bad_frame"  # size, time or detection array unusable
    BAD_DETECTION = (
        "bad_detection"  # only with AnalyticsEngineSettings.reject_frame_on_bad_detection
    )
    # Against analytics' clock: beyond the allowed skew ahead, or older than the largest bin.
    CAPTURE_TIME_IN_FUTURE = "capture_time_in_future"
    CAPTURE_TIME_TOO_OLD = "capture_time_too_old"

    @property
    def error_reason(self) -> int:
        return _ERROR_REASON[self]


# its.common.v1.ErrorReason numbers (FrameRejection.reason).
_ERROR_REASON = {
    FrameReject.WRONG_CAMERA: 6,  # RESOURCE_NOT_FOUND
    FrameReject.DUPLICATE_FRAME: 14,
    FrameReject.LATE_DATA: 13,
    FrameReject.TIME_BACKWARDS: 1,  # INVALID_FIELD
    FrameReject.BAD_FRAME: 1,
    FrameReject.BAD_DETECTION: 1,
    FrameReject.CAPTURE_TIME_IN_FUTURE: 1,
    # Its bins are final by analytics' clock, whatever the camera's own says.
    FrameReject.CAPTURE_TIME_TOO_OLD: 13,
}


class DetectionIssue(StrEnum):
    """What was wrong with one detection; DROP_* are removed, the others repaired."""

    DROP_NONFINITE_BOX = "nonfinite_box"
    DROP_NONFINITE_SCORE = "nonfinite_score"
    DROP_UNKNOWN_CLASS = "unknown_class"
    DROP_NONPOSITIVE_SIZE = "nonpositive_size"
    DROP_OUTSIDE_FRAME = "outside_frame"
    DROP_TOO_SMALL = "too_small"
    DROP_ABSURD_SIZE = "absurd_size"
    DROP_OVER_LIMIT = "over_limit"  # more detections in a frame than the configured cap
    CLAMPED_TO_FRAME = "clamped_to_frame"
    CLAMPED_SCORE = "clamped_score"


@dataclass(frozen=True, slots=True)
class FrameInput:
    """One frame's detections, as the producer sent them.

    ``detections`` is (N, 6) float: x_min, y_min, x_max, y_max (pixels of a width x height
    frame), score in [0, 1], class (an ``ObjectClass`` number). Anything else in it is
    repaired or dropped with a counted reason, never raised.
    """

    camera: str
    frame_sequence: int
    capture_time_ns: int
    width: int
    height: int
    detections: NDArray[np.float64]
    model_version: str = ""


@dataclass(frozen=True, slots=True)
class EventEvidence:
    frame_sequence: int
    capture_time_ns: int
    box: tuple[float, float, float, float] | None  # x_min, y_min, x_max, y_max
    speed_kmh: float | None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One incident; upsert by ``event_id`` (deterministic, so replays rewrite, not duplicate)."""

    event_id: str
    camera: str
    type: EventType
    severity: Severity
    start_time_ns: int
    end_time_ns: int | None  # None while ongoing
    track_id: int | None
    object_class: ObjectClass
    lane_id: str
    zone_id: str
    evidence: EventEvidence | None
    description: str
    update_time_ns: int
    # For MODEL_DRIFT: the divergences that raised it; empty otherwise.
    details: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class LineCrossing:
    """One counted crossing: a per-vehicle record behind the line's bin counts."""

    line_id: str
    track_id: int
    object_class: ObjectClass
    direction: Direction
    time_ns: int  # interpolated instant the reference point met the line
    speed_kmh: float | None
    lane_id: str  # the lane the vehicle was in, "" if none


@dataclass(frozen=True, slots=True)
class FrameOutcome:
    """What ``CameraAnalytics.process`` did with one frame."""

    frame_sequence: int
    rejected: FrameReject | None
    message: str  # human-readable detail of a rejection, for logs
    issues: dict[DetectionIssue, int]  # per-detection repairs and drops in this frame
    # Per input row of ``detections``: the track it joined, -1 if none (dropped, tentative).
    track_ids: NDArray[np.int64]
    events: tuple[EventRecord, ...]  # events opened, updated or closed by this frame
    crossings: tuple[LineCrossing, ...] = ()  # lines counted in this frame

    @property
    def accepted(self) -> bool:
        return self.rejected is None


# Speed histograms: 1 km/h bins from 0 to 200 km/h plus one overflow bin. A fixed layout is
# what makes histograms mergeable by element-wise sum (a 15-min bin is the sum of its 1-min
# bins) and percentiles of a merged histogram equal those of the union of the samples, to
# within the bin width.
SPEED_BIN_KMH = 1.0
SPEED_BINS = 201


def histogram_percentile(hist: NDArray[np.int64] | tuple[int, ...], q: float) -> float | None:
    """The q-th percentile (0..100) of a speed histogram, interpolated within its bin."""
    counts = np.asarray(hist, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    rank = q / 100.0 * total
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, rank, side="left"))
    i = min(i, len(counts) - 1)
    before = cum[i] - counts[i]
    frac = 0.0 if counts[i] == 0 else (rank - before) / counts[i]
    return (i + min(max(frac, 0.0), 1.0)) * SPEED_BIN_KMH


@dataclass(frozen=True, slots=True)
class BinKey:
    """Storage key of a bin record."""

    camera: str
    scope: Scope
    scope_id: str  # line, lane or zone id; "" for the camera scope
    object_class: ObjectClass  # UNSPECIFIED on the per-lane/zone frame statistics row
    direction: Direction
    bin_start_ns: int
    bin_seconds: int


# Fields merged by max rather than sum (upsert: GREATEST).
_MAX_FIELDS = frozenset({"queue_max_m", "dwell_max_s"})


@dataclass(frozen=True, slots=True)
class BinRecord:
    """Additive measures of one key over one time bin.

    Which fields a row fills depends on its scope:

    * LINE / CAMERA / LANE rows per class and direction: ``volume`` and the speeds of the
      counted vehicles at their crossing (time-mean speed, percentiles), headways and gaps.
    * LANE rows with class UNSPECIFIED: per processed frame statistics of motor vehicles:
      occupancy, density, Edie space-mean speed (``travel_distance_m / travel_time_s``),
      queue length.
    * ZONE rows per class: ``volume`` = entries, dwell times of objects that left; ZONE rows
      with class UNSPECIFIED: occupancy by objects of any class.

    Merge two records of the same key with ``merge`` (sum, max for ``*_max_*``).
    """

    key: BinKey
    final: bool = False  # no more frames can change it
    volume: int = 0
    speed_count: int = 0
    speed_sum_kmh: float = 0.0
    speed_sq_sum_kmh2: float = 0.0
    speed_hist: tuple[int, ...] = field(default=(0,) * SPEED_BINS)
    headway_count: int = 0
    headway_sum_s: float = 0.0
    gap_count: int = 0
    gap_sum_s: float = 0.0
    frames: int = 0
    occupied_frames: int = 0
    object_frames: int = 0  # sum over frames of the objects present
    density_frames: int = 0  # frames where density was known (calibrated lane)
    density_sum_per_km: float = 0.0
    travel_distance_m: float = 0.0
    travel_time_s: float = 0.0
    queue_frames: int = 0
    queue_sum_m: float = 0.0
    queue_max_m: float = 0.0
    dwell_count: int = 0
    dwell_sum_s: float = 0.0
    dwell_max_s: float = 0.0

    def merge(self, other: BinRecord) -> BinRecord:
        """The record of the union of both samples (keys must match; final if both are)."""
        if other.key != self.key:
            raise ValueError(f"cannot merge {other.key} into {self.key}")
        out: dict[str, object] = {"key": self.key, "final": self.final and other.final}
        for f in fields(self):
            if f.name in ("key", "final"):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "speed_hist":
                out[f.name] = tuple(x + y for x, y in zip(a, b, strict=True))
            elif f.name in _MAX_FIELDS:
                out[f.name] = max(a, b)
            else:
                out[f.name] = a + b
        return BinRecord(**out)  # type: ignore[arg-type]

    def rebinned(self, bin_start_ns: int, bin_seconds: int) -> BinRecord:
        """The same values under a coarser bin's key (for rolling 1-min into 15-min)."""
        return replace(
            self, key=replace(self.key, bin_start_ns=bin_start_ns, bin_seconds=bin_seconds)
        )

    # -- derived measures (None when undefined, never 0 for "unknown") -------------------

    @property
    def mean_speed_kmh(self) -> float | None:
        return self.speed_sum_kmh / self.speed_count if self.speed_count else None

    def speed_percentile_kmh(self, q: float) -> float | None:
        return histogram_percentile(self.speed_hist, q)

    @property
    def speed_p85_kmh(self) -> float | None:
        return histogram_percentile(self.speed_hist, 85.0)

    @property
    def space_mean_speed_kmh(self) -> float | None:
        if self.travel_time_s <= 0.0:
            return None
        return 3.6 * self.travel_distance_m / self.travel_time_s

    @property
    def occupancy(self) -> float | None:
        return self.occupied_frames / self.frames if self.frames else None

    @property
    def density_vehicles_per_km(self) -> float | None:
        return self.density_sum_per_km / self.density_frames if self.density_frames else None

    @property
    def level_of_service(self) -> LevelOfService:
        return level_of_service(self.density_vehicles_per_km)

    @property
    def mean_headway_s(self) -> float | None:
        return self.headway_sum_s / self.headway_count if self.headway_count else None

    @property
    def mean_gap_s(self) -> float | None:
        return self.gap_sum_s / self.gap_count if self.gap_count else None

    @property
    def mean_queue_m(self) -> float | None:
        return self.queue_sum_m / self.queue_frames if self.queue_frames else None

    @property
    def mean_dwell_s(self) -> float | None:
        return self.dwell_sum_s / self.dwell_count if self.dwell_count else None


@dataclass(frozen=True, slots=True)
class CameraStats:
    """Live statistics (``its.query.v1.CameraStats``) plus counters for metrics."""

    camera: str
    processed_fps: float
    active_tracks: int
    active_tracks_by_class: dict[ObjectClass, int]
    counts_last_minute: dict[ObjectClass, int]
    open_events: int
    latency_p50_s: float | None
    latency_p99_s: float | None
    last_frame_time_ns: int | None
    frames_accepted: int
    frames_rejected: dict[FrameReject, int]
    detection_issues: dict[DetectionIssue, int]
    drift_kl_class: float | None
    drift_kl_score: float | None
