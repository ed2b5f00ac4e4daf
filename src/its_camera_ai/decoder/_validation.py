"""Request checks for CameraService: names, the camera's fields and its scene geometry.

Every problem becomes a field violation naming the request field (``camera.zones[2].polygon``)
and all of a request's problems are reported together in one INVALID_ARGUMENT, so a client
fixes its request in one round trip.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from its.camera.v1 import camera_pb2
from its.common.v1 import error_reason_pb2, geometry_pb2

# The calibration a camera is accepted with must be the one analytics can use: fit it with
# analytics' own homography, so the two services cannot disagree on what is degenerate.
from its_camera_ai.analytics._geometry import GeometryError, fit_homography
from its_camera_ai.common import FieldViolation, InvalidArgumentError, is_resource_id
from its_camera_ai.decoder._geometry import Point, polygon_problem
from its_camera_ai.decoder._uri import SourceUri, UriError, parse_source_uri

__all__ = [
    "MAX_FPS",
    "WRITABLE_FIELDS",
    "CheckedCamera",
    "check_camera",
    "check_camera_id",
    "check_source_uri",
    "check_update_mask",
    "invalid_source",
    "parse_camera_name",
    "parse_status_name",
]

MAX_FPS = 120.0
MAX_DISPLAY_NAME = 128
MAX_LINES, MAX_ZONES, MAX_LANES = 64, 64, 32
MAX_VERTICES = 256
MAX_CALIBRATION_POINTS = 64
MIN_CALIBRATION_POINTS = 4
# The largest frame the decoder delivers (8K UHD); also bounds geometry of unscaled cameras.
MAX_WIDTH, MAX_HEIGHT = 7680, 4320
# Update-mask paths (AIP-134): every field a client may write.
WRITABLE_FIELDS = frozenset(
    {
        "display_name",
        "source_uri",
        "enabled",
        "loop",
        "target_fps",
        "resolution",
        "lines",
        "zones",
        "lanes",
        "calibration",
    }
)
_OUTPUT_ONLY = frozenset({"name", "create_time", "update_time", "etag"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_camera_id(camera_id: str, field: str) -> str:
    if not is_resource_id(camera_id):
        raise InvalidArgumentError.for_field(
            field,
            "must be 1-63 lower-case letters, digits and hyphens, starting with a letter"
            " and not ending with a hyphen",
        )
    return camera_id


def parse_camera_name(name: str, field: str = "name") -> str:
    """The {camera} of "cameras/{camera}"."""
    collection, slash, camera_id = name.partition("/")
    if collection != "cameras" or not slash:
        raise InvalidArgumentError.for_field(field, 'must be "cameras/{camera}"')
    return check_camera_id(camera_id, field)


def parse_status_name(name: str, field: str = "name") -> str:
    """The {camera} of "cameras/{camera}/status"."""
    camera, slash, singleton = name.rpartition("/")
    if singleton != "status" or not slash:
        raise InvalidArgumentError.for_field(field, 'must be "cameras/{camera}/status"')
    return parse_camera_name(camera, field)


def check_update_mask(paths: Sequence[str], field: str = "update_mask") -> frozenset[str]:
    """The fields an update replaces; "*" means every writable field."""
    if not paths:
        raise InvalidArgumentError.for_field(field, "is required (name the fields to change)")
    if "*" in paths:
        if len(paths) > 1:
            raise InvalidArgumentError.for_field(field, '"*" must be the only path')
        return WRITABLE_FIELDS
    violations = []
    for path in paths:
        head = path.split(".", 1)[0]
        if head in _OUTPUT_ONLY:
            violations.append(FieldViolation(field, f"{path!r} cannot be changed"))
        elif head not in WRITABLE_FIELDS:
            violations.append(FieldViolation(field, f"{path!r} is not a field of Camera"))
        elif path != head:
            violations.append(
                FieldViolation(field, f"{path!r}: sub-paths are not supported, use {head!r}")
            )
    if violations:
        raise InvalidArgumentError(f"{field}: invalid paths", violations)
    return frozenset(paths)


@dataclass(frozen=True, slots=True)
class CheckedCamera:
    """What checking found out: the parsed source (when it was checked) and the fitted
    calibration's reprojection error (when the camera has one)."""

    source: SourceUri | None
    rms_reprojection_error: float | None


class _Violations:
    """A request's problems, raised together as one INVALID_ARGUMENT (with reason
    UNSUPPORTED_SOURCE when the source is what is unsupported)."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []
        self.unsupported_source = False

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def add_source(self, field: str, problem: UriError) -> None:
        self.add(field, problem.description)
        self.unsupported_source = self.unsupported_source or problem.unsupported

    def error(self) -> InvalidArgumentError | None:
        if not self.items:
            return None
        reason = (
            error_reason_pb2.ERROR_REASON_UNSUPPORTED_SOURCE if self.unsupported_source else None
        )
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.items)
        return InvalidArgumentError(summary, self.items, reason=reason)

    def raise_any(self) -> None:
        error = self.error()
        if error is not None:
            raise error


def invalid_source(field: str, problem: UriError) -> InvalidArgumentError:
    """The INVALID_ARGUMENT for one bad source (found by parsing or by probing it)."""
    problems = _Violations()
    problems.add_source(field, problem)
    error = problems.error()
    assert error is not None
    return error


def check_source_uri(uri: str, *, field: str, file_roots: Sequence[Path]) -> SourceUri:
    try:
        return parse_source_uri(uri, file_roots=file_roots)
    except UriError as exc:
        raise invalid_source(field, exc) from None


def check_camera(
    camera: camera_pb2.Camera,
    *,
    prefix: str,
    file_roots: Sequence[Path],
    check_source: bool = True,
) -> CheckedCamera:
    """Check every writable field of ``camera``; raise one INVALID_ARGUMENT listing all
    problems (reason UNSUPPORTED_SOURCE when the source is what is unsupported)."""
    problems = _Violations()
    source = None
    if check_source:
        try:
            source = parse_source_uri(camera.source_uri, file_roots=file_roots)
        except UriError as exc:
            problems.add_source(f"{prefix}.source_uri", exc)
    _check_text(problems, f"{prefix}.display_name", camera.display_name)
    if not (math.isfinite(camera.target_fps) and 0 <= camera.target_fps <= MAX_FPS):
        problems.add(f"{prefix}.target_fps", f"must be between 0 and {MAX_FPS:g} frames/s")
    width, height = _check_resolution(problems, f"{prefix}.resolution", camera)
    frame = _Frame(width, height)
    _check_lines(problems, prefix, camera.lines, frame)
    _check_areas(problems, f"{prefix}.zones", camera.zones, MAX_ZONES, frame)
    _check_areas(problems, f"{prefix}.lanes", camera.lanes, MAX_LANES, frame)
    for index, lane in enumerate(camera.lanes):
        field = f"{prefix}.lanes[{index}].travel_direction"
        _check_segment(
            problems, field, lane.travel_direction, frame, lane.HasField("travel_direction")
        )
    rms = (
        _check_calibration(problems, f"{prefix}.calibration", camera.calibration, frame)
        if camera.HasField("calibration")
        else None
    )
    problems.raise_any()
    return CheckedCamera(source, rms)


def _check_text(problems: _Violations, field: str, text: str) -> None:
    if len(text) > MAX_DISPLAY_NAME:
        problems.add(field, f"must be at most {MAX_DISPLAY_NAME} characters")
    elif _CONTROL.search(text):
        problems.add(field, "must not contain control characters")


def _check_resolution(
    problems: _Violations, field: str, camera: camera_pb2.Camera
) -> tuple[int, int]:
    """The frame size geometry must fit in: the resolution, or the largest frame."""
    width, height = camera.resolution.width, camera.resolution.height
    if (width, height) == (0, 0):
        return MAX_WIDTH, MAX_HEIGHT
    if not (0 < width <= MAX_WIDTH and 0 < height <= MAX_HEIGHT):
        problems.add(field, f"must be 0x0 (native) or within {MAX_WIDTH}x{MAX_HEIGHT}")
        return MAX_WIDTH, MAX_HEIGHT
    if width % 2 or height % 2:
        problems.add(field, "width and height must be even (4:2:0 video)")
    return width, height


@dataclass(frozen=True, slots=True)
class _Frame:
    width: int
    height: int

    def problem(self, point: geometry_pb2.Point) -> str | None:
        if not (math.isfinite(point.x) and math.isfinite(point.y)):
            return "coordinates must be finite numbers"
        if not (0 <= point.x <= self.width and 0 <= point.y <= self.height):
            return f"({point.x:g}, {point.y:g}) is outside the {self.width}x{self.height} frame"
        return None


def _check_id(problems: _Violations, field: str, item_id: str, seen: set[str]) -> None:
    if not is_resource_id(item_id):
        problems.add(field, "must be 1-63 lower-case letters, digits and hyphens")
    elif item_id in seen:
        problems.add(field, f"duplicate id {item_id!r}")
    seen.add(item_id)


def _check_segment(
    problems: _Violations,
    field: str,
    segment: geometry_pb2.LineSegment,
    frame: _Frame,
    present: bool,
) -> None:
    if not present:
        problems.add(field, "is required")
        return
    for end_name, point in (("start", segment.start), ("end", segment.end)):
        problem = frame.problem(point)
        if problem:
            problems.add(f"{field}.{end_name}", problem)
            return
    if (segment.start.x, segment.start.y) == (segment.end.x, segment.end.y):
        problems.add(field, "start and end must differ")


def _check_lines(
    problems: _Violations,
    prefix: str,
    lines: Sequence[camera_pb2.CountingLine],
    frame: _Frame,
) -> None:
    if len(lines) > MAX_LINES:
        problems.add(f"{prefix}.lines", f"at most {MAX_LINES} lines")
        return
    seen: set[str] = set()
    for index, line in enumerate(lines):
        field = f"{prefix}.lines[{index}]"
        _check_id(problems, f"{field}.id", line.id, seen)
        _check_text(problems, f"{field}.display_name", line.display_name)
        _check_segment(problems, f"{field}.segment", line.segment, frame, line.HasField("segment"))


def _check_areas(
    problems: _Violations,
    field: str,
    areas: Sequence[camera_pb2.Zone | camera_pb2.Lane],
    limit: int,
    frame: _Frame,
) -> None:
    if len(areas) > limit:
        problems.add(field, f"at most {limit} entries")
        return
    seen: set[str] = set()
    for index, area in enumerate(areas):
        item = f"{field}[{index}]"
        _check_id(problems, f"{item}.id", area.id, seen)
        _check_text(problems, f"{item}.display_name", area.display_name)
        _check_polygon(problems, f"{item}.polygon", area.polygon.vertices, frame)


def _check_polygon(
    problems: _Violations,
    field: str,
    vertices: Sequence[geometry_pb2.Point],
    frame: _Frame,
) -> None:
    if len(vertices) > MAX_VERTICES:
        problems.add(field, f"at most {MAX_VERTICES} vertices")
        return
    for index, vertex in enumerate(vertices):
        problem = frame.problem(vertex)
        if problem:
            problems.add(f"{field}.vertices[{index}]", problem)
            return
    problem = polygon_problem([(v.x, v.y) for v in vertices])
    if problem:
        problems.add(field, problem)


def _check_calibration(
    problems: _Violations,
    field: str,
    calibration: camera_pb2.Calibration,
    frame: _Frame,
) -> float | None:
    points = calibration.points
    if not MIN_CALIBRATION_POINTS <= len(points) <= MAX_CALIBRATION_POINTS:
        problems.add(
            f"{field}.points",
            f"needs {MIN_CALIBRATION_POINTS} to {MAX_CALIBRATION_POINTS} points",
        )
        return None
    image: list[Point] = []
    world: list[Point] = []
    for index, point in enumerate(points):
        problem = frame.problem(point.image_point)
        if problem is None and not (
            math.isfinite(point.world_point.x) and math.isfinite(point.world_point.y)
        ):
            problem = "world coordinates must be finite numbers"
        if problem:
            problems.add(f"{field}.points[{index}]", problem)
            return None
        image.append((point.image_point.x, point.image_point.y))
        world.append((point.world_point.x, point.world_point.y))
    try:
        homography = fit_homography(np.asarray(image), np.asarray(world))
    except GeometryError as exc:
        problems.add(f"{field}.{exc.field}", exc.description)
        return None
    return homography.rms_reprojection_error_px


def _listed(indices: Iterable[int]) -> str:
    return ", ".join(str(i) for i in indices)
