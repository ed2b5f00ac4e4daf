"""The one rule set for a camera's scene: what the camera service accepts and analytics builds.

Every problem is a field violation: a path relative to the camera (``zones[2].polygon``,
``calibration.points[3]``) and what is wrong, in one wording for every service. The polygon
and calibration rules for degenerate cases are those of ``_geometry.py``. Image points must
be finite, and inside the frame when the caller knows the frame (``Frame``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from its_camera_ai.common import is_resource_id
from its_camera_ai.scene._geometry import GeometryError, Homography, fit_homography, polygon_problem

__all__ = [
    "ID_RULE",
    "MAX_CALIBRATION_POINTS",
    "MAX_FRAME_HEIGHT",
    "MAX_FRAME_WIDTH",
    "MAX_LANES",
    "MAX_LINES",
    "MAX_VERTICES",
    "MAX_ZONES",
    "MIN_CALIBRATION_POINTS",
    "Frame",
    "Report",
    "check_calibration",
    "check_ids",
    "check_polygon",
    "check_segment",
]

Pt = tuple[float, float]
# Reports one problem: the path relative to the camera, and what is wrong there.
Report = Callable[[str, str], None]

MAX_LINES, MAX_ZONES, MAX_LANES = 64, 64, 32
MAX_VERTICES = 256
MIN_CALIBRATION_POINTS, MAX_CALIBRATION_POINTS = 4, 64
# The largest frame the decoder delivers (8K UHD); also bounds geometry of unscaled cameras.
MAX_FRAME_WIDTH, MAX_FRAME_HEIGHT = 7680, 4320
ID_RULE = (
    "must be 1-63 lower-case letters, digits and hyphens, starting with a letter"
    " and not ending with a hyphen"
)


@dataclass(frozen=True, slots=True)
class Frame:
    """The image geometry must lie in: 0..width x 0..height pixels (None: anywhere finite)."""

    width: int | None = None
    height: int | None = None

    def problem(self, point: Pt) -> str | None:
        x, y = point
        if not (math.isfinite(x) and math.isfinite(y)):
            return "coordinates must be finite numbers"
        if self.width is None or self.height is None:
            return None
        if not (0 <= x <= self.width and 0 <= y <= self.height):
            return f"({x:g}, {y:g}) is outside the {self.width}x{self.height} frame"
        return None


def check_ids(kind: str, ids: Sequence[str], limit: int, bad: Report) -> None:
    if len(ids) > limit:
        bad(kind, f"at most {limit} allowed, got {len(ids)}")
    seen: set[str] = set()
    for i, ident in enumerate(ids):
        if not is_resource_id(ident):
            bad(f"{kind}[{i}].id", ID_RULE)
        elif ident in seen:
            bad(f"{kind}[{i}].id", f"duplicate id {ident!r}")
        seen.add(ident)


def check_segment(path: str, start: Pt, end: Pt, frame: Frame, bad: Report) -> None:
    for end_name, point in (("start", start), ("end", end)):
        problem = frame.problem(point)
        if problem:
            bad(f"{path}.{end_name}", problem)
            return
    if start == end:
        bad(path, "start and end must differ")


def check_polygon(path: str, polygon: Sequence[Pt], frame: Frame, bad: Report) -> None:
    if len(polygon) > MAX_VERTICES:
        bad(path, f"at most {MAX_VERTICES} vertices allowed, got {len(polygon)}")
        return
    for index, vertex in enumerate(polygon):
        problem = frame.problem(vertex)
        if problem:
            bad(f"{path}.vertices[{index}]", problem)
            return
    problem = polygon_problem(polygon)
    if problem:
        bad(path, problem)


def check_calibration(
    image_points: Sequence[Pt], world_points: Sequence[Pt], frame: Frame, bad: Report
) -> Homography | None:
    """The fitted homography, or None after reporting why there is none."""
    count = len(image_points)
    if not MIN_CALIBRATION_POINTS <= count <= MAX_CALIBRATION_POINTS:
        bad(
            "calibration.points",
            f"needs {MIN_CALIBRATION_POINTS} to {MAX_CALIBRATION_POINTS} points, got {count}",
        )
        return None
    for index, (image, world) in enumerate(zip(image_points, world_points, strict=True)):
        problem = frame.problem(image)
        if problem is None and not (math.isfinite(world[0]) and math.isfinite(world[1])):
            problem = "world coordinates must be finite numbers"
        if problem:
            bad(f"calibration.points[{index}]", problem)
            return None
    try:
        return fit_homography(
            np.array(image_points, dtype=np.float64), np.array(world_points, dtype=np.float64)
        )
    except GeometryError as exc:
        bad(f"calibration.{exc.field}", exc.description)
        return None
