"""A camera's scene configuration, typed and compiled for per-frame use.

``scene_from_proto`` turns an ``its.camera.v1.Camera`` into a ``Scene`` and reports every
invalid field at once as ``InvalidArgumentError`` (field paths like
``camera.calibration.points`` or ``camera.lanes[1].polygon``), so the camera service can use
it to validate a create/update request and analytics to build its engine from the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from its.camera.v1 import camera_pb2
from its_camera_ai.analytics._geometry import (
    GeometryError,
    Homography,
    PolygonSet,
    fit_homography,
    polygon_area,
    polygon_is_simple,
)
from its_camera_ai.analytics._records import Direction
from its_camera_ai.common import FieldViolation, InvalidArgumentError, is_resource_id

__all__ = [
    "CalibrationSpec",
    "LaneSpec",
    "LineSpec",
    "Scene",
    "SceneSpec",
    "ZoneSpec",
    "scene_from_proto",
]

F64 = NDArray[np.float64]
Pt = tuple[float, float]

_MAX_LINES, _MAX_ZONES, _MAX_LANES = 64, 64, 32


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
class Scene:
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
    def build(cls, spec: SceneSpec, field_prefix: str = "camera") -> Scene:
        """Validate and compile; raises ``InvalidArgumentError`` listing every bad field."""
        violations: list[FieldViolation] = []

        def bad(path: str, description: str) -> None:
            violations.append(FieldViolation(f"{field_prefix}.{path}", description))

        _check_ids("lines", [x.id for x in spec.lines], _MAX_LINES, bad)
        _check_ids("zones", [z.id for z in spec.zones], _MAX_ZONES, bad)
        _check_ids("lanes", [a.id for a in spec.lanes], _MAX_LANES, bad)
        for i, line in enumerate(spec.lines):
            _check_segment(f"lines[{i}].segment", line.start, line.end, bad)
        for i, zone in enumerate(spec.zones):
            _check_polygon(f"zones[{i}].polygon", zone.polygon, bad)
        for i, lane in enumerate(spec.lanes):
            _check_polygon(f"lanes[{i}].polygon", lane.polygon, bad)
            _check_segment(f"lanes[{i}].travel_direction", lane.travel_start, lane.travel_end, bad)
        homography = None
        if spec.calibration is not None:
            try:
                homography = fit_homography(
                    np.array(spec.calibration.image_points, dtype=np.float64),
                    np.array(spec.calibration.world_points, dtype=np.float64),
                )
            except GeometryError as exc:
                bad(f"calibration.{exc.field}", exc.description)
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
    def _compile(cls, spec: SceneSpec, homography: Homography | None) -> Scene:
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


def _check_ids(kind: str, ids: list[str], limit: int, bad: Any) -> None:
    if len(ids) > limit:
        bad(kind, f"at most {limit} allowed, got {len(ids)}")
    seen: set[str] = set()
    for i, ident in enumerate(ids):
        if not is_resource_id(ident):
            bad(
                f"{kind}[{i}].id",
                "must be 1-63 lower-case letters, digits or hyphens, "
                "starting with a letter and not ending with a hyphen",
            )
        elif ident in seen:
            bad(f"{kind}[{i}].id", f"duplicate id {ident!r}")
        seen.add(ident)


def _finite(*vals: float) -> bool:
    return all(math.isfinite(v) for v in vals)


def _check_segment(path: str, a: Pt, b: Pt, bad: Any) -> None:
    if not _finite(*a, *b):
        bad(path, "coordinates must be finite")
    elif a == b:
        bad(path, "start and end must differ")


def _check_polygon(path: str, poly: tuple[Pt, ...], bad: Any) -> None:
    if len(poly) < 3:
        bad(path, f"needs at least 3 vertices, got {len(poly)}")
        return
    if not all(_finite(*p) for p in poly):
        bad(path, "coordinates must be finite")
        return
    arr = np.array(poly, dtype=np.float64)
    if polygon_area(arr) <= 0.0:
        bad(path, "has zero area")
    elif not polygon_is_simple(arr):
        bad(path, "edges cross each other; the polygon must be simple")


def _pt(p: Any) -> Pt:
    return (float(p.x), float(p.y))


def scene_from_proto(camera: camera_pb2.Camera, field_prefix: str = "camera") -> Scene:
    """Build the scene of a Camera message; raises ``InvalidArgumentError`` naming fields."""
    bad_directions = [
        FieldViolation(f"{field_prefix}.lines[{i}].direction", f"unknown value {x.direction}")
        for i, x in enumerate(camera.lines)
        if int(x.direction) not in {int(d) for d in Direction}
    ]
    if bad_directions:
        raise InvalidArgumentError("invalid scene: unknown crossing direction", bad_directions)
    calibration = None
    if camera.HasField("calibration"):
        calibration = CalibrationSpec(
            tuple(_pt(p.image_point) for p in camera.calibration.points),
            tuple(_pt(p.world_point) for p in camera.calibration.points),
        )
    spec = SceneSpec(
        lines=tuple(
            LineSpec(x.id, _pt(x.segment.start), _pt(x.segment.end), Direction(x.direction))
            for x in camera.lines
        ),
        zones=tuple(
            ZoneSpec(z.id, tuple(_pt(v) for v in z.polygon.vertices)) for z in camera.zones
        ),
        lanes=tuple(
            LaneSpec(
                a.id,
                tuple(_pt(v) for v in a.polygon.vertices),
                _pt(a.travel_direction.start),
                _pt(a.travel_direction.end),
            )
            for a in camera.lanes
        ),
        calibration=calibration,
    )
    return Scene.build(spec, field_prefix)


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
