"""Every tunable of the analytics engine, with the reason for its default.

Times are seconds of capture time, never frames, so behaviour does not change with a
camera's frame rate (``Camera.target_fps`` may be anything from 1 to 120).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AnalyticsSettings", "TrackerSettings"]


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """ByteTrack-style association thresholds and track life cycle."""

    # Detections at or above ``high_score`` take part in the first association; those in
    # [low_score, high_score) only in the second, against tracks already being followed
    # (ByteTrack's key idea: occluded objects produce low scores, noise rarely sits on a track).
    high_score: float = 0.5
    low_score: float = 0.1
    # Only confident detections start tracks, so a low-score blip never becomes one.
    new_track_score: float = 0.6
    # Minimum IoU per stage: first (high scores, incl. lost tracks), second (low scores),
    # tentative tracks against what remains.
    iou_high: float = 0.2
    iou_low: float = 0.5
    iou_tentative: float = 0.3
    # Tentative tracks and detections are scaled by 1 + this about their centres for stage 3.
    tentative_expand: float = 1.0
    # A matched box narrower or shorter than this fraction of the track's recent size (its
    # maximum, decaying with ``size_memory_s``) is a partial view: the object is going behind
    # something. It keeps the association and informs the position only (anchored on its
    # visible edges, with the predicted size), with its measurement std divided by
    # ``partial_trust``.
    partial_shrink: float = 0.6
    partial_trust: float = 0.5
    size_memory_s: float = 1.5
    # A match is also partial when detections reaching lower in the image (nearer the camera)
    # cover at least this fraction of the track's predicted box.
    occluded_fraction: float = 0.15
    # ...and the box is clearly cut: a dimension under this fraction of the prediction.
    occluded_cut: float = 0.75
    # A tentative track needs this many consecutive matches to be confirmed and get an id;
    # one miss removes it. Ids are never spent on blips.
    min_hits: int = 3
    # Lost tracks are predicted and kept for re-identification this long...
    lost_ttl_s: float = 2.0
    # ...or this long when they were standing still (speed under ``stationary_rel_per_s``
    # box heights per second): a stationary prediction does not drift, so a stopped car or
    # a person hidden again and again by passing traffic keeps its id (and its incident).
    stationary_ttl_s: float = 30.0
    stationary_rel_per_s: float = 0.2
    # ...and reported as present (occupancy, density, queues) this long after the last match.
    max_coast_s: float = 0.5
    # Buffered IoU for lost tracks: the predicted box grows by this fraction of its size per
    # second lost (capped), absorbing velocity error after an occlusion.
    lost_expand_per_s: float = 0.5
    lost_expand_max: float = 0.5
    # Calibrated cameras: a lost track is predicted on the road plane, at constant velocity
    # from where it was last seen with its bottom in sight, if that was at most this long
    # before it was lost. An older position is a stale one (the track may even have moved
    # on to another object since): the image filter, which has followed it, knows better.
    ground_fix_max_age_s: float = 1.0
    # Kalman noise, relative to the box height (scale-invariant across the image):
    # measurement std, process random walk of positions and velocities per sqrt(second),
    # initial velocity std. Close to ByteTrack's per-frame values expressed at 30 fps.
    std_measure: float = 0.05
    std_pos_per_s: float = 0.27
    std_vel_per_s: float = 1.0
    std_vel_init: float = 2.0


@dataclass(frozen=True, slots=True)
class AnalyticsSettings:
    """Engine settings; the defaults suit a typical road camera at 10-30 fps."""

    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    # Bin lengths produced; each must divide the next so bins nest.
    bin_seconds: tuple[int, ...] = (60, 900)

    # -- input hygiene --
    max_detections: int = 1000
    max_frame_px: int = 16384
    min_box_px: float = 2.0
    # A box covering most of the frame is a detector failure, not a vehicle.
    max_box_area_fraction: float = 0.8
    # Drop bad detections and keep the frame (default), or refuse the whole frame.
    reject_frame_on_bad_detection: bool = False
    # A wall-clock gap beyond this is a stream outage: occupancy/Edie time is not accrued over it.
    max_frame_gap_s: float = 2.0

    # -- kinematics --
    # Speeds are the slope of a least-squares line through the ground positions of the last
    # ``speed_window_s``: exact for constant velocity, smoothing for noisy boxes.
    speed_window_s: float = 1.0
    speed_min_span_s: float = 0.3
    speed_min_samples: int = 3
    max_speed_kmh: float = 250.0
    # Counting-line hysteresis: a track must be this far past the line (px, or fraction of its
    # box height, whichever is larger) for its side to change, so jitter never double counts.
    line_margin_px: float = 2.0
    line_margin_rel: float = 0.1
    # Vehicle lengths (m) per ObjectClass number for gaps (headway minus passing time).
    vehicle_length_m: tuple[float, ...] = (4.5, 4.5, 12.0, 12.0, 2.2, 1.8, 0.5)

    # -- stopped vehicles, queues --
    stopped_kmh: float = 5.0
    # Without calibration: stopped when image speed < this many box heights per second.
    stopped_rel_per_s: float = 0.15
    # Queued vehicles: stopped within this gap plus the vehicles' lengths (class defaults
    # below) of the lane's downstream end or of the vehicle ahead, or at any distance behind
    # a vehicle that is itself slow.
    queue_gap_m: float = 10.0
    queue_gap_rel: float = 3.0  # uncalibrated: gap in box heights

    # -- incidents (onset: condition held this long; clear: condition absent this long) --
    # Vehicle incidents need a box at least this tall (px): smaller ones are too far away
    # to tell a stop or a reversal from detector noise and id switches.
    incident_min_box_px: float = 12.0
    # When a track with an open incident ends, the event waits this long for a new track of
    # the same object to continue it (adopt): one event per incident, even when the object
    # was hidden long enough to lose its track. The new track must appear within
    # ``adopt_radius_m`` of the last evidence (plus walking distance for pedestrians).
    incident_grace_s: float = 5.0
    adopt_radius_m: float = 3.0
    adopt_walk_mps: float = 2.5
    stopped_onset_s: float = 20.0
    stopped_clear_s: float = 3.0
    wrong_way_distance_m: float = 10.0
    wrong_way_distance_rel: float = 3.0  # uncalibrated: box heights
    # ...and, calibrated or not, at least this many box heights against the lane in the image.
    wrong_way_min_image_rel: float = 1.0
    # ...and inside the central part of the lane: at least this fraction of the lane's width
    # from its edges (0.25: the middle half).
    wrong_way_inner_fraction: float = 0.25
    # ...and, calibrated, at a plausible speed (faster is a track jumping between vehicles).
    wrong_way_max_kmh: float = 130.0
    wrong_way_clear_s: float = 3.0
    pedestrian_onset_s: float = 2.0
    pedestrian_clear_s: float = 3.0
    # Zones where people on a lane are expected (zebra crossings, refuges).
    pedestrian_exempt_zones: tuple[str, ...] = ()
    # Congestion: the lane's trailing-window density reaches LOS E (> 22 veh/km) or, without
    # calibration, its occupancy exceeds ``congestion_occupancy``; clears below the lower
    # thresholds held for ``congestion_clear_s``. The window smooths signal cycles.
    congestion_window_s: float = 120.0
    congestion_density: float = 22.0
    congestion_clear_density: float = 16.0
    congestion_occupancy: float = 0.6
    congestion_clear_occupancy: float = 0.4
    congestion_clear_s: float = 30.0
    # Also require the bucket's space-mean speed below this (calibrated lanes): a short lane
    # at LOS E/F by density alone can still be flowing at speed near capacity; None = density
    # only, as the wire enum's definition reads.
    congestion_max_speed_kmh: float | None = 60.0
    # Ongoing events are re-emitted with fresh evidence at most this often.
    event_update_s: float = 5.0

    # -- model drift --
    # Consecutive frames repeat the same objects: sample at most one frame per interval so
    # the histograms hold many objects, not one bus seen 300 times.
    drift_sample_interval_s: float = 1.0
    drift_baseline_detections: int = 20000
    drift_window_detections: int = 10000
    drift_chunk_detections: int = 1000
    drift_threshold: float = 0.1
    drift_clear: float = 0.05
    drift_score_bins: int = 20
    # Dirichlet smoothing added to every histogram cell: no zero probabilities, no log(0).
    drift_alpha: float = 0.5

    # -- live stats --
    stats_fps_window_s: float = 10.0
    stats_latency_window_s: float = 60.0

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> AnalyticsSettings:
        data = dict(s)
        data["tracker"] = TrackerSettings(**data["tracker"])
        for key in ("bin_seconds", "vehicle_length_m", "pedestrian_exempt_zones"):
            data[key] = tuple(data[key])
        return cls(**data)
