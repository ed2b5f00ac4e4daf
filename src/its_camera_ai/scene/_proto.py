"""``its.camera.v1.Camera`` to ``CameraScene``: the wire form of a scene, checked as one.

Problems only the wire form can have (an unknown crossing direction, a missing segment) are
reported with the scene's own, in the same words, so the camera service's request check and
analytics' build of a stored camera give the same answer.
"""

from __future__ import annotations

from typing import Any

from its.camera.v1 import camera_pb2
from its_camera_ai.scene._rules import Frame
from its_camera_ai.scene._scene import (
    CalibrationSpec,
    CameraScene,
    Direction,
    LaneSpec,
    LineSpec,
    SceneSpec,
    ZoneSpec,
)

__all__ = ["scene_from_proto"]

Pt = tuple[float, float]
_DIRECTIONS = frozenset(int(d) for d in Direction)


def _pt(p: Any) -> Pt:
    return (float(p.x), float(p.y))


def _wire_problems(camera: camera_pb2.Camera) -> list[tuple[str, str]]:
    found = []
    for i, line in enumerate(camera.lines):
        if not line.HasField("segment"):
            found.append((f"lines[{i}].segment", "is required"))
        if int(line.direction) not in _DIRECTIONS:
            found.append((f"lines[{i}].direction", f"unknown value {line.direction}"))
    for i, lane in enumerate(camera.lanes):
        if not lane.HasField("travel_direction"):
            found.append((f"lanes[{i}].travel_direction", "is required"))
    return found


def scene_from_proto(
    camera: camera_pb2.Camera, field_prefix: str = "camera", frame: Frame | None = None
) -> CameraScene:
    """Build the scene of a Camera message; raises ``InvalidArgumentError`` naming fields.

    ``frame``: the frame image geometry must lie in. The camera service, which knows the
    frames it will deliver, checks requests with it; analytics builds stored cameras without
    (their frames carry their own size, and geometry beyond the border is harmless there).
    """
    calibration = None
    if camera.HasField("calibration"):
        calibration = CalibrationSpec(
            tuple(_pt(p.image_point) for p in camera.calibration.points),
            tuple(_pt(p.world_point) for p in camera.calibration.points),
        )
    spec = SceneSpec(
        lines=tuple(
            LineSpec(
                x.id,
                _pt(x.segment.start),
                _pt(x.segment.end),
                Direction(x.direction) if int(x.direction) in _DIRECTIONS else Direction.NONE,
            )
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
    return CameraScene.build(
        spec,
        field_prefix,
        frame=frame,
        found=_wire_problems(camera),
    )
