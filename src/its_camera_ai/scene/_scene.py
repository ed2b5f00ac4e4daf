"""A camera's scene (lines, zones, lanes, calibration), typed and compiled for per-frame use.

``CameraScene.build`` validates a ``SceneSpec`` with the rules of ``_rules.py`` and reports
every invalid field at once as ``InvalidArgumentError`` (paths like
``camera.calibration.points`` or ``camera.lanes[1].polygon``); ``scene_from_proto`` does the
same for an ``its.camera.v1.Camera``. The camera service validates requests with it and
analytics builds its engine from it, so the two cannot disagree on what a valid scene is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its_camera_ai.common import FieldViolation, InvalidArgumentError
from its_camera_ai.scene._geometry import (
    GeometryError,
    Homography,
    PolygonSet,
    fit_homography,
    polygon_area,
)
from its_camera_ai.scene._rules import (
    MAX_LANES,
    MAX_LINES,
    MAX_ZONES,
    Frame,
    Report,
    check_calibration,
    check_ids,
    check_polygon,
    check_segment,
)

__all__ = [
    "CalibrationSpec",
    "CameraScene",
    "Direction",
    "LaneSpec",
    "LineSpec",
    "SceneSpec",
    "ZoneSpec",
]

F64 = NDArray[np.float64]
Pt = tuple[float, float]


class Direction(IntEnum):
    """``its.common.v1.CrossingDirection``; 0 on records that have no direction."""

    NONE = 0
    LEFT_TO_RIGHT = 1
    RIGHT_TO_LEFT = 2


@dataclass(frozen=True, slots=True)
class LineSpec:
    id: str
    start: Pt
    end: Pt
    direction: Direction = Direction.NONE  # NONE counts both directions


@dataclass(frozen=True, slots=True)
class ZoneSpec:
    id: str
    polygon: tuple[Pt, ...]


@dataclass(frozen=True, slots=True)
class LaneSpec:
    id: str
    polygon: tuple[Pt, ...]
    travel_start: Pt  # upstream
    travel_end: Pt  # downstream


@dataclass(frozen=True, slots=True)
class CalibrationSpec:
    image_points: tuple[Pt, ...]
    world_points: tuple[Pt, ...]


@dataclass(frozen=True, slots=True)
class SceneSpec:
    """The scene as configured, in plain values (what the engine's state stores)."""

    lines: tuple[LineSpec, ...] = ()
    zones: tuple[ZoneSpec, ...] = ()
    lanes: tuple[LaneSpec, ...] = ()
    calibration: CalibrationSpec | None = None

    def to_state(self) -> dict[str, Any]:
        cal = self.calibration
        return {
            "lines": [[x.id, x.start, x.end, int(x.direction)] for x in self.lines],
            "zones": [[z.id, z.polygon] for z in self.zones],
            "lanes": [[a.id, a.polygon, a.travel_start, a.travel_end] for a in self.lanes],
            "calibration": None if cal is None else [cal.image_points, cal.world_points],
        }

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> SceneSpec:
        def pts(v: Any) -> tuple[Pt, ...]:
            return tuple((float(p[0]), float(p[1])) for p in v)

        def pt(v: Any) -> Pt:
            return (float(v[0]), float(v[1]))

        cal = s["calibration"]
        return cls(
            lines=tuple(LineSpec(i, pt(a), pt(b), Direction(d)) for i, a, b, d in s["lines"]),
            zones=tuple(ZoneSpec(i, pts(p)) for i, p in s["zones"]),
            lanes=tuple(LaneSpec(i, pts(p), pt(a), pt(b)) for i, p, a, b in s["lanes"]),
            calibration=None if cal is None else CalibrationSpec(pts(cal[0]), pts(cal[1])),
        )


@dataclass(slots=True)
class CameraScene:
    """A validated scene with the arrays the per-frame code needs.

    Lane coordinates: ``s`` runs along the lane's travel direction from its upstream end, in
    metres on the road plane when calibrated, else in pixels in the image. ``lane_end_s`` is
    the downstream end of the lane polygon (where queues start).
    """

    spec: SceneSpec
    homography: Homography | None
    # The road plane up to an affine map of it, for the tracker's prediction of hidden
    # objects (constant velocity on the road, size from the ratio of depths, both preserved
    # by affine maps): the calibration, else the plane in which a four-cornered lane is the
    # unit square (a lane drawn as a rectangle on the road). Not metres: no speeds from it.
    road_plane: Homography | None
    line_segments: F64  # (L, 4) ax, ay, bx, by
    line_directions: tuple[Direction, ...]
    zone_polygons: tuple[F64, ...]
    lane_polygons: tuple[F64, ...]
    lane_origin: F64  # (K, 2) start of travel_direction, in the lane coordinate's plane
    lane_axis: F64  # (K, 2) unit vector of travel_direction in that plane
    lane_end_s: F64  # (K,)
    lane_origin_px: F64  # (K, 2) the same axis in the image, whether calibrated or not
    lane_axis_px: F64
    lane_length_m: F64  # (K,) NaN when not calibrated
    # Lane polygons in the lane coordinate's plane, and their mean width (area / length).
    lane_plane_polygons: tuple[F64, ...]
    lane_width: F64
    line_index: dict[str, int] = field(default_factory=dict)
    # Lanes then zones, tested together per frame.
    regions: PolygonSet = field(default_factory=lambda: PolygonSet(()))

    @property
    def calibrated(self) -> bool:
        return self.homography is not None

    @classmethod
    def build(
        cls,
        spec: SceneSpec,
        field_prefix: str = "camera",
        *,
        frame: Frame | None = None,
        found: Sequence[tuple[str, str]] = (),
    ) -> CameraScene:
        """Validate and compile; raises ``InvalidArgumentError`` listing every bad field.

        ``frame``: where image geometry must lie (default: anywhere finite). ``found``:
        problems already found in the input (relative path, description), reported first;
        their paths are not checked again.
        """
        violations = [FieldViolation(f"{field_prefix}.{path}", text) for path, text in found]
        skip = {path for path, _ in found}

        def bad(path: str, description: str) -> None:
            violations.append(FieldViolation(f"{field_prefix}.{path}", description))

        homography = _check(spec, frame or Frame(), skip, bad)
        if not violations and homography is not None:
            for i, lane in enumerate(spec.lanes):
                ground = homography.to_ground(
                    np.array((*lane.polygon, lane.travel_start, lane.travel_end))
                )
                if not np.all(np.isfinite(ground)):
                    bad(f"lanes[{i}]", "lies (partly) above the horizon of the calibration")
        if not violations and homography is not None:
            compiled = cls._compile(spec, homography)
            for i, length in enumerate(compiled.lane_length_m.tolist()):
                if not length >= 1.0:
                    bad(f"lanes[{i}].polygon", "is shorter than 1 m along its travel direction")
        if violations:
            raise InvalidArgumentError(
                "invalid scene: " + "; ".join(f"{v.field}: {v.description}" for v in violations),
                violations,
            )
        return cls._compile(spec, homography)

    @classmethod
    def _compile(cls, spec: SceneSpec, homography: Homography | None) -> CameraScene:
        lines = np.array([[*x.start, *x.end] for x in spec.lines], dtype=np.float64)
        k = len(spec.lanes)
        origin, axis = np.zeros((k, 2)), np.zeros((k, 2))
        origin_px = np.array([a.travel_start for a in spec.lanes], dtype=np.float64).reshape(-1, 2)
        end_px = np.array([a.travel_end for a in spec.lanes], dtype=np.float64).reshape(-1, 2)
        axis_px = (end_px - origin_px) / np.hypot(*(end_px - origin_px).T)[:, None]
        end_s, length = np.zeros(k), np.full(k, np.nan)
        polys = tuple(np.array(a.polygon, dtype=np.float64) for a in spec.lanes)
        plane_polys = tuple(homography.to_ground(p) if homography is not None else p
                            for p in polys)  # fmt: skip
        width = np.zeros(k)
        for i, lane in enumerate(spec.lanes):
            pts = np.vstack([polys[i], [lane.travel_start, lane.travel_end]])
            if homography is not None:
                pts = homography.to_ground(pts)
            o, e = pts[-2], pts[-1]
            u = (e - o) / np.hypot(*(e - o))
            s = (pts[:-2] - o) @ u
            origin[i], axis[i], end_s[i] = o, u, float(s.max())
            width[i] = polygon_area(plane_polys[i]) / max(float(s.max() - s.min()), 1e-9)
            if homography is not None:
                length[i] = float(s.max() - s.min())
        zones = tuple(np.array(z.polygon, dtype=np.float64) for z in spec.zones)
        return cls(
            spec=spec,
            homography=homography,
            road_plane=homography or _lane_plane(polys),
            line_segments=lines.reshape(-1, 4),
            line_directions=tuple(x.direction for x in spec.lines),
            zone_polygons=zones,
            lane_polygons=polys,
            lane_origin=origin,
            lane_axis=axis,
            lane_end_s=end_s,
            lane_origin_px=origin_px,
            lane_axis_px=axis_px,
            lane_length_m=length,
            lane_plane_polygons=plane_polys,
            lane_width=width,
            line_index={x.id: i for i, x in enumerate(spec.lines)},
            regions=PolygonSet(polys + zones),
        )


def _check(spec: SceneSpec, frame: Frame, skip: set[str], bad: Report) -> Homography | None:
    """Report every rule the spec breaks; the fitted calibration when it has a usable one."""
    check_ids("lines", [x.id for x in spec.lines], MAX_LINES, bad)
    check_ids("zones", [z.id for z in spec.zones], MAX_ZONES, bad)
    check_ids("lanes", [a.id for a in spec.lanes], MAX_LANES, bad)
    for i, line in enumerate(spec.lines):
        if f"lines[{i}].segment" not in skip:
            check_segment(f"lines[{i}].segment", line.start, line.end, frame, bad)
    for i, zone in enumerate(spec.zones):
        check_polygon(f"zones[{i}].polygon", zone.polygon, frame, bad)
    for i, lane in enumerate(spec.lanes):
        check_polygon(f"lanes[{i}].polygon", lane.polygon, frame, bad)
        if f"lanes[{i}].travel_direction" not in skip:
            path = f"lanes[{i}].travel_direction"
            check_segment(path, lane.travel_start, lane.travel_end, frame, bad)
    if spec.calibration is None:
        return None
    return check_calibration(
        spec.calibration.image_points, spec.calibration.world_points, frame, bad
    )


_UNIT_SQUARE = np.array([(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)])


def _lane_plane(lane_polygons: tuple[F64, ...]) -> Homography | None:
    """The road plane of an uncalibrated camera, up to an affine map: the first lane drawn
    with four corners is taken for a rectangle on the road (lanes are) and mapped onto the
    unit square. Any rectangle would do; they differ by an affine map of the plane."""
    for poly in lane_polygons:
        if len(poly) != 4:
            continue
        try:
            return fit_homography(poly, _UNIT_SQUARE)
        except GeometryError:
            continue  # not a convex quadrilateral: try the next lane
    return None
